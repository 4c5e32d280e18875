"""Byte layout of a shard (format ``bigtrain-shards/2``): plain tar, fixed-size members of K samples.

A shard holding ``n`` samples of ``sample_bytes`` each, in blocks of ``K = samples_per_block``:

    member j (j = 0 .. ceil(n / K) - 1) starts at byte ``j * member_bytes``:
        512-byte ustar header, name ``f"{first:010d}.tokens"`` (``first`` = the block's first sample,
        counted over the whole split), size ``k * sample_bytes`` (k = K, or n % K for a short last one),
        then the k samples back to back, zero-padded to a multiple of 512
    then two zero blocks (1024 bytes); no PAX headers, no record padding.

So sample ``l`` of a shard sits at byte ``(l // K) * member_bytes + 512 + (l % K) * sample_bytes``: any
sample is one seek away, and the whole file size is known from ``n`` (a shorter file is truncated).
Headers are fully determined (mode 0644, mtime 0, uid/gid 0, no user names), so a shard's bytes are a
function of its samples only, and every header can be checked by comparing it to the expected bytes.
"""

from __future__ import annotations

import tarfile

BLOCK = 512
END_BYTES = 2 * BLOCK


def padded(nbytes: int) -> int:
    return -(-nbytes // BLOCK) * BLOCK


def member_bytes(samples_per_block: int, sample_bytes: int) -> int:
    """Stride between members: header + a full block of samples padded to 512."""
    return BLOCK + padded(samples_per_block * sample_bytes)


def member_sizes(num_samples: int, samples_per_block: int) -> list[int]:
    """Samples in each member of a shard of ``num_samples`` samples."""
    full, rest = divmod(num_samples, samples_per_block)
    return [samples_per_block] * full + ([rest] if rest else [])


def shard_bytes(num_samples: int, samples_per_block: int, sample_bytes: int) -> int:
    """Exact file size of a shard (module doc)."""
    full, rest = divmod(num_samples, samples_per_block)
    size = full * member_bytes(samples_per_block, sample_bytes) + END_BYTES
    return size + (BLOCK + padded(rest * sample_bytes) if rest else 0)


def member_name(first_sample: int) -> str:
    return f"{first_sample:010d}.tokens"


def member_header(first_sample: int, data_bytes: int) -> bytes:
    """The 512 header bytes of the member whose first sample (over the split) is ``first_sample``."""
    info = tarfile.TarInfo(member_name(first_sample))
    info.size, info.mode, info.mtime = data_bytes, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def describe_header(raw: bytes) -> str:
    """What a (possibly damaged) header holds, for error messages."""
    try:
        info = tarfile.TarInfo.frombuf(raw, "utf-8", "surrogateescape")
    except tarfile.TarError as exc:
        return f"no valid tar header ({exc})"
    return f"member {info.name!r} of {info.size} bytes"
