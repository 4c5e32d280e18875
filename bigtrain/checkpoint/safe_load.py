"""Resume without unpickling arbitrary objects: DeepSpeed's files are read with ``weights_only=True``.

DeepSpeed (0.19) reads every file of ``engine.load_checkpoint`` (model states, ZeRO optimizer
partitions, LR-scheduler and client state) through ``engine.checkpoint_engine.load``, whose default
``TorchCheckpointEngine`` calls ``torch.load(weights_only=False)``. :func:`weights_only_loading`
replaces that method on the engine with :func:`load_weights_only`: ``torch.load(weights_only=True)``
allowing, besides tensors and plain containers, only the DeepSpeed classes listed by
``bigtrain.convert.zero_reader.allowed_globals()`` (+ ``DynamicLossScaler`` for fp16 runs). A file
holding anything else is refused with a :class:`CheckpointError` naming it.

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
from typing import Iterator

import torch

from bigtrain.checkpoint.errors import CheckpointError


def allowed_classes() -> list[type]:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    from bigtrain.convert.zero_reader import allowed_globals

    return [*allowed_globals(), DynamicLossScaler]  # fp16 runs pickle a DynamicLossScaler


def load_weights_only(path: str, map_location=None):
    """torch.load with weights_only=True and the DeepSpeed allowlist; CheckpointError if refused."""
    allowed = allowed_classes()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        names = [f"{c.__module__}.{c.__qualname__}" for c in allowed]
        raise CheckpointError(f"{path} holds objects outside tensors and the allowed DeepSpeed classes {names}; "
                              f"refusing to unpickle it ({str(exc).splitlines()[0]})") from exc


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
