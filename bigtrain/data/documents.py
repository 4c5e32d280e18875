"""Read raw documents from JSONL, Parquet and plain-text files, gzip- or zstd-compressed or not.

A ``.jsonl``/``.json`` file (optionally ``.gz`` / ``.zst``) holds one document per line, a JSON object
whose ``text_key`` is the text. A ``.parquet`` file holds one document per row in column ``text_key``
(formats.py: read a record batch at a time). Any other file (``.txt``, ``.md``, no suffix ...) is one
document. Compression is recognised by its magic bytes, not the suffix; directories and globs expand
to the corpus files they hold (formats.py). Empty documents and blank JSONL lines are skipped: they
would only add a ``[bos, eos]`` pair. Every error is a :class:`DataError` naming the file and, for
JSONL, the line number (Parquet: the row).

Reading is split in two so that parsing can run in worker processes: :func:`document_chunks` reads
the files (and gunzips) as a stream of raw :class:`Chunk` s in input order, :func:`chunk_documents`
decodes and parses one chunk. :func:`iter_documents` chains them in one process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from bigtrain.data.errors import DataError
from bigtrain.data.formats import expand_inputs, is_parquet, open_stream, parquet_batches, read_errors, strip_compression

JSONL_SUFFIXES = (".jsonl", ".json")


def is_jsonl(path: Path) -> bool:
    """JSONL by name: ``x.jsonl``, ``x.json``, optionally with ``.gz`` / ``.zst``."""
    return strip_compression(path.name.lower()).endswith(JSONL_SUFFIXES)


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, decompressed if it starts with the gzip or zstd magic."""
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    if path.is_dir():
        raise DataError(f"input {path} is a directory; pass the files in it (e.g. {path}/*.jsonl)")
    try:
        return open_stream(path)
    except OSError as exc:
        raise DataError(f"cannot open input {path}: {exc.strerror}") from None


def decode(data: bytes, where: str, base_offset: int = 0, dropped: list[int] | None = None) -> str | None:
    """``data`` as text. Invalid UTF-8: an error naming ``where``, or with ``dropped`` (cleaning.py's
    drop_undecodable) None, counted in ``dropped[0]``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if dropped is not None:
            dropped[0] += 1
            return None
        raise DataError(f"{where}: invalid UTF-8 at byte offset {base_offset + exc.start}") from None


CHUNK_BYTES = 1 << 20  # raw input bytes per chunk handed to a tokenizer worker


@dataclass(frozen=True)
class Chunk:
    """A slice of the input, read but not yet decoded; :func:`chunk_documents` parses it (in any process).

    ``kind`` "jsonl": consecutive raw lines of one file, ``first_line`` (1-based) and ``offset`` (byte
    offset in the uncompressed stream) locating the first. "rows": consecutive values of a Parquet
    column (None: null), ``first_line`` the first one's row (0-based). "text": whole files, one document
    each, ``paths[i]`` per item.
    """
    kind: str
    paths: tuple[str, ...]
    items: tuple[bytes | None, ...]
    first_line: int = 1
    offset: int = 0


def jsonl_documents(chunk: Chunk, text_key: str, dropped: list[int] | None = None) -> Iterator[str]:
    path, offset = chunk.paths[0], chunk.offset
    for lineno, raw in enumerate(chunk.items, start=chunk.first_line):
        where = f"{path}:{lineno}"
        line = decode(raw, where, offset, dropped)
        offset += len(raw)
        if line is None or not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if text_key not in record:
            keys = ", ".join(map(repr, list(record)[:10])) or "none"
            raise DataError(f"{where}: no key {text_key!r} (keys: {keys}); choose one with --text-key")
        text = record[text_key]
        if not isinstance(text, str):
            raise DataError(f"{where}: {text_key!r} is {type(text).__name__}, expected a string")
        if text:
            yield text


def row_documents(chunk: Chunk, text_key: str, dropped: list[int] | None = None) -> Iterator[str]:
    for row, raw in enumerate(chunk.items, start=chunk.first_line):
        if raw is None:
            raise DataError(f"{chunk.paths[0]}: row {row}: {text_key!r} is null, expected a string")
        text = decode(raw, f"{chunk.paths[0]}: row {row}", 0, dropped)
        if text:
            yield text


def chunk_documents(chunk: Chunk, text_key: str = "text", dropped: list[int] | None = None) -> list[str]:
    """The non-empty documents of a chunk, in order. ``dropped``: count invalid UTF-8 there, do not raise."""
    if chunk.kind == "jsonl":
        return list(jsonl_documents(chunk, text_key, dropped))
    if chunk.kind == "rows":
        return list(row_documents(chunk, text_key, dropped))
    texts = (decode(data, path, 0, dropped) for path, data in zip(chunk.paths, chunk.items))
    return [text for text in texts if text]


def file_chunks(path: Path, chunk_bytes: int) -> Iterator[Chunk]:
    """One JSONL file as chunks of about ``chunk_bytes`` raw bytes (whole lines)."""
    f = open_binary(path)
    lines: list[bytes] = []
    size, first, offset = 0, 1, 0
    try:
        for lineno, raw in enumerate(f, start=1):
            lines.append(raw)
            size += len(raw)
            if size >= chunk_bytes:
                yield Chunk("jsonl", (str(path),), tuple(lines), first, offset)
                lines, first, offset, size = [], lineno + 1, offset + size, 0
    except read_errors() as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({exc}); truncated or corrupt gzip/zstd?") from None
    finally:
        f.close()
    if lines:
        yield Chunk("jsonl", (str(path),), tuple(lines), first, offset)


def parquet_chunks(path: Path, text_key: str, chunk_bytes: int) -> Iterator[Chunk]:
    """One Parquet file as chunks of about ``chunk_bytes`` of text (whole rows)."""
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    values: list[bytes | None] = []
    size, first = 0, 0
    for row, batch in parquet_batches(path, text_key):
        for i, value in enumerate(batch):
            if not values:
                first = row + i
            values.append(value)
            size += len(value) if value else 0
            if size >= chunk_bytes:
                yield Chunk("rows", (str(path),), tuple(values), first)
                values, size = [], 0
    if values:
        yield Chunk("rows", (str(path),), tuple(values), first)


def read_text_file(path: Path) -> bytes:
    f = open_binary(path)
    try:
        return f.read()
    except read_errors() as exc:
        raise DataError(f"{path}: cannot read ({exc}); truncated or corrupt gzip/zstd?") from None
    finally:
        f.close()


def document_chunks(paths: Iterable[str | Path], chunk_bytes: int = CHUNK_BYTES,
                    text_key: str = "text") -> Iterator[Chunk]:
    """The inputs as a stream of chunks, in order; memory holds one chunk (or one text file) at a time.

    ``text_key`` names the Parquet column to read (JSONL keys are looked up by the workers)."""
    texts: list[tuple[str, bytes]] = []
    for path in as_paths(paths):
        if is_jsonl(path) or is_parquet(path):
            if texts:
                yield Chunk("text", *map(tuple, zip(*texts)))
                texts = []
            yield from (parquet_chunks(path, text_key, chunk_bytes) if is_parquet(path)
                        else file_chunks(path, chunk_bytes))
            continue
        texts.append((str(path), read_text_file(path)))
        if sum(len(data) for _, data in texts) >= chunk_bytes:
            yield Chunk("text", *map(tuple, zip(*texts)))
            texts = []
    if texts:
        yield Chunk("text", *map(tuple, zip(*texts)))


def as_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """A list of paths; a lone path would otherwise be iterated character by character."""
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def no_documents(paths: list[Path], text_key: str) -> DataError:
    names = ", ".join(map(str, paths))
    return DataError(f"no documents in {names} (files empty, or no non-empty {text_key!r} values)")


def iter_documents(paths: Iterable[str | Path], text_key: str = "text") -> Iterator[str]:
    """All non-empty documents of ``paths`` in order; :class:`DataError` if there are none at all."""
    paths = expand_inputs(as_paths(paths))
    if not paths:
        raise DataError("no input files given")
    count = 0
    for chunk in document_chunks(paths, text_key=text_key):
        for text in chunk_documents(chunk, text_key):
            count += 1
            yield text
    if count == 0:
        raise no_documents(paths, text_key)
