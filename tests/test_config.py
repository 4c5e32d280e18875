"""Config loading, overrides and validation: every invalid case names the key."""

import subprocess
import sys

import pytest

from bigtrain.config import ConfigError, dump_yaml, load_config, validate
from bigtrain.config.load import recipe_names


def test_debug_recipe_loads_and_validates():
    cfg = load_config("debug")
    assert cfg.parallel.tensor_parallel == 2 and cfg.parallel.zero_stage == 3
    validate(cfg, world_size=2)
    assert "debug" in recipe_names()


def test_overrides_are_typed():
    cfg = load_config("debug", ["train.lr=1e-3", "model.tie_embeddings=false", "train.steps=7",
                                "run.dir=/tmp/x", "parallel.bucket_size=1e6"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.model.tie_embeddings is False
    assert cfg.train.steps == 7 and cfg.parallel.bucket_size == 1_000_000
    assert cfg.run.dir == "/tmp/x"


def test_resolved_dump_round_trips(tmp_path):
    cfg = load_config("debug", ["train.steps=3"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(str(path)) == cfg


@pytest.mark.parametrize("overrides, world, needle", [
    (["model.num_heads=6", "model.num_kv_heads=2", "model.hidden_size=96", "parallel.tensor_parallel=4"], None,
     "model.num_heads (6) must be divisible by parallel.tensor_parallel (4)"),
    (["model.num_kv_heads=1"], None, "model.num_kv_heads (1) must be divisible by parallel.tensor_parallel (2)"),
    (["model.num_heads=4", "model.num_kv_heads=3"], None, "model.num_heads (4) must be divisible by model.num_kv_heads (3)"),
    (["model.hidden_size=130"], None, "model.hidden_size (130) must be divisible by model.num_heads (4)"),
    ([], 3, "world size 3 must be divisible by parallel.tensor_parallel (2)"),
    (["train.global_batch_size=12", "train.micro_batch_size=4"], 4,
     "train.global_batch_size (12) must be divisible by train.micro_batch_size (4) x data-parallel size (2)"),
    (["train.precision=fp8"], None, "train.precision must be one of"),
    (["parallel.zero_stage=4"], None, "parallel.zero_stage must be 0, 1, 2 or 3"),
    (["train.steps=0"], None, "train.steps must be positive"),
])
def test_invalid_configs_name_the_key(overrides, world, needle):
    cfg = load_config("debug", overrides)
    with pytest.raises(ConfigError, match=None) as info:
        validate(cfg, world_size=world)
    assert needle in str(info.value)


@pytest.mark.parametrize("overrides, needle", [
    (["model.hiden_size=3"], "unknown key model.hiden_size"),
    (["trian.steps=3"], "unknown key trian"),
    (["train.steps=many"], "train.steps: expected an integer, got 'many'"),
    (["model.tie_embeddings=3"], "model.tie_embeddings: expected true or false"),
    (["train.lr=fast"], "train.lr: expected a number"),
    (["train"], "expected key=value"),
])
def test_bad_keys_and_types_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config("debug", overrides)
    assert needle in str(info.value)


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown recipe 'nope'.*debug"):
        load_config("nope")


def test_config_errors_reach_the_cli_as_one_line():
    proc = subprocess.run([sys.executable, "-m", "bigtrain.cli", "config", "show", "--world-size", "4",
                           "train.global_batch_size=6", "train.micro_batch_size=2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: train.global_batch_size (6) must be divisible")
    assert "Traceback" not in proc.stderr
