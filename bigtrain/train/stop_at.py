"""``train.stop_at``: end the run after a given step, with a checkpoint, as if paused.

The learning-rate schedule still runs to ``train.steps``, so a later start without ``stop_at``
(or with a larger one) continues exactly where an uninterrupted run would be. ``bigtrain sweep``'s
successive halving runs every trial to a rung this way, then continues only the promoted ones.
A run started at or past its ``stop_at`` (a re-run of a finished rung) stops before any step.
"""

from __future__ import annotations

from bigtrain.train.loop import Callback, Trainer
from bigtrain.train.step import StepResult


class StopAt(Callback):
    def __init__(self, step: int):
        self.step = step  # 0 = off

    def check(self, trainer: Trainer) -> None:
        if self.step and trainer.state.step >= self.step and trainer.stop_reason is None:
            trainer.stop(f"train.stop_at={self.step} reached")

    def on_train_start(self, trainer: Trainer) -> None:
        self.check(trainer)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        self.check(trainer)
