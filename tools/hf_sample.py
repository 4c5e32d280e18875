"""Greedy sample from a Hugging Face model folder, loaded with transformers alone (offline).

Usage: python tools/hf_sample.py HF_DIR --prompt TEXT [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hf_dir")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(args.hf_dir).eval()
    inputs = tokenizer(args.prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(f"[{type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters]")
    print(f"prompt:     {args.prompt!r}")
    print(f"completion: {tokenizer.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
