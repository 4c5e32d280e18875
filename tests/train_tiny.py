"""Train tiny models for a few steps on random tokens and save real bigtrain checkpoints (one rank).

    torchrun --nproc_per_node 4 tests/train_tiny.py --tokenizer DIR --vocab-size 300 \
        OUT_A parallel.zero_stage=3 -- OUT_B parallel.zero_stage=2 parallel.tensor_parallel=1 \
        -- OUT_C parallel.zero_stage=1 parallel.tensor_parallel=4 from=OUT_A

Each ``RUN_DIR key=value ...`` group (separated by ``--``) is one run: the engine is built with the
real ``build_engine`` and saved with the real ``Checkpointer``; all runs share this process group, so
one launch of the ranks (the slow part on CPU) makes several checkpoints. Each run may use its own
``parallel.tensor_parallel`` (megatron's groups are rebuilt; DP = ranks / TP). The data pipeline is
not needed: batches are random tokens drawn from ``train.seed``. A run with ``from=CHECKPOINT`` does
not train: it loads CHECKPOINT (any layout) with bigtrain/checkpoint/reshard.py and saves it again
at its own layout, unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from bigtrain.checkpoint.manager import Checkpointer
from bigtrain.config.load import dump_yaml, load_config, to_dict
from bigtrain.config.arithmetic import padded_vocab_size
from bigtrain.parallel.engine import build_engine, release_engine
from bigtrain.parallel.world import destroy_world, init_world
from bigtrain.train.step import train_step

BASE = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
        "model.ffn_hidden_size=96", "model.seq_len=32", "parallel.tensor_parallel=2",
        "train.global_batch_size=8", "train.micro_batch_size=2", "train.warmup_steps=1", "train.steps=2",
        "train.lr=1e-2"]
REFERENCE = "reference_logits.pt"


def random_batches(cfg, vocab_size: int, dp_rank: int, dp_size: int):
    """Micro-batches (M, T+1) of this data-parallel rank; identical across the TP ranks of a group."""
    gen = torch.Generator().manual_seed(cfg.train.seed)
    micro, seq = cfg.train.micro_batch_size, cfg.model.seq_len
    while True:
        batch = torch.randint(0, vocab_size, (cfg.train.global_batch_size, seq + 1), generator=gen)
        per_rank = batch.view(-1, dp_size, micro, seq + 1)[:, dp_rank]  # (accum, M, T+1)
        yield from per_rank


def meta_for(cfg, world, step: int) -> dict:
    """What bigtrain/train/run.py's describe() writes."""
    return {
        "step": step, "consumed_samples": step * cfg.train.global_batch_size,
        "consumed_tokens": step * cfg.train.global_batch_size * cfg.model.seq_len,
        "tensor_parallel": world.tp_size, "data_parallel": world.dp_size,
        "zero_stage": cfg.parallel.zero_stage, "precision": cfg.train.precision,
        "vocab_size": cfg.model.vocab_size,
        "padded_vocab_size": padded_vocab_size(cfg.model.vocab_size, cfg.model.vocab_pad_multiple, world.tp_size),
        "model": to_dict(cfg)["model"],
        "data": {"path": "", "global_batch_size": cfg.train.global_batch_size, "seed": cfg.train.seed},
    }


def world_with_tp(tp: int):
    """This process group with megatron's TP/DP groups for tensor-parallel size ``tp``."""
    if parallel_state.model_parallel_is_initialized() and parallel_state.get_tensor_model_parallel_world_size() != tp:
        parallel_state.destroy_model_parallel()
    return init_world(tp, "gloo")


def reshard_one(run_dir: Path, cfg, source: Path, vocab_size: int, tokenizer: Path | None, world) -> None:
    """Load ``source`` into an engine of this run's layout and save it as is."""
    from bigtrain.checkpoint.reshard import load_into_engine
    from bigtrain.checkpoint.source import Checkpoint

    engine, _ = build_engine(cfg, world, vocab_size)
    ckpt = Checkpoint.open(source)
    step = load_into_engine(engine, ckpt, world.tp_size, world.tp_rank)
    Checkpointer(run_dir, world.is_main).save(engine, meta_for(cfg, world, ckpt.meta["step"]), dump_yaml(cfg), tokenizer)
    if world.is_main:
        print(f"{run_dir.name} resharded {source} at Adam step {step}", flush=True)
    release_engine(engine)
    dist.barrier()


def train_one(run_dir: Path, overrides: list[str], vocab_size: int, tokenizer: Path | None, default_tp: int) -> None:
    source = [o.split("=", 1)[1] for o in overrides if o.startswith("from=")]
    overrides = [o for o in overrides if not o.startswith("from=")]
    cfg = load_config(None, [*BASE, f"parallel.tensor_parallel={default_tp}", f"model.vocab_size={vocab_size}",
                             f"run.dir={run_dir}", *overrides])
    world = world_with_tp(cfg.parallel.tensor_parallel)
    if source:
        return reshard_one(run_dir, cfg, Path(source[0]), vocab_size, tokenizer, world)
    engine, ds_config = build_engine(cfg, world, vocab_size)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2) + "\n")
    accum = cfg.train.global_batch_size // (cfg.train.micro_batch_size * world.dp_size)
    batches = random_batches(cfg, vocab_size, world.dp_rank, world.dp_size)
    for step in range(1, cfg.train.steps + 1):
        result = train_step(engine, batches, accum, world.device)
        if world.is_main:
            print(f"{run_dir.name} step {step} loss {result.loss:.4f}", flush=True)
    Checkpointer(run_dir, world.is_main).save(engine, meta_for(cfg, world, cfg.train.steps), dump_yaml(cfg),
                                              tokenizer)
    save_reference_logits(engine, run_dir / REFERENCE, cfg, vocab_size, world)
    release_engine(engine)
    dist.barrier()


def save_reference_logits(engine, path: Path, cfg, vocab_size: int, world) -> None:
    """Logits of the trained, still TP-sharded model on fixed tokens: what a conversion must reproduce."""
    tokens = torch.randint(0, vocab_size, (2, cfg.model.seq_len), generator=torch.Generator().manual_seed(0))
    engine.eval()
    with torch.no_grad():
        local = engine(tokens).float()  # (B, T, V_padded/tp)
    group = parallel_state.get_tensor_model_parallel_group()
    parts = [torch.empty_like(local) for _ in range(world.tp_size)]
    dist.all_gather(parts, local.contiguous(), group=group)
    if world.is_main:
        torch.save({"tokens": tokens, "logits": torch.cat(parts, dim=-1)[..., :vocab_size]}, path)


def parse(argv: list[str]):
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--tensor-parallel", type=int, default=2)
    parser.add_argument("runs", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    groups, current = [], []
    for item in args.runs:
        if item == "--":
            if current:
                groups.append(current)
            current = []
        else:
            current.append(item)
    if current:
        groups.append(current)
    return args, [(Path(g[0]), g[1:]) for g in groups]


def main(argv: list[str]) -> None:
    args, runs = parse(argv)
    init_world(args.tensor_parallel, "gloo")
    try:
        for run_dir, overrides in runs:
            train_one(run_dir, overrides, args.vocab_size, args.tokenizer, args.tensor_parallel)
    finally:
        destroy_world()


if __name__ == "__main__":
    main(sys.argv[1:])
