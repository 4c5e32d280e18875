"""One optimizer step: ``accum`` micro-batches of forward/backward, one agreement, DeepSpeed's update.

The step reads all its micro-batches first (:func:`fetch`), computes, and only then, after the last
backward, makes the ranks agree on everything they must share in ONE collective (agreement.py): the
loss, non-finite flags (``guard``, see faults.py), data problems, and the slots callbacks add (stop
signals, peak memory, ...). That is the step's only collective and its only device->host
synchronisation outside DeepSpeed (``grad_norm`` is read only when a row is logged). A rank whose
batch could not be read (a corrupt shard under ``data.on_corrupt=stop``) still computes, on zeros, so
it joins every collective the others enter; the agreement then stops all ranks before the update.
With no fault, DeepSpeed steps at the accumulation boundary; with one, the optimizer is gated shut.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Iterator

import torch
from megatron.core import parallel_state

from bigtrain.train.objectives import CausalLM


# The step's own agreement slots (agreement.py); callbacks and objectives add theirs.
STEP_SLOTS = (("loss", "dp_sum"), ("nonfinite_loss", "max"), ("nonfinite_grad", "max"),
              ("data_skipped", "dp_sum"), ("data_problems", "sum"))


@dataclass
class StepResult:
    loss: float  # mean next-token loss over the global batch (may be nan/inf on a skipped step)
    grad_norm_value: object  # DeepSpeed's global gradient norm (a tensor or float; read via grad_norm)
    lr: float  # learning rate applied in this step
    data_wait: float  # seconds spent waiting for batches
    step_time: float  # wall seconds of the whole step
    skipped: bool = False  # the optimizer update was skipped
    nonfinite: str | None = None  # why: "loss", "grad" (seen by bigtrain), "grad_norm" (DeepSpeed), "loss_scale" (fp16)
    agreed: dict = field(default_factory=dict)  # every agreement slot's value, the same on every rank
    extras: dict = field(default_factory=dict)  # the objective's own numbers (distill: kd_loss, ce_loss ...)

    @property
    def grad_norm(self) -> float | None:
        """Global gradient norm before clipping (None: not finite / not computed). A device tensor is
        read (synchronised) only here, i.e. on the steps that log it."""
        norm = self.grad_norm_value
        norm = None if norm is None else float(norm)
        return norm if norm is not None and math.isfinite(norm) else None


def fetch(batches, accum: int) -> tuple[list[torch.Tensor], list]:
    """(micro-batches, data notes) of a step, all read before any compute. bigtrain's TrainLoader
    (``take_step``) does not agree with the other ranks here: its notes go into the step's agreement."""
    if hasattr(batches, "take_step"):
        return batches.take_step()
    if hasattr(batches, "next_step"):
        return batches.next_step(), []
    return [next(batches) for _ in range(accum)], []


def step_agreement(agreement, device: torch.device, objective):
    """The given agreement with the step's and the objective's slots added, or a new one (a standalone
    ``train_step``)."""
    if agreement is None:
        from bigtrain.train.agreement import Agreement

        tp_rank = parallel_state.get_tensor_model_parallel_rank() if parallel_state.model_parallel_is_initialized() else 0
        agreement = Agreement(device, tp_rank)
    for name, op in (*STEP_SLOTS, *objective.slots):
        agreement.add(name, op)
    return agreement


def train_step(engine, batches: Iterator[torch.Tensor], accum: int, device: torch.device, guard=None,
               agreement=None, objective=None) -> StepResult:
    """``objective`` (bigtrain/train/objectives.py) turns a micro-batch into its loss; default: causal LM."""
    objective = objective or CausalLM()
    start = time.perf_counter()
    agreement = step_agreement(agreement, device, objective)
    micro_batches, notes = fetch(batches, accum)
    data_wait = time.perf_counter() - start
    unreadable = any(note.errors for note in notes)  # compute on zeros: join the others' collectives
    if unreadable:
        micro_batches = [zeros_like_batch(batch) for batch in micro_batches]
    objective.begin_step(micro_batches, device)
    total = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        total += forward_backward(engine, objective.loss(engine, batch, device), guard if i == 0 else None)
        if i < accum - 1:
            engine.step()  # not a boundary: DeepSpeed only counts the micro-step
    agreed = agree(agreement, total / accum, guard, notes, objective)
    if hasattr(batches, "settle_step"):  # raises DataStop on every rank if any rank's data was unreadable
        batches.settle_step(round(agreed["data_skipped"]), round(agreed["data_problems"]), notes)
    result = update(engine, agreed, guard, data_wait, start)
    result.extras = objective.step_metrics(agreed)
    return result


def zeros_like_batch(batch):
    """A micro-batch of zeros of the same structure (a token tensor, or an objective's tuple of tensors)."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(torch.zeros_like(t) for t in batch)
    return torch.zeros_like(batch)


def forward_backward(engine, loss: torch.Tensor, guard=None) -> torch.Tensor:
    if guard is not None:
        loss = guard.inject(loss)  # testing aid: BIGTRAIN_INJECT_NAN_STEPS (no-op otherwise)
    engine.backward(loss)
    return loss.detach()


def agree(agreement, mean: torch.Tensor, guard, notes: list, objective) -> dict[str, float]:
    """This rank's facts into the agreement, then the one collective: -> the agreed slots."""
    agreement.set("loss", mean)
    objective.contribute(agreement)
    agreement.set("data_skipped", sum(note.skipped for note in notes))
    agreement.set("data_problems", len({p for note in notes for p in (*note.corrupt, *note.errors)}))
    if guard is not None:
        guard.contribute(agreement, mean)
    agreed = agreement.reduce()
    if parallel_state.model_parallel_is_initialized():
        agreed["loss"] /= parallel_state.get_data_parallel_world_size()  # dp_sum of the ranks' means -> mean
    return agreed


def update(engine, agreed: dict[str, float], guard, data_wait: float, start: float) -> StepResult:
    """DeepSpeed's boundary step, gated shut if the ranks agreed on a non-finite value."""
    lr = engine.get_lr()[0]  # before the step: the rate this update uses
    fault = guard.fault(agreed) if guard is not None else None
    ds_skipped_before = engine.skipped_steps
    with guard.gate(skip=fault is not None) if guard is not None else nullcontext():
        engine.step()
    if fault is None and engine.skipped_steps > ds_skipped_before:
        fault = "loss_scale" if engine.fp16_enabled() else "grad_norm"  # DeepSpeed saw an overflow
    return StepResult(loss=agreed["loss"], grad_norm_value=engine.get_global_grad_norm(), lr=lr, data_wait=data_wait,
                      step_time=time.perf_counter() - start, skipped=fault is not None, nonfinite=fault, agreed=agreed)
