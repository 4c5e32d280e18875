"""Which backend encodes a tokenizer folder, and the folder's identity (what manifests and checkpoints record).

Rule, in this order:
1. ``bigtrain_tokenizer.json`` present (``bigtrain tokenizer train``, or a sentencepiece model imported by
   ``bigtrain convert from-hf``): sentencepiece, ``tokenizer.model`` is the source of ids (tokenizer.py);
   identity = sha256 of ``tokenizer.model``, as before.
2. else ``tokenizer.json`` present (any Hugging Face fast tokenizer): the ``tokenizers`` library
   (json_tokenizer.py); identity = sha256 of its identity files.
3. else: not a tokenizer folder (error naming it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bigtrain.data.errors import DataError
from bigtrain.data.json_tokenizer import JSON_FILE, JsonTokenizer
from bigtrain.data.tokenizer import META_FILE, Tokenizer, read_meta

TextTokenizer = Tokenizer | JsonTokenizer


@dataclass(frozen=True)
class Identity:
    backend: str  # "sentencepiece" | "tokenizers"
    vocab_size: int
    sha256: str


def backend_of(directory: Path) -> str:
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"tokenizer directory {directory} does not exist" if not directory.exists()
                        else f"tokenizer path {directory} is not a directory")
    if (directory / META_FILE).is_file():
        return Tokenizer.backend
    if (directory / JSON_FILE).is_file():
        return JsonTokenizer.backend
    raise DataError(f"{directory} is not a tokenizer folder: it has neither {META_FILE} (a sentencepiece tokenizer "
                    f"from `bigtrain tokenizer train`) nor {JSON_FILE} (a Hugging Face tokenizer)")


def load_tokenizer(directory: str | Path) -> TextTokenizer:
    """The folder's tokenizer with the backend the module doc's rule picks."""
    if backend_of(Path(directory)) == Tokenizer.backend:
        return Tokenizer.load(directory)
    return JsonTokenizer.load(directory)


def identity(directory: str | Path) -> Identity:
    """Backend, vocabulary size and sha256 of a tokenizer folder (cheap for sentencepiece: its meta file)."""
    directory = Path(directory)
    if backend_of(directory) == Tokenizer.backend:
        meta = read_meta(directory)
        return Identity(Tokenizer.backend, meta["vocab_size"], meta["sha256"])
    tok = JsonTokenizer.load(directory)
    return Identity(tok.backend, tok.vocab_size, tok.sha256)


def identity_file(directory: Path) -> Path:
    """The file a message should name for the folder's identity."""
    return directory / (META_FILE if (directory / META_FILE).is_file() else JSON_FILE)


def document_start_id(bos_id: int | None, eos_id: int | None) -> int | None:
    """The id that starts a document when a Hugging Face tokenizer names only eos (json_tokenizer.py's rule)."""
    return bos_id if bos_id is not None else eos_id


def folder_sha256(directory: Path) -> str | None:
    """The identity sha256 of a tokenizer folder; None when it is none (e.g. a checkpoint saved without one)."""
    try:
        return identity(directory).sha256
    except DataError:
        return None
