"""Queue a pretraining run on SLURM with submitit: validate first, then one task per GPU.

Everything that can be checked on the submitting machine is checked before ``sbatch``: the config
and its layout for ``nodes x tasks_per_node`` ranks, the partition, the data, and that an existing
``run.dir`` holds the same model and tokenizer (a different layout is resharded on resume). The job is a
:class:`~bigtrain.launch.job.PretrainJob`: on timeout or preemption it saves, requeues itself and
resumes; after ``max_requeues`` timeouts it gives up.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bigtrain.errors import UserError

# Each task: the environment that submitted the job (sbatch's --export=ALL) plus these lines.
SETUP = ['export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"', "export PYTHONUNBUFFERED=1"]
# Once one task has exited, the others get this long, then are killed: no rank hangs in a collective.
SRUN_ARGS = ["--wait=120"]


class LaunchError(UserError, RuntimeError):
    """The job cannot be queued as asked (partition, resources, sbatch's refusal)."""


@dataclass
class SubmitOptions:
    nodes: int = 1
    gpus_per_node: int = 8
    tasks_per_node: int | None = None  # default: gpus_per_node (one task per GPU); required with 0 GPUs
    partition: str | None = None
    time: str = "24:00:00"  # SLURM format: MM, HH:MM:SS, D-HH[:MM[:SS]]
    account: str | None = None
    qos: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None  # per node, e.g. "200G"
    constraint: str | None = None
    exclusive: bool = False
    job_name: str = "bigtrain"
    folder: str | None = None  # submitit's logs and pickles; default <run.dir>/submitit
    max_requeues: int = 10  # submitit's max_num_timeout: requeues after a time limit (preemptions are free)
    signal_delay_s: int = 300  # the signal comes this long before the time limit: time to save
    python: str | None = None  # default: this interpreter
    sbatch_extra: dict = field(default_factory=dict)  # any other sbatch option, e.g. {"reservation": "r1"}

    @property
    def tasks(self) -> int:
        return self.tasks_per_node if self.tasks_per_node is not None else self.gpus_per_node


def time_minutes(text: str) -> int:
    """SLURM's --time formats -> whole minutes (rounded up)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not m:
        raise LaunchError(f"time {text!r}: expected MINUTES, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    else:  # MM or MM:SS
        seconds = a * 60 + (b or 0)
    if seconds <= 0:
        raise LaunchError(f"time {text!r} must be positive")
    return math.ceil(seconds / 60)


def check_options(opts: SubmitOptions) -> None:
    if opts.nodes < 1:
        raise LaunchError(f"--nodes must be >= 1, got {opts.nodes}")
    if opts.gpus_per_node < 0:
        raise LaunchError(f"--gpus-per-node must be >= 0, got {opts.gpus_per_node}")
    if opts.tasks < 1:
        raise LaunchError("no tasks per node: give --gpus-per-node G (one task per GPU), or --tasks-per-node "
                          "on a cluster without GPUs")
    if opts.max_requeues < 0:
        raise LaunchError(f"--max-requeues must be >= 0, got {opts.max_requeues}")
    if not 0 < opts.signal_delay_s < time_minutes(opts.time) * 60:
        raise LaunchError(f"--signal-delay ({opts.signal_delay_s} s) must be positive and shorter than --time "
                          f"({opts.time}): the job would be told to save the moment it starts")


def check_slurm(partition: str | None) -> None:
    """The SLURM commands answer here, and the partition (if given) exists."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        raise LaunchError("sbatch/scontrol not found: submit from a machine of the SLURM cluster (a login node), "
                          "or try it on this one with `sudo tools/local_slurm.sh start`")
    if partition is None:
        return
    found = subprocess.run(["scontrol", "show", "partition", partition], capture_output=True, text=True)
    if found.returncode != 0:
        listed = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True).stdout.split()
        raise LaunchError(f"unknown partition {partition!r}: this cluster has {sorted(set(listed))}")


def check_config(config: str, overrides: list[str], world_size: int):
    """The config and its layout for ``world_size`` ranks: fast, no torch."""
    from bigtrain.config.load import load_config
    from bigtrain.config.validate import validate

    cfg = load_config(config, overrides)
    validate(cfg, world_size)
    return cfg


def prepare_run(cfg, overrides: list[str]) -> tuple[list[str], object]:
    """Make run.dir absolute, resolve the data, check an existing run.dir -> (overrides, cfg)."""
    from bigtrain.train.run import check_resumable, resolve_data

    run_dir = Path(cfg.run.dir).expanduser().resolve()
    overrides = [*overrides, f"run.dir={run_dir}"]  # the job must not depend on the submitter's cwd
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(run_dir)))
    cfg, manifest = resolve_data(cfg)  # builds the embedded default corpus here, once, if needed
    check_resumable(cfg, manifest)  # an existing run.dir must hold the same model and tokenizer
    return overrides, cfg


def build_executor(opts: SubmitOptions, folder: Path):
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.max_requeues, python=opts.python)
    params = dict(job_name=opts.job_name, nodes=opts.nodes, ntasks_per_node=opts.tasks, time=time_minutes(opts.time),
                  signal_delay_s=opts.signal_delay_s, setup=SETUP, srun_args=SRUN_ARGS,
                  additional_parameters={"requeue": True, **opts.sbatch_extra})
    optional = dict(gpus_per_node=opts.gpus_per_node or None, partition=opts.partition, account=opts.account,
                    qos=opts.qos, cpus_per_task=opts.cpus_per_task, mem=opts.mem, constraint=opts.constraint,
                    exclusive=opts.exclusive or None)
    executor.update_parameters(**params, **{k: v for k, v in optional.items() if v is not None})
    return executor


def submit(config: str, overrides: list[str] = (), options: SubmitOptions | None = None, **kwargs):
    """Validate, then queue ``config`` + ``overrides``; returns the submitit Job (``job.results()``)."""
    import submitit

    from bigtrain.launch.job import PretrainJob

    opts = dataclasses.replace(options or SubmitOptions(), **kwargs)
    check_options(opts)
    world = opts.nodes * opts.tasks
    cfg = check_config(config, list(overrides), world)  # a wrong layout fails here, in a fraction of a second
    check_slurm(opts.partition)
    overrides, cfg = prepare_run(cfg, list(overrides))
    folder = Path(opts.folder or Path(cfg.run.dir) / "submitit").expanduser().resolve()
    executor = build_executor(opts, folder)
    try:
        return executor.submit(PretrainJob(config, overrides))
    except submitit.core.utils.FailedJobError as exc:
        raise LaunchError(f"sbatch refused the job: {str(exc).strip()}") from None


def follow_text(job, run_dir: str | Path) -> str:
    """What to tell the user after queueing: job id, log paths and how to follow the run."""
    paths = job.task(0).paths
    return "\n".join([
        f"submitted job {job.job_id} ({job.num_tasks} tasks)",
        f"  log (rank 0): {paths.stdout}",
        f"  errors:       {paths.stderr}",
        f"  run dir:      {run_dir}",
        "follow it:",
        f"  squeue -j {job.job_id}            # state (a requeued job goes back to PENDING, same id)",
        f"  tail -f {paths.stdout}",
        f"  tail -f {Path(run_dir) / 'metrics.jsonl'}",
        f"  sacct -j {job.job_id} -D          # every start of the job, with exit codes",
        f"  scancel {job.job_id}              # stop it (saves a checkpoint, no requeue)",
    ])
