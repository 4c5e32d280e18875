"""What a new user meets in the first hour, through the real one-process entry point
(``bigtrain pretrain``, ~10 s per tiny run on CPU): logging cadence, the start-of-run summary,
checkpoint lines, a finished run, schedule changes on resume, single-process defaults, messages.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from launch import REPO
from tiny_run import tiny_shards

TINY_1RANK = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
              "model.ffn_hidden_size=176", "model.seq_len=64", "train.global_batch_size=8",
              "train.micro_batch_size=2", "train.warmup_steps=2", "log.tensorboard=false"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return tiny_shards(tmp_path_factory)


def bigtrain(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                "OMP_NUM_THREADS": "1", **(env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "bigtrain.cli", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def pretrain(run_dir: Path, shards: Path, *extra: str) -> subprocess.CompletedProcess:
    return bigtrain("pretrain", "--config", "debug", *TINY_1RANK, f"data.path={shards}", f"run.dir={run_dir}", *extra)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


RUN12 = ["train.steps=12", "log.every=5", "eval.every=4", "eval.batches=12", "checkpoint.every=6"]


@pytest.fixture(scope="module")
def run12(shards, tmp_path_factory):
    """12 steps, log.every=5, an evaluation every 4 steps (12 batches: more than the 92 validation samples),
    a checkpoint every 6."""
    run = tmp_path_factory.mktemp("run12") / "run"
    proc = pretrain(run, shards, *RUN12)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, proc


def test_log_every_logs_only_its_steps_and_the_events(run12):
    run, proc = run12
    # every 5th step, the last, evaluations (4, 8, 12) and checkpoints (6, 12); the per-step data
    # columns (epoch, skipped_samples) are in every row but force none
    assert [r["step"] for r in rows(run)] == [4, 5, 6, 8, 10, 12]
    assert all("epoch" in r for r in rows(run))
    printed = [line.split("|")[0].split()[1] for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert printed == ["4/12", "5/12", "6/12", "8/12", "10/12", "12/12"]


def test_one_process_takes_tp1_and_a_layout_error_does_not_hide_a_mistyped_data_path(run12, tmp_path):
    run, _ = run12  # the debug recipe says parallel.tensor_parallel=2; `bigtrain pretrain` ran it as one process
    assert "TP 1 x DP 1" in (run / "summary.txt").read_text()
    proc = bigtrain("pretrain", "--config", "debug", "parallel.tensor_parallel=2", f"data.path={tmp_path / 'shardz'}",
                    f"run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "world size 1 must be divisible by parallel.tensor_parallel (2)" in proc.stderr
    assert f"{tmp_path / 'shardz'}" in proc.stderr and "Traceback" not in proc.stderr


def test_an_error_every_rank_meets_is_printed_once(tmp_path):
    from launch import run_ranks

    proc = run_ranks("bigtrain/pretrain.py", 2, ["--config", "debug", "train.stepz=5", f"run.dir={tmp_path}"],
                     check=False, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("error: ") == 1, proc.stderr[-2000:]
    assert "train.stepz" in proc.stderr and "did you mean train.steps" in proc.stderr


def test_start_of_run_summary_and_a_line_per_checkpoint(run12, shards):
    from bigtrain.data.manifest import Manifest

    run, proc = run12
    splits = Manifest.load(shards).splits
    summary = (run / "summary.txt").read_text()
    assert summary in proc.stdout.replace("\r", "") or summary.strip() in proc.stdout
    # the tiny model: embedding 1024 x 64 (tied) + 2 x (attention 12,288 + SwiGLU 33,792 + norms 128) + 64
    assert "0.16M parameters (0.16M per TP rank): 2 layers, hidden 64" in summary
    assert "8 sequences x 64 tokens = 512 tokens per step (micro-batch 2, 4 accumulation step(s) per rank)" in summary
    train, val = splits["train"].num_samples, splits["val"].num_samples
    assert f"12 steps = 6,144 tokens = {96 / train:.2f} epochs of {train:,} training samples" in summary
    assert f"validation {val:,} samples; {min(val, 96):,} evaluated every 4 steps" in summary
    assert "precision  fp32" in summary and f"checkpoints {run / 'checkpoints'} every 6 steps" in summary
    saves = [line for line in proc.stdout.splitlines() if line.startswith("checkpoint: ")]
    assert [line.split()[2] for line in saves] == ["6", "12"]
    assert all(" MiB): " in line and " s (" in line for line in saves)
    assert not list((run / "checkpoints").rglob("zero_to_*.py"))  # DeepSpeed's scripts cannot read TP>1 ones
    assert ("warning: eval.batches=12 x train.global_batch_size=8 = 96 validation samples asked, but "
            in proc.stdout) and f"holds {val} (" in proc.stdout


@pytest.mark.slow  # three short runs (~30 s on a quiet 2-core box)
def test_a_finished_run_says_so_and_a_schedule_change_is_refused_unless_allowed(run12, shards, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run12[0], run)
    again = pretrain(run, shards, *RUN12)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{run} already finished at step 12 (train.steps=12): nothing to train" in again.stdout
    longer = pretrain(run, shards, *RUN12, "train.steps=14")
    assert longer.returncode == 2 and longer.stderr.count("error:") == 1
    assert ("error: train.steps 12 -> 14 since the checkpoint of step 12" in longer.stderr
            and "set train.allow_schedule_change=true" in longer.stderr)
    allowed = pretrain(run, shards, *RUN12, "train.steps=14", "train.allow_schedule_change=true")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "warning: schedule changed on resume: train.steps 12 -> 14" in allowed.stdout
    metrics = rows(run)
    assert [r["step"] for r in metrics] == [4, 5, 6, 8, 10, 12, 14]
    # the CPU peak was measured once, at the first start, and kept: MFU stays comparable across restarts
    peak = json.loads((run / "peak.json").read_text())
    assert metrics[-1]["peak_tflops"] == metrics[0]["peak_tflops"] == peak["flops"] / 1e12
    assert "kept in" in metrics[-1]["peak_source"] and "kept in" not in metrics[0]["peak_source"]


def test_config_keys_into_head_ends_quietly():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(f"{sys.executable} -m bigtrain.cli config keys | head -1", shell=True, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.stdout.startswith("run.dir") and proc.stdout.count("\n") == 1
    assert proc.stderr == "", proc.stderr  # no BrokenPipeError traceback


def test_local_slurm_sizes_nodes_by_the_machine_not_omp_num_threads():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_SLURM_CPUS", None)
    proc = subprocess.run(["bash", "tools/local_slurm.sh", "config"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    nodes = [line for line in proc.stdout.splitlines() if line.startswith("NodeName=")]
    assert len(nodes) == 2 and all(f" CPUs={os.cpu_count()} " in line for line in nodes), nodes


def test_lm_eval_runs_the_shipped_local_tasks_offline(run12, tmp_path):
    """docs/conversion.md's offline lm-eval example (tools/lm_eval_tasks/*.yaml) on a tiny export."""
    try:  # the installed distribution, not any folder named lm_eval that happens to be on sys.path
        importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("lm-evaluation-harness is an optional dependency (pip install lm-eval)")
    run, _ = run12
    hf = tmp_path / "hf"
    export = bigtrain("convert", "to-hf", str(run), str(hf))
    assert export.returncode == 0, export.stderr[-3000:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
                           f"pretrained={hf},dtype=float32", "--include_path", "tools/lm_eval_tasks", "--tasks",
                           "bigtrain_python_mc,bigtrain_python_ppl", "--device", "cpu", "--batch_size", "8",
                           "--output_path", str(tmp_path / "evals")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (results_file,) = (tmp_path / "evals").rglob("results*.json")
    results = json.loads(results_file.read_text())["results"]
    assert 0.0 <= results["bigtrain_python_mc"]["acc,none"] <= 1.0
    assert 1.0 < results["bigtrain_python_ppl"]["word_perplexity,none"] < float("inf")
