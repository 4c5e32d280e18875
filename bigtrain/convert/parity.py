"""The check every export passes: transformers' model and bigtrain's give the same logits.

A fixed probe (2 sequences of ``min(seq_len, 32)`` token ids drawn from the vocabulary with seed 0)
runs through bigtrain's own TP=1 model built from the checkpoint, then through
``AutoModelForCausalLM.from_pretrained(out_dir)``, one model after the other: memory peaks at one
fp32 copy of the model (4 bytes per parameter), never two. Both run in fp32. For a bf16 export,
bigtrain's weights are rounded to bf16 exactly as the export rounded them and transformers upcasts
the stored bf16 values to fp32, so both models hold bit-identical weights and the same tolerance
applies: what remains is fp32 summation order, far below 1e-4 on logits of order 1-10. (Running
either model *in* bf16 differs from fp32 by ~1e-2 on its own: a property of bf16, not of the
conversion, so it would hide conversion errors of that size.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from bigtrain.checkpoint.errors import CheckpointError

TOLERANCE = 1e-4
PROBE_LEN = 32


class ParityError(CheckpointError):
    """The exported model does not reproduce the checkpoint's logits."""


def probe_tokens(vocab_size: int, seq_len: int) -> torch.Tensor:
    """(2, min(seq_len, 32)) token ids, the same for every export of the same vocabulary."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (2, min(seq_len, PROBE_LEN)), generator=gen)


@torch.no_grad()
def bigtrain_logits(ckpt, tokens: torch.Tensor, weight_dtype: torch.dtype) -> torch.Tensor:
    from bigtrain.convert.load import load_model

    model, _ = load_model(ckpt, weight_dtype=None if weight_dtype == torch.float32 else weight_dtype)
    logits = model(tokens)[..., :ckpt.vocab_size].float()
    del model
    return logits


@torch.no_grad()
def hf_logits(hf_dir: Path, tokens: torch.Tensor, auto_class: str = "AutoModelForCausalLM") -> torch.Tensor:
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no per-tensor loading bar in the converter's output
    auto = getattr(transformers, auto_class)
    model = auto.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True).eval()
    logits = model(tokens).logits.float()
    del model
    return logits


def check_parity(ckpt, hf_dir: Path, weight_dtype: torch.dtype, tolerance: float = TOLERANCE) -> float:
    """-> max |logit difference| on the probe; raises ParityError above ``tolerance``."""
    from bigtrain.convert.hf_map import AUTO_CLASSES, architecture

    tokens = probe_tokens(ckpt.vocab_size, ckpt.cfg.seq_len)
    ours = bigtrain_logits(ckpt, tokens, weight_dtype)
    auto_class = AUTO_CLASSES[architecture(ckpt.objective)]
    theirs = hf_logits(hf_dir, tokens, auto_class)
    if theirs.shape != ours.shape:
        raise ParityError(f"transformers' model gives logits of shape {tuple(theirs.shape)}, bigtrain's "
                          f"{tuple(ours.shape)}")
    diff = (ours - theirs).abs().max().item()
    if not diff <= tolerance:  # also catches NaN
        raise ParityError(f"parity check failed: transformers' model ({auto_class}) differs from bigtrain's model "
                          f"by up to {diff:.3g} in logits (tolerance {tolerance:g}) on the probe {tuple(tokens.shape)}")
    return diff
