"""Successive halving: at each rung step, the trials below the cut stop (with a checkpoint); the rest go on.

Synchronous rungs (successive halving as in Jamieson & Talwalkar 2016 / ASHA's rule without its
asynchrony): every trial still alive trains to the rung step (``train.stop_at``: the learning-rate
schedule still runs to ``train.steps``, so a promoted trial continues exactly as an uninterrupted
run), then the trials are ranked by the metric logged at exactly that step (lower is better; ties
by trial id) and the best ``max(1, floor(n / eta))`` are kept. A trial that has no value at the rung
(it failed) is not ranked and does not continue. Each decision is appended to
``SWEEP_DIR/halving.json`` with every value it was based on; a re-run of the sweep reuses recorded
decisions (it never re-decides a rung), so it only trains what was not trained yet. A stopped trial
keeps its checkpoint at the rung: ``pretrain.py run.dir=SWEEP_DIR/trials/<id>`` continues it.

Synchronous rather than asynchronous: with the small trial counts of pretraining sweeps every rung
waits for its slowest trial, but the decisions do not depend on which trial happened to finish
first, so a re-run (or a test) gets the same ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from bigtrain.launch.sweep.plan import SweepError, Trial
from bigtrain.launch.sweep.state import metric_rows, value_at

DECISIONS = "halving.json"


@dataclass
class Halving:
    rungs: list[int]  # steps, increasing, each < every trial's train.steps
    metric: str = "val_loss"
    eta: float = 2.0  # keep the best 1/eta of the trials at each rung

    def to_json(self) -> dict:
        return asdict(self)


def parse_halving(rungs: str, metric: str, eta: float) -> Halving:
    try:
        steps = [int(s) for s in rungs.split(",") if s.strip()]
    except ValueError:
        raise SweepError(f"--halving {rungs!r}: expected rung steps, e.g. --halving 10,20") from None
    if not steps or any(s < 1 for s in steps) or steps != sorted(set(steps)):
        raise SweepError(f"--halving {rungs!r}: rung steps must be positive and increasing, e.g. 10,20")
    if not eta > 1:
        raise SweepError(f"--halving-eta must be > 1 (keep the best 1/eta at each rung), got {eta}")
    return Halving(steps, metric, float(eta))


def check_halving(halving: Halving, steps: int, eval_every: int, label: str) -> None:
    """A trial with ``train.steps=steps`` must pass every rung before its end, and log the metric."""
    if halving.rungs[-1] >= steps:
        raise SweepError(f"trial {label}: --halving rung {halving.rungs[-1]} must be below train.steps ({steps})")
    if halving.metric.startswith("val_") and eval_every <= 0:
        raise SweepError(f"trial {label}: --halving-metric {halving.metric} needs eval.every > 0 (it is evaluated "
                         "at every rung and every eval.every steps)")


def load_decisions(sweep_dir: Path) -> list[dict]:
    path = Path(sweep_dir) / DECISIONS
    return json.loads(path.read_text()) if path.is_file() else []


def decide(halving: Halving, rung: int, trials: list[Trial]) -> dict:
    """The decision at ``rung`` over the trials that trained to it, with the numbers it was based on."""
    ranked, failed = [], []
    for t in trials:
        value = value_at(metric_rows(t.dir), halving.metric, rung)
        if value is None or not math.isfinite(value):
            failed.append(t.id)
        else:
            ranked.append((value, t.id, t))
    ranked.sort(key=lambda item: (item[0], item[1]))
    keep = max(1, math.floor(len(ranked) / halving.eta)) if ranked else 0
    return {
        "rung": rung, "metric": halving.metric, "eta": halving.eta, "keep": keep,
        "values": [{"trial": tid, "values": t.values, halving.metric: v} for v, tid, t in ranked],
        "cut": ranked[keep - 1][0] if ranked else None,  # the worst value kept
        "kept": [tid for _, tid, _ in ranked[:keep]],
        "stopped": [tid for _, tid, _ in ranked[keep:]],
        "no_value": failed,
    }


def record(sweep_dir: Path, decision: dict) -> None:
    path = Path(sweep_dir) / DECISIONS
    decisions = [d for d in load_decisions(sweep_dir) if d["rung"] != decision["rung"]] + [decision]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(decisions, indent=2) + "\n")
    tmp.replace(path)


def stopped_at(decisions: list[dict]) -> dict[str, dict]:
    """trial id -> the decision that stopped it."""
    return {tid: d for d in decisions for tid in d["stopped"]}
