"""Hang watchdog: a rank that makes no progress for ``train.watchdog_timeout_s`` dumps its stacks and exits.

Progress = a heartbeat: the end of every step, every evaluation batch, the phases of a checkpoint
save. A stuck collective or a dead peer stops every rank's heartbeats at about the same time, so
every rank's watchdog fires within the timeout (+ one poll interval) of its last heartbeat and:

1. writes all its threads' Python stacks (``faulthandler``) to ``<run.dir>/hangs/stacks_rank{r:05d}.txt``
   and to stderr, after a line saying what the last progress was;
2. exits the process with :data:`HANG_EXIT_CODE` (``os._exit``: a rank blocked in a collective cannot
   unwind), so the launcher ends the job instead of burning the allocation until the NCCL/gloo
   timeout (``parallel.timeout_min``).

The watchdog is a Python thread (collectives release the GIL while they wait). In case something
holds the GIL for good, ``faulthandler.dump_traceback_later`` is armed as a backstop at twice the
timeout + 60 s: it dumps to stderr and exits with status 1 from C.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from pathlib import Path

from bigtrain.train.loop import Callback, Trainer
from bigtrain.train.step import StepResult

HANG_EXIT_CODE = 4
HANG_DIR = "hangs"


class Watchdog(Callback):
    def __init__(self, timeout_s: float, run_dir: Path, rank: int):
        self.timeout = timeout_s
        self.path = Path(run_dir) / HANG_DIR / f"stacks_rank{rank:05d}.txt"
        self.rank = rank
        self.last = time.monotonic()
        self.what = "start of training"
        self.step = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="bigtrain-watchdog", daemon=True)

    def beat(self, what: str) -> None:
        self.last, self.what = time.monotonic(), what
        faulthandler.dump_traceback_later(2 * self.timeout + 60, exit=True)

    def on_train_start(self, trainer: Trainer) -> None:
        trainer.heartbeat = self.beat
        self.step = trainer.state.step
        self.beat(f"resumed at step {self.step}" if self.step else "start of training")
        self.thread.start()

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        self.step = trainer.state.step
        self.beat(f"end of step {self.step}")

    def on_train_end(self, trainer: Trainer) -> None:
        self.stop()

    def stop(self) -> None:
        self.done.set()
        faulthandler.cancel_dump_traceback_later()

    def _watch(self) -> None:
        poll = min(5.0, max(0.05, self.timeout / 10))
        while not self.done.wait(poll):
            idle = time.monotonic() - self.last
            if idle > self.timeout:
                self.fire(idle)

    def fire(self, idle: float) -> None:
        header = (f"[rank {self.rank}] watchdog: no progress for {idle:.1f} s (train.watchdog_timeout_s="
                  f"{self.timeout:g}); last progress: {self.what}. Python stacks of all threads follow "
                  f"(also in {self.path}); exiting with status {HANG_EXIT_CODE}.\n")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w") as f:
                f.write(header)
                f.flush()
                faulthandler.dump_traceback(file=f, all_threads=True)
        finally:
            sys.stderr.write(header)
            sys.stderr.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            os._exit(HANG_EXIT_CODE)
