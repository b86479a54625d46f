"""Fine-tuning with a Pruner under DistributedDataParallel (2 gloo processes) and exact resume."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from tests.gloo import spawn_ranks
from torch import nn

from prunekit.data import make_loader
from prunekit.mask import get_mask
from prunekit.recovery import train
from prunekit.recovery.train import init_distributed, is_main_process
from prunekit.schedules import AGP, Pruner


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


def batches(n: int = 8, size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [
        (torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g))
        for _ in range(n)
    ]


SCHEDULE = AGP(final=0.6, end=6, frequency=2)


def _worker(rank: int, world: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world
    )
    try:
        assert init_distributed() == (rank, world)
        model = nn.Sequential(*[m for m in net() if not isinstance(m, nn.Dropout)])
        # a random criterion seeded by rank: only the broadcast makes the masks agree
        pruner = Pruner(model, SCHEDULE, criterion="random", seed=rank)
        losses = train(
            model,
            batches(),
            epochs=2,
            lr=0.1,
            after_step=pruner.step,
            quiet=True,
            checkpoint=f"{folder}/ckpt.pt",
            state_objects={"pruner": pruner},
        )
        torch.save(
            {"state": model.state_dict(), "losses": losses, "main": is_main_process()},
            f"{folder}/rank{rank}.pt",
        )
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


def test_two_ranks_hold_identical_masks_and_match_one_process_on_double_batches(tmp_path):
    spawn_ranks(_worker, (2, str(tmp_path)), [tmp_path / f"rank{r}.pt" for r in range(2)])
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["main"] for r in results] == [True, False]
    a, b = results[0]["state"], results[1]["state"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert results[0]["losses"] == results[1]["losses"]
    assert (tmp_path / "ckpt.pt").exists()

    # one process, each step on the union of the two ranks' batches (2k and 2k+1)
    model = nn.Sequential(*[m for m in net() if not isinstance(m, nn.Dropout)])
    pruner = Pruner(model, SCHEDULE, criterion="random", seed=0)
    data = batches()
    joined = [
        (torch.cat([data[i][0], data[i + 1][0]]), torch.cat([data[i][1], data[i + 1][1]]))
        for i in range(0, 8, 2)
    ]
    losses = train(model, joined, epochs=2, lr=0.1, after_step=pruner.step, quiet=True)
    assert torch.equal(get_mask(model[0], "weight"), a["0.weight_mask"])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, a[key], atol=1e-6, rtol=1e-5)
    assert losses == pytest.approx(results[0]["losses"], rel=1e-5)


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(40, 6), torch.arange(40) % 3)
    options = dict(epochs=2, lr=0.1, optimizer="sgd", weight_decay=1e-3, seed=3, quiet=True)

    def run(checkpoint=None, stop_at=None):
        model = net()  # with dropout: the RNG state must resume too
        loader = make_loader(data, batch_size=8, shuffle=True, seed=1)
        pruner = Pruner(model, AGP(final=0.7, end=8, frequency=2), scope="global")
        calls = []

        def after_step():
            pruner.step()
            calls.append(1)
            if stop_at is not None and len(calls) == stop_at:
                raise Interrupted

        losses = train(
            model,
            loader,
            after_step=after_step,
            checkpoint=checkpoint,
            state_objects={"pruner": pruner},
            **options,
        )
        return model, losses, pruner

    straight, straight_losses, _ = run()
    path = tmp_path / "ckpt.pt"
    with pytest.raises(Interrupted):
        run(checkpoint=path, stop_at=7)  # 5 batches per epoch: dies in epoch 2
    assert path.exists()
    resumed, resumed_losses, pruner = run(checkpoint=path)
    assert pruner.step_count == 10
    assert resumed_losses == straight_losses
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    again, again_losses, _ = run(checkpoint=path)  # a finished run resumes to its end
    assert again_losses == straight_losses
    assert torch.equal(again[0].weight, straight[0].weight)


def test_single_process_is_rank_zero_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() == (0, 1)
    assert is_main_process()


def _aborting_worker(rank: int, folder: str, save: bool) -> None:
    import os
    import time

    if save:
        torch.save(rank, f"{folder}/rank{rank}.pt")
    if rank == 1:
        while save and not os.path.exists(f"{folder}/rank0.pt"):
            time.sleep(0.01)  # abort only once rank 0 has saved, as after a barrier
        os.abort()


@pytest.mark.parametrize("save", [True, False])
def test_spawn_ranks_forgives_an_abort_only_after_every_rank_saved(tmp_path, save):
    import torch.multiprocessing as mp

    saved = [tmp_path / f"rank{r}.pt" for r in range(2)]
    if save:
        spawn_ranks(_aborting_worker, (str(tmp_path), True), saved)
    else:
        with pytest.raises(mp.ProcessExitedException, match="SIGABRT"):
            spawn_ranks(_aborting_worker, (str(tmp_path), False), saved)
