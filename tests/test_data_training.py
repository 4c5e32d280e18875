"""The data pipeline through ``bigtrain/pretrain.py`` on 2 gloo ranks (DP=2): a mixture of two sources,
validation loss per source every ``eval.every`` steps, more steps than one epoch of the small source,
and a shard that turns out corrupt mid-run.

Run 1 (``data.on_corrupt=stop``): only one rank reads the bad shard at step S; both ranks stop before
computing step S, save a checkpoint of step S-1 and exit 2 naming the shard. Run 2 resumes that run
directory with ``data.on_corrupt=skip``: nothing trained is lost, the bad shard's samples are replaced
and counted (summed over ranks), and the run finishes.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from bigtrain.data.loader import StreamSpec, TrainStream
from bigtrain.data.shards import write_shards
from bigtrain.data.sources import load_sources
from bigtrain.data.tokenizer import train_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from launch import run_ranks  # noqa: E402
from tiny_run import metrics  # noqa: E402

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
G, M, DP, STEPS = 8, 2, 2, 8
BASE = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=2",
        "model.ffn_hidden_size=64", "model.seq_len=16", "parallel.tensor_parallel=1", f"train.global_batch_size={G}",
        f"train.micro_batch_size={M}", f"train.steps={STEPS}", "train.warmup_steps=1", "checkpoint.every=100",
        "log.every=1", "log.tensorboard=false", "eval.every=2", "eval.batches=1", "data.mix_block_size=4"]


def corpus(path: Path, docs: int, seed: int, words: int) -> Path:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(5, words)))}) + "\n"
                            for _ in range(docs)))
    return path


def first_hit(sources, seed: int, shard: int) -> tuple[int, set[int]]:
    """(first step reading shard ``shard`` of source 1, the DP ranks reading it then)."""
    stream = TrainStream(sources, StreamSpec(G, M, 0, DP, seed, mix_block_size=4))
    source, _, samples = stream.locate(np.arange(STEPS * G))
    per_shard = sources[1].manifest.splits["train"].shards[0].num_samples
    hits = np.flatnonzero((source == 1) & (samples // per_shard == shard))
    if not len(hits):
        return STEPS, set()
    step = int(hits[0]) // G
    return step, {int(p) % G // (G // DP) for p in hits if int(p) // G == step}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    big, small = corpus(root / "big.jsonl", 160, 0, 30), corpus(root / "small.jsonl", 12, 1, 12)
    tok = train_tokenizer([big, small], 300, root / "tok")
    write_shards(tok, [big], 16, root / "big", val_fraction=0.2, samples_per_shard=20, workers=1)
    write_shards(tok, [small], 16, root / "small", val_fraction=0.2, samples_per_shard=2, workers=1)
    sources = load_sources([(str(root / "big"), 1.0, ""), (str(root / "small"), 1.0, "")])
    # choose a seed and a shard of "small" that only one rank reads first, at a step in 2..5
    for seed in range(200):
        for shard in range(len(sources[1].manifest.splits["train"].shards)):
            step, ranks = first_hit(sources, seed, shard)
            if 2 <= step <= 5 and len(ranks) == 1:
                return sources, seed, shard, step
    raise AssertionError("no seed puts a shard's first read on one rank in steps 2..5")


@pytest.mark.slow
def test_mixture_eval_epochs_and_a_corrupt_shard_end_to_end(data, tmp_path):
    sources, seed, shard, bad_step = data
    small = sources[1]
    assert small.num_samples * 2 < STEPS * G  # the small source (half of every step) wraps into epoch 1
    bad = small.path / small.manifest.splits["train"].shards[shard].file
    raw = bytearray(bad.read_bytes())
    raw[512 + 3] ^= 0x01  # one bit of one token: only the sha256 sees it
    bad.write_bytes(bytes(raw))
    run = tmp_path / "run"
    args = ["--config", "debug", f"run.dir={run}", f"train.seed={seed}", *BASE,
            f"data.sources=[{{path: {sources[0].path}, weight: 1}}, {{path: {small.path}, weight: 1}}]"]

    stopped = run_ranks("bigtrain/pretrain.py", DP, args, timeout=300, check=False)
    # torchrun exits 1 and lists each failed rank's own status: 2 (the error: line), never a crash at exit
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", stopped.stderr)
    assert stopped.returncode == 1 and codes and set(codes) == {"2"}, stopped.stderr[-3000:]
    assert f"error: corrupt training data at sample {(bad_step) * G}" in stopped.stderr, stopped.stderr[-3000:]
    assert f"{bad} is corrupt: sha256" in stopped.stderr
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, bad_step + 1))  # the steps before the bad one are done
    meta = json.loads((run / "checkpoints" / f"step_{bad_step:08d}" / "meta.json").read_text())
    assert meta["step"] == bad_step and meta["data"]["position"] == meta["consumed_samples"] == bad_step * G

    resumed = run_ranks("bigtrain/pretrain.py", DP, args + ["data.on_corrupt=skip"], timeout=300)
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), resumed.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints'} at step {bad_step}" in resumed.stdout
    last = rows[-1]
    for row in rows:  # per-source counts are exact functions of the position
        assert row["samples/big"] + row["samples/small"] == row["consumed_samples"] == row["step"] * G
        assert (row["step"] % 2 == 0) == ("val_loss" in row)
    assert all(f"val_{k}/{n}" in rows[1] for k in ("loss", "ppl") for n in ("big", "small"))
    assert abs(rows[1]["val_loss"] - (rows[1]["val_loss/big"] + rows[1]["val_loss/small"]) / 2) < 1e-9
    assert last["epoch/small"] == STEPS * G / 2 / small.num_samples > 1 and last["epoch"] == last["epoch/small"]
    assert "data: source 'small' finished epoch 0 during step" in resumed.stdout
    # replaced samples: positions of steps S..8 whose small sample lies in the bad shard, summed over ranks
    stream = TrainStream(sources, StreamSpec(G, M, 0, DP, seed, mix_block_size=4))
    source, _, samples = stream.locate(np.arange(bad_step * G, STEPS * G))
    per_shard = small.manifest.splits["train"].shards[0].num_samples
    expected = int(np.sum((source == 1) & (samples // per_shard == shard)))
    assert expected > 0 and last["skipped_samples"] == expected and last["corrupt_shards"] == 1
    final = json.loads((run / "checkpoints" / f"step_{STEPS:08d}" / "meta.json").read_text())["data"]
    assert final["skipped_samples"] == expected and final["corrupt_shards"] == [str(bad)]
    assert final["source_samples"] == [last["samples/big"], last["samples/small"]]
