"""Stream training micro-batches in the global order (order.py, mixing.py), resumable in O(1).

Each rank reads only its own samples, straight from the shards (reader.py): resuming is a seek, not a
replay. The stream's state is one number, the global position (samples consumed), plus counters;
:meth:`TrainLoader.state_dict` returns it as JSON for the checkpoint's meta.json, and a loader built
with that state continues the exact sequence, for any number of ranks or DataLoader workers.

Micro-batches are produced in chunks (about ``CHUNK_BYTES`` of tokens), so the order and shard
lookups are vectorised and a DataLoader worker sends one message per chunk, not per micro-batch.
Worker w of W produces chunks w, w+W, w+2W, ... of this rank's stream; the DataLoader's round-robin
over workers then yields them in exactly the order a single process would. A restarted loader starts
again at worker 0 with the resumed position, so no per-worker state is needed. With 0 workers the
stream is read directly (a DataLoader would only add per-batch overhead). Tokens stay in the shards'
dtype (uint16/uint32) and are widened on the device.

Corrupt shards (``on_corrupt``): ``stop`` marks the batch with the error; ``skip`` replaces each sample
of a corrupt shard by a pseudo-random good sample of the same source chosen from its stream position
(the same on every rank and every run) and counts it. :meth:`TrainLoader.next_step` fetches all
micro-batches of a step before any compute and makes the ranks agree (one all-reduce), so a rank that
hit a bad shard never leaves the others waiting in a collective.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bigtrain.data.errors import DataError, DataStop
from bigtrain.data.mixing import Mixture
from bigtrain.data.order import GlobalOrder, mix64
from bigtrain.data.reader import ShardReader
from bigtrain.data.sources import Source, source_seed

CHUNK_BYTES = 4 << 20  # tokens read per chunk (64 to 4096 samples)
SUBSTITUTE_TRIES = 64
STATE_FORMAT = "bigtrain-data-stream/1"
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


@dataclass
class Batch:
    tokens: torch.Tensor  # (micro_batch, seq_len + 1) in the shards' dtype
    skipped: int = 0  # samples of corrupt shards replaced (on_corrupt=skip)
    corrupt: tuple[str, ...] = ()  # corrupt shards met while reading this batch
    errors: tuple[str, ...] = ()  # on_corrupt=stop: why this batch must not be used

    def pin_memory(self) -> "Batch":
        return dataclasses.replace(self, tokens=self.tokens.pin_memory())


class TrainStream(IterableDataset):
    """Infinite stream of this rank's micro-batches (:class:`Batch`)."""

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
        samples = np.empty_like(own)
        for s, order in enumerate(self.orders):
            sel = source == s
            if sel.any():
                samples[sel] = order.samples(own[sel])
        return source, own, samples

    def read(self, positions: np.ndarray) -> list[Batch]:
        """The batches of a (n, micro_batch) array of positions."""
        source, own, samples = self.locate(positions)
        out = np.empty((source.size, self.sample_tokens), self.dtype)
        chunk = torch.from_numpy(out)  # the batches are views of it: one allocation per chunk
        bad: list[int] = []
        for s, reader in enumerate(self.readers):
            rows = np.flatnonzero(source == s) if len(self.readers) > 1 else None
            bad += reader.gather_into(samples if rows is None else samples[rows], out, rows)
        micro = positions.shape[1]
        if not bad:
            return [Batch(chunk[i * micro:(i + 1) * micro]) for i in range(positions.shape[0])]
        notes = {row: self.handle_corrupt(int(source[row]), int(own[row]), int(samples[row]), out, row)
                 for row in bad}
        batches = []
        for i in range(positions.shape[0]):
            mine = [notes[row] for row in range(i * micro, (i + 1) * micro) if row in notes]
            batches.append(Batch(chunk[i * micro:(i + 1) * micro],
                                 skipped=sum(1 for n in mine if n[1] is None),
                                 corrupt=tuple(sorted({n[0] for n in mine})),
                                 errors=tuple(sorted({n[1] for n in mine if n[1] is not None}))))
        return batches

    def handle_corrupt(self, s: int, own: int, sample: int, out: np.ndarray, row: int) -> tuple[str, str | None]:
        """(corrupt shard, error or None): on skip, fill ``out[row]`` with the position's substitute."""
        reader = self.readers[s]
        path, message = reader.shard_error(sample)
        if self.on_corrupt == "stop":
            return path, message
        reader.gather_into(np.array([self.substitute(s, own)]), out, np.array([row]))
        return path, None

    def substitute(self, s: int, own: int) -> int:
        """A readable sample of source ``s`` standing in for its stream position ``own`` (deterministic)."""
        reader, key = self.readers[s], np.uint64(self.orders[s].seed * 1_000_003 + 0x5B1B)
        for attempt in range(1, SUBSTITUTE_TRIES + 1):
            with np.errstate(over="ignore"):
                h = mix64(np.array([own * SUBSTITUTE_TRIES + attempt], dtype=np.uint64) ^ key)[0]
            candidate = int(h % np.uint64(reader.num_samples))
            if reader.readable(candidate):
                return candidate
        raise DataError(f"no readable sample found in {SUBSTITUTE_TRIES} tries for position {own} of source "
                        f"{reader.manifest.root}: most of its shards are corrupt ({len(reader.errors)} found)")

    def __iter__(self) -> Iterator[list[Batch]]:
        """Chunks of consecutive micro-batches: chunk j holds micro-batches [j * chunk, (j + 1) * chunk)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for j in itertools.count(worker, workers):
            yield self.read(self.positions(np.arange(j * self.chunk, (j + 1) * self.chunk)))


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def agree(batches: list[Batch], dp_size: int, device: torch.device,
          collective: bool | None = None) -> tuple[int, list[str], list[str]]:
    """(skipped samples, corrupt shards, errors) summed over all ranks: the same answer on every rank.

    One all-reduce per step; the names are gathered only when some rank met a corrupt shard. Ranks of
    one data-parallel group (tensor-parallel peers) read the same samples: counts are divided by them.
    """
    clean = not any(b.skipped or b.corrupt or b.errors for b in batches)
    skipped = 0 if clean else sum(b.skipped for b in batches)
    corrupt = [] if clean else sorted({p for b in batches for p in b.corrupt})
    errors = [] if clean else sorted({e for b in batches for e in b.errors})
    if not (distributed() if collective is None else collective):
        return skipped, corrupt, errors
    counts = torch.tensor([skipped, len(corrupt) + len(errors)], dtype=torch.float64, device=device)
    dist.all_reduce(counts)
    replicas = dist.get_world_size() // dp_size
    if counts[1].item() == 0:
        return round(counts[0].item() / replicas), [], []
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (corrupt, errors))
    return (round(counts[0].item() / replicas), sorted({path for paths, _ in everyone for path in paths}),
            sorted({msg for _, msgs in everyone for msg in msgs}))


class TrainLoader:
    """This rank's micro-batches, one optimizer step at a time, and the stream's resumable state.

    ``state`` (a :meth:`state_dict`) resumes; it must come from the same sources, seed and mixing
    block (checked: :func:`state_problems`). The data-parallel size and the number of workers are free.
    """

    def __init__(self, sources: list[Source], spec: StreamSpec, *, num_workers: int = 0, pin_memory: bool = False,
                 on_corrupt: str = "stop", verify_checksums: bool = True, device: torch.device | None = None,
                 state: dict | None = None):
        self.sources, self.spec = sources, spec
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.on_corrupt, self.verify_checksums = on_corrupt, verify_checksums
        self.device = device or torch.device("cpu")
        self.mixture = Mixture([s.weight for s in sources], spec.mix_block_size, spec.seed)
        self.position = spec.start_sample  # global samples consumed by the steps handed out
        self.skipped_samples = 0
        self.corrupt_shards: list[str] = []
        self._chunks: Iterator[list[Batch]] | None = None
        self._pending: list[Batch] = []  # the current chunk's micro-batches not handed out yet, reversed
        self._collective = False
        if state is not None:
            self.load_state_dict(state)

    def _start(self) -> Iterator[list[Batch]]:
        spec = dataclasses.replace(self.spec, start_sample=self.position)
        stream = TrainStream(self.sources, spec, self.on_corrupt, self.verify_checksums)
        self._collective = distributed()
        if self.num_workers:
            return iter(DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                                   pin_memory=self.pin_memory, prefetch_factor=2))
        if self.pin_memory:
            return ([batch.pin_memory() for batch in chunk] for chunk in stream)
        return iter(stream)

    def _next_batch(self) -> Batch:
        if not self._pending:
            self._pending = next(self._chunks)[::-1]
        return self._pending.pop()

    def next_step(self) -> list[torch.Tensor]:
        """The ``accum`` micro-batches (tokens) of the next step, agreed clean by every rank.

        Raises :class:`DataStop` (on every rank at once) when a rank met a corrupt shard under
        ``on_corrupt=stop``; the position then stays at the last completed step.
        """
        if self._chunks is None:
            self._chunks = self._start()
        batches = [self._next_batch() for _ in range(self.spec.accum)]
        skipped, corrupt, errors = agree(batches, self.spec.dp_size, self.device, self._collective)
        if errors:
            raise DataStop(f"corrupt training data at sample {self.position} of the stream (data.on_corrupt=stop; "
                           f"fix or re-shard it, or resume with data.on_corrupt=skip): " + "; ".join(errors))
        self.skipped_samples += skipped
        if corrupt:
            self.corrupt_shards = sorted(set(self.corrupt_shards) | set(corrupt))
        self.position += self.spec.global_batch
        return [b.tokens for b in batches]

    def source_samples(self) -> np.ndarray:
        """Samples consumed from each source so far (a function of the position: mixing.py)."""
        return self.mixture.consumed(self.position)

    def epochs(self) -> list[float]:
        """Epochs of each source consumed so far (1.5 = half-way through the second pass)."""
        return [n / s.num_samples for n, s in zip(self.source_samples().tolist(), self.sources)]

    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "position": self.position,
            "global_batch_size": self.spec.global_batch,
            "seed": self.spec.seed,
            "mix_block_size": self.spec.mix_block_size,
            "sources": [{"name": s.name, "path": str(s.path), "weight": s.weight, "num_samples": s.num_samples}
                        for s in self.sources],
            "source_samples": self.source_samples().tolist(),
            "skipped_samples": self.skipped_samples,
            "corrupt_shards": list(self.corrupt_shards),
        }

    def load_state_dict(self, state: dict) -> None:
        if self._chunks is not None:
            raise RuntimeError("load_state_dict must come before the first next_step")
        problems = state_problems(state, self.sources, self.spec.seed, self.spec.mix_block_size)
        if problems:
            raise DataError("cannot resume this data stream: " + "; ".join(problems))
        self.position = int(state["position"])
        self.skipped_samples = int(state.get("skipped_samples", 0))
        self.corrupt_shards = list(state.get("corrupt_shards", []))


def state_problems(state: dict, sources: list[Source], seed: int, mix_block_size: int) -> list[str]:
    """Why ``state`` does not continue with these sources (empty if it does). Paths may change."""
    if state.get("format") != STATE_FORMAT:
        return [f"the saved state has format {state.get('format')!r}, expected {STATE_FORMAT!r}"]
    problems = []
    if state["seed"] != seed:
        problems.append(f"train.seed was {state['seed']}, now {seed}")
    saved = [(s["name"], s["weight"], s["num_samples"]) for s in state["sources"]]
    now = [(s.name, s.weight, s.num_samples) for s in sources]
    if saved != now:
        problems.append(f"the sources were (name, weight, train samples) {saved}, now {now}")
    if len(sources) > 1 and state["mix_block_size"] != mix_block_size:
        problems.append(f"data.mix_block_size was {state['mix_block_size']}, now {mix_block_size}")
    return problems
