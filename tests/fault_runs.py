"""Shared runs for the fault-tolerance tests (test_faults.py, test_chaos.py).

The reference is one uninterrupted 2-rank run (DP2, ZeRO-3, fp32) of the tiny model in
``tools/chaos.py``'s ``TINY`` config; it is trained once per pytest session and cached under the
session's base temp dir, so every test that compares against it shares it.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from chaos import Launch, pretrain_args, read_metrics  # noqa: E402
from tiny_run import tiny_shards  # noqa: E402

RANKS = 2
STEPS = 12
REFERENCE_EXTRA = ("log.tensorboard=true",)


def launch(run_dir: Path, shards: Path, *extra: str, env: dict | None = None, name: str = "run") -> Launch:
    return Launch(pretrain_args(run_dir, shards, STEPS, 1, *extra), RANKS, run_dir,
                  run_dir.parent / f"{run_dir.name}-{name}.log", env)


def reference_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.getbasetemp() / "fault-reference" / "run"
    if not (run.parent / "DONE").exists():
        job = launch(run, tiny_shards(tmp_path_factory), *REFERENCE_EXTRA, name="reference")
        job.wait(timeout=600)
        rows = read_metrics(run)
        assert rows and rows[-1]["step"] == STEPS, f"the reference run failed:\n{job.tail()}"
        (run.parent / "DONE").touch()
    return run
