"""Import a Hugging Face Llama model as a bigtrain run directory at any tensor-parallel size.

    bigtrain convert from-hf HF_DIR OUT_DIR --tensor-parallel N [--seq-len T]

``OUT_DIR`` is a run directory like one pretraining makes::

    OUT_DIR/config.yaml                 the run config: model from HF_DIR's config.json, TP = N
    OUT_DIR/tokenizer/                  HF_DIR's tokenizer files
    OUT_DIR/checkpoints/latest          -> step_00000000
    OUT_DIR/checkpoints/step_00000000/  meta.json (weights_only), config.yaml, tokenizer/,
                                        model_tp00.safetensors ... model_tp{N-1}.safetensors

``bigtrain eval|generate|convert to-hf OUT_DIR`` read it like any checkpoint, and
``pretrain.py run.dir=OUT_DIR data.path=SHARDS`` continues pretraining from these weights (at any
TP/DP: bigtrain/checkpoint/reshard.py) with a *fresh* optimizer from step 0. The shards must be made
with this tokenizer (``bigtrain data shard --tokenizer OUT_DIR/tokenizer``): a sentencepiece
``tokenizer.model`` gets the ``bigtrain_tokenizer.json`` that command needs, a ``tokenizer.json``-only
tokenizer is used as is (bigtrain/data/text_tokenizer.py), and pretraining refuses shards whose
tokenizer differs.

One tensor at a time is read (memory-mapped), converted to fp32 in bigtrain's layout (fused q/k/v in
grouped order, ``[gate; up]``, vocabulary padded), cut into N shards and appended to the per-rank
files. The folder is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bigtrain.checkpoint.errors import CheckpointError
from bigtrain.checkpoint.manager import CHECKPOINT_DIR, FORMAT, LATEST, META, library_versions, tag_for
from bigtrain.config.load import ConfigError, dump_yaml, to_dict
from bigtrain.config.schema import Config, ModelConfig, ParallelConfig, RunConfig
from bigtrain.config.validate import validate
from bigtrain.convert.hf_map import bigtrain_names, hf_names
from bigtrain.convert.hf_reader import HFWeights, model_config, read_json
from bigtrain.checkpoint.layout import from_hf_parts, split_param
from bigtrain.checkpoint.native import WEIGHTS_FORMAT, weights_file
from bigtrain.convert.safetensors_out import Entry, SafetensorsWriter
from bigtrain.config.arithmetic import padded_vocab_size

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "bigtrain_tokenizer.json")
NO_LIMIT = 1 << 62


def from_hf(hf_dir: str | Path, out_dir: str | Path, tensor_parallel: int, seq_len: int | None = None) -> Path:
    """Convert the HF Llama folder ``hf_dir`` into the run directory ``out_dir``; returns it."""
    hf_dir, out = Path(hf_dir), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists and is not an empty folder: choose a new output path")
    cfg = run_config(hf_dir, out, tensor_parallel, seq_len)
    weights = HFWeights(hf_dir)
    check_names(weights, cfg.model, hf_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
    try:
        folder = tmp / CHECKPOINT_DIR / tag_for(0)
        folder.mkdir(parents=True)
        write_shards(weights, cfg.model, tensor_parallel, folder)
        if copy_tokenizer(hf_dir, folder / "tokenizer") is not None:
            shutil.copytree(folder / "tokenizer", tmp / "tokenizer")
        (folder / "config.yaml").write_text(dump_yaml(cfg))
        (tmp / "config.yaml").write_text(dump_yaml(cfg))
        (folder / META).write_text(json.dumps(meta_for(cfg, hf_dir), indent=2) + "\n")  # last: complete
        (tmp / CHECKPOINT_DIR / LATEST).write_text(tag_for(0) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def run_config(hf_dir: Path, out: Path, tensor_parallel: int, seq_len: int | None) -> Config:
    """The run's config: schema defaults, the model of config.json, TP = ``tensor_parallel``."""
    where = hf_dir / "config.json"
    model, _ = model_config(read_json(where), where, seq_len)
    cfg = Config(run=RunConfig(dir=str(out.resolve())), model=model,
                 parallel=ParallelConfig(tensor_parallel=tensor_parallel))
    try:
        validate(cfg)
    except ConfigError as exc:
        raise CheckpointError(f"{where} describes a model bigtrain cannot hold at --tensor-parallel "
                              f"{tensor_parallel}: {exc}") from None
    return cfg


def check_names(weights: HFWeights, cfg: ModelConfig, hf_dir: Path) -> None:
    expected = {n for name in bigtrain_names(cfg) for n in hf_names(name)}
    have = set(weights.names())
    extra = have - expected - ({"lm_head.weight"} if cfg.tie_embeddings else set())
    if expected - have or extra:
        raise CheckpointError(f"{hf_dir}: the weights do not match config.json: missing {sorted(expected - have)}, "
                              f"unexpected {sorted(extra)}")


def bigtrain_tensor(weights: HFWeights, name: str, cfg: ModelConfig, padded: int, meta: bool = False):
    """One bigtrain TP=1 tensor from its HF tensor(s); on the meta device (shapes only) with ``meta``."""
    hf = hf_names(name)
    parts = tuple(torch.empty(weights.shape(n), device="meta") if meta else weights.get(n) for n in hf)
    try:
        return from_hf_parts(name, parts, cfg, padded)
    except RuntimeError as exc:  # view/cat shape errors: the tensors do not match config.json
        raise CheckpointError(f"{', '.join(hf)} have shapes {[tuple(p.shape) for p in parts]}, which do not match "
                              f"config.json ({exc})") from None


def write_shards(weights: HFWeights, cfg: ModelConfig, tp: int, folder: Path) -> None:
    padded = padded_vocab_size(cfg.vocab_size, cfg.vocab_pad_multiple, tp)
    names = bigtrain_names(cfg)
    plans: list[list[Entry]] = [[] for _ in range(tp)]
    for name in names:
        for r, part in enumerate(split_param(name, bigtrain_tensor(weights, name, cfg, padded, meta=True), tp)):
            plans[r].append(Entry(name, torch.float32, tuple(part.shape)))
    writers = [SafetensorsWriter(folder, plans[r], NO_LIMIT, stem=weights_file(r).removesuffix(".safetensors"))
               for r in range(tp)]
    for name in names:
        for writer, part in zip(writers, split_param(name, bigtrain_tensor(weights, name, cfg, padded), tp)):
            writer.write(name, part.contiguous())
    for writer in writers:
        writer.close()


def copy_tokenizer(hf_dir: Path, dst: Path) -> str | None:
    """Copy the tokenizer files; -> sha256 of its tokenizer.model ("" without one), None if no tokenizer."""
    files = [hf_dir / n for n in TOKENIZER_FILES if (hf_dir / n).is_file()]
    if not files:
        return None
    dst.mkdir(parents=True)
    for f in files:
        shutil.copy2(f, dst / f.name)
    model = dst / "tokenizer.model"
    if not model.is_file():
        return ""
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    if not (dst / "bigtrain_tokenizer.json").is_file():
        write_tokenizer_meta(model, sha, dst)
    return sha


def write_tokenizer_meta(model: Path, sha: str, dst: Path) -> None:
    """bigtrain_tokenizer.json for a sentencepiece tokenizer.model, so `bigtrain data shard` accepts the folder."""
    import sentencepiece as spm

    from bigtrain.data.tokenizer import META_FILE, META_FORMAT

    try:
        sp = spm.SentencePieceProcessor(model_file=str(model))
    except (RuntimeError, OSError):
        return  # not a sentencepiece model: the HF files alone describe the tokenizer
    meta = {"format": META_FORMAT, "vocab_size": sp.vocab_size(), "bos_id": sp.bos_id(), "eos_id": sp.eos_id(),
            "unk_id": sp.unk_id(), "sha256": sha, "imported_by": "bigtrain convert from-hf"}
    (dst / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def meta_for(cfg: Config, hf_dir: Path) -> dict:
    return {"format": FORMAT, "step": 0, "consumed_samples": 0, "consumed_tokens": 0,
            "tensor_parallel": cfg.parallel.tensor_parallel, "data_parallel": None, "zero_stage": None,
            "precision": "fp32", "weights": WEIGHTS_FORMAT, "weights_only": True,
            "vocab_size": cfg.model.vocab_size,
            "padded_vocab_size": padded_vocab_size(cfg.model.vocab_size, cfg.model.vocab_pad_multiple,
                                                   cfg.parallel.tensor_parallel),
            "model": to_dict(cfg)["model"], "source": {"hf_dir": str(hf_dir.resolve())},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": library_versions()}
