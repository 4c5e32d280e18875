"""Run by tests/test_distill.py on 2 gloo ranks (TP=2): vocab-parallel KL, its gradient and accuracy vs dense torch.

Every rank draws the same full logits (fp32, seeded), keeps its vocabulary shard, computes
``kl_divergence`` and ``correct`` vocab-parallel, backpropagates, gathers its gradient shard, and
compares with plain torch on the full logits. Rank 0 writes the largest differences to OUT (JSON).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from bigtrain.model.vocab_parallel import correct, kl_divergence
from bigtrain.parallel.world import destroy_world, init_world


def main(out: str) -> None:
    world = init_world(2, backend="gloo")
    result = {f"T={T:g}": compare(world, T) for T in (1.0, 2.0)}
    if world.rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    destroy_world()


def compare(world, T: float) -> dict:
    gen = torch.Generator().manual_seed(0)
    V = 128
    student = torch.randn(3, 5, V, generator=gen)  # unit-scale logits: per-token KL of order 0.1-1
    teacher = torch.randn(3, 5, V, generator=gen)
    teacher[..., 100:] = -1.0e30  # vocabulary padding rows, as the models mask them
    student[..., 100:] = -1.0e30
    labels = torch.randint(0, 100, (3, 5), generator=gen)
    labels[0, 0] = student[0, 0].argmax()  # at least one hit
    shard = slice(world.tp_rank * V // 2, (world.tp_rank + 1) * V // 2)
    local = student[..., shard].clone().requires_grad_(True)
    kl = kl_divergence(local, teacher[..., shard], T)
    kl.sum().backward()
    grads = [torch.empty_like(local.grad) for _ in range(2)]
    dist.all_gather(grads, local.grad.contiguous())
    full = student.clone().requires_grad_(True)
    log_ps, log_pt = F.log_softmax(full / T, -1), F.log_softmax(teacher / T, -1)
    dense = (T * T) * F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(-1)
    dense.sum().backward()
    hits = correct(student[..., shard], labels)
    return {"kl": (kl - dense).abs().max().item(), "grad": (torch.cat(grads, -1) - full.grad).abs().max().item(),
              "kl_mean": dense.mean().item(), "accuracy_equal": bool(torch.equal(hits, student.argmax(-1) == labels)),
              "hits": int(hits.sum())}


if __name__ == "__main__":
    main(sys.argv[1])
