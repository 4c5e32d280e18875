"""Greedy continuation of a prompt with bigtrain's own model in one process (no DeepSpeed engine).

    bigtrain generate runs/exp1 --prompt "def main(" --max-new-tokens 64

The model sees BOS + the prompt; each step recomputes the whole context (no KV cache), cropped on
the left to the model's ``seq_len``; generation stops at EOS, which is not part of the output.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bigtrain.convert.load import encode_document, load_model, load_tokenizer, open_checkpoint


@torch.no_grad()
def greedy_tokens(model, ids: list[int], max_new_tokens: int, eos_token_id: int | None, seq_len: int) -> list[int]:
    """The up to ``max_new_tokens`` argmax tokens following ``ids`` (stops before EOS)."""
    ids, new = list(ids), []
    for _ in range(max_new_tokens):
        context = torch.tensor(ids[-seq_len:])[None]  # (1, T)
        logits = model(context)[0, -1, : model.vocab_size]  # (V,) padding rows excluded
        token = int(logits.argmax())
        if token == eos_token_id:
            break
        ids.append(token)
        new.append(token)
    return new


def generate(src: str | Path, prompt: str, max_new_tokens: int) -> str:
    """The greedy continuation of ``prompt`` (the generated text only, without the prompt)."""
    folder, _ = open_checkpoint(src)
    tokenizer = load_tokenizer(folder)
    model, _ = load_model(folder)
    new = greedy_tokens(model, encode_document(tokenizer, prompt), max_new_tokens, tokenizer.eos_token_id,
                        model.cfg.seq_len)
    return tokenizer.decode(new, skip_special_tokens=True)
