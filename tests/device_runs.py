"""Rank script of tests/test_device.py: the engine-level device facts on N gloo ranks (one launch).

    torchrun --nproc_per_node 2 tests/device_runs.py OUT_DIR [BACKEND]     # BACKEND: gloo (default), auto

Writes OUT_DIR/result.json (rank 0) and OUT_DIR/initial_zero0.pt (ZeRO-0's fp32 initial weights):
whether megatron made gloo side groups, whether the initial weights of ZeRO 0/1/3 (fp32 and bf16) are equal, and,
after a ZeRO-1 checkpoint is resharded into a
ZeRO-3 engine with fused AdamW, where Adam's step tensors live and whether a training step runs.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny import BASE, meta_for, random_batches  # noqa: E402

from bigtrain.checkpoint.manager import Checkpointer  # noqa: E402
from bigtrain.checkpoint.reshard import load_into_engine  # noqa: E402
from bigtrain.config.load import dump_yaml, load_config  # noqa: E402
from bigtrain.checkpoint.source import Checkpoint  # noqa: E402
from bigtrain.parallel.dsenv import import_deepspeed  # noqa: E402
from bigtrain.parallel.engine import build_engine, release_engine  # noqa: E402
from bigtrain.parallel.world import destroy_world, init_world  # noqa: E402
from bigtrain.train.step import train_step  # noqa: E402

VOCAB = 300


def config(out: Path, *overrides: str):
    return load_config(None, [*BASE, "parallel.tensor_parallel=1", f"model.vocab_size={VOCAB}", f"run.dir={out}",
                              *overrides])


def initial_weights(cfg, world) -> dict[str, torch.Tensor]:
    """The full (gathered) initial weights of an engine of ``cfg``'s ZeRO stage, as fp32 on the CPU."""
    engine, _ = build_engine(cfg, world, VOCAB)
    params = dict(engine.module.named_parameters())
    with import_deepspeed().zero.GatheredParameters(list(params.values()), enabled=cfg.parallel.zero_stage == 3):
        weights = {name: p.detach().float().cpu().clone() for name, p in params.items()}
    release_engine(engine)
    return weights


def stages_agree(out: Path, world, precision: str) -> dict[str, float]:
    """Largest |difference| of every stage's initial weights to ZeRO-0's (0.0 = identical)."""
    runs = {s: initial_weights(config(out, f"parallel.zero_stage={s}", f"train.precision={precision}"), world)
            for s in (0, 1, 3)}
    if world.is_main and precision == "fp32":
        torch.save(runs[0], out / "initial_zero0.pt")  # to compare across devices
    return {f"zero{s}": max((w - runs[0][k]).abs().max().item() for k, w in runs[s].items()) for s in (1, 3)}


def reshard_then_step(out: Path, world) -> dict:
    """ZeRO-1 (fused AdamW) trains 2 steps and saves; a ZeRO-3 engine loads that (a reshard) and steps."""
    saved = config(out / "zero1", "parallel.zero_stage=1")
    engine, _ = build_engine(saved, world, VOCAB)
    batches = random_batches(saved, VOCAB, world.dp_rank, world.dp_size)
    accum = saved.train.global_batch_size // (saved.train.micro_batch_size * world.dp_size)
    for _ in range(2):
        train_step(engine, batches, accum, world.device)
    Checkpointer(out / "zero1", world.is_main).save(engine, meta_for(saved, world, 2), dump_yaml(saved), None)
    release_engine(engine)
    dist.barrier()
    cfg = config(out / "zero3", "parallel.zero_stage=3")
    engine, _ = build_engine(cfg, world, VOCAB)
    step = load_into_engine(engine, Checkpoint.open(out / "zero1"), world.tp_size, world.tp_rank)
    base = engine.optimizer.optimizer
    placement = [(str(state["step"].device), str(flat.device), bool(base.defaults["fused"]))
                 for flat, state in base.state.items()]
    result = train_step(engine, batches, accum, world.device)
    release_engine(engine)
    return {"adam_step": step, "placement": placement, "loss_after": result.loss,
            "steps_after": int(next(iter(base.state.values()))["step"].item())}


def main(out: Path, backend: str) -> None:
    world = init_world(1, backend)
    report = {"gloo_groups": [name for name in dir(parallel_state) if name.endswith("_GLOO")
                              and getattr(parallel_state, name) is not None],
              "fp32": stages_agree(out, world, "fp32"), "bf16": stages_agree(out, world, "bf16"),
              "reshard": reshard_then_step(out, world)}
    if world.is_main:
        assert math.isfinite(report["reshard"]["loss_after"])
        report["device"] = str(world.device)
        (out / "result.json").write_text(json.dumps(report, indent=1))
    destroy_world()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "gloo")
