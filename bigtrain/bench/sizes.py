"""Named model sizes for ``bigtrain bench`` (and anyone who wants a standard shape): one place.

Llama shapes (SwiGLU, RMSNorm, RoPE, untied embeddings from 125m up) with a 32,000-token vocabulary;
the ffn sizes are ~8/3 x hidden rounded to a multiple of 128 (7b: Llama-2-7B's 11008). ``7b-<k>l`` is
the 7B width with only k layers: the per-layer work of a 7B model on one GPU. ``20m`` is the CPU size
(the embedded corpus' 4096-token vocabulary, sequences of 256).

``micro_batch`` is the default when neither ``train.micro_batch_size=`` nor ``bigtrain plan`` choose
one (bench/config.py); parameter counts in the comments include the embeddings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bigtrain.errors import UserError


@dataclass(frozen=True)
class Size:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    seq_len: int
    tie_embeddings: bool
    micro_batch: int  # per device, when nothing else chooses it

    def model_overrides(self) -> list[str]:
        return [f"model.hidden_size={self.hidden}", f"model.num_layers={self.layers}",
                f"model.num_heads={self.heads}", f"model.num_kv_heads={self.kv_heads}",
                f"model.ffn_hidden_size={self.ffn}", f"model.seq_len={self.seq_len}",
                f"model.tie_embeddings={str(self.tie_embeddings).lower()}", f"model.vocab_size={self.vocab}"]


SIZES: dict[str, Size] = {
    "20m": Size(512, 6, 8, 4, 1408, 4096, 256, True, 4),  # 19.9M, grouped-query attention
    "125m": Size(768, 12, 12, 12, 2048, 32000, 2048, False, 16),  # 134M
    "350m": Size(1024, 24, 16, 16, 2816, 32000, 2048, False, 8),  # 375M
    "1.3b": Size(2048, 24, 16, 16, 5504, 32000, 2048, False, 8),  # 1.35B
    "7b": Size(4096, 32, 32, 32, 11008, 32000, 2048, False, 2),  # 6.74B
}
FEW_LAYERS = re.compile(r"^7b-(\d+)l$")


def get_size(name: str) -> Size:
    if name in SIZES:
        return SIZES[name]
    match = FEW_LAYERS.match(name)
    if match and int(match.group(1)) > 0:
        base = SIZES["7b"]
        return Size(**{**base.__dict__, "layers": int(match.group(1))})
    raise UserError(f"--size {name!r}: expected one of {sorted(SIZES)} or 7b-<k>l (the 7B width with k layers, "
                    "e.g. 7b-4l)")
