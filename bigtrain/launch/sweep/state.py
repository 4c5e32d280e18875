"""What a trial directory says about the trial: checkpoint step, metrics, error line, where it runs.

Files the sweep adds to a trial's run directory (next to bigtrain's own):

- ``sweep_job.json``: how it was last started: ``{"executor": "local", "pid": ..., "returncode": ...}``
  or ``{"executor": "slurm", "job_id": "123_4", "folder": ...}``;
- ``sweep_error.txt``: the error line of its last failed attempt (removed when it starts again);
- ``sweep.log``: stdout + stderr of the local executor's process (SLURM: the submitit folder).
"""

from __future__ import annotations

import json
from pathlib import Path

JOB_FILE = "sweep_job.json"
ERROR_FILE = "sweep_error.txt"
LOG_FILE = "sweep.log"


def checkpoint_step(run_dir: Path) -> int:
    """Step of the latest complete checkpoint (0 = none); ``checkpoints/latest`` holds ``step_00000010``."""
    latest = Path(run_dir) / "checkpoints" / "latest"
    if not latest.is_file():
        return 0
    name = latest.read_text().strip()
    return int(name.removeprefix("step_")) if name.startswith("step_") else 0


def metric_rows(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a row torn by a kill
                continue
    return rows


def value_at(rows: list[dict], metric: str, step: int) -> float | None:
    """The metric logged at exactly ``step`` (the last such row: a resumed run may have logged it again)."""
    values = [r[metric] for r in rows if r.get("step") == step and r.get(metric) is not None]
    return values[-1] if values else None


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_job(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / JOB_FILE).write_text(json.dumps(record) + "\n")


def error_line(run_dir: Path) -> str | None:
    path = Path(run_dir) / ERROR_FILE
    return path.read_text().strip() if path.is_file() else None


def write_error(run_dir: Path, line: str) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / ERROR_FILE).write_text(line.strip() + "\n")


def clear_error(run_dir: Path) -> None:
    (Path(run_dir) / ERROR_FILE).unlink(missing_ok=True)


def last_error_in(text: str) -> str:
    """The line that explains a failure: bigtrain's ``error:`` line, else the last line of a traceback."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1]
    raised = [line for line in lines if line.split(":", 1)[0].endswith(("Error", "Exception", "Interrupt"))]
    return (raised or lines or ["(no output)"])[-1]
