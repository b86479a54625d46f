"""The ``prunekit`` command: thin wrappers over the library, one function per subcommand.

    prunekit run [RECIPE.yaml] [--out DIR] [--quiet] [--data-dir DIR]
    prunekit inspect MODEL [--all]

A user mistake (a bad recipe, missing data) prints one sentence to stderr and exits
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .._version import __version__
from ..errors import PrunekitError
from ..models.lookup import resolve_model
from ..structured import inspect_model

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]


# --- prunekit run -------------------------------------------------------------------


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="train, prune, fine-tune, measure and report, as a recipe says",
        description="Run a pruning recipe end to end. Without a recipe, runs the built-in "
        "quick start (8x8 digits, LeNet-300-100, 90%% sparsity).",
    )
    p.add_argument(
        "recipe",
        nargs="?",
        default=None,
        help="YAML recipe file, or the name of a built-in recipe (default: quickstart)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/<recipe name>)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset files")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from .pipeline import run
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if args.data_dir is not None:
        recipe.data.data_dir = str(args.data_dir)
    out = Path(args.out or recipe.output.dir or Path("runs") / recipe.name)
    result = run(recipe, out_dir=out, quiet=args.quiet)
    print(_summary(result.metrics, result.out_dir, result.seconds))
    return 0


def _summary(metrics: dict, out: Path, seconds: float) -> str:
    """Before/after lines: accuracy, sparsity, size (parameters too when the network
    shrank); the number of sweep points; then where the outputs are."""
    lines = []
    shrunk = metrics["pruned"].get("params", 0) < metrics["dense"].get("params", 0)
    for side in ("dense", "pruned"):
        m = metrics[side]
        sparse = side == "pruned" and not shrunk  # a smaller dense network: dense encoding
        size = m.get("sparse_size_bytes" if sparse else "size_bytes", 0)
        line = (
            f"{side:>6}: accuracy {100 * m['accuracy']:6.2f}%  sparsity {100 * m['sparsity']:5.1f}%"
            f"  size {size / 1024:8.1f} KiB{' (sparse)' if sparse else ''}"
        )
        lines.append(line + (f"  params {m['params']:,}" if shrunk else ""))
    if metrics.get("points"):
        lines.append(f"sweep: {len(metrics['points'])} points (see report.md)")
    lines.append(f"outputs in {out}/ (report.md, metrics.json) after {seconds:.1f} s")
    return "\n".join(lines)


# --- prunekit inspect ---------------------------------------------------------------


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="dry run: prunable groups, what cannot be pruned and why, params, MACs",
        description="Trace a model and report its groups of coupled dimensions, what cannot "
        "be pruned and why, its parameters and MACs. Nothing is changed.",
    )
    p.add_argument("model", help="a prunekit model (lenet5) or SOURCE:NAME "
                   "(torchvision:resnet18, transformers:llama, rnn:char_lm)")
    p.add_argument("--all", action="store_true", help="also list trivially blocked groups")
    p.set_defaults(handler=_inspect)


def _inspect(args: argparse.Namespace) -> int:

    model, inputs = resolve_model(args.model)
    print(inspect_model(model, inputs, trivial=args.all))
    return 0


# Each entry adds one subcommand (its parser and its handler).
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_run, _add_inspect
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``prunekit`` command, with every subcommand."""

    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Prune PyTorch networks, recover the accuracy, and prove it with numbers.",
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunekit`` console script; returns the exit status.

    Example:
        >>> main(["run", "--out", "runs/quick", "--quiet"])
        0
    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except PrunekitError as err:
        print(f"prunekit: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # an output folder that cannot be written, a full disk
        where = f" ({err.filename})" if err.filename else ""
        print(f"prunekit: error: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("prunekit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _one_line(err: BaseException) -> str:
    """An error's message on one line."""
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
