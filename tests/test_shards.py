"""Shards: exact packing, fixed member offsets (format 2: blocks of samples), deterministic val split,
manifest, byte-identical output for any number of workers, idempotent re-runs, and failure modes."""

import gzip
import json
import os
import random
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import webdataset as wds

from bigtrain.data import tarlayout
from bigtrain.data.errors import DataError
from bigtrain.data.manifest import Manifest, token_dtype
from bigtrain.data.shards import choose_layout, is_val, write_shards
from bigtrain.data.tokenizer import Tokenizer, train_tokenizer

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
CONTRACT_KEYS = ["format", "seq_len", "sample_tokens", "dtype", "samples_per_block", "member_bytes", "vocab_size",
                 "bos_id", "eos_id", "tokenizer", "inputs", "input_stats", "text_key", "val_fraction", "seed",
                 "created_by", "splits"]


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
    """Samples of a split, parsed independently of the loader: member j at j * member_bytes holds a block."""
    samples, index = [], 0
    dtype = np.dtype(manifest.dtype).newbyteorder("<")
    nbytes, k = manifest.sample_tokens * dtype.itemsize, manifest.samples_per_block
    for path, shard in zip(manifest.shard_paths(split), manifest.splits[split].shards):
        data = path.read_bytes()
        for j in range(-(-shard.num_samples // k)):
            offset = j * manifest.member_bytes
            info = tarfile.TarInfo.frombuf(data[offset: offset + 512], "utf-8", "surrogateescape")
            count = min(k, shard.num_samples - j * k)
            assert (info.name, info.size) == (f"{index:010d}.tokens", count * nbytes)
            block = np.frombuffer(data[offset + 512: offset + 512 + count * nbytes], dtype)
            samples += list(block.reshape(count, manifest.sample_tokens))
            index += count
    return samples


def expected_streams(tok: Tokenizer, docs: list[str], seed: int, val_fraction: float) -> dict[str, list[int]]:
    streams = {"train": [], "val": []}
    for i, doc in enumerate(docs):
        streams["val" if is_val(seed, i, val_fraction) else "train"] += tok.encode_document(doc)
    return streams


def test_packing_reconstructs_the_exact_token_stream(tok_dir, corpus, docs, tmp_path):
    m = write_shards(tok_dir, [corpus], 16, tmp_path, text_key="body", val_fraction=0.2, samples_per_shard=7,
                     samples_per_block=3)
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
    m = write_shards(tok_dir, [corpus], 100, tmp_path, text_key="body", samples_per_shard=11, samples_per_block=4)
    assert m.member_bytes == 512 + 1024 == tarlayout.member_bytes(4, 202)  # 4 x 202 bytes round up to 2 blocks
    base = 0
    for path, shard in zip(m.shard_paths("train"), m.splits["train"].shards):
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            assert not tar.pax_headers
        sizes = tarlayout.member_sizes(shard.num_samples, 4)
        assert [t.offset for t in members] == [j * m.member_bytes for j in range(len(sizes))]
        assert [t.name for t in members] == [f"{base + 4 * j:010d}.tokens" for j in range(len(sizes))]
        assert [t.size for t in members] == [n * 202 for n in sizes]
        assert all(not t.pax_headers and t.mtime == 0 and t.mode == 0o644 for t in members)
        assert path.stat().st_size == tarlayout.shard_bytes(shard.num_samples, 4, 202)
        base += shard.num_samples


def test_webdataset_reads_the_shards(tok_dir, corpus, tmp_path):
    m = write_shards(tok_dir, [corpus], 32, tmp_path, text_key="body", samples_per_shard=10, samples_per_block=4)
    urls = [str(p) for p in m.shard_paths("train")]
    blocks = list(wds.WebDataset(urls, shardshuffle=False))
    starts = [i for shard in range(len(urls)) for i in range(shard * 10, min(shard * 10 + 10, 10**9), 4)]
    assert [b["__key__"] for b in blocks] == [f"{i:010d}" for i in starts][:len(blocks)]
    samples = np.concatenate([np.frombuffer(b["tokens"], "<u2").reshape(-1, 33) for b in blocks])
    ours = read_split(m, "train")
    assert len(samples) == len(ours) == m.splits["train"].num_samples
    assert np.array_equal(samples, np.stack(ours))


def test_loader_reads_what_was_written(tok_dir, corpus, tmp_path):
    from bigtrain.data.reader import ShardReader

    m = write_shards(tok_dir, [corpus], 32, tmp_path, text_key="body", samples_per_shard=10, samples_per_block=3)
    reader, ours = ShardReader(Manifest.load(tmp_path), "train"), read_split(m, "train")
    assert all(np.array_equal(reader.read(i), ours[i]) for i in range(0, len(ours), 7))
    assert np.array_equal(reader.read_many(np.arange(len(ours))[::-1]).numpy(), np.stack(ours)[::-1])


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
    assert data["format"] == "bigtrain-shards/2"
    k = (1 << 20) // 130  # default: ~1 MiB of samples per member
    assert (data["seq_len"], data["sample_tokens"], data["dtype"]) == (64, 65, "uint16")
    assert (data["samples_per_block"], data["member_bytes"]) == (k, 512 + -(-k * 130 // 512) * 512)
    assert data["input_stats"] == [[corpus.stat().st_size, corpus.stat().st_mtime_ns]]
    assert (data["vocab_size"], data["bos_id"], data["eos_id"]) == (400, tok.bos_id, tok.eos_id)
    assert data["tokenizer"] == {"path": str(tok_dir.resolve()), "sha256": tok.sha256, "backend": "sentencepiece"}
    assert data["inputs"] == [str(corpus.resolve())]
    assert (data["text_key"], data["val_fraction"], data["seed"]) == ("body", 0.05, 0)
    assert list(data["splits"]) == ["train", "val"]
    for split in data["splits"].values():
        assert list(split) == ["num_documents", "num_samples", "num_tokens", "dropped_tokens", "shards"]
        assert split["num_samples"] * 64 + 1 + split["dropped_tokens"] == split["num_tokens"]
        assert all(list(s) == ["file", "num_samples", "sha256"] for s in split["shards"])
    assert Manifest.load(tmp_path / "out") == m
    assert Manifest.load(tmp_path / "out").root == (tmp_path / "out").resolve()


def test_dtype_block_and_shard_size_rules():
    assert (token_dtype(65536), token_dtype(65537)) == ("uint16", "uint32")
    layout = choose_layout(2048, 32000, None, None)  # 4098-byte samples
    assert (layout.samples_per_block, layout.samples_per_shard) == (255, 255 * 256)  # ~1 MiB members, ~256 MiB shards
    assert choose_layout(2048, 100_000, None, None).dtype == np.dtype("<u4")
    assert choose_layout(16, 400, 7, None).samples_per_block == 7  # a block never exceeds a shard
    assert tarlayout.member_bytes(255, 4098) == 512 + 1044992  # 255 x 4098 = 1044990 bytes, padded to 512
    # 600 samples: 2 full members, a short one of 90 samples (368820 bytes -> 369152), the end marker
    assert tarlayout.shard_bytes(600, 255, 4098) == 2 * (512 + 1044992) + 512 + 369152 + 1024


def test_encoding_is_compact(tok_dir, corpus, tmp_path):
    """Format 1 spent 1024 bytes per 129-token uint16 sample (258 bytes of tokens); format 2 < 1 % overhead."""
    m = write_shards(tok_dir, [corpus] * 8, 128, tmp_path, text_key="body", val_fraction=0.0)
    train = m.splits["train"]
    size = sum(p.stat().st_size for p in m.shard_paths("train"))
    assert train.num_samples > 500
    assert size <= 1.01 * train.num_samples * 258 + 2048, (size, train.num_samples)


def test_rewriting_replaces_an_earlier_dataset(tok_dir, corpus, tmp_path):
    write_shards(tok_dir, [corpus], 16, tmp_path, text_key="body", samples_per_shard=3)
    m = write_shards(tok_dir, [corpus], 16, tmp_path, text_key="body", samples_per_shard=10**6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "train-000000.tar", "val-000000.tar"]
    assert len(m.splits["train"].shards) == 1


def test_errors_name_the_file_and_leave_nothing_half_written(tok_dir, corpus, tmp_path):
    out = tmp_path / "out"
    earlier = write_shards(tok_dir, [corpus], 16, out, text_key="body", samples_per_shard=3)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "fine"}\n' * 500 + "{broken\n")
    for workers in (1, 2):
        with pytest.raises(DataError, match=r"bad\.jsonl:501: invalid JSON"):
            write_shards(tok_dir, [corpus, bad], 16, out, text_key="body", samples_per_shard=3, workers=workers)
        # this run's temp dir is gone; the earlier complete dataset is untouched
        assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before
    assert Manifest.load(out) == earlier
    for path in out.iterdir():
        path.unlink()
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
    path.write_text(json.dumps({**data, "format": "bigtrain-shards/1"}))
    with pytest.raises(DataError, match=r"manifest\.json: shard format version 1 \(one 1 KiB tar member per sample; "
                                        r"version 2 .*\), this bigtrain reads version 2; re-shard with `bigtrain data "
                                        r"shard`"):
        Manifest.load(out)
    path.write_text(json.dumps({**data, "format": "something-else/1"}))
    with pytest.raises(DataError, match="not a bigtrain shard manifest"):
        Manifest.load(out)
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "seq_len"}))
    with pytest.raises(DataError, match=r"manifest\.json: malformed manifest"):
        Manifest.load(out)
    path.write_text(json.dumps(data))
    shard = m.shard_paths("train")[1]
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"train-000001\.tar is truncated: 1000 bytes, 50 samples in blocks of"):
        Manifest.load(out)
    shard.unlink()
    with pytest.raises(DataError, match=r"shard .*train-000001\.tar listed in .*manifest\.json is missing"):
        Manifest.load(out)


def test_shards_are_byte_identical_for_any_number_of_workers(tok_dir, corpus, tmp_path):
    """Chunks are tokenized on N processes but consumed in input order: the files cannot differ."""
    results = {w: write_shards(tok_dir, [corpus, corpus], 16, tmp_path / f"w{w}", text_key="body", val_fraction=0.1,
                               samples_per_shard=40, samples_per_block=6, workers=w, chunk_bytes=2000)
               for w in (1, 2, 3)}  # ~2000-byte chunks: ~60 tokenizer tasks spread over the workers
    files = {w: {p.name: p.read_bytes() for p in sorted((tmp_path / f"w{w}").glob("*.tar"))} for w in results}
    assert len(files[1]) > 4
    assert files[1] == files[2] == files[3]
    assert results[1].splits == results[2].splits == results[3].splits


def test_rerun_is_idempotent_and_verifies(tok_dir, corpus, tmp_path, capfd):
    out = tmp_path / "out"
    first = write_shards(tok_dir, [corpus], 16, out, text_key="body", samples_per_shard=50)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capfd.readouterr()
    again = write_shards(tok_dir, [corpus], 16, out, text_key="body", samples_per_shard=50)
    assert "up to date" in capfd.readouterr().err
    assert again == first and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    # a damaged shard is found by the verification and the dataset is rebuilt
    shard = first.shard_paths("train")[1]
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    rebuilt = write_shards(tok_dir, [corpus], 16, out, text_key="body", samples_per_shard=50)
    assert "sha256" in capfd.readouterr().err and rebuilt.splits == first.splits
    # a changed option or input rebuilds
    other = write_shards(tok_dir, [corpus], 16, out, text_key="body", samples_per_shard=60)
    assert "up to date" not in capfd.readouterr().err and other.splits["train"].shards[0].num_samples == 60
    os.utime(corpus)
    write_shards(tok_dir, [corpus], 16, out, text_key="body", samples_per_shard=60)
    assert "up to date" not in capfd.readouterr().err


def test_cli_shards_text_jsonl_and_gzip_then_verifies(tok_dir, docs, tmp_path):
    jsonl = tmp_path / "a.jsonl.gz"
    jsonl.write_bytes(gzip.compress("".join(json.dumps({"content": d}) + "\n" for d in docs[:150]).encode()))
    text = tmp_path / "b.txt"
    text.write_text("\n".join(docs[150:]))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "bigtrain.cli", "data"]
    proc = subprocess.run(cli + ["shard", "--tokenizer", str(tok_dir), "--input", str(jsonl), str(text),
                                 "--text-key", "content", "--seq-len", "16", "--out", str(out), "--workers", "2"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = Manifest.load(out)
    tok = Tokenizer.load(tok_dir)
    assert m.splits["train"].num_documents + m.splits["val"].num_documents == 151  # 150 JSONL docs + 1 text file
    assert m.splits["train"].num_tokens + m.splits["val"].num_tokens == (
        sum(len(tok.encode_document(d)) for d in docs[:150]) + len(tok.encode_document("\n".join(docs[150:]))))
    proc = subprocess.run(cli + ["verify", str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "verified" in proc.stdout, proc.stderr
    shard = m.shard_paths("train")[0]
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x01")  # last byte of the end marker
    proc = subprocess.run(cli + ["verify", str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"{shard} is corrupt" in proc.stderr, proc.stderr
