"""Checkpoint pieces without a process group: retention, RNG states, weights-only loading."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bigtrain.checkpoint.errors import CheckpointError
from bigtrain.checkpoint.retention import apply_retention, step_folders, steps_to_delete
from bigtrain.checkpoint.rng import load_rng, rng_file, save_rng
from bigtrain.checkpoint.safe_load import load_weights_only


def test_retention_keeps_last_k_plus_every_mth():
    steps = [2, 4, 6, 8, 10, 12]
    assert steps_to_delete(steps, latest=12, keep=2, keep_every=4) == [2, 6]
    assert steps_to_delete(steps, latest=12, keep=2, keep_every=0) == [2, 4, 6, 8]
    assert steps_to_delete(steps, latest=12, keep=0, keep_every=4) == []  # keep=0: keep everything
    assert steps_to_delete(steps, latest=12, keep=1, keep_every=5) == [2, 4, 6, 8]  # 10 is a multiple of 5
    assert steps_to_delete([100, 200, 300], latest=200, keep=1, keep_every=0) == [100]  # never the latest


def make_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    folder = root / f"step_{step:08d}"
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        (folder / "meta.json").write_text("{}")
    return folder


def test_apply_retention_removes_retired_incomplete_and_trash(tmp_path):
    for step in (2, 4, 6, 8, 10):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 9, complete=False)  # a save killed mid-way
    make_checkpoint(tmp_path, 12, complete=False)  # ... and one after the latest
    (tmp_path / ".trash-step_00000001").mkdir()  # a deletion that was interrupted
    removed = apply_retention(tmp_path, latest=10, keep=2, keep_every=4, meta_name="meta.json")
    assert sorted(p.name for p in removed) == ["step_00000002", "step_00000006", "step_00000009", "step_00000012"]
    assert sorted(step_folders(tmp_path)) == [4, 8, 10]
    assert not list(tmp_path.glob(".trash-*"))


def test_rng_states_round_trip_without_pickle(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # leave a cached gaussian in numpy's state
    save_rng(tmp_path, rank=3)
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    load_rng(tmp_path, rank=3)
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
    header = (tmp_path / rng_file(3)).read_bytes()[:16]
    assert not header.startswith(b"\x80")  # a safetensors header (JSON length + JSON), not a pickle


def test_missing_or_corrupt_rng_state_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="rng_rank_00001.safetensors is missing"):
        load_rng(tmp_path, rank=1)
    (tmp_path / rng_file(0)).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_rng(tmp_path, rank=0)


class Payload:
    """What a malicious checkpoint would pickle: code that runs on load."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_weights_only_loading_refuses_foreign_objects_and_runs_nothing(tmp_path):
    evil = Payload()
    evil.marker = tmp_path / "executed"
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "extra": evil}, path)
    with pytest.raises(pickle.UnpicklingError):  # sanity: this file really carries a foreign global
        torch.load(path, weights_only=True)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_weights_only(str(path))
    assert not evil.marker.exists()


def test_weights_only_loading_accepts_what_deepspeed_writes(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    state = {"module": {"w": torch.ones(2)}, "optimizer_state_dict": {"zero_stage": ZeroStageEnum.weights,
             "loss_scaler": LossScaler(1.0), "dynamic": DynamicLossScaler(2**16, 1000, 1, 2, False)},
             "lr_scheduler": {"last_epoch": 3, "_last_lr": [1e-3]}, "param_shapes": [{"w": torch.Size([2])}]}
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save(state, path)
    loaded = load_weights_only(str(path), map_location=lambda storage, loc: storage)
    assert loaded["optimizer_state_dict"]["zero_stage"] == ZeroStageEnum.weights
    assert loaded["optimizer_state_dict"]["dynamic"].cur_scale == 2**16
    assert torch.equal(loaded["module"]["w"], torch.ones(2))
