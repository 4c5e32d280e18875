"""Model states per GPU as DeepSpeed 0.19.8 allocates them, and ZeRO's buffers.

P = parameters of one tensor-parallel rank, d = data-parallel size, w = 4 (fp32) or 2 (bf16, fp16) bytes.
Read in deepspeed/runtime/{engine.py, bf16_optimizer.py, zero/stage_1_and_2.py, zero/stage3.py}:

| ZeRO | precision | parameters | gradients | optimizer (fp32 master + Adam m, v) |
| --- | --- | --- | --- | --- |
| 0 | fp32 | 4P | 4P | 8P |
| 0 | bf16, fp16 | 2P | 2P (bf16 accumulation, bigtrain/parallel/engine.py) | 12P (FP16_Optimizer) |
| 1 | bf16 | 2P | 2P bf16 .grad + 4P fp32 `fp32_groups_gradients_flat` | 12P/d (BF16_Optimizer) |
| 1 | fp32, fp16 | wP | wP (.grad until the boundary) + 4P/d (fp32 partition) | 12P/d (master cloned even in fp32) |
| 2 | any | wP | wP/d (contiguous partition) + 4P/d (fp32 partition) | 12P/d |
| 3 | bf16, fp16 | 2P/d | 4P/d (bf16) or 2P/d (fp16): `grad_partitions_flat_buffer` | 12P/d |
| 3 | fp32 | 4P/d | 4P/d | 8P/d (the fp32 partition is the master: no copy) |

bf16 ZeRO-2 = 2P + 18P/d and ZeRO-3 = 18P/d: DeepSpeed's own estimators (tests/test_plan_measure.py).
``parallel.cpu_offload`` (optimizer, and under ZeRO-3 parameters too) moves the optimizer and the fp32
gradient partitions to the CPU: ZeRO-1/2 keep only wP of parameters on the GPU (BF16_Optimizer is not
used with offload), ZeRO-3 nothing but its gathered working set. Offload has no effect at ZeRO-0.
"""

from __future__ import annotations

from bigtrain.config.schema import Config

GPU_BUCKET = 500_000_000  # bigtrain/parallel/engine.py: parallel.bucket_size=0 means 5e8 elements on GPU
GPU_PREFETCH = 50_000_000  # ... and parallel.prefetch_bucket_size=0 with bucket_size=0 means 5e7


def model_states(precision: str, stage: int, offload: bool, n: int, dp: int) -> dict[str, int]:
    """{parameters, gradients, optimizer} bytes on one GPU (see the module table)."""
    w = 4 if precision == "fp32" else 2
    if stage == 0:
        return {"parameters": w * n, "gradients": w * n, "optimizer": (8 if w == 4 else 12) * n}
    if stage == 3:
        if offload:
            return {"parameters": 0, "gradients": 0, "optimizer": 0}
        grad = 2 if precision == "fp16" else 4  # bigtrain accumulates bf16 gradients in fp32 (ds_configs/bf16.json)
        return {"parameters": w * n // dp, "gradients": grad * n // dp, "optimizer": (8 if w == 4 else 12) * n // dp}
    if offload:
        return {"parameters": w * n, "gradients": 0, "optimizer": 0}
    if stage == 1 and precision == "bf16":  # BF16_Optimizer: a full fp32 gradient buffer besides bf16 .grad
        return {"parameters": 2 * n, "gradients": 6 * n, "optimizer": 12 * n // dp}
    grads = w * n if stage == 1 else w * n // dp
    return {"parameters": w * n, "gradients": grads + 4 * n // dp, "optimizer": 12 * n // dp}


def bucket_bytes(cfg: Config, n: int) -> int:
    """ZeRO's reduce/all-gather buckets (parallel.bucket_size, 5e8 elements on GPU): gradient + parameter dtype."""
    w = 4 if cfg.train.precision == "fp32" else 2
    if cfg.parallel.zero_stage == 0:
        return 0
    return min(cfg.parallel.bucket_size or GPU_BUCKET, n) * (4 + w)  # never more than the rank's parameters


def zero3_gathered_bytes(cfg: Config, largest_unit: int, n: int) -> int:
    """ZeRO-3's working set of gathered parameters: the module in use (the largest: embedding or one block,
    per TP rank) plus what is prefetched for the next ones, capped by parallel.max_live_parameters."""
    p = cfg.parallel
    if p.zero_stage != 3:
        return 0
    w = 4 if cfg.train.precision == "fp32" else 2
    prefetch = p.prefetch_bucket_size or p.bucket_size or GPU_PREFETCH
    return w * min(largest_unit + prefetch, max(p.max_live_parameters, largest_unit), n)
