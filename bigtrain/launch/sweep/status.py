"""``bigtrain sweep status``: the state of every trial, read from its directory (and SLURM for queued ones).

States: ``done`` (its final checkpoint is at ``train.steps``), ``stopped early`` (a halving decision
stopped it, its checkpoint is at the rung), ``running``, ``requeued`` (SLURM put it back in the queue
after a timeout or preemption), ``pending`` (not started, or interrupted with a checkpoint: a re-run
continues it), ``failed`` (with the error line of its last attempt).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bigtrain.launch.sweep.halving import load_decisions, stopped_at
from bigtrain.launch.sweep.plan import Trial, read_spec, trials_of
from bigtrain.launch.sweep.state import JOB_FILE, checkpoint_step, error_line, read_json


@dataclass
class TrialStatus:
    trial: Trial
    state: str
    step: int  # latest complete checkpoint
    steps: int  # train.steps
    why: str  # the error line, the halving decision, the SLURM job


def slurm_state(job_id: str) -> tuple[str, int]:
    """(JobState, restarts) from scontrol, or sacct once scontrol has forgotten the job; ("", 0) if unknown."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():
        info = dict(item.split("=", 1) for item in out.stdout.split() if "=" in item)
        return info.get("JobState", ""), int(info.get("Restarts", 0) or 0)
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True)
    states = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return (states[-1] if states else ""), 0


def live_state(job: dict) -> tuple[str | None, str]:
    """running / requeued / pending while a process or SLURM job is on it, else None."""
    if job.get("executor") == "local":
        alive = job.get("returncode") is None and job.get("pid") and pid_alive(int(job["pid"]))
        return ("running", f"pid {job['pid']}") if alive else (None, "")
    if job.get("executor") == "slurm":
        state, restarts = slurm_state(job["job_id"])
        where = f"job {job['job_id']}" + (f", {restarts} restart(s)" if restarts else "")
        if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED") and (restarts or state != "PENDING"):
            return "requeued", where
        if state in ("PENDING", "CONFIGURING"):
            return "pending", where
        if state in ("RUNNING", "COMPLETING", "SUSPENDED"):
            return "running", where
    return None, ""


def pid_alive(pid: int) -> bool:
    """The process exists and (where /proc tells) is still a bigtrain trial, not a reused pid."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self/cmdline").exists():
        try:
            return b"bigtrain" in cmdline.read_bytes()
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def trial_status(t: Trial, steps: int, stopped: dict[str, dict]) -> TrialStatus:
    step = checkpoint_step(t.dir)
    if step >= steps:
        return TrialStatus(t, "done", step, steps, "")
    if t.id in stopped and step >= stopped[t.id]["rung"]:
        d = stopped[t.id]
        value = next(v[d["metric"]] for v in d["values"] if v["trial"] == t.id)
        return TrialStatus(t, "stopped early", step, steps, f"{d['metric']} {value:.6g} at rung {d['rung']} > cut "
                           f"{d['cut']:.6g} (kept {d['keep']} of {len(d['values'])})")
    state, where = live_state(read_json(t.dir / JOB_FILE))
    if state is not None:
        return TrialStatus(t, state, step, steps, where)
    error = error_line(t.dir)
    if error:
        return TrialStatus(t, "failed", step, steps, error)
    return TrialStatus(t, "pending", step, steps, f"checkpoint at step {step}" if step else "")


def sweep_status(sweep_dir: Path) -> list[TrialStatus]:
    from bigtrain.config.load import load_config

    spec = read_spec(sweep_dir)
    stopped = stopped_at(load_decisions(sweep_dir))
    return [trial_status(t, load_config(spec.config, t.overrides(spec.overrides)).train.steps, stopped)
            for t in trials_of(sweep_dir, spec)]


def format_status(statuses: list[TrialStatus]) -> str:
    lines = [f"{'trial':<11} {'state':<13} {'step':>11}  values / why"]
    for s in statuses:
        lines.append(f"{s.trial.id:<11} {s.state:<13} {f'{s.step}/{s.steps}':>11}  {s.trial.label()}")
        if s.why:
            lines.append(f"{'':<37}{s.why}")
    counts = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    return "\n".join(lines)
