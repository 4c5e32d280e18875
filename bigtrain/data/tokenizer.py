"""Train and load the sentencepiece BPE tokenizer; its folder also loads in Hugging Face transformers.

A tokenizer directory holds:
- ``tokenizer.model``: the sentencepiece model, the source of truth for ids;
- ``tokenizer.json`` + ``tokenizer_config.json``: the same tokenizer for ``AutoTokenizer`` (offline,
  identical ids; see hf_tokenizer.py);
- ``bigtrain_tokenizer.json``: vocab size, special ids and the sha256 of tokenizer.model. Written last,
  so a folder without it is not a finished tokenizer.

Special ids: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2 and ``<mask>`` 3 (for masked-LM pretraining,
``train.objective=mlm``). ``<mask>`` is a sentencepiece *control* symbol: it has an id but no text
ever encodes to it (the literal text "<mask>" stays text, in sentencepiece and HF alike). Tokenizers
trained before it existed have no ``mask_id`` in their metadata and still work for causal LM.

Training settings and why: BPE (unigram could not be made id-exact in HF); ``byte_fallback`` so no text
is ever ``<unk>``; identity normalisation and no whitespace cleanup so ``decode(encode(t)) == t``;
``split_digits`` for arithmetic; whitespace-only pieces so code indentation is cheap. Documents are fed
as their non-empty lines; lines over ``MAX_SENTENCE_BYTES`` are split (sentencepiece would silently
drop them). Memory is bounded by a seeded reservoir sample of ``max_sentences`` lines taken here, not
by sentencepiece's ``input_sentence_size`` (not reproducible, see :func:`sample_sentences`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm

from bigtrain.data.documents import as_paths, iter_documents
from bigtrain.data.errors import DataError
from bigtrain.data.hf_tokenizer import check_hf_matches, write_hf_tokenizer

MODEL_FILE = "tokenizer.model"
META_FILE = "bigtrain_tokenizer.json"
META_FORMAT = "bigtrain-tokenizer/1"
UNK_ID, BOS_ID, EOS_ID, MASK_ID = 0, 1, 2, 3
MASK_TOKEN = "<mask>"
MIN_VOCAB = 4 + 256  # specials + byte-fallback pieces, before any character or merge
MAX_SENTENCE_BYTES = 1 << 16
CHECK_DOCS = 200  # documents re-encoded with HF after training as a self-check


def split_long(line: str, limit: int = MAX_SENTENCE_BYTES) -> Iterator[str]:
    """``line`` in pieces of at most ``limit`` UTF-8 bytes, cut on character boundaries."""
    data = line.encode("utf-8")
    while len(data) > limit:
        cut = limit
        while data[cut] & 0xC0 == 0x80:  # a continuation byte: back up to the character's start
            cut -= 1
        yield data[:cut].decode("utf-8")
        data = data[cut:]
    yield data.decode("utf-8")


def training_lines(doc: str) -> Iterator[str]:
    """The non-empty lines of ``doc``, long ones split to fit the trainer's sentence limit."""
    for line in doc.split("\n"):
        if line:
            yield from split_long(line)


@dataclass
class SentenceSample:
    sentences: list[str]  # what the trainer sees: every line, or a uniform sample of max_sentences
    total: int  # lines in the corpus
    first_docs: list[str]  # re-encoded with HF after training as a self-check


def sample_sentences(docs: Iterable[str], max_sentences: int, seed: int) -> SentenceSample:
    """Reservoir-sample (algorithm R) at most ``max_sentences`` lines, reproducibly.

    Sampled here rather than by sentencepiece: its own ``input_sentence_size`` sampling gave a
    different model in every process with sentencepiece 0.2.3, ``set_random_generator_seed``
    notwithstanding (measured), so a retrained tokenizer would not match its shards.
    """
    rng = random.Random(seed)
    sample = SentenceSample([], 0, [])
    for doc in docs:
        if len(sample.first_docs) < CHECK_DOCS:
            sample.first_docs.append(doc)
        for line in training_lines(doc):
            if sample.total < max_sentences:
                sample.sentences.append(line)
            else:
                slot = rng.randrange(sample.total + 1)
                if slot < max_sentences:
                    sample.sentences[slot] = line
            sample.total += 1
    return sample


def trainer_options(vocab_size: int) -> dict:
    """sentencepiece settings (module doc). No ``input_sentence_size``: the input is already a sample."""
    return dict(model_type="bpe", vocab_size=vocab_size, byte_fallback=True, normalization_rule_name="identity",
                remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
                allow_whitespace_only_pieces=True, max_sentence_length=MAX_SENTENCE_BYTES,
                input_sentence_size=0, shuffle_input_sentence=False, character_coverage=0.9995,
                unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=-1,
                control_symbols=[MASK_TOKEN], num_threads=os.cpu_count() or 1,
                minloglevel=2)


def train_model(sentences: list[str], vocab_size: int) -> bytes:
    """The serialized sentencepiece model; trainer failures become a :class:`DataError`."""
    if vocab_size <= MIN_VOCAB:
        raise DataError(f"vocab_size={vocab_size} is too small: byte fallback alone takes {MIN_VOCAB} ids")
    if not sentences:
        raise DataError("the inputs hold no non-empty lines to train a tokenizer on")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model,
                                       **trainer_options(vocab_size))
    except RuntimeError as exc:
        message = str(exc).split("] ", 1)[-1].strip() or str(exc)  # drop sentencepiece's source location
        raise DataError(f"cannot train a {vocab_size}-token BPE tokenizer on this corpus: {message}") from None
    return model.getvalue()


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def train_tokenizer(inputs: list[str | Path], vocab_size: int, out_dir: Path, *, text_key: str = "text",
                    max_sentences: int = 2_000_000, seed: int = 0, model_max_length: int = 4096) -> Path:
    """Train a BPE tokenizer on ``inputs`` and write a tokenizer directory (see module doc); returns it.

    ``max_sentences`` bounds memory: beyond it, lines are sampled (seeded). ``model_max_length`` only
    sets the HF config's advisory length (the HF export can overwrite it with the trained seq_len).
    """
    inputs, out_dir = as_paths(inputs), Path(out_dir)
    if max_sentences < 1:
        raise DataError(f"max_sentences must be >= 1, got {max_sentences}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)  # until rewritten, the folder is not a finished tokenizer
    sample = sample_sentences(iter_documents(inputs, text_key), max_sentences, seed)
    model = train_model(sample.sentences, vocab_size)
    atomic_write(out_dir / MODEL_FILE, model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    write_hf_tokenizer(out_dir / MODEL_FILE, out_dir, model_max_length, sp.bos_id(), MASK_TOKEN)
    check_hf_matches(out_dir, sp, sample.first_docs)
    meta = {"format": META_FORMAT, "vocab_size": sp.vocab_size(), "bos_id": sp.bos_id(), "eos_id": sp.eos_id(),
            "unk_id": sp.unk_id(), "mask_id": sp.piece_to_id(MASK_TOKEN),
            "sha256": hashlib.sha256(model).hexdigest(), "model_type": "bpe",
            "inputs": [str(p.resolve()) for p in inputs], "text_key": text_key,
            "num_sentences": sample.total, "sampled_sentences": len(sample.sentences), "seed": seed}
    atomic_write(out_dir / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return out_dir


def read_meta(directory: Path) -> dict:
    if not directory.is_dir():
        raise DataError(f"tokenizer directory {directory} does not exist" if not directory.exists()
                        else f"tokenizer path {directory} is not a directory")
    meta_path = directory / META_FILE
    if not meta_path.exists():
        raise DataError(f"{directory} is not a finished bigtrain tokenizer (no {META_FILE}); "
                        f"train one with `bigtrain tokenizer train`")
    try:
        meta = json.loads(meta_path.read_text())
        keys = ("vocab_size", "bos_id", "eos_id", "unk_id", "sha256")
        missing = [k for k in keys if k not in meta]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        raise DataError(f"{meta_path}: invalid JSON ({exc})") from None
    if missing:
        raise DataError(f"{meta_path}: missing {', '.join(missing)}")
    return meta


class Tokenizer:
    """A trained tokenizer directory, encoding with sentencepiece (the reference for all ids)."""

    backend = "sentencepiece"

    def __init__(self, path: Path, processor: spm.SentencePieceProcessor, meta: dict):
        self.path = path
        self.sp = processor
        self.meta = meta

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        directory = Path(directory).resolve()
        meta = read_meta(directory)
        model_path = directory / MODEL_FILE
        if not model_path.exists():
            raise DataError(f"{directory} has no {MODEL_FILE}")
        data = model_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise DataError(f"{model_path} does not match the sha256 in {directory / META_FILE}: "
                            f"the folder was modified after training")
        try:
            processor = spm.SentencePieceProcessor(model_proto=data)
        except RuntimeError as exc:
            raise DataError(f"{model_path}: not a sentencepiece model ({exc})") from None
        if processor.vocab_size() != meta["vocab_size"]:
            raise DataError(f"{model_path}: {processor.vocab_size()} pieces, {META_FILE} says {meta['vocab_size']}")
        return cls(directory, processor, meta)

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def mask_id(self) -> int | None:
        """Id of ``<mask>`` (masked-LM pretraining); None for tokenizers trained without one."""
        return self.meta.get("mask_id")

    @property
    def sha256(self) -> str:
        return self.meta["sha256"]

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without bos/eos."""
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str], threads: int | None = None) -> list[list[int]]:
        """``encode`` over many texts on ``threads`` threads (default: all cores; sentencepiece releases the GIL)."""
        return self.sp.encode(texts, num_threads=threads or os.cpu_count() or 1)

    def encode_document(self, text: str) -> list[int]:
        """``[bos] + ids + [eos]``: how a document enters the training stream."""
        return [self.bos_id, *self.sp.encode(text), self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; bos/eos are dropped. ``decode(encode(t)) == t`` for any text."""
        return self.sp.decode(list(ids))
