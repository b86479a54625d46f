"""``import prunekit``: it stays light, and every name it exports does its job on a tiny model."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError

HEAVY = ["matplotlib", "sklearn", "torchvision", "timm", "transformers", "onnx", "onnxruntime",
         "tqdm", "torch_pruning", "pandas", "scipy", "datasets", "torchao"]

# torch itself imports tqdm (torch.hub: ``from tqdm import tqdm`` when it is installed), so
# the heavy modules torch loaded are dropped from sys.modules before prunekit is imported:
# whatever comes back was imported again by prunekit.
_PROBE = f"""
import sys, torch
heavy = {HEAVY!r}
for name in [m for m in sys.modules if m.split(".")[0] in heavy]:
    del sys.modules[name]
import prunekit
print(",".join(sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))))
"""


@pytest.fixture(scope="module")
def pulled_in() -> set[str]:
    """Top-level heavy modules that ``import prunekit`` puts in sys.modules (beyond torch's)."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True)
    return set(filter(None, out.stdout.strip().split(",")))


@pytest.mark.parametrize("module", HEAVY)
def test_import_prunekit_does_not_pull_in(pulled_in, module):
    assert module not in pulled_in, f"import prunekit imports {module}"


# Every public name, and where it is exercised below; a name exported without a test here
# fails test_every_public_name_is_exercised.
EXERCISED = {
    "__version__": "test_version",
    "list_criteria": "test_list_criteria_is_sorted_filtered_and_complete",
    "register_criterion": "test_a_registered_criterion_drives_sparsify",
    "list_granularities": "test_mask_verbs",
    "sparsify": "test_mask_verbs",
    "sparsity_of": "test_mask_verbs",
    "bake": "test_mask_verbs",
    "trace": "test_structured_verbs",
    "plan": "test_structured_verbs",
    "apply": "test_structured_verbs",
    "verify": "test_structured_verbs",
    "VerifyResult": "test_structured_verbs",
    "Plan": "test_structured_verbs",
    "PlanInfo": "test_structured_verbs",
    "prune": "test_structured_verbs",
    "inspect_model": "test_structured_verbs",
    "save_pruned": "test_structured_verbs",
    "load_pruned": "test_structured_verbs",
    "list_schedules": "test_schedules_and_pruner",
    "make_schedule": "test_schedules_and_pruner",
    "Pruner": "test_schedules_and_pruner",
    "quantize": "test_quantize",
    "export_onnx": "test_export_onnx",
    "oneshot": "test_oneshot",
    "OneShotConfig": "test_oneshot",
    "SparsifyConfig": "test_configs_equal_their_keyword_calls",
    "PlanConfig": "test_configs_equal_their_keyword_calls",
    "Budget": "test_configs_equal_their_keyword_calls",
    "allocate": "test_allocate",
}


def test_every_public_name_is_exercised():
    public = {n for n, v in vars(pk).items()
              if not (n.startswith("_") and n != "__version__") and not inspect.ismodule(v)
              and n != "annotations"}  # from __future__ import annotations
    assert public - EXERCISED.keys() == set(), "exported but not tested in test_import.py"
    assert EXERCISED.keys() - public == set(), "documented names must stay exported"
    assert set(getattr(pk, "__all__", public)) == public


def test_version():
    from importlib.metadata import version

    assert pk.__version__ == version("prunekit")


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def test_list_criteria_is_sorted_filtered_and_complete():
    names = pk.list_criteria()
    assert names == sorted(names) and len(set(names)) == len(names)
    assert {"magnitude", "l1", "l2", "random", "gradient", "taylor", "obd"} <= set(names)
    assert pk.list_criteria("l*") == [n for n in names if n.startswith("l")]


def test_a_registered_criterion_drives_sparsify():
    name = "test_import_keep_first_column"
    if name not in pk.list_criteria():  # the registry is per process
        # scores: column 0 most important, then by |w|
        pk.register_criterion(name)(lambda w, s: w.abs() + 100.0 * (torch.arange(w.shape[-1])
                                                                    == 0))
    assert name in pk.list_criteria()
    model, control = mlp(), mlp()
    pk.sparsify(model, sparsity=0.8, criterion=name, scope="layer")  # 19 of 96 weights stay
    pk.sparsify(control, sparsity=0.8, criterion="magnitude", scope="layer")
    assert bool((model[0].weight[:, 0] != 0).all())
    assert not bool((control[0].weight[:, 0] != 0).all())


def test_mask_verbs():
    assert {"weight", "neuron"} <= set(pk.list_granularities())
    model = mlp()
    x = torch.randn(4, 6)
    pk.sparsify(model, sparsity=0.75, criterion="magnitude", scope="layer")
    zeros = sum(int((m.weight == 0).sum()) for m in (model[0], model[2]))
    assert zeros == 0.75 * (96 + 48)
    assert pk.sparsity_of(model) == 0.75
    kept = model[0].weight != 0
    threshold = model[0].weight.abs()[kept].min()
    assert bool((mlp()[0].weight.abs()[~kept] <= threshold).all())  # the smallest went
    masked_out = model(x)
    assert pk.bake(model) is model
    assert all(type(m) in (nn.Linear, nn.ReLU, nn.Sequential) for m in model.modules())
    assert set(model.state_dict()) == set(mlp().state_dict())  # no mask buffers left
    assert pk.sparsity_of(model) == 0.75
    torch.testing.assert_close(model(x), masked_out)


def test_structured_verbs(tmp_path):
    model, x = mlp(), torch.randn(4, 6)
    report = pk.inspect_model(model, x)
    assert "16" in str(report)  # the hidden group of 16 units is listed
    assert model[0].out_features == 16  # a dry run: nothing changed
    graph = pk.trace(model, x)
    plan = pk.plan(graph, ratio=0.5, criterion="l1")
    assert isinstance(plan, pk.Plan)
    assert isinstance(plan.info, pk.PlanInfo) and (plan.info.criterion, plan.info.ratio) == (
        "l1", 0.5)
    assert model[0].out_features == 16  # planning changes nothing either
    original = copy.deepcopy(model)
    assert pk.apply(model, plan) is model
    assert (model[0].weight.shape, model[2].weight.shape) == ((8, 6), (3, 8))
    result = pk.verify(original, model, plan, x)
    assert isinstance(result, pk.VerifyResult) and result.ok
    l1 = original[0].weight.abs().sum(1) + original[0].bias.abs() + original[2].weight.abs().sum(0)
    kept = sorted(l1.topk(8).indices.tolist())
    torch.testing.assert_close(model[0].weight, original[0].weight[kept])
    pk.save_pruned(model, plan, tmp_path)
    fresh = pk.load_pruned(mlp(seed=1), tmp_path / "plan.json", tmp_path / "weights.safetensors")
    torch.testing.assert_close(fresh(x), model(x))
    again = mlp()
    assert pk.prune(again, x, ratio=0.5, criterion="l1").tensors == plan.tensors
    torch.testing.assert_close(again(x), model(x))


def test_configs_equal_their_keyword_calls():
    from prunekit.config import NM, Rule

    a, b = mlp(), mlp()
    pk.sparsify(a, sparsity=0.5, scope="global", ignore=[a[2]])
    pk.sparsify(b, pk.SparsifyConfig(amount=Rule("sparsity", 0.5), scope="global", ignore=("2",)))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))
    assert float((b[2].weight == 0).float().mean()) == 0.0  # ignored stays dense
    c = mlp()
    pk.sparsify(c, pk.SparsifyConfig(amount=NM(2, 4), ignore=("0",)))  # 6 inputs: not 4k
    assert float((c[2].weight == 0).float().mean()) == 0.5
    assert float((c[0].weight == 0).float().mean()) == 0.0
    x = torch.randn(4, 6)
    p1 = pk.plan(pk.trace(mlp(), x), target={"params": 0.3})
    p2 = pk.plan(pk.trace(mlp(), x), pk.PlanConfig(budget=pk.Budget("params", 0.3)))
    assert p1.to_dict()["groups"] == p2.to_dict()["groups"]
    with pytest.raises(pk.errors.ConfigError, match="not both"):
        pk.plan(pk.trace(mlp(), x), pk.PlanConfig(), ratio=0.5)


def test_allocate():
    model, x = mlp(), torch.randn(1, 6)
    alloc = pk.allocate(model, x, kind="uniform", budget={"params_ratio": 0.6},
                        cache_dir=None)
    graph = pk.trace(mlp(), x)
    pruned = mlp()
    pk.apply(pruned, pk.plan(graph, **alloc.plan_kwargs))
    assert sum(p.numel() for p in pruned.parameters()) <= 0.6 * sum(
        p.numel() for p in model.parameters())
    assert alloc.predicted["params"] == sum(p.numel() for p in pruned.parameters())


def test_schedules_and_pruner():
    assert {"agp", "oneshot", "steps"} <= set(pk.list_schedules())
    schedule = pk.make_schedule("agp", final=0.5, end=4, frequency=1)
    assert [schedule(t) for t in (0, 4, 9)] == [0.0, 0.5, 0.5]
    model = mlp()
    pruner = pk.Pruner(model, schedule)
    for _ in range(4):
        pruner.step()
    assert pruner.step_count == 4 and pk.sparsity_of(model) == 0.5


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_quantize():
    model, x = mlp(), torch.randn(4, 6)
    int8 = pk.quantize(model, "dynamic")
    assert type(model[0]) is nn.Linear  # the model passed in is left alone
    assert type(int8[0]) is not nn.Linear
    torch.testing.assert_close(int8(x), model(x), atol=0.05, rtol=0.05)


def test_export_onnx():
    # the same function tests/export/test_onnx.py exports real networks with (a few seconds)
    from prunekit.export.onnx import export_onnx

    assert pk.export_onnx is export_onnx


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(torch.relu(self.up(h)))


class _TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(50, 16), nn.Linear(16, 50)
        self.layers = nn.ModuleList([_Block(), _Block()])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)  # (B, T, 16)
        for block in self.layers:
            h = block(h)
        return self.head(h)  # (B, T, vocab)


def test_oneshot():
    torch.manual_seed(0)
    model = _TinyLM().eval()
    original = copy.deepcopy(model)
    ids = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(1))
    result = pk.oneshot(model, ids, pk.OneShotConfig(method="magnitude", sparsity=0.5,
                                                     quiet=True))
    assert result.block_sparsity == (0.5, 0.5)
    for name in ("layers.0.up", "layers.0.down", "layers.1.up", "layers.1.down"):
        w, w0 = model.get_submodule(name).weight, original.get_submodule(name).weight
        assert int((w == 0).sum()) == w.numel() // 2, name
        assert bool(w0.abs()[w == 0].max() <= w0.abs()[w != 0].min()), name  # magnitude
    assert torch.equal(model.embed.weight, original.embed.weight)
    assert torch.equal(model.head.weight, original.head.weight)
    with pytest.raises(ConfigError, match="unknown method 'nope'; valid: magnitude"):
        pk.oneshot(_TinyLM(), ids, method="nope", sparsity=0.5)
