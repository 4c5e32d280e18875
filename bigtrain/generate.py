"""Continuation of a prompt with bigtrain's own model in one process (no DeepSpeed engine): greedy, or sampled.

    bigtrain generate runs/exp1 --prompt "def main(" --max-new-tokens 64                      # greedy
    bigtrain generate runs/exp1 --prompt "def main(" --temperature 0.8 --top-p 0.95 --seed 1  # sampled

The model sees BOS + the prompt; each step recomputes the whole context (no KV cache), cropped on
the left to the model's ``seq_len``; generation stops at EOS, which is not part of the output.
Sampling (``temperature > 0``) draws from softmax(logits / temperature) restricted to the ``top_k``
most likely tokens (0 = all) and then to the smallest set whose probability reaches ``top_p``
(1 = all), with a ``torch.Generator`` seeded by ``seed``: the same seed gives the same text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bigtrain.convert.load import (
    encode_document,
    load_model,
    load_tokenizer,
    open_checkpoint,
)
from bigtrain.errors import UserError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0  # 1 = no nucleus cut
    seed: int = 0

    def check(self) -> None:
        if self.temperature < 0:
            raise UserError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1] (1 = off), got {self.top_p}")


def filtered_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """(V,) logits with every token outside the top-k and the top-p nucleus set to -inf."""
    logits = logits.clone()
    if 0 < top_k < logits.numel():
        logits[logits < torch.topk(logits, top_k).values[-1]] = float("-inf")
    if top_p < 1:
        order = torch.argsort(logits, descending=True)
        probs = torch.softmax(logits[order], dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability of the more likely tokens
        logits[order[before >= top_p]] = float("-inf")  # the most likely token always stays
    return logits


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    if sampling.temperature == 0:
        return int(logits.argmax())
    logits = filtered_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


@torch.no_grad()
def generate_tokens(model, ids: list[int], max_new_tokens: int, eos_token_id: int | None, seq_len: int,
                    sampling: Sampling = Sampling()) -> list[int]:
    """The up to ``max_new_tokens`` tokens following ``ids`` (stops before EOS)."""
    generator = torch.Generator().manual_seed(sampling.seed)
    ids, new = list(ids), []
    for _ in range(max_new_tokens):
        context = torch.tensor(ids[-seq_len:])[None]  # (1, T)
        logits = model(context)[0, -1, : model.vocab_size].float()  # (V,) padding rows excluded
        token = next_token(logits, sampling, generator)
        if token == eos_token_id:
            break
        ids.append(token)
        new.append(token)
    return new


def greedy_tokens(model, ids: list[int], max_new_tokens: int, eos_token_id: int | None, seq_len: int) -> list[int]:
    """The up to ``max_new_tokens`` argmax tokens following ``ids`` (stops before EOS)."""
    return generate_tokens(model, ids, max_new_tokens, eos_token_id, seq_len)


def generate(src: str | Path, prompt: str, max_new_tokens: int, sampling: Sampling = Sampling()) -> str:
    """The continuation of ``prompt`` (the generated text only, without the prompt)."""
    sampling.check()
    folder, _ = open_checkpoint(src)
    tokenizer = load_tokenizer(folder)
    model, _ = load_model(folder)
    new = generate_tokens(model, encode_document(tokenizer, prompt), max_new_tokens, tokenizer.eos_token_id,
                          model.cfg.seq_len, sampling)
    return tokenizer.decode(new, skip_special_tokens=True)
