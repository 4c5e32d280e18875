"""A distillation teacher's weights (``distill.teacher``), from a bigtrain run/checkpoint or a Hugging Face folder.

:func:`open_teacher` reads only metadata: the model config, vocabulary, tokenizer hash and an identity
hash. :meth:`Teacher.shard` then reads one parameter at a time, cut for the student's tensor-parallel
layout (any source layout: bigtrain/checkpoint/source.py, or an HF Llama folder through hf_reader.py), so
building the teacher never holds more than its own shard plus one full parameter.

Identity (recorded in the student's checkpoints, never the weights): the resolved path and a sha256
over the source's metadata (meta.json, or config.json + the safetensors index / file sizes): cheap for a
7B teacher, and it changes whenever the checkpoint or export is replaced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

from torch import Tensor

from bigtrain.checkpoint.manager import CheckpointError, resolve_checkpoint
from bigtrain.config.schema import ModelConfig
from bigtrain.convert.from_hf import bigtrain_tensor
from bigtrain.convert.hf_map import bigtrain_names
from bigtrain.convert.hf_reader import HFWeights, model_config, read_json
from bigtrain.checkpoint.layout import split_param
from bigtrain.checkpoint.source import Checkpoint


@dataclass
class Teacher:
    path: Path  # the checkpoint folder or HF folder
    kind: str  # "bigtrain" or "hf"
    cfg: ModelConfig
    vocab_size: int
    sha256: str  # identity (module doc)
    tokenizer_sha256: str | None  # of its tokenizer.model, when it has one
    open_source: Callable[[], Checkpoint | HFWeights]  # the weights, opened on first use (after the checks)

    @cached_property
    def source(self) -> Checkpoint | HFWeights:
        return self.open_source()

    def names(self) -> list[str]:
        return self.source.names() if self.kind == "bigtrain" else bigtrain_names(self.cfg)

    def shard(self, name: str, tp: int, tp_rank: int, padded_vocab: int) -> Tensor:
        """bigtrain parameter ``name`` cut for rank ``tp_rank`` of ``tp``, vocabulary padded to ``padded_vocab``."""
        if self.kind == "bigtrain":
            return self.source.shard(name, "fp32", tp, tp_rank, padded_vocab)
        full = bigtrain_tensor(self.source, name, self.cfg, padded_vocab).float()  # vocabulary padded already
        return split_param(name, full, tp)[tp_rank]

    def identity(self) -> dict:
        return {"teacher": str(self.path), "teacher_kind": self.kind, "teacher_sha256": self.sha256}


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def tokenizer_sha(folder: Path) -> str | None:
    model = folder / "tokenizer.model"
    return hashlib.sha256(model.read_bytes()).hexdigest() if model.is_file() else None


def open_teacher(path: str | Path) -> Teacher:
    """A bigtrain run dir / checkpoint folder, or an HF Llama causal-LM folder (config.json + weights)."""
    path = Path(path)
    if (path / "config.json").is_file() and not (path / "meta.json").is_file():
        return open_hf(path)
    try:
        folder = resolve_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"distill.teacher={path}: neither a Hugging Face folder (config.json) nor a bigtrain "
                              f"run or checkpoint ({exc})") from None
    ckpt = Checkpoint.open(folder)
    if ckpt.objective == "mlm":
        raise CheckpointError(f"distill.teacher={path} is a masked-LM encoder (train.objective=mlm): the teacher "
                              "must be a causal LM")
    meta = (folder / "meta.json").read_bytes()
    return Teacher(folder.resolve(), "bigtrain", ckpt.cfg, ckpt.vocab_size, digest(meta),
                   tokenizer_sha(folder / "tokenizer"), lambda: ckpt)


def open_hf(folder: Path) -> Teacher:
    config_file = folder / "config.json"
    cfg, _ = model_config(read_json(config_file), config_file)
    sizes = json.dumps(sorted((p.name, p.stat().st_size) for p in folder.iterdir()
                              if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())).encode()
    return Teacher(folder.resolve(), "hf", cfg, cfg.vocab_size, digest(config_file.read_bytes(), sizes),
                   tokenizer_sha(folder), lambda: HFWeights(folder))
