"""The generic training loop: steps until ``train.steps``, hooks for everything else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from bigtrain.config.schema import Config
from bigtrain.parallel.world import World
from bigtrain.train.agreement import Agreement
from bigtrain.train.progress import Console
from bigtrain.train.step import StepResult, train_step


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done (skipped updates included: they consumed their batch)
    consumed_samples: int = 0  # position in the global sample stream (see bigtrain/data/order.py)
    skipped_steps: int = 0  # updates skipped for a non-finite loss/gradient (or an fp16 overflow)
    consecutive_skips: int = 0  # ... in a row, up to the last step
    loss_ema: float = 0.0  # running mean of finite losses (EMA, not bias-corrected; see faults.py)
    loss_ema_steps: int = 0  # losses folded into loss_ema

    HEALTH = ("skipped_steps", "consecutive_skips", "loss_ema", "loss_ema_steps")

    def health(self) -> dict:
        """The part of the state that checkpoints carry in ``meta["health"]``."""
        return {k: getattr(self, k) for k in self.HEALTH}

    @classmethod
    def from_meta(cls, meta: dict) -> TrainState:
        health = {k: v for k, v in meta.get("health", {}).items() if k in cls.HEALTH}
        return cls(step=meta["step"], consumed_samples=meta["consumed_samples"], **health)



class Callback:
    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, result: StepResult) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...


class Trainer:
    def __init__(self, cfg: Config, world: World, engine, batches: Iterator[torch.Tensor],
                 state: TrainState, callbacks: list[Callback], guard=None, objective=None):
        self.cfg, self.world, self.engine, self.state = cfg, world, engine, state
        self.batches = batches
        self.callbacks = callbacks
        self.guard = guard  # bigtrain.train.faults.NonFiniteGuard: skips updates with non-finite values
        self.objective = objective  # bigtrain.train.objectives: the loss of a micro-batch (None: causal LM)
        self.accum = cfg.train.global_batch_size // (cfg.train.micro_batch_size * world.dp_size)
        self.extra_metrics: dict[str, float] = {}  # filled by callbacks during a step (e.g. val_loss)
        self.heartbeat: Callable[[str], None] = lambda what: None  # long phases report progress (watchdog)
        self.console = Console()  # rank 0's stdout: log lines and the progress bar
        self.stop_reason: str | None = None
        self.requeue = False  # stopped by a signal: the launcher should requeue the job
        self.failed = False  # stopped by a fault (e.g. too many non-finite steps): exit non-zero
        # the step's one collective (agreement.py): callbacks add their slots in on_train_start and read
        # the agreed values from result.agreed in on_step_end, instead of a collective of their own
        self.agreement = Agreement(world.device, world.tp_rank)

    def stop(self, reason: str, requeue: bool = False, failed: bool = False) -> None:
        """End the loop after the current step (callbacks' on_train_end still run: e.g. a final save)."""
        if self.stop_reason is None or failed:
            self.stop_reason = reason
        self.requeue = (self.requeue or requeue) and not failed
        self.failed = self.failed or failed

    def say(self, message: str) -> None:
        """A line on rank 0's stdout (between the log lines, above the progress bar)."""
        if self.world.is_main:
            self.console.print(message)

    def fit(self) -> TrainState:
        for cb in self.callbacks:
            cb.on_train_start(self)
        while self.state.step < self.cfg.train.steps and self.stop_reason is None:
            self.extra_metrics = {}
            if self.guard is not None:
                self.guard.begin_step(self.state.step + 1)
            result = train_step(self.engine, self.batches, self.accum, self.world.device, self.guard,
                                self.agreement, self.objective)
            self.state.step += 1
            self.state.consumed_samples += self.cfg.train.global_batch_size
            for cb in self.callbacks:
                cb.on_step_end(self, result)
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.state
