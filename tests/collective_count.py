"""Rank script: run ``bigtrain.pretrain`` and count the collectives bigtrain itself issues per step.

    torchrun --nproc_per_node 2 tests/collective_count.py OUT.json -- --config debug run.dir=... ...

Every ``torch.distributed`` collective is wrapped (counted, then called unchanged); a call counts as
bigtrain's when the first frame outside torch.distributed belongs to a ``bigtrain.`` module, so
DeepSpeed's and megatron's own collectives (ZeRO gathers, TP all-reduces) are not counted. The counts
are cut at the start of every ``train_step``: entry i is what steps i..i+1 issued in between (the step
and the callbacks after it). Rank 0 writes ``{"per_step": [...], "names": [...]}``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
               "broadcast_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_to_all",
               "all_to_all_single", "barrier", "gather", "scatter", "gather_object")
calls: list[str] = []


def caller_is_bigtrain() -> bool:
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("torch.distributed", __name__)):
        frame = frame.f_back
    return frame is not None and frame.f_globals.get("__name__", "").startswith("bigtrain.")


def counted(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if caller_is_bigtrain():
            calls.append(name)
        return fn(*args, **kwargs)
    return wrapper


def main(out: Path, argv: list[str]) -> int:
    for name in COLLECTIVES:
        setattr(dist, name, counted(name, getattr(dist, name)))
    import bigtrain.train.loop as loop
    from bigtrain.pretrain import main as pretrain_main

    cuts: list[int] = []
    step = loop.train_step

    def cut_then_step(*args, **kwargs):
        cuts.append(len(calls))
        return step(*args, **kwargs)

    loop.train_step = cut_then_step
    status = pretrain_main(argv)
    if os.environ.get("RANK", "0") == "0":
        per_step = [b - a for a, b in zip(cuts, cuts[1:])]
        names = [calls[a:b] for a, b in zip(cuts, cuts[1:])]
        out.write_text(json.dumps({"per_step": per_step, "names": names}))
    return status


if __name__ == "__main__":
    split = sys.argv.index("--")
    sys.exit(main(Path(sys.argv[1]), sys.argv[split + 1:]))
