"""Loss and perplexity of a Hugging Face causal LM on a text file, by the contract of ``bigtrain eval``.

    python tools/hf_perplexity.py HF_DIR --text FILE --seq-len 256 [--json] [--dtype fp32|bf16]

Contract (identical to bigtrain/evaluate.py, so the numbers compare): the text is tokenized as one
document with BOS prepended (no EOS) and cut into consecutive, non-overlapping windows of ``seq_len``
tokens (the last, shorter window included; a window of one token predicts nothing). Each window
predicts its ``len - 1`` next tokens; ``loss`` is the mean next-token cross-entropy over all of them
(fp32 logits, summed in fp64), ``tokens`` their number. Loads with transformers alone, offline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def window_ids(ids: list[int], seq_len: int) -> list[list[int]]:
    return [ids[i:i + seq_len] for i in range(0, len(ids), seq_len) if len(ids[i:i + seq_len]) > 1]


def perplexity(hf_dir: str | Path, text: str, seq_len: int, dtype: str = "fp32") -> dict:
    """-> {"loss": mean next-token cross-entropy, "tokens": number of predicted tokens}."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    if tokenizer.bos_token_id is None:
        raise SystemExit(f"error: the tokenizer in {hf_dir} defines no BOS token")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch_dtype).eval()
    ids = [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False, verbose=False)
    total, count = 0.0, 0
    with torch.no_grad():
        for window in window_ids(ids, seq_len):
            tokens = torch.tensor([window])
            logits = model(tokens).logits[0, :-1].float()
            total += F.cross_entropy(logits, tokens[0, 1:], reduction="none").double().sum().item()
            count += len(window) - 1
    if not count:
        raise SystemExit("error: the text holds no tokens to predict")
    return {"loss": total / count, "tokens": count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hf_dir")
    parser.add_argument("--text", required=True, metavar="FILE")
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--json", action="store_true", help='print {"loss": ..., "tokens": ...}')
    args = parser.parse_args(argv)
    if args.seq_len < 2:
        parser.error("--seq-len must be at least 2")
    result = perplexity(args.hf_dir, Path(args.text).read_text(encoding="utf-8"), args.seq_len, args.dtype)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"loss {result['loss']:.4f} | perplexity {math.exp(result['loss']):.2f} | {result['tokens']} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
