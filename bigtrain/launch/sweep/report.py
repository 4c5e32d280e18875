"""``bigtrain sweep report``: one table of the trials (CSV + Markdown), a PNG, and the best config as YAML.

Columns of ``SWEEP_DIR/report.csv`` (one row per trial, in the sweep's order): ``trial``, one column
per swept key, ``state``, ``final_val_loss`` (the last logged ``val_loss``), ``best_val_loss`` (the
lowest), ``steps`` (last logged step), ``tokens_per_sec`` (median over the logged steps: the first
steps of each start are slow), ``train_time_s`` (sum of ``step_time``: seconds in training steps,
without start-up and evaluation), and ``why`` (the error line, or the halving decision). With
``--metric M`` other than ``val_loss``, ``final_M`` and ``best_M`` are added and the trials are
ranked by ``best_M``. Every number comes from the trial's ``metrics.jsonl``.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from bigtrain.launch.sweep.plan import SweepSpec, override_text, read_spec, trials_of
from bigtrain.launch.sweep.state import metric_rows
from bigtrain.launch.sweep.status import TrialStatus, sweep_status

FIXED = ["state", "final_val_loss", "best_val_loss", "steps", "tokens_per_sec", "train_time_s", "why"]


def metric_summary(rows: list[dict], metric: str) -> tuple[float | None, float | None]:
    """(last, lowest) finite value of ``metric`` in the rows."""
    values = [r[metric] for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    return (values[-1], min(values)) if values else (None, None)


def trial_row(status: TrialStatus, keys: list[str], metric: str) -> dict:
    rows = metric_rows(status.trial.dir)
    final, best = metric_summary(rows, "val_loss")
    speeds = [r["tokens_per_sec"] for r in rows if r.get("tokens_per_sec")]
    row = {"trial": status.trial.id, **{k: status.trial.values[k] for k in keys}, "state": status.state,
           "final_val_loss": final, "best_val_loss": best, "steps": rows[-1]["step"] if rows else 0,
           "tokens_per_sec": statistics.median(speeds) if speeds else None,
           "train_time_s": sum(r.get("step_time", 0.0) for r in rows), "why": status.why}
    if metric != "val_loss":
        row[f"final_{metric}"], row[f"best_{metric}"] = metric_summary(rows, metric)
    return row


def build_table(sweep_dir: Path, metric: str = "val_loss") -> tuple[list[dict], list[str]]:
    spec = read_spec(sweep_dir)
    keys = [d["key"] for d in spec.space]
    rows = [trial_row(s, keys, metric) for s in sweep_status(sweep_dir)]
    extra = [] if metric == "val_loss" else [f"final_{metric}", f"best_{metric}"]
    return rows, ["trial", *keys, *FIXED[:-1], *extra, "why"]


def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return override_text(value) if not isinstance(value, str) else value


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else row[c]) for c in columns})


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def best_trial(rows: list[dict], metric: str) -> dict | None:
    ranked = [r for r in rows if r.get(f"best_{metric}") is not None]
    return min(ranked, key=lambda r: (r[f"best_{metric}"], r["trial"])) if ranked else None


def best_yaml(sweep_dir: Path, spec: SweepSpec, best: dict, metric: str) -> str:
    """The best trial's full resolved config, as a recipe (run.dir points at the trial: it resumes there)."""
    from bigtrain.config.load import dump_yaml, load_config

    trial = next(t for t in trials_of(sweep_dir, spec) if t.id == best["trial"])
    head = f"# best trial {trial.id} of {sweep_dir}: best {metric} {best[f'best_{metric}']:.6g}\n# {trial.label()}\n"
    return head + dump_yaml(load_config(spec.config, trial.overrides(spec.overrides)))


def write_report(sweep_dir: Path, metric: str = "val_loss", plot: bool = True) -> dict:
    """report.csv, report.md, report.png (with matplotlib) and best.yaml in the sweep dir -> their paths."""
    sweep_dir = Path(sweep_dir)
    spec = read_spec(sweep_dir)
    rows, columns = build_table(sweep_dir, metric)
    out = {"csv": sweep_dir / "report.csv", "md": sweep_dir / "report.md"}
    write_csv(out["csv"], rows, columns)
    out["md"].write_text(markdown(rows, columns))
    best = best_trial(rows, metric)
    if best is not None:
        out["yaml"] = sweep_dir / "best.yaml"
        out["yaml"].write_text(best_yaml(sweep_dir, spec, best, metric))
    if plot:
        from bigtrain.launch.sweep.figure import plot_sweep

        out["png"] = plot_sweep(sweep_dir, spec, rows, metric, sweep_dir / "report.png")
    out["rows"], out["columns"], out["best"] = rows, columns, best
    return out
