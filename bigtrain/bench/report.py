"""The benchmark's result: one JSON-able dict (contract keys first), and a one-line table row.

Throughput is per optimizer step: ``tokens_per_sec`` = tokens of a global batch / the median step
time (wall, loop to loop, the slowest rank's median), ``tokens_per_sec_mean`` the same over the mean
step time. MFU = tokens/s per device x model FLOPs per token (6N + 12LCT, bigtrain/config/arithmetic.py) /
peak: ``mfu`` against the device's stated dense peak (flops.py's table; on a CPU or an unknown GPU,
against the measured GEMM ceiling, as ``peak_source`` says), ``mfu_vs_gemm`` against the bf16 (run
precision) GEMM rate measured in the same run. ``peak_memory_gb`` is GiB (2**30 bytes), the largest
over ranks. ``overhead`` = the median over measured steps of bigtrain's step time / bare's (step i
of each: the same tokens, and when interleaved the same moment); on CPU also ``cpu_time_overhead``,
the same ratio in process CPU seconds.
"""

from __future__ import annotations

import platform
import statistics
import sys

import torch
import torch.distributed as dist

from bigtrain.bench.timing import PHASES
from bigtrain.config.arithmetic import matmul_params, padded_vocab_size, param_counts, train_flops_per_token
from bigtrain.config.load import to_dict
from bigtrain.config.schema import Config
from bigtrain.parallel.world import World
from bigtrain.train.flops import Peak

# |first-step loss, bigtrain - bare| allowed: same weights, same tokens, different kernels
# (megatron's matmul/cross-entropy vs nn.Linear/F.cross_entropy) summing in a different order.
PARITY_TOL = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-2}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def reduce_max(values: list[float], world: World) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def side_summary(phase, world: World, tokens_per_step: int, flops_per_token: int, peak: Peak, ceiling: Peak) -> dict:
    """Step time (slowest rank), throughput, MFU, breakdown medians, peak memory of one side."""
    parts = PHASES + ("other",)
    memory = -1.0 if phase.peak_memory_gb is None else phase.peak_memory_gb
    local = [median(phase.step_times), statistics.fmean(phase.step_times), median(phase.cpu_times),
             memory, *[median([b[k] for b in phase.breakdown]) for k in parts]]
    step, mean, cpu, mem, *breakdown = reduce_max(local, world)
    per_device = tokens_per_step / step / world.world_size
    return {
        "tokens_per_sec": tokens_per_step / step, "tokens_per_sec_mean": tokens_per_step / mean,
        "tokens_per_sec_per_device": per_device, "step_time_s": step, "step_time_mean_s": mean,
        "cpu_seconds_per_step": cpu, "step_times_s": phase.step_times,
        "breakdown_s": dict(zip(parts, breakdown)),
        "mfu": per_device * flops_per_token / peak.flops, "mfu_vs_gemm": per_device * flops_per_token / ceiling.flops,
        "peak_memory_gb": None if mem < 0 else mem, "memory_kind": phase.memory_kind if mem >= 0 else None,
        "losses": phase.losses,
    }


def parity(cfg: Config, ours, bare) -> dict:
    """First step: same weights, same tokens -> same loss. Later steps: how far training drifts apart."""
    tol = PARITY_TOL[cfg.train.precision]
    first = abs(ours.losses[0] - bare.losses[0])
    drift = max(abs(a - b) for a, b in zip(ours.losses, bare.losses))
    return {"first_loss": ours.losses[0], "bare_first_loss": bare.losses[0], "first_abs_diff": first,
            "tolerance": tol, "ok": first <= tol, "max_abs_diff_all_steps": drift}


def device_name(world: World) -> str:
    if world.device.type == "cuda":
        return torch.cuda.get_device_name(world.device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict:
    import deepspeed
    import megatron.core

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "deepspeed": deepspeed.__version__,
           "megatron_core": getattr(megatron.core, "__version__", "?")}
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version()
    return out


def overheads(ours, bare, world: World) -> tuple[float, float]:
    """Median over measured steps of bigtrain's / bare's step time (wall, CPU seconds); slowest rank."""
    wall = median([a / b for a, b in zip(ours.step_times, bare.step_times)])
    cpu = median([a / b for a, b in zip(ours.cpu_times, bare.cpu_times) if b > 0])
    return tuple(reduce_max([wall, cpu], world))


def assemble(cfg: Config, world: World, ours, bare, peak: Peak, ceiling: Peak, steps: int, warmup: int,
             bare_mode: str | None) -> dict:
    m, t = cfg.model, cfg.train
    tokens_per_step = t.global_batch_size * m.seq_len
    flops = train_flops_per_token(m, m.vocab_size)
    mine = side_summary(ours, world, tokens_per_step, flops, peak, ceiling)
    theirs = side_summary(bare, world, tokens_per_step, flops, peak, ceiling) if bare else None
    wall_ratio, cpu_ratio = overheads(ours, bare, world) if bare else (None, None)
    result = {
        "tokens_per_sec": mine["tokens_per_sec"], "mfu": mine["mfu"],
        "bare_tokens_per_sec": theirs["tokens_per_sec"] if theirs else None,
        "peak_memory_gb": mine["peak_memory_gb"], "device": device_name(world),
        "device_type": world.device.type, "world_size": world.world_size,
        "overhead": wall_ratio, "cpu_time_overhead": cpu_ratio if world.device.type == "cpu" else None,
        "bare_mode": bare_mode if theirs else None,
        "mfu_vs_gemm": mine["mfu_vs_gemm"], "peak_tflops": peak.tflops, "peak_source": peak.source,
        "gemm_tflops": ceiling.tflops, "gemm_source": ceiling.source,
        "params": total_params(cfg), "matmul_params": matmul_params(m, m.vocab_size), "flops_per_token": flops,
        "tokens_per_step": tokens_per_step, "steps": steps, "warmup_steps": warmup,
        "setup": setup(cfg, world), "bigtrain": mine, "bare": theirs,
        "parity": parity(cfg, ours, bare) if bare else None, "versions": versions(),
    }
    return result


def setup(cfg: Config, world: World) -> dict:
    m, t, p = cfg.model, cfg.train, cfg.parallel
    return {"seq_len": m.seq_len, "micro_batch_size": t.micro_batch_size, "global_batch_size": t.global_batch_size,
            "grad_accum": t.global_batch_size // (t.micro_batch_size * world.dp_size),
            "precision": t.precision, "zero_stage": p.zero_stage, "tensor_parallel": world.tp_size,
            "data_parallel": world.dp_size, "activation_checkpointing": m.activation_checkpointing,
            "compile": t.compile, "attention_backend": m.attention_backend, "config": to_dict(cfg)}


def total_params(cfg: Config) -> int:
    """All parameters of the model (embeddings, norms; the output layer unless tied)."""
    m = cfg.model
    return param_counts(m, padded_vocab_size(m.vocab_size, m.vocab_pad_multiple, 1)).total


def table_row(r: dict) -> str:
    s = r["setup"]
    bare = f"{r['bare_tokens_per_sec']:>10,.0f}" if r["bare_tokens_per_sec"] else f"{'-':>10}"
    ratio = f"{r['overhead']:.3f}" if r["overhead"] else "-"
    return (f"z{s['zero_stage']} ac={s['activation_checkpointing']:<9} compile={str(s['compile']).lower():<5} "
            f"mb={s['micro_batch_size']:<3} {r['tokens_per_sec']:>10,.0f} tok/s  mfu {100 * r['mfu']:5.1f}%  "
            f"(gemm {100 * r['mfu_vs_gemm']:5.1f}%)  mem {r['peak_memory_gb']:6.2f} GiB  bare {bare} tok/s  "
            f"overhead {ratio}")
