"""Loss and perplexity of a Hugging Face causal LM on a text file, by the contract of ``bigtrain eval``.

    python tools/hf_perplexity.py HF_DIR --text FILE --seq-len 256 [--json] [--dtype fp32|bf16]

Contract (identical to bigtrain/evaluate.py, so the numbers compare): the text is tokenized as one
document with BOS prepended (no EOS) and cut into consecutive, non-overlapping windows of ``seq_len``
tokens (the last, shorter window included; a window of one token predicts nothing). Each window
predicts its ``len - 1`` next tokens; ``loss`` is the mean next-token cross-entropy over all of them
(fp32 logits, summed in fp64), ``tokens`` their number. Loads with transformers alone, offline.
The text must be UTF-8 (an error names the byte offset, as ``bigtrain data shard`` does); a
``--seq-len`` above the model's ``max_position_embeddings`` is warned about. Windows are run in
batches of ``--batch`` (default 8, like ``bigtrain eval``).
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


def read_text(path: str | Path) -> str:
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SystemExit(f"error: {path}: invalid UTF-8 at byte offset {exc.start}") from None


def perplexity(hf_dir: str | Path, text: str, seq_len: int, dtype: str = "fp32", batch: int = 8) -> dict:
    """-> {"loss": mean next-token cross-entropy, "tokens": number of predicted tokens}."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    if tokenizer.bos_token_id is None:
        raise SystemExit(f"error: the tokenizer in {hf_dir} defines no BOS token")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch_dtype).eval()
    trained = getattr(model.config, "max_position_embeddings", None)
    if trained and seq_len > trained:
        print(f"warning: --seq-len {seq_len} exceeds the model's max_position_embeddings ({trained}): positions "
              f"beyond it were never trained, the loss is not comparable", file=sys.stderr)
    ids = [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False, verbose=False)
    windows = window_ids(ids, seq_len)
    full, rest = [w for w in windows if len(w) == seq_len], [w for w in windows if len(w) < seq_len]
    total, count = 0.0, 0
    with torch.no_grad():
        for group in [full[i:i + batch] for i in range(0, len(full), batch)] + [[w] for w in rest]:
            tokens = torch.tensor(group)  # (B, T): equally long windows
            logits = model(tokens).logits[:, :-1].float()
            total += F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none").double().sum().item()
            count += tokens[:, 1:].numel()
    if not count:
        raise SystemExit("error: the text holds no tokens to predict")
    return {"loss": total / count, "tokens": count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hf_dir")
    parser.add_argument("--text", required=True, metavar="FILE")
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--json", action="store_true", help='print {"loss": ..., "tokens": ...}')
    args = parser.parse_args(argv)
    if args.seq_len < 2:
        parser.error("--seq-len must be at least 2")
    result = perplexity(args.hf_dir, read_text(args.text), args.seq_len, args.dtype, args.batch)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"loss {result['loss']:.4f} | perplexity {math.exp(result['loss']):.2f} | {result['tokens']} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
