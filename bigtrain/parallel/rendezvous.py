"""Where the ranks of a SLURM job meet: the first node of the allocation, a port derived from the job id.

The same formula as ``slurm/pretrain.sh``: ``20000 + job_id % 10000``. Deriving the port from the job
id (instead of a fixed 29500) lets two jobs share a node -- and the emulated nodes of
``tools/local_slurm.sh``, which share one network stack -- without clashing; a requeued job keeps its
id and so its port.
"""

from __future__ import annotations

import os
import subprocess

PORT_BASE, PORT_SPAN = 20000, 10000


def master_port(job_id: int | str) -> int:
    return PORT_BASE + int(job_id) % PORT_SPAN


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list (``node[1-2],gpu7`` -> ``node1``), expanded by ``scontrol``."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def slurm_master(env: os._Environ | dict = os.environ) -> tuple[str, int]:
    """(MASTER_ADDR, MASTER_PORT) for the current SLURM job, honouring values already set."""
    addr = env.get("MASTER_ADDR") or first_host(env["SLURM_JOB_NODELIST"])
    port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else master_port(env["SLURM_JOB_ID"])
    return addr, port
