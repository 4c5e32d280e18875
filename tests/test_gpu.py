"""GPU checks (issues 7, 14): skipped on machines without CUDA, run by tools/gpu_check.sh (10 min).

- SDPA's flash and memory-efficient kernels compute the same attention as the math kernel in bf16;
- every fast-path switch on CUDA (bf16, flash vs math, selective/full checkpointing, compile, ZeRO-3
  knobs) trains the tiny model to the plain bf16 run's losses within bf16 tolerance (1 rank, nccl);
- the debug model trains in bf16 by default (``train.precision=auto``) and a 125M-shaped model trains;
- fused AdamW survives a reshard (ZeRO-1 -> ZeRO-3 resume: Adam's step tensors on the GPU, losses
  continue); initial weights equal over ZeRO 0/1/3 on CUDA and equal to the CPU's; no gloo groups;
- a bf16 checkpoint trained on CUDA exports to Hugging Face with logit parity (convert/parity.py);
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
from tiny_run import MODEL_8_STEPS, metrics

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
              ["math", "train.precision=bf16", "model.attention_backend=math"],
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


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from bigtrain.data.embedded import ensure_embedded_dataset

    return ensure_embedded_dataset(seq_len=64, cache_dir=tmp_path_factory.getbasetemp() / "bigtrain-cache",
                                   vocab_size=1024)


def pretrain(run_dir: Path, shards: Path, *overrides: str, env: dict | None = None):
    return run_ranks("bigtrain/pretrain.py", 1, ["--config", "debug", f"data.path={shards}", f"run.dir={run_dir}",
                                                 *MODEL_8_STEPS, *overrides], timeout=600, env=env)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, shards) -> tuple[Path, str]:
    """The tiny debug model, 8 steps on CUDA with the default precision (auto), ZeRO-1, checkpoints at 4 and 8."""
    run = tmp_path_factory.mktemp("bf16") / "run"
    proc = pretrain(run, shards, "parallel.zero_stage=1")
    return run, proc.stdout


def test_debug_model_trains_in_bf16_by_default_on_cuda(bf16_run):
    run, stdout = bf16_run
    assert "train.precision=bf16" in stdout and "precision: bf16" in (run / "config.yaml").read_text()
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 9)) and rows[0]["mem_kind"] == "cuda_max_allocated"
    assert all(r["loss"] is not None and not r["skipped"] for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_125m_model_trains_in_bf16_with_flash_and_zero3(tmp_path, tmp_path_factory):
    from bigtrain.data.embedded import ensure_embedded_dataset

    shards = ensure_embedded_dataset(seq_len=256, cache_dir=tmp_path_factory.getbasetemp() / "bigtrain-cache",
                                     vocab_size=1024)
    run = tmp_path / "run"
    run_ranks("bigtrain/pretrain.py", 1, [
        "--config", "debug", f"data.path={shards}", f"run.dir={run}", "model.hidden_size=768", "model.num_layers=12",
        "model.num_heads=12", "model.num_kv_heads=12", "model.ffn_hidden_size=2048", "model.tie_embeddings=false",
        "model.seq_len=256", "model.attention_backend=flash", "parallel.zero_stage=3", "train.micro_batch_size=8",
        "train.global_batch_size=16", "train.steps=12", "train.warmup_steps=2", "train.lr=6e-4",
        "checkpoint.every=0", "checkpoint.save_final=false", "log.every=1", "log.tensorboard=false"], timeout=600)
    rows = metrics(run)
    print(json.dumps(rows[-1]))  # recorded by tools/gpu_check.sh
    assert len(rows) == 12 and all(r["loss"] is not None and not r["skipped"] for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5


def test_fused_adamw_resumes_after_a_reshard_on_cuda(bf16_run, shards, tmp_path):
    """ZeRO-1's step-4 checkpoint resumed at ZeRO-3 (a reshard: Adam's step tensors must be on the GPU
    for the fused kernel) continues the run: steps 5-8 within bf16 tolerance of the uninterrupted ones."""
    import shutil

    reference, _ = bf16_run
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "checkpoints" / "latest").write_text("step_00000004\n")
    shutil.rmtree(run / "checkpoints" / "step_00000008")
    proc = pretrain(run, shards, "parallel.zero_stage=3")
    assert "resharding" in proc.stdout
    want, got = metrics(reference), metrics(run)
    assert [r["step"] for r in got] == list(range(1, 9))
    for a, b in zip(want[4:], got[4:]):
        assert abs(a["loss"] - b["loss"]) <= BF16_TOL, (a["step"], a["loss"], b["loss"])


def test_engine_facts_on_cuda_and_initial_weights_equal_the_cpus(tmp_path):
    """tests/device_runs.py on 1 CUDA rank: no gloo groups, ZeRO 0/1/3 start from the same weights
    (zero.Init builds on the GPU), Adam's step on the GPU after a reshard; and the CPU's initial
    weights (the same script with CUDA hidden) are the GPU's, exactly."""
    gpu, cpu = tmp_path / "gpu", tmp_path / "cpu"
    gpu.mkdir(), cpu.mkdir()
    run_ranks("tests/device_runs.py", 1, [gpu, "auto"], timeout=600)
    run_ranks("tests/device_runs.py", 1, [cpu, "gloo"], timeout=600, env={"CUDA_VISIBLE_DEVICES": ""})
    report = json.loads((gpu / "result.json").read_text())
    assert report["device"].startswith("cuda") and report["gloo_groups"] == []
    assert report["fp32"] == {"zero1": 0.0, "zero3": 0.0} and report["bf16"] == {"zero1": 0.0, "zero3": 0.0}
    assert all(step == param and param.startswith("cuda") and fused
               for step, param, fused in report["reshard"]["placement"])
    on_gpu, on_cpu = (torch.load(d / "initial_zero0.pt") for d in (gpu, cpu))
    assert on_gpu.keys() == on_cpu.keys() and all(torch.equal(on_gpu[k], on_cpu[k]) for k in on_gpu)


def test_bf16_checkpoint_exports_to_hf_with_logit_parity(bf16_run, tmp_path):
    run, _ = bf16_run
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "bigtrain.cli", "convert", "to-hf", str(run), str(tmp_path / "hf"),
                           "--dtype", "bf16"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]  # to_hf checks the logits itself (ParityError otherwise)
    assert (tmp_path / "hf" / "config.json").is_file()


def test_one_host_sync_per_step_outside_deepspeed(tmp_path, shards):
    """torch's sync debug mode on 1 CUDA rank: bigtrain's own device->host synchronisations per step
    (DeepSpeed's not counted) are the agreement's one; metrics rows only at the end (log.every=100),
    as grad_norm is read on logged steps."""
    out = tmp_path / "counts.json"
    run_ranks("tests/collective_count.py", 1, [out, "--", "--config", "debug", *MODEL_8_STEPS, "train.steps=5",
                                                "log.every=100", "checkpoint.every=0", "checkpoint.save_final=false",
                                                f"data.path={shards}", f"run.dir={tmp_path / 'run'}"],
              timeout=600, env={"COUNT_SYNCS": "1"})
    counts = json.loads(out.read_text())
    print(json.dumps(counts))  # recorded by tools/gpu_check.sh: where any extra sync comes from
    assert counts["syncs_per_step"] == [1, 1, 1, 1], counts["sync_sites"]
