"""The generic training loop: steps until ``train.steps``, hooks for everything else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from bigtrain.config.schema import Config
from bigtrain.parallel.world import World
from bigtrain.train.step import StepResult, train_step


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    consumed_samples: int = 0  # position in the global sample stream (see bigtrain/data/order.py)


class Callback:
    def on_train_start(self, trainer: "Trainer") -> None: ...
    def on_step_end(self, trainer: "Trainer", result: StepResult) -> None: ...
    def on_train_end(self, trainer: "Trainer") -> None: ...


class Trainer:
    def __init__(self, cfg: Config, world: World, engine, batches: Iterator[torch.Tensor],
                 state: TrainState, callbacks: list[Callback]):
        self.cfg, self.world, self.engine, self.state = cfg, world, engine, state
        self.batches = batches
        self.callbacks = callbacks
        self.accum = cfg.train.global_batch_size // (cfg.train.micro_batch_size * world.dp_size)
        self.extra_metrics: dict[str, float] = {}  # filled by callbacks during a step (e.g. val_loss)
        self.stop_reason: str | None = None
        self.requeue = False

    def stop(self, reason: str, requeue: bool = False) -> None:
        """End the loop after the current step (callbacks' on_train_end still run: e.g. a final save)."""
        self.stop_reason = reason
        self.requeue = requeue

    def fit(self) -> TrainState:
        for cb in self.callbacks:
            cb.on_train_start(self)
        while self.state.step < self.cfg.train.steps and self.stop_reason is None:
            self.extra_metrics = {}
            result = train_step(self.engine, self.batches, self.accum, self.world.device)
            self.state.step += 1
            self.state.consumed_samples += self.cfg.train.global_batch_size
            for cb in self.callbacks:
                cb.on_step_end(self, result)
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.state
