"""Tokenize documents and pack them into fixed-size WebDataset tar shards (format: see manifest.py).

Documents are read once, tokenized in batches on all cores, assigned to train or val, framed as
``[bos] + ids + [eos]`` and appended to their split's stream; full samples are cut off the stream and
written as they come, so memory stays at one batch whatever the corpus size.

Val assignment of document d (0-based over all inputs, empty documents skipped) is
``blake2b(f"{seed}:{d}", digest_size=8) / 2**64 < val_fraction``: stable under appending documents and
independent of the tokenizer. If that leaves one split without documents (few documents), the last
document goes to it, provided there are at least two and ``val_fraction > 0``.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np
import sentencepiece as spm
import webdataset as wds

import bigtrain
from bigtrain.data.documents import as_paths, iter_documents
from bigtrain.data.errors import DataError
from bigtrain.data.manifest import (FORMAT, MANIFEST_FILE, Manifest, ShardInfo, SplitInfo, TokenizerRef,
                                    member_bytes, token_dtype)
from bigtrain.data.tokenizer import Tokenizer

SHARD_BYTES = 256 << 20  # default shard size
BATCH_CHARS = 4 << 20  # text tokenized per encode_batch call
FLUSH_TOKENS = 1 << 20  # tokens buffered per split before samples are cut
SHARD_NAME = re.compile(r"^(train|val)-\d{6}\.tar(\.tmp\d*)?$")


def is_val(seed: int, index: int, val_fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def assign_splits(docs: Iterable[list[int]], seed: int, val_fraction: float) -> Iterator[tuple[str, list[int]]]:
    """(split, ids) per document; holds back the last one to apply the empty-split rule (module doc)."""
    held: tuple[str, list[int]] | None = None
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


def tokenized(tok: Tokenizer, docs: Iterable[str]) -> Iterator[list[int]]:
    """Ids per document, encoding batches of about BATCH_CHARS characters at once."""
    batch: list[str] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
        if chars >= BATCH_CHARS:
            yield from tok.encode_batch(batch)
            batch, chars = [], 0
    if batch:
        yield from tok.encode_batch(batch)


class HashingFile:
    """Write-through file wrapper computing the sha256 of everything written (tarfile streams into it)."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.f.write(data)


class ShardSink:
    """Writes one split's samples into numbered shards, each under a temp name until complete."""

    def __init__(self, out_dir: Path, split: str, samples_per_shard: int):
        self.out_dir, self.split, self.per_shard = out_dir, split, samples_per_shard
        self.shards: list[ShardInfo] = []  # completed shards
        self.num_samples = 0  # over all shards: the index of the next sample
        self.in_shard = 0
        self.writer: wds.TarWriter | None = None

    @property
    def name(self) -> str:
        return f"{self.split}-{len(self.shards):06d}.tar"

    def open_shard(self) -> None:
        self.tmp = self.out_dir / f"{self.name}.tmp"
        self.file = open(self.tmp, "wb")
        self.hashing = HashingFile(self.file)
        # mtime=0 (an int): a float mtime adds a PAX header per member and breaks the fixed member size
        self.writer = wds.TarWriter(self.hashing, encoder=False, mtime=0)

    def close_shard(self) -> None:
        self.writer.close()  # writes the end-of-archive blocks, leaves our file open
        self.writer = None
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.out_dir / self.name)
        self.shards.append(ShardInfo(self.name, self.in_shard, self.hashing.digest.hexdigest()))
        self.in_shard = 0

    def write(self, sample: np.ndarray) -> None:
        if self.writer is None:
            self.open_shard()
        self.writer.write({"__key__": f"{self.num_samples:010d}", "tokens": sample.tobytes()})
        self.num_samples += 1
        self.in_shard += 1
        if self.in_shard == self.per_shard:
            self.close_shard()

    def finish(self) -> list[ShardInfo]:
        if self.writer is not None:
            self.close_shard()
        return self.shards

    def abort(self) -> None:
        """Remove everything this sink wrote (the run failed: nothing may look complete)."""
        if self.writer is not None:
            self.file.close()
            self.tmp.unlink(missing_ok=True)
        for info in self.shards:
            (self.out_dir / info.file).unlink(missing_ok=True)


class SplitPacker:
    """One split's token stream, cut into overlapping (seq_len + 1)-token samples."""

    def __init__(self, sink: ShardSink, seq_len: int, dtype: np.dtype, bos_id: int, eos_id: int):
        self.sink, self.seq_len, self.dtype = sink, seq_len, dtype
        self.bos, self.eos = np.array([bos_id], dtype), np.array([eos_id], dtype)
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.num_documents = 0
        self.num_tokens = 0

    def add(self, ids: list[int]) -> None:
        self.pending += [self.bos, np.asarray(ids, dtype=self.dtype), self.eos]
        self.pending_tokens += len(ids) + 2
        self.num_documents += 1
        self.num_tokens += len(ids) + 2
        if self.pending_tokens >= max(FLUSH_TOKENS, self.seq_len + 1):
            self.cut()

    def cut(self) -> None:
        """Write every full sample in the buffer; keep the rest (from the last sample's final token)."""
        stream = np.concatenate(self.pending) if self.pending else np.empty(0, self.dtype)
        n = max(0, (len(stream) - 1) // self.seq_len)
        for i in range(n):
            self.sink.write(stream[i * self.seq_len: i * self.seq_len + self.seq_len + 1])
        rest = stream[n * self.seq_len:]
        self.pending, self.pending_tokens = [rest], len(rest)

    def finish(self) -> SplitInfo:
        self.cut()
        shards = self.sink.finish()
        # the buffer's first token closed the last sample, unless there was no sample at all
        dropped = self.pending_tokens - 1 if self.sink.num_samples else self.pending_tokens
        return SplitInfo(self.num_documents, self.sink.num_samples, self.num_tokens, dropped, shards)


def default_samples_per_shard(sample_bytes: int) -> int:
    return max(1, SHARD_BYTES // sample_bytes)


def clear_previous(out_dir: Path) -> None:
    """Remove an earlier dataset here: the manifest first, so a crash in between leaves nothing 'complete'."""
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    for path in out_dir.iterdir():
        if SHARD_NAME.match(path.name):
            path.unlink()


def created_by() -> str:
    return (f"bigtrain {bigtrain.__version__} write_shards (python {sys.version.split()[0]}, sentencepiece "
            f"{spm.__version__}, webdataset {wds.__version__})")


def check_args(seq_len: int, val_fraction: float, samples_per_shard: int | None) -> None:
    if seq_len < 1:
        raise DataError(f"seq_len must be >= 1, got {seq_len}")
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if samples_per_shard is not None and samples_per_shard < 1:
        raise DataError(f"samples_per_shard must be >= 1, got {samples_per_shard}")


def pack_splits(tok: Tokenizer, docs: Iterable[str], packers: dict[str, SplitPacker], seed: int,
                val_fraction: float) -> dict[str, SplitInfo]:
    for split, ids in assign_splits(tokenized(tok, docs), seed, val_fraction):
        packers[split].add(ids)
    return {name: packer.finish() for name, packer in packers.items()}


def write_shards(tokenizer_dir: str | Path, inputs: list[str | Path], seq_len: int, out_dir: str | Path, *,
                 text_key: str = "text", val_fraction: float = 0.01, samples_per_shard: int | None = None,
                 seed: int = 0) -> Manifest:
    """Tokenize ``inputs`` and write train/val shards + manifest.json into ``out_dir`` (see manifest.py).

    An earlier dataset in ``out_dir`` is replaced. On any error the shards of this run are removed and no
    manifest.json is left, so nothing half-written looks complete.
    """
    check_args(seq_len, val_fraction, samples_per_shard)
    tok = Tokenizer.load(tokenizer_dir)
    inputs = as_paths(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_previous(out_dir)
    dtype = np.dtype(token_dtype(tok.vocab_size)).newbyteorder("<")
    sample_bytes = member_bytes(seq_len + 1, dtype.itemsize)
    per_shard = samples_per_shard or default_samples_per_shard(sample_bytes)
    sinks = {name: ShardSink(out_dir, name, per_shard) for name in ("train", "val")}
    packers = {name: SplitPacker(sink, seq_len, dtype, tok.bos_id, tok.eos_id) for name, sink in sinks.items()}
    try:
        splits = pack_splits(tok, iter_documents(inputs, text_key), packers, seed, val_fraction)
        if splits["train"].num_samples == 0:
            raise DataError(no_samples_message(splits, inputs, seq_len))
        manifest = Manifest(
            seq_len=seq_len, sample_tokens=seq_len + 1, dtype=token_dtype(tok.vocab_size),
            member_bytes=sample_bytes, vocab_size=tok.vocab_size, bos_id=tok.bos_id, eos_id=tok.eos_id,
            tokenizer=TokenizerRef(str(tok.path), tok.sha256), inputs=[str(p.resolve()) for p in inputs],
            text_key=text_key, val_fraction=val_fraction, seed=seed, created_by=created_by(), splits=splits,
            format=FORMAT, root=out_dir.resolve())
        manifest.save(out_dir)
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
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
    return f"seq_len {m.seq_len}, {m.dtype}; " + "; ".join(parts)
