"""A search space of dotted config keys: grid values and seeded random distributions.

On the command line (``key=spec``) or in a YAML space file (``key: spec`` or ``key: [v1, v2]``)::

    train.lr=1e-3,3e-3,1e-2          grid: every value (parsed as YAML scalars, like overrides)
    train.lr=loguniform(1e-4,1e-2)   random: log-uniform in [a, b]
    train.beta2=uniform(0.9,0.99)    random: uniform in [a, b]
    train.warmup_steps=int(2,8)      random: integer in [a, b], both included
    model.num_layers=choice(2,4)     random: one of the values

Trials: the cartesian product of the grid keys (in the order given), each with ``--trials N``
random draws of the random keys (N = 1 when there are none). Draws come from one
``numpy.random.default_rng(seed)`` in trial order, so the same space and seed give the same trials.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bigtrain.launch.submit import LaunchError

RANDOM_KINDS = ("uniform", "loguniform", "int", "choice")


class SpaceError(LaunchError):
    """A search space that cannot be read (the message names the key and the expected form)."""


@dataclass(frozen=True)
class Dim:
    key: str
    kind: str  # "grid" or one of RANDOM_KINDS
    values: tuple  # grid/choice: the values; uniform/loguniform/int: (low, high)

    def to_json(self) -> dict:
        return {"key": self.key, "kind": self.kind, "values": list(self.values)}

    def sample(self, rng) -> Any:
        if self.kind == "choice":
            return self.values[int(rng.integers(len(self.values)))]
        low, high = self.values
        if self.kind == "int":
            return int(rng.integers(low, high + 1))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        return float(rng.uniform(low, high))


def scalar(text: str) -> Any:
    """A value as YAML reads it, except that numbers YAML 1.1 leaves as strings (``1e-3``) are floats."""
    text = text.strip()
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    if isinstance(value, str):
        try:
            return float(value) if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value) else value
        except ValueError:
            return value
    return value


def parse_dim(key: str, spec: Any) -> Dim:
    """``spec``: a list (grid), a ``kind(a,b,...)`` string, a comma list string, or one scalar."""
    if isinstance(spec, (list, tuple)):
        return Dim(key, "grid", tuple(spec)) if spec else _bad(key, spec)
    m = re.fullmatch(r"\s*(\w+)\((.*)\)\s*", spec) if isinstance(spec, str) else None
    if m and m.group(1) in RANDOM_KINDS:
        kind, args = m.group(1), tuple(scalar(a) for a in m.group(2).split(","))
        return random_dim(key, kind, args)
    if m:
        raise SpaceError(f"sweep key {key}: unknown distribution {m.group(1)!r}; expected one of {RANDOM_KINDS} "
                         "or a comma-separated list of values")
    values = tuple(scalar(v) for v in spec.split(",")) if isinstance(spec, str) else (spec,)
    return Dim(key, "grid", values)


def random_dim(key: str, kind: str, args: tuple) -> Dim:
    if kind == "choice":
        return Dim(key, kind, args)
    numeric = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if len(args) != 2 or not numeric or not args[0] < args[1]:
        raise SpaceError(f"sweep key {key}: {kind}(a,b) needs two numbers a < b, got {kind}{args}")
    if kind == "loguniform" and args[0] <= 0:
        raise SpaceError(f"sweep key {key}: loguniform(a,b) needs a > 0, got {args[0]}")
    if kind == "int" and not all(isinstance(a, int) for a in args):
        raise SpaceError(f"sweep key {key}: int(a,b) needs two integers, got {args}")
    return Dim(key, kind, tuple(args))


def _bad(key: str, spec: Any):
    raise SpaceError(f"sweep key {key}: empty list of values {spec!r}")


def parse_cli(items: list[str]) -> list[Dim]:
    """``key=spec`` arguments whose value is a list or a distribution; see :func:`split_args`."""
    return [parse_dim(*item.split("=", 1)) for item in items]


def is_sweep_arg(item: str) -> bool:
    """A ``key=...`` argument that sweeps (several values or a distribution), not a plain override."""
    if "=" not in item:
        return False
    key, value = item.split("=", 1)
    if key.removeprefix("--") == "run.dir":
        return False
    m = re.fullmatch(r"\s*(\w+)\(.*\)\s*", value)
    return bool(m and m.group(1) in RANDOM_KINDS) or ("," in value and not value.lstrip().startswith(("[", "{")))


def split_args(items: list[str]) -> tuple[list[Dim], list[str]]:
    """Command-line ``key=value`` items -> (sweep dimensions, plain overrides applied to every trial)."""
    return parse_cli([i for i in items if is_sweep_arg(i)]), [i for i in items if not is_sweep_arg(i)]


def load_space_file(path: str | Path) -> list[Dim]:
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"--space {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpaceError(f"--space {path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"--space {path}: expected a mapping of dotted keys to value lists or distributions")
    return [parse_dim(str(key), spec) for key, spec in flatten(raw).items()]


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{train: {lr: [...]}}`` and ``{train.lr: [...]}`` both -> ``{"train.lr": [...]}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def combine(*groups: list[Dim]) -> list[Dim]:
    dims, seen = [], set()
    for dim in itertools.chain(*groups):
        if dim.key in seen:
            raise SpaceError(f"sweep key {dim.key} is given twice (command line and/or --space file)")
        seen.add(dim.key)
        dims.append(dim)
    if not dims:
        raise SpaceError("nothing to sweep: give key=v1,v2,... or key=loguniform(a,b) arguments, or --space FILE")
    return dims


def sample_trials(dims: list[Dim], trials: int | None, seed: int) -> list[dict]:
    """The trials' values, in a stable order: grid product x ``trials`` random draws."""
    import numpy as np

    grid = [d for d in dims if d.kind == "grid"]
    random = [d for d in dims if d.kind != "grid"]
    if trials is not None and trials < 1:
        raise SpaceError(f"--trials must be >= 1, got {trials}")
    if random and trials is None:
        raise SpaceError(f"sweep key {random[0].key} is a distribution ({random[0].kind}): give --trials N")
    if not random and (trials or 1) > 1:
        raise SpaceError(f"--trials {trials} with a grid only would repeat every trial: --trials draws the random "
                         f"keys (uniform, loguniform, int, choice)")
    rng = np.random.default_rng(seed)
    out = []
    for point in itertools.product(*(d.values for d in grid)):
        for _ in range(trials or 1):
            values = dict(zip((d.key for d in grid), point))
            values.update({d.key: d.sample(rng) for d in random})
            out.append({d.key: values[d.key] for d in dims})  # keys in the order given
    return out
