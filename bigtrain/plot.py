"""``bigtrain plot RUN_DIR``: a PNG of a run's curves from its ``metrics.jsonl``.

Four panels against the step: training loss with validation loss, learning rate, throughput
(tokens/s, MFU on a second axis) and gradient norm, with skipped steps marked on the loss panel.
Needs matplotlib (``pip install 'bigtrain[plot]'``).
"""

from __future__ import annotations

import json
from pathlib import Path

from bigtrain.errors import UserError

METRICS_FILE = "metrics.jsonl"


class MetricsFileError(UserError):
    """The run directory has no readable metrics.jsonl."""


def read_rows(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise MetricsFileError(f"{path} does not exist: expected a bigtrain run directory")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise MetricsFileError(f"{path}:{n} is not JSON: {exc}") from exc
    if not rows:
        raise MetricsFileError(f"{path} has no rows yet: nothing to plot")
    return rows


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [s for s, _ in points], [v for _, v in points]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the PNG (default ``RUN_DIR/metrics.png``) and return its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UserError("bigtrain plot needs matplotlib: pip install 'bigtrain[plot]'") from exc
    run_dir = Path(run_dir)
    rows = read_rows(run_dir)
    out = Path(out) if out else run_dir / "metrics.png"
    fig, ((loss_ax, lr_ax), (tput_ax, norm_ax)) = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    loss_ax.plot(*series(rows, "loss"), label="train loss", lw=1)
    if any("val_loss" in r for r in rows):
        loss_ax.plot(*series(rows, "val_loss"), "o-", label="val loss", ms=3)
    skipped = [r["step"] for r in rows if r.get("skipped")]
    for step in skipped:
        loss_ax.axvline(step, color="red", alpha=0.3, lw=0.8)
    loss_ax.set(title="loss" + (f" ({len(skipped)} skipped steps in red)" if skipped else ""), ylabel="loss")
    loss_ax.legend()
    lr_ax.plot(*series(rows, "lr"))
    lr_ax.set(title="learning rate", ylabel="lr")
    tput_ax.plot(*series(rows, "tokens_per_sec"), label="tokens/s")
    tput_ax.set(title="throughput", ylabel="tokens/s (global)", xlabel="step")
    mfu_steps, mfu = series(rows, "mfu")
    if mfu:
        ax2 = tput_ax.twinx()
        ax2.plot(mfu_steps, [100 * m for m in mfu], color="tab:orange", lw=0.8)
        ax2.set_ylabel("MFU %", color="tab:orange")
    norm_ax.plot(*series(rows, "grad_norm"))
    norm_ax.set(title="gradient norm (before clipping)", xlabel="step")
    fig.suptitle(f"{run_dir.resolve().name}: steps {rows[0]['step']}-{rows[-1]['step']}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
