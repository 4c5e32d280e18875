"""``bigtrain sweep``: plan and check every trial, then run the stages (halving rungs, then to the end).

A stage runs the trials still alive to a step: a rung (``train.stop_at``) or their ``train.steps``.
Trials already there (a finished trial, a re-run after an interruption) are not started again, so
re-running the same command on the same sweep directory trains nothing twice: finished trials are
kept, unfinished ones resume from their latest checkpoint, recorded halving decisions are reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bigtrain.launch.submit import SubmitOptions, check_options, check_slurm
from bigtrain.launch.sweep import halving as sh
from bigtrain.launch.sweep.executors import LocalRunner, SlurmArray, TrialRun
from bigtrain.launch.sweep.plan import SweepError, SweepSpec, Trial, check_manifest, check_trials, make_trials
from bigtrain.launch.sweep.space import combine, load_space_file, sample_trials, split_args
from bigtrain.launch.sweep.state import JOB_FILE, checkpoint_step, read_json
from bigtrain.launch.sweep.status import live_state

INTERRUPTED = 75  # exit status of an interrupted local sweep: re-run the command to continue


@dataclass
class SweepRequest:
    config: str
    args: list[str]  # key=value items: swept keys, plain overrides for every trial, run.dir=SWEEP_DIR
    space_file: str | None = None
    trials: int | None = None
    seed: int = 0
    max_parallel: int = 1
    halving: sh.Halving | None = None
    executor: str = "slurm"
    gpus_per_trial: int = 0  # local executor: processes per trial (0 = one process, no GPU assignment)
    options: SubmitOptions = field(default_factory=SubmitOptions)  # slurm executor: resources per trial
    wait: bool = False  # slurm executor: block until the trials are over (always, with --halving)


@dataclass
class Sweep:
    dir: Path
    spec: SweepSpec
    trials: list[Trial]
    steps: dict[str, int]  # trial id -> train.steps


def sweep_dir_of(plain: list[str]) -> tuple[Path, list[str]]:
    dirs = [o.split("=", 1)[1] for o in plain if o.removeprefix("--").startswith("run.dir=")]
    if not dirs:
        raise SweepError("give the sweep directory as run.dir=SWEEP_DIR (each trial runs in SWEEP_DIR/trials/<id>)")
    return Path(dirs[-1]).expanduser().resolve(), [o for o in plain if not o.removeprefix("--").startswith("run.dir=")]


def world_size(req: SweepRequest) -> int:
    if req.executor == "slurm":
        return req.options.nodes * req.options.tasks
    return max(1, req.gpus_per_trial)


def plan_sweep(req: SweepRequest) -> Sweep:
    """Everything checked before anything runs: space, every trial's config and layout, halving, data."""
    if req.max_parallel < 1:
        raise SweepError(f"--max-parallel must be >= 1, got {req.max_parallel}")
    dims, plain = split_args(req.args)
    dims = combine(dims, load_space_file(req.space_file) if req.space_file else [])
    sweep_dir, base = sweep_dir_of(plain)
    config = str(Path(req.config).resolve()) if Path(req.config).is_file() else req.config
    trials = make_trials(sweep_dir, sample_trials(dims, req.trials, req.seed))
    if req.executor == "slurm":
        check_options(req.options)
    configs = check_trials(config, base, trials, world_size(req))
    if req.halving:
        for t, cfg in zip(trials, configs):
            sh.check_halving(req.halving, cfg.train.steps, cfg.eval.every, t.label())
    if not any(d.key.startswith("data.") for d in dims):
        resolve_base_data(configs[0])
    spec = SweepSpec(config, base, [d.to_json() for d in dims], req.seed, req.trials,
                     req.halving.to_json() if req.halving else None)
    if req.executor == "slurm":
        check_slurm(req.options.partition)
    check_manifest(sweep_dir, spec)
    return Sweep(sweep_dir, spec, trials, {t.id: c.train.steps for t, c in zip(trials, configs)})


def resolve_base_data(cfg) -> None:
    """The trials' shared data is found (the embedded default corpus built) once, before any trial starts."""
    from bigtrain.train.run import resolve_data

    resolve_data(cfg)


def stage_runs(sweep: Sweep, trials: list[Trial], rung: int | None) -> list[TrialRun]:
    stop = [f"train.stop_at={rung}"] if rung else []
    return [TrialRun(t.id, t.dir, sweep.spec.config, [*t.overrides(sweep.spec.overrides), *stop]) for t in trials]


def run_stage(req: SweepRequest, sweep: Sweep, trials: list[Trial], rung: int | None) -> bool:
    """Train ``trials`` to ``rung`` (None: to the end), skipping those already there. False: interrupted."""
    target = {t.id: rung or sweep.steps[t.id] for t in trials}
    todo = [t for t in trials if checkpoint_step(t.dir) < target[t.id]]
    for t in trials:
        if t not in todo:
            print(f"kept: {t.id} ({t.label()}) already at step {checkpoint_step(t.dir)}", flush=True)
    if not todo:
        return True
    check_not_running(todo)
    where = f"to step {rung} (rung)" if rung else "to the end"
    print(f"stage {where}: {len(todo)} trial(s), {req.max_parallel} at a time ({req.executor})", flush=True)
    runs = stage_runs(sweep, todo, rung)
    if req.executor == "local":
        return LocalRunner(req.max_parallel, req.gpus_per_trial, req.options.python).run(runs)
    array = SlurmArray(req.options, req.max_parallel, submitit_folder(req, sweep))
    jobs = array.submit(runs)
    print(follow_text(jobs, runs, sweep.dir), flush=True)
    if req.wait or req.halving:
        array.wait(jobs)
    return True


def check_not_running(trials: list[Trial]) -> None:
    """A trial still running (or queued) from an earlier start of the sweep must not be started twice."""
    busy = [(t, live_state(read_json(t.dir / JOB_FILE))) for t in trials]
    busy = [f"{t.id} ({t.label()}): {state}, {where}" for t, (state, where) in busy if state is not None]
    if busy:
        raise SweepError("trials of this sweep are still running or queued: " + "; ".join(busy) + ". Wait for them "
                         "(bigtrain sweep status) or stop them, then re-run")


def submitit_folder(req: SweepRequest, sweep: Sweep) -> Path:
    return Path(req.options.folder or sweep.dir / "submitit").expanduser().resolve()


def follow_text(jobs: list, runs: list[TrialRun], sweep_dir: Path) -> str:
    array_id = str(jobs[0].job_id).split("_")[0]
    lines = [f"submitted job array {array_id} ({len(jobs)} trials)"]
    lines += [f"  {job.job_id}: {run.trial_id}  log {job.paths.stdout}" for job, run in zip(jobs, runs)]
    lines += [f"follow it:  bigtrain sweep status {sweep_dir}    squeue -j {array_id}",
              f"results:    bigtrain sweep report {sweep_dir}"]
    return "\n".join(lines)


def run_sweep(req: SweepRequest) -> int:
    """Plan, then run every stage; returns the exit status (0, or 75 when a local run was interrupted)."""
    sweep = plan_sweep(req)
    print(f"sweep {sweep.dir}: {len(sweep.trials)} trials", flush=True)
    alive = sweep.trials
    rungs = req.halving.rungs if req.halving else []
    for rung in [*rungs, None]:
        recorded = next((d for d in sh.load_decisions(sweep.dir) if d["rung"] == rung), None) if rung else None
        if recorded is None and not run_stage(req, sweep, alive, rung):
            print(f"interrupted: re-run the same command to continue ({sweep.dir})", flush=True)
            return INTERRUPTED
        if rung:
            decision = recorded or sh.decide(req.halving, rung, alive)
            if recorded is None:
                sh.record(sweep.dir, decision)
            print(decision_text(decision, recorded is not None), flush=True)
            alive = [t for t in alive if t.id in decision["kept"]]
    return 0


def decision_text(d: dict, reused: bool) -> str:
    head = f"rung {d['rung']} ({'recorded' if reused else 'decided'}): keep {d['keep']} of {len(d['values'])} by " \
           f"{d['metric']} (cut {d['cut']})"
    rows = [f"  {'kept   ' if v['trial'] in d['kept'] else 'stopped'} {v['trial']} {d['metric']}={v[d['metric']]:.6g}"
            for v in d["values"]]
    rows += [f"  no value {tid} (failed before the rung)" for tid in d["no_value"]]
    return "\n".join([head, *rows])
