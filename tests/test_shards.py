"""Shards: exact packing, fixed member offsets, deterministic val split, manifest, and failure modes."""

import json
import random
import tarfile

import numpy as np
import pytest
import webdataset as wds

from bigtrain.data.errors import DataError
from bigtrain.data.manifest import Manifest, member_bytes, token_dtype
from bigtrain.data.shards import default_samples_per_shard, is_val, write_shards
from bigtrain.data.tokenizer import Tokenizer, train_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
CONTRACT_KEYS = ["format", "seq_len", "sample_tokens", "dtype", "member_bytes", "vocab_size", "bos_id", "eos_id",
                 "tokenizer", "inputs", "text_key", "val_fraction", "seed", "created_by", "splits"]


@pytest.fixture(scope="module")
def docs():
    rng = random.Random(0)
    return [f"doc {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(1, 60))) for i in range(300)]


@pytest.fixture(scope="module")
def corpus(docs, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory):
    return train_tokenizer([corpus], 400, tmp_path_factory.mktemp("tok"), text_key="body")


def read_split(manifest: Manifest, split: str) -> list[np.ndarray]:
    """Samples of a split, read the way the loader does: header + data at j * member_bytes."""
    samples, index = [], 0
    dtype = np.dtype(manifest.dtype).newbyteorder("<")
    nbytes = manifest.sample_tokens * dtype.itemsize
    for path, shard in zip(manifest.shard_paths(split), manifest.splits[split].shards):
        data = path.read_bytes()
        for j in range(shard.num_samples):
            offset = j * manifest.member_bytes
            info = tarfile.TarInfo.frombuf(data[offset: offset + 512], "utf-8", "surrogateescape")
            assert (info.name, info.size) == (f"{index:010d}.tokens", nbytes)
            samples.append(np.frombuffer(data[offset + 512: offset + 512 + nbytes], dtype))
            index += 1
    return samples


def expected_streams(tok: Tokenizer, docs: list[str], seed: int, val_fraction: float) -> dict[str, list[int]]:
    streams = {"train": [], "val": []}
    for i, doc in enumerate(docs):
        streams["val" if is_val(seed, i, val_fraction) else "train"] += tok.encode_document(doc)
    return streams


def test_packing_reconstructs_the_exact_token_stream(tok_dir, corpus, docs, tmp_path):
    m = write_shards(tok_dir, [corpus], 16, tmp_path, text_key="body", val_fraction=0.2, samples_per_shard=7)
    expected = expected_streams(Tokenizer.load(tok_dir), docs, seed=0, val_fraction=0.2)
    for split in ("train", "val"):
        samples, info = read_split(m, split), m.splits[split]
        assert all(len(s) == 17 for s in samples)
        for a, b in zip(samples, samples[1:]):
            assert a[-1] == b[0]  # consecutive samples overlap by exactly one token
        stream = np.concatenate([samples[0]] + [s[1:] for s in samples[1:]]).tolist()
        assert stream == expected[split][: len(stream)]
        assert info.num_tokens == len(expected[split])
        assert info.dropped_tokens == len(expected[split]) - len(stream) < 16
        assert info.num_samples == len(samples) == (len(expected[split]) - 1) // 16
        assert [s.num_samples for s in info.shards[:-1]] == [7] * (len(info.shards) - 1)


def test_member_offsets_are_fixed_and_have_no_pax_headers(tok_dir, corpus, tmp_path):
    m = write_shards(tok_dir, [corpus], 100, tmp_path, text_key="body", samples_per_shard=5)
    assert m.member_bytes == 512 + 512 == member_bytes(101, 2)  # 202 bytes of uint16 round up to one block
    base = 0
    for path, shard in zip(m.shard_paths("train"), m.splits["train"].shards):
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            assert not tar.pax_headers
        assert [t.offset for t in members] == [j * m.member_bytes for j in range(shard.num_samples)]
        assert [t.name for t in members] == [f"{base + j:010d}.tokens" for j in range(shard.num_samples)]
        assert all(not t.pax_headers and t.mtime == 0 for t in members)
        base += shard.num_samples


def test_webdataset_reads_the_shards(tok_dir, corpus, tmp_path):
    m = write_shards(tok_dir, [corpus], 32, tmp_path, text_key="body", samples_per_shard=10)
    urls = [str(p) for p in m.shard_paths("train")]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:010d}" for i in range(m.splits["train"].num_samples)]
    ours = read_split(m, "train")
    assert all(np.array_equal(np.frombuffer(s["tokens"], "<u2"), o) for s, o in zip(samples, ours))


def test_loader_reads_what_was_written(tok_dir, corpus, tmp_path):
    from bigtrain.data.loader import ShardReader

    m = write_shards(tok_dir, [corpus], 32, tmp_path, text_key="body", samples_per_shard=10)
    reader, ours = ShardReader(Manifest.load(tmp_path), "train"), read_split(m, "train")
    assert all(np.array_equal(reader.read(i), ours[i]) for i in range(0, len(ours), 7))


def decoded_docs(tok: Tokenizer, samples: list[np.ndarray]) -> list[str]:
    """Whole documents (bos ... eos) found in a split's samples."""
    stream = np.concatenate([samples[0]] + [s[1:] for s in samples[1:]]).tolist()
    found, start = [], None
    for i, token in enumerate(stream):
        if token == tok.bos_id:
            start = i + 1
        elif token == tok.eos_id and start is not None:
            found.append(tok.decode(stream[start:i]))
            start = None
    return found


def test_val_split_is_deterministic_disjoint_and_seeded(tok_dir, corpus, docs, tmp_path):
    a = write_shards(tok_dir, [corpus], 8, tmp_path / "a", text_key="body", val_fraction=0.1)
    b = write_shards(tok_dir, [corpus], 8, tmp_path / "b", text_key="body", val_fraction=0.1)
    c = write_shards(tok_dir, [corpus], 8, tmp_path / "c", text_key="body", val_fraction=0.1, seed=1)
    assert a.splits == b.splits  # same shard bytes (sha256) for the same inputs and seed
    assert a.splits["val"].shards[0].sha256 != c.splits["val"].shards[0].sha256
    tok = Tokenizer.load(tok_dir)
    val, train = decoded_docs(tok, read_split(a, "val")), decoded_docs(tok, read_split(a, "train"))
    assert not set(val) & set(train)
    assert set(val) | set(train) <= set(docs) and len(set(val) | set(train)) >= len(docs) - 2
    assert a.splits["val"].num_documents == sum(is_val(0, i, 0.1) for i in range(len(docs)))
    assert 10 <= a.splits["val"].num_documents <= 50


@pytest.mark.parametrize("fraction, expected_val", [(1e-9, 1), (0.0, 0), (0.999999, 2)])
def test_each_split_gets_a_document_when_possible(tok_dir, tmp_path, fraction, expected_val):
    path = tmp_path / "three.jsonl"
    path.write_text("".join(json.dumps({"text": "doc: " + "alpha beta " * 30}) + "\n" for _ in range(3)))
    m = write_shards(tok_dir, [path], 8, tmp_path / "out", val_fraction=fraction)
    assert (m.splits["train"].num_documents, m.splits["val"].num_documents) == (3 - expected_val, expected_val)
    assert bool(m.splits["val"].shards) == bool(expected_val)


def test_manifest_contents(tok_dir, corpus, tmp_path):
    m = write_shards(tok_dir, [corpus], 64, tmp_path / "out", text_key="body", val_fraction=0.05)
    data = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert list(data) == CONTRACT_KEYS
    tok = Tokenizer.load(tok_dir)
    assert data["format"] == "bigtrain-shards/1"
    assert (data["seq_len"], data["sample_tokens"], data["dtype"], data["member_bytes"]) == (64, 65, "uint16", 1024)
    assert (data["vocab_size"], data["bos_id"], data["eos_id"]) == (400, tok.bos_id, tok.eos_id)
    assert data["tokenizer"] == {"path": str(tok_dir.resolve()), "sha256": tok.sha256}
    assert data["inputs"] == [str(corpus.resolve())]
    assert (data["text_key"], data["val_fraction"], data["seed"]) == ("body", 0.05, 0)
    assert list(data["splits"]) == ["train", "val"]
    for split in data["splits"].values():
        assert list(split) == ["num_documents", "num_samples", "num_tokens", "dropped_tokens", "shards"]
        assert split["num_samples"] * 64 + 1 + split["dropped_tokens"] == split["num_tokens"]
        assert all(list(s) == ["file", "num_samples", "sha256"] for s in split["shards"])
    assert Manifest.load(tmp_path / "out") == m
    assert Manifest.load(tmp_path / "out").root == (tmp_path / "out").resolve()


def test_dtype_and_shard_size_rules():
    assert (token_dtype(65536), token_dtype(65537)) == ("uint16", "uint32")
    assert member_bytes(2049, 2) == 512 + 4608 and member_bytes(256, 2) == 1024
    assert default_samples_per_shard(1024) == 262144


def test_rewriting_replaces_an_earlier_dataset(tok_dir, corpus, tmp_path):
    write_shards(tok_dir, [corpus], 16, tmp_path, text_key="body", samples_per_shard=3)
    m = write_shards(tok_dir, [corpus], 16, tmp_path, text_key="body")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "train-000000.tar", "val-000000.tar"]
    assert len(m.splits["train"].shards) == 1


def test_errors_name_the_file_and_leave_nothing_complete(tok_dir, corpus, tmp_path):
    out = tmp_path / "out"
    write_shards(tok_dir, [corpus], 16, out, text_key="body", samples_per_shard=3)  # an earlier dataset
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "fine"}\n' * 500 + "{broken\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:501: invalid JSON"):
        write_shards(tok_dir, [corpus, bad], 16, out, text_key="body", samples_per_shard=3)
    assert list(out.iterdir()) == []  # earlier dataset replaced, this run's shards removed, no manifest
    with pytest.raises(DataError, match=r"no documents in .*empty\.txt"):
        (tmp_path / "empty.txt").write_text("")
        write_shards(tok_dir, [tmp_path / "empty.txt"], 16, out)
    short = tmp_path / "short.txt"
    short.write_text("alpha beta")
    n = len(Tokenizer.load(tok_dir).encode_document("alpha beta"))
    with pytest.raises(DataError, match=rf"short\.txt: {n} tokens in all, {n} of them in the train split "
                                        r"\(1 documents\), but a sample needs seq_len \+ 1 = 1001"):
        write_shards(tok_dir, [short], 1000, out)
    with pytest.raises(DataError, match=r"tokenizer directory .*nowhere does not exist"):
        write_shards(tmp_path / "nowhere", [corpus], 16, out)
    assert list(out.iterdir()) == []


def test_manifest_load_errors(tok_dir, corpus, tmp_path):
    out = tmp_path / "out"
    m = write_shards(tok_dir, [corpus], 16, out, text_key="body", samples_per_shard=50)
    with pytest.raises(DataError, match=r"shard directory .*missing does not exist"):
        Manifest.load(tmp_path / "missing")
    with pytest.raises(DataError, match=r"has no manifest\.json"):
        Manifest.load(tmp_path)
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "format": "bigtrain-shards/2"}))
    with pytest.raises(DataError, match=r"manifest\.json: shard format version 2, this bigtrain reads version 1"):
        Manifest.load(out)
    path.write_text(json.dumps({**data, "format": "something-else/1"}))
    with pytest.raises(DataError, match="not a bigtrain shard manifest"):
        Manifest.load(out)
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "seq_len"}))
    with pytest.raises(DataError, match=r"manifest\.json: malformed manifest"):
        Manifest.load(out)
    path.write_text(json.dumps(data))
    shard = m.shard_paths("train")[1]
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"train-000001\.tar is truncated"):
        Manifest.load(out)
    shard.unlink()
    with pytest.raises(DataError, match=r"shard .*train-000001\.tar listed in .*manifest\.json is missing"):
        Manifest.load(out)
