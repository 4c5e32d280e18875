"""Masked-LM pretraining (``train.objective=mlm``) end to end on real gloo ranks.

- masking (bigtrain/data/masking.py): over 256 sequences of 512 tokens, the chosen share of
  non-special tokens is 0.15 +- 0.01 and the 80/10/10 split holds within +- 0.02; special tokens are
  never chosen; a sample's mask depends only on its key (seed, stream position), so the masks of a
  step are the same read by 1 or 2 data-parallel ranks, and after a resume;
- parity: 8 fp32 steps of the encoder with TP2 x DP2 under ZeRO-3 give the TP1 x DP1 losses within
  1e-5 (the loss is the mean over the masked tokens of the global batch);
- elastic resume: the TP2 x DP2 run's step-4 checkpoint resumed at TP1 x DP1 logs steps 5-8 equal to
  the uninterrupted TP1 x DP1 run (within 1e-5): same masks at another TP and DP size;
- export: ``bigtrain convert to-hf`` writes a ModernBERT folder (its parity check ran); transformers'
  ``AutoModelForMaskedLM`` gives bigtrain's logits on a masked batch (<= 1e-4); ``bigtrain eval --json``
  reports the masked-token loss; ``tools/finetune_hf.py classify`` fine-tunes the export;
- refusals: a tokenizer without ``<mask>``, grouped-query attention, before any process group.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from launch import REPO  # noqa: E402
from tiny_run import MODEL_8_STEPS, metrics, pretrain_ranks, tiny_shards  # noqa: E402

from bigtrain.data.masking import IGNORE, MaskSpec, mask_tokens, train_keys  # noqa: E402

PARITY_TOL = 1e-5
MLM = [*MODEL_8_STEPS, "model.num_kv_heads=4", "train.objective=mlm", "eval.every=4", "eval.batches=2"]
SPEC = MaskSpec(0.15, 0.8, 0.1, mask_id=3, vocab_size=1000, special_ids=(0, 1, 2, 3))


def test_masking_probability_and_split():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, 1000, (256, 512), generator=gen)
    tokens[:, ::50] = 1  # some special tokens (bos)
    inputs, labels = mask_tokens(tokens, train_keys(7, np.arange(256)), SPEC)
    chosen = labels != IGNORE
    special = tokens == 1
    assert not chosen[special].any()
    assert abs(chosen.sum().item() / (~special).sum().item() - 0.15) < 0.01
    assert torch.equal(labels[chosen], tokens[chosen])
    masked = (inputs == 3) & chosen
    kept = (inputs == tokens) & chosen
    n = chosen.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.02
    assert abs(kept.sum().item() / n - 0.1) < 0.02  # kept: 10 % + random draws that hit the same token
    assert torch.equal(inputs[~chosen], tokens[~chosen])  # unchosen positions are untouched


def test_masks_are_a_function_of_the_key_only():
    tokens = torch.randint(4, 1000, (8, 64), generator=torch.Generator().manual_seed(1))
    keys = train_keys(1234, np.arange(100, 108))
    whole = mask_tokens(tokens, keys, SPEC)
    halves = [mask_tokens(tokens[i:i + 4], keys[i:i + 4], SPEC) for i in (0, 4)]  # as 2 DP ranks read them
    for full, parts in zip(whole, zip(*halves)):
        assert torch.equal(full, torch.cat(parts))
    other = mask_tokens(tokens, train_keys(1234, np.arange(108, 116)), SPEC)  # another epoch / position
    assert not torch.equal(whole[1], other[1])


def test_loader_masks_identical_for_any_dp_and_after_resume(tmp_path_factory):
    from bigtrain.data.loader import StreamSpec, TrainLoader
    from bigtrain.data.sources import load_sources
    from bigtrain.train.objectives import MaskedBatches

    sources = load_sources([(str(tiny_shards(tmp_path_factory)), 1.0, "")], "data.path")

    def steps(dp: int, rank: int, start: int, n: int) -> list[torch.Tensor]:
        loader = TrainLoader(sources, StreamSpec(8, 2, rank, dp, seed=5, start_sample=start))
        masked = MaskedBatches(loader, SPEC, seed=5)
        return [torch.cat([labels for _, labels in masked.next_step()]) for _ in range(n)]

    one = steps(1, 0, 0, 3)
    two = [torch.cat(pair) for pair in zip(steps(2, 0, 0, 3), steps(2, 1, 0, 3))]
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    resumed = steps(2, 0, 16, 1)[0], steps(2, 1, 16, 1)[0]
    assert torch.equal(torch.cat(resumed), one[2])


def pretrain(run_dir: Path, shards: Path, ranks: int, *overrides: str) -> list[dict]:
    pretrain_ranks(run_dir, shards, ranks, *overrides, model=MLM)
    return metrics(run_dir)


@pytest.fixture(scope="module")
def single(tmp_path_factory, shards) -> Path:
    run = tmp_path_factory.mktemp("mlm_tp1") / "run"
    pretrain(run, shards, 1, "parallel.tensor_parallel=1")
    return run


@pytest.fixture(scope="module")
def tp2dp2(tmp_path_factory, shards) -> Path:
    run = tmp_path_factory.mktemp("mlm_tp2dp2") / "run"
    pretrain(run, shards, 4, "parallel.tensor_parallel=2", "parallel.zero_stage=3")
    return run


def losses(rows: list[dict]) -> list[float]:
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow
def test_mlm_tp2dp2_zero3_matches_tp1(single, tp2dp2):
    ref, got = metrics(single), metrics(tp2dp2)
    assert [r["step"] for r in got] == list(range(1, 9))
    assert np.allclose(losses(got), losses(ref), atol=PARITY_TOL, rtol=0), (losses(got), losses(ref))
    assert losses(ref)[-1] < losses(ref)[0]  # it learns
    val = [r for r in got if "val_loss" in r]
    ref_val = [r for r in ref if "val_loss" in r]
    assert [r["step"] for r in val] == [4, 8]
    for a, b in zip(val, ref_val):
        assert abs(a["val_loss"] - b["val_loss"]) < PARITY_TOL and abs(a["val_mlm_acc"] - b["val_mlm_acc"]) < 1e-9
    meta = json.loads((tp2dp2 / "checkpoints" / "step_00000008" / "meta.json").read_text())
    assert meta["objective"] == "mlm" and meta["mlm"]["probability"] == 0.15


@pytest.mark.slow
def test_mlm_elastic_resume_at_other_tp_and_dp(tmp_path, single, tp2dp2, shards):
    run = tmp_path / "resumed"
    shutil.copytree(tp2dp2, run, ignore=shutil.ignore_patterns("step_00000008", "metrics.jsonl"))
    (run / "checkpoints" / "latest").write_text("step_00000004")
    rows = pretrain(run, shards, 1, "parallel.tensor_parallel=1")
    assert [r["step"] for r in rows] == [5, 6, 7, 8]
    assert np.allclose(losses(rows), losses(metrics(single))[4:], atol=PARITY_TOL, rtol=0)


@pytest.mark.slow
@pytest.mark.usefixtures("in_process_world")
def test_mlm_export_matches_transformers_and_eval(tmp_path, single):
    from transformers import AutoModelForMaskedLM

    from bigtrain.convert.load import load_model
    from bigtrain.convert.to_hf import to_hf

    hf_dir = to_hf(single, tmp_path / "hf")  # raises unless its own parity check passed
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["ModernBertForMaskedLM"]
    shard_tokens = torch.randint(4, 1000, (2, 64), generator=torch.Generator().manual_seed(3))
    inputs, _ = mask_tokens(shard_tokens, train_keys(0, np.arange(2)), SPEC)
    ours, _ = load_model(single)
    hf = AutoModelForMaskedLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (ours(inputs)[..., :1024] - hf(inputs).logits).abs().max().item()
    assert diff <= 1e-4
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"line {i} of the evaluation text, with words." for i in range(200)))
    out = subprocess.run([sys.executable, "-m", "bigtrain.cli", "eval", str(single), "--text", str(text),
                          "--seq-len", "64", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["objective"] == "mlm" and 0 < result["loss"] < 10 and result["tokens"] > 100


@pytest.mark.slow
def test_classification_finetune_runs_from_the_export(tmp_path, single):
    hf_dir = tmp_path / "hf"
    subprocess.run([sys.executable, "-m", "bigtrain.cli", "convert", "to-hf", str(single), str(hf_dir)], cwd=REPO,
                   check=True, capture_output=True, timeout=300)
    rows = [{"text": " ".join(["sunny warm bright", "error crash failed"][i % 2].split() * 2), "label": i % 2}
            for i in range(16)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}  # a fresh process, no launcher
    out = subprocess.run([sys.executable, "tools/finetune_hf.py", "classify", str(hf_dir), "--train", str(data),
                          "--out", str(tmp_path / "ft"), "--epochs", "1"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "ft" / "finetune_results.json").read_text())
    assert result["engine"] == "DeepSpeedEngine" and np.isfinite(result["after"]["loss"])
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["architectures"] == ["ModernBertForSequenceClassification"]


def test_mlm_refuses_a_tokenizer_without_mask_and_gqa(tmp_path, shards):
    from bigtrain.data.manifest import MANIFEST_FILE

    old_tok = tmp_path / "tok"
    manifest = json.loads((shards / MANIFEST_FILE).read_text())
    shutil.copytree(manifest["tokenizer"]["path"], old_tok)
    meta = json.loads((old_tok / "bigtrain_tokenizer.json").read_text())
    del meta["mask_id"]  # a tokenizer trained before <mask> existed
    (old_tok / "bigtrain_tokenizer.json").write_text(json.dumps(meta))
    old_shards = tmp_path / "shards"
    shutil.copytree(shards, old_shards)
    manifest["tokenizer"]["path"] = str(old_tok)
    (old_shards / MANIFEST_FILE).write_text(json.dumps(manifest))
    for data, extra, message in [(old_shards, [], "needs a tokenizer with a mask token"),
                                 (shards, ["model.num_kv_heads=2"], "must equal model.num_heads")]:
        out = subprocess.run([sys.executable, "bigtrain/pretrain.py", "--config", "debug", f"data.path={data}",
                              f"run.dir={tmp_path / 'run'}", *MLM, *extra, "parallel.tensor_parallel=1"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and message in out.stderr and out.stderr.count("error:") == 1, out.stderr[-2000:]
