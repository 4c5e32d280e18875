"""The trials of a sweep, resolved and validated before anything runs, and the ``sweep.json`` manifest.

A trial's id is a hash of its values alone (``t-1a2b3c4d``), so the same space always maps to the
same directories ``SWEEP_DIR/trials/<id>/``: each a normal bigtrain run directory that a re-run of
the sweep resumes. ``sweep.json`` records what defines the sweep (config, overrides, space, seed,
trials, halving); a re-run with anything different is refused with the difference named.

Every trial's config is loaded and validated (keys, values, layout for the trial's world size)
before anything is queued; any invalid trial refuses the whole sweep, naming the trial's values
and the key (a sweep with holes is harder to read than one fixed and restarted). The data of the
base config is resolved once here (the embedded corpus is built before any trial starts); data
keys that are swept are resolved by each trial at its start, so an unreadable one fails that
trial only (its error line shows in ``bigtrain sweep status``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from bigtrain.launch.submit import LaunchError

MANIFEST = "sweep.json"
TRIALS_DIR = "trials"


class SweepError(LaunchError):
    """The sweep cannot run as asked; the message names the key, trial or file."""


def override_text(value) -> str:
    """A value as a ``key=value`` override (the config loader coerces it to the field's type)."""
    return value if isinstance(value, str) else json.dumps(value)


def trial_id(values: dict) -> str:
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return "t-" + hashlib.sha1(canonical.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Trial:
    id: str
    values: dict
    dir: Path

    def overrides(self, base: list[str]) -> list[str]:
        """The trial's overrides: the sweep's own, its values, its run directory (last: it wins)."""
        return [*base, *(f"{k}={override_text(v)}" for k, v in self.values.items()), f"run.dir={self.dir}"]

    def label(self) -> str:
        return " ".join(f"{k}={override_text(v)}" for k, v in self.values.items())


@dataclass
class SweepSpec:
    """What defines a sweep (``sweep.json``): changing any of it on a re-run is refused."""
    config: str
    overrides: list[str]  # applied to every trial (run.dir excluded)
    space: list[dict]  # Dim.to_json() of each swept key
    seed: int
    trials: int | None
    halving: dict | None  # bigtrain.launch.sweep.halving.Halving.to_json()

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def make_trials(sweep_dir: Path, values_list: list[dict]) -> list[Trial]:
    trials = [Trial(trial_id(v), v, sweep_dir / TRIALS_DIR / trial_id(v)) for v in values_list]
    seen: dict[str, Trial] = {}
    for t in trials:
        if t.id in seen:
            raise SweepError(f"two trials have the same values ({t.label()}): make the space's values distinct")
        seen[t.id] = t
    return trials


def check_trials(config: str, base: list[str], trials: list[Trial], world_size: int) -> list:
    """Load and validate every trial's config for ``world_size`` ranks -> the configs; any error refuses
    the sweep, with every invalid trial's values and the key named."""
    from bigtrain.config.load import load_config
    from bigtrain.config.validate import validate
    from bigtrain.errors import UserError

    problems, configs = [], []
    for t in trials:
        try:
            cfg = load_config(config, t.overrides(base))
            validate(cfg, world_size)
            if not cfg.checkpoint.save_final:
                raise SweepError("checkpoint.save_final=false: a sweep needs each trial's final checkpoint (it "
                                 "marks the trial done and lets a stopped trial continue)")
            configs.append(cfg)
        except UserError as exc:
            problems.append(f"trial {t.label()}: {exc}")
    if problems:
        raise SweepError(f"{len(problems)} of {len(trials)} trials are invalid, nothing was started:\n  "
                         + "\n  ".join(problems))
    return configs


def check_manifest(sweep_dir: Path, spec: SweepSpec) -> None:
    """A new sweep writes ``sweep.json``; a re-run must match it (its trials then resume)."""
    path = sweep_dir / MANIFEST
    if not path.is_file():
        sweep_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(spec.to_json(), indent=2) + "\n")
        return
    saved, ours = json.loads(path.read_text()), spec.to_json()
    diff = [f"{k}: {saved.get(k)!r} in {path}, {ours[k]!r} now" for k in ours if saved.get(k) != ours[k]]
    if diff:
        raise SweepError(f"{sweep_dir} holds a different sweep ({'; '.join(diff)}): re-run the same command to "
                         "resume it, or give a new run.dir")


def read_spec(sweep_dir: Path) -> SweepSpec:
    path = Path(sweep_dir) / MANIFEST
    if not path.is_file():
        raise SweepError(f"{sweep_dir}: no {MANIFEST}; is this a sweep directory (the run.dir of `bigtrain sweep`)?")
    return SweepSpec(**json.loads(path.read_text()))


def trials_of(sweep_dir: Path, spec: SweepSpec) -> list[Trial]:
    """The trials of a recorded sweep, in their order (re-derived from the space and seed)."""
    from bigtrain.launch.sweep.space import Dim, sample_trials

    dims = [Dim(d["key"], d["kind"], tuple(d["values"])) for d in spec.space]
    return make_trials(Path(sweep_dir), sample_trials(dims, spec.trials, spec.seed))
