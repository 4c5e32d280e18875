"""``bigtrain bench``: the contract (one JSON object with the promised keys), the bare baseline's
parity with bigtrain (same weights and tokens -> same first loss), sizes, and user errors.

No timing assertions: the numbers are recorded in BENCHMARKS.md, not checked here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bigtrain.bench.sizes import get_size
from bigtrain.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONTRACT = ("tokens_per_sec", "mfu", "bare_tokens_per_sec", "peak_memory_gb", "device")


def bench(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BIGTRAIN_CACHE": str(tmp_path.parent / "bench-cache"),
           "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "bigtrain.cli", "bench", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_bench_prints_one_json_object_with_the_contract_keys(tmp_path):
    out = tmp_path / "result.json"
    proc = bench(tmp_path, "--size", "20m", "--device", "cpu", "--steps", "2", "--json", "--out", str(out),
                 "model.num_layers=2", f"run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout[-2000:]  # everything else went to stderr
    result = json.loads(lines[0])
    assert json.loads(out.read_text()) == result
    for key in CONTRACT:
        assert result[key] is not None, key
    assert result["device_type"] == "cpu" and result["tokens_per_sec"] > 0 and result["bare_tokens_per_sec"] > 0
    assert 0 < result["mfu"] and 0 < result["mfu_vs_gemm"] and result["gemm_tflops"] > 0
    assert set(result["bigtrain"]["breakdown_s"]) == {"data_wait", "forward", "backward", "optimizer", "other"}
    assert result["bigtrain"]["breakdown_s"]["forward"] > 0 and result["bare"]["breakdown_s"]["backward"] > 0
    assert result["overhead"] > 0 and result["setup"]["config"]["model"]["num_layers"] == 2
    # the bare model is the same model: same weights and tokens give the same first loss (fp32: 1e-4)
    assert result["parity"]["ok"], result["parity"]
    assert len(result["bigtrain"]["step_times_s"]) == 2 == len(result["bare"]["step_times_s"])


@pytest.mark.parametrize("args, message", [
    (["--size", "13b"], "--size '13b'"),
    (["--size", "20m", "--device", "cpu", "--steps", "1"], "--steps must be >= 2"),
    (["--size", "20m", "--device", "cpu", "model.attention_backend=fastest"], "model.attention_backend"),
])
def test_bench_user_errors_exit_2_and_name_the_problem(capfd, args, message):
    from bigtrain.cli import main

    assert main(["bench", *args, "--json"]) == 2  # found before any process group or data is built
    out, err = capfd.readouterr()
    assert message in err and out == ""


def test_named_sizes_have_their_nominal_parameter_counts():
    from bigtrain.bench.config import bench_config
    from bigtrain.bench.report import total_params

    nominal = {"20m": 20e6, "125m": 134e6, "350m": 375e6, "1.3b": 1.35e9, "7b": 6.74e9}
    for name, params in nominal.items():
        cfg, _ = bench_config(name, "cpu", [], 1)
        assert abs(total_params(cfg) - params) / params < 0.02, (name, total_params(cfg))
    assert get_size("7b-4l").layers == 4 and get_size("7b-4l").hidden == 4096
    with pytest.raises(UserError, match="7b-<k>l"):
        get_size("7b-0l")


def test_micro_batch_from_the_planner_grows_with_gpu_memory():
    from bigtrain.bench.config import bench_config, plan_micro_batch

    cfg, _ = bench_config("1.3b", "cpu", ["train.precision=bf16"], 1)
    small, large = plan_micro_batch(cfg, 1, gpu_memory_gb=24.0), plan_micro_batch(cfg, 1, gpu_memory_gb=80.0)
    assert large is not None and (small or 0) < large  # an H100 fits more sequences of 2048 than a 24 GB card
    assert plan_micro_batch(cfg, 1, gpu_memory_gb=4.0) is None  # nothing fits: the size's preset is kept
