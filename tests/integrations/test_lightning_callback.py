"""Lightning callback: schedules step with trainer.global_step, and a fit resumed from a
checkpoint (strict weight loading) ends with the masks and weights of an unbroken fit."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunekit as pk
from prunekit.schedules import Surgery
from prunekit.schedules._state import masks_of

pl = pytest.importorskip("pytorch_lightning", reason="pip install pytorch-lightning")
from prunekit.integrations.lightning import PrunekitCallback  # noqa: E402

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _loader(examples: int) -> DataLoader:
    """One batch per epoch by default: Lightning replays an epoch-end checkpoint's epoch
    from its first batch, so only identical batches make a resumed fit comparable bit for
    bit with an unbroken one."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(examples, 8, generator=g),
                         torch.randint(0, 3, (examples,), generator=g))
    return DataLoader(data, batch_size=4, shuffle=False)


PRUNERS = {
    "agp": lambda m: pk.Pruner(m, pk.make_schedule("agp", final=0.75, end=5)),
    "surgery": lambda m: Surgery(m, sparsity=0.6, gamma=0.0),
    "oneshot": lambda m: pk.Pruner(m, pk.make_schedule("oneshot", final=0.5, at=2)),
}


class Probe(pl.Callback):
    """The pruner's step and the masks when the first batch of a fit starts."""

    def __init__(self, pruner) -> None:
        self.pruner, self.seen = pruner, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen is None:
            self.seen = self.pruner.step_count, masks_of(self.pruner.model)


def _fit(tmp: Path, kind: str, *, ckpt: str | None = None, accumulate: int = 1,
         steps: int = 6, examples: int = 4):
    module = Module()
    pruner = PRUNERS[kind](module.net)
    probe = Probe(pruner)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp, save_top_k=-1, every_n_epochs=1,
                                         filename="{epoch}-{step}")
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=accumulate,
                         callbacks=[PrunekitCallback(pruner), saver, probe])
    trainer.fit(module, _loader(examples), ckpt_path=ckpt)
    assert trainer.global_step == steps
    return module, pruner, probe.seen


@pytest.mark.parametrize("kind", ["agp", "surgery", pytest.param("oneshot",
                                                                 marks=pytest.mark.slow)])
def test_resume_gives_the_masks_of_an_unbroken_fit(tmp_path: Path, kind: str) -> None:
    whole, pruner, _ = _fit(tmp_path, kind)
    assert pruner.step_count == 6
    masks = masks_of(whole.net)
    assert masks and all(not m.all() for m in masks.values())
    checkpoint = tmp_path / "epoch=2-step=3.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if "PrunekitCallback" in k)["pruner"]
    assert state["step"] == 3
    resumed, again, (step, first) = _fit(tmp_path / "again", kind, ckpt=str(checkpoint))
    assert step == 3 and first.keys() == state["masks"].keys()
    assert all(torch.equal(first[k], m) for k, m in state["masks"].items())
    assert again.step_count == 6
    assert all(torch.equal(masks_of(resumed.net)[k], m) for k, m in masks.items())
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_gradient_accumulation_counts_optimizer_steps(tmp_path: Path) -> None:
    _, pruner, _ = _fit(tmp_path, "oneshot", accumulate=2, steps=3, examples=24)  # 6 batches
    assert pruner.step_count == 3 and pruner.sparsity == 0.5
