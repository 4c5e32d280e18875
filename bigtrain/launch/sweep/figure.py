"""``SWEEP_DIR/report.png``: the metric against each swept key, and the curves of the best trials."""

from __future__ import annotations

from pathlib import Path

from bigtrain.errors import UserError
from bigtrain.launch.sweep.plan import SweepSpec, trials_of
from bigtrain.launch.sweep.state import metric_rows

BEST_CURVES = 3


def plot_sweep(sweep_dir: Path, spec: SweepSpec, rows: list[dict], metric: str, out: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UserError("bigtrain sweep report's plot needs matplotlib: pip install 'bigtrain[plot]' "
                        "(or --no-plot)") from exc
    keys = [d for d in spec.space]
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4.2 * (len(keys) + 1), 3.6), squeeze=False)
    best_key = f"best_{metric}"
    for ax, dim in zip(axes[0], keys):
        points = [(r[dim["key"]], r[best_key]) for r in rows if r.get(best_key) is not None]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points)
        xs = [x if numeric else str(x) for x, _ in points]
        ax.scatter(xs, [y for _, y in points])
        if numeric and dim["kind"] == "loguniform" or (numeric and points and min(xs) > 0 and max(xs) / min(xs) >= 10):
            ax.set_xscale("log")
        ax.set_xlabel(dim["key"])
        ax.set_ylabel(best_key)
    ranked = sorted((r for r in rows if r.get(best_key) is not None), key=lambda r: r[best_key])[:BEST_CURVES]
    trials = {t.id: t for t in trials_of(sweep_dir, spec)}
    ax = axes[0][-1]
    for r in ranked:
        curve = [(row["step"], row[metric]) for row in metric_rows(trials[r["trial"]].dir) if row.get(metric) is not None]
        ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".", label=trials[r["trial"]].label())
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"best {len(ranked)} trials")
    if ranked:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
