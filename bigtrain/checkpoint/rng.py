"""Per-rank random-number-generator states, saved without pickle.

Each rank writes ``rng_rank_{rank:05d}.safetensors`` into the checkpoint folder: the torch CPU
state, every CUDA device's state and numpy's MT19937 key as tensors; numpy's position/gaussian
cache and Python ``random``'s state as JSON in the safetensors metadata. Loading reads tensors and
JSON only, so a checkpoint cannot smuggle code in through this file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from bigtrain.checkpoint.errors import CheckpointError

FORMAT = "bigtrain-rng/1"
RNG_PATTERN = "rng_rank_{rank:05d}.safetensors"


def rng_file(rank: int) -> str:
    return RNG_PATTERN.format(rank=rank)


def capture() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, string metadata) describing every generator this process uses."""
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_key": torch.from_numpy(np_key.astype(np.int64))}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    meta = {
        "format": FORMAT,
        "numpy": json.dumps({"name": np_name, "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                             "cached_gaussian": float(np_gauss)}),
        "python": json.dumps({"version": py_version, "state": list(py_state), "gauss_next": py_gauss}),
    }
    return tensors, meta


def restore(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][:torch.cuda.device_count()])
    npy = json.loads(meta["numpy"])
    np.random.set_state((npy["name"], tensors["numpy_key"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    py = json.loads(meta["python"])
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


def save_rng(folder: Path, rank: int) -> Path:
    tensors, meta = capture()
    path = Path(folder) / rng_file(rank)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def load_rng(folder: Path, rank: int) -> None:
    """Restore this process's generators from rank ``rank``'s file (CheckpointError if unreadable)."""
    path = Path(folder) / rng_file(rank)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint has no RNG state for rank {rank}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: RNG format {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        restore(tensors, meta)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: invalid RNG state ({exc})") from exc
