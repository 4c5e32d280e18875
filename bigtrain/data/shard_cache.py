"""One remote shard directory in the node-local cache: fetch, verify, evict, prefetch (design: remote.py)."""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bigtrain.data import tarlayout
from bigtrain.data.errors import CorruptShardError, DataError
from bigtrain.data.manifest import MANIFEST_FILE, Manifest, check_consistent, from_dict
from bigtrain.data.remote import (ATTEMPTS, CACHE_LOCK, DEFAULT_CACHE_DIR, FAIL_FAST_S, cache_files, dataset_dir, fetch_manifest,
                                  file_url, locked, stream_into, with_retries)

RESERVE_WAIT_S = 120.0
PREFETCH_THREADS = 2
PREFETCH_PENDING = 4  # shards queued ahead at most: look-ahead must not evict what is being read


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_download(path: Path) -> bool:
    """A reserved download whose process died (``NAME.tar.tmp<pid>``)."""
    pid = path.name.rsplit(".tmp", 1)[-1]
    return pid.isdigit() and not pid_alive(int(pid))


class ShardCache:
    """The shards of the dataset at ``url``, cached in ``folder`` (inside the shared ``cache_dir``)."""

    def __init__(self, url: str, folder: Path, cache_dir: Path, cache_bytes: int):
        self.url, self.folder, self.cache_dir, self.cache_bytes = url, Path(folder), Path(cache_dir), cache_bytes
        self._reset()

    def _reset(self) -> None:
        self.fail_fast_until = 0.0
        self._executor: ThreadPoolExecutor | None = None
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # DataLoader workers: their own thread pool and state
        return {k: self.__dict__[k] for k in ("url", "folder", "cache_dir", "cache_bytes")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def url_of(self, name: str) -> str:
        return file_url(self.url, name)

    def open(self, name: str, size: int, sha256: str) -> np.ndarray:
        """The verified shard as a read-only uint8 array (memory-mapped), fetched first if not cached."""
        for _ in range(3):
            path = self.folder / name
            try:
                with open(path, "rb") as f:
                    os.utime(f.fileno())  # most recently used: evicted last
                    if size == 0:
                        return np.empty(0, np.uint8)
                    return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
            except FileNotFoundError:
                self.fetch(name, size, sha256)
        raise CorruptShardError(self.url_of(name), f"shard {self.url_of(name)} was evicted from data.cache_dir "
                                                   f"{self.cache_dir} before it could be read, 3 times: raise data.cache_bytes")

    def fetch(self, name: str, size: int, sha256: str) -> None:
        """Bring the shard into the cache (one process of the node fetches, the others wait for it)."""
        url = self.url_of(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        with locked(self.folder / f".{name}.lock"):
            if (self.folder / name).exists():
                return
            attempts = 1 if time.monotonic() < self.fail_fast_until else ATTEMPTS
            try:
                with_retries(f"shard {url}", attempts, lambda: self.download(name, url, size, sha256))
            except OSError as exc:
                self.fail_fast_until = time.monotonic() + FAIL_FAST_S
                raise CorruptShardError(url, str(exc)) from None

    def download(self, name: str, url: str, size: int, sha256: str) -> None:
        tmp = self.folder / f"{name}.tmp{os.getpid()}"
        self.reserve(tmp, size, url)
        try:
            with open(tmp, "r+b") as out:
                got, digest = stream_into(url, out, limit=size)
            if got != size:
                raise OSError(f"got {got} bytes, {self.folder / MANIFEST_FILE} says {size}")
            if digest != sha256:
                raise OSError(f"sha256 {digest[:16]}.. differs from {sha256[:16]}.. in the manifest")
            with locked(self.cache_dir / CACHE_LOCK):  # so a snapshot under the lock never counts a shard twice
                os.replace(tmp, self.folder / name)  # only verified shards have their final name
        finally:
            tmp.unlink(missing_ok=True)

    def reserve(self, tmp: Path, size: int, url: str) -> None:
        """Create ``tmp`` at its full ``size`` once the cache has room, evicting least recently used shards."""
        if size > self.cache_bytes:
            raise DataError(f"data.cache_bytes={self.cache_bytes} is smaller than shard {url} ({size} bytes)")
        deadline = time.monotonic() + RESERVE_WAIT_S
        while True:
            with locked(self.cache_dir / CACHE_LOCK):
                if self.make_room(size):
                    with open(tmp, "wb") as f:
                        f.truncate(size)
                    return
            if time.monotonic() > deadline:
                raise DataError(f"data.cache_dir {self.cache_dir}: no room for {url} ({size} bytes) within "
                                f"data.cache_bytes={self.cache_bytes} for {RESERVE_WAIT_S:.0f} s: downloads of other "
                                f"processes hold it; raise data.cache_bytes")
            time.sleep(0.05)

    def make_room(self, size: int) -> bool:
        """Under the cache lock: evict LRU shards until ``size`` more bytes fit; False if downloads hold it."""
        files = cache_files(self.cache_dir)
        for path, _ in files:
            if ".tar.tmp" in path.name and stale_download(path):
                path.unlink(missing_ok=True)
        files = [(p, st) for p, st in files if p.exists()]
        total = sum(st.st_size for _, st in files)
        shards = sorted((st.st_mtime_ns, p, st.st_size) for p, st in files if p.suffix == ".tar")
        while total + size > self.cache_bytes and shards:
            _, path, nbytes = shards.pop(0)
            path.unlink(missing_ok=True)  # a process still reading it keeps its mapping until the read ends
            total -= nbytes
        return total + size <= self.cache_bytes

    def prefetch(self, shards: list[tuple[str, int, str]]) -> None:
        """Fetch these (name, size, sha256) in background threads, a few at a time; errors surface on use."""
        for name, size, sha256 in shards:
            with self._lock:
                if name in self._pending or len(self._pending) >= PREFETCH_PENDING or (self.folder / name).exists():
                    continue
                self._pending.add(name)
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="bigtrain-prefetch")
            self._executor.submit(self._prefetch_one, name, size, sha256)

    def _prefetch_one(self, name: str, size: int, sha256: str) -> None:
        try:
            self.fetch(name, size, sha256)
        except DataError:
            pass  # the reader meets the same error when it needs the shard, and on_corrupt decides
        finally:
            with self._lock:
                self._pending.discard(name)


def load_remote_manifest(url: str, cache_dir: str | Path = "", cache_bytes: int = 32 << 30) -> Manifest:
    """The manifest of the shard directory at ``url``, its shards read through the node-local cache."""
    data = fetch_manifest(url)
    cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
    folder = dataset_dir(cache_dir, url, data)
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / MANIFEST_FILE
    tmp = folder / f".{MANIFEST_FILE}.tmp{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, local)  # a copy, for inspection; the cache key already covers its bytes
    try:
        parsed = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{file_url(url, MANIFEST_FILE)}: invalid JSON ({exc})") from None
    manifest = from_dict(parsed, local)
    check_consistent(manifest, local)
    largest = max((tarlayout.shard_bytes(s.num_samples, manifest.samples_per_block, manifest.sample_bytes)
                   for split in manifest.splits.values() for s in split.shards), default=0)
    if largest > cache_bytes:
        raise DataError(f"data.cache_bytes={cache_bytes} cannot hold one shard of {url} ({largest} bytes): raise it "
                        f"(best: the dataset's size)")
    return dataclasses.replace(manifest, remote=ShardCache(url, folder, cache_dir, cache_bytes))
