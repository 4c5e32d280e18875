"""The callable a submitit job runs in each of its tasks: one task per GPU, no torchrun inside.

Timeout and preemption (submitit's signal, USR2 by default, arrives in every task):

1. submitit installs its handler for the signal when the task starts; while the model trains, the
   trainer's :class:`~bigtrain.train.signals.SignalStop` holds the signal instead, so every rank
   stops after the same step and the checkpoint is saved (collectively) before anything else;
2. then rank 0 hands the signal back to submitit's own handler: it counts the timeout, pickles
   :meth:`checkpoint` (this object: config + overrides; the state lives in ``run.dir``), runs
   ``scontrol requeue`` and exits -- or, past ``max_num_timeout``, fails the job with
   "timed-out too many times"; the other ranks exit without writing a result;
3. the requeued job resumes from the latest complete checkpoint in ``run.dir``.

``SIGUSR1`` (``scancel --signal=USR1``, as for ``slurm/pretrain.sh``) is handed to submitit the same way.
A stop caused only by SIGTERM (``scancel``, or a preemption without the user signal) saves the
checkpoint but does not requeue: cancelling stays cancelling, and SLURM requeues preemptions itself.
A run stopped by a fault (``trainer.failed``: non-finite steps) fails the job; so does the hang
watchdog (its ranks exit with status 4 and write no result).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import submitit

from bigtrain.parallel.rendezvous import master_port

REQUEUE_EXIT_CODE = 75  # as bigtrain.train.signals (not imported here: it pulls in torch)


def rank_environment(env: submitit.JobEnvironment) -> dict[str, str]:
    """torch.distributed's variables for this task, from submitit's view of the SLURM job."""
    return {"RANK": str(env.global_rank), "LOCAL_RANK": str(env.local_rank), "WORLD_SIZE": str(env.num_tasks),
            "MASTER_ADDR": env.hostnames[0], "MASTER_PORT": str(master_port(os.environ["SLURM_JOB_ID"]))}


def submitit_signal() -> signal.Signals:
    return signal.Signals["SIG" + submitit.JobEnvironment.USR_SIG]


class PretrainJob(submitit.helpers.Checkpointable):
    """``PretrainJob(config, overrides)()`` trains (or resumes) ``run.dir`` as one rank of the job."""

    def __init__(self, config: str, overrides: list[str]):
        self.config = config
        self.overrides = list(overrides)

    @property
    def run_dir(self) -> str:
        """The run directory (``bigtrain submit`` always passes an absolute ``run.dir=`` override last)."""
        dirs = [o.split("=", 1)[1] for o in self.overrides if o.removeprefix("--").startswith("run.dir=")]
        return dirs[-1] if dirs else ""

    def __call__(self) -> dict:
        from bigtrain.config.load import load_config
        from bigtrain.convert.teacher import open_teacher
        from bigtrain.train.run import pretrain

        env = submitit.JobEnvironment()
        os.environ.update(rank_environment(env))
        sig = submitit_signal()
        submitit_handler = signal.getsignal(sig)  # installed by submitit before calling us
        trainer = pretrain(load_config(self.config, self.overrides), open_teacher)
        if trainer.failed:  # e.g. too many non-finite steps in a row: a requeue would fail the same way
            raise RuntimeError(f"training stopped at step {trainer.state.step}: {trainer.stop_reason}")
        if trainer.requeue:
            self.hand_over(trainer, env, sig, submitit_handler)
        return summary(trainer)

    @staticmethod
    def hand_over(trainer, env, sig: signal.Signals, submitit_handler) -> None:
        """The checkpoint is saved: let submitit requeue (rank 0), or leave without a result."""
        from bigtrain.train.signals import SignalStop

        received = next(cb.received for cb in trainer.callbacks if isinstance(cb, SignalStop))
        # USR1 too: slurm/pretrain.sh's "save and requeue now" (`scancel --signal=USR1`) means the same here
        if env.global_rank == 0 and {sig.name, "SIGUSR1"} & set(received) and callable(submitit_handler):
            print(f"checkpoint saved at step {trainer.state.step}; handing {sig.name} to submitit", flush=True)
            submitit_handler(sig, None)  # requeues and exits, or raises UncompletedJobError
        raise SystemExit(REQUEUE_EXIT_CODE)  # no result file: the job is not finished


def summary(trainer) -> dict:
    """What ``job.results()`` returns per task; rank 0 adds the last logged metrics."""
    run_dir = Path(trainer.cfg.run.dir).resolve()
    out = {"run_dir": str(run_dir), "step": trainer.state.step, "rank": trainer.world.rank,
           "restarts": int(os.environ.get("SLURM_RESTART_COUNT", 0)), "job_id": os.environ.get("SLURM_JOB_ID")}
    metrics = run_dir / "metrics.jsonl"
    if trainer.world.is_main and metrics.exists():
        lines = metrics.read_text().splitlines()
        out["last_metrics"] = json.loads(lines[-1]) if lines else None
    return out
