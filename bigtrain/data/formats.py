"""Input formats beyond plain files: compressed streams (gzip, zstd), Parquet, and directories/globs of inputs.

- **Compression** is recognised by magic bytes, not the suffix: gzip (``1f 8b``) and zstd (``28 b5 2f fd``,
  e.g. Dolma / RedPajama / the Pile ``.jsonl.zst``), both decompressed as a stream.
- **Parquet** (FineWeb, most Hugging Face datasets): only the ``text_key`` column is read, in record
  batches of :data:`PARQUET_BATCH_ROWS` rows, row group after row group, so memory is one batch (plus
  pyarrow's page buffers), not the file. Values are taken as raw bytes (string and binary columns
  alike) and decoded by the tokenizer workers like JSONL lines, so invalid UTF-8 follows the same
  policy and errors name the file and the row (0-based, counted over the whole file).
- **Directories** stand for the corpus files under them (recursively, sorted by path; hidden files and
  other suffixes skipped: :data:`CORPUS_SUFFIXES`); an argument that does not exist but contains
  ``*``, ``?`` or ``[`` is a glob (``**`` recursive), sorted. The expanded, sorted list is what the
  manifest records, so the output does not depend on the order the shell or the filesystem lists files.
"""

from __future__ import annotations

import glob
import gzip
import io
from pathlib import Path
from typing import BinaryIO, Iterator

from bigtrain.data.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")
CORPUS_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst",
                   ".jsonl.zstd", ".txt.gz", ".txt.zst")
PARQUET_BATCH_ROWS = 1024


def strip_compression(name: str) -> str:
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(".parquet")


def open_stream(path: Path) -> BinaryIO:
    """The file's bytes, decompressed if it starts with the gzip or zstd magic."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == GZIP_MAGIC:
        return gzip.open(path, "rb")
    if magic == ZSTD_MAGIC:
        return io.BufferedReader(ZstdStream(open(path, "rb")), buffer_size=1 << 20)
    return open(path, "rb")


class ZstdStream(io.RawIOBase):
    """Decompressed bytes of a ``.zst`` file: frames back to back (``cat a.zst b.zst``) read as one stream,
    and a file that ends inside a frame raises ``EOFError`` (zstandard's ``stream_reader`` returns a
    silent EOF there: a truncated download would lose its tail unnoticed)."""

    def __init__(self, raw: BinaryIO, read_bytes: int = 1 << 20):
        import zstandard

        self.raw, self.read_bytes, self.dctx = raw, read_bytes, zstandard.ZstdDecompressor()
        self.obj, self.pending, self.in_frame = self.dctx.decompressobj(), b"", False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            data = self.raw.read(self.read_bytes)
            if not data:
                if self.in_frame:
                    raise EOFError("the file ends inside a zstd frame")
                return 0
            self.pending = self.feed(data)
        n = min(len(buffer), len(self.pending))
        buffer[:n], self.pending = self.pending[:n], self.pending[n:]
        return n

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            self.in_frame = True
            out.append(self.obj.decompress(data))
            if not self.obj.eof:
                break
            data, self.obj, self.in_frame = self.obj.unused_data, self.dctx.decompressobj(), False
        return b"".join(out)

    def close(self) -> None:
        self.raw.close()
        super().close()


def read_errors() -> tuple[type[BaseException], ...]:
    """What a truncated or corrupt compressed stream raises while being read."""
    import zlib

    errors: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def parquet_batches(path: Path, text_key: str) -> Iterator[tuple[int, list[bytes | None]]]:
    """(first row, raw values of ``text_key``) per record batch of a Parquet file; None for a null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    schema = pf.schema_arrow
    if text_key not in schema.names:
        keys = ", ".join(map(repr, schema.names[:10])) or "none"
        raise DataError(f"{path}: no column {text_key!r} (columns: {keys}); choose one with --text-key")
    kind = schema.field(text_key).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)):
        raise DataError(f"{path}: column {text_key!r} is {kind}, expected a string column")
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_key], use_threads=False):
            values = batch.column(0).cast(pa.large_binary()).to_pylist()
            yield row, values
            row += len(values)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read Parquet after row {row} ({exc}); truncated or corrupt?") from None


def is_corpus_file(path: Path) -> bool:
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(CORPUS_SUFFIXES)


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Directories and globs replaced by the files they stand for (module doc); other paths kept as given."""
    out: list[Path] = []
    for path in paths:
        text = str(path)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and is_corpus_file(p)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise DataError(f"input directory {path} holds no corpus files ({', '.join(CORPUS_SUFFIXES[:4])}, ...)")
            out += files
        elif not path.exists() and any(c in text for c in "*?["):
            files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not files:
                raise DataError(f"input pattern {text} matches no files")
            out += files
        else:
            out.append(path)
    return out
