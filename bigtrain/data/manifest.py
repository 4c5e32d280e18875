"""``manifest.json`` of a shard directory: the contract between the shard writer and the loader.

Layout of a shard directory (format ``bigtrain-shards/2``):
- ``train-000000.tar``, ``train-000001.tar``, ..., ``val-000000.tar``, ...: plain (uncompressed) tar
  files of fixed-size members, each a block of ``samples_per_block`` samples (byte layout:
  tarlayout.py). A sample is ``sample_tokens = seq_len + 1`` token ids as little-endian ``dtype``
  (uint16 up to a 65,536-token vocabulary, else uint32) with no per-sample header: at seq_len 2048 and
  uint16 the tar overhead is < 0.1 % (format 1 spent a 512-byte header + padding on every sample).
  Plain ``webdataset.WebDataset(urls)`` reads them: each item is one block, ``{"__key__": first sample
  index, "tokens": bytes}``; ``np.frombuffer(item["tokens"], dtype).reshape(-1, sample_tokens)``.
- Sample i covers ``stream[i*seq_len : i*seq_len + seq_len + 1]`` of its split's token stream (the
  concatenation of ``[bos] + ids + [eos]`` per document, in input order): consecutive samples share one
  token, so every token after the first is a prediction target exactly once. ``num_tokens`` is the
  stream length; ``dropped_tokens`` are the tokens at its end that fit in no sample.
- ``shards[].sha256`` is the checksum of each whole file; ``input_stats`` ([bytes, mtime_ns] per input)
  lets a re-run with unchanged inputs and options recognise that the dataset is up to date.
- ``cleaning`` (only when ``data shard`` was asked to clean): the options and how many documents each
  rule removed (cleaning.py).
- ``manifest.json``: written last and atomically; a directory without it is not a finished dataset.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bigtrain.data import tarlayout
from bigtrain.data.errors import DataError

FORMAT_NAME = "bigtrain-shards"
FORMAT_VERSION = 2
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "val")
ITEMSIZE = {"uint16": 2, "uint32": 4}


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


@dataclass(frozen=True)
class ShardInfo:
    file: str  # name relative to the shard directory
    num_samples: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    num_documents: int
    num_samples: int
    num_tokens: int
    dropped_tokens: int
    shards: list[ShardInfo] = field(default_factory=list)


@dataclass(frozen=True)
class TokenizerRef:
    path: str  # absolute path of the tokenizer directory
    sha256: str  # its identity: of tokenizer.model (sentencepiece) or of its tokenizer.json files (text_tokenizer.py)
    backend: str = "sentencepiece"  # or "tokenizers" (a Hugging Face tokenizer.json)


@dataclass(frozen=True)
class Manifest:
    seq_len: int
    sample_tokens: int
    dtype: str
    samples_per_block: int
    member_bytes: int  # stride between tar members (tarlayout.member_bytes)
    vocab_size: int
    bos_id: int
    eos_id: int
    tokenizer: TokenizerRef
    inputs: list[str]
    input_stats: list[list[int]]
    text_key: str
    val_fraction: float
    seed: int
    created_by: str
    splits: dict[str, SplitInfo]
    format: str = FORMAT
    root: Path = field(default=Path("."), compare=False)  # the directory it was loaded from; not saved
    cleaning: dict = field(default_factory=dict)  # {"options": ..., "removed": {reason: documents}}; {} = none
    remote: Any = field(default=None, compare=False, repr=False)  # shard_cache.ShardCache of a URL; not saved

    @property
    def tokenizer_dir(self) -> Path:
        """The tokenizer the shards were made with (not copied into the shard directory)."""
        path = Path(self.tokenizer.path)
        if not path.is_dir():
            raise DataError(f"tokenizer directory {path} named in {self.root / MANIFEST_FILE} is missing")
        return path

    @property
    def sample_bytes(self) -> int:
        return self.sample_tokens * ITEMSIZE[self.dtype]

    def check_tokenizer(self) -> Path:
        """The tokenizer directory, if it still is the one the shards were made with (same sha256, vocab)."""
        from bigtrain.data.text_tokenizer import identity, identity_file

        path = self.tokenizer_dir
        found = identity(path)
        if found.sha256 != self.tokenizer.sha256 or found.vocab_size != self.vocab_size:
            raise DataError(f"tokenizer {path} (vocab {found.vocab_size}, sha256 {found.sha256[:12]}.. of "
                            f"{identity_file(path)}) is not the one the shards in {self.root} were made with "
                            f"(vocab {self.vocab_size}, sha256 {self.tokenizer.sha256[:12]}.. in "
                            f"{self.root / MANIFEST_FILE}): it was replaced; re-shard or restore it")
        return path

    def shard_paths(self, split: str) -> list[Path]:
        return [self.root / shard.file for shard in self.splits[split].shards]

    def to_dict(self) -> dict:
        data = asdict(replace(self, remote=None))
        del data["root"], data["remote"]
        if not data["cleaning"]:  # no cleaning asked: the manifest of a plain run is what it always was
            del data["cleaning"]
        return {"format": data.pop("format"), **data}

    def save(self, directory: Path) -> Path:
        """Write ``manifest.json`` atomically (temp file, fsync, rename)."""
        path = Path(directory) / MANIFEST_FILE
        tmp = path.with_name(f".{MANIFEST_FILE}.tmp{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        """Read and validate a shard directory's manifest; every listed shard must exist at full size."""
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        if not directory.is_dir():
            raise DataError(f"shard directory {directory} does not exist")
        if not path.exists():
            raise DataError(f"{directory} has no {MANIFEST_FILE}: not a shard directory, or sharding did not finish")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: invalid JSON ({exc})") from None
        manifest = from_dict(data, path)
        check_consistent(manifest, path)
        check_shard_files(manifest, directory)
        return manifest


def check_format(data: dict, path: Path) -> None:
    fmt = data.get("format") if isinstance(data, dict) else None
    name, _, version = str(fmt).partition("/")
    if name != FORMAT_NAME or not version.isdigit():
        raise DataError(f"{path}: not a bigtrain shard manifest (format {fmt!r}, expected {FORMAT!r})")
    if int(version) != FORMAT_VERSION:
        hint = (" (one 1 KiB tar member per sample; version 2 packs blocks of samples per member)"
                if int(version) == 1 else "")
        raise DataError(f"{path}: shard format version {version}{hint}, this bigtrain reads version "
                        f"{FORMAT_VERSION}; re-shard with `bigtrain data shard` or use a matching bigtrain")


def from_dict(data: dict, path: Path) -> Manifest:
    check_format(data, path)
    try:
        splits = {name: SplitInfo(**{**info, "shards": [ShardInfo(**s) for s in info["shards"]]})
                  for name, info in data["splits"].items()}
        fields = {k: v for k, v in data.items() if k not in ("splits", "tokenizer")}
        return Manifest(**fields, tokenizer=TokenizerRef(**data["tokenizer"]), splits=splits,
                        root=path.parent.resolve())
    except KeyError as exc:
        raise DataError(f"{path}: missing key {exc}") from None
    except (TypeError, AttributeError) as exc:  # unknown or missing dataclass fields, wrong nesting
        raise DataError(f"{path}: malformed manifest ({exc})") from None


def check_consistent(m: Manifest, path: Path) -> None:
    itemsize = ITEMSIZE.get(m.dtype)
    problems = []
    if itemsize is None:
        problems.append(f"dtype {m.dtype!r} is not uint16/uint32")
    elif m.samples_per_block < 1:
        problems.append(f"samples_per_block {m.samples_per_block} < 1")
    elif m.member_bytes != tarlayout.member_bytes(m.samples_per_block, m.sample_tokens * itemsize):
        problems.append(f"member_bytes {m.member_bytes} != "
                        f"{tarlayout.member_bytes(m.samples_per_block, m.sample_tokens * itemsize)}")
    if m.sample_tokens != m.seq_len + 1:
        problems.append(f"sample_tokens {m.sample_tokens} != seq_len + 1")
    for name, split in m.splits.items():
        if split.num_samples != sum(s.num_samples for s in split.shards):
            problems.append(f"split {name}: num_samples differs from the sum over its shards")
    if "train" not in m.splits:
        problems.append("no train split")
    if problems:
        raise DataError(f"{path}: inconsistent manifest: {'; '.join(problems)}")


def check_shard_files(m: Manifest, directory: Path) -> None:
    """Each shard must exist with exactly the size its sample count implies (a stat per shard)."""
    for split in m.splits.values():
        for shard in split.shards:
            check_shard_size(m, directory / shard.file, shard.num_samples)


def check_shard_size(m: Manifest, path: Path, num_samples: int) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"shard {path} listed in {m.root / MANIFEST_FILE} is missing") from None
    need = tarlayout.shard_bytes(num_samples, m.samples_per_block, m.sample_bytes)
    if size != need:
        state = "truncated" if size < need else "longer than expected"
        raise DataError(f"shard {path} is {state}: {size} bytes, {num_samples} samples in blocks of "
                        f"{m.samples_per_block} take exactly {need}")
