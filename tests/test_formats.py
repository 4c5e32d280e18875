"""Parquet, ``.jsonl.zst`` and directory/glob inputs of ``bigtrain data shard``: the same documents give
byte-identical shards whatever the container (Parquet with several row groups, zstd with several
frames, JSONL split over a directory), for any ``--workers``; bad rows are named by file and row."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from bigtrain.data.documents import iter_documents
from bigtrain.data.errors import DataError
from bigtrain.data.shards import write_shards
from bigtrain.data.tokenizer import train_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho ünï 中文 😀".split()


@pytest.fixture(scope="module")
def docs():
    rng = random.Random(5)
    docs = [f"doc {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(1, 80))) for i in range(400)]
    docs[7] = "two\nlines\n"
    return docs


@pytest.fixture(scope="module")
def corpora(docs, tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    lines = [json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)]
    (root / "docs.jsonl").write_text("".join(lines))
    # Parquet: several row groups, a blank document (skipped, like a blank JSONL value), another column
    table = pa.table({"id": list(range(len(docs) + 1)), "text": docs[:200] + [""] + docs[200:]})
    pq.write_table(table, root / "docs.parquet", row_group_size=37)
    assert pq.ParquetFile(root / "docs.parquet").metadata.num_row_groups > 5
    # zstd: two frames back to back (as `cat a.zst b.zst` makes them)
    half = len(lines) // 2
    frames = [zstandard.ZstdCompressor(level=3).compress("".join(part).encode()) for part in (lines[:half], lines[half:])]
    (root / "docs.jsonl.zst").write_bytes(b"".join(frames))
    # a directory of parts (zst, parquet, jsonl mixed; sorted by name), with a hidden file that is skipped
    parts = root / "parts"
    parts.mkdir()
    (parts / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress("".join(lines[:100]).encode()))
    pq.write_table(pa.table({"text": docs[100:250]}), parts / "b.parquet", row_group_size=50)
    (parts / "c.jsonl").write_text("".join(lines[250:]))
    (parts / ".hidden.jsonl").write_text(json.dumps({"text": "not me"}) + "\n")
    return root


@pytest.fixture(scope="module")
def tok(corpora, tmp_path_factory):
    return train_tokenizer([corpora / "docs.jsonl"], 400, tmp_path_factory.mktemp("tok"))


def shard_bytes(manifest) -> dict:
    return {split: [(s.num_samples, s.sha256) for s in info.shards] for split, info in manifest.splits.items()}


def test_same_documents_in_any_container(docs, corpora):
    expected = list(iter_documents([corpora / "docs.jsonl"]))
    assert expected == docs
    for source in ("docs.parquet", "docs.jsonl.zst", "parts", "parts/*.*", "parts/**/*"):
        assert list(iter_documents([corpora / source])) == docs, source


def test_parquet_and_zstd_give_the_shards_of_jsonl(corpora, tok, tmp_path):
    kwargs = dict(val_fraction=0.05, samples_per_shard=16, samples_per_block=4)
    reference = shard_bytes(write_shards(tok, [corpora / "docs.jsonl"], 16, tmp_path / "jsonl", workers=1, **kwargs))
    for name, inputs in [("parquet", ["docs.parquet"]), ("zst", ["docs.jsonl.zst"]), ("dir", ["parts"]),
                         ("glob", ["parts/*"])]:
        for workers in (1, 2):
            m = write_shards(tok, [corpora / p for p in inputs], 16, tmp_path / f"{name}{workers}", workers=workers,
                             chunk_bytes=2000, **kwargs)
            assert shard_bytes(m) == reference, (name, workers)
    m = write_shards(tok, [corpora / "parts"], 16, tmp_path / "dir2", workers=2, **kwargs)
    assert [p.rsplit("/", 1)[1] for p in m.inputs] == ["a.jsonl.zst", "b.parquet", "c.jsonl"]
    again = write_shards(tok, [corpora / "parts"], 16, tmp_path / "dir2", workers=1, **kwargs)  # idempotent
    assert again == m


def test_bad_rows_are_named(tok, tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": pa.array([b"fine", b"also fine", b"caf\xe9"], pa.binary())}), bad,
                   row_group_size=2)
    with pytest.raises(DataError, match=rf"{bad}: row 2: invalid UTF-8 at byte offset 3"):
        list(iter_documents([bad]))
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["a", None]}), nulls)
    with pytest.raises(DataError, match=rf"{nulls}: row 1: 'text' is null"):
        list(iter_documents([nulls]))
    with pytest.raises(DataError, match=rf"{nulls}: no column 'body' \(columns: 'text'\); choose one with --text-key"):
        list(iter_documents([nulls], text_key="body"))
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    with pytest.raises(DataError, match=r"column 'text' is int64, expected a string column"):
        list(iter_documents([numbers]))
    truncated = tmp_path / "cut.jsonl.zst"
    data = zstandard.ZstdCompressor().compress(b"".join(b'{"text": "x %d"}\n' % i for i in range(5000)))
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{truncated}: cannot read .*truncated or corrupt gzip/zstd"):
        list(iter_documents([truncated]))
    badline = tmp_path / "bad.jsonl.zst"
    badline.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "ok"}\n{"text": "caf\xe9"}\n'))
    with pytest.raises(DataError, match=rf"{badline}:2: invalid UTF-8 at byte offset 28"):
        list(iter_documents([badline]))
    with pytest.raises(DataError, match=r"input pattern .*nothing\*\.jsonl matches no files"):
        list(iter_documents([tmp_path / "nothing*.jsonl"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"input directory .*empty holds no corpus files"):
        write_shards(tok, [tmp_path / "empty"], 16, tmp_path / "out", workers=1)
