"""One optimizer step: ``accum`` micro-batches of forward/backward, then DeepSpeed's update."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state


@dataclass
class StepResult:
    loss: float  # mean next-token loss over the global batch
    grad_norm: float | None  # global gradient norm before clipping
    lr: float
    data_wait: float  # seconds spent waiting for batches
    step_time: float  # wall seconds of the whole step


def train_step(engine, batches: Iterator[torch.Tensor], accum: int, device: torch.device) -> StepResult:
    start = time.perf_counter()
    data_wait = 0.0
    total = torch.zeros((), device=device)
    for _ in range(accum):
        t0 = time.perf_counter()
        tokens = next(batches).to(device, non_blocking=True)  # (M, T+1)
        data_wait += time.perf_counter() - t0
        losses = engine(tokens[:, :-1], tokens[:, 1:])  # (M, T) fp32
        loss = losses.mean()
        engine.backward(loss)
        engine.step()  # DeepSpeed updates only at the accumulation boundary
        total += loss.detach()
    mean = total / accum
    dist.all_reduce(mean, group=parallel_state.get_data_parallel_group())
    mean /= parallel_state.get_data_parallel_world_size()
    norm = engine.get_global_grad_norm()
    return StepResult(loss=mean.item(), grad_norm=None if norm is None else float(norm),
                      lr=engine.get_lr()[0], data_wait=data_wait, step_time=time.perf_counter() - start)
