"""Read raw documents from JSONL and plain-text files, gzip or not.

A ``.jsonl``/``.json`` file (optionally ``.gz``) holds one document per line, a JSON object whose
``text_key`` is the text. Any other file (``.txt``, ``.md``, no suffix ...) is one document. Gzip is
recognised by its magic bytes, not the suffix. Empty documents and blank JSONL lines are skipped: they
would only add a ``[bos, eos]`` pair. Every error is a :class:`DataError` naming the file and, for
JSONL, the line number.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from bigtrain.data.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".json")
GZIP_MAGIC = b"\x1f\x8b"


def is_jsonl(path: Path) -> bool:
    """JSONL by name: ``x.jsonl``, ``x.json``, ``x.jsonl.gz``, ``x.json.gz``."""
    name = path.name.lower().removesuffix(".gz")
    return name.endswith(JSONL_SUFFIXES)


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, gunzipped if it starts with the gzip magic."""
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    if path.is_dir():
        raise DataError(f"input {path} is a directory; pass the files in it (e.g. {path}/*.jsonl)")
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == GZIP_MAGIC
        return gzip.open(path, "rb") if gzipped else open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot open input {path}: {exc.strerror}") from None


def decode(data: bytes, where: str, base_offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: invalid UTF-8 at byte offset {base_offset + exc.start}") from None


def jsonl_documents(path: Path, f: BinaryIO, text_key: str) -> Iterator[str]:
    offset = 0  # byte offset of the line in the (uncompressed) stream, for UTF-8 errors
    for lineno, raw in enumerate(f, start=1):
        where = f"{path}:{lineno}"
        line = decode(raw, where, offset)
        offset += len(raw)
        if not line.strip():
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


def file_documents(path: Path, text_key: str = "text") -> Iterator[str]:
    """The documents of one file, in order."""
    f = open_binary(path)
    try:
        if is_jsonl(path):
            yield from jsonl_documents(path, f, text_key)
        else:
            text = decode(f.read(), str(path))
            if text:
                yield text
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({exc}); truncated or corrupt gzip?") from None
    finally:
        f.close()


def as_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """A list of paths; a lone path would otherwise be iterated character by character."""
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def iter_documents(paths: Iterable[str | Path], text_key: str = "text") -> Iterator[str]:
    """All non-empty documents of ``paths`` in order; :class:`DataError` if there are none at all."""
    paths = as_paths(paths)
    if not paths:
        raise DataError("no input files given")
    count = 0
    for path in paths:
        for text in file_documents(path, text_key):
            count += 1
            yield text
    if count == 0:
        names = ", ".join(map(str, paths))
        raise DataError(f"no documents in {names} (files empty, or no non-empty {text_key!r} values)")
