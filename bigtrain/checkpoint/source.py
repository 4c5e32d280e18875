"""A bigtrain checkpoint as a source of TP=1 tensors, one parameter at a time, whatever its layout.

``Checkpoint.open(run_or_folder)`` accepts DeepSpeed checkpoints of any ZeRO stage, TP and DP size
and precision (bigtrain/checkpoint/zero_reader.py), and bigtrain's weights-only safetensors checkpoints
(bigtrain/checkpoint/native.py). ``full(name, key)`` merges the TP shards of one parameter (or of one
of its Adam moments) into the TP=1 tensor; ``shard(name, key, tp, rank)`` cuts it for another
layout. Everything above this (export, single-process loading, resharding) works per parameter, so
no caller ever needs more than one parameter of the model in memory besides what it builds.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from bigtrain.checkpoint.errors import CheckpointError
from bigtrain.checkpoint.manager import read_meta, resolve_checkpoint
from bigtrain.config.load import ConfigError, from_dict
from bigtrain.config.schema import ModelConfig
from bigtrain.checkpoint import native, zero_reader
from bigtrain.checkpoint.layout import merge_param, pad_vocab, split_param
from bigtrain.config.arithmetic import padded_vocab_size

VOCAB_ROWS = ("embed.weight", "lm_head.weight")
META_KEYS = ("tensor_parallel", "precision", "vocab_size", "model")
DEEPSPEED_KEYS = ("data_parallel", "zero_stage")


def model_config(meta: dict) -> ModelConfig:
    try:
        return from_dict(ModelConfig, meta["model"], prefix="model.")
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(f"meta.json: cannot rebuild the model config: {exc}") from exc


def check_meta(folder: Path, meta: dict) -> None:
    needed = META_KEYS + (() if native.is_native(meta) else DEEPSPEED_KEYS)
    missing = [k for k in needed if k not in meta]
    if missing:
        raise CheckpointError(f"{folder / 'meta.json'} lacks {', '.join(missing)}: cannot tell how the weights are laid out")


class Checkpoint:
    def __init__(self, folder: Path, meta: dict):
        check_meta(folder, meta)
        self.folder, self.meta = folder, meta
        self.cfg = model_config(meta)
        self.objective = meta.get("objective", "clm")  # train.objective of the run (mlm: an encoder)
        self.vocab_size = meta["vocab_size"]
        self.tp = meta["tensor_parallel"]
        self.weights_only = native.is_native(meta)
        (native if self.weights_only else zero_reader).check_complete(folder, meta)

    @classmethod
    def open(cls, src: str | Path) -> Checkpoint:
        """A run dir, checkpoints/ dir or checkpoint folder -> its (latest complete) checkpoint."""
        folder = resolve_checkpoint(src)
        return cls(folder, read_meta(folder))

    @cached_property
    def ranks(self) -> list:
        if self.weights_only:
            return [native.NativeRank(self.folder, r) for r in range(self.tp)]
        return [zero_reader.ZeroRank(self.folder, self.meta, r) for r in range(self.tp)]

    @cached_property
    def padded_vocab(self) -> int:
        return self.shapes_of_rank0()["embed.weight"][0] * self.tp

    def shapes_of_rank0(self) -> dict:
        return self.ranks[0].shapes

    def names(self) -> list[str]:
        """Parameter names (bigtrain's), the same on every TP rank."""
        names = self.ranks[0].names()
        for r, rank in enumerate(self.ranks[1:], 1):
            if set(rank.names()) != set(names):
                raise CheckpointError(f"{self.folder}: TP rank {r} holds parameters "
                                      f"{sorted(set(rank.names()) ^ set(names))} that TP rank 0 does not (or the reverse)")
        return names

    def full_shape(self, name: str) -> tuple[int, ...]:
        parts = [torch.empty(rank.shapes[name], device="meta") for rank in self.ranks]
        return tuple(merge_param(name, parts).shape)

    def full(self, name: str, key: str = "fp32") -> Tensor:
        """The TP=1 fp32 tensor (padded vocabulary rows included) of a weight or an Adam moment."""
        return merge_param(name, [rank.tensor(name, key) for rank in self.ranks])

    def shard(self, name: str, key: str, tp: int, tp_rank: int, padded_vocab: int) -> Tensor:
        """Rank ``tp_rank``'s piece at tensor-parallel size ``tp`` with ``padded_vocab`` embedding rows."""
        if tp == self.tp and (name not in VOCAB_ROWS or padded_vocab == self.padded_vocab):
            return self.ranks[tp_rank].tensor(name, key)  # same layout: read only this rank's file
        full = self.full(name, key)
        if name in VOCAB_ROWS:
            full = resize_vocab(full, self.vocab_size, padded_vocab)
        return split_param(name, full, tp)[tp_rank]

    def step(self) -> int:
        return self.ranks[0].step()

    def engine_state(self) -> dict:
        return self.ranks[0].engine_state()

    def padded_vocab_for(self, tp: int) -> int:
        return padded_vocab_size(self.vocab_size, self.cfg.vocab_pad_multiple, tp)


def resize_vocab(weight: Tensor, vocab_size: int, padded: int) -> Tensor:
    """Keep the real rows, re-pad with zeros to ``padded`` rows (padding rows are never used)."""
    return pad_vocab(weight[:vocab_size], padded)
