"""Shared pieces of the benchmark scripts: machine description, docs sections, batches."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from prunekit._io import write_text
from prunekit._utils import cpu_name, versions


def machine() -> str:
    """CPU model, cores and memory of this machine, for the record."""
    cpu = cpu_name()
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}"


def versions_line() -> str:
    v = versions()
    return ", ".join(
        f"{k} {v[k]}" for k in ("python", "prunekit", "torch", "torchvision", "numpy") if k in v
    )


def write_section(path: str | Path, name: str, body: str, *, title: str = "# Benchmarks\n") -> None:
    """Replace (or append) the section ``name`` of a Markdown file, atomically.

    Sections are delimited by ``<!-- name:start -->`` / ``<!-- name:end -->`` so
    several benchmark scripts can share one page without overwriting each other.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else title
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else (text.rstrip() + "\n\n" + block + "\n")
    )
    write_text(path, text)


class TensorBatches:
    """Shuffled mini-batches straight from tensors (no per-sample collate), seeded.

    The tensors may live on a GPU: the order is drawn on the CPU from the seeded
    generator (the same batches on every device) and indexing happens where the data is.
    """

    def __init__(self, dataset, *, batch_size: int, seed: int, shuffle: bool = True) -> None:
        self.x, self.y = dataset.tensors
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.x.device)
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            yield self.x[idx], self.y[idx]


def read_rows(paths: list[str]) -> list[dict]:
    """Every result row in ``paths``, in order.

    A ``.json`` file is a script's ``--json`` output (rows under ``"rows"``); anything
    else holds one JSON object per line (a run's stdout, a ``--rows`` file).
    """
    import json

    found: list[dict] = []
    for path in paths:
        text = Path(path).read_text()
        if str(path).endswith(".json"):
            found += json.loads(text)["rows"]
        else:
            found += [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return found


def interleaved_medians(nets: dict, x, *, threads: int, warmup: int, runs: int,
                        rounds: int) -> dict:
    """Per network, the median latency (ms) of ``runs`` timed runs in each of ``rounds``.

    The rounds interleave the networks (dense, pruned, dense, ...), which spreads a
    shared machine's slow spells over all of them instead of charging them to whichever
    ran at the time.
    """
    from prunekit.measure import measure_latency

    medians: dict = {key: [] for key in nets}
    for _ in range(rounds):
        for key, net in nets.items():
            stats = measure_latency(net, x, threads=threads, warmup=warmup, runs=runs)
            medians[key].append(stats.median_ms)
    return medians


def python_docs_ids(tok, *, calib_samples: int, eval_samples: int, seq_len: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration and held-out token ids from the Python docs, split by file (80 / 20,
    seeded) so that no held-out text is seen in calibration."""
    from prunekit.oneshot.assets import python_docs
    from prunekit.oneshot.text import (
        calibration_ids,
        evaluation_ids,
        read_texts,
        split_files,
        text_files,
    )

    cal_files, held_files = split_files(text_files(python_docs()), heldout=0.2, seed=seed)
    calib = calibration_ids(tok, read_texts(cal_files), samples=calib_samples,
                            seq_len=seq_len, seed=seed)
    held = evaluation_ids(tok, read_texts(held_files), samples=eval_samples, seq_len=seq_len)
    return calib, held


def add_smollm2_text_args(parser) -> None:
    """The options of the SmolLM2 benchmarks that calibrate and score on the Python docs."""
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)


def smollm2_and_text(args) -> tuple:
    """Threads and seed set from ``args``; SmolLM2-135M, its tokenizer, calibration and
    held-out ids (see :func:`python_docs_ids`)."""
    from prunekit.oneshot.assets import load_smollm2

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dense, tok = load_smollm2()
    calib, held = python_docs_ids(tok, calib_samples=args.calib_samples,
                                  eval_samples=args.eval_samples, seq_len=args.seq_len,
                                  seed=args.seed)
    return dense, tok, calib, held
