"""One optimizer step: ``accum`` micro-batches of forward/backward, then DeepSpeed's update.

Fetching (:func:`fetch`: all micro-batches before any compute) and the update (:func:`update`) are
separate: the update first agrees on the loss and on numerical faults across ranks (``guard``, see
faults.py), and only then lets DeepSpeed step at the accumulation boundary, with the optimizer gated
shut if any rank saw a non-finite value.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from bigtrain.train.objectives import CausalLM


@dataclass
class StepResult:
    loss: float  # mean next-token loss over the global batch (may be nan/inf on a skipped step)
    grad_norm: float | None  # global gradient norm before clipping (None: not finite / not computed)
    lr: float  # learning rate applied in this step
    data_wait: float  # seconds spent waiting for batches
    step_time: float  # wall seconds of the whole step
    skipped: bool = False  # the optimizer update was skipped
    nonfinite: str | None = None  # why: "loss", "grad" (seen by bigtrain), "grad_norm" (DeepSpeed), "loss_scale" (fp16)
    extras: dict = field(default_factory=dict)  # the objective's own numbers (distill: kd_loss, ce_loss ...)


def fetch(batches, accum: int) -> list[torch.Tensor]:
    """All micro-batches of a step, read before any compute. bigtrain's TrainLoader (``next_step``)
    also makes the ranks agree on data errors here, so none enters a collective another has left."""
    if hasattr(batches, "next_step"):
        return batches.next_step()
    return [next(batches) for _ in range(accum)]


def train_step(engine, batches: Iterator[torch.Tensor], accum: int, device: torch.device, guard=None,
               objective=None) -> StepResult:
    """``objective`` (bigtrain/train/objectives.py) turns a micro-batch into its loss; default: causal LM."""
    objective = objective or CausalLM()
    start = time.perf_counter()
    micro_batches = fetch(batches, accum)
    data_wait = time.perf_counter() - start
    objective.begin_step(micro_batches, device)
    total = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        total += forward_backward(engine, objective.loss(engine, batch, device), guard if i == 0 else None)
        if i < accum - 1:
            engine.step()  # not a boundary: DeepSpeed only counts the micro-step
    result = update(engine, total / accum, guard, data_wait, start)
    result.extras = objective.step_metrics(device)
    return result


def forward_backward(engine, loss: torch.Tensor, guard=None) -> torch.Tensor:
    if guard is not None:
        loss = guard.inject(loss)  # testing aid: BIGTRAIN_INJECT_NAN_STEPS (no-op otherwise)
    engine.backward(loss)
    return loss.detach()


def update(engine, mean: torch.Tensor, guard, data_wait: float, start: float) -> StepResult:
    """Average the loss over data-parallel ranks, agree on faults, then DeepSpeed's boundary step."""
    dist.all_reduce(mean, group=parallel_state.get_data_parallel_group())
    mean /= parallel_state.get_data_parallel_world_size()
    lr = engine.get_lr()[0]  # before the step: the rate this update uses
    fault = guard.agree(mean) if guard is not None else None
    ds_skipped_before = engine.skipped_steps
    with guard.gate(skip=fault is not None) if guard is not None else nullcontext():
        engine.step()
    if fault is None and engine.skipped_steps > ds_skipped_before:
        fault = "loss_scale" if engine.fp16_enabled() else "grad_norm"  # DeepSpeed saw an overflow
    norm = engine.get_global_grad_norm()
    norm = None if norm is None or not math.isfinite(float(norm)) else float(norm)
    return StepResult(loss=mean.item(), grad_norm=norm, lr=lr, data_wait=data_wait,
                      step_time=time.perf_counter() - start, skipped=fault is not None, nonfinite=fault)
