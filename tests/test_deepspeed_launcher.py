"""``deepspeed --num_gpus N bigtrain/pretrain.py`` (the DeepSpeed launcher, single node, no ssh/pdsh)
on CPU: 4 ranks, TP 2 x DP 2 ZeRO-3, bit-identical to the same run started with torchrun.

The multi-node form (hostfile, ``--no_ssh --node_rank``) is documented in docs/cluster.md.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from launch import REPO, free_port, tail
from tiny_run import RANKS, metrics, reference, tiny_args, tiny_shards, trajectory


@pytest.mark.slow
def test_deepspeed_launcher_matches_torchrun(tmp_path, tmp_path_factory):
    ref = reference(tmp_path_factory)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(RANKS), "--master_port",
           str(free_port()), "bigtrain/pretrain.py", "--config", "debug", *tiny_args(run, tiny_shards(tmp_path_factory))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, tail(proc.stdout, proc.stderr)
    assert trajectory(metrics(run)) == trajectory(ref)
    assert "dist_world_size=4" in proc.stdout + proc.stderr  # the launcher started the 4 ranks itself
