"""Load a bigtrain checkpoint into one process: merged weights, the TP=1 model, the tokenizer.

Used by ``bigtrain eval``/``generate`` (bigtrain's own model, no DeepSpeed engine) and by the HF export.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import Tensor

from bigtrain.checkpoint.manager import CheckpointError, read_meta, resolve_checkpoint
from bigtrain.config.load import ConfigError, from_dict
from bigtrain.config.schema import Config, ModelConfig
from bigtrain.convert.layout import merge_tp, pad_vocab
from bigtrain.convert.zero_reader import read_tp_shards
from bigtrain.model.llama import LlamaModel, padded_vocab_size

TOKENIZER_DIR = "tokenizer"


META_KEYS = ("tensor_parallel", "data_parallel", "zero_stage", "precision", "vocab_size", "model")


def open_checkpoint(src: str | Path) -> tuple[Path, dict]:
    """A run dir or checkpoint folder -> (checkpoint folder, its meta.json)."""
    folder = resolve_checkpoint(src)
    meta = read_meta(folder)
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{folder / 'meta.json'} lacks {', '.join(missing)}: cannot tell how the weights are laid out")
    return folder, meta


def model_config(meta: dict) -> ModelConfig:
    try:
        return from_dict(ModelConfig, meta["model"], prefix="model.")
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(f"meta.json: cannot rebuild the model config: {exc}") from exc


def merged_state_dict(folder: Path, meta: dict) -> dict[str, Tensor]:
    """The fp32 weights at TP=1 (bigtrain names, the checkpoint's padded vocabulary)."""
    return merge_tp(read_tp_shards(folder, meta))


def single_process_world():
    """A 1-rank gloo world with TP=1 (created if none exists)."""
    from bigtrain.parallel.world import init_world

    world = init_world(1, backend="gloo")
    if world.world_size != 1 or world.tp_size != 1:
        raise RuntimeError(f"single-process inference needs a 1-rank world with TP=1; this process already "
                           f"belongs to one with {world.world_size} ranks, TP={world.tp_size}")
    return world


def build_model(cfg: ModelConfig, vocab_size: int, world) -> LlamaModel:
    """The plain model at TP=1 on CPU, fp32, without a DeepSpeed engine (weights left uninitialised)."""
    from bigtrain.parallel.engine import tp_layer_config

    tp = dataclasses.replace(tp_layer_config(Config(model=cfg), world), perform_initialization=False)
    # the training run's attention kernel (e.g. flash_attn on a GPU) may not exist here: same function, default kernel
    return LlamaModel(dataclasses.replace(cfg, attention_backend="auto"), vocab_size, tp)


def load_model(src: str | Path) -> tuple[LlamaModel, dict]:
    """A run dir or checkpoint folder -> (LlamaModel at TP=1, fp32, eval mode, the checkpoint's meta)."""
    folder, meta = open_checkpoint(src)
    cfg = model_config(meta)
    state = merged_state_dict(folder, meta)
    world = single_process_world()
    vocab = meta["vocab_size"]
    padded = padded_vocab_size(vocab, cfg.vocab_pad_multiple, 1)
    for name in ("embed.weight", "lm_head.weight"):
        if name in state:
            state[name] = pad_vocab(state[name], padded)
    model = build_model(cfg, vocab, world)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)  # no second copy
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{folder}: weights do not match the model in meta.json: {exc}") from exc
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise CheckpointError(f"{folder}: weights do not match the model in meta.json: "
                              f"missing {missing}, unexpected {unexpected}")
    return model.eval(), meta


def tokenizer_dir(folder: Path) -> Path:
    return folder / TOKENIZER_DIR


def load_tokenizer(folder: Path):
    """The Hugging Face tokenizer saved with the checkpoint (``<checkpoint>/tokenizer``)."""
    from transformers import AutoTokenizer

    path = tokenizer_dir(folder)
    if not path.is_dir():
        raise CheckpointError(f"{folder} has no {TOKENIZER_DIR}/ folder: the checkpoint was saved without its tokenizer")
    return AutoTokenizer.from_pretrained(path)


def encode_document(tokenizer, text: str) -> list[int]:
    """BOS + the text's tokens (no EOS): how bigtrain evaluates and prompts."""
    if tokenizer.bos_token_id is None:
        raise CheckpointError("the checkpoint's tokenizer defines no BOS token")
    # verbose=False: texts longer than model_max_length are fine, callers cut them into windows
    return [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False, verbose=False)

