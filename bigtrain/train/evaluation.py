"""Validation loss on a fixed set per source, identical for every parallel layout.

A source's set is the first ``min(eval.batches * global_batch, val samples)`` samples of its shards'
validation split, in stored order. Rank r of D data-parallel ranks takes samples r, r+D, ...; every
rank runs the same number of micro-batches (ZeRO-3's forward is collective), the tail padded with
weight-0 samples. A source's loss = sum of token losses / number of tokens over its set. With several
sources, ``val_loss`` is their mixture-weighted mean (the loss on the training distribution) and
``val_loss/<name>`` each one's.

The objective (objectives.py) scores a batch: next-token loss for causal LM; for masked LM the loss and
accuracy on the chosen positions of each validation sample, masked by a key of (seed, sample index)
(bigtrain/data/masking.py), so the set, its masks and the result are the same at every evaluation
and for every layout (``val_loss`` is then the masked-token loss and ``val_mlm_acc`` the accuracy).

A rank reads all its validation samples before the first forward and the ranks agree on corrupt
shards (as the training loader does): under ``data.on_corrupt=skip`` such samples get weight 0 and
are counted (``val_skipped_samples``), under ``stop`` every rank raises :class:`DataStop` together.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from bigtrain.data.errors import DataStop
from bigtrain.data.loader import agree
from bigtrain.data.reader import ShardReader
from bigtrain.data.sources import Source
from bigtrain.data.stream import Note
from bigtrain.train.loop import Callback, Trainer
from bigtrain.train.objectives import CausalLM
from bigtrain.train.step import StepResult


def val_ids(num_samples: int, micro_batch: int, dp_rank: int, dp_size: int) -> list[np.ndarray]:
    """The split indices of this rank's micro-batches of the set, padded like :func:`read_val_set` (with 0)."""
    mine = np.arange(dp_rank, num_samples, dp_size)
    steps = math.ceil(math.ceil(num_samples / dp_size) / micro_batch)
    out = []
    for i in range(steps):
        idx = mine[i * micro_batch:(i + 1) * micro_batch]
        out.append(np.concatenate([idx, np.zeros(micro_batch - len(idx), dtype=idx.dtype)]))
    return out


def read_val_set(reader: ShardReader, num_samples: int, micro_batch: int, dp_rank: int,
                 dp_size: int) -> tuple[list[torch.Tensor], list[torch.Tensor], Note]:
    """This rank's micro-batches of the set, their sample weights, and a report of corrupt samples."""
    mine = np.arange(dp_rank, num_samples, dp_size)
    steps = math.ceil(math.ceil(num_samples / dp_size) / micro_batch)
    tokens, weights, corrupt, errors, skipped = [], [], set(), set(), 0
    for i in range(steps):
        idx = mine[i * micro_batch:(i + 1) * micro_batch]
        weight = torch.zeros(micro_batch)
        weight[:len(idx)] = 1.0
        idx = np.concatenate([idx, np.zeros(micro_batch - len(idx), dtype=idx.dtype)])  # pad with sample 0
        out, bad = reader.gather(idx)
        for row in bad:
            skipped += int(weight[row].item())
            weight[row] = 0.0
            path, message = reader.shard_error(int(idx[row]))
            corrupt.add(path)
            errors.add(message)
        tokens.append(torch.from_numpy(out))
        weights.append(weight)
    report = Note(skipped=skipped, corrupt=tuple(sorted(corrupt)), errors=tuple(sorted(errors)))
    return tokens, weights, report


@torch.no_grad()
def validation_loss(engine, tokens: list[torch.Tensor], weights: list[torch.Tensor], device: torch.device,
                    on_batch=lambda: None, objective=None, ids: list[np.ndarray] | None = None
                    ) -> tuple[float, int, float | None]:
    """(mean token loss, tokens, accuracy or None) over a set read by :func:`read_val_set`, all
    data-parallel ranks together; ``objective`` scores a batch (default: causal LM), ``ids`` its samples."""
    objective = objective or CausalLM()
    total = torch.zeros(3, dtype=torch.float64, device=device)  # [loss sum, token count, correct]
    accuracy = False
    engine.eval()
    for i, (batch, weight) in enumerate(zip(tokens, weights)):
        batch, weight = batch.to(device).long(), weight.to(device).double()
        losses, counts, hits = objective.eval_batch(engine, batch, ids[i] if ids else None)  # each (M,)
        total[0] += (losses * weight).sum()
        total[1] += (counts * weight).sum()
        if hits is not None:
            total[2] += (hits * weight).sum()
            accuracy = True
        on_batch()
    engine.train()
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    count = total[1].clamp(min=1)
    return (total[0] / count).item(), int(total[1].item()), (total[2] / count).item() if accuracy else None


class EvalCallback(Callback):
    def __init__(self, sources: list[Source], every: int, batches: int, on_corrupt: str = "stop", objective=None):
        self.objective = objective
        self.sets = [(s.name, ShardReader(s.manifest, "val"), s.weight) for s in sources if s.has_val]
        self.every = every
        self.batches = batches
        self.on_corrupt = on_corrupt

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        step = trainer.state.step
        if not self.every or (step % self.every and step not in (trainer.cfg.train.steps, trainer.cfg.train.stop_at)):
            return
        t, w = trainer.cfg.train, trainer.world
        losses, metrics, skipped, accuracies = [], {}, 0, []
        for name, reader, weight in self.sets:
            samples = min(self.batches * t.global_batch_size, reader.num_samples)
            tokens, weights, report = read_val_set(reader, samples, t.micro_batch_size, w.dp_rank, w.dp_size)
            bad, _, errors = agree([report], w.dp_size, w.device, collective=True)
            if errors and self.on_corrupt == "stop":
                raise DataStop(f"corrupt validation data of source {name!r} (data.on_corrupt=stop): "
                               + "; ".join(errors))
            ids = val_ids(samples, t.micro_batch_size, w.dp_rank, w.dp_size)
            loss, count, accuracy = validation_loss(
                trainer.engine, tokens, weights, w.device, lambda: trainer.heartbeat(f"evaluation at step {step}"),
                self.objective, ids)
            losses.append((loss, count, weight))
            if accuracy is not None:
                accuracies.append((accuracy, weight))
                metrics[f"val_mlm_acc/{name}"] = accuracy
            skipped += bad
            metrics.update({f"val_loss/{name}": loss, f"val_ppl/{name}": math.exp(min(loss, 50.0))})
        total_weight = sum(weight for _, _, weight in losses)
        loss = sum(loss * weight for loss, _, weight in losses) / total_weight
        trainer.extra_metrics.update(val_loss=loss, val_ppl=math.exp(min(loss, 50.0)),
                                     val_tokens=sum(count for _, count, _ in losses))
        if accuracies:
            trainer.extra_metrics["val_mlm_acc"] = sum(a * w for a, w in accuracies) / total_weight
        if len(self.sets) > 1:
            trainer.extra_metrics.update(metrics)
        if skipped:
            trainer.extra_metrics["val_skipped_samples"] = skipped
