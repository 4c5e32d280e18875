"""The one weights-only ``torch.load`` of bigtrain, and resume through it.

:func:`torch_load` is how every ``.pt``/``.bin`` file is read (DeepSpeed's checkpoint files by
bigtrain/checkpoint/zero_reader.py and by resume, a Hugging Face ``pytorch_model.bin`` by
bigtrain/convert/hf_reader.py): ``torch.load(weights_only=True)`` allowing, besides tensors and plain
containers, only the classes the caller names -- for DeepSpeed's files those of
:func:`deepspeed_classes`. A file holding anything else is refused with a :class:`CheckpointError`
naming it; a truncated or corrupt one too.

DeepSpeed (0.19) reads every file of ``engine.load_checkpoint`` (model states, ZeRO optimizer
partitions, LR-scheduler and client state) through ``engine.checkpoint_engine.load``, whose default
``TorchCheckpointEngine`` calls ``torch.load(weights_only=False)``. :func:`weights_only_loading`
replaces that method on the engine with :func:`load_weights_only` (:func:`torch_load` with
:func:`allowed_classes`: the DeepSpeed classes + ``DynamicLossScaler`` for fp16 runs).

As a second line, ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` is set while the checkpoint loads, so a
``torch.load`` that bypasses the checkpoint engine (DeepSpeed's universal-checkpoint and
``zero_to_fp32`` code paths, which bigtrain does not use) is weights-only too.

Not covered: files bigtrain reads without torch (``meta.json``/``config.yaml`` are JSON/YAML
``safe_load``; RNG states are safetensors + JSON; the tokenizer is sentencepiece/JSON), so none of
them can execute code either.
"""

from __future__ import annotations

import os
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch

from bigtrain.checkpoint.errors import CheckpointError


def deepspeed_classes() -> list[type]:
    """The only non-torch objects DeepSpeed (0.19) pickles into its checkpoint files."""
    from bigtrain.parallel.dsenv import import_deepspeed

    import_deepspeed()  # DeepSpeed's process-wide settings first (CPU accelerator, quiet logger)
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum,  # optimizer_state_dict["zero_stage"]
            LossScaler,  # optimizer_state_dict["loss_scaler"] (fp32 and ZeRO-3 too)
            fragment_address]  # optimizer_state_dict["param_slice_mappings"] (ZeRO-1/2, bf16)


def allowed_classes() -> list[type]:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    return [*deepspeed_classes(), DynamicLossScaler]  # fp16 runs pickle a DynamicLossScaler


def torch_load(path: str | Path, allowed: Sequence[type] = (), map_location="cpu", mmap: bool = False):
    """torch.load with weights_only=True allowing only ``allowed`` besides tensors; CheckpointError if refused."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        names = [f"{c.__module__}.{c.__qualname__}" for c in allowed]
        what = f"tensors and the allowed classes {names}" if names else "tensors"
        raise CheckpointError(f"{path} holds objects outside {what}; refusing to unpickle it "
                              f"({str(exc).splitlines()[0]})") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt: {exc}") from exc


def load_weights_only(path: str, map_location=None):
    """The checkpoint engine's ``load``: :func:`torch_load` with DeepSpeed's classes."""
    return torch_load(path, allowed_classes(), map_location=map_location)


@contextmanager
def weights_only_loading(engine) -> Iterator[None]:
    """Within the block, every checkpoint file the engine (or anything else) torch.loads is weights-only."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    ckpt_engine = engine.checkpoint_engine
    if not isinstance(ckpt_engine, TorchCheckpointEngine):
        raise CheckpointError(f"DeepSpeed uses {type(ckpt_engine).__name__} for checkpoints; bigtrain can only "
                              "guarantee weights-only loading with the default TorchCheckpointEngine")
    saved_env = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD",
                                                       "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    ckpt_engine.load = load_weights_only
    try:
        yield
    finally:
        del ckpt_engine.load  # back to the class method
        for key, value in saved_env.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
