"""Loss of a checkpoint on a text file, with bigtrain's own model in one process (no DeepSpeed engine).

    bigtrain eval runs/exp1 --text notes.txt --seq-len 256 --json     # {"loss": ..., "tokens": ...}

Contract: the text is tokenized as one document with BOS prepended (no EOS) and cut into consecutive,
non-overlapping windows of ``seq_len`` tokens (the last, shorter window included). Each window predicts
its ``len - 1`` next tokens; ``loss`` is the mean next-token cross-entropy over all of them, in fp32,
and ``tokens`` their number.

A masked-LM checkpoint (``train.objective=mlm``) reports its own objective instead: each window (all
its tokens, no shift) is masked as in training, with the checkpoint's masking settings and a key per
window (its index, as validation samples are keyed: bigtrain/data/masking.py); ``loss`` is the mean
cross-entropy over the chosen tokens, ``tokens`` their number and ``accuracy`` the share predicted exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch

import numpy as np

from bigtrain.convert.load import encode_document, load_model, load_tokenizer, open_checkpoint
from bigtrain.data.masking import IGNORE, MaskSpec, mask_tokens, val_keys
from bigtrain.errors import UserError

MASK_SEED = 0  # the key of window i is val_keys(MASK_SEED, i): the same masks for every checkpoint

BATCH = 8  # windows per forward pass


def windows(ids: list[int], seq_len: int) -> list[torch.Tensor]:
    """Consecutive non-overlapping windows; a trailing window of one token predicts nothing: dropped."""
    return [torch.tensor(ids[i:i + seq_len]) for i in range(0, len(ids), seq_len) if len(ids[i:i + seq_len]) > 1]


@torch.no_grad()
def window_loss(model, batch: list[torch.Tensor]) -> tuple[float, int]:
    """(sum of next-token losses, number of predicted tokens) of equally long windows."""
    tokens = torch.stack(batch)  # (B, T)
    losses = model(tokens[:, :-1], tokens[:, 1:])  # (B, T-1) fp32
    return losses.double().sum().item(), losses.numel()


def evaluate(src: str | Path, text_file: str | Path, seq_len: int) -> dict:
    """-> {"loss": mean next-token cross-entropy, "tokens": number of predicted tokens}."""
    if seq_len < 2:
        raise UserError(f"--seq-len must be at least 2 (a window predicts its len-1 next tokens), got {seq_len}")
    try:
        text = Path(text_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read --text {text_file}: {exc.strerror}") from exc
    folder, _ = open_checkpoint(src)
    ids = encode_document(load_tokenizer(folder), text)
    model, meta = load_model(folder)
    chunks = windows(ids, seq_len)
    if not chunks:
        raise UserError(f"{text_file} holds no tokens to predict")
    if meta.get("objective") == "mlm":
        return masked_loss(model, chunks, MaskSpec(**{**meta["mlm"], "special_ids": tuple(meta["mlm"]["special_ids"])}))
    total, count = 0.0, 0
    full = [w for w in chunks if len(w) == seq_len]
    for i in range(0, len(full), BATCH):
        s, n = window_loss(model, full[i:i + BATCH])
        total, count = total + s, count + n
    for w in chunks[len(full):]:  # the last, shorter window
        s, n = window_loss(model, [w])
        total, count = total + s, count + n
    return {"loss": total / count, "tokens": count}



@torch.no_grad()
def masked_loss(model, chunks: list[torch.Tensor], spec: MaskSpec) -> dict:
    """Masked-token loss and accuracy of an encoder over the windows (one at a time: lengths differ)."""
    total, count, hits = 0.0, 0, 0
    for i, window in enumerate(chunks):
        inputs, labels = mask_tokens(window[None], val_keys(MASK_SEED, np.array([i])), spec)
        logits = model(inputs)[..., :spec.vocab_size].float()  # (1, T, V): TP=1
        chosen = labels != IGNORE
        if not chosen.any():
            continue
        total += torch.nn.functional.cross_entropy(logits[chosen], labels[chosen], reduction="sum").item()
        count += int(chosen.sum())
        hits += int((logits[chosen].argmax(-1) == labels[chosen]).sum())
    if not count:
        raise UserError("no token of the text was chosen for masking: give a longer --text")
    return {"loss": total / count, "tokens": count, "accuracy": hits / count, "objective": "mlm"}
