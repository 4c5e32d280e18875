"""Cleaning in ``bigtrain data shard`` (bigtrain/data/cleaning.py): planted duplicates (exact, re-cased,
re-spaced, across files and formats), too short/long, non-letter and non-UTF-8 documents are removed
exactly, counted per reason, and the shards equal those of the corpus written without them, for 1 and 2
workers. Off by default: a plain run's manifest has no ``cleaning`` key."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigtrain.data.cleaning import CleaningOptions, non_letter_share, normalise
from bigtrain.data.errors import DataError
from bigtrain.data.shards import write_shards
from bigtrain.data.tokenizer import train_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
OPTIONS = CleaningOptions(dedup=True, min_chars=20, max_chars=600, max_non_letter=0.5, drop_undecodable=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(clean documents, dirty input files, planted counts per reason, folder)."""
    rng = random.Random(11)
    root = tmp_path_factory.mktemp("cleaning")
    clean = [f"document {i} " + " ".join(rng.choices(WORDS, k=rng.randint(5, 55))) for i in range(300)]
    dirty: list[bytes] = []
    planted = dict(undecodable=0, too_short=0, too_long=0, non_letter=0, duplicates=0)
    for i, doc in enumerate(clean):
        dirty.append(json.dumps({"text": doc}).encode())
        if i % 7 == 3:  # an exact copy, later
            dirty.append(json.dumps({"text": doc}).encode())
            planted["duplicates"] += 1
        if i % 11 == 5:  # the same text re-cased and re-spaced: equal once normalised
            dirty.append(json.dumps({"text": "  " + doc.upper().replace(" ", "\t ") + "\n"}).encode())
            planted["duplicates"] += 1
        if i % 13 == 0:
            dirty.append(json.dumps({"text": "tiny"}).encode())
            planted["too_short"] += 1
        if i % 17 == 0:
            dirty.append(json.dumps({"text": "long " * 200}).encode())
            planted["too_long"] += 1
        if i % 19 == 0:
            dirty.append(json.dumps({"text": "| 12 | 3.4 | 5e6 | 7 | 8 | 9 | " + WORDS[i % 17]}).encode())
            planted["non_letter"] += 1
        if i % 23 == 0:
            dirty.append(b'{"text": "caf\xe9 ' + doc.encode() + b'"}')
            planted["undecodable"] += 1
    (root / "a.jsonl").write_bytes(b"\n".join(dirty[:400]) + b"\n")
    # the rest as Parquet, plus a duplicate of a document of a.jsonl: dedup spans files and formats
    rest = [json.loads(line.decode("utf-8", "surrogateescape"))["text"] for line in dirty[400:]]
    rest = [t.encode("utf-8", "surrogateescape") for t in rest] + [clean[0].encode()]
    planted["duplicates"] += 1
    pq.write_table(pa.table({"text": pa.array(rest, pa.binary())}), root / "b.parquet", row_group_size=40)
    (root / "clean.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in clean))
    return clean, [root / "a.jsonl", root / "b.parquet"], planted, root


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory):
    return train_tokenizer([corpus[3] / "clean.jsonl"], 300, tmp_path_factory.mktemp("tok"))


def test_rules():
    assert normalise("  Hello\t WORLD \n") == "hello world" == normalise("hello world")
    assert normalise("ｆｕｌｌ") == "full"  # NFKC
    assert non_letter_share("ab 12") == 0.5 and non_letter_share("   ") == 0.0 and non_letter_share("été") == 0.0
    with pytest.raises(DataError, match="max_non_letter must be in"):
        CleaningOptions(max_non_letter=2).check()


def test_cleaning_removes_exactly_the_planted_documents(corpus, tok, tmp_path):
    clean, dirty, planted, root = corpus
    kwargs = dict(val_fraction=0.1, samples_per_shard=32)
    reference = write_shards(tok, [root / "clean.jsonl"], 16, tmp_path / "reference", workers=1, **kwargs)
    assert "cleaning" not in json.loads((tmp_path / "reference" / "manifest.json").read_text())  # off by default
    for workers in (1, 2):
        m = write_shards(tok, dirty, 16, tmp_path / f"w{workers}", workers=workers, chunk_bytes=3000,
                         cleaning=OPTIONS, **kwargs)
        assert m.cleaning == {"options": OPTIONS.to_dict(), "removed": planted}, workers
        assert m.splits == reference.splits, workers  # same documents, same samples, same shard bytes
    assert all(planted.values())
    with pytest.raises(DataError, match="invalid UTF-8"):  # without drop_undecodable: the usual error
        write_shards(tok, dirty, 16, tmp_path / "strict", workers=1, cleaning=CleaningOptions(dedup=True))


def test_cli_prints_the_counts_and_reruns_are_idempotent(corpus, tok, tmp_path):
    _, dirty, planted, _ = corpus
    cmd = [sys.executable, "-m", "bigtrain.cli", "data", "shard", "--tokenizer", str(tok), "--input", *map(str, dirty),
           "--seq-len", "16", "--out", str(tmp_path / "out"), "--workers", "2", "--dedup", "--min-chars", "20",
           "--max-chars", "600", "--max-non-letter", "0.5", "--drop-undecodable"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=ENV).stdout
    counts = ", ".join(f"{n} {reason}" for reason, n in planted.items())
    assert f"cleaning removed {counts} document(s)" in out
    again = subprocess.run(cmd, capture_output=True, text=True, check=True, env=ENV)
    assert "is up to date" in again.stderr
    changed = [a if a != "600" else "601" for a in cmd]  # other options: rebuilt
    assert "is up to date" not in subprocess.run(changed, capture_output=True, text=True, check=True, env=ENV).stderr
