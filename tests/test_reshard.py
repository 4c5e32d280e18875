"""A run saved at TP2 x DP2 continues at TP1 x DP2 and at TP2 x DP1, through the real pretrain.py.

The uninterrupted run: 8 fp32 steps at TP2 x DP2 under ZeRO-3, checkpoints at steps 4 and 8. Each
resumed run restarts the same run directory from its step-4 checkpoint with another number of
processes and TP size (the second also changes ZeRO-3 -> ZeRO-1), which reshards the checkpoint on
load (bigtrain/checkpoint/reshard.py). Steps 5-8 must give the uninterrupted losses within 1e-5 (the
layout-parity tolerance of tests/test_pretrain.py: a different TP/DP only reorders fp32 sums; measured
<= 5e-7) and the same learning rates: model, Adam moments, step, LR schedule and data position all
carried over.
"""

from __future__ import annotations

import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from launch import run_ranks  # noqa: E402
from tiny_run import MODEL_8_STEPS as MODEL  # noqa: E402

TOL = 1e-5


def pretrain(run_dir: Path, shards: Path, ranks: int, *overrides: str):
    proc = run_ranks("bigtrain/pretrain.py", ranks, ["--config", "debug", f"run.dir={run_dir}", f"data.path={shards}",
                                                     *MODEL, *overrides], timeout=300)
    path = run_dir / "metrics.jsonl"
    assert path.exists(), f"no {path}: the run failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return [json.loads(line) for line in path.read_text().splitlines()], proc


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shards) -> Path:
    run = tmp_path_factory.mktemp("tp2dp2") / "run"
    pretrain(run, shards, 4, "parallel.tensor_parallel=2", "parallel.zero_stage=3")
    return run


def resume_at(uninterrupted: Path, run: Path, shards: Path, ranks: int, *layout: str):
    shutil.copytree(uninterrupted, run)
    (run / "checkpoints" / "latest").write_text("step_00000004\n")  # as if it died right after step 4
    shutil.rmtree(run / "checkpoints" / "step_00000008")
    return pretrain(run, shards, ranks, *layout)


@pytest.mark.slow
def test_resume_at_another_layout_continues_the_run(uninterrupted, shards, tmp_path):
    # tp1dp2 also keeps every parameter unpartitioned (persistence threshold above all sizes): the
    # resharded weights must reach ZeRO-3's persistent full copies too, as on GPU (threshold 1e5)
    layouts = {"tp1dp2": (2, "parallel.tensor_parallel=1", "parallel.zero_stage=3",
                          "parallel.param_persistence_threshold=100000"),
               "tp2dp1_zero1": (2, "parallel.tensor_parallel=2", "parallel.zero_stage=1")}
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(layouts, pool.map(lambda kv: resume_at(uninterrupted, tmp_path / kv[0], shards, *kv[1]),
                                             layouts.items())))
    reference = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    for name, (rows, proc) in results.items():
        assert "resharding" in proc.stdout and "TP=2, DP=2, ZeRO-3" in proc.stdout, name
        assert "resumed from" in proc.stdout and "at step 4" in proc.stdout, name
        assert [r["step"] for r in rows] == list(range(1, 9)), name
        for a, b in zip(reference[4:], rows[4:]):
            assert abs(a["loss"] - b["loss"]) <= TOL, (name, a["step"], a["loss"], b["loss"])
            assert a["lr"] == pytest.approx(b["lr"], rel=1e-12), (name, a["step"])
            assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * a["grad_norm"], (name, a["step"])
        meta = json.loads((tmp_path / name / "checkpoints" / "step_00000008" / "meta.json").read_text())
        assert (meta["tensor_parallel"], meta["data_parallel"]) == ((1, 2) if name == "tp1dp2" else (2, 1))
    assert reference[-1]["loss"] < reference[0]["loss"] - 0.3  # it learns
