"""``bigtrain sweep`` on the real local SLURM cluster (tools/local_slurm.sh: 2 nodes, CPU): the trials run
as one submitit job array, one task each (the 1-rank tiny trials of tests/test_sweep.py).

- a 4-trial grid with --max-parallel 2 (the array's %2): every trial's metrics.jsonl equals the same
  config run alone with pretrain.py, and the report's numbers equal those files;
- a trial signalled mid-run (``scancel --signal=USR1`` on its array task) saves, is requeued
  and ends with the losses of an uninterrupted run, while trials with a bad data.path fail with their
  error line in status and report and the others finish.
"""

from __future__ import annotations

import csv
import math
import subprocess
import time

import pytest
from launch import REPO
from slurm_cluster import FINAL_STATES, job_env, job_info, require_cluster, sacct_starts
from test_sweep import WARMUP, reference, sweep_cmd, trial_args, trial_dirs
from tiny_run import metrics, tiny_shards, trajectory

ONE_TASK = ["--executor", "slurm", "--nodes", "1", "--gpus-per-node", "0", "--tasks-per-node", "1",
            "--cpus-per-task", "1"]


@pytest.fixture
def cluster():
    require_cluster()


def sweep(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(*args), cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=timeout)


def array_id(stdout: str) -> int:
    line = next(x for x in stdout.splitlines() if x.startswith("submitted job array "))
    return int(line.split()[3])


@pytest.mark.slurm
@pytest.mark.slow
def test_grid_as_one_job_array_equals_runs_alone(cluster, tmp_path, tmp_path_factory):
    sweep_dir = tmp_path / "sweep"
    out = sweep("--config", "debug", *ONE_TASK, "--max-parallel", "2", "--folder", str(tmp_path / "submitit"),
                "--wait", "train.lr=1e-3,3e-3", "train.warmup_steps=1,2",
                *trial_args(tiny_shards(tmp_path_factory)), f"run.dir={sweep_dir}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    array = array_id(out.stdout)
    assert "submitted job array" in out.stdout and "(4 trials)" in out.stdout
    # one array, at most 2 tasks at a time: sbatch --array=0-3%2
    assert {job_info(f"{array}_{i}").get("ArrayTaskThrottle") for i in range(4)} <= {"2", None}
    assert all(s[0] == "COMPLETED" for i in range(4) for s in sacct_starts(f"{array}_{i}"))
    report = sweep("report", str(sweep_dir), timeout=120)
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader(open(sweep_dir / "report.csv")))
    assert list(rows[0])[:8] == ["trial", "train.lr", "train.warmup_steps", "state", "final_val_loss",
                                 "best_val_loss", "steps", "tokens_per_sec"]
    for row, (label, run) in zip(rows, trial_dirs(sweep_dir).items()):
        got = metrics(run)
        assert trajectory(got) == trajectory(reference(tmp_path_factory, *label.split()))  # bit-identical
        vals = [r["val_loss"] for r in got if "val_loss" in r]
        assert row["state"] == "done" and int(row["steps"]) == got[-1]["step"] == 8
        assert math.isclose(float(row["final_val_loss"]), vals[-1], rel_tol=1e-5)  # %.6g in the CSV
        assert math.isclose(float(row["best_val_loss"]), min(vals), rel_tol=1e-5)
    assert (sweep_dir / "report.md").is_file() and (sweep_dir / "report.png").stat().st_size > 0
    best = min(rows, key=lambda r: float(r["best_val_loss"]))
    assert f"# best trial {best['trial']}" in report.stdout and "train:\n" in report.stdout


@pytest.mark.slurm
@pytest.mark.slow
def test_signalled_trial_requeues_exactly_and_bad_data_fails_alone(cluster, tmp_path, tmp_path_factory):
    sweep_dir, hold = tmp_path / "sweep", tmp_path / "hold"
    hold.mkdir()
    good = tiny_shards(tmp_path_factory)
    args = ["--config", "debug", *ONE_TASK, "--max-parallel", "2", "--folder", str(tmp_path / "submitit"),
            "--time", "10", "--signal-delay", "60", "--max-requeues", "2",  # <= 50 min: submitit counts the signal as a timeout
            "train.lr=1e-3,3e-3", f"data.path={good},{tmp_path / 'no-such-shards'}",
            *trial_args(good), f"run.dir={sweep_dir}"]
    # every good trial pauses after step 3 until released: the first to get there is signalled there
    proc = subprocess.Popen(sweep_cmd(*args), cwd=REPO, env=job_env(BIGTRAIN_TEST_HOLD="after_step:3",
                            BIGTRAIN_TEST_HOLD_DIR=str(hold)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    jobs = {line.split()[1]: line.split()[0].rstrip(":") for line in stdout.splitlines() if " log " in line}
    dirs = trial_dirs(sweep_dir)
    deadline = time.time() + 300
    while not (hold / "after_step:3.rank0").exists():
        assert time.time() < deadline, "no trial reached step 3"
        time.sleep(0.2)
    held = next(label for label, d in dirs.items() if (d / "metrics.jsonl").exists()
                and len((d / "metrics.jsonl").read_text().splitlines()) >= 3)
    job = jobs[dirs[held].name]
    subprocess.run(["scancel", "--signal=USR1", job], check=True)  # "save and requeue now"
    time.sleep(2)
    (hold / "after_step:3.release").touch()
    deadline = time.time() + 600
    while any(job_info(j)["JobState"] not in FINAL_STATES for j in jobs.values()):
        assert time.time() < deadline, {j: job_info(j)["JobState"] for j in jobs.values()}
        time.sleep(1)
    assert [s[0] for s in sacct_starts(job)][-1] == "COMPLETED" and len(sacct_starts(job)) == 2  # requeued once
    log = (tmp_path / "submitit" / f"{job}_0_log.out").read_text()
    assert f"resumed from {dirs[held] / 'checkpoints'} at step 4" in log
    status = sweep("status", str(sweep_dir), timeout=120).stdout
    for label, d in dirs.items():
        if "no-such-shards" in label:
            assert (d / "sweep_error.txt").read_text().startswith("error: ")
            assert "no-such-shards" in (d / "sweep_error.txt").read_text()
        else:
            assert trajectory(metrics(d)) == trajectory(reference(tmp_path_factory, label.split()[0], WARMUP))
    assert status.count(" done ") == 2 and status.count(" failed ") == 2, status
    assert "no-such-shards" in status
    sweep("report", str(sweep_dir), "--no-plot", timeout=120)
    rows = list(csv.DictReader(open(sweep_dir / "report.csv")))
    assert sorted(r["state"] for r in rows) == ["done", "done", "failed", "failed"]
    assert all("no-such-shards" in r["why"] for r in rows if r["state"] == "failed")
