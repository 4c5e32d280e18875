"""Real shards and the real loader for the benchmark.

With ``data.path`` the bench reads those shards. Without, it uses the embedded corpus (the Python
standard library's docstrings) tokenized with a BPE tokenizer of the size's vocabulary and written
by the real shard writer, cached under ``$BIGTRAIN_CACHE`` (bigtrain/data/embedded.py): a 32,000-token
tokenizer and 2048-token shards take ~30 s to build once on 2 cores. The stream loops over epochs,
so a few hundred samples feed any number of steps.

The micro-batches come from bigtrain's training loader (``train_loader`` over the global order),
exactly as in ``pretrain``; :class:`Recorder` keeps the ones a run consumed so the bare baseline
trains on the same tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from bigtrain.config.load import ConfigError
from bigtrain.config.schema import Config
from bigtrain.data.loader import StreamSpec, train_loader
from bigtrain.data.manifest import Manifest


def bench_shards(cfg: Config) -> Path:
    """The shard directory for ``cfg`` (built from the embedded corpus if ``data.path`` is empty)."""
    if cfg.data.path:
        shard_dir = Path(cfg.data.path)
    else:
        from bigtrain.data.embedded import ensure_embedded_dataset

        shard_dir = ensure_embedded_dataset(seq_len=cfg.model.seq_len, vocab_size=cfg.model.vocab_size)
    manifest = Manifest.load(shard_dir)
    if manifest.seq_len != cfg.model.seq_len or manifest.vocab_size != cfg.model.vocab_size:
        raise ConfigError(f"data.path={shard_dir} holds seq_len {manifest.seq_len}, vocabulary {manifest.vocab_size}; "
                          f"the benchmark model needs {cfg.model.seq_len} and {cfg.model.vocab_size} (set "
                          f"model.seq_len / model.vocab_size, or leave data.path empty)")
    return shard_dir


def micro_batches(cfg: Config, shard_dir: Path, dp_rank: int, dp_size: int, pin_memory: bool) -> Iterator[torch.Tensor]:
    """This rank's micro-batches (micro_batch, seq_len + 1) from the real training loader."""
    t = cfg.train
    spec = StreamSpec(t.global_batch_size, t.micro_batch_size, dp_rank, dp_size, t.seed)
    return iter(train_loader(shard_dir, spec, cfg.data.num_workers, pin_memory=pin_memory))


class Recorder:
    """Passes micro-batches through and keeps a copy (CPU tensors) of each."""

    def __init__(self, batches: Iterator[torch.Tensor]):
        self.batches = batches
        self.seen: list[torch.Tensor] = []

    def __iter__(self) -> "Recorder":
        return self

    def __next__(self) -> torch.Tensor:
        batch = next(self.batches)
        self.seen.append(batch)
        return batch
