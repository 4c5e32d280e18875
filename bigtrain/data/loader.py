"""This rank's training micro-batches, a step at a time, and the stream's resumable state.

Each rank reads only its own samples, straight from the shards (reader.py, stream.py): resuming is a
seek, not a replay. The stream's state is one number, the global position (samples consumed), plus
counters; :meth:`TrainLoader.state_dict` returns it as JSON for the checkpoint's meta.json, and a
loader built with that state continues the exact sequence, for any number of ranks or DataLoader
workers (a restarted loader starts again at worker 0 with the resumed position: no per-worker state).
With 0 workers the stream is read directly (a DataLoader would only add per-batch overhead).

:meth:`TrainLoader.take_step` fetches all micro-batches of a step before any compute; the training
step carries their notes (corrupt shards) in its one agreement after the backward and then calls
:meth:`TrainLoader.settle_step`, so all ranks stop together on a bad shard and none is left waiting in
a collective (train/step.py). :meth:`TrainLoader.next_step` does both with its own agreement.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from bigtrain.data.errors import DataError, DataStop
from bigtrain.data.mixing import Mixture
from bigtrain.data.reader import ShardReader
from bigtrain.data.sources import Source
from bigtrain.data.stream import Chunk, Note, StreamSpec, TrainStream

__all__ = ["ShardReader", "StreamSpec", "TrainLoader", "TrainStream", "agree", "gather_names", "state_problems"]
STATE_FORMAT = "bigtrain-data-stream/1"


def local_names(notes: list[Note | None]) -> tuple[list[str], list[str]]:
    """(corrupt shards, errors) this rank met."""
    notes = [n for n in notes if n is not None]
    return sorted({p for n in notes for p in n.corrupt}), sorted({e for n in notes for e in n.errors})


def gather_names(notes: list[Note | None]) -> tuple[list[str], list[str]]:
    """Collective: (corrupt shards, errors) met by any rank, the same on every rank."""
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local_names(notes))
    return (sorted({path for paths, _ in everyone for path in paths}),
            sorted({msg for _, msgs in everyone for msg in msgs}))


def agree(notes: list[Note | None], dp_size: int, device: torch.device,
          collective: bool) -> tuple[int, list[str], list[str]]:
    """(skipped samples, corrupt shards, errors) summed over all ranks: the same answer on every rank.

    One all-reduce; the names are gathered only when some rank met a corrupt shard. Ranks of one
    data-parallel group (tensor-parallel peers) read the same samples: counts are divided by them.
    (The training step does not call this: its notes travel in the step's one agreement.)
    """
    notes = [n for n in notes if n is not None]
    skipped = sum(n.skipped for n in notes)
    corrupt, errors = local_names(notes)
    if not collective:
        return skipped, corrupt, errors
    counts = torch.tensor([skipped, len(corrupt) + len(errors)], dtype=torch.float64, device=device)
    dist.all_reduce(counts)
    replicas = dist.get_world_size() // dp_size
    if counts[1].item() == 0:
        return round(counts[0].item() / replicas), [], []
    corrupt, errors = gather_names(notes)
    return round(counts[0].item() / replicas), corrupt, errors


class TrainLoader:
    """This rank's micro-batches, one optimizer step at a time, and the stream's resumable state.

    ``state`` (a :meth:`state_dict`) resumes; it must come from the same sources, seed and mixing
    block (checked: :func:`state_problems`). The data-parallel size and the number of workers are free.
    """

    def __init__(self, sources: list[Source], spec: StreamSpec, *, num_workers: int = 0, pin_memory: bool = False,
                 on_corrupt: str = "stop", verify_checksums: bool = True, device: torch.device | None = None,
                 collective: bool = False, state: dict | None = None):
        self.sources, self.spec = sources, spec
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.on_corrupt, self.verify_checksums = on_corrupt, verify_checksums
        self.device = device or torch.device("cpu")
        self.mixture = Mixture([s.weight for s in sources], spec.mix_block_size, spec.seed)
        self.position = spec.start_sample  # global samples consumed by the steps handed out
        self.skipped_samples = 0
        self.corrupt_shards: list[str] = []
        self._chunks: Iterator[Chunk] | None = None
        self._pending: list[tuple[torch.Tensor, Note | None]] = []  # the chunk's rest, reversed
        self._collective = collective  # agree with the other ranks of the job (torch.distributed) every step
        if state is not None:
            self.load_state_dict(state)

    def _start(self) -> Iterator[Chunk]:
        spec = dataclasses.replace(self.spec, start_sample=self.position)
        stream = TrainStream(self.sources, spec, self.on_corrupt, self.verify_checksums)
        if self.num_workers:
            return iter(DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                                   pin_memory=self.pin_memory, prefetch_factor=2))
        if self.pin_memory:
            return (chunk.pin_memory() for chunk in stream)
        return iter(stream)

    def _next_batch(self) -> tuple[torch.Tensor, Note | None]:
        if not self._pending:
            self._pending = next(self._chunks).batches()[::-1]
        return self._pending.pop()

    def take_step(self) -> tuple[list[torch.Tensor], list[Note]]:
        """The ``accum`` micro-batches (tokens) of the next step and their notes (corrupt samples),
        without agreeing with other ranks: the training step puts the notes into its one agreement
        and then calls :meth:`settle_step`. The position advances only there."""
        if self._chunks is None:
            self._chunks = self._start()
        batches = [self._next_batch() for _ in range(self.spec.accum)]
        return [tokens for tokens, _ in batches], [note for _, note in batches if note is not None]

    def settle_step(self, skipped: int, problems: int, notes: list[Note]) -> None:
        """Account the step the ranks agreed on: ``skipped`` samples and ``problems`` (corrupt shards and
        errors, summed over ranks; when non-zero, their names are gathered: a collective). Raises
        :class:`DataStop` (on every rank at once) if a rank met a corrupt shard under ``on_corrupt=stop``;
        the position then stays at the last completed step."""
        corrupt, errors = gather_names(notes) if problems and self._collective else local_names(notes)
        self._account(skipped, corrupt, errors)
        self.position += self.spec.global_batch

    def next_step(self) -> list[torch.Tensor]:
        """:meth:`take_step` and :meth:`settle_step` with their own agreement (one all-reduce when
        ``collective``): for callers outside the training step (benchmarks, tests)."""
        tokens, notes = self.take_step()
        if notes or self._collective:  # one process with clean data has nothing to agree on
            self._account(*agree(notes, self.spec.dp_size, self.device, self._collective))
        self.position += self.spec.global_batch
        return tokens

    def _account(self, skipped: int, corrupt: list[str], errors: list[str]) -> None:
        if errors:
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            raise DataStop(f"corrupt training data at sample {self.position} of the stream: " + "; ".join(errors[:3])
                           + f"{more}. Fix or re-shard it and restart (data.on_corrupt={self.on_corrupt}; with "
                           f"skip, samples of corrupt shards are replaced instead)")
        self.skipped_samples += skipped
        if corrupt:
            self.corrupt_shards = sorted(set(self.corrupt_shards) | set(corrupt))

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
