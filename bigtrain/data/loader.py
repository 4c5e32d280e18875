"""Stream training micro-batches from WebDataset tar shards in the global order (see order.py).

Every sample is one tar member of a fixed size (``manifest.member_bytes``: no PAX headers, fixed
names and lengths), so sample j of a shard starts at byte ``j * member_bytes``: a rank reads only
its own samples, and resuming is a seek, not a replay. Each member's header is checked against the
expected name and size, so a shard that does not follow the layout fails loudly, naming the file.

DataLoader workers: worker w of W produces micro-batches w, w+W, w+2W, ... of this rank's stream;
the DataLoader's round-robin over workers then yields them in exactly the order a single process
would. A restarted loader starts again at worker 0 with the resumed position, so no per-worker
state needs saving: the stream position (consumed samples) is the whole loader state.
"""

from __future__ import annotations

import bisect
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bigtrain.data.errors import DataError
from bigtrain.data.manifest import Manifest
from bigtrain.data.order import GlobalOrder, rank_positions


class ShardReader:
    """Random access to the samples of one split, by index within the split."""

    def __init__(self, manifest: Manifest, split: str):
        self.manifest = manifest
        info = manifest.splits[split]
        self.paths = [manifest.root / shard.file for shard in info.shards]
        counts = [shard.num_samples for shard in info.shards]
        self.starts = np.cumsum([0] + counts[:-1]).tolist()
        self.num_samples = int(sum(counts))
        self.dtype = np.dtype(manifest.dtype).newbyteorder("<")
        self.sample_bytes = manifest.sample_tokens * self.dtype.itemsize
        self.member_bytes = manifest.member_bytes
        self._files: dict[int, object] = {}
        self._pid = os.getpid()

    def _file(self, shard: int):
        if self._pid != os.getpid():  # forked into a DataLoader worker: do not share file offsets
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            try:
                self._files[shard] = open(self.paths[shard], "rb")
            except OSError as exc:
                raise DataError(f"cannot open shard {self.paths[shard]}: {exc.strerror}") from exc
        return self._files[shard]

    def read(self, index: int) -> np.ndarray:
        """Tokens (seq_len + 1,) of sample ``index``."""
        shard = bisect.bisect_right(self.starts, index) - 1
        local = index - self.starts[shard]
        f = self._file(shard)
        f.seek(local * self.member_bytes)
        header = f.read(tarfile.BLOCKSIZE)
        expected = f"{index:010d}.tokens"
        try:
            info = tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
        except tarfile.TarError as exc:
            raise DataError(f"{self.paths[shard]}: no valid tar header for sample {index} at byte "
                            f"{local * self.member_bytes} ({exc}); the shard is truncated or corrupt") from exc
        if info.name != expected or info.size != self.sample_bytes:
            raise DataError(f"{self.paths[shard]}: expected member {expected} of {self.sample_bytes} bytes at byte "
                            f"{local * self.member_bytes}, found {info.name!r} of {info.size} bytes")
        data = f.read(self.sample_bytes)
        if len(data) != self.sample_bytes:
            raise DataError(f"{self.paths[shard]}: truncated inside sample {index}")
        return np.frombuffer(data, dtype=self.dtype)

    def read_many(self, indices: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.read(int(i)) for i in indices]).astype(np.int64))


@dataclass(frozen=True)
class StreamSpec:
    """Which part of the global stream one data-parallel rank reads."""
    global_batch: int
    micro_batch: int
    dp_rank: int
    dp_size: int
    seed: int
    start_sample: int = 0  # consumed samples at resume

    @property
    def accum(self) -> int:
        return self.global_batch // (self.micro_batch * self.dp_size)


class TrainStream(IterableDataset):
    """Infinite stream of this rank's micro-batches: LongTensor (micro_batch, seq_len + 1)."""

    def __init__(self, shard_dir: str | Path, spec: StreamSpec, split: str = "train"):
        self.shard_dir = Path(shard_dir)
        self.spec = spec
        self.split = split
        self.reader = ShardReader(Manifest.load(self.shard_dir), split)
        self.order = GlobalOrder(self.reader.num_samples, spec.seed)

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        s = self.spec
        u = worker
        while True:
            step, micro = divmod(u, s.accum)
            positions = rank_positions(s.start_sample, step, micro, global_batch=s.global_batch,
                                       micro_batch=s.micro_batch, dp_rank=s.dp_rank, dp_size=s.dp_size)
            yield self.reader.read_many(self.order.samples(positions))
            u += workers


def train_loader(shard_dir: str | Path, spec: StreamSpec, num_workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """DataLoader over :class:`TrainStream` (batches are made by the dataset: ``batch_size=None``)."""
    return DataLoader(TrainStream(shard_dir, spec), batch_size=None, num_workers=num_workers,
                      pin_memory=pin_memory, prefetch_factor=4 if num_workers else None)
