"""The embedded default dataset: stdlib docstrings -> tokenizer -> shards, built once and cached.

Layout under the cache directory (``$BIGTRAIN_CACHE``, else ``~/.cache/bigtrain``)::

    embedded/py3.11.7-v2/corpus.jsonl
    embedded/py3.11.7-v2/tokenizer-4096/
    embedded/py3.11.7-v2/shards-4096-128/        <- returned for vocab 4096, seq_len 128

The key holds the Python version (the corpus is its stdlib) and FORMAT_VERSION (bump it when the
corpus, tokenizer or shard recipe changes). Every rank of a job may call :func:`ensure_embedded_dataset`
at once: the first takes an ``fcntl`` lock and builds each stage in a temp directory that is renamed
into place when complete; the others wait on the lock and find it done. Once built, a call is one
``stat``. On a shared filesystem whose ``flock`` is not coherent across hosts the builds are
deterministic, so concurrent builders on different hosts would still produce the same bytes.
"""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from bigtrain.data.corpus import write_embedded_corpus
from bigtrain.data.manifest import MANIFEST_FILE, Manifest
from bigtrain.data.shards import summary, write_shards
from bigtrain.data.tokenizer import META_FILE, train_tokenizer

FORMAT_VERSION = 3  # 2: shards in format bigtrain-shards/2; 3: tokenizer with <mask> (id 3)
TMP_PREFIX = ".tmp-"


def default_cache_dir() -> Path:
    return Path(os.environ.get("BIGTRAIN_CACHE") or Path.home() / ".cache" / "bigtrain")


def embedded_root(cache_dir: Path) -> Path:
    return cache_dir.expanduser().resolve() / "embedded" / f"py{platform.python_version()}-v{FORMAT_VERSION}"


def log(message: str) -> None:
    print(f"[bigtrain.data] {message}", file=sys.stderr, flush=True)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``path``, released when the block ends or the process dies."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_dir(final: Path, marker: str, build: Callable[[Path], object]) -> float | None:
    """Run ``build(tmp)`` in a fresh temp directory next to ``final``, then rename it to ``final``.

    Returns the seconds it took, or None if ``final/marker`` (proof of a finished build) already
    existed. A ``final`` without its marker (tampered with) is rebuilt. Only called under the lock.
    """
    if (final / marker).exists():
        return None
    shutil.rmtree(final, ignore_errors=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent))
    try:
        build(tmp)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - started


def remove_stale_temps(root: Path) -> None:
    """Temp outputs of a builder that died; only called while holding the lock."""
    for path in root.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def ensure_corpus(root: Path) -> Path:
    path = root / "corpus.jsonl"
    if not path.exists():
        started = time.perf_counter()
        write_embedded_corpus(path)
        log(f"built embedded corpus ({path.stat().st_size / 1e6:.1f} MB) in "
            f"{time.perf_counter() - started:.1f} s: {path}")
    return path


def ensure_embedded_dataset(seq_len: int, cache_dir: Path | None = None, vocab_size: int = 4096) -> Path:
    """Shard directory of the embedded corpus for ``seq_len``/``vocab_size``; built on first use."""
    root = embedded_root(Path(cache_dir) if cache_dir else default_cache_dir())
    shard_dir = root / f"shards-{vocab_size}-{seq_len}"
    if (shard_dir / MANIFEST_FILE).exists():
        return shard_dir
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):
        if (shard_dir / MANIFEST_FILE).exists():  # another process built it while we waited
            return shard_dir
        remove_stale_temps(root)
        corpus = ensure_corpus(root)
        tok_dir = root / f"tokenizer-{vocab_size}"
        seconds = build_dir(tok_dir, META_FILE, lambda tmp: train_tokenizer([corpus], vocab_size, tmp))
        if seconds is not None:
            log(f"built a {vocab_size}-token BPE tokenizer in {seconds:.1f} s: {tok_dir}")
        # the manifest records the tokenizer's final path, so shards are built after its rename
        seconds = build_dir(shard_dir, MANIFEST_FILE, lambda tmp: write_shards(tok_dir, [corpus], seq_len, tmp))
        log(f"built shards in {seconds:.1f} s: {shard_dir} ({summary(Manifest.load(shard_dir))})")
    return shard_dir
