"""YAML recipes + dotted ``key=value`` overrides -> a typed, validated :class:`Config`.

Recipes are looked up by name in ``bigtrain/config/recipes/`` (``debug`` -> ``debug.yaml``) or read
from a path. Overrides are parsed as YAML scalars and coerced to the field's declared type, so
``train.lr=1e-3`` is a float and ``model.tie_embeddings=false`` a bool. Any unknown key, wrong
type or bad value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from bigtrain.config.schema import Config
from bigtrain.errors import UserError

RECIPE_DIR = Path(__file__).parent / "recipes"


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the key and what is expected."""


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def resolve_recipe(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {name_or_path!r} does not exist")
        return path
    candidate = RECIPE_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(
            f"unknown recipe {name_or_path!r}: expected a YAML path or one of {recipe_names()}")
    return candidate


def load_config(config: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Build a Config from a recipe (name or YAML path; None = defaults) plus overrides."""
    raw: dict[str, Any] = {}
    if config:
        path = resolve_recipe(config)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return from_dict(Config, raw)


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-3")
    key, text = item.split("=", 1)
    key = key.strip().removeprefix("--")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from nested dicts, checking keys and types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}{did_you_mean(prefix, unknown[0], fields)}: valid keys under "
            f"{prefix.rstrip('.') or 'the top level'} are {sorted(fields)}")
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, prefix=f"{key}.")
        else:
            kwargs[name] = coerce(key, hint, value)
    return cls(**kwargs)


def did_you_mean(prefix: str, name: str, fields: typing.Iterable[str]) -> str:
    """" (did you mean train.steps?)" for a near miss in the same section or the same name in another, else ""."""
    close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {prefix}{close[0]}?)"
    elsewhere = [key for key, _, _ in field_help() if key.rsplit(".", 1)[-1] == name]
    return f" (did you mean {elsewhere[0]}?)" if elsewhere else ""


def coerce(key: str, hint: Any, value: Any) -> Any:
    """Coerce a YAML value to the declared type or raise naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return coerce(key, args[0], value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_hint,) = typing.get_args(hint) or (Any,)
        return [coerce(f"{key}[{i}]", item_hint, v) for i, v in enumerate(value)]
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, prefix=f"{key}.")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, (float, str)):
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, help, default) for every leaf field, for `bigtrain config keys`."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(field_help(hints[f.name], prefix=f"{key}."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((key, f.metadata.get("help", ""), default))
    return rows
