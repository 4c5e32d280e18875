"""Synthetic shard directories whose tokens name their sample, for loader tests.

Sample i of a source holds ``[base + i, base + i, ...]`` (uint32, vocab 2**20), so a batch's first
column is the sequence of sample ids it read: no tokenizer needed, every id checkable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bigtrain.data.manifest import Manifest, TokenizerRef
from bigtrain.data.shards import write_samples
from bigtrain.data.sources import Source

VOCAB = 1 << 20


def ids_source(path: Path, num_samples: int, *, base: int = 0, weight: float = 1.0, seq_len: int = 8,
               samples_per_shard: int = 7, samples_per_block: int = 3, val: int = 4) -> Source:
    ids = (base + np.arange(num_samples, dtype=np.uint32))[:, None].repeat(seq_len + 1, axis=1)
    vals = (base + 10**5 + np.arange(val, dtype=np.uint32))[:, None].repeat(seq_len + 1, axis=1)
    write_samples(path, {"train": ids, "val": vals}, VOCAB, TokenizerRef("/nonexistent", "0" * 64),
                  samples_per_shard=samples_per_shard, samples_per_block=samples_per_block)
    return Source(Path(path).name, Path(path).resolve(), weight, Manifest.load(path))
