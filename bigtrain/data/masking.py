"""BERT/RoBERTa masking for masked-LM pretraining (``train.objective=mlm``), as a pure function of keys.

Each sequence has a 64-bit key; its mask depends only on that key and its tokens, never on the rank,
the parallel layout, the micro-batch it travels in, or how often the run was restarted:

- a training sample's key is ``mix64(seed, stream position)`` (:func:`train_keys`). A stream position
  names one (source, epoch, sample) of the run (order.py: position -> epoch and a per-epoch
  permutation of the samples), so the mask is a function of (seed, sample id, epoch): every epoch
  masks a sample afresh, and resume, elastic resume and any TP/DP layout see the same masks;
- a validation sample's key is ``mix64(seed, VAL_SALT, index in the split)`` (:func:`val_keys`):
  the same masks at every evaluation.

Per sequence, a Philox generator keyed by the key draws, for every position, ``u`` (chosen if
``u < probability`` and the token is not special), ``v`` (of the chosen: ``<mask>`` if
``v < mask_ratio``, a random token if ``v < mask_ratio + random_ratio``, else kept) and the random
token, uniform over the vocabulary. Labels are the original token at chosen positions, ``IGNORE``
(-100) elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bigtrain.data.order import mix64

IGNORE = -100
VAL_SALT = 0x6D6C6D2D76616C  # "mlm-val": validation keys never collide with training positions' keys


@dataclass(frozen=True)
class MaskSpec:
    probability: float  # share of non-special tokens chosen
    mask_ratio: float  # of the chosen: replaced by <mask>
    random_ratio: float  # of the chosen: replaced by a random token
    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]  # never chosen (bos, eos, unk, mask)


def _keys(seed: int, values: np.ndarray, salt: int = 0) -> np.ndarray:
    with np.errstate(over="ignore"):
        base = mix64(np.array([(seed * 1_000_003 + salt) % 2**64], dtype=np.uint64))
        return mix64(np.asarray(values, dtype=np.uint64) ^ base)


def train_keys(seed: int, positions: np.ndarray) -> np.ndarray:
    """(n,) uint64 keys of training samples at global stream ``positions``."""
    return _keys(seed, positions)


def val_keys(seed: int, indices: np.ndarray) -> np.ndarray:
    """(n,) uint64 keys of validation samples ``indices`` (their index in the validation split)."""
    return _keys(seed, indices, VAL_SALT)


def draws(key: int, length: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.Philox(key=int(key)))
    return rng.random(length), rng.random(length), rng.integers(0, vocab_size, length)


def mask_tokens(tokens: torch.Tensor, keys: np.ndarray, spec: MaskSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, T) -> (inputs (B, T), labels (B, T)) int64 on the CPU; row b masked with ``keys[b]``."""
    tokens = tokens.long().cpu()
    B, T = tokens.shape
    u, v, rand = (np.stack(x) for x in zip(*(draws(k, T, spec.vocab_size) for k in keys)))
    special = np.isin(tokens.numpy(), spec.special_ids)
    chosen = (u < spec.probability) & ~special
    to_mask = chosen & (v < spec.mask_ratio)
    to_random = chosen & (v >= spec.mask_ratio) & (v < spec.mask_ratio + spec.random_ratio)
    inputs = tokens.numpy().copy()
    inputs[to_mask] = spec.mask_id
    inputs[to_random] = rand[to_random]
    labels = np.where(chosen, tokens.numpy(), IGNORE)
    return torch.from_numpy(inputs), torch.from_numpy(labels)
