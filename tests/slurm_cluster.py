"""Helpers for tests against the local SLURM cluster of ``tools/local_slurm.sh`` (2 nodes, partitions
``batch`` and the preempting ``urgent``). Tests skip with the reason when it is not running; with
BIGTRAIN_REQUIRE_SLURM=1 (CI) such a skip fails (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch import REPO

START_HINT = "start it with `tools/local_slurm.sh start` (root; installs Debian's slurm-wlm)"
# scontrol's JobState values after which nothing more happens to the job
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def require_cluster() -> None:
    """Skip unless the local cluster answers with >= 2 usable nodes and both partitions."""
    if shutil.which("sinfo") is None:
        pytest.skip(f"SLURM client tools not installed: {START_HINT}")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %D %t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.skip(f"local SLURM does not answer: {START_HINT}")
    if out.returncode != 0:
        pytest.skip(f"local SLURM not running ({out.stderr.strip()}): {START_HINT}")
    usable = {}
    for line in out.stdout.split("\n"):
        if line.strip():
            part, count, state = line.split()
            if state in ("idle", "alloc", "mix", "comp"):
                usable[part.rstrip("*")] = usable.get(part.rstrip("*"), 0) + int(count)
    if usable.get("batch", 0) < 2 or "urgent" not in usable:
        pytest.skip(f"local SLURM has not 2 usable nodes in partitions batch and urgent ({out.stdout!r}): {START_HINT}")


def job_env(**extra: str) -> dict[str, str]:
    """The submitting environment (sbatch exports all of it into the job)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "BIGTRAIN_PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **extra}


def sbatch(args: list[str], cwd: Path, **env: str) -> int:
    out = subprocess.run(["sbatch", "--parsable", *map(str, args)], cwd=cwd, env=job_env(**env),
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().split(";")[0])


def job_info(job_id: int) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True, check=True)
    return dict(item.split("=", 1) for item in out.stdout.split() if "=" in item)


def wait_job(job_id: int, timeout: float = 300) -> dict[str, str]:
    """Wait until the job (and every requeue of it) is over; its final scontrol record."""
    deadline, info = time.time() + timeout, {}
    while time.time() < deadline:
        info = job_info(job_id)
        if info["JobState"] in FINAL_STATES:
            return info
        time.sleep(0.5)
    subprocess.run(["scancel", str(job_id)])
    raise AssertionError(f"job {job_id} still {info.get('JobState')} after {timeout} s")


def wait_for_step(run_dir: Path, step: int, timeout: float = 300, job_id: int | None = None) -> None:
    """Wait until the run has logged ``step`` (it is then training, past its start-up)."""
    path, deadline = Path(run_dir) / "metrics.jsonl", time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= step:
            return
        if job_id is not None and job_info(job_id)["JobState"] in FINAL_STATES:
            raise AssertionError(f"job {job_id} ended before step {step}: {job_info(job_id)}")
        time.sleep(0.1)
    raise AssertionError(f"{path} did not reach step {step} in {timeout} s")


FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE")


def sacct_starts(job_id: int, timeout: float = 60) -> list[tuple[str, str]]:
    """(state, exit code) of every start of a finished job, oldest first (``sacct -D`` keeps requeued ones).

    slurmdbd records a job's end a moment after slurmctld reports it (seen: RUNNING in sacct while
    ``scontrol`` already said COMPLETED), so this waits until the last start has a final state.
    """
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", str(job_id), "-o", "State,ExitCode"],
                             capture_output=True, text=True, check=True)
        starts = [tuple(line.split("|")) for line in out.stdout.split("\n") if line.strip()]
        if (starts and starts[-1][0].startswith(FINAL_STATES)) or time.monotonic() > deadline:
            return starts
        time.sleep(1)
