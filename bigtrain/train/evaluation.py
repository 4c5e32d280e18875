"""Validation loss on a fixed set, identical for every parallel layout.

The set is the first ``min(eval.batches * global_batch, val samples)`` samples of the shards'
validation split, in stored order. Rank r of D data-parallel ranks takes samples r, r+D, ...;
every rank runs the same number of micro-batches (ZeRO-3's forward is collective), the tail
padded with weight-0 samples. Loss = sum of token losses / number of tokens over the whole set.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from bigtrain.data.loader import ShardReader
from bigtrain.train.loop import Callback, Trainer
from bigtrain.train.step import StepResult


@torch.no_grad()
def validation_loss(engine, reader: ShardReader, num_samples: int, micro_batch: int, dp_rank: int,
                    dp_size: int, device: torch.device, on_batch=lambda: None) -> tuple[float, int]:
    """(mean token loss, tokens) over the first ``num_samples`` validation samples."""
    mine = np.arange(dp_rank, num_samples, dp_size)
    per_rank = math.ceil(num_samples / dp_size)
    steps = math.ceil(per_rank / micro_batch)
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [loss sum, token count]
    engine.eval()
    for i in range(steps):
        idx = mine[i * micro_batch:(i + 1) * micro_batch]
        weight = torch.zeros(micro_batch, device=device)
        weight[:len(idx)] = 1.0
        idx = np.concatenate([idx, np.zeros(micro_batch - len(idx), dtype=idx.dtype)])  # pad with sample 0
        tokens = reader.read_many(idx).to(device)
        losses = engine(tokens[:, :-1], tokens[:, 1:])  # (M, T)
        total[0] += (losses.double().sum(dim=1) * weight).sum()
        total[1] += weight.sum() * losses.shape[1]
        on_batch()
    engine.train()
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return (total[0] / total[1]).item(), int(total[1].item())


class EvalCallback(Callback):
    def __init__(self, reader: ShardReader, every: int, batches: int):
        self.reader = reader
        self.every = every
        self.batches = batches

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        step = trainer.state.step
        if not self.every or (step % self.every and step != trainer.cfg.train.steps):
            return
        t = trainer.cfg.train
        samples = min(self.batches * t.global_batch_size, self.reader.num_samples)
        loss, tokens = validation_loss(trainer.engine, self.reader, samples, t.micro_batch_size,
                                       trainer.world.dp_rank, trainer.world.dp_size, trainer.world.device,
                                       on_batch=lambda: trainer.heartbeat(f"evaluation at step {step}"))
        trainer.extra_metrics.update(val_loss=loss, val_ppl=math.exp(min(loss, 50.0)), val_tokens=tokens)
