"""A tiny TP2 x DP2 ZeRO-3 run of the debug recipe, shared by the launcher tests.

Every launcher (torchrun, deepspeed, sbatch, submitit; interrupted or not) trains the same model on
the same data, so each is checked against one torchrun reference, computed once per session.
fp32 on CPU is deterministic: equal layouts give bit-identical losses.
"""

from __future__ import annotations

import json
from pathlib import Path

from launch import run_ranks

STEPS = 40
RANKS = 4  # TP 2 x DP 2
TINY = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
        "model.ffn_hidden_size=176", "model.seq_len=64", "parallel.tensor_parallel=2", "parallel.zero_stage=3",
        "train.global_batch_size=8", "train.micro_batch_size=2", f"train.steps={STEPS}", "train.warmup_steps=2",
        "checkpoint.every=0", "log.every=1", "log.tensorboard=false", "eval.every=0"]
# The same model, 8 steps with checkpoints at 4 and 8: the parity and resharding tests (test_pretrain, test_reshard).
MODEL_8_STEPS = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
                 "model.ffn_hidden_size=176", "model.seq_len=64", "train.global_batch_size=8",
                 "train.micro_batch_size=2", "train.steps=8", "train.warmup_steps=2", "checkpoint.every=4",
                 "log.every=1", "log.tensorboard=false"]
_cache: dict[str, object] = {}


def tiny_shards(tmp_path_factory) -> Path:
    if "shards" not in _cache:
        from bigtrain.data.embedded import ensure_embedded_dataset

        cache = tmp_path_factory.getbasetemp() / "bigtrain-cache"  # the one embedded build of the session
        _cache["shards"] = ensure_embedded_dataset(seq_len=64, cache_dir=cache, vocab_size=1024)
    return _cache["shards"]


def pretrain_ranks(run_dir: Path, shards: Path, ranks: int, *overrides: str, model=MODEL_8_STEPS, timeout: float = 300):
    """bigtrain/pretrain.py (debug recipe, ``model`` overrides) on ``ranks`` local ranks; a non-zero exit
    of any rank fails the test (tests/launch.py). -> the finished process."""
    return run_ranks("bigtrain/pretrain.py", ranks, ["--config", "debug", f"run.dir={run_dir}", f"data.path={shards}",
                                                     *model, *overrides], timeout=timeout)


def tiny_args(run_dir: Path, shards: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.path={shards}", f"run.dir={run_dir}", *extra]


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    assert path.exists(), f"no {path}: the run failed"
    return [json.loads(line) for line in path.read_text().splitlines()]


def trajectory(rows: list[dict]) -> list[tuple]:
    """What must be identical between two runs of the same layout."""
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"], r["consumed_samples"]) for r in rows]


def reference(tmp_path_factory) -> list[dict]:
    """Metrics of the tiny run started with torchrun on 4 local ranks (once per session)."""
    if "reference" not in _cache:
        run_dir = tmp_path_factory.getbasetemp() / "tiny-torchrun"
        run_ranks("bigtrain/pretrain.py", RANKS, ["--config", "debug", *tiny_args(run_dir, tiny_shards(tmp_path_factory))],
                  timeout=600)
        rows = metrics(run_dir)
        assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), "torchrun reference did not finish"
        _cache["reference"] = rows
    return _cache["reference"]
