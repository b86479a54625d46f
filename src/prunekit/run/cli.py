"""The ``prunekit`` command: thin wrappers over the library, one function per subcommand.

    prunekit run [RECIPE.yaml] [--out DIR] [--quiet] [--data-dir DIR] [--dry-run]
    prunekit init [--source SOURCE] [--task TASK] [--out RECIPE.yaml]
    prunekit report RUN_DIR [--no-open]
    prunekit export RUN_DIR [--format onnx] [--out FILE]
    prunekit inspect MODEL [--all]
    prunekit oneshot SOURCE DEST --text PATH [--eval-text PATH] [--method sparsegpt]
                     [--sparsity 0.5 | --pattern 2:4]

A user mistake (a bad recipe, missing data) prints one sentence to stderr and exits
with status 2; anything else is a bug and keeps its traceback.

Each subcommand imports what it runs inside its own function (the pipeline, the report
renderer, ONNX export): ``prunekit --help`` and ``prunekit inspect`` stay quick and do
not need matplotlib, onnx or the data extras.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .._version import __version__
from ..errors import ConfigError, DataError, PrunekitError
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
        "quick start (8x8 digits, LeNet-300-100, 90% sparsity).",
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
    p.add_argument("--dry-run", action="store_true", help="validate, build the model and one "
                   "batch, trace and say what would be cut; no training, nothing written")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from .pipeline import run
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if args.data_dir is not None:
        if not Path(args.data_dir).expanduser().is_dir():
            raise DataError(f"--data-dir {args.data_dir} does not exist; give the folder that "
                            "holds the dataset files, or leave --data-dir out")
        recipe.data.data_dir = str(args.data_dir)
    if args.dry_run:
        from .dry_run import dry_run

        print(dry_run(recipe, quiet=args.quiet))
        return 0
    out = Path(args.out or recipe.output.dir or Path("runs") / recipe.name)
    result = run(recipe, out_dir=out, quiet=args.quiet)
    print(_summary(result.metrics, result.out_dir, result.seconds))
    return 0


def _summary(metrics: dict, out: Path, seconds: float) -> str:
    """Before/after lines: the task's headline metric (accuracy for classification),
    sparsity, size (parameters too when the network shrank); the number of sweep points;
    then where the outputs are."""
    from ..measure.tasks import get_task

    headline = get_task((metrics.get("run") or {}).get("task", "classification")).headline
    lines = []
    shrunk = metrics["pruned"].get("params", 0) < metrics["dense"].get("params", 0)
    for side in ("dense", "pruned"):
        m = metrics[side]
        sparse = side == "pruned" and not shrunk  # a smaller dense network: dense encoding
        size = m.get("sparse_size_bytes" if sparse else "size_bytes", 0)
        # a network rebuilt smaller has no zeros to count: say how much smaller it is
        macs = f"  MACs {m['macs']:,}" if "macs" in m else ""
        amount = (f"params {m['params']:,}{macs}" if shrunk
                  else f"sparsity {100 * m['sparsity']:5.1f}%")
        score = m[headline]
        score = f"{100 * score:6.2f}%" if headline in ("accuracy", "agreement") else f"{score:.4g}"
        lines.append(f"{side:>6}: {headline} {score}  {amount}"
                     f"  size {size / 1024:8.1f} KiB{' (sparse)' if sparse else ''}")
    if metrics.get("points"):
        lines.append(f"sweep: {len(metrics['points'])} points (see report.md)")
    whole = {name: why for cut in (metrics.get("run") or {}).get("cuts", [])
             for name, why in cut.get("left_whole", {}).items()}
    if whole:
        names = ", ".join(list(whole)[:3]) + (", ..." if len(whole) > 3 else "")
        lines.append(f"left whole: {len(whole)} prunable groups ({names}); reasons in report.md")
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


# --- prunekit init / prunekit report ------------------------------------------------


def _add_init(sub: argparse._SubParsersAction) -> None:
    from .init import INIT_SOURCES, INIT_TASKS

    p = sub.add_parser(
        "init",
        help="write a commented recipe for your own model and data",
        description="Write a commented recipe, valid as written, for a model source and a task; "
        "edit the names and folders, then `prunekit run --dry-run RECIPE`.",
    )
    p.add_argument("--source", choices=INIT_SOURCES, default="torchvision",
                   help="where the model comes from (default: torchvision)")
    p.add_argument("--task", choices=INIT_TASKS, default="classification",
                   help="what the model does (default: classification)")
    p.add_argument("--out", metavar="FILE", default="recipe.yaml",
                   help="recipe file to write (default: recipe.yaml; never overwritten)")
    p.set_defaults(handler=_init)


def _init(args: argparse.Namespace) -> int:
    from .._io import write_text
    from .init import init_recipe

    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"{out} exists; pass --out NEW_FILE (init never overwrites)")
    name = out.name.removesuffix(".yaml").removesuffix(".yml")
    name = name if name.replace("-", "").replace("_", "").isalnum() else "my-model"
    write_text(out, init_recipe(source=args.source, task=args.task, name=name))
    print(f"wrote {out}; edit it, then: prunekit run --dry-run {out}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="open a run's HTML report (written from its folder if missing)",
        description="Write RUN_DIR/report.html (tables and every chart in one self-contained "
        "file) when it is missing, and open it in a browser.",
    )
    p.add_argument("run_dir", help="the output folder of a prunekit run")
    p.add_argument("--no-open", action="store_true", help="write it and print its path only")
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    import webbrowser

    from .html import HTML_NAME, render_html

    page = Path(args.run_dir) / HTML_NAME
    if not page.is_file():
        page = render_html(args.run_dir)
    print(page)
    if not args.no_open:
        webbrowser.open(page.resolve().as_uri())
    return 0


# --- prunekit export ----------------------------------------------------------------


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a run's pruned network (ONNX, checked in onnxruntime)",
        description="Rebuild the pruned network of RUN_DIR from its recipe.yaml, plan.json and "
        "pruned.safetensors, export it, run the file in onnxruntime and compare its outputs "
        "with PyTorch's before writing it.",
    )
    p.add_argument("run_dir", help="the output folder of a prunekit run")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="onnx (the default)")
    p.add_argument("--out", metavar="FILE", help="output file (default: RUN_DIR/pruned.onnx)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from ..export.onnx import export_run
    from .prepare import prepare
    from .recipe import load_recipe

    recipe_path = Path(args.run_dir) / "recipe.yaml"
    if not recipe_path.is_file():
        raise ConfigError(f"{args.run_dir} has no recipe.yaml; pass the output folder of a "
                          "finished `prunekit run`")
    prepared = prepare(load_recipe(recipe_path), quiet=args.quiet)
    report = export_run(args.run_dir, model=prepared.model, example_inputs=prepared.example,
                        path=args.out)
    print(f"wrote {report.path}: outputs match PyTorch within {report.max_rel_diff:.1e} of "
          f"their scale")
    return 0


# --- prunekit oneshot ---------------------------------------------------------------


def _add_oneshot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "oneshot",
        help="prune a Hugging Face checkpoint from its shards, one block in memory at a time",
        description="Prune every Linear of the blocks of the safetensors checkpoint in SOURCE "
        "(Wanda, SparseGPT or magnitude; unstructured or N:M), calibrated on your text, and "
        "write the result to DEST, which from_pretrained loads. Only one block's weights are "
        "in memory at a time, so the model may be larger than memory.",
    )
    p.add_argument("source", help="model folder (config.json, model*.safetensors, tokenizer)")
    p.add_argument("dest", help="output folder (replaced only once everything is written)")
    p.add_argument("--text", action="append", required=True, metavar="PATH",
                   help="calibration text: a file, or a folder read recursively (repeatable)")
    p.add_argument("--glob", default="**/*.txt", help="files taken from a --text folder "
                   "(default: **/*.txt)")
    p.add_argument("--method", default="sparsegpt", help="sparsegpt (default), wanda, magnitude")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--sparsity", type=float, help="fraction of weights zeroed (default 0.5)")
    amount.add_argument("--pattern", help="N:M pattern instead, e.g. 2:4")
    p.add_argument("--allocation", default="uniform", help="uniform (default) or owl")
    p.add_argument("--eval-text", action="append", metavar="PATH", help="held-out text: "
                   "perplexity before and after, both read one block at a time (repeatable)")
    p.add_argument("--eval-samples", type=int, default=16, help="held-out sequences (16)")
    p.add_argument("--samples", type=int, default=128, help="calibration sequences (128)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (512)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences run at once (8)")
    p.add_argument("--seed", type=int, default=0, help="order the text is drawn in (0)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="compute and write in this dtype (default: as stored)")
    p.add_argument("--device", default="cpu", help="where each block is pruned (cpu, cuda)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_oneshot)


def _oneshot(args: argparse.Namespace) -> int:
    import torch

    from ..oneshot import (
        calibration_ids,
        evaluation_ids,
        oneshot_streamed,
        perplexity_streamed,
        read_texts,
    )

    files = _text_files(args.text, args.glob, "--text")
    held = _text_files(args.eval_text, args.glob, "--eval-text") if args.eval_text else []
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.source)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load a tokenizer from {args.source} ({_one_line(err)}); "
                          "save it beside the weights (tokenizer.save_pretrained)") from None
    ids = calibration_ids(tokenizer, read_texts(files), samples=args.samples,
                          seq_len=args.seq_len, seed=args.seed)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    before = None
    if held:
        ev = evaluation_ids(tokenizer, read_texts(held), samples=args.eval_samples,
                            seq_len=args.seq_len)
        before = perplexity_streamed(args.source, ev, dtype=dtype, device=args.device)
    result = oneshot_streamed(
        args.source, args.dest, ids, method=args.method, sparsity=args.sparsity,
        pattern=args.pattern, allocation=args.allocation, batch_size=args.batch_size,
        dtype=dtype, device=args.device, quiet=args.quiet)
    print(f"wrote {args.dest}: {result.sparsity:.1%} of the blocks' Linear weights are zero "
          f"({len(result.layer_sparsity)} layers), {result.seconds:.0f} s, peak memory "
          f"{result.peak_rss_bytes / 2**30:.2f} GiB")
    if held:
        after = perplexity_streamed(args.dest, ev, dtype=dtype, device=args.device)
        print(f"held-out perplexity {before:.2f} -> {after:.2f} ({args.eval_samples} x "
              f"{args.seq_len} tokens)")
    return 0


def _text_files(paths: Sequence[str], glob: str, flag: str) -> list[Path]:
    """The files named by a text option: files as given, folders read recursively."""
    from ..oneshot import text_files

    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            files += text_files(item, pattern=glob)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{flag} {item}: no such file or folder")
    return files


# Each entry adds one subcommand (its parser and its handler).
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_run, _add_init, _add_report, _add_export, _add_inspect, _add_oneshot
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
