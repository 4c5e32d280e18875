"""Fault injection for tests and ``tools/chaos.py``: testing aids, read from the environment here only.

None of these is set in normal runs; each is read once, when a run starts.

- ``BIGTRAIN_INJECT_NAN_STEPS=3,7-9``: global rank 0 multiplies its first micro-batch loss by NaN
  at these steps (1-based), so the real detection / agreement / skip path runs.
- ``BIGTRAIN_INJECT_STALL=RANK:STEP``: that rank sleeps (for good) after finishing STEP while the
  others go on into the next step's collectives: a stuck rank, for the watchdog.
- ``BIGTRAIN_TEST_HOLD=POINT,...`` with ``BIGTRAIN_TEST_HOLD_DIR=DIR``: every rank pauses at each
  POINT, ``after_step:N`` (after all of step N's callbacks) or ``in_save:N`` (inside the save of
  step N, after the rank wrote its files and before the checkpoint is marked complete): it creates
  ``DIR/<POINT>.rank<r>`` and waits until ``DIR/<POINT>.release`` exists. Tests use it to deliver
  signals or SIGKILL at exactly known points.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bigtrain.train.loop import Callback, Trainer
from bigtrain.train.step import StepResult


def parse_steps(text: str) -> frozenset[int]:
    """``"3,7-9"`` -> {3, 7, 8, 9}."""
    steps: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        steps.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(steps)


def nan_steps() -> frozenset[int]:
    return parse_steps(os.environ.get("BIGTRAIN_INJECT_NAN_STEPS", ""))


def stall() -> tuple[int, int] | None:
    text = os.environ.get("BIGTRAIN_INJECT_STALL", "")
    if not text:
        return None
    rank, step = text.split(":")
    return int(rank), int(step)


def hold_points() -> tuple[frozenset[str], Path | None]:
    points = frozenset(p.strip() for p in os.environ.get("BIGTRAIN_TEST_HOLD", "").split(",") if p.strip())
    folder = os.environ.get("BIGTRAIN_TEST_HOLD_DIR")
    return points, Path(folder) if folder else None


class Injector(Callback):
    def __init__(self, rank: int):
        self.rank = rank
        self.stall = stall()
        self.holds, self.hold_dir = hold_points()

    @property
    def active(self) -> bool:
        return bool(self.stall or self.holds)

    def hold(self, point: str) -> None:
        if point not in self.holds or self.hold_dir is None:
            return
        self.hold_dir.mkdir(parents=True, exist_ok=True)
        (self.hold_dir / f"{point}.rank{self.rank}").touch()
        release = self.hold_dir / f"{point}.release"
        while not release.exists():
            time.sleep(0.02)

    def hold_in_save(self, step: int) -> None:
        self.hold(f"in_save:{step}")

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        self.hold(f"after_step:{trainer.state.step}")
        if self.stall == (self.rank, trainer.state.step):
            while True:
                time.sleep(3600)
