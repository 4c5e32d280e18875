"""The BPE tokenizer: trained on the embedded corpus, identical ids in Hugging Face, lossless decode."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from bigtrain.data.corpus import write_embedded_corpus
from bigtrain.data.errors import DataError
from bigtrain.data.tokenizer import MAX_SENTENCE_BYTES, Tokenizer, split_long, train_tokenizer

HF_COMPARE = """
import json, sys
import sentencepiece as spm
from transformers import AutoTokenizer
corpus, tok_dir = sys.argv[1], sys.argv[2]
docs = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
sp = spm.SentencePieceProcessor(model_file=tok_dir + "/tokenizer.model")
hf = AutoTokenizer.from_pretrained(tok_dir)
ours = sp.encode(docs)
theirs = hf(docs, add_special_tokens=False)["input_ids"]
bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
lossy = sum(hf.decode(ids) != doc for ids, doc in zip(theirs, docs))
print(json.dumps({"docs": len(docs), "tokens": sum(map(len, ours)), "mismatched_docs": bad[:10],
                  "num_mismatched": len(bad), "lossy_decodes": lossy, "class": type(hf).__name__}))
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_embedded_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory):
    return train_tokenizer([corpus], 4096, tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="module")
def docs(corpus):
    with open(corpus, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def test_hf_ids_equal_sentencepiece_on_every_document_offline(corpus, tok_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", HF_COMPARE, str(corpus), str(tok_dir)], env=env,
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out.splitlines()[-1])
    assert result["docs"] > 5000 and result["tokens"] > 400_000
    assert result["num_mismatched"] == 0, result["mismatched_docs"]
    assert result["lossy_decodes"] == 0


def test_sentencepiece_decode_is_lossless(tok_dir, docs):
    tok = Tokenizer.load(tok_dir)
    tricky = [" leading space", "  two", "tabs\tand\nnewlines\n\n", "trailing  ", "ünïcödé ☃ 😀 中文 \x00"]
    for text in docs + tricky:
        assert tok.decode(tok.encode(text)) == text


def test_hf_config_and_special_tokens(tok_dir):
    from transformers import AutoTokenizer

    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["unk_token"]) == ("<s>", "</s>", "<unk>")
    assert config["add_bos_token"] is True and config["add_eos_token"] is False
    assert "pad_token" not in config
    hf = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    tok = Tokenizer.load(tok_dir)
    text = " Return the <s> value of x."
    assert hf(text)["input_ids"] == [tok.bos_id] + tok.encode(text)  # bos added, no eos, "<s>" is text
    assert hf.decode(hf(text)["input_ids"], skip_special_tokens=True) == text
    assert (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id, hf.pad_token_id) == (1, 2, 0, None)
    # <mask> (masked-LM pretraining): id 3 in both, never produced by text, literal "<mask>" stays text
    assert (hf.mask_token, hf.mask_token_id, tok.mask_id, tok.sp.id_to_piece(3)) == ("<mask>", 3, 3, "<mask>")
    assert hf(" a <mask> b")["input_ids"] == [tok.bos_id] + tok.encode(" a <mask> b") and 3 not in tok.encode("<mask>")


def test_tokenizer_dir_metadata(tok_dir):
    meta = json.loads((tok_dir / "bigtrain_tokenizer.json").read_text())
    model_sha = hashlib.sha256((tok_dir / "tokenizer.model").read_bytes()).hexdigest()
    assert {k: meta[k] for k in ("vocab_size", "bos_id", "eos_id", "unk_id", "sha256")} == \
        {"vocab_size": 4096, "bos_id": 1, "eos_id": 2, "unk_id": 0, "sha256": model_sha}
    tok = Tokenizer.load(tok_dir)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.sha256, tok.path) == (4096, 1, 2, model_sha, tok_dir.resolve())
    ids = tok.encode("def f(x): return 42")
    assert tok.encode_document("def f(x): return 42") == [1, *ids, 2]
    assert tok.encode_batch(["a b", "def f(x): return 42"])[1] == ids
    assert 0 not in tok.encode("ünïcödé ☃ 😀")  # byte fallback: never <unk>


def test_training_is_deterministic(corpus, tok_dir, tmp_path):
    again = train_tokenizer([corpus], 4096, tmp_path / "again")
    assert (again / "tokenizer.model").read_bytes() == (tok_dir / "tokenizer.model").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()


SAMPLED_TRAINING = """
import sys
from pathlib import Path
from bigtrain.data.tokenizer import Tokenizer, train_tokenizer
out = train_tokenizer([Path(sys.argv[1])], 1000, Path(sys.argv[2]), max_sentences=2000, seed=int(sys.argv[3]))
print(Tokenizer.load(out).sha256)
"""


def test_sampled_training_is_reproducible_across_processes(corpus, tmp_path):
    def train(seed: int, name: str) -> str:
        args = [sys.executable, "-c", SAMPLED_TRAINING, str(corpus), str(tmp_path / name), str(seed)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        return subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout.strip()

    first = train(0, "a")
    assert train(0, "b") == first  # sentencepiece's own sampling would differ here
    other = train_tokenizer([corpus], 1000, tmp_path / "c", max_sentences=2000, seed=1)
    assert Tokenizer.load(other).sha256 != first
    meta = json.loads((tmp_path / "a" / "bigtrain_tokenizer.json").read_text())
    assert meta["sampled_sentences"] == 2000 < meta["num_sentences"]


def test_split_long_cuts_on_character_boundaries():
    line = "ab€" * 10  # € is 3 bytes: limits fall inside it
    for limit in (4, 5, 7):
        pieces = list(split_long(line, limit))
        assert "".join(pieces) == line
        assert all(0 < len(p.encode()) <= limit for p in pieces)
    assert list(split_long("short", 100)) == ["short"]


def test_long_lines_are_split_not_dropped(tmp_path):
    text = tmp_path / "long.txt"
    long_line = "zyxwv qutsr " * (MAX_SENTENCE_BYTES // 4)  # 3 limits long: one line, no newline
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 50 + long_line)
    out = train_tokenizer([text], 350, tmp_path / "tok")
    meta = json.loads((out / "bigtrain_tokenizer.json").read_text())
    assert meta["num_sentences"] == 50 + 3
    tok = Tokenizer.load(out)
    assert len(tok.encode("zyxwv")) == 1  # learnt only from the long line: it reached the trainer


def test_vocab_size_errors(tmp_path):
    text = tmp_path / "small.txt"
    text.write_text("hello world, a small corpus\n" * 20)
    with pytest.raises(DataError, match="vocab_size=100 is too small"):
        train_tokenizer([text], 100, tmp_path / "a")
    with pytest.raises(DataError, match=r"cannot train a 50000-token BPE tokenizer.*too high"):
        train_tokenizer([text], 50_000, tmp_path / "b")
    assert not (tmp_path / "b" / "bigtrain_tokenizer.json").exists()


def test_input_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl does not exist"):
        train_tokenizer([tmp_path / "nope.jsonl"], 1000, tmp_path / "a")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: no key 'text'"):
        train_tokenizer([bad], 1000, tmp_path / "b")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n\n")
    with pytest.raises(DataError, match="no non-empty lines"):
        train_tokenizer([blank], 1000, tmp_path / "c")


def test_load_errors(tok_dir, tmp_path):
    with pytest.raises(DataError, match=r"tokenizer directory .*missing does not exist"):
        Tokenizer.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty is not a finished bigtrain tokenizer"):
        Tokenizer.load(tmp_path / "empty")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("bigtrain_tokenizer.json", "tokenizer.model"):
        (copy / name).write_bytes((tok_dir / name).read_bytes())
    Tokenizer.load(copy)
    (copy / "tokenizer.model").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"copy/tokenizer\.model does not match the sha256"):
        Tokenizer.load(copy)
    (copy / "bigtrain_tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bigtrain_tokenizer\.json: invalid JSON"):
        Tokenizer.load(copy)
