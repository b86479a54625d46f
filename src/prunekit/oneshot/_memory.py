"""Peak memory of a stretch of code: resident set size sampled by a thread, CUDA peaks."""

from __future__ import annotations

import os
import resource
import threading

import torch


def rss_bytes() -> int:
    """Current resident set size of this process (peak so far where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager sampling RSS every ``interval`` seconds; ``peak_rss`` after exit."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_rss = 0
        self.peak_cuda: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.peak_rss = rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, rss_bytes())
        if torch.cuda.is_available():
            self.peak_cuda = int(torch.cuda.max_memory_allocated())
