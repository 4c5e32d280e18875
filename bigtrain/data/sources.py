"""The training sources: shard directories with a mixture weight and a name, checked to fit together.

Every check here runs before any process group starts, so a bad mixture fails in seconds with a
:class:`ConfigError` naming the key and the directories.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

from bigtrain.config.load import ConfigError
from bigtrain.data.manifest import Manifest
from bigtrain.data.remote import is_url, url_name


@dataclass(frozen=True)
class Source:
    name: str  # metric names: samples/<name>, val_loss/<name>
    path: Path | str  # the shard directory (resolved), or its URL (remote.py)
    weight: float
    manifest: Manifest

    @property
    def num_samples(self) -> int:
        return self.manifest.splits["train"].num_samples

    @property
    def has_val(self) -> bool:
        val = self.manifest.splits.get("val")
        return bool(val and val.num_samples)


def source_seed(seed: int, name: str, num_sources: int) -> int:
    """Seed of a source's own order: ``seed`` alone for one source, else mixed with its name."""
    return seed if num_sources == 1 else seed * 1_000_003 + zlib.crc32(name.encode())


def load_manifest(path: str, cache_dir: str = "", cache_bytes: int = 32 << 30) -> Manifest:
    """The manifest of a local shard directory, or of one at a URL (its shards then go through the cache)."""
    if is_url(path):
        from bigtrain.data.shard_cache import load_remote_manifest

        return load_remote_manifest(path, cache_dir, cache_bytes)
    return Manifest.load(path)


def load_sources(entries: list[tuple[str, float, str]], key: str = "data.sources", cache_dir: str = "",
                 cache_bytes: int = 32 << 30) -> list[Source]:
    """(path, weight, name) entries -> Sources; names default to the directory name and must be unique.

    A path may be a URL (remote.py): its shards are read through ``cache_dir``, at most ``cache_bytes``."""
    sources = []
    for i, (path, weight, name) in enumerate(entries):
        where = f"{key}[{i}]" if len(entries) > 1 or key == "data.sources" else key
        if not path:
            raise ConfigError(f"{where}.path is empty: give the shard directory written by `bigtrain data shard`")
        if not weight > 0:
            raise ConfigError(f"{where}.weight must be positive, got {weight}")
        manifest = load_manifest(path, cache_dir, cache_bytes)
        manifest.check_tokenizer()
        if is_url(path):
            sources.append(Source(name or url_name(path), path, float(weight), manifest))
        else:
            sources.append(Source(name or Path(path).resolve().name, Path(path).resolve(), float(weight), manifest))
    names = [s.name for s in sources]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{key}: two sources are named {name!r}; give each a distinct name: "
                              f"{{path: ..., weight: ..., name: ...}}")
        if not name or "/" in name or " " in name:
            raise ConfigError(f"{key}: source name {name!r} must be non-empty without '/' or spaces")
    check_compatible(sources, key)
    return sources


def check_compatible(sources: list[Source], key: str) -> None:
    """All sources must feed the same model: same seq_len, vocabulary, tokenizer and special ids."""
    first = sources[0]
    for other in sources[1:]:
        a, b = first.manifest, other.manifest
        for what, x, y in [("seq_len", a.seq_len, b.seq_len), ("vocab_size", a.vocab_size, b.vocab_size),
                           ("tokenizer sha256", a.tokenizer.sha256, b.tokenizer.sha256),
                           ("bos/eos ids", (a.bos_id, a.eos_id), (b.bos_id, b.eos_id))]:
            if x != y:
                raise ConfigError(f"{key}: sources {first.name!r} ({first.path}) and {other.name!r} ({other.path}) "
                                  f"differ in {what}: {x} vs {y}; every source must be sharded with the same "
                                  f"tokenizer and --seq-len")


def check_mixture(sources: list[Source], block_size: int) -> None:
    """Each source must get at least one slot per mixing block (mixing.py)."""
    from bigtrain.data.mixing import apportion

    counts = apportion([s.weight for s in sources], block_size)
    for source, count in zip(sources, counts):
        if count == 0:
            raise ConfigError(f"data.sources: weight {source.weight} of {source.name!r} is too small to get one of "
                              f"the {block_size} positions of a mixing block; raise data.mix_block_size or the weight")
