"""Step-time model for N nodes x 8 GPUs under ZeRO-3 + tensor parallelism (docs/scaling.md).

    python tools/scaling_model.py                        # the tables in docs/scaling.md
    python tools/scaling_model.py --mfu 0.45 --nvlink 360 --ib 45 --bench result.json

Per GPU and micro-batch of m sequences of s tokens, with t-way TP inside a node and d = 8N/t-way
data parallelism (ZeRO over the DP group), bf16 weights/gradients:

    compute   = F_tok * m * s / t / R                 R = peak * single-GPU MFU (from `bigtrain bench`)
    zero3     = 3 * 2 * P / t * (d-1)/d / B_dp         all-gather params fwd + bwd, reduce-scatter grads
    tp        = 4 * L * 2 * (t-1)/t * 2*m*s*C / B_nv   2 all-reduces fwd + 2 bwd per layer (no seq. parallel)
    zero1     = 2 * 2 * P / t * (d-1)/d / B_dp / accum  reduce-scatter grads + all-gather params, once per step

B_dp is NVLink's bus bandwidth when the DP group fits in a node (d*t <= 8), else InfiniBand's per GPU.
ZeRO-3 traffic overlaps compute (prefetch, overlap_comm) when it is smaller; TP all-reduces sit on the
critical path (megatron-core without Transformer Engine's comm overlap), so
    step (ZeRO-3) ~= accum * (max(compute, zero3) + tp)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Model:
    name: str
    params: float  # P
    layers: int  # L
    hidden: int  # C
    seq: int = 2048

    @property
    def flops_per_token(self) -> float:  # 6P + 12 L C T (bigtrain/config/arithmetic.py)
        return 6 * self.params + 12 * self.layers * self.hidden * self.seq


MODELS = [Model("1.3B", 1.35e9, 24, 2048), Model("7B", 6.74e9, 32, 4096), Model("70B", 69e9, 80, 8192)]


def step_terms(m: Model, nodes: int, tp: int, micro: int, rate: float, nvlink: float, ib: float) -> dict:
    gpus = 8 * nodes
    dp = gpus // tp
    b_dp = nvlink if gpus <= 8 else ib
    compute = m.flops_per_token * micro * m.seq / tp / rate
    zero3 = 3 * 2 * m.params / tp * (dp - 1) / dp / b_dp
    tp_comm = 4 * m.layers * 2 * (tp - 1) / tp * 2 * micro * m.seq * m.hidden / nvlink
    return {"compute": compute, "zero3": zero3, "tp": tp_comm,
            "step": max(compute, zero3) + tp_comm, "comm_bound": zero3 > compute}


def memory_gb(m: Model, nodes: int, tp: int, micro: int, ac: str) -> float:
    """Per GPU: ZeRO-3 states (16 bytes/param over all GPUs) + activations (Korthikanti et al. 2022)."""
    states = 16 * m.params / (8 * nodes)
    per_layer = {"none": 34, "selective": 34, "full": 2}[ac] * m.seq * micro * m.hidden / tp
    gathered = 2 * 2 * 12 * m.hidden**2 / tp  # ~two layers' bf16 weights live (prefetch)
    return (states + m.layers * per_layer + gathered) / 2**30


def table(rate: float, nvlink: float, ib: float) -> str:
    header = ("| model | nodes x 8 | TP | micro batch | compute ms | ZeRO-3 comm ms | TP comm ms | comm-bound | "
              "tokens/s/GPU | MFU | memory GiB (selective AC) |")
    rows = [header, "|" + "---|" * 11]
    for m in MODELS:
        for nodes in (1, 4, 16, 64):
            for tp in (1, 2, 4, 8):
                for micro in (1, 4):
                    mem = memory_gb(m, nodes, tp, micro, "selective")
                    if mem > 70 or (m.name != "70B" and tp > 2) or (m.name == "70B" and tp < 4):
                        continue
                    t = step_terms(m, nodes, tp, micro, rate, nvlink, ib)
                    tok = micro * m.seq / tp / t["step"]
                    mfu = tok * m.flops_per_token / (rate / ARGS.mfu)
                    rows.append(f"| {m.name} | {nodes} | {tp} | {micro} | {1e3 * t['compute']:.0f} | "
                                f"{1e3 * t['zero3']:.0f} | {1e3 * t['tp']:.0f} | {'yes' if t['comm_bound'] else 'no'} | "
                                f"{tok:,.0f} | {100 * mfu:.0f}% | {mem:.0f} |")
    return "\n".join(rows)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peak", type=float, default=989.0, help="TFLOP/s per GPU, bf16 dense (H100 SXM: 989)")
    p.add_argument("--mfu", type=float, default=0.5, help="single-GPU MFU without communication (issue 7's goal)")
    p.add_argument("--bench", default=None, help="a `bigtrain bench --json` result: take its mfu instead")
    p.add_argument("--nvlink", type=float, default=360.0, help="NVLink bus bandwidth per GPU, GB/s (NCCL, H100)")
    p.add_argument("--ib", type=float, default=45.0, help="InfiniBand bandwidth per GPU, GB/s (8x400G NDR per node)")
    return p.parse_args()


if __name__ == "__main__":
    ARGS = parse()
    if ARGS.bench:
        with open(ARGS.bench) as f:
            ARGS.mfu = json.load(f)["mfu"]
    print(table(ARGS.peak * 1e12 * ARGS.mfu, ARGS.nvlink * 1e9, ARGS.ib * 1e9))
