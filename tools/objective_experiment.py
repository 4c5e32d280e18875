"""The issue-16 experiment: distillation vs training from scratch; MLM pretraining vs random init for classification.

    python tools/objective_experiment.py --out runs/objective_experiment [--steps 150]

Everything runs on the embedded corpus (seq_len 64, a 1024-token BPE), one process each, CPU-sized:

1. Distillation. A teacher (hidden 128, 4 layers, ~0.9 M parameters) is trained with
   causal LM for ``--teacher-steps``. The same student (hidden 32, 2 layers, ~57 k) is then trained for
   ``--steps`` on the same token stream (same seed, same batches) twice: from scratch (causal LM), and
   distilled from the teacher (``train.objective=distill``, ``--alpha``, ``--temperature``). Reported:
   the validation next-token loss of each (``val_loss`` at the last step, the same validation set).
2. MLM pretraining for classification. An encoder (hidden 64, 2 layers) is pretrained with masked LM
   (``train.objective=mlm``) for ``--mlm-steps`` and exported (``bigtrain convert to-hf``); the same
   architecture with random weights is saved next to it. Both are fine-tuned by
   ``tools/finetune_hf.py classify`` on a word-order task built from held-out corpus documents: label 1
   = a 24-word passage as written, 0 = the same words shuffled (bag of words carries no signal: the
   model must know the language's order). Reported: held-out accuracy and loss after fine-tuning.

Results: ``OUT/results.json`` and a printed summary (numbers in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
COMMON = ["model.seq_len=64", "train.global_batch_size=8", "train.micro_batch_size=8", "train.warmup_steps=10",
          "log.tensorboard=false", "log.every=10", "parallel.tensor_parallel=1", "parallel.zero_stage=1",
          "checkpoint.every=0", "eval.batches=4"]
TEACHER = ["model.hidden_size=128", "model.num_layers=4", "model.num_heads=4", "model.num_kv_heads=4",
           "model.ffn_hidden_size=344"]
STUDENT = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=2",
           "model.ffn_hidden_size=88"]
ENCODER = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=4",
           "model.ffn_hidden_size=176"]


def pretrain(run_dir: Path, shards: Path, steps: int, *overrides: str) -> dict:
    """Train (or find finished) one run; -> its last metrics row."""
    metrics = run_dir / "metrics.jsonl"
    if not (metrics.exists() and json.loads(metrics.read_text().splitlines()[-1])["step"] == steps):
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, "bigtrain/pretrain.py", "--config", "debug", f"run.dir={run_dir}", f"data.path={shards}",
               f"train.steps={steps}", f"eval.every={steps}", *COMMON, *overrides]
        subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(metrics.read_text().splitlines()[-1])


def word_order_task(corpus: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` examples: 24 consecutive words of a document's prose (label 1) or the same words shuffled (0)."""
    rng = random.Random(seed)
    docs = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    passages = []
    for doc in docs[-2000:]:  # the corpus's last documents
        words = [w for w in doc.split() if w.isalpha()]
        if len(words) >= 24:
            passages.append(words[:24])
    rng.shuffle(passages)
    rows = []
    for i, words in enumerate(passages[:n]):
        if i % 2:
            words = words[:]
            rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": 1 - i % 2})
    return rows


def random_encoder(hf_dir: Path, out: Path) -> Path:
    """The exported encoder's architecture and tokenizer with freshly initialised weights."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM

    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(hf_dir))
    model.save_pretrained(out)
    for item in hf_dir.iterdir():
        if item.name.startswith("tokenizer") or item.name == "bigtrain_tokenizer.json":
            shutil.copy2(item, out / item.name)
    return out


def finetune(hf_dir: Path, train: Path, test: Path, out: Path, epochs: int) -> dict:
    cmd = [sys.executable, "tools/finetune_hf.py", "classify", str(hf_dir), "--train", str(train), "--eval", str(test),
           "--out", str(out), "--epochs", str(epochs), "--lr", "3e-4", "--batch-size", "16", "--max-length", "64",
           "--deepspeed", "none"]
    subprocess.run(cmd, cwd=REPO, check=True)
    return json.loads((out / "finetune_results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/objective_experiment"))
    parser.add_argument("--steps", type=int, default=120, help="student steps (scratch and distilled)")
    parser.add_argument("--teacher-steps", type=int, default=120)
    parser.add_argument("--mlm-steps", type=int, default=150)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--examples", type=int, default=450, help="classification examples (2/3 train, 1/3 test)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    from bigtrain.data.embedded import embedded_root, default_cache_dir, ensure_embedded_dataset

    out = args.out.resolve()
    shards = ensure_embedded_dataset(seq_len=64, vocab_size=1024)
    teacher = pretrain(out / "teacher", shards, args.teacher_steps, *TEACHER)
    scratch = pretrain(out / "student_scratch", shards, args.steps, *STUDENT)
    distilled = pretrain(out / "student_distilled", shards, args.steps, *STUDENT, "train.objective=distill",
                         f"distill.teacher={out / 'teacher'}", f"distill.alpha={args.alpha}",
                         f"distill.temperature={args.temperature}")
    mlm = pretrain(out / "encoder_mlm", shards, args.mlm_steps, *ENCODER, "train.objective=mlm")
    hf = out / "encoder_hf"
    if not (hf / "config.json").exists():
        subprocess.run([sys.executable, "-m", "bigtrain.cli", "convert", "to-hf", str(out / "encoder_mlm"), str(hf)],
                       cwd=REPO, check=True)
    rand = out / "encoder_random"
    if not (rand / "config.json").exists():
        random_encoder(hf, rand)
    rows = word_order_task(embedded_root(default_cache_dir()) / "corpus.jsonl", args.examples)
    cut = len(rows) * 2 // 3
    for name, part in (("train", rows[:cut]), ("test", rows[cut:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    pre = finetune(hf, out / "train.jsonl", out / "test.jsonl", out / "ft_pretrained", args.epochs)
    scratch_ft = finetune(rand, out / "train.jsonl", out / "test.jsonl", out / "ft_random", args.epochs)
    results = {
        "distillation": {"teacher_val_loss": teacher["val_loss"], "student_scratch_val_loss": scratch["val_loss"],
                         "student_distilled_val_loss": distilled["val_loss"],
                         "distilled_last_kd_loss": distilled.get("kd_loss"), "steps": args.steps,
                         "teacher_steps": args.teacher_steps, "alpha": args.alpha, "temperature": args.temperature},
        "classification": {"mlm_val_loss": mlm["val_loss"], "mlm_val_acc": mlm.get("val_mlm_acc"),
                           "pretrained": pre["after"], "random_init": scratch_ft["after"],
                           "train_examples": cut, "test_examples": len(rows) - cut, "epochs": args.epochs,
                           "mlm_steps": args.mlm_steps},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
