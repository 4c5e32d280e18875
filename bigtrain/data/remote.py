"""Shard directories behind a URL, read through a bounded node-local cache.

``data.path`` / ``data.sources[].path`` may name a shard directory as a URL:

- ``http://host/shards`` or ``https://...``: ``URL/manifest.json``, ``URL/train-000000.tar``, ... (stdlib
  HTTP client: timeouts, status codes and retries under our control, no ``curl`` binary needed);
- ``pipe:CMD``: a shell command writing one file to stdout, ``{}`` standing for the file name, as in
  WebDataset: ``pipe:aws s3 cp s3://bucket/shards/{} -``, ``pipe:cat /nfs/shards/{}``; a non-zero exit
  status is a failed fetch;
- any other ``scheme://`` (``s3://``, ``gs://``, ``hf://`` ...): fsspec, with its protocol package
  (``s3fs``, ``gcsfs`` ...) installed by the user.

The manifest is fetched first (a few KB). Its bytes and the URL name the dataset's cache folder
``data.cache_dir/<sha256(url, manifest)[:16]>/``, so a re-sharded dataset at the same URL never reuses
stale shards. A shard is fetched when a process first needs it (or ahead of time by the prefetch
thread): into a temporary file whose full size is reserved first, hashed while it streams, checked
against the manifest's sha256 and size, then renamed into place. Only verified shards ever have their
final name, so every rank trusts a cached file without re-hashing it.

**Shared by the ranks of a node**: a per-shard ``flock`` makes one process fetch while the others
wait for it; the space accounting and the rename happen under one cache-wide lock. **Bounded**: the
files in ``data.cache_dir`` (finished shards + reserved downloads, over all datasets) never exceed
``data.cache_bytes``; room is made by deleting the least recently used shards (mtime, refreshed on every
use). A process copies its samples out of a memory map that it drops after each read, so a shard
evicted while being read stays readable until that read ends (its disk space is freed then).

**Failures**: each fetch is tried :data:`ATTEMPTS` times with exponential backoff (0.5 s, 1 s, 2 s ...);
a shard still unavailable raises :class:`CorruptShardError` naming its URL, which ``data.on_corrupt``
handles like a corrupt local shard (stop with a checkpoint, or skip and count). After such a failure the
process fails fast (one attempt per shard) for :data:`FAIL_FAST_S` seconds, so ``skip`` does not spend
minutes retrying every substitute while a server is down.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from bigtrain.data.errors import DataError

ATTEMPTS = 5
BACKOFF_S = 0.5
TIMEOUT_S = 30.0  # per network operation (connect, each read)
FAIL_FAST_S = 60.0
READ_BYTES = 1 << 20
CACHE_LOCK = ".cache.lock"  # held to account for space, evict, reserve and rename
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "bigtrain-shard-cache"
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str) -> bool:
    return path.startswith("pipe:") or bool(SCHEME.match(str(path)))


def check_url(url: str) -> str | None:
    """Why ``url`` cannot name a shard directory (None if it can)."""
    if url.startswith("pipe:") and "{}" not in url:
        return (f"{url!r}: a pipe: URL names the directory with {{}} where the file name goes, e.g. "
                f"'pipe:aws s3 cp s3://bucket/shards/{{}} -'")
    return None


def file_url(base: str, name: str) -> str:
    if base.startswith("pipe:"):
        return base.replace("{}", name)
    return base.rstrip("/") + "/" + name


def url_name(url: str) -> str:
    """A default source name: the URL's last path component (for pipe:, the one before ``{}``)."""
    text = url.split("{}", 1)[0] if url.startswith("pipe:") else url.split("?", 1)[0]
    parts = [p for p in re.split(r"[/\s]+", text.rstrip("/ ")) if p]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", parts[-1]) if parts else "remote"


def open_url(url: str) -> tuple[BinaryIO, callable]:
    """(stream, finish) for one file; ``finish()`` raises if the transfer failed (pipe exit status)."""
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[len("pipe:"):], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def finish() -> None:
            err = proc.stderr.read().decode(errors="replace").strip()
            if proc.wait() != 0:
                raise OSError(f"command exited with status {proc.returncode}: {err[-300:]}")
        return proc.stdout, finish
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=TIMEOUT_S), lambda: None
    try:
        import fsspec

        return fsspec.open(url, "rb").open(), lambda: None
    except ImportError as exc:  # e.g. s3fs / gcsfs missing: not transient, say what to install
        raise DataError(f"cannot read {url}: {exc} (install the fsspec protocol package, e.g. s3fs or gcsfs)") from None


def stream_into(url: str, out: BinaryIO, limit: int | None = None) -> tuple[int, str]:
    """Copy ``url`` into ``out``; -> (bytes, sha256). More than ``limit`` bytes is an error (a wrong file)."""
    digest, size = hashlib.sha256(), 0
    stream, finish = open_url(url)
    try:
        while block := stream.read(READ_BYTES):
            digest.update(block)
            out.write(block)
            size += len(block)
            if limit is not None and size > limit:
                raise OSError(f"more than the {limit} bytes the manifest lists")
        finish()
    finally:
        stream.close()
    return size, digest.hexdigest()


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def with_retries(what: str, attempts: int, fn):
    """``fn()`` tried ``attempts`` times with exponential backoff; DataError (not transient) passes through."""
    for attempt in range(attempts):
        try:
            return fn()
        except DataError:
            raise
        except Exception as exc:  # network, HTTP, subprocess, fsspec backends: all transient here
            last = describe_error(exc)
            if attempt + 1 < attempts:
                time.sleep(BACKOFF_S * 2 ** attempt)
    raise OSError(f"{what} unavailable after {attempts} attempt(s): {last}")


def fetch_manifest(url: str) -> bytes:
    """The bytes of ``URL/manifest.json`` (retried); a DataError naming the URL if it stays unavailable."""
    import io

    def get() -> bytes:
        buf = io.BytesIO()
        stream_into(file_url(url, "manifest.json"), buf)
        return buf.getvalue()

    try:
        return with_retries(file_url(url, "manifest.json"), ATTEMPTS, get)
    except OSError as exc:
        raise DataError(f"cannot read the shard manifest: {exc}") from None


def dataset_dir(cache_dir: Path, url: str, manifest: bytes) -> Path:
    key = hashlib.sha256(url.encode() + b"\0" + manifest).hexdigest()[:16]
    return Path(cache_dir) / key


@contextmanager
def locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cache_files(cache_dir: Path) -> list[tuple[Path, os.stat_result]]:
    """Finished shards and reserved downloads of every dataset in the cache, with their stat."""
    found = []
    for path in Path(cache_dir).glob("*/*"):
        if path.suffix == ".tar" or ".tar.tmp" in path.name:
            try:
                found.append((path, path.stat()))
            except FileNotFoundError:  # removed meanwhile
                pass
    return found


def cache_usage(cache_dir: Path) -> int:
    """Bytes the cache holds, read under its lock (a consistent snapshot: renames happen under it too)."""
    with locked(Path(cache_dir) / CACHE_LOCK):
        return sum(st.st_size for _, st in cache_files(cache_dir))
