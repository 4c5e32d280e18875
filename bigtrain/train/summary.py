"""What a run is about to do, said once at its start (rank 0's stdout and ``<run.dir>/summary.txt``).

One block: model size (parameters in total and per tensor-parallel rank, bigtrain/config/arithmetic.py:
what the model holds, padded vocabulary rows included), layout, tokens per step, the planned tokens and
epochs over the training split, the validation set, precision and kernels, and where checkpoints go.
Every line is computed from the resolved config and the shards' manifests.
"""

from __future__ import annotations

from pathlib import Path

from bigtrain.checkpoint.manager import CHECKPOINT_DIR
from bigtrain.config.arithmetic import padded_vocab_size, param_counts
from bigtrain.config.schema import Config
from bigtrain.data.sources import Source
from bigtrain.parallel.world import World

SUMMARY_FILE = "summary.txt"


def millions(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def epochs_text(cfg: Config, sources: list[Source]) -> str:
    """Planned passes over each source's training split (its share of the samples by weight)."""
    planned = cfg.train.steps * cfg.train.global_batch_size
    total_weight = sum(s.weight for s in sources)
    parts = [(s.name, planned * s.weight / total_weight / s.num_samples) for s in sources]
    if len(parts) == 1:
        return f"{parts[0][1]:.2f} epochs"
    return "epochs " + ", ".join(f"{name} {e:.2f}" for name, e in parts)


def summary_lines(cfg: Config, world: World, sources: list[Source], start_step: int) -> list[str]:
    m, t, c = cfg.model, cfg.train, cfg.checkpoint
    counts = param_counts(m, padded_vocab_size(m.vocab_size, m.vocab_pad_multiple, world.tp_size), world.tp_size)
    total, per_rank = counts.total, counts.per_tp_rank
    tokens_per_step = t.global_batch_size * m.seq_len
    accum = t.global_batch_size // (t.micro_batch_size * world.dp_size)
    train_samples = sum(s.num_samples for s in sources)
    val_samples = sum(s.manifest.splits["val"].num_samples for s in sources if s.has_val)
    evaluated = min(cfg.eval.batches * t.global_batch_size, val_samples)
    start = f"resuming at step {start_step}" if start_step else "starting at step 0"
    every = f"every {c.every} steps and at the end" if c.every else "at the end"
    keep = f", keeping the last {c.keep}" if c.keep else ""
    evaluation = f"{evaluated:,} evaluated every {cfg.eval.every} steps" if cfg.eval.every else "eval.every=0: off"
    return [
        f"run {cfg.run.dir}: {start} of {t.steps}",
        (f"  model      {millions(total)} parameters ({millions(per_rank)} per TP rank): {m.num_layers} layers, "
         f"hidden {m.hidden_size}, {m.num_heads} heads ({m.num_kv_heads} kv), seq_len {m.seq_len}, vocab {m.vocab_size}"),
        (f"  layout     {world.world_size} rank(s) = TP {world.tp_size} x DP {world.dp_size}, ZeRO-{cfg.parallel.zero_stage}, "
         f"{world.backend} on {world.device.type}"),
        (f"  batch      {t.global_batch_size} sequences x {m.seq_len} tokens = {tokens_per_step:,} tokens per step "
         f"(micro-batch {t.micro_batch_size}, {accum} accumulation step(s) per rank)"),
        (f"  plan       {t.steps:,} steps = {t.steps * tokens_per_step:,} tokens = {epochs_text(cfg, sources)} of "
         f"{train_samples:,} training samples"),
        f"  validation {val_samples:,} samples; {evaluation}",
        (f"  precision  {t.precision}; attention {m.attention_backend}, activation checkpointing "
         f"{m.activation_checkpointing}, compile {str(t.compile).lower()}, fused_adam {str(t.fused_adam).lower()}"),
        f"  checkpoints {Path(cfg.run.dir) / CHECKPOINT_DIR} {every}{keep}",
    ]


def write_summary(run_dir: Path, lines: list[str]) -> None:
    (Path(run_dir) / SUMMARY_FILE).write_text("\n".join(lines) + "\n")
