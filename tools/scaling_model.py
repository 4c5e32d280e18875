"""Step-time predictions for the recipes on N nodes x 8 GPUs: docs/scaling.md's "Predictions" table.

    python tools/scaling_model.py                        # the table in docs/scaling.md
    python tools/scaling_model.py --mfu 0.45 --nvlink 360 --ib 45 --bench result.json

The model itself lives in bigtrain/plan/steptime.py (step time, communication share) and
bigtrain/plan/memory.py + activations.py (memory per GPU): `bigtrain plan` and this table cannot disagree.
Each row is a recipe (bigtrain/config/recipes/) planned on another cluster / TP / micro batch; rows that do
not fit 80 GB GPUs, or that the layout forbids, are left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from bigtrain.config.load import load_config
from bigtrain.plan import GIB, Hardware, make_plan
from bigtrain.plan.advice import replace

GRID = {"llama-1.3b": [(1, 1, 1, 4), (4, 1, 1, 4), (4, 1, 3, 4)],  # (nodes, TP, ZeRO, micro batch)
        "llama-7b": [(1, 1, 3, 1), (1, 1, 3, 2), (4, 1, 3, 2), (4, 2, 3, 4)],
        "llama-13b": [(2, 2, 3, 2), (4, 2, 3, 2)],
        "llama-70b": [(4, 8, 3, 1), (8, 8, 3, 1), (8, 8, 3, 2)]}


def row(name: str, nodes: int, tp: int, zero: int, micro: int, hw: Hardware) -> str | None:
    cfg = load_config(name)
    cfg = replace(replace(cfg, "parallel", tensor_parallel=tp, sequence_parallel=tp > 1, zero_stage=zero), "train",
                  micro_batch_size=micro)
    plan = make_plan(cfg, nodes, 8, 79.6, hw=hw, advise=False)
    if plan.errors:
        return None
    t = plan.step_time_detail
    mfu = plan.params.total and hw.mfu * t["compute_s"] / plan.step_time_s
    return (f"| {name} | {nodes} | {tp} | {zero} | {micro} | {t['compute_s']:.1f} | {t['overlapped_comm_s']:.1f} | "
            f"{t['tp_comm_s']:.1f} | {t['step_comm_s']:.1f} | {plan.step_time_s:.1f} | {100 * plan.comm_fraction:.0f}% | "
            f"{100 * mfu:.0f}% | {plan.memory_bytes['total'] / GIB:.0f} |")


def table(hw: Hardware) -> str:
    rows = ["| recipe | nodes × 8 | TP (+SP) | ZeRO | micro batch | compute s | ZeRO traffic s (overlapped) | "
            "TP s | per-step comm s | step s | not hidden | MFU | GiB/GPU |", "|" + " --- |" * 13]
    for name, layouts in GRID.items():
        rows += [r for layout in layouts if (r := row(name, *layout, hw))]
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
    args = parse()
    if args.bench:
        with open(args.bench) as f:
            args.mfu = json.load(f)["mfu"]
    print(table(dataclasses.replace(Hardware(), peak_tflops=args.peak, mfu=args.mfu, nvlink_gbs=args.nvlink,
                                    ib_gbs=args.ib)))
