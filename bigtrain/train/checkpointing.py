"""Callback that saves checkpoints every ``checkpoint.every`` steps and after the last step; rank 0 prints
a line per save (step, seconds, size, folder)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from bigtrain.checkpoint.manager import Checkpointer
from bigtrain.train.loop import Callback, Trainer
from bigtrain.train.step import StepResult


class CheckpointCallback(Callback):
    def __init__(self, checkpointer: Checkpointer, every: int, save_final: bool,
                 describe: Callable[[Trainer], dict], config_yaml: str, tokenizer_dir: Path | None):
        self.checkpointer = checkpointer
        self.every = every
        self.save_final = save_final
        self.describe = describe
        self.config_yaml = config_yaml
        self.tokenizer_dir = tokenizer_dir
        self.last_saved = -1

    def save(self, trainer: Trainer) -> None:
        trainer.heartbeat(f"checkpoint save of step {trainer.state.step} started")
        started = time.perf_counter()
        folder = self.checkpointer.save(trainer.engine, self.describe(trainer), self.config_yaml, self.tokenizer_dir)
        self.last_saved = trainer.state.step
        trainer.heartbeat(f"checkpoint save of step {trainer.state.step} done")
        if trainer.world.is_main:
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            trainer.say(f"checkpoint: step {trainer.state.step} saved in {time.perf_counter() - started:.1f} s "
                        f"({size / 2**20:,.1f} MiB): {folder}")

    def on_train_start(self, trainer: Trainer) -> None:
        self.last_saved = trainer.state.step

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if self.every and trainer.state.step % self.every == 0:
            self.save(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        # a stop (signal: the job is about to be requeued; fault: keep the last good weights) always saves
        if (self.save_final or trainer.stop_reason) and self.last_saved != trainer.state.step:
            self.save(trainer)
