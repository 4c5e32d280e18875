"""tools/finetune_hf.py: transformers' Trainer + DeepSpeed ZeRO-2 (ds_configs/hf_zero2.json) on CPU.

The model is the HF export of a real bigtrain checkpoint (tests/tiny_runs.py). Tiny tasks:
- classification: texts made of "weather" words vs "failure" words (plus shared filler words), 48
  training and 24 held-out examples; after fine-tuning the held-out accuracy must beat chance
  clearly (>= 0.75 vs 0.5) and the loss must fall;
- SFT: "Q: opposite of X? A:" -> " Y" pairs; the response loss (prompt masked with -100) must fall.
Both run as real subprocesses of the script, through DeepSpeed's engine (checked in the results).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from launch import REPO  # noqa: E402
from tiny_runs import trained_runs  # noqa: E402

WEATHER = ["sunny", "warm", "bright", "summer", "beach", "garden", "flowers", "breeze"]
FAILURE = ["error", "crash", "failed", "exception", "timeout", "broken", "fatal", "denied"]
FILLER = ["the", "a", "today", "very", "and", "with", "was", "it"]
OPPOSITES = [("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("open", "closed"),
             ("light", "dark"), ("early", "late"), ("full", "empty")]

pytestmark = pytest.mark.usefixtures("in_process_world")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def classification_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "failure" if i % 2 else "weather"
        words = rng.sample(FAILURE if i % 2 else WEATHER, 3) + rng.sample(FILLER, 3)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    from bigtrain.convert.to_hf import to_hf

    runs = trained_runs(tmp_path_factory)
    return to_hf(runs["tp2_z3_tied_gqa_fp32"], tmp_path_factory.mktemp("ft") / "hf")


def finetune(task: str, hf_dir: Path, out: Path, train: Path, held_out: Path | None, lr: float, epochs: int):
    cmd = [sys.executable, "tools/finetune_hf.py", task, str(hf_dir), "--train", str(train), "--out", str(out),
           "--lr", str(lr), "--epochs", str(epochs), "--batch-size", "8"]
    if held_out:
        cmd += ["--eval", str(held_out)]
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # a plain 1-process start
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    results = out / "finetune_results.json"
    assert results.exists(), f"{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    return json.loads(results.read_text()), proc


@pytest.mark.slow
def test_finetuning_with_deepspeed_learns_both_tasks(hf_dir, tmp_path):
    cls_train = write_jsonl(tmp_path / "cls_train.jsonl", classification_rows(48, seed=0))
    cls_eval = write_jsonl(tmp_path / "cls_eval.jsonl", classification_rows(24, seed=1))
    sft_train = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": f"Q: opposite of {a}? A:", "response": f" {b}"}
                                                     for a, b in OPPOSITES * 4])
    jobs = [("classify", tmp_path / "cls", cls_train, cls_eval, 3e-3, 4),
            ("sft", tmp_path / "sft", sft_train, None, 3e-3, 4)]
    with ThreadPoolExecutor(2) as pool:
        (cls, cls_proc), (sft, _) = pool.map(lambda job: finetune(job[0], hf_dir, *job[1:]), jobs)

    assert cls["engine"] == sft["engine"] == "DeepSpeedEngine"
    assert cls["deepspeed"].endswith("ds_configs/hf_zero2.json")
    assert cls["labels"] == ["failure", "weather"] and cls["eval_examples"] == 24
    assert cls["after"]["accuracy"] >= 0.75 > 0.5, cls  # chance is 0.5
    assert cls["after"]["loss"] < cls["before"]["loss"], cls
    assert "accuracy" in cls_proc.stdout
    assert sft["after"]["loss"] < sft["before"]["loss"] - 0.5, sft
    assert sft["train_loss"][-1] < sft["train_loss"][0]
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls")  # the saved result loads
    assert model.config.num_labels == 2 and model.config.pad_token_id is not None
    assert model.config.id2label == {0: "failure", 1: "weather"}  # the real names in config.json, not LABEL_0/1
    assert model.config.label2id == {"failure": 0, "weather": 1}


def test_sft_examples_mask_the_prompt(hf_dir):
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.spec_from_file_location("finetune_hf", REPO / "tools" / "finetune_hf.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    (example,) = tool.sft_examples([{"prompt": "Q: opposite of hot? A:", "response": " cold"}], tokenizer, 64)
    prompt = [tokenizer.bos_token_id] + tokenizer.encode("Q: opposite of hot? A:", add_special_tokens=False)
    response = tokenizer.encode(" cold", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert example["input_ids"] == prompt + response
    assert example["labels"] == [-100] * len(prompt) + response
    batch = tool.collate(tokenizer.eos_token_id, causal=True)([example, {"input_ids": [1, 5], "labels": [-100, 5]}])
    assert batch["labels"][1].tolist()[2:] == [-100] * (len(prompt) + len(response) - 2)  # padding is not trained
    assert batch["attention_mask"][1].sum() == 2
