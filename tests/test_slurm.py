"""``sbatch slurm/pretrain.sh`` on the real local SLURM cluster (tools/local_slurm.sh): 2 emulated
nodes x 2 tasks, gloo on CPU, the tiny TP2 x DP2 ZeRO-3 debug run of tests/tiny_run.py.

- completes, on both nodes, with losses bit-identical to the same run started with torchrun;
- ``scancel --signal=USR1`` (what ``--signal=USR1@300`` sends before the time limit) -> the ranks
  save and exit 75 -> the script requeues the job -> it resumes: the finished run's metrics equal the
  uninterrupted run's; BIGTRAIN_MAX_REQUEUES caps the requeues;
- a USR1 to the batch shell (``--signal=B:USR1@...``, ``scancel --full``) reaches the ranks the same way;
- a layout that cannot work (3 tasks for TP 2) fails before any rank starts; an unknown partition is
  refused by sbatch.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from launch import REPO
from slurm_cluster import job_env, require_cluster, sacct_starts, sbatch, wait_for_step, wait_job
from tiny_run import STEPS, metrics, reference, tiny_args, tiny_shards, trajectory

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SCRIPT = REPO / "slurm" / "pretrain.sh"
RESOURCES = ["-N2", "--ntasks-per-node=2", "--gpus-per-node=2", "--cpus-per-task=1"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    require_cluster()


def submit(tmp_path: Path, tmp_path_factory, *extra: str, **env: str) -> tuple[int, Path]:
    run = tmp_path / "run"
    args = [*RESOURCES, SCRIPT, "debug", *tiny_args(run, tiny_shards(tmp_path_factory)), *extra]
    return sbatch(args, cwd=tmp_path, **env), run


def log_of(tmp_path: Path, job_id: int) -> str:
    return (tmp_path / f"bigtrain-{job_id}.out").read_text()  # the script's --output=%x-%j.out


def test_sbatch_2_nodes_matches_torchrun(tmp_path, tmp_path_factory):
    ref = reference(tmp_path_factory)
    job, run = submit(tmp_path, tmp_path_factory)
    info = wait_job(job)
    log = log_of(tmp_path, job)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0"), log[-4000:]
    assert info["NodeList"] == "node[1-2]" and info["NumTasks"] == "4"
    assert f"4 tasks, master node1:{20000 + job % 10000}" in log  # rendezvous from SLURM's variables
    assert trajectory(metrics(run)) == trajectory(ref)
    assert sacct_starts(job) == [("COMPLETED", "0:0")]  # a finished job is not requeued


def test_sbatch_usr1_saves_requeues_and_resumes_exactly(tmp_path, tmp_path_factory):
    ref = reference(tmp_path_factory)
    job, run = submit(tmp_path, tmp_path_factory)
    wait_for_step(run, 3, job_id=job)
    subprocess.run(["scancel", "--signal=USR1", str(job)], check=True)
    info = wait_job(job)
    log = log_of(tmp_path, job)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), log[-4000:]
    stopped = int(re.search(r"stopping after step (\d+): received SIGUSR1", log).group(1))
    assert 3 <= stopped < STEPS
    assert f"requeueing job {job} (restart 1)" in log
    assert f"resumed from {run / 'checkpoints'} at step {stopped}" in log
    assert sacct_starts(job) == [("REQUEUED", "0:0"), ("COMPLETED", "0:0")]
    assert trajectory(metrics(run)) == trajectory(ref)


@pytest.mark.parametrize("target", ["--batch", "--full"])
def test_usr1_to_the_batch_shell_is_passed_to_the_ranks_and_the_job_requeues(target, tmp_path, tmp_path_factory):
    """``--signal=B:USR1@300`` signals the batch shell alone (``scancel --batch``); ``scancel --full`` signals
    it and the ranks: either way the ranks save, the job is requeued and resumes, and it ends COMPLETED."""
    ref = reference(tmp_path_factory)
    job, run = submit(tmp_path, tmp_path_factory)
    wait_for_step(run, 3, job_id=job)
    subprocess.run(["scancel", target, "--signal=USR1", str(job)], check=True)
    info = wait_job(job)
    log = log_of(tmp_path, job)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), log[-4000:]
    assert "USR1 reached the batch shell: passing it to the ranks" in log
    assert re.search(r"stopping after step \d+: received SIGUSR1", log), log[-4000:]
    assert sacct_starts(job) == [("REQUEUED", "0:0"), ("COMPLETED", "0:0")]
    assert trajectory(metrics(run)) == trajectory(ref)


def test_sbatch_gives_up_after_max_requeues(tmp_path, tmp_path_factory):
    job, run = submit(tmp_path, tmp_path_factory, BIGTRAIN_MAX_REQUEUES="0")
    wait_for_step(run, 2, job_id=job)
    subprocess.run(["scancel", "--signal=USR1", str(job)], check=True)
    info = wait_job(job)
    log = log_of(tmp_path, job)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "75:0", "0"), log[-4000:]
    assert "not requeued: 0 restarts (BIGTRAIN_MAX_REQUEUES=0)" in log
    stopped = int(re.search(r"stopping after step (\d+)", log).group(1))
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"  # saved, resumable


def test_sbatch_bad_layout_fails_before_starting_ranks(tmp_path, tmp_path_factory):
    job = sbatch([*RESOURCES, "--ntasks=3", SCRIPT, "debug", "parallel.tensor_parallel=2",
                  f"run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    info = wait_job(job, timeout=120)
    log = log_of(tmp_path, job)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0"), log
    assert log.count("error: world size 3 must be divisible by parallel.tensor_parallel (2)") == 1, log
    assert "master" not in log  # no rank was started
    assert not (tmp_path / "run").exists()


def test_sbatch_unknown_partition_is_refused(tmp_path):
    out = subprocess.run(["sbatch", "-p", "nope", *RESOURCES, SCRIPT, "debug"], cwd=tmp_path, env=job_env(),
                         capture_output=True, text=True)
    assert out.returncode != 0 and "invalid partition" in out.stderr.lower(), out.stderr

