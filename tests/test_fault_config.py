"""Config keys of checkpoint retention, numerical faults, the watchdog and precision (no process group)."""

from __future__ import annotations

import pytest

from bigtrain.config.load import ConfigError, load_config
from bigtrain.config.validate import validate
from bigtrain.parallel.engine import build_ds_config


@pytest.mark.parametrize("override, message", [
    ("checkpoint.keep=-1", "checkpoint.keep must be >= 0 (0 = keep all), got -1"),
    ("checkpoint.keep_every=-2", "checkpoint.keep_every must be >= 0"),
    ("checkpoint.keep_every=4", "checkpoint.keep_every=4 needs checkpoint.keep > 0"),
    ("train.max_consecutive_skips=-1", "train.max_consecutive_skips must be >= 0 (0 = never stop)"),
    ("train.spike_threshold=0.5", "train.spike_threshold must be > 1"),
    ("train.watchdog_timeout_s=-5", "train.watchdog_timeout_s must be >= 0 (0 = off)"),
    ("train.precision=fp8", "train.precision must be one of ('auto', 'fp32', 'bf16', 'fp16'), got 'fp8'"),
])
def test_bad_fault_tolerance_keys_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(load_config("debug", [override]))


def test_defaults_are_valid_and_safe():
    cfg = load_config("debug", ["checkpoint.keep=3", "checkpoint.keep_every=1000", "train.watchdog_timeout_s=600"])
    validate(cfg, world_size=2)
    defaults = load_config(None)
    assert (defaults.checkpoint.keep, defaults.train.watchdog_timeout_s) == (0, 0.0)  # keep all, watchdog off
    assert defaults.train.max_consecutive_skips == 5 and defaults.train.spike_threshold == 2.0


def test_fp16_config_has_dynamic_loss_scaling():
    cfg = load_config("debug", ["train.precision=fp16", "model.vocab_size=4096"])
    validate(cfg, world_size=2)
    ds = build_ds_config(cfg, dp_size=1, on_gpu=True)
    assert ds["fp16"]["enabled"] is True and "bf16" not in ds
    assert ds["fp16"]["loss_scale"] == 0  # 0 = dynamic
    assert {"initial_scale_power", "loss_scale_window", "hysteresis", "min_loss_scale"} <= set(ds["fp16"])


def test_bf16_config_accumulates_in_fp32_under_zero_and_bf16_without():
    for stage, accum in ((3, "fp32"), (1, "fp32"), (0, "bf16")):
        cfg = load_config("debug", ["train.precision=bf16", f"parallel.zero_stage={stage}"])
        ds = build_ds_config(cfg, dp_size=1, on_gpu=False)
        assert ds["bf16"]["enabled"] is True and ds["data_types"]["grad_accum_dtype"] == accum, stage


def test_fp16_on_a_cpu_only_machine_is_refused_before_training():
    import torch

    from bigtrain.train.run import check_precision_supported

    cfg = load_config("debug", ["train.precision=fp16"])
    if torch.cuda.is_available():
        check_precision_supported(cfg)
    else:
        with pytest.raises(ConfigError, match=r"train.precision=fp16 needs CUDA"):
            check_precision_supported(cfg)
