"""Per-phase step timing and peak memory for the benchmark.

On CUDA each phase is bracketed by CUDA events recorded on the current stream, read after the step
has synchronised anyway (the step's loss ``.item()``): the breakdown costs no extra host sync and
does not change the overlap of host and device it measures. On CPU the phases are timed with
``perf_counter`` (CPU ops are synchronous). ``other`` = the step's wall time minus the phases:
Python between phases, the loss all-reduce, the non-finite agreement, the host sync at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import torch

PHASES = ("data_wait", "forward", "backward", "optimizer")


class PhaseTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object, object]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self.marks.append((name, start, end))

    def collect(self) -> dict[str, float]:
        """Seconds per phase since the last collect (waits for the recorded events)."""
        out = dict.fromkeys(PHASES[1:], 0.0)
        if self.cuda and self.marks:
            self.marks[-1][2].synchronize()
        for name, start, end in self.marks:
            out[name] += start.elapsed_time(end) / 1e3 if self.cuda else end - start
        self.marks = []
        return out


class TimedEngine:
    """A DeepSpeed engine whose forward, backward and step are timed; everything else passes through."""

    def __init__(self, engine, timer: PhaseTimer):
        self.__dict__.update(_engine=engine, _timer=timer)

    def __call__(self, *args, **kwargs):
        with self._timer.phase("forward"):
            return self._engine(*args, **kwargs)

    def backward(self, *args, **kwargs):
        with self._timer.phase("backward"):
            return self._engine.backward(*args, **kwargs)

    def step(self, *args, **kwargs):
        with self._timer.phase("optimizer"):
            return self._engine.step(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


class PeakMemory:
    """Peak memory of a phase: CUDA ``max_memory_allocated`` (reset at the start), or on CPU this
    process's RSS sampled every few ms by a thread (``ru_maxrss`` cannot be reset between phases)."""

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device, self.interval = device, interval_s
        self.peak_bytes = 0
        self.running = False
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss_sampled"

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> PeakMemory:
        self.running = True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self.process = psutil.Process()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, self.process.memory_info().rss)
            if self.stopping.wait(self.interval):
                return

    def stop(self) -> None:
        """End the measurement (a second call changes nothing)."""
        if not self.running:
            return
        self.running = False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.stopping.set()
            self.thread.join()

    @property
    def gb(self) -> float:
        return self.peak_bytes / 2**30


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, all threads."""
    t = psutil.Process().cpu_times()
    return t.user + t.system
