"""Two-process gloo runs for the tests that check DistributedDataParallel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch.multiprocessing as mp


def spawn_ranks(worker: Callable, args: tuple, saved: list[Path], nprocs: int = 2) -> None:
    """``mp.spawn`` the ranks; forgive only a crash in gloo's own teardown after all ranks saved.

    gloo's C++ threads can abort a process while ``destroy_process_group`` tears them down
    ("terminate called without an active exception"; pytorch/pytorch#179291 describes the
    race). Workers save their results and then wait at a barrier before the teardown, so when
    every file in ``saved`` exists the results are complete. Any other failure, or an abort
    before every rank saved, is raised.
    """
    try:
        mp.spawn(worker, args=args, nprocs=nprocs, join=True)
    except mp.ProcessExitedException as error:
        if error.signal_name != "SIGABRT" or not all(Path(p).exists() for p in saved):
            raise
