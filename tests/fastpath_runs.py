"""Train a small model for a few steps under several fast-path settings in ONE launch; print losses.

    torchrun --nproc_per_node 1 tests/fastpath_runs.py OUT.json SHARD_DIR NAME key=value ... -- NAME key=value ...

Each ``NAME key=value ...`` group (separated by ``--``) builds a fresh engine with the real
``build_engine`` (same seed: the same initial weights) and trains ``train.steps`` steps with the real
``train_step`` on the same micro-batches (the real loader over SHARD_DIR: seq_len 64, vocabulary 1024), so the
runs differ only in their settings. Rank 0 writes ``{NAME: {"losses": [per step],
"compiled_graphs": N, "patched_torch_linear": bool}, ...}`` to OUT.json (DeepSpeed's ZeRO-3
``memory_efficient_linear`` would replace ``torch.nn.functional.linear`` process-wide).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from bigtrain.config.load import load_config
from bigtrain.data.loader import StreamSpec, TrainLoader
from bigtrain.data.sources import load_sources
from bigtrain.parallel.engine import build_engine, release_engine
from bigtrain.parallel.world import destroy_world, init_world
from bigtrain.train.step import train_step

BASE = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
        "model.ffn_hidden_size=176", "model.seq_len=64", "model.vocab_size=1024", "train.global_batch_size=4",
        "train.micro_batch_size=2", "train.steps=4", "train.warmup_steps=1", "train.lr=3e-3"]


def run(overrides: list[str], world, shards: Path) -> dict:
    """{"losses": per step, "compiled_graphs": graphs torch.compile built during this run}."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    linear = torch.nn.functional.linear
    cfg = load_config(None, [*BASE, *overrides])
    engine, _ = build_engine(cfg, world, cfg.model.vocab_size)
    t = cfg.train
    spec = StreamSpec(t.global_batch_size, t.micro_batch_size, world.dp_rank, world.dp_size, t.seed)
    batches = TrainLoader(load_sources([(str(shards), 1.0, "")], "data.path"), spec, device=world.device)
    accum = t.global_batch_size // (t.micro_batch_size * world.dp_size)
    losses = [train_step(engine, batches, accum, world.device).loss for _ in range(t.steps)]
    release_engine(engine)
    dist.barrier()
    return {"losses": losses, "compiled_graphs": counters["stats"]["unique_graphs"] - graphs,
            "patched_torch_linear": torch.nn.functional.linear is not linear}


def groups(args: list[str]) -> list[list[str]]:
    out, current = [], []
    for item in args:
        if item == "--":
            out.append(current)
            current = []
        else:
            current.append(item)
    return [g for g in [*out, current] if g]


def main(argv: list[str]) -> None:
    out, shards, runs = Path(argv[0]), Path(argv[1]), groups(argv[2:])
    tp = next((int(a.split("=")[1]) for g in runs for a in g if a.startswith("parallel.tensor_parallel=")), 1)
    world = init_world(tp, "auto")  # gloo on CPU, nccl on CUDA
    try:
        results = {group[0]: run(group[1:], world, shards) for group in runs}
    finally:
        destroy_world()
    if world.is_main:
        out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
