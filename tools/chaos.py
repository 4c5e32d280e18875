"""Chaos test: SIGKILL a training run at random steps, restart it each time, compare with a clean run.

    python tools/chaos.py                                  # 3 kills of a 24-step run on 2 CPU ranks
    python tools/chaos.py --kills 6 --steps 40 --seed 7 --work /tmp/chaos --ranks 4 --tp 2

1. trains a tiny Llama without interruption (the reference);
2. trains the same config again, but SIGKILLs every process of the job (torchrun and all ranks,
   like a node failure) after a randomly chosen step, ``--kills`` times, restarting the same
   command on the same run directory each time (it resumes from the latest complete checkpoint;
   a kill may land mid-step, mid-save or mid-evaluation);
3. compares the two ``metrics.jsonl`` files: every step's loss, grad_norm, lr and val_loss must be
   bit-identical (fp32 on CPU is deterministic), and ``latest`` must point at a complete checkpoint.

Prints a report; exit status 0 if everything matched, 1 otherwise. ``tests/test_chaos.py`` runs a
short form (2 kills) in CI. The helpers here (``Launch``, ``pretrain_args``) also drive the
signal / kill tests in ``tests/test_faults.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
        "model.ffn_hidden_size=176", "model.seq_len=64", "train.global_batch_size=8", "train.micro_batch_size=2",
        "train.warmup_steps=2", "parallel.zero_stage=3", "log.every=1", "log.tensorboard=false",
        "eval.every=4", "eval.batches=2", "checkpoint.every=2", "checkpoint.keep=2", "checkpoint.keep_every=4"]
COMPARED = ("loss", "grad_norm", "lr", "val_loss")


def pretrain_args(run_dir: Path, shards: Path, steps: int, tp: int = 1, *extra: str) -> list[str]:
    return ["--config", "debug", f"run.dir={run_dir}", f"data.path={shards}", f"train.steps={steps}",
            f"parallel.tensor_parallel={tp}", *TINY, *extra]


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a row being written right now
            break
    return rows


class Launch:
    """``torchrun bigtrain/pretrain.py ARGS`` on ``ranks`` local ranks, in the background."""

    def __init__(self, args: list[str], ranks: int, run_dir: Path, log: Path, env: dict[str, str] | None = None):
        self.run_dir, self.log_path = Path(run_dir), Path(log)
        # --standalone: torchrun binds its store to a port the OS picks, so concurrent jobs on one machine
        # cannot race for a port chosen in advance
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               "bigtrain/pretrain.py", *args]
        full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                    "OMP_NUM_THREADS": "1", **(env or {})}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.ranks = ranks

    def rank_pids(self, timeout: float = 120) -> list[int]:
        """The pids of the rank processes (torchrun's children), once all are started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = psutil.Process(self.proc.pid).children()
            if len(children) >= self.ranks:
                return [c.pid for c in children]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the {self.ranks} ranks did not start; see {self.log_path}")

    def signal_ranks(self, sig: int, ranks: list[int] | None = None) -> None:
        """Send ``sig`` to the rank processes directly (torchrun forwards only SIGTERM/SIGINT)."""
        pids = self.rank_pids()
        for pid in pids if ranks is None else [pids[r] for r in ranks]:
            os.kill(pid, sig)

    def wait_for(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the job exited ({self.proc.returncode}) while waiting for {what}; "
                                   f"see {self.log_path}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {what}; see {self.log_path}:\n{self.tail()}")
            time.sleep(0.01)

    def wait_for_step(self, step: int, timeout: float = 300) -> None:
        self.wait_for(lambda: any(r["step"] >= step for r in read_metrics(self.run_dir)), timeout,
                      f"step {step} in metrics.jsonl")

    def kill(self) -> None:
        """SIGKILL torchrun and every rank at once, like a node failure."""
        procs = [psutil.Process(self.proc.pid)]
        procs += procs[0].children(recursive=True)
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
        self.proc.wait()
        self.log.close()

    def wait(self, timeout: float = 300) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"the job ran past {timeout} s; see {self.log_path}:\n{self.tail()}") from None
        self.log.close()
        return code

    def tail(self, chars: int = 4000) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def rank_exit_codes(self) -> dict[int, int]:
        """Per-rank exit codes from torchrun's failure report (empty when every rank exited 0)."""
        codes, rank = {}, None
        for line in self.log_path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("rank") and ":" in line:
                rank = int(line.split(":")[1].split()[0])
            elif line.startswith("exitcode") and rank is not None:
                codes[rank] = int(line.split(":")[1].split()[0])
        return codes


@dataclass
class Report:
    kills: list[tuple[int, int]] = field(default_factory=list)  # (started from step, killed after step)
    mismatches: list[str] = field(default_factory=list)
    steps_compared: int = 0
    launches: int = 0

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.steps_compared > 0

    def text(self) -> str:
        lines = [f"chaos: {len(self.kills)} SIGKILLs, {self.launches} launches, {self.steps_compared} steps compared"]
        lines += [f"  launch {i + 1}: started from checkpoint step {r}, SIGKILLed after step {k} was logged"
                  for i, (r, k) in enumerate(self.kills)]
        lines += [f"  MISMATCH {m}" for m in self.mismatches[:20]]
        lines.append("  result: every step bit-identical to the uninterrupted run" if self.ok else "  result: FAILED")
        return "\n".join(lines)


def compare(reference: list[dict], chaos: list[dict], steps: int) -> tuple[int, list[str]]:
    ref, got = {r["step"]: r for r in reference}, {r["step"]: r for r in chaos}
    problems = [f"step {s}: missing in the {name} run" for s in range(1, steps + 1)
                for name, rows in (("reference", ref), ("chaos", got)) if s not in rows]
    if [r["step"] for r in chaos] != sorted(got):
        problems.append(f"chaos metrics.jsonl steps are not in order: {[r['step'] for r in chaos]}")
    for s in sorted(set(ref) & set(got)):
        problems += [f"step {s}: {k} {ref[s].get(k)!r} != {got[s].get(k)!r}" for k in COMPARED
                     if ref[s].get(k) != got[s].get(k)]
    return len(set(ref) & set(got)), problems


def latest_step(run_dir: Path) -> int:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return 0
    folder = pointer.parent / pointer.read_text().strip()
    if not (folder / "meta.json").exists():
        raise RuntimeError(f"{pointer} names {folder.name}, which is incomplete")
    return int(folder.name.split("_")[1])


def train_clean(run_dir: Path, shards: Path, steps: int, ranks: int, tp: int, logs: Path) -> list[dict]:
    launch = Launch(pretrain_args(run_dir, shards, steps, tp), ranks, run_dir, logs / "reference.log")
    launch.wait()
    rows = read_metrics(run_dir)
    if not rows or rows[-1]["step"] != steps:
        raise RuntimeError(f"the reference run did not finish; see {logs / 'reference.log'}")
    return rows


def train_with_kills(run_dir: Path, shards: Path, steps: int, ranks: int, tp: int, kills: int,
                     rng: random.Random, logs: Path) -> Report:
    report = Report()
    args = pretrain_args(run_dir, shards, steps, tp)
    while True:
        resumed = latest_step(run_dir)
        launch = Launch(args, ranks, run_dir, logs / f"launch_{report.launches}.log")
        report.launches += 1
        if len(report.kills) == kills or resumed >= steps - 1:
            launch.wait()
            break
        target = rng.randint(resumed + 1, steps - 1)
        try:
            launch.wait_for_step(target)
        except RuntimeError:  # finished (or died) before the kill: the comparison below will tell
            launch.wait()
            break
        time.sleep(rng.uniform(0, 0.15))  # land anywhere: in the next step, a save or an evaluation
        launch.kill()
        report.kills.append((resumed, target))
    return report


def run_chaos(work: Path, kills: int = 3, steps: int = 24, ranks: int = 2, tp: int = 1, seed: int | None = None,
              shards: Path | None = None, reference: Path | None = None) -> Report:
    seed = random.randrange(2**31) if seed is None else seed
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    if shards is None:
        from bigtrain.data.embedded import ensure_embedded_dataset

        shards = ensure_embedded_dataset(seq_len=64, vocab_size=1024)
    ref_rows = read_metrics(reference) if reference else train_clean(work / "reference", shards, steps, ranks, tp, logs)
    report = train_with_kills(work / "chaos", shards, steps, ranks, tp, kills, random.Random(seed), logs)
    report.steps_compared, report.mismatches = compare(ref_rows, read_metrics(work / "chaos"), steps)
    if latest_step(work / "chaos") != steps:
        report.mismatches.append(f"latest checkpoint is step {latest_step(work / 'chaos')}, expected {steps}")
    print(f"chaos seed {seed}; logs in {logs}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size (must divide --ranks)")
    parser.add_argument("--seed", type=int, default=None, help="kill-schedule seed (default: random, printed)")
    parser.add_argument("--work", type=Path, default=Path("runs/chaos"), help="work directory (wiped first)")
    args = parser.parse_args(argv)
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    report = run_chaos(args.work, args.kills, args.steps, args.ranks, args.tp, args.seed)
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
