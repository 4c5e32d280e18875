"""Loss of a checkpoint on a text file, with bigtrain's own model in one process (no DeepSpeed engine).

    bigtrain eval runs/exp1 --text notes.txt --seq-len 256 --json     # {"loss": ..., "tokens": ...}

Contract: the text is tokenized as one document with BOS prepended (no EOS) and cut into consecutive,
non-overlapping windows of ``seq_len`` tokens (the last, shorter window included). Each window predicts
its ``len - 1`` next tokens; ``loss`` is the mean next-token cross-entropy over all of them, in fp32,
and ``tokens`` their number.

The text must be UTF-8 (like ``bigtrain data shard``'s input: an error names the byte offset). A
``seq_len`` above the model's trained ``model.seq_len`` is allowed (positions never trained: RoPE
extrapolation) but warned about on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bigtrain.convert.load import (
    encode_document,
    load_model,
    load_tokenizer,
    open_checkpoint,
)
from bigtrain.data.documents import decode
from bigtrain.errors import UserError

BATCH = 8  # windows per forward pass


def windows(ids: list[int], seq_len: int) -> list[torch.Tensor]:
    """Consecutive non-overlapping windows; a trailing window of one token predicts nothing: dropped."""
    return [torch.tensor(ids[i:i + seq_len]) for i in range(0, len(ids), seq_len) if len(ids[i:i + seq_len]) > 1]


@torch.no_grad()
def window_loss(model, batch: list[torch.Tensor]) -> tuple[float, int]:
    """(sum of next-token losses, number of predicted tokens) of equally long windows."""
    tokens = torch.stack(batch)  # (B, T)
    # one process, TP=1: torch's fused cross-entropy on the full logits; megatron's vocab-parallel one
    # (what training uses) adds three collectives and costs more than the model's forward here
    logits = model(tokens[:, :-1]).float()  # (B, T-1, V): padding rows masked out
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    return losses.double().sum().item(), losses.numel()


def evaluate(src: str | Path, text_file: str | Path, seq_len: int) -> dict:
    """-> {"loss": mean next-token cross-entropy, "tokens": number of predicted tokens}."""
    if seq_len < 2:
        raise UserError(f"--seq-len must be at least 2 (a window predicts its len-1 next tokens), got {seq_len}")
    try:
        raw = Path(text_file).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read --text {text_file}: {exc.strerror}") from exc
    text = decode(raw, str(text_file))  # DataError: "FILE: invalid UTF-8 at byte offset N"
    folder, meta = open_checkpoint(src)
    trained = meta["model"]["seq_len"]
    if seq_len > trained:
        print(f"warning: --seq-len {seq_len} exceeds the length the model was trained on (model.seq_len={trained}): "
              f"positions beyond {trained} were never trained, the loss is not comparable", file=sys.stderr)
    ids = encode_document(load_tokenizer(folder), text)
    model, _ = load_model(folder)
    chunks = windows(ids, seq_len)
    if not chunks:
        raise UserError(f"{text_file} holds no tokens to predict")
    total, count = 0.0, 0
    full = [w for w in chunks if len(w) == seq_len]
    for i in range(0, len(full), BATCH):
        s, n = window_loss(model, full[i:i + BATCH])
        total, count = total + s, count + n
    for w in chunks[len(full):]:  # the last, shorter window
        s, n = window_loss(model, [w])
        total, count = total + s, count + n
    return {"loss": total / count, "tokens": count}

