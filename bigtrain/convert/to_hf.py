"""Export a bigtrain checkpoint as a Hugging Face ``LlamaForCausalLM`` folder (``ModernBertForMaskedLM`` for a
masked-LM run, ``train.objective=mlm``), checked by transformers.

    bigtrain convert to-hf runs/exp1 hf/exp1 [--dtype bf16] [--no-check]

Writes ``config.json``, ``generation_config.json``, ``model.safetensors`` (or shards of at most
``MAX_SHARD_BYTES`` with ``model.safetensors.index.json``) and the tokenizer files saved with the
checkpoint, so ``AutoModelForCausalLM.from_pretrained(out)`` and ``AutoTokenizer.from_pretrained(out)``
work offline. Any layout bigtrain trains converts: TP size, ZeRO stage, fp32/bf16 training (the fp32
master weights are exported), tied or untied embeddings, GQA; the vocabulary padding is dropped.

Memory: one parameter at a time is read (memory-mapped), merged over TP ranks, split into its HF
tensors, cast and appended to the safetensors file (bigtrain/convert/safetensors_out.py), so the
export itself holds about one parameter, never the model. The parity check afterwards
(bigtrain/convert/parity.py) loads bigtrain's model and then transformers' one after the other:
one fp32 copy of the model (4 bytes/parameter) at a time. ``--no-check`` skips it.

The folder is built under a temporary name next to ``out`` and renamed only once written and
checked: a failed or interrupted export never leaves a folder that looks valid.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from bigtrain.checkpoint.errors import CheckpointError
from bigtrain.config.schema import ModelConfig
from bigtrain.checkpoint.layout import to_hf_tensors
from bigtrain.convert.hf_map import LLAMA, architecture, bigtrain_names, encoder_hf_config, hf_config, hf_names
from bigtrain.convert.load import tokenizer_dir
from bigtrain.convert.parity import TOLERANCE, check_parity
from bigtrain.convert.safetensors_out import Entry, SafetensorsWriter
from bigtrain.checkpoint.source import Checkpoint

DTYPES = {"fp32": (torch.float32, "float32"), "bf16": (torch.bfloat16, "bfloat16")}
MAX_SHARD_BYTES = 2 * 10**9  # Hugging Face's "2GB"


def to_hf(src: str | Path, out_dir: str | Path, dtype: str = "fp32", check: bool = True,
          tolerance: float = TOLERANCE, report=None) -> Path:
    """Convert the checkpoint at ``src`` (run dir or checkpoint folder) into ``out_dir``; returns it.

    With ``check`` the result must reproduce bigtrain's logits within ``tolerance`` (ParityError
    otherwise, and nothing is left at ``out_dir``); ``report(max_diff)`` receives the difference.
    """
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists and is not an empty folder: choose a new output path")
    ckpt = Checkpoint.open(src)
    torch_dtype, dtype_name = DTYPES[dtype]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise survive the rename
    try:
        write_weights(ckpt, tmp, torch_dtype)
        write_config(ckpt, tmp, dtype_name)
        if check:
            diff = check_parity(ckpt, tmp, torch_dtype, tolerance)
            if report is not None:
                report(diff)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def hf_entries(ckpt: Checkpoint, dtype: torch.dtype) -> list[Entry]:
    """Name, dtype and shape of every HF tensor, in write order, computed without reading data."""
    entries, arch = [], architecture(ckpt.objective)
    for name in ckpt.names():
        meta = torch.empty(ckpt.full_shape(name), device="meta")
        hf = hf_names(name, arch)
        parts = to_hf_tensors(name, meta, ckpt.cfg, ckpt.vocab_size, hf)
        entries += [Entry(n, dtype, tuple(p.shape)) for n, p in zip(hf, parts, strict=True)]
    names = {e.name for e in entries}
    expected = expected_hf_names(ckpt.cfg, arch)
    if names != expected:
        raise CheckpointError(f"checkpoint weights do not cover the HF model: missing {sorted(expected - names)}, "
                              f"unexpected {sorted(names - expected)}")
    return entries


def write_weights(ckpt: Checkpoint, folder: Path, dtype: torch.dtype) -> None:
    """Stream every parameter: read (TP-merged) -> HF tensors -> cast -> append to the file."""
    writer = SafetensorsWriter(folder, hf_entries(ckpt, dtype), MAX_SHARD_BYTES)
    arch = architecture(ckpt.objective)
    try:
        for name in ckpt.names():
            hf = hf_names(name, arch)
            parts = to_hf_tensors(name, ckpt.full(name), ckpt.cfg, ckpt.vocab_size, hf)
            for hf_name, part in zip(hf, parts, strict=True):
                writer.write(hf_name, part.to(dtype).contiguous())
    finally:
        writer.close()


def expected_hf_names(cfg: ModelConfig, arch: str = LLAMA) -> set[str]:
    return {n for name in bigtrain_names(cfg, arch) for n in hf_names(name, arch)}


def write_config(ckpt: Checkpoint, path: Path, dtype_name: str) -> None:
    from transformers import GenerationConfig

    bos, eos = copy_tokenizer(tokenizer_dir(ckpt.folder), path, ckpt.cfg.seq_len)
    if architecture(ckpt.objective) == LLAMA:
        config = hf_config(ckpt.cfg, ckpt.vocab_size, bos, eos, dtype_name)
        config.save_pretrained(path)
        GenerationConfig.from_model_config(config).save_pretrained(path)
    else:  # an encoder generates nothing: no generation_config.json
        encoder_hf_config(ckpt.cfg, ckpt.vocab_size, bos, eos, dtype_name).save_pretrained(path)


def copy_tokenizer(tok_dir: Path, path: Path, seq_len: int) -> tuple[int | None, int | None]:
    """Copy the checkpoint's tokenizer files into ``path`` (model_max_length = seq_len); -> (bos, eos ids)."""
    if not tok_dir.is_dir():
        warnings.warn(f"{tok_dir} does not exist: exporting without a tokenizer (no BOS/EOS ids in the config)",
                      stacklevel=2)
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
