"""Where the trials of one sweep stage run: a SLURM job array through submitit, or this machine.

``SlurmArray``: one ``sbatch --array=0-(n-1)%K`` (K = ``--max-parallel``, submitit's
``array_parallelism``); each array task is one trial with ``bigtrain submit``'s resources, nodes and
requeue-on-timeout/preemption (:class:`TrialJob` is :class:`~bigtrain.launch.job.PretrainJob` plus
its error line written to the trial directory). ``LocalRunner``: K trials at a time on this
machine, each ``python -m bigtrain.pretrain`` (one process) or ``torchrun --nproc_per_node G`` with
``--gpus-per-trial G`` > 1; with GPUs each slot gets its own ``CUDA_VISIBLE_DEVICES``. On SIGTERM or
Ctrl-C the runner asks its trials to save (SIGTERM: they stop after the current step, save, exit 75)
and waits for them; a re-run of the sweep continues them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bigtrain.launch.job import PretrainJob
from bigtrain.launch.submit import LaunchError, SubmitOptions, build_executor
from bigtrain.launch.sweep.state import LOG_FILE, clear_error, last_error_in, write_error, write_job

REQUEUE_EXIT_CODE = 75  # as bigtrain.train.signals: stopped by a signal after saving


@dataclass
class TrialRun:
    """One trial's process for one stage: its run directory, config and overrides."""
    trial_id: str
    dir: Path
    config: str
    overrides: list[str]


class TrialJob(PretrainJob):
    """A sweep trial on SLURM: as ``bigtrain submit``'s job, and a failure leaves its error line on disk."""

    def __call__(self) -> dict:
        import submitit

        run_dir = Path(self.run_dir)
        first = submitit.JobEnvironment().global_rank == 0
        if first:
            clear_error(run_dir)
        try:
            return super().__call__()
        except Exception as exc:  # noqa: BLE001 - recorded, then re-raised for submitit
            if first:
                write_error(run_dir, f"error: {exc}".splitlines()[0])
            raise


class SlurmArray:
    def __init__(self, options: SubmitOptions, max_parallel: int, folder: Path):
        self.options, self.max_parallel, self.folder = options, max_parallel, folder

    def submit(self, runs: list[TrialRun]) -> list:
        """Queue ``runs`` as one job array; returns submitit's jobs (one per trial, same order)."""
        import submitit

        executor = build_executor(self.options, self.folder)
        executor.update_parameters(array_parallelism=self.max_parallel)
        try:
            with executor.batch():
                jobs = [executor.submit(TrialJob(r.config, r.overrides)) for r in runs]
        except submitit.core.utils.FailedJobError as exc:
            raise LaunchError(f"sbatch refused the job array: {str(exc).strip()}") from None
        for run, job in zip(runs, jobs):
            clear_error(run.dir)
            write_job(run.dir, {"executor": "slurm", "job_id": job.job_id, "folder": str(self.folder)})
        return jobs

    @staticmethod
    def wait(jobs: list) -> None:
        """Until every array task is over (a failed trial is in its directory, not raised here)."""
        for job in jobs:
            job.wait()


class LocalRunner:
    def __init__(self, max_parallel: int, gpus_per_trial: int = 0, python: str | None = None):
        self.max_parallel, self.gpus_per_trial = max_parallel, gpus_per_trial
        self.python = python or sys.executable
        self.stopping = False

    def command(self, run: TrialRun) -> list[str]:
        if self.gpus_per_trial > 1:
            head = [self.python, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.gpus_per_trial}", "-m", "bigtrain.pretrain"]
        else:
            head = [self.python, "-m", "bigtrain.pretrain"]
        return [*head, "--config", run.config, *run.overrides]

    def environment(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        if self.gpus_per_trial > 0:
            first = slot * self.gpus_per_trial
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(self.gpus_per_trial))
        return env

    def start(self, run: TrialRun, slot: int) -> subprocess.Popen:
        run.dir.mkdir(parents=True, exist_ok=True)
        clear_error(run.dir)
        log = open(run.dir / LOG_FILE, "a")  # noqa: SIM115 - closed when the process ends
        # own session: a Ctrl-C in the terminal reaches the runner only, which then stops the trials cleanly
        proc = subprocess.Popen(self.command(run), stdout=log, stderr=subprocess.STDOUT, env=self.environment(slot),
                                start_new_session=True)
        proc.log, proc.run, proc.slot, proc.signalled = log, run, slot, False
        write_job(run.dir, {"executor": "local", "pid": proc.pid, "returncode": None})
        print(f"started {run.trial_id} (pid {proc.pid}, log {run.dir / LOG_FILE})", flush=True)
        return proc

    def finish(self, proc: subprocess.Popen) -> None:
        proc.log.close()
        run, code = proc.run, proc.returncode
        write_job(run.dir, {"executor": "local", "pid": proc.pid, "returncode": code})
        if proc.signalled and code == -signal.SIGTERM:  # stopped before training began: nothing to save
            code = REQUEUE_EXIT_CODE
        if code not in (0, REQUEUE_EXIT_CODE):
            line = last_error_in((run.dir / LOG_FILE).read_text(errors="replace"))
            write_error(run.dir, f"{line} (exit status {code})")
        word = {0: "finished", REQUEUE_EXIT_CODE: "saved and stopped"}.get(code, "failed")
        print(f"{word}: {run.trial_id} (exit status {code})", flush=True)

    def run(self, runs: list[TrialRun]) -> bool:
        """Run every trial, ``max_parallel`` at a time; False when interrupted (the trials saved)."""
        pending, active = list(runs), []
        previous = {s: signal.signal(s, self.interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while (pending and not self.stopping) or active:
                while pending and len(active) < self.max_parallel and not self.stopping:
                    free = min(set(range(self.max_parallel)) - {p.slot for p in active})
                    active.append(self.start(pending.pop(0), free))
                if self.stopping:
                    for proc in active:
                        if proc.poll() is None and not proc.signalled:
                            proc.send_signal(signal.SIGTERM)  # once: a second one mid-save changes nothing anyway
                            proc.signalled = True
                for proc in [p for p in active if p.poll() is not None]:
                    self.finish(proc)
                    active.remove(proc)
                time.sleep(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return not self.stopping

    def interrupt(self, signum, frame) -> None:
        if not self.stopping:
            print(f"{signal.Signals(signum).name}: asking the running trials to save and stop", flush=True)
        self.stopping = True
