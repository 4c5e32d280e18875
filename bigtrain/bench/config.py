"""The benchmark's run config: a named size + device defaults + the user's ``key=value`` overrides.

Defaults: bf16 on CUDA, fp32 on CPU; ``--accum`` micro-batches per step (4 on CUDA, 1 on CPU);
no checkpoints (only ``metrics.jsonl`` is written, in ``run.dir``). The micro batch is, in this order: ``train.micro_batch_size=``
if given, else on CUDA the largest power of two that ``bigtrain plan`` (bigtrain/plan/) says fits
the device, else the size's preset (sizes.py). The JSON result says which
(``micro_batch_source``).
"""

from __future__ import annotations

import dataclasses

from bigtrain.bench.sizes import get_size
from bigtrain.config.load import load_config, parse_override
from bigtrain.config.schema import Config
from bigtrain.config.validate import resolve_precision

MICRO_BATCH_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)


def given(overrides: list[str], key: str) -> bool:
    return any(parse_override(item)[0] == key for item in overrides)


def bench_config(size_name: str, device_type: str, overrides: list[str], world_size: int,
                 accum: int | None = None) -> tuple[Config, str]:
    """-> (config, where the micro batch came from: "config", "plan" or "preset")."""
    size = get_size(size_name)
    defaults = [*size.model_overrides(), f"train.precision={'bf16' if device_type == 'cuda' else 'fp32'}",
                "train.warmup_steps=2", "train.lr=3e-4", "log.tensorboard=false",
                "checkpoint.every=0", "checkpoint.save_final=false", f"run.dir=runs/bench/{size_name}",
                f"train.micro_batch_size={size.micro_batch}", f"train.global_batch_size={size.micro_batch}"]
    cfg = resolve_precision(load_config(None, [*defaults, *overrides]), device_type == "cuda")
    source = "config" if given(overrides, "train.micro_batch_size") else "preset"
    if source == "preset" and device_type == "cuda":
        planned = plan_micro_batch(cfg, world_size)
        if planned:
            cfg, source = with_micro_batch(cfg, planned), "plan"
    if not given(overrides, "train.global_batch_size"):
        dp = max(world_size // cfg.parallel.tensor_parallel, 1)
        steps = accum or (4 if device_type == "cuda" else 1)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(
            cfg.train, global_batch_size=cfg.train.micro_batch_size * dp * steps))
    return cfg, source


def with_micro_batch(cfg: Config, micro: int, global_batch: int | None = None) -> Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, micro_batch_size=micro,
                                                              global_batch_size=global_batch or micro))


def plan_micro_batch(cfg: Config, world_size: int, gpu_memory_gb: float | None = None) -> int | None:
    """Largest micro batch (a power of two) that ``bigtrain plan`` says fits one GPU of this memory
    (default: the current CUDA device's), for the config's activation checkpointing and attention kernel."""
    from bigtrain.plan import make_plan

    if gpu_memory_gb is None:
        import torch

        gpu_memory_gb = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    dp = max(world_size // cfg.parallel.tensor_parallel, 1)
    best = None
    for micro in MICRO_BATCH_CANDIDATES:
        trial = with_micro_batch(cfg, micro, micro * dp)
        if not make_plan(trial, nodes=1, gpus_per_node=world_size, gpu_memory_gb=gpu_memory_gb,
                         advise=False).fits:
            break
        best = micro
    return best
