"""Random-architecture fuzzing of structured pruning (issue 12).

Every case is a small random network (``benchmarks/fuzz_models.py``) pruned with random
options; the oracles there (dead units, other input sizes, the plan's JSON round trip)
decide whether the cut is right. A cut may be refused with a prunekit error, but it
may never be wrong, crash with a raw error, hide an internal failure, or hang.
"""

from __future__ import annotations

import collections
import warnings

import fuzz_models as fm
import pytest

SHORT = range(100)  # the default run: fixed seeds, about 20 s on two busy cores
LONG = range(100_000, 103_000)  # -m slow


def _run(seeds: range) -> tuple[collections.Counter, list[str]]:
    counts: collections.Counter = collections.Counter()
    bad = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # data-dependent branches warn; the outcome tells
        for seed in seeds:
            case = fm.make_case(seed)
            outcome = fm.check_prunekit(case)
            counts[outcome.kind] += 1
            counts["cut"] += outcome.cut
            if outcome.kind not in ("pass", "refused"):
                bad.append(f"{outcome.kind}: {case.describe()}: {outcome.detail}")
    return counts, bad


def test_generator_is_seeded():
    a, b = fm.make_case(7), fm.make_case(7)
    assert a.describe() == b.describe()
    assert all((p == q).all() for p, q in zip(a.model.parameters(), b.model.parameters(),
                                              strict=True))


def test_generator_covers_the_operator_families(one_thread):
    names = " ".join(" ".join(fm.make_case(s, check_others=False).blocks) for s in range(300))
    for family in ("depthwise", "grouped", "transposed", "dilated", "residual", "concat",
                   "split", "gate", "fused_literal", "separate", "gqa", "mha1", "lstm", "gru",
                   "pos:param", "pos:embedding", "interleave", "conv1d", "swiglu", "branch"):
        assert family in names, family


def test_dead_unit_oracle_catches_a_wrong_cut(one_thread):
    """The oracle is not vacuous: a plan whose kept channels are shuffled after the fact
    (a model cut at other positions than the plan says) is caught."""
    import copy

    import prunekit as pk

    case = fm.make_case(1)
    assert case.kind == "image"
    model = copy.deepcopy(case.model)
    plan = pk.prune(model, case.inputs, ratio=0.5, criterion="l2")
    name, cut = next((n, c) for n, c in plan.tensors.items() if 0 in c.kept and
                     len(c.kept[0]) < c.shape[0] and n.endswith("weight"))
    lie = copy.deepcopy(plan)
    removed = sorted(set(range(cut.shape[0])) - set(cut.kept[0]))
    lie.tensors[name].kept[0] = sorted(cut.kept[0][1:] + removed[:1])
    dead = fm.dead_copy(case.model, lie)
    assert not fm.close(fm.outputs(dead, case.inputs), fm.outputs(model, case.inputs))[0]


def test_short_slice_has_no_wrong_cut(one_thread):
    counts, bad = _run(SHORT)
    assert not bad, "\n".join(bad)
    assert counts["cut"] >= len(SHORT) // 2, counts  # most cases really cut something


@pytest.mark.slow
def test_long_slice_has_no_wrong_cut(one_thread):
    counts, bad = _run(LONG)
    assert not bad, f"{len(bad)} of {len(LONG)}:\n" + "\n".join(bad[:30])
