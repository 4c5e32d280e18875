"""bigtrain's own weights-only checkpoint: one safetensors file of fp32 weights per tensor-parallel rank.

Written by ``bigtrain convert from-hf``; a checkpoint folder holding it looks like any other
(``meta.json``, ``config.yaml``, ``tokenizer/``) plus ``model_tp{r:02d}.safetensors`` for each TP rank r,
with bigtrain's parameter names and that rank's shard shapes. ``meta.json`` says
``"weights": "bigtrain-safetensors/1"`` and ``"weights_only": true``: there is no optimizer state, so a
run resuming from it starts at step 0 with a fresh optimizer (bigtrain/checkpoint/reshard.py).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from bigtrain.checkpoint.errors import CheckpointError

WEIGHTS_FORMAT = "bigtrain-safetensors/1"


def weights_file(tp_rank: int) -> str:
    return f"model_tp{tp_rank:02d}.safetensors"


def is_native(meta: dict) -> bool:
    return meta.get("weights") == WEIGHTS_FORMAT


def check_complete(folder: Path, meta: dict) -> None:
    missing = [weights_file(r) for r in range(meta["tensor_parallel"]) if not (folder / weights_file(r)).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is incomplete: meta.json says tensor_parallel="
                              f"{meta['tensor_parallel']}, but {', '.join(missing)} is missing")


class NativeRank:
    """One TP rank's weights file, read one tensor at a time."""

    def __init__(self, folder: Path, tp_rank: int):
        from safetensors import SafetensorError, safe_open

        self.path = folder / weights_file(tp_rank)
        try:
            self.file = safe_open(str(self.path), framework="pt")
            self.shapes = {name: tuple(self.file.get_slice(name).get_shape()) for name in self.file.keys()}
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{self.path} is truncated or corrupt: {exc}") from exc

    def names(self) -> list[str]:
        return list(self.shapes)

    def tensor(self, name: str, key: str = "fp32") -> Tensor:
        if key != "fp32":
            raise CheckpointError(f"{self.path.parent} holds weights only: no optimizer state {key!r}")
        from safetensors import SafetensorError

        try:
            return self.file.get_tensor(name).float()
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{self.path}: cannot read {name}: {exc}") from exc

    def step(self) -> int:
        return 0

    def engine_state(self) -> dict:
        return {}
