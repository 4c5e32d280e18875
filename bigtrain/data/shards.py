"""Tokenize documents and pack them into compact WebDataset tar shards (format: manifest.py, tarlayout.py).

Pipeline: the inputs are read as a stream of chunks (documents.py), tokenized on ``workers`` processes
in input order (tokenize_pool.py), assigned to train or val, framed as ``[bos] + ids + [eos]`` and
appended to their split's stream; full samples are cut off the stream and written block by block as
they come, so memory stays bounded whatever the corpus size, and the output is byte-identical for
any number of workers.

Val assignment of document d (0-based over all inputs, empty documents skipped) is
``blake2b(f"{seed}:{d}", digest_size=8) / 2**64 < val_fraction``: stable under appending documents and
independent of the tokenizer. If that leaves one split without documents (few documents), the last
document goes to it, provided there are at least two and ``val_fraction > 0``.

Idempotent, not resumable: a run writes into ``<out>/.tmp-shards-<pid>/`` and only when everything is
written replaces the earlier dataset (manifest removed first, written last). A failed or killed run
leaves an earlier complete dataset untouched (its temp dir is removed by the next run). Re-running with
unchanged inputs (path, size, mtime), tokenizer and options finds the dataset up to date, verifies
every shard (size, tar headers, sha256: a read at disk speed, no tokenization) and returns at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np
import sentencepiece as spm

import bigtrain
from bigtrain.data import tarlayout
from bigtrain.data.cleaning import CleaningOptions, describe, no_removals
from bigtrain.data.documents import CHUNK_BYTES, as_paths, document_chunks, no_documents
from bigtrain.data.errors import DataError
from bigtrain.data.formats import expand_inputs
from bigtrain.data.integrity import verify_directory
from bigtrain.data.manifest import (FORMAT, MANIFEST_FILE, Manifest, ShardInfo, SplitInfo, TokenizerRef,
                                    token_dtype)
from bigtrain.data.tokenize_pool import EncodedChunk, default_workers, tokenized_chunks
from bigtrain.data.text_tokenizer import TextTokenizer, load_tokenizer

SHARD_BYTES = 256 << 20  # default shard size
BLOCK_BYTES = 1 << 20  # default tar member size: one header per MiB of samples
FLUSH_TOKENS = 1 << 18  # tokens buffered per split before samples are cut
SHARD_NAME = re.compile(r"^(train|val)-\d{6}\.tar(\.tmp\d*)?$")
TMP_PREFIX = ".tmp-shards-"


def is_val(seed: int, index: int, val_fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def assign_splits(docs: Iterable[np.ndarray], seed: int, val_fraction: float) -> Iterator[tuple[str, np.ndarray]]:
    """(split, ids) per document; holds back the last one to apply the empty-split rule (module doc)."""
    held: tuple[str, np.ndarray] | None = None
    counts = {"train": 0, "val": 0}
    for index, ids in enumerate(docs):
        if held is not None:
            yield held
        split = "val" if is_val(seed, index, val_fraction) else "train"
        counts[split] += 1
        held = (split, ids)
    if held is None:
        return
    split, ids = held
    other = "train" if split == "val" else "val"
    if val_fraction > 0 and counts[other] == 0 and counts[split] >= 2:
        split = other
    yield split, ids


@dataclass(frozen=True)
class Layout:
    seq_len: int
    dtype: np.dtype  # little-endian uint16 / uint32
    samples_per_block: int
    samples_per_shard: int

    @property
    def sample_bytes(self) -> int:
        return (self.seq_len + 1) * self.dtype.itemsize


def choose_layout(seq_len: int, vocab_size: int, samples_per_shard: int | None,
                  samples_per_block: int | None) -> Layout:
    dtype = np.dtype(token_dtype(vocab_size)).newbyteorder("<")
    sample_bytes = (seq_len + 1) * dtype.itemsize
    block = samples_per_block or max(1, BLOCK_BYTES // sample_bytes)
    if samples_per_shard:
        return Layout(seq_len, dtype, min(block, samples_per_shard), samples_per_shard)
    return Layout(seq_len, dtype, block, block * max(1, SHARD_BYTES // (block * sample_bytes)))


class HashingFile:
    """Write-through file wrapper computing the sha256 of everything written."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.f.write(data)


class ShardSink:
    """Writes one split's samples into numbered shards of fixed-size members (tarlayout.py)."""

    def __init__(self, out_dir: Path, split: str, layout: Layout):
        self.out_dir, self.split, self.layout = out_dir, split, layout
        self.shards: list[ShardInfo] = []  # completed shards
        self.num_samples = 0  # samples in written members: the split index of the next block's first sample
        self.in_shard = 0  # samples written to the open shard
        self.block: list[np.ndarray] = []  # samples of the member being filled
        self.block_count = 0
        self.file: HashingFile | None = None

    @property
    def name(self) -> str:
        return f"{self.split}-{len(self.shards):06d}.tar"

    def write(self, samples: np.ndarray) -> None:
        """Append samples (n, seq_len + 1); members and shards are written as they fill."""
        k, per_shard = self.layout.samples_per_block, self.layout.samples_per_shard
        i = 0
        while i < len(samples):
            take = min(len(samples) - i, k - self.block_count, per_shard - self.in_shard - self.block_count)
            self.block.append(samples[i:i + take])
            self.block_count += take
            i += take
            if self.block_count == k or self.in_shard + self.block_count == per_shard:
                self.flush_block()
            if self.in_shard == per_shard:
                self.close_shard()

    def flush_block(self) -> None:
        if self.file is None:
            self.file = HashingFile(open(self.out_dir / self.name, "wb"))
        size = self.block_count * self.layout.sample_bytes
        self.file.write(tarlayout.member_header(self.num_samples, size))
        for part in self.block:  # (k, seq_len + 1) windows of the packer's stream
            self.file.write(np.ascontiguousarray(part, dtype=self.layout.dtype).tobytes())
        self.file.write(bytes(tarlayout.padded(size) - size))
        self.num_samples += self.block_count
        self.in_shard += self.block_count
        self.block, self.block_count = [], 0

    def close_shard(self) -> None:
        self.file.write(bytes(tarlayout.END_BYTES))
        self.file.f.flush()
        os.fsync(self.file.f.fileno())
        self.file.f.close()
        self.shards.append(ShardInfo(self.name, self.in_shard, self.file.digest.hexdigest()))
        self.file, self.in_shard = None, 0

    def finish(self) -> list[ShardInfo]:
        if self.block_count:
            self.flush_block()
        if self.file is not None:
            self.close_shard()
        return self.shards


class SplitPacker:
    """One split's token stream, cut into overlapping (seq_len + 1)-token samples."""

    def __init__(self, sink: ShardSink, bos_id: int, eos_id: int):
        self.sink, self.seq_len, self.dtype = sink, sink.layout.seq_len, sink.layout.dtype
        self.bos, self.eos = np.array([bos_id], self.dtype), np.array([eos_id], self.dtype)
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.num_documents = 0
        self.num_tokens = 0

    def add(self, ids: np.ndarray) -> None:
        self.pending += [self.bos, ids.astype(self.dtype, copy=False), self.eos]
        self.pending_tokens += len(ids) + 2
        self.num_documents += 1
        self.num_tokens += len(ids) + 2
        if self.pending_tokens >= max(FLUSH_TOKENS, self.seq_len + 1):
            self.cut()

    def cut(self) -> None:
        """Write every full sample in the buffer; keep the rest (from the last sample's final token)."""
        stream = np.concatenate(self.pending) if self.pending else np.empty(0, self.dtype)
        n = max(0, (len(stream) - 1) // self.seq_len)
        if n:
            windows = np.lib.stride_tricks.sliding_window_view(stream, self.seq_len + 1)[::self.seq_len][:n]
            self.sink.write(windows)
        rest = stream[n * self.seq_len:]
        self.pending, self.pending_tokens = [rest], len(rest)

    def finish(self) -> SplitInfo:
        self.cut()
        shards = self.sink.finish()
        # the buffer's first token closed the last sample, unless there was no sample at all
        dropped = self.pending_tokens - 1 if self.sink.num_samples else self.pending_tokens
        return SplitInfo(self.num_documents, self.sink.num_samples, self.num_tokens, dropped, shards)


def created_by() -> str:
    return f"bigtrain {bigtrain.__version__} write_shards (python {sys.version.split()[0]}, sentencepiece {spm.__version__})"


def check_args(seq_len: int, val_fraction: float, samples_per_shard: int | None,
               samples_per_block: int | None) -> None:
    if seq_len < 1:
        raise DataError(f"seq_len must be >= 1, got {seq_len}")
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    for name, value in (("samples_per_shard", samples_per_shard), ("samples_per_block", samples_per_block)):
        if value is not None and value < 1:
            raise DataError(f"{name} must be >= 1, got {value}")


def input_stats(inputs: list[Path]) -> list[list[int]]:
    stats = []
    for path in inputs:
        try:
            st = path.stat()
        except OSError as exc:
            raise DataError(f"input {path} does not exist" if isinstance(exc, FileNotFoundError)
                            else f"cannot read input {path}: {exc.strerror}") from None
        stats.append([st.st_size, st.st_mtime_ns])
    return stats


def kept_documents(encoded: Iterable[EncodedChunk], removed: dict[str, int]) -> Iterator[np.ndarray]:
    """The documents' ids in input order, without exact duplicates of earlier ones when the chunks carry
    dedup keys (cleaning.py): one set of keys in this single consuming process, so any --workers agrees."""
    seen: set[int] = set()
    for chunk in encoded:
        for reason, n in (chunk.removed or {}).items():
            removed[reason] += n
        if chunk.keys is None:
            yield from chunk.documents()
            continue
        for key, ids in zip(chunk.keys, chunk.documents()):
            if key in seen:
                removed["duplicates"] += 1
            else:
                seen.add(key)
                yield ids


def pack_splits(tok: TextTokenizer, inputs: list[Path], text_key: str, packers: dict[str, SplitPacker], seed: int,
                val_fraction: float, workers: int, chunk_bytes: int,
                cleaning: CleaningOptions = CleaningOptions()) -> tuple[dict[str, SplitInfo], dict[str, int]]:
    """(per split: what was written, documents removed by cleaning per reason)."""
    encoded = tokenized_chunks(document_chunks(inputs, chunk_bytes, text_key), tok, text_key, workers, cleaning)
    removed = no_removals()
    for split, ids in assign_splits(kept_documents(encoded, removed), seed, val_fraction):
        packers[split].add(ids)
    splits = {name: packer.finish() for name, packer in packers.items()}
    if not any(s.num_documents for s in splits.values()):
        if any(removed.values()):
            raise DataError(f"cleaning removed every document of {', '.join(map(str, inputs))}: {describe(removed)}")
        raise no_documents(inputs, text_key)
    return splits, removed


def expected_shard_counts(num_samples: int, per_shard: int) -> list[int]:
    full, rest = divmod(num_samples, per_shard)
    return [per_shard] * full + ([rest] if rest else [])


def up_to_date(out_dir: Path, job: dict, layout: Layout, workers: int, cleaning: dict) -> Manifest | None:
    """The dataset in ``out_dir`` if it was made by the same job and every shard verifies, else None."""
    if not (out_dir / MANIFEST_FILE).exists():
        return None
    try:
        m = Manifest.load(out_dir)
    except DataError:
        return None
    same = all(getattr(m, key) == value for key, value in job.items()) and m.cleaning.get("options", {}) == cleaning
    same = same and all(
        [s.num_samples for s in split.shards] == expected_shard_counts(split.num_samples, layout.samples_per_shard)
        for split in m.splits.values())
    if not same:
        return None
    try:
        verify_directory(m, workers)
    except DataError as exc:
        log(f"{out_dir} holds this dataset, but: {exc}; rebuilding")
        return None
    return m


def log(message: str) -> None:
    print(f"[bigtrain.data] {message}", file=sys.stderr, flush=True)


def commit(tmp: Path, out_dir: Path, manifest: Manifest) -> None:
    """Replace the dataset in ``out_dir`` by the shards in ``tmp``: manifest removed first, written last."""
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    for path in out_dir.iterdir():
        if SHARD_NAME.match(path.name):
            path.unlink()
    for path in sorted(tmp.iterdir()):
        os.replace(path, out_dir / path.name)
    manifest.save(out_dir)


def write_shards(tokenizer_dir: str | Path, inputs: list[str | Path], seq_len: int, out_dir: str | Path, *,
                 text_key: str = "text", val_fraction: float = 0.01, samples_per_shard: int | None = None,
                 samples_per_block: int | None = None, seed: int = 0, workers: int | None = None,
                 chunk_bytes: int = CHUNK_BYTES, cleaning: CleaningOptions = CleaningOptions()) -> Manifest:
    """Tokenize ``inputs`` and write train/val shards + manifest.json into ``out_dir`` (module doc).

    ``workers``: tokenizer processes (default: all cores; 1 = in this process); ``chunk_bytes``: raw
    input per tokenizer task. Neither changes the output. ``cleaning``: filters and dedup (cleaning.py;
    off by default). Returns the manifest (of the existing dataset, if it was already up to date).
    """
    check_args(seq_len, val_fraction, samples_per_shard, samples_per_block)
    cleaning.check()
    cleaning_options = cleaning.to_dict() if cleaning.active else {}
    tok = load_tokenizer(tokenizer_dir)
    inputs, out_dir = as_paths(inputs), Path(out_dir)
    if not inputs:
        raise DataError("no input files given")
    inputs = expand_inputs(inputs)  # directories and globs -> sorted files (formats.py)
    workers = workers or default_workers()
    layout = choose_layout(seq_len, tok.vocab_size, samples_per_shard, samples_per_block)
    job = dict(seq_len=seq_len, samples_per_block=layout.samples_per_block, vocab_size=tok.vocab_size,
               tokenizer=TokenizerRef(str(tok.path), tok.sha256, tok.backend), inputs=[str(p.resolve()) for p in inputs],
               input_stats=input_stats(inputs), text_key=text_key, val_fraction=val_fraction, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = up_to_date(out_dir, job, layout, workers, cleaning_options)
    if existing is not None:
        log(f"{out_dir} is up to date (same inputs, tokenizer and options; every shard verified): nothing to do")
        return existing
    for stale in out_dir.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir / f"{TMP_PREFIX}{os.getpid()}"
    tmp.mkdir()
    try:
        packers = {name: SplitPacker(ShardSink(tmp, name, layout), tok.bos_id, tok.eos_id) for name in ("train", "val")}
        splits, removed = pack_splits(tok, inputs, text_key, packers, seed, val_fraction, workers, chunk_bytes, cleaning)
        if splits["train"].num_samples == 0:
            raise DataError(no_samples_message(splits, inputs, seq_len))
        manifest = Manifest(**job, sample_tokens=seq_len + 1, dtype=token_dtype(tok.vocab_size),
                            member_bytes=tarlayout.member_bytes(layout.samples_per_block, layout.sample_bytes),
                            bos_id=tok.bos_id, eos_id=tok.eos_id, created_by=created_by(), splits=splits,
                            format=FORMAT, root=out_dir.resolve(),
                            cleaning={"options": cleaning_options, "removed": removed} if cleaning.active else {})
        commit(tmp, out_dir, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def write_samples(out_dir: str | Path, splits: dict[str, np.ndarray], vocab_size: int, tokenizer: TokenizerRef, *,
                  samples_per_shard: int | None = None, samples_per_block: int | None = None) -> Manifest:
    """Write already-packed samples ({split: (n, seq_len + 1) ids}) as a dataset: synthetic data for tests
    and benchmarks. Document counts are 0 and the inputs empty; bos/eos are the tokenizer defaults."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seq_len = next(iter(splits.values())).shape[1] - 1
    layout = choose_layout(seq_len, vocab_size, samples_per_shard, samples_per_block)
    infos = {}
    for split in ("train", "val"):
        sink = ShardSink(out_dir, split, layout)
        samples = splits.get(split, np.empty((0, seq_len + 1), layout.dtype))
        sink.write(samples)
        infos[split] = SplitInfo(0, len(samples), len(samples) * seq_len + (1 if len(samples) else 0), 0, sink.finish())
    manifest = Manifest(seq_len=seq_len, sample_tokens=seq_len + 1, dtype=token_dtype(vocab_size),
                        samples_per_block=layout.samples_per_block,
                        member_bytes=tarlayout.member_bytes(layout.samples_per_block, layout.sample_bytes),
                        vocab_size=vocab_size, bos_id=1, eos_id=2, tokenizer=tokenizer, inputs=[], input_stats=[],
                        text_key="", val_fraction=0.0, seed=0, created_by=created_by() + " write_samples",
                        splits=infos, format=FORMAT, root=out_dir.resolve())
    manifest.save(out_dir)
    return manifest


def no_samples_message(splits: dict[str, SplitInfo], inputs: list[Path], seq_len: int) -> str:
    train, total = splits["train"], sum(s.num_tokens for s in splits.values())
    names = ", ".join(map(str, inputs))
    return (f"no training samples from {names}: {total} tokens in all, {train.num_tokens} of them in the train "
            f"split ({train.num_documents} documents), but a sample needs seq_len + 1 = {seq_len + 1}; "
            f"use a smaller --seq-len or more text")


def summary(m: Manifest) -> str:
    """One line describing a written dataset, for the CLI and the embedded builder's log."""
    parts = [f"{name}: {s.num_samples} samples in {len(s.shards)} shards ({s.num_documents} docs, "
             f"{s.num_tokens} tokens, {s.dropped_tokens} dropped)" for name, s in m.splits.items()]
    cleaned = f"; cleaning removed {describe(m.cleaning['removed'])}" if m.cleaning else ""
    return f"seq_len {m.seq_len}, {m.dtype}; " + "; ".join(parts) + cleaned
