"""Run a script or module on N local ranks with torchrun, for multi-rank tests on CPU (gloo).

    proc = run_ranks("bigtrain/pretrain.py", 4, ["--config", "debug", "run.dir=/tmp/r"], timeout=120)

Each call lets torchrun pick its own port (``--standalone``), so concurrent tests never clash. On a
non-zero exit or a timeout it raises ``RankFailure`` with the tail of the ranks' output; a run that
is expected to fail passes ``check=False`` and asserts the exit status itself. (A crash at exit fails
the test: the process groups are freed before the interpreter exits, bigtrain/parallel/world.py.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAIL_CHARS = 6000


class RankFailure(AssertionError):
    """The ranks exited non-zero or ran past the timeout; the message holds the log tail."""


def run_ranks(target: str, nprocs: int, args: list[str] = (), timeout: float = 300, module: bool = False,
              env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """torchrun ``target`` (a script path, or a module with ``module=True``) with ``nprocs`` ranks."""
    # --standalone: torchrun binds its rendezvous store to a port the OS picks (no free-port race
    # with other jobs on a busy machine); the ranks share that store.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nprocs}"]
    cmd += ["-m", target] if module else [str(target)]
    cmd += [str(a) for a in args]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                "OMP_NUM_THREADS": "1", **(env or {})}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise RankFailure(f"{' '.join(cmd)} ran past {timeout} s\n{tail(exc.stdout, exc.stderr)}") from None
    if check and proc.returncode != 0:
        raise RankFailure(f"{' '.join(cmd)} exited with {proc.returncode}\n{tail(proc.stdout, proc.stderr)}")
    return proc


def tail(stdout: str | bytes | None, stderr: str | bytes | None) -> str:
    def text(x):
        return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")

    return f"--- stdout (tail) ---\n{text(stdout)[-TAIL_CHARS:]}\n--- stderr (tail) ---\n{text(stderr)[-TAIL_CHARS:]}"


def free_port() -> int:
    """A port free right now, for launchers that need one named (``deepspeed --master_port``).

    Racy by nature (another process may take it before the launcher binds it); prefer ``run_ranks``.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
