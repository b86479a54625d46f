"""Hugging Face Trainer callback: every schedule kind steps with the trainer, and a run
resumed from a checkpoint ends with exactly the masks (and weights) of an unbroken run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.schedules import Surgery
from prunekit.schedules._state import masks_of

pytest.importorskip("transformers", reason="pip install transformers")
pytest.importorskip("accelerate", reason="pip install accelerate (transformers' Trainer needs it)")
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from prunekit.integrations.hf import STATE_FILE, PrunekitCallback  # noqa: E402


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def _data() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(24, 8, generator=g), torch.randint(0, 3, (24,), generator=g)
    return [{"x": x, "labels": y} for x, y in zip(xs, ys, strict=True)]


PRUNERS = {
    "oneshot": lambda m: pk.Pruner(m, pk.make_schedule("oneshot", final=0.5, at=2)),
    "agp": lambda m: pk.Pruner(m, pk.make_schedule("agp", final=0.75, end=5), scope="global"),
    "steps": lambda m: pk.Pruner(m, pk.make_schedule("steps", sparsities=(0.3, 0.6), start=2,
                                                     frequency=3)),
    "surgery": lambda m: Surgery(m, sparsity=0.6, gamma=0.0),
}


class FirstStepMasks(TrainerCallback):
    """Records the model's masks when the first step of a (resumed) run begins."""

    def __init__(self, model: nn.Module, pruner: object) -> None:
        self.model, self.pruner, self.masks, self.step = model, pruner, None, None

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        if self.masks is None:
            self.masks, self.step = masks_of(self.model), self.pruner.step_count


def _train(tmp: Path, kind: str, *, resume: str | None = None) -> tuple[nn.Module, object]:
    model = Tiny()
    pruner = PRUNERS[kind](model)
    probe = FirstStepMasks(model, pruner)
    args = TrainingArguments(
        output_dir=str(tmp), max_steps=6, save_strategy="steps", save_steps=3,
        per_device_train_batch_size=4, learning_rate=0.1, report_to="none", use_cpu=True,
        logging_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=_data(),
                      callbacks=[PrunekitCallback(pruner), probe])
    trainer.train(resume_from_checkpoint=resume)
    pruner.first_step = probe.step, probe.masks  # what the run's first step started with
    return model, pruner


SLOW = pytest.mark.slow  # the same path as agp, with other schedules: 2-3 s each


@pytest.mark.parametrize("kind", ["agp", "surgery", pytest.param("oneshot", marks=SLOW),
                                  pytest.param("steps", marks=SLOW)])
def test_resume_gives_the_masks_of_an_unbroken_run(tmp_path: Path, kind: str) -> None:
    whole, pruner = _train(tmp_path / "a", kind)
    assert pruner.step_count == 6
    masks = masks_of(whole)
    assert masks and all(not m.all() for m in masks.values())
    for name, mask in masks.items():  # masked weights are zero after the last step
        module, _, param = name.rpartition(".")
        assert not getattr(whole.get_submodule(module), param)[~mask].any()
    saved = torch.load(tmp_path / "a" / "checkpoint-3" / STATE_FILE, weights_only=True)
    assert saved["step"] == 3
    resumed, again = _train(tmp_path / "a", kind,
                            resume=str(tmp_path / "a" / "checkpoint-3"))
    assert again.step_count == 6
    step, restored = again.first_step  # restored before the first resumed step
    assert step == 3
    assert restored.keys() == saved["masks"].keys() and restored
    assert all(torch.equal(restored[k], m) for k, m in saved["masks"].items())
    assert masks_of(resumed).keys() == masks.keys()
    assert all(torch.equal(masks_of(resumed)[k], m) for k, m in masks.items())
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


@pytest.mark.slow  # docs/your-model.md's Trainer block checks a schedule end to end by default
def test_schedule_reached_at_the_right_steps(tmp_path: Path) -> None:
    model, pruner = _train(tmp_path, "oneshot")
    assert pruner.sparsity == 0.5 and pk.sparsity_of(model) == pytest.approx(0.5, abs=0.02)


@pytest.mark.slow  # two Trainer runs for one error message
def test_resume_without_pruner_state_is_an_error(tmp_path: Path) -> None:
    _train(tmp_path / "a", "agp")
    (tmp_path / "a" / "checkpoint-3" / STATE_FILE).unlink()
    with pytest.raises(ConfigError, match="masks cannot be restored"):
        _train(tmp_path / "a", "agp", resume=str(tmp_path / "a" / "checkpoint-3"))


def test_refuses_what_cannot_be_driven() -> None:
    with pytest.raises(ConfigError, match="cannot be driven by a trainer"):
        PrunekitCallback(object())
