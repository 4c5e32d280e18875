"""Checks that a shard file is what its manifest says: exact size, every tar header, sha256.

Used by the loader when it first opens a shard (size + headers always; sha256 when
``data.verify_checksums``), and by ``bigtrain data verify`` / the shard tool's up-to-date check (all
three, shards checked in parallel). Every failure is a :class:`CorruptShardError` naming the file.
"""

from __future__ import annotations

import hashlib
import mmap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bigtrain.data import tarlayout
from bigtrain.data.errors import CorruptShardError, DataError
from bigtrain.data.manifest import MANIFEST_FILE, Manifest

HASH_CHUNK = 16 << 20


def expected_headers(first_sample: int, num_samples: int, samples_per_block: int, sample_bytes: int) -> np.ndarray:
    """(members, 512) uint8: the header every member of the shard must carry."""
    sizes = tarlayout.member_sizes(num_samples, samples_per_block)
    raw = b"".join(tarlayout.member_header(first_sample + j * samples_per_block, n * sample_bytes)
                   for j, n in enumerate(sizes))
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(sizes), tarlayout.BLOCK)


def check_layout(buf: np.ndarray, path: Path, first_sample: int, num_samples: int, m: Manifest) -> None:
    """``buf``: the whole shard as uint8. Raises on a wrong size, a header or the end blocks differing."""
    size = tarlayout.shard_bytes(num_samples, m.samples_per_block, m.sample_bytes)
    if len(buf) != size:
        state = "truncated" if len(buf) < size else "longer than expected"
        raise CorruptShardError(path, f"shard {path} is {state}: {len(buf)} bytes, {num_samples} samples in "
                                      f"blocks of {m.samples_per_block} take exactly {size}")
    want = expected_headers(first_sample, num_samples, m.samples_per_block, m.sample_bytes)
    starts = np.arange(len(want), dtype=np.int64) * m.member_bytes
    found = buf[starts[:, None] + np.arange(tarlayout.BLOCK)]
    bad = np.flatnonzero((found != want).any(axis=1))
    if len(bad):
        j = int(bad[0])
        raise CorruptShardError(path, f"shard {path} is corrupt: at byte {starts[j]} expected "
                                      f"{tarlayout.describe_header(want[j].tobytes())}, found "
                                      f"{tarlayout.describe_header(found[j].tobytes())}")
    if buf[-tarlayout.END_BYTES:].any():
        raise CorruptShardError(path, f"shard {path} is corrupt: its last {tarlayout.END_BYTES} bytes "
                                      f"(the tar end marker) are not zero")


def buffer_sha256(buf) -> str:
    digest = hashlib.sha256()
    view = memoryview(buf).cast("B")
    for start in range(0, len(view), HASH_CHUNK):
        digest.update(view[start:start + HASH_CHUNK])
    return digest.hexdigest()


def check_sha256(buf, path: Path, expected: str, m: Manifest) -> None:
    actual = buffer_sha256(buf)
    if actual != expected:
        raise CorruptShardError(path, f"shard {path} is corrupt: sha256 {actual[:16]}.. differs from "
                                      f"{expected[:16]}.. in {m.root / MANIFEST_FILE}")


def map_shard(path: Path) -> np.ndarray:
    """The shard file as a read-only uint8 array (memory-mapped; empty files give an empty array)."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                return np.empty(0, np.uint8)
            return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
    except FileNotFoundError:
        raise CorruptShardError(path, f"shard {path} is missing") from None
    except OSError as exc:
        raise CorruptShardError(path, f"cannot open shard {path}: {exc.strerror}") from None


def check_shard(m: Manifest, split: str, index: int, sha256: bool = True) -> str | None:
    """None if shard ``index`` of ``split`` is intact, else the error message."""
    info = m.splits[split]
    shard, path = info.shards[index], m.root / info.shards[index].file
    first = sum(s.num_samples for s in info.shards[:index])
    try:
        buf = map_shard(path)
        check_layout(buf, path, first, shard.num_samples, m)
        if sha256:
            check_sha256(buf, path, shard.sha256, m)
    except CorruptShardError as exc:
        return str(exc)
    return None


def verify_directory(m: Manifest, workers: int = 1) -> int:
    """Check every shard of every split (size, headers, sha256) on ``workers`` processes; returns the count.

    Raises one :class:`DataError` listing every bad shard.
    """
    jobs = [(split, i) for split, info in m.splits.items() for i in range(len(info.shards))]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            problems = list(pool.map(check_shard, [m] * len(jobs), *zip(*jobs)))
    else:
        problems = [check_shard(m, split, i) for split, i in jobs]
    problems = [p for p in problems if p]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DataError(f"{len(problems)} of {len(jobs)} shards in {m.root} failed verification: "
                        + "; ".join(problems[:5]) + more)
    return len(jobs)
