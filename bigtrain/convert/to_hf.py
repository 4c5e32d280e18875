"""Export a bigtrain checkpoint as a Hugging Face ``LlamaForCausalLM`` folder.

    bigtrain convert to-hf runs/exp1 hf/exp1 [--dtype bf16]

Writes ``config.json``, ``generation_config.json``, ``model.safetensors`` (or shards of at most
``MAX_SHARD_SIZE`` with ``model.safetensors.index.json``) and the tokenizer files saved with the
checkpoint, so ``AutoModelForCausalLM.from_pretrained(out)`` and ``AutoTokenizer.from_pretrained(out)``
work offline. The folder is built next to ``out`` and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

from bigtrain.checkpoint.manager import CheckpointError
from bigtrain.config.schema import ModelConfig
from bigtrain.convert.hf_map import KEY_MAP, hf_config, hf_names
from bigtrain.convert.layout import to_hf_parts
from bigtrain.convert.load import merged_state_dict, model_config, open_checkpoint, tokenizer_dir

DTYPES = {"fp32": (torch.float32, "float32"), "bf16": (torch.bfloat16, "bfloat16")}
MAX_SHARD_SIZE = "2GB"


def to_hf(src: str | Path, out_dir: str | Path, dtype: str = "fp32") -> Path:
    """Convert the checkpoint at ``src`` (run dir or checkpoint folder) into ``out_dir``; returns it."""
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists and is not an empty folder: choose a new output path")
    folder, meta = open_checkpoint(src)
    cfg = model_config(meta)
    state = hf_state_dict(merged_state_dict(folder, meta), cfg, meta["vocab_size"], DTYPES[dtype][0])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
    try:
        write_folder(tmp, state, cfg, meta["vocab_size"], tokenizer_dir(folder), DTYPES[dtype][1])
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def hf_state_dict(state: dict[str, Tensor], cfg: ModelConfig, vocab_size: int, dtype: torch.dtype) -> dict[str, Tensor]:
    """TP=1 bigtrain weights -> HF names and tensors. Consumes ``state`` (one copy of the model at a time)."""
    out = {}
    for name in list(state):
        tensor = state.pop(name)
        names, parts = hf_names(name), to_hf_parts(name, tensor, cfg, vocab_size)
        if len(names) != len(parts):
            raise AssertionError(f"{name}: KEY_MAP lists {len(names)} HF names, layout gave {len(parts)} tensors")
        for hf_name, part in zip(names, parts):
            out[hf_name] = part.to(dtype, copy=True).contiguous()  # own storage: no views of padding
    expected = expected_hf_names(cfg)
    if set(out) != expected:
        raise CheckpointError(f"checkpoint weights do not cover the HF model: missing {sorted(expected - set(out))}, "
                              f"unexpected {sorted(set(out) - expected)}")
    return out


def expected_hf_names(cfg: ModelConfig) -> set[str]:
    names = set()
    for pattern in KEY_MAP:
        if pattern == "lm_head.weight" and cfg.tie_embeddings:
            continue
        layers = range(cfg.num_layers) if "{layer}" in pattern else [None]
        names.update(n for layer in layers for n in hf_names(pattern.format(layer=layer)))
    return names


def write_folder(path: Path, state: dict[str, Tensor], cfg: ModelConfig, vocab_size: int, tok_dir: Path,
                 dtype_name: str) -> None:
    from huggingface_hub import save_torch_state_dict
    from transformers import GenerationConfig

    bos, eos = copy_tokenizer(tok_dir, path, cfg.seq_len)
    config = hf_config(cfg, vocab_size, bos, eos, dtype_name)
    config.save_pretrained(path)
    GenerationConfig.from_model_config(config).save_pretrained(path)
    save_torch_state_dict(state, path, max_shard_size=MAX_SHARD_SIZE, metadata={"format": "pt"})


def copy_tokenizer(tok_dir: Path, path: Path, seq_len: int) -> tuple[int | None, int | None]:
    """Copy the checkpoint's tokenizer files into ``path`` (model_max_length = seq_len); -> (bos, eos ids)."""
    if not tok_dir.is_dir():
        warnings.warn(f"{tok_dir} does not exist: exporting without a tokenizer (no BOS/EOS ids in the config)")
        return None, None
    for item in tok_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, path / item.name)
    config_file = path / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        config_file.write_text(json.dumps({**config, "model_max_length": seq_len}, indent=2) + "\n")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    return tokenizer.bos_token_id, tokenizer.eos_token_id
