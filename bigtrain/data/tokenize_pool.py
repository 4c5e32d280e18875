"""Parallel, order-preserving tokenization of document chunks (the shard tool's CPU-heavy stage).

``tokenized_chunks`` maps the input's chunks (documents.py) to token ids on ``workers`` processes and
yields the results in input order, whatever the number of workers, so the shards are byte-identical
for any ``--workers``. At most ``2 * workers`` chunks are in flight: memory does not grow with the
corpus. Each worker parses its chunks itself (UTF-8, JSON), so reading the input is the only serial
part; errors (naming the file and line) come back in input order, as if read in one process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from bigtrain.data.cleaning import CleaningOptions, dedup_key, filter_reason, no_removals
from bigtrain.data.documents import Chunk, chunk_documents
from bigtrain.data.text_tokenizer import TextTokenizer, load_tokenizer

_worker: tuple[TextTokenizer, str, CleaningOptions] | None = None  # (tokenizer, text_key, cleaning) of this worker


@dataclass(frozen=True)
class EncodedChunk:
    lengths: np.ndarray  # (documents,) int64: tokens per document, without bos/eos
    ids: np.ndarray  # (sum of lengths,) uint32: the documents' ids back to back
    keys: list[int] | None = None  # per document: its dedup hash (cleaning.py), when deduplicating
    removed: dict[str, int] | None = None  # documents the filters removed, by reason (cleaning.py)

    def documents(self) -> Iterator[np.ndarray]:
        ends = np.cumsum(self.lengths)
        for start, end in zip(ends - self.lengths, ends):
            yield self.ids[start:end]


def clean(docs: list[str], opts: CleaningOptions, removed: dict[str, int]) -> list[str]:
    """``docs`` without those the filters remove (counted in ``removed``)."""
    kept = []
    for doc in docs:
        reason = filter_reason(doc, opts)
        if reason is None:
            kept.append(doc)
        else:
            removed[reason] += 1
    return kept


def encode_chunk(chunk: Chunk, tok: TextTokenizer, text_key: str, threads: int,
                 opts: CleaningOptions = CleaningOptions()) -> EncodedChunk:
    if not opts.active:
        docs, removed, keys = chunk_documents(chunk, text_key), None, None
    else:
        dropped, removed = [0], no_removals()
        docs = chunk_documents(chunk, text_key, dropped if opts.drop_undecodable else None)
        removed["undecodable"] = dropped[0]
        docs = clean(docs, opts, removed)
        keys = [dedup_key(d) for d in docs] if opts.dedup else None
    encoded = tok.encode_batch(docs, threads=threads) if docs else []
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    ids = np.concatenate([np.asarray(x, dtype=np.uint32) for x in encoded]) if encoded else np.empty(0, np.uint32)
    return EncodedChunk(lengths, ids, keys, removed)


def _init_worker(tokenizer_dir: str, text_key: str, opts: CleaningOptions) -> None:
    global _worker
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already: no thread pool per worker
    _worker = (load_tokenizer(tokenizer_dir), text_key, opts)


def _encode_in_worker(chunk: Chunk) -> EncodedChunk:
    tok, text_key, opts = _worker
    return encode_chunk(chunk, tok, text_key, 1, opts)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def tokenized_chunks(chunks: Iterable[Chunk], tok: TextTokenizer, text_key: str, workers: int,
                     opts: CleaningOptions = CleaningOptions()) -> Iterator[EncodedChunk]:
    """Encoded chunks in input order; ``workers <= 1`` encodes in this process (sentencepiece threads off)."""
    if workers <= 1:
        for chunk in chunks:
            yield encode_chunk(chunk, tok, text_key, 1, opts)
        return
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(str(tok.path), text_key, opts)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
