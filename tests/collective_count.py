"""Rank script: run ``bigtrain.pretrain`` and count the collectives (and, on CUDA, the device->host
synchronisations) bigtrain itself issues per step.

    torchrun --nproc_per_node 2 tests/collective_count.py OUT.json -- --config debug run.dir=... ...

Every ``torch.distributed`` collective is wrapped (counted, then called unchanged); a call counts as
bigtrain's when the first frame outside torch.distributed belongs to a ``bigtrain.`` module, so
DeepSpeed's and megatron's own collectives (ZeRO gathers, TP all-reduces) are not counted. The counts
are cut at the start of every ``train_step``: entry i is what steps i..i+1 issued in between (the step
and the callbacks after it). On CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` makes every
synchronising call warn; the warnings whose first frame outside torch is a ``bigtrain.`` module are
counted the same way. Rank 0 writes ``{"per_step": [...], "names": [...], "syncs_per_step": [...],
"sync_sites": [...]}``.
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
syncs: list[str] = []


def bigtrain_caller(skip: tuple[str, ...]) -> str | None:
    """``module:line`` of the first frame outside the ``skip`` modules, if it is bigtrain's."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith((*skip, __name__)):
        frame = frame.f_back
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return f"{name}:{frame.f_lineno}" if name.startswith("bigtrain.") else None


def caller_is_bigtrain() -> bool:
    return bigtrain_caller(("torch.distributed",)) is not None


def count_syncs() -> None:
    """Record bigtrain's synchronising CUDA calls (torch warns on each in sync debug mode)."""
    import warnings

    import torch

    warnings.filterwarnings("always", message=".*synchronizing CUDA operation.*")
    shown = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchronizing CUDA operation" in str(message):
            site = bigtrain_caller(("warnings", "torch"))
            if site:
                syncs.append(site)
            return
        shown(message, category, filename, lineno, file, line)

    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode("warn")


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

    cuts: list[tuple[int, int]] = []
    step = loop.train_step

    def cut_then_step(*args, **kwargs):
        if not cuts and os.environ.get("COUNT_SYNCS") == "1":
            count_syncs()  # from the first step on: start-up syncs (model build, peak GEMM) are not per step
        cuts.append((len(calls), len(syncs)))
        return step(*args, **kwargs)

    loop.train_step = cut_then_step
    status = pretrain_main(argv)
    if os.environ.get("RANK", "0") == "0":
        spans = list(zip(cuts, cuts[1:]))
        out.write_text(json.dumps({"per_step": [b[0] - a[0] for a, b in spans],
                                   "names": [calls[a[0]:b[0]] for a, b in spans],
                                   "syncs_per_step": [b[1] - a[1] for a, b in spans],
                                   "sync_sites": [syncs[a[1]:b[1]] for a, b in spans]}))
    return status


if __name__ == "__main__":
    split = sys.argv.index("--")
    sys.exit(main(Path(sys.argv[1]), sys.argv[split + 1:]))
