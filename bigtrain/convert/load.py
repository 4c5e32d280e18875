"""Load a bigtrain checkpoint into one process: merged weights, the TP=1 model, the tokenizer.

Used by ``bigtrain eval``/``generate`` and by the HF export's parity check: bigtrain's own model on
plain torch layers (bigtrain/model/layers.py), with no process group and no DeepSpeed engine.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from bigtrain.checkpoint.errors import CheckpointError
from bigtrain.checkpoint.source import Checkpoint
from bigtrain.config.arithmetic import padded_vocab_size
from bigtrain.config.schema import ModelConfig
from bigtrain.data.text_tokenizer import document_start_id
from bigtrain.model.layers import SingleProcess
from bigtrain.model.encoder import EncoderModel
from bigtrain.model.llama import LlamaModel

TOKENIZER_DIR = "tokenizer"


def open_checkpoint(src: str | Path) -> tuple[Path, dict]:
    """A run dir or checkpoint folder -> (checkpoint folder, its meta.json), checked complete."""
    ckpt = Checkpoint.open(src)
    return ckpt.folder, ckpt.meta


def build_model(cfg: ModelConfig, vocab_size: int, objective: str = "clm") -> LlamaModel | EncoderModel:
    """The model at TP=1 on CPU, fp32, alone in this process (weights left uninitialised); the encoder for
    a masked-LM run (``objective="mlm"``)."""
    # the training run's attention kernel (e.g. flash_attn on a GPU) may not exist here: same function, default kernel
    model_class = EncoderModel if objective == "mlm" else LlamaModel
    return model_class(dataclasses.replace(cfg, attention_backend="auto"), vocab_size,
                       SingleProcess(perform_initialization=False))


def load_model(src: str | Path | Checkpoint, weight_dtype: torch.dtype | None = None) -> tuple[LlamaModel, dict]:
    """A run dir or checkpoint -> (LlamaModel at TP=1, fp32, eval mode, the checkpoint's meta).

    Reads one parameter at a time straight into the model (one copy of the weights in memory).
    ``weight_dtype`` rounds every weight through that dtype (still computing in fp32): the model a
    bf16 export holds.
    """
    ckpt = src if isinstance(src, Checkpoint) else Checkpoint.open(src)
    cfg, vocab = ckpt.cfg, ckpt.vocab_size
    model = build_model(cfg, vocab, ckpt.objective)
    params = dict(model.named_parameters())
    names = ckpt.names()
    missing, unexpected = sorted(set(params) - set(names)), sorted(set(names) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"{ckpt.folder}: weights do not match the model in meta.json: "
                              f"missing {missing}, unexpected {unexpected}")
    padded = padded_vocab_size(vocab, cfg.vocab_pad_multiple, 1)
    for name in names:
        tensor = ckpt.shard(name, "fp32", 1, 0, padded)
        if tensor.shape != params[name].shape:
            raise CheckpointError(f"{ckpt.folder}: {name} has shape {tuple(tensor.shape)}, the model in meta.json "
                                  f"needs {tuple(params[name].shape)}")
        if weight_dtype is not None:
            tensor = tensor.to(weight_dtype).float()
        params[name].data = tensor
    return model.eval(), ckpt.meta


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
    start = document_start_id(tokenizer.bos_token_id, tokenizer.eos_token_id)  # eos when only eos is named
    if start is None:
        raise CheckpointError("the checkpoint's tokenizer defines no BOS (or EOS) token")
    # verbose=False: texts longer than model_max_length are fine, callers cut them into windows
    return [start] + tokenizer.encode(text, add_special_tokens=False, verbose=False)

