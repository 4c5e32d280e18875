"""GPU checks of the fast path (issue 7): skipped on machines without CUDA, run by tools/gpu_bench.sh.

- SDPA's flash and memory-efficient kernels compute the same attention as the math kernel in bf16;
- every fast-path switch on CUDA (bf16, flash, selective/full checkpointing, compile, ZeRO-3 knobs)
  trains the tiny model to the plain bf16 run's losses within bf16 tolerance (real stack, 1 rank, nccl);
- ``bigtrain bench --size 125m --device cuda`` keeps the contract and its bare baseline's parity.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launch import run_ranks

from bigtrain.model.attention import causal_attention

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible to torch)")]

REPO = Path(__file__).resolve().parents[1]
BF16_TOL = 2e-2  # bf16 rounding of a 2-layer model's loss after 4 updates (as tests/test_fastpath.py)


def test_flash_and_efficient_attention_match_math_in_bf16():
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 16, 512, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(2, 4, 512, 64, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    want = causal_attention(q.float(), k.float(), v.float(), "math")
    for backend in ("auto", "flash", "efficient"):
        torch.testing.assert_close(causal_attention(q, k, v, backend).float(), want, atol=2e-2, rtol=0)


def test_fast_path_switches_keep_bf16_loss_parity_on_cuda(tmp_path, shards):
    groups = [["plain", "train.precision=bf16"],
              ["flash", "train.precision=bf16", "model.attention_backend=flash"],
              ["efficient", "train.precision=bf16", "model.attention_backend=efficient"],
              ["ac_selective", "train.precision=bf16", "model.activation_checkpointing=selective"],
              ["ac_full", "train.precision=bf16", "model.activation_checkpointing=full"],
              ["compile", "train.precision=bf16", "train.compile=true"],
              ["all", "train.precision=bf16", "train.compile=true", "model.attention_backend=flash",
               "model.activation_checkpointing=selective", "parallel.overlap_comm=true",
               "parallel.prefetch_bucket_size=1000", "parallel.param_persistence_threshold=1000"]]
    args = [tmp_path / "out.json", shards]
    for i, group in enumerate(groups):
        args += (["--"] if i else []) + group
    run_ranks("tests/fastpath_runs.py", 1, args, timeout=900)
    runs = json.loads((tmp_path / "out.json").read_text())
    print(json.dumps(runs))  # recorded by tools/gpu_bench.sh
    want = runs["plain"]["losses"]
    for name, run in runs.items():
        diff = max(abs(a - b) for a, b in zip(run["losses"], want))
        assert diff <= BF16_TOL and not any(math.isnan(x) for x in run["losses"]), (name, run, want)
    assert runs["compile"]["compiled_graphs"] >= 3


def test_bench_125m_on_cuda_keeps_the_contract(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "bigtrain.cli", "bench", "--size", "125m", "--device", "cuda",
                           "--steps", "5", "--json", f"run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    print(proc.stderr[-1500:])
    assert result["device_type"] == "cuda" and result["setup"]["precision"] == "bf16"
    for key in ("tokens_per_sec", "mfu", "bare_tokens_per_sec", "peak_memory_gb", "device"):
        assert result[key] is not None, key
    assert result["parity"]["ok"], result["parity"]
