"""Random access to the samples of one split of a shard directory, by index within the split.

A shard is memory-mapped when first touched and checked then, once per process: exact file size and
every tar header (integrity.py), and its sha256 when ``verify_checksums`` (one sequential read of the
file). A shard that fails is remembered as corrupt: :meth:`ShardReader.gather` reports its samples
instead of returning data (the loader's ``data.on_corrupt`` policy decides), :meth:`read_many` raises.
Whether a shard is corrupt depends only on its bytes, never on which samples were read first, so every
process reaches the same decision.

Read path: sample -> (shard, byte offset) is vectorised over a whole chunk of indices; the samples are
then memoryview slices of the mapped files joined into one buffer by a single C-level call (measured
faster per sample than numpy fancy indexing of one memmap: BENCHMARKS.md).

A manifest loaded from a URL (``manifest.remote``: shard_cache.py) is read the same way from the
node-local cache: a shard is fetched (and verified against its sha256) on first use, its path in
messages is its URL, and its map is dropped after each read so evicted shards free their space;
:meth:`ShardReader.prefetch` fetches the shards of upcoming samples in the background.
"""

from __future__ import annotations

import numpy as np
import torch

from bigtrain.data import tarlayout
from bigtrain.data.errors import CorruptShardError
from bigtrain.data.integrity import check_layout, check_sha256, map_shard
from bigtrain.data.manifest import Manifest

MAX_MAPPED = 8192  # shards mapped at once per reader (vm.max_map_count is 65530 by default)


class ShardReader:
    def __init__(self, manifest: Manifest, split: str, verify_checksums: bool = True):
        self.manifest, self.split, self.verify_checksums = manifest, split, verify_checksums
        info = manifest.splits[split]
        self.remote = manifest.remote
        self.paths = [self.remote.url_of(shard.file) if self.remote else manifest.root / shard.file
                      for shard in info.shards]
        self.counts = np.array([shard.num_samples for shard in info.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.num_samples = int(self.counts.sum())
        self.dtype = np.dtype(manifest.dtype).newbyteorder("<")
        self.sample_tokens = manifest.sample_tokens
        self.block = manifest.samples_per_block
        self._reset()

    def _reset(self) -> None:
        self._views: list = [None] * len(self.paths)  # per shard: None (not open), False (corrupt) or its bytes
        self.errors: dict[int, str] = {}  # shard -> why it is corrupt
        self._verified: set[int] = set()
        self._mapped = 0

    def __getstate__(self) -> dict:  # DataLoader workers (spawn) open their own maps
        state = dict(self.__dict__)
        for key in ("_views", "errors", "_verified", "_mapped"):
            del state[key]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, byte offset in the shard file) of each sample index."""
        indices = np.asarray(indices, dtype=np.int64)
        shards = np.searchsorted(self.starts, indices, side="right") - 1
        block, within = np.divmod(indices - self.starts[shards], self.block)
        return shards, block * self.manifest.member_bytes + tarlayout.BLOCK + within * self.manifest.sample_bytes

    def _open(self, shard: int):
        if self._mapped >= MAX_MAPPED:  # unmap everything; shards are re-mapped (and re-checked) on use
            self._views = [False if v is False else None for v in self._views]
            self._mapped = 0
        path = self.paths[shard]
        try:
            buf = self._map(shard)
            check_layout(buf, path, int(self.starts[shard]), int(self.counts[shard]), self.manifest)
            if self.remote is None and self.verify_checksums and shard not in self._verified:  # remote: at fetch
                check_sha256(buf, path, self.manifest.splits[self.split].shards[shard].sha256, self.manifest)
                self._verified.add(shard)
        except CorruptShardError as exc:
            self.errors[shard] = str(exc)
            self._views[shard] = False
            return False
        self._views[shard] = view = memoryview(buf)
        self._mapped += 1
        return view

    def _map(self, shard: int):
        if self.remote is None:
            return map_shard(self.paths[shard])
        info = self.manifest.splits[self.split].shards[shard]
        size = tarlayout.shard_bytes(info.num_samples, self.block, self.manifest.sample_bytes)
        return self.remote.open(info.file, size, info.sha256)

    def prefetch(self, indices: np.ndarray) -> None:
        """Remote shards: fetch the shards of these samples in the background (no-op for local shards)."""
        if self.remote is None or not len(indices):
            return
        shards = self.manifest.splits[self.split].shards
        wanted = [shards[s] for s in dict.fromkeys(self.locate(indices)[0].tolist()) if self._views[s] is not False]
        self.remote.prefetch([(info.file, tarlayout.shard_bytes(info.num_samples, self.block, self.manifest.sample_bytes),
                               info.sha256) for info in wanted])

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """(tokens (len(indices), seq_len + 1), rows whose shard is corrupt: left as zeros)."""
        try:
            return self._gather(indices)
        finally:
            if self.remote is not None:  # drop the maps: an evicted shard's space is freed now (shard_cache.py)
                self._views = [False if v is False else None for v in self._views]
                self._mapped = 0

    def _gather(self, indices: np.ndarray) -> tuple[np.ndarray, list[int]]:
        shards, offsets = self.locate(indices)
        views, nbytes = self._views, self.manifest.sample_bytes
        touched = set(shards.tolist())
        for s in touched:
            if views[s] is None:
                self._open(s)
        if all(views[s] is not False for s in touched):
            data = bytearray().join([views[s][o:o + nbytes] for s, o in zip(shards.tolist(), offsets.tolist())])
            return np.frombuffer(data, self.dtype).reshape(len(shards), self.sample_tokens), []
        zeros, parts, bad = bytes(nbytes), [], []
        for row, (s, o) in enumerate(zip(shards.tolist(), offsets.tolist())):
            if views[s] is False:
                bad.append(row)
                parts.append(zeros)
            else:
                parts.append(views[s][o:o + nbytes])
        return np.frombuffer(bytearray().join(parts), self.dtype).reshape(len(shards), self.sample_tokens), bad

    def readable(self, index: int) -> bool:
        shard = int(self.locate(np.array([index]))[0][0])
        view = self._views[shard]
        return (self._open(shard) if view is None else view) is not False

    def shard_error(self, index: int) -> tuple[str, str]:
        """(path, message) for a sample whose shard was found corrupt."""
        shard = int(self.locate(np.array([index]))[0][0])
        return str(self.paths[shard]), self.errors[shard]

    def read_many(self, indices) -> torch.Tensor:
        """Tokens (len(indices), seq_len + 1) as int64; raises on a corrupt shard."""
        out, bad = self.gather(np.asarray(indices))
        if bad:
            path, message = self.shard_error(int(np.asarray(indices)[bad[0]]))
            raise CorruptShardError(path, message)
        return torch.from_numpy(out.astype(np.int64))

    def read(self, index: int) -> np.ndarray:
        """Tokens (seq_len + 1,) of one sample in the shards' dtype; raises on a corrupt shard."""
        out, bad = self.gather(np.array([index]))
        if bad:
            raise CorruptShardError(*self.shard_error(index))
        return out[0]
