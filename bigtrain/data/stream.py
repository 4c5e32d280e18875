"""One rank's stream of training micro-batches in the global order (order.py, mixing.py).

Micro-batches are produced in chunks (about ``CHUNK_BYTES`` of tokens), so the order and shard lookups
are vectorised and a DataLoader worker sends one message per chunk, not per micro-batch. Worker w of
W produces chunks w, w+W, w+2W, ... of this rank's stream; the DataLoader's round-robin over workers
then yields them in exactly the order a single process would. Tokens stay in the shards' dtype
(uint16/uint32) and are widened on the device.

Corrupt shards (``on_corrupt``, reader.py decides what is corrupt): ``stop`` notes the error on the
micro-batch; ``skip`` replaces each sample of a corrupt shard by a readable sample of the same source
chosen by a hash of its stream position (the same on every rank and every run) and counts it.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from bigtrain.data.errors import DataError
from bigtrain.data.mixing import Mixture
from bigtrain.data.order import GlobalOrder, mix64
from bigtrain.data.reader import ShardReader
from bigtrain.data.sources import Source, source_seed

CHUNK_BYTES = 4 << 20  # tokens read per chunk (64 to 4096 samples)
SUBSTITUTE_TRIES = 64
ON_CORRUPT = ("stop", "skip")


@dataclass(frozen=True)
class StreamSpec:
    """Which part of the global stream one data-parallel rank reads."""
    global_batch: int
    micro_batch: int
    dp_rank: int
    dp_size: int
    seed: int
    start_sample: int = 0  # the global position to start at (consumed samples at resume)
    mix_block_size: int = 1000

    @property
    def accum(self) -> int:
        return self.global_batch // (self.micro_batch * self.dp_size)


@dataclass(frozen=True)
class Note:
    """What happened to corrupt samples in one micro-batch (clean micro-batches have none)."""
    skipped: int = 0  # samples of corrupt shards replaced (on_corrupt=skip)
    corrupt: tuple[str, ...] = ()  # corrupt shards met while reading it
    errors: tuple[str, ...] = ()  # on_corrupt=stop: why it must not be used


@dataclass
class Chunk:
    """``n`` consecutive micro-batches of one rank, in one tensor: one allocation, one worker message."""
    tokens: torch.Tensor  # (n * micro_batch, seq_len + 1) in the shards' dtype
    micro_batch: int
    notes: dict[int, Note] = field(default_factory=dict)  # micro-batch index in the chunk -> note

    def batches(self) -> list[tuple[torch.Tensor, Note | None]]:
        parts = self.tokens.split(self.micro_batch)
        if not self.notes:
            return [(tokens, None) for tokens in parts]
        return [(tokens, self.notes.get(i)) for i, tokens in enumerate(parts)]

    def pin_memory(self) -> Chunk:
        return dataclasses.replace(self, tokens=self.tokens.pin_memory())


class TrainStream(IterableDataset):
    """Infinite stream of this rank's micro-batches, in chunks (:class:`Chunk`)."""

    def __init__(self, sources: list[Source], spec: StreamSpec, on_corrupt: str = "stop",
                 verify_checksums: bool = True):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        self.spec, self.on_corrupt = spec, on_corrupt
        self.readers = [ShardReader(s.manifest, "train", verify_checksums) for s in sources]
        self.orders = [GlobalOrder(r.num_samples, source_seed(spec.seed, s.name, len(sources)))
                       for s, r in zip(sources, self.readers)]
        self.mixture = Mixture([s.weight for s in sources], spec.mix_block_size, spec.seed)
        self.dtype = self.readers[0].dtype
        self.sample_tokens = self.readers[0].sample_tokens
        samples = min(4096, max(64, CHUNK_BYTES // (self.sample_tokens * self.dtype.itemsize)))
        self.chunk = max(1, samples // spec.micro_batch)  # micro-batches per chunk

    def positions(self, micro_batches: np.ndarray) -> np.ndarray:
        """(len, micro_batch) global positions of this rank's micro-batches number ``micro_batches``."""
        s = self.spec
        step, micro = np.divmod(np.asarray(micro_batches, dtype=np.int64), s.accum)
        base = s.start_sample + step * s.global_batch + s.dp_rank * (s.global_batch // s.dp_size) + micro * s.micro_batch
        return base[:, None] + np.arange(s.micro_batch)

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source, position in the source's stream, sample index in the source) per global position."""
        source, own = self.mixture.locate(np.ravel(positions))
        if len(self.orders) == 1:
            return source, own, self.orders[0].samples(own)
        samples = np.empty_like(own)
        for s, order in enumerate(self.orders):
            sel = source == s
            if sel.any():
                samples[sel] = order.samples(own[sel])
        return source, own, samples

    def read(self, positions: np.ndarray) -> Chunk:
        """The micro-batches of a (n, micro_batch) array of positions."""
        source, own, samples = self.locate(positions)
        if len(self.readers) == 1:
            out, bad = self.readers[0].gather(samples)
        else:
            out, bad = np.empty((source.size, self.sample_tokens), self.dtype), []
            for s, reader in enumerate(self.readers):
                rows = np.flatnonzero(source == s)
                out[rows], bad_rows = reader.gather(samples[rows])
                bad += rows[bad_rows].tolist()
        chunk = Chunk(torch.from_numpy(out), positions.shape[1])
        found: dict[int, list[tuple[str, str | None]]] = {}
        for row in bad:
            note = self.handle_corrupt(int(source[row]), int(own[row]), int(samples[row]), out, row)
            found.setdefault(row // chunk.micro_batch, []).append(note)
        for i, notes in found.items():
            chunk.notes[i] = Note(skipped=sum(1 for _, error in notes if error is None),
                                  corrupt=tuple(sorted({path for path, _ in notes})),
                                  errors=tuple(sorted({error for _, error in notes if error is not None})))
        return chunk

    def handle_corrupt(self, s: int, own: int, sample: int, out: np.ndarray, row: int) -> tuple[str, str | None]:
        """(corrupt shard, error or None): on skip, fill ``out[row]`` with the position's substitute."""
        reader = self.readers[s]
        path, message = reader.shard_error(sample)
        if self.on_corrupt == "stop":
            return path, message
        try:
            out[row] = reader.read(self.substitute(s, own))
        except DataError as exc:  # reported like a stop, so every rank ends together
            return path, str(exc)
        return path, None

    def substitute(self, s: int, own: int) -> int:
        """A readable sample of source ``s`` standing in for its stream position ``own`` (deterministic)."""
        reader, key = self.readers[s], np.uint64((self.orders[s].seed * 1_000_003 + 0x5B1B) % 2**64)
        for attempt in range(1, SUBSTITUTE_TRIES + 1):
            with np.errstate(over="ignore"):
                h = mix64(np.array([own * SUBSTITUTE_TRIES + attempt], dtype=np.uint64) ^ key)[0]
            candidate = int(h % np.uint64(reader.num_samples))
            if reader.readable(candidate):
                return candidate
        raise DataError(f"no readable sample found in {SUBSTITUTE_TRIES} tries for position {own} of source "
                        f"{reader.manifest.root}: most of its shards are corrupt ({len(reader.errors)} found)")

    def __iter__(self) -> Iterator[Chunk]:
        """Chunks of consecutive micro-batches: chunk j holds micro-batches [j * chunk, (j + 1) * chunk)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        remote = any(r.remote is not None for r in self.readers)
        for j in itertools.count(worker, workers):
            if remote:  # the shards of this worker's next chunk, fetched while this one is read and trained on
                self.prefetch(self.positions(np.arange((j + workers) * self.chunk, (j + workers + 1) * self.chunk)))
            yield self.read(self.positions(np.arange(j * self.chunk, (j + 1) * self.chunk)))

    def prefetch(self, positions: np.ndarray) -> None:
        source, _, samples = self.locate(positions)
        for s, reader in enumerate(self.readers):
            reader.prefetch(samples[source == s])
