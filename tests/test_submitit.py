"""The submitit launcher (``bigtrain submit`` / ``bigtrain.launch.submit``) on the real local SLURM
cluster: 2 nodes x 2 tasks (one per "GPU"), the tiny TP2 x DP2 run of tests/tiny_run.py.

- the run completes and ``job.results()`` returns every rank's summary; losses equal torchrun's;
- timeout (submitit's USR2, as SLURM sends it ``signal_delay_s`` before the limit): the ranks save,
  submitit requeues, the job resumes and ends with the uninterrupted losses; with
  ``max_requeues=0`` it gives up ("timed-out too many times") after saving;
- preemption by a job in the higher-priority ``urgent`` partition: same, and it costs no timeout;
- a wrong layout or an unknown partition fails before anything is queued.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from launch import REPO
from slurm_cluster import job_env, require_cluster, sbatch, wait_for_step, wait_job
from tiny_run import STEPS, metrics, reference, tiny_args, tiny_shards, trajectory

RESOURCES = dict(nodes=2, gpus_per_node=2, cpus_per_task=1)


@pytest.fixture
def cluster(monkeypatch):
    require_cluster()
    for key, value in job_env().items():  # the job runs in the environment that submitted it
        monkeypatch.setenv(key, value)


def submit_tiny(tmp_path: Path, tmp_path_factory, **options):
    from bigtrain.launch import submit

    run = tmp_path / "run"
    job = submit("debug", tiny_args(run, tiny_shards(tmp_path_factory)), folder=str(tmp_path / "submitit"),
                 **RESOURCES, **options)
    return job, run


def rank0_log(job) -> str:
    """submitit logs INFO to the task's stdout file and WARNING to its stderr file (both appended across requeues)."""
    return job.task(0).stdout() + job.task(0).stderr()


def stopped_step(job) -> int:
    return int(re.search(r"checkpoint saved at step (\d+); handing SIGUSR2 to submitit", rank0_log(job)).group(1))


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bigtrain.cli", *args], cwd=REPO, env=job_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slurm
@pytest.mark.slow
def test_submit_cli_2_nodes_returns_result(cluster, tmp_path, tmp_path_factory):
    ref = reference(tmp_path_factory)
    run = tmp_path / "run"
    out = cli("submit", "--config", "debug", "--nodes", "2", "--gpus-per-node", "2", "--cpus-per-task", "1",
              "--folder", str(tmp_path / "submitit"), "--wait", *tiny_args(run, tiny_shards(tmp_path_factory)))
    assert out.returncode == 0, out.stderr[-4000:]
    job_id = int(re.search(r"submitted job (\d+) \(4 tasks\)", out.stdout).group(1))
    assert f"log (rank 0): {tmp_path / 'submitit'}/{job_id}_0_log.out" in out.stdout
    assert f"squeue -j {job_id}" in out.stdout and f"tail -f {run / 'metrics.jsonl'}" in out.stdout
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["rank"], result["step"], result["restarts"]) == (0, STEPS, 0)
    assert result["last_metrics"]["loss"] == ref[-1]["loss"]
    assert wait_job(job_id)["NodeList"] == "node[1-2]"
    assert trajectory(metrics(run)) == trajectory(ref)


@pytest.mark.slurm
@pytest.mark.slow
def test_submitit_timeout_saves_requeues_and_resumes_exactly(cluster, tmp_path, tmp_path_factory):
    ref = reference(tmp_path_factory)
    # time <= 50 min: submitit counts any signal as a timeout, so this requeue uses up max_requeues=1
    job, run = submit_tiny(tmp_path, tmp_path_factory, time="10", signal_delay_s=60, max_requeues=1)
    wait_for_step(run, 3, job_id=int(job.job_id))
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)  # what SLURM sends before the limit
    wait_job(int(job.job_id))
    results = job.results()
    assert [r["rank"] for r in results] == [0, 1, 2, 3]
    assert (results[0]["step"], results[0]["restarts"]) == (STEPS, 1)
    step, log = stopped_step(job), rank0_log(job)
    assert 3 <= step < STEPS
    assert "this job is timed-out" in log and f"Requeued job {job.job_id} (0 remaining timeouts)" in log
    assert f"resumed from {run / 'checkpoints'} at step {step}" in log
    assert trajectory(metrics(run)) == trajectory(ref)


@pytest.mark.slurm
@pytest.mark.slow
def test_submitit_preempted_by_urgent_partition_resumes_exactly(cluster, tmp_path, tmp_path_factory):
    ref = reference(tmp_path_factory)
    # time > 50 min: submitit tells preemption from timeout; max_requeues=0: a preemption must not use one up
    job, run = submit_tiny(tmp_path, tmp_path_factory, time="60", max_requeues=0, partition="batch")
    wait_for_step(run, 2, job_id=int(job.job_id))  # early: scheduling the urgent job takes up to sched_interval
    urgent = sbatch(["-p", "urgent", "-N2", "--exclusive", "-o", "/dev/null", "--wrap", "sleep 1"], cwd=tmp_path)
    assert wait_job(urgent)["JobState"] == "COMPLETED"
    wait_job(int(job.job_id))
    results = job.results()
    assert (results[0]["step"], results[0]["restarts"]) == (STEPS, 1)
    step, log = stopped_step(job), rank0_log(job)
    assert 2 <= step < STEPS
    assert "this job is preempted" in log and f"Requeued job {job.job_id} (0 remaining timeouts)" in log
    assert trajectory(metrics(run)) == trajectory(ref)


@pytest.mark.slurm
@pytest.mark.slow
def test_submitit_gives_up_after_max_requeues(cluster, tmp_path, tmp_path_factory):
    job, run = submit_tiny(tmp_path, tmp_path_factory, time="10", signal_delay_s=60, max_requeues=0)
    wait_for_step(run, 2, job_id=int(job.job_id))
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    assert wait_job(int(job.job_id))["JobState"] == "FAILED"
    with pytest.raises(Exception, match="timed-out too many times"):
        job.results()
    step = stopped_step(job)
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{step:08d}"  # saved: resubmit resumes


@pytest.mark.slurm
def test_submit_unknown_partition_fails_before_queueing(cluster, tmp_path):
    out = cli("submit", "--config", "debug", "--nodes", "2", "--gpus-per-node", "2", "--partition", "nope",
              f"run.dir={tmp_path / 'run'}", timeout=120)
    assert out.returncode == 2, out.stderr
    assert "error: unknown partition 'nope': this cluster has ['batch', 'urgent']" in out.stderr
    assert not (tmp_path / "run").exists()


def test_submit_bad_layout_fails_before_queueing(tmp_path):
    out = cli("submit", "--config", "debug", "--nodes", "1", "--gpus-per-node", "3", "parallel.tensor_parallel=2",
              f"run.dir={tmp_path / 'run'}", timeout=120)
    assert out.returncode == 2, out.stderr
    assert "error: world size 3 must be divisible by parallel.tensor_parallel (2)" in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30", 2), ("02:00:00", 120), ("1-00", 1440),
                                           ("1-2:30", 1590), ("0-0:0:30", 1)])
def test_time_limit_formats(text, minutes):
    from bigtrain.launch.submit import time_minutes

    assert time_minutes(text) == minutes


def test_options_are_checked_before_queueing():
    from bigtrain.launch.submit import LaunchError, SubmitOptions, check_options

    with pytest.raises(LaunchError, match=r"--signal-delay \(300 s\) must be positive and shorter than --time \(5\)"):
        check_options(SubmitOptions(time="5"))
    with pytest.raises(LaunchError, match="--tasks-per-node on a cluster without GPUs"):
        check_options(SubmitOptions(gpus_per_node=0))
    with pytest.raises(LaunchError, match="time 'soon'"):
        check_options(SubmitOptions(time="soon"))
    check_options(SubmitOptions(gpus_per_node=0, tasks_per_node=4, time="1-00:00:00"))
