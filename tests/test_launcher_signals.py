"""Stopping a run the way a user does: ``kill PID`` of the launcher, or Ctrl-C in its terminal (SIGINT to
the launcher's whole process group). Both launchers, 2 gloo ranks: the ranks save a checkpoint, exit 75
and none is left running.

DeepSpeed's ``deepspeed`` runner forwards no signal on a single node (deepspeed/launcher/runner.py): the
ranks notice that their launcher is gone (bigtrain/train/signals.py) and stop like on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from launch import REPO, free_port
from tiny_run import tiny_shards

pytestmark = pytest.mark.slow
ARGS = ["--config", "debug", "model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
        "model.ffn_hidden_size=176", "model.seq_len=64", "parallel.tensor_parallel=1", "train.global_batch_size=8",
        "train.micro_batch_size=2", "train.steps=40", "train.warmup_steps=2", "log.every=1",
        "log.tensorboard=false", "eval.every=0", "checkpoint.every=0"]
LAUNCHERS = {
    "torchrun": lambda: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
    "deepspeed": lambda: [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                          "--master_port", str(free_port())],
}


def start(launcher: str, run: Path, holds: Path, shards: Path) -> tuple[subprocess.Popen, Path]:
    log = run.parent / f"{launcher}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "BIGTRAIN_TEST_HOLD": "after_step:3", "BIGTRAIN_TEST_HOLD_DIR": str(holds)}
    cmd = [*LAUNCHERS[launcher](), "bigtrain/pretrain.py", *ARGS, f"data.path={shards}", f"run.dir={run}"]
    # a session of its own, like a terminal's job: Ctrl-C = SIGINT to this process group
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, log


def wait_for(condition, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}:\n{log.read_text()[-4000:]}"
        time.sleep(0.05)


def job_processes(pgid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


@pytest.mark.parametrize("launcher,how", [("deepspeed", "kill"), ("deepspeed", "ctrl-c"),
                                          ("torchrun", "kill"), ("torchrun", "ctrl-c")])
def test_stopping_the_launcher_saves_a_checkpoint_and_leaves_no_rank(launcher, how, tmp_path, tmp_path_factory):
    run, holds = tmp_path / "run", tmp_path / "holds"
    proc, log = start(launcher, run, holds, tiny_shards(tmp_path_factory))
    try:
        wait_for(lambda: all((holds / f"after_step:3.rank{r}").exists() for r in range(2)), 300, "step 3", log)
        if how == "kill":
            os.kill(proc.pid, signal.SIGTERM)  # `kill PID` of the launcher
        else:
            os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: launcher and ranks at once
        time.sleep(0.5)
        (holds / "after_step:3.release").touch()
        wait_for(lambda: not job_processes(proc.pid), 120, "every process of the job to exit", log)
    finally:
        for p in job_processes(proc.pid):
            p.kill()
    text = log.read_text(errors="replace")
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == "step_00000004", text[-4000:]  # the ranks finished step 4 and saved it
    assert json.loads((run / "checkpoints" / latest / "meta.json").read_text())["step"] == 4
    assert "stopping after step 4" in text, text[-4000:]
    # no rank raised (KeyboardInterrupt or anything): tracebacks may only come from the launchers themselves
    # (torchrun's SignalException, the deepspeed runner's KeyboardInterrupt on Ctrl-C)
    assert not [line for line in text.splitlines() if line.strip().startswith("File") and "bigtrain" in line], text
