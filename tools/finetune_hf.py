"""Fine-tune an exported model with transformers' Trainer and DeepSpeed (ZeRO-2 by default).

    python tools/finetune_hf.py classify HF_DIR --train train.jsonl --eval eval.jsonl --out OUT
    python tools/finetune_hf.py sft HF_DIR --train sft.jsonl --eval sft_eval.jsonl --out OUT
    deepspeed --num_gpus 8 tools/finetune_hf.py sft HF_DIR ...        # several GPUs (data parallel)

Tasks:
- ``classify``: JSONL lines ``{"text": ..., "label": ...}`` (labels: ints or strings). The model is
  ``LlamaForSequenceClassification`` (the exported decoder + a new linear ``score`` head on the last
  non-pad token), or ``ModernBertForSequenceClassification`` for an encoder exported from a masked-LM
  run (the encoder + its prediction head + a new ``classifier``, mean-pooled over non-pad tokens).
  bigtrain's tokenizers have no pad token: the EOS token pads, and ``config.pad_token_id`` tells the
  head where each sequence ends. Reports loss and accuracy.
- ``sft``: JSONL lines ``{"prompt": ..., "response": ...}``. Each example is ``BOS + prompt + response
  + EOS``; the labels of BOS and the prompt are -100 (not trained on), so the loss is the response's
  next-token loss. Reports that loss.

Metrics are computed before and after training on the eval file by the same plain loop (no
DeepSpeed), written to ``OUT/finetune_results.json`` and printed; the fine-tuned model and tokenizer
are saved to ``OUT``. ``--deepspeed`` takes an HF-Trainer DeepSpeed config whose "auto" values the
Trainer fills (default ``ds_configs/hf_zero2.json``); ``--deepspeed none`` trains without it. On a
machine without CUDA, DeepSpeed runs on its CPU accelerator; started without a launcher, the script
creates a 1-process gloo group itself (file rendezvous, no port).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEFAULT_DS = REPO / "ds_configs" / "hf_zero2.json"


def read_jsonl(path: Path, keys: tuple[str, ...]) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in keys if k not in row]
        if missing:
            raise SystemExit(f"error: {path}:{i} lacks {', '.join(missing)} (expected keys {', '.join(keys)})")
        rows.append(row)
    if not rows:
        raise SystemExit(f"error: {path} holds no examples")
    return rows


def classification_examples(rows: list[dict], tokenizer, labels: list, max_length: int) -> list[dict]:
    out = []
    for row in rows:
        ids = [tokenizer.bos_token_id] + tokenizer.encode(row["text"], add_special_tokens=False)[:max_length - 1]
        out.append({"input_ids": ids, "labels": labels.index(row["label"])})
    return out


def sft_examples(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    """BOS + prompt + response + EOS, the prompt masked out of the labels with -100."""
    out = []
    for row in rows:
        prompt = [tokenizer.bos_token_id] + tokenizer.encode(row["prompt"], add_special_tokens=False)
        response = tokenizer.encode(row["response"], add_special_tokens=False) + [tokenizer.eos_token_id]
        ids = (prompt + response)[:max_length]
        labels = ([-100] * len(prompt) + response)[:max_length]
        out.append({"input_ids": ids, "labels": labels})
    return out


def collate(pad_id: int, causal: bool):
    """Right-pad a batch; padded labels are -100 (causal) and the attention mask marks real tokens."""
    import torch

    def fn(batch: list[dict]) -> dict:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100) if causal else torch.tensor([b["labels"] for b in batch])
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n], mask[i, :n] = torch.tensor(b["input_ids"]), 1
            if causal:
                labels[i, :n] = torch.tensor(b["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return fn


def evaluate(model, examples: list[dict], collator, batch_size: int, causal: bool) -> dict:
    """Mean loss (per predicted token for sft, per example for classify) and accuracy (classify)."""
    import torch

    model.eval()
    total, count, correct = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = collator(examples[i:i + batch_size])
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits = out.logits.float()
            if causal:
                targets = batch["labels"][:, 1:]
                losses = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(),
                                                           ignore_index=-100, reduction="sum")
                total, count = total + losses.item(), count + int((targets != -100).sum())
            else:
                losses = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
                total, count = total + losses.item(), count + len(batch["labels"])
                correct += int((logits.argmax(-1) == batch["labels"]).sum())
    model.train()
    result = {"loss": total / count}
    if not causal:
        result["accuracy"] = correct / count
    return result


def single_process_group(workdir: Path) -> None:
    """Without a launcher, a 1-rank gloo group DeepSpeed and accelerate adopt (they skip their own init).

    It rendezvouses through a file, not a TCP port, so concurrent runs on one machine cannot collide.
    """
    if "RANK" in os.environ:
        return  # deepspeed/torchrun set RANK, WORLD_SIZE, MASTER_ADDR/PORT: DeepSpeed initialises from them
    import torch.distributed as dist

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "0")
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / f".pg_store_{os.getpid()}"
    store.unlink(missing_ok=True)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)


def load_model(task: str, hf_dir: str, num_labels: int, tokenizer):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task == "sft":
        return AutoModelForCausalLM.from_pretrained(hf_dir)
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir, num_labels=num_labels)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def finetune(args: argparse.Namespace) -> dict:
    deepspeed_config = None if args.deepspeed == "none" else str(Path(args.deepspeed).resolve())
    if deepspeed_config:
        from bigtrain.parallel.dsenv import import_deepspeed

        import_deepspeed()  # CPU accelerator when there is no CUDA; no JIT-built shm op
        single_process_group(Path(args.out))
    import torch
    from transformers import AutoTokenizer, Trainer, TrainingArguments, set_seed

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.hf_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # Llama defines none; pads are masked out anyway
    causal = args.task == "sft"
    keys = ("prompt", "response") if causal else ("text", "label")
    train_rows, eval_rows = read_jsonl(Path(args.train), keys), read_jsonl(Path(args.eval or args.train), keys)
    labels = sorted({r["label"] for r in train_rows + eval_rows}, key=str) if not causal else []
    make = (lambda rows: sft_examples(rows, tokenizer, args.max_length)) if causal else \
        (lambda rows: classification_examples(rows, tokenizer, labels, args.max_length))
    train, held_out = make(train_rows), make(eval_rows)
    collator = collate(tokenizer.pad_token_id, causal)
    model = load_model(args.task, args.hf_dir, len(labels), tokenizer)
    before = evaluate(model, held_out, collator, args.batch_size, causal)
    training = TrainingArguments(
        output_dir=str(Path(args.out) / "trainer"), per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs, learning_rate=args.lr, warmup_steps=args.warmup_steps, weight_decay=0.0,
        logging_steps=1, save_strategy="no", report_to=[], seed=args.seed, deepspeed=deepspeed_config,
        use_cpu=not torch.cuda.is_available(), remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=train, data_collator=collator)
    trainer.train()
    model = trainer.model  # ZeRO-2 keeps the full weights on every rank
    after = evaluate(model, held_out, collator, args.batch_size, causal)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    result = {"task": args.task, "deepspeed": deepspeed_config,
              "engine": type(trainer.model_wrapped).__name__, "labels": labels, "train_examples": len(train),
              "eval_examples": len(held_out), "before": before, "after": after, "train_loss": losses}
    if trainer.is_world_process_zero():
        trainer.save_model(args.out)
        tokenizer.save_pretrained(args.out)
        Path(args.out, "finetune_results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["classify", "sft"])
    parser.add_argument("hf_dir", help="a Hugging Face folder, e.g. from `bigtrain convert to-hf`")
    parser.add_argument("--train", required=True, metavar="JSONL")
    parser.add_argument("--eval", metavar="JSONL", help="held-out examples (default: the training file)")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--deepspeed", default=str(DEFAULT_DS), help="HF-Trainer DeepSpeed config, or none")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="per device")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per example (longer ones are cut)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    result = finetune(parse_args(argv))
    for when in ("before", "after"):
        m = result[when]
        extra = f" | accuracy {m['accuracy']:.3f}" if "accuracy" in m else ""
        print(f"{when:>6} fine-tuning: eval loss {m['loss']:.4f} (ppl {math.exp(min(m['loss'], 50)):.2f}){extra}")
    print(f"trained with {result['engine']} ({result['deepspeed'] or 'no DeepSpeed'}); results in finetune_results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
