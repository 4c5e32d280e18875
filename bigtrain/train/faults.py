"""Numerical faults: skip updates with non-finite values, count them, stop on a streak, log loss spikes.

Skipping (:class:`NonFiniteGuard`). Every rank watches its own values during the step: the loss
of each micro-batch and, through a tensor hook on every parameter, each local gradient before
DeepSpeed reduces it (a non-finite local gradient makes the reduced one non-finite too). Before
the accumulation-boundary ``engine.step()`` the ranks agree (two flags, max over the world, in the
step's one agreement: train/agreement.py), so either every rank updates or none does. A skipped
update is gated at the innermost torch optimizer (``engine.basic_optimizer.step`` is a no-op for that
call) and at the LR scheduler:

- weights, fp32 master weights and Adam moments/step counts stay exactly as after the last good
  update; ZeRO's wrappers still run (they copy the unchanged master weights back, free gradients);
- the LR schedule does not advance (DeepSpeed's own convention for overflow skips), so the next
  update uses the rate the skipped one would have used;
- the step still counts: ``TrainState.step`` and DeepSpeed's ``global_steps`` advance together and
  the batch is consumed, so a resumed run lands on the same data.

DeepSpeed's ZeRO optimizers also skip when *their* gradient norm is not finite (and fp16 loss
scaling skips on overflow); ``engine.skipped_steps`` tells us, and such steps are counted too.

Counting and stopping (:class:`HealthCallback`): ``skipped_steps`` and ``consecutive_skips`` live in
:class:`~bigtrain.train.loop.TrainState` (so checkpoints carry them); ``train.max_consecutive_skips``
skips in a row stop the run: a checkpoint is saved (its weights are those of the last good update)
and the process exits with :data:`DIVERGED_EXIT_CODE`. fp16 loss-scale overflows are expected
while DeepSpeed calibrates the scale and do not count towards the streak.

Spikes: a finite loss above ``train.spike_threshold`` x the running mean (bias-corrected EMA,
beta 0.98, after 10 steps) is logged (stdout and ``loss_spike`` = the ratio in metrics.jsonl).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch

from bigtrain.train.loop import Callback, Trainer
from bigtrain.train.step import StepResult

DIVERGED_EXIT_CODE = 3
EMA_BETA = 0.98
SPIKE_WARMUP_STEPS = 10


class NonFiniteGuard:
    def __init__(self, engine, device: torch.device, check_grads: bool = True,
                 nan_steps: frozenset[int] = frozenset(), inject_rank: bool = False):
        self.engine = engine
        self.step = 0
        self.bad_grad = torch.zeros((), dtype=torch.bool, device=device)
        self.nan_steps, self.inject_rank = nan_steps, inject_rank
        self.hooks = [p.register_hook(self._check_grad) for p in engine.module.parameters()
                      if p.requires_grad] if check_grads else []

    def _check_grad(self, grad: torch.Tensor) -> None:
        # A NaN or Inf element makes the sum non-finite: one read of the gradient and no temporary of
        # its size (isfinite(grad).all() cost ~4% of a CPU step). Only a finite gradient whose sum
        # exceeds 3.4e38 would be flagged too.
        torch.logical_or(self.bad_grad, ~torch.isfinite(grad.sum()), out=self.bad_grad)

    def begin_step(self, step: int) -> None:
        self.step = step
        self.bad_grad.zero_()

    def inject(self, loss: torch.Tensor) -> torch.Tensor:
        """Testing aid (BIGTRAIN_INJECT_NAN_STEPS, see inject.py): a NaN loss on one rank at chosen steps."""
        if self.inject_rank and self.step in self.nan_steps:
            return loss * float("nan")
        return loss

    def contribute(self, agreement, mean_loss: torch.Tensor) -> None:
        """This rank's non-finite flags into the step's agreement (train/agreement.py; no sync here)."""
        agreement.set("nonfinite_loss", ~torch.isfinite(mean_loss))
        agreement.set("nonfinite_grad", self.bad_grad)

    @staticmethod
    def fault(agreed: dict[str, float]) -> str | None:
        """From the agreed slots: "loss" or "grad" if any rank saw a non-finite one, else None."""
        return "loss" if agreed["nonfinite_loss"] else "grad" if agreed["nonfinite_grad"] else None

    @contextmanager
    def gate(self, skip: bool) -> Iterator[None]:
        """Within the block, a skipped update leaves the optimizer and the LR schedule untouched."""
        if not skip:
            yield
            return
        targets = [self.engine.basic_optimizer, self.engine.lr_scheduler]
        with _replaced([t for t in targets if t is not None], "step", lambda *a, **k: None):
            yield

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


@contextmanager
def _replaced(objects: list, name: str, value) -> Iterator[None]:
    """Set instance attribute ``name`` on each object, restoring the previous instance/class lookup after."""
    saved = [(obj, obj.__dict__.get(name, _MISSING)) for obj in objects]
    for obj in objects:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, old in saved:
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


_MISSING = object()


class HealthCallback(Callback):
    """Counts skipped steps, stops after ``max_consecutive_skips`` in a row, flags loss spikes."""

    def __init__(self, max_consecutive_skips: int, spike_threshold: float):
        self.max_consecutive = max_consecutive_skips
        self.spike_threshold = spike_threshold
        self.last_good_step = 0

    def on_train_start(self, trainer: Trainer) -> None:
        self.last_good_step = trainer.state.step - trainer.state.consecutive_skips

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        state = trainer.state
        fault = result.skipped and result.nonfinite != "loss_scale"
        state.skipped_steps += int(result.skipped)
        state.consecutive_skips = state.consecutive_skips + 1 if fault else 0
        if not fault:
            self.last_good_step = state.step
        if result.skipped:
            trainer.say(f"warning: step {state.step}: non-finite {result.nonfinite}, update skipped "
                              f"({state.consecutive_skips} in a row, {state.skipped_steps} in total)")
        elif math.isfinite(result.loss):
            self.track_loss(trainer, result.loss)
        if self.max_consecutive and state.consecutive_skips >= self.max_consecutive:
            trainer.stop(self.diverged_message(state), failed=True)

    def track_loss(self, trainer: Trainer, loss: float) -> None:
        state = trainer.state
        if self.spike_threshold and state.loss_ema_steps >= SPIKE_WARMUP_STEPS:
            mean = state.loss_ema / (1 - EMA_BETA ** state.loss_ema_steps)
            if loss > self.spike_threshold * mean:
                trainer.extra_metrics["loss_spike"] = loss / mean
                trainer.say(f"warning: step {state.step}: loss spike: {loss:.4f} is {loss / mean:.2f}x the running "
                                  f"mean {mean:.4f} (train.spike_threshold={self.spike_threshold})")
        state.loss_ema = EMA_BETA * state.loss_ema + (1 - EMA_BETA) * loss
        state.loss_ema_steps += 1

    def diverged_message(self, state) -> str:
        first = state.step - state.consecutive_skips + 1
        return (f"train.max_consecutive_skips={self.max_consecutive}: steps {first}-{state.step} all had a non-finite "
                f"loss or gradient, so their updates were skipped. Stopping with a checkpoint at step {state.step} "
                f"that holds the weights of step {self.last_good_step} (the last good update). Check the data and "
                f"the learning rate around step {first}; restarting resumes after the bad steps.")
