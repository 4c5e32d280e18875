"""A Hugging Face ``tokenizer.json`` folder (byte-level BPE, Llama 3, Qwen, SmolLM ...) as a bigtrain tokenizer.

Ids come from the ``tokenizers`` library (the Rust backend ``AutoTokenizer`` wraps), so the shards, the
checkpoint's tokenizer folder and an exported model's ``AutoTokenizer`` agree id for id. Documents are
encoded *without* the tokenizer's own special tokens (``add_special_tokens=False``) and framed by the
shard tool as ``[bos] + ids + [eos]``, like the sentencepiece backend.

BOS/EOS rule: ``bos_token`` / ``eos_token`` of ``tokenizer_config.json``, else of
``special_tokens_map.json`` (a string or an ``{"content": ...}`` object), looked up in the vocabulary.
A folder that names only one of them uses it for both (GPT-2 style ``<|endoftext|>``; Qwen has no bos);
naming neither, or a token the vocabulary lacks, is an error naming the file.

Identity: the sha256 of the files that decide ids and special tokens (:data:`IDENTITY_FILES`, those
present, each as ``name NUL size NUL bytes``). It is recorded in the manifest and checked against the
checkpoint's copy as for sentencepiece.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from bigtrain.data.errors import DataError

JSON_FILE = "tokenizer.json"
IDENTITY_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
SPECIAL_SOURCES = ("tokenizer_config.json", "special_tokens_map.json")


def files_sha256(directory: Path) -> str:
    """sha256 over the identity files present in ``directory`` (module doc)."""
    digest = hashlib.sha256()
    for name in IDENTITY_FILES:
        path = directory / name
        if path.is_file():
            data = path.read_bytes()
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
    return digest.hexdigest()


def token_text(value) -> str | None:
    """``"<s>"`` or ``{"content": "<s>", ...}`` (an AddedToken as saved by transformers) -> ``"<s>"``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def named_specials(directory: Path) -> tuple[str | None, str | None, str]:
    """(bos text, eos text, the file they were read from) by the rule in the module doc."""
    for name in SPECIAL_SOURCES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: invalid JSON ({exc})") from None
        bos, eos = token_text(config.get("bos_token")), token_text(config.get("eos_token"))
        if bos or eos:
            return bos, eos, name
    return None, None, " or ".join(SPECIAL_SOURCES)


class JsonTokenizer:
    """A ``tokenizer.json`` folder, encoding with the ``tokenizers`` library."""

    backend = "tokenizers"

    def __init__(self, path: Path, tk, bos_id: int, eos_id: int, sha256: str):
        self.path, self.tk, self.bos_id, self.eos_id, self.sha256 = path, tk, bos_id, eos_id, sha256
        self.vocab_size = max(tk.get_vocab_size(with_added_tokens=True), max(tk.get_vocab(True).values()) + 1)

    @classmethod
    def load(cls, directory: str | Path) -> JsonTokenizer:
        from tokenizers import Tokenizer as RustTokenizer

        directory = Path(directory).resolve()
        try:
            tk = RustTokenizer.from_file(str(directory / JSON_FILE))
        except Exception as exc:  # the Rust side raises a plain Exception for any malformed file
            raise DataError(f"{directory / JSON_FILE}: not a Hugging Face tokenizer file ({exc})") from None
        bos_id, eos_id = special_ids(directory, tk)
        return cls(directory, tk, bos_id, eos_id, files_sha256(directory))

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without bos/eos (nor the tokenizer's own template tokens)."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], threads: int | None = None) -> list[list[int]]:
        """``encode`` over many texts (the library's own thread pool; ``TOKENIZERS_PARALLELISM`` rules it)."""
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def encode_document(self, text: str) -> list[int]:
        return [self.bos_id, *self.encode(text), self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens (bos/eos) are dropped."""
        return self.tk.decode(list(ids), skip_special_tokens=True)


def special_ids(directory: Path, tk) -> tuple[int, int]:
    """(bos id, eos id) of a tokenizer.json folder by the rule in the module doc."""
    bos, eos, source = named_specials(directory)
    if bos is None and eos is None:
        raise DataError(f"{directory}: no bos_token or eos_token in {source}; bigtrain frames every document as "
                        f"[bos] + text + [eos]: add them (e.g. \"eos_token\": \"<|endoftext|>\") to tokenizer_config.json")
    ids = []
    for text in (bos or eos, eos or bos):
        token_id = tk.token_to_id(text)
        if token_id is None:
            raise DataError(f"{directory / source}: special token {text!r} is not in the vocabulary of "
                            f"{directory / JSON_FILE}")
        ids.append(token_id)
    return ids[0], ids[1]
