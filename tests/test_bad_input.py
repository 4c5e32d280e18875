"""Every kind of bad input gives a clear error naming the file; corrupt shards met mid-run follow
``data.on_corrupt``: stop (every rank raises together, position kept) or skip (deterministic substitutes,
counted)."""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bigtrain.config.load import ConfigError
from bigtrain.data.errors import DataError, DataStop
from bigtrain.data.loader import StreamSpec, TrainLoader, TrainStream
from bigtrain.data.shards import write_shards
from bigtrain.data.sources import load_sources
from bigtrain.data.tokenizer import train_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import ids_source  # noqa: E402

TEXT = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}: " + TEXT * (i % 5 + 1)}) + "\n" for i in range(200)))
    return path


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory):
    return train_tokenizer([corpus], 320, tmp_path_factory.mktemp("tok") / "tok")


@pytest.fixture
def shards(tok_dir, corpus, tmp_path):
    write_shards(tok_dir, [corpus], 16, tmp_path / "shards", samples_per_shard=40, samples_per_block=8, workers=1)
    return tmp_path / "shards"


# --- before training: the shard tool's inputs ---------------------------------------------------------

@pytest.mark.parametrize("name, content", [("empty.jsonl", b""), ("blank.jsonl", b"\n  \n\n"),
                                           ("empty.txt.gz", gzip.compress(b"")),
                                           ("nokey.jsonl", b'{"text": ""}\n')])
def test_empty_input(tok_dir, tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=rf"no documents in .*{name}"):
        write_shards(tok_dir, [tmp_path / name], 16, tmp_path / "out", workers=2)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("name, content, where", [
    ("bad.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n', r"bad\.jsonl:2: invalid UTF-8 at byte offset 30"),
    ("bad.txt", b"plain text then \xff\xfe", r"bad\.txt: invalid UTF-8 at byte offset 16"),
    ("bad.jsonl.gz", gzip.compress(b'{"text": "ok"}\n\x80\n'), r"bad\.jsonl\.gz:2: invalid UTF-8 at byte offset 15"),
])
def test_non_utf8_bytes_name_the_file_and_offset(tok_dir, corpus, tmp_path, name, content, where):
    (tmp_path / name).write_bytes(content)
    for workers in (1, 2):  # the error comes back from a tokenizer worker process unchanged
        with pytest.raises(DataError, match=where):
            write_shards(tok_dir, [corpus, tmp_path / name], 16, tmp_path / "out", workers=workers)


def test_truncated_gzip_and_missing_input(tok_dir, corpus, tmp_path):
    data = gzip.compress(corpus.read_bytes())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: cannot read .*truncated or corrupt gzip"):
        write_shards(tok_dir, [tmp_path / "cut.jsonl.gz"], 16, tmp_path / "out")
    with pytest.raises(DataError, match=r"input .*nothere\.jsonl does not exist"):
        write_shards(tok_dir, [tmp_path / "nothere.jsonl"], 16, tmp_path / "out")


# --- before training: the shard directories the config names -------------------------------------------

def test_missing_and_truncated_shards_at_startup(shards):
    path = shards / "train-000001.tar"
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(DataError, match=rf"shard {path} is truncated: 700 bytes"):
        load_sources([(str(shards), 1.0, "")])
    path.unlink()
    with pytest.raises(DataError, match=rf"shard {path} listed in {shards / 'manifest.json'} is missing"):
        load_sources([(str(shards), 1.0, "")])


def test_tokenizer_replaced_after_sharding(shards, tok_dir, corpus, tmp_path):
    other = train_tokenizer([corpus], 300, tmp_path / "other")
    backup = tmp_path / "backup"
    shutil.copytree(tok_dir, backup)
    try:
        for name in ("tokenizer.model", "bigtrain_tokenizer.json"):
            shutil.copy(other / name, tok_dir / name)
        with pytest.raises(DataError, match=rf"tokenizer {tok_dir} \(vocab 300, .*\) is not the one the shards in "
                                            rf"{shards} were made with \(vocab 320, "):
            load_sources([(str(shards), 1.0, "")])
    finally:
        for name in ("tokenizer.model", "bigtrain_tokenizer.json"):
            shutil.copy(backup / name, tok_dir / name)


def test_sources_that_do_not_fit_together(shards, tok_dir, corpus, tmp_path):
    write_shards(tok_dir, [corpus], 32, tmp_path / "long", workers=1)
    with pytest.raises(ConfigError, match=rf"data\.sources: sources 'shards' \({shards}\) and 'long' \({tmp_path / 'long'}\) "
                                          r"differ in seq_len: 16 vs 32"):
        load_sources([(str(shards), 1.0, ""), (str(tmp_path / "long"), 1.0, "")])
    with pytest.raises(ConfigError, match=r"two sources are named 'shards'"):
        load_sources([(str(shards), 1.0, ""), (str(shards), 2.0, "")])
    with pytest.raises(DataError, match=r"shard directory .*nowhere does not exist"):
        load_sources([(str(tmp_path / "nowhere"), 1.0, "")])


# --- mid-run: shards that break after the run started ------------------------------------------------

def damage(path: Path, how: str) -> str:
    """Damage a shard the way the world does; returns the expected error text."""
    data = bytearray(path.read_bytes())
    if how == "missing":
        path.unlink()
        return "is missing"
    if how == "truncated":
        path.write_bytes(bytes(data[:-600]))
        return "is truncated"
    if how == "header":
        data[512 + 3 * 512 + 40] ^= 0xFF  # inside the tokens: caught by sha256 only ...
        data[0:10] = b"garbage!!!"  # ... and the first member's name
        path.write_bytes(bytes(data))
        return "is corrupt: at byte 0 expected member '0000000021.tokens'"
    data[512 + 100] ^= 0x01  # one bit of one token
    path.write_bytes(bytes(data))
    return "is corrupt: sha256 .* differs from .* in .*manifest.json"


@pytest.fixture
def ids(tmp_path):
    return ids_source(tmp_path / "ids", 63, samples_per_shard=21, samples_per_block=4)  # 3 shards


def bad_positions(source, bad_shard: int, positions: int) -> np.ndarray:
    spec = StreamSpec(8, 2, 0, 1, 3)
    _, _, samples = TrainStream([source], spec).locate(np.arange(positions))
    return np.flatnonzero(samples // 21 == bad_shard)  # 21 samples per shard


@pytest.mark.parametrize("how", ["missing", "truncated", "header", "checksum"])
def test_stop_policy_names_the_shard_and_keeps_the_position(ids, how):
    loader = TrainLoader([ids], StreamSpec(8, 2, 0, 1, 3), on_corrupt="stop")
    first_bad = int(bad_positions(ids, 1, 400)[0])
    steps_before = first_bad // 8
    for _ in range(steps_before):  # nothing of shard 1 read yet: the damage is found mid-run
        loader.next_step()
    expected = damage(ids.path / "train-000001.tar", how)
    with pytest.raises(DataStop, match=rf"corrupt training data at sample {steps_before * 8} .*train-000001\.tar {expected}"):
        loader.next_step()
    assert loader.state_dict()["position"] == steps_before * 8  # the checkpoint resumes before the bad step


def test_checksums_can_be_left_to_bigtrain_data_verify(ids):
    damage(ids.path / "train-000001.tar", "checksum")
    loader = TrainLoader([ids], StreamSpec(8, 2, 0, 1, 3), on_corrupt="stop", verify_checksums=False)
    for _ in range(30):
        loader.next_step()  # a flipped token bit passes the size and header checks


@pytest.mark.parametrize("how", ["truncated", "header"])
def test_skip_policy_is_deterministic_for_any_layout(ids, how):
    """Each sample of the bad shard is replaced by the same substitute whatever reads it; nothing else moves.

    Without torch.distributed each loader counts its own replacements (the all-reduce that sums them
    over ranks runs in the end-to-end test, tests/test_data_training.py)."""
    damage(ids.path / "train-000002.tar", how)
    steps, bad = 20, bad_positions(ids, 2, 160)
    assert len(bad) > 10
    runs = {}
    for dp, workers in ((1, 0), (2, 2)):
        loaders = [TrainLoader([ids], StreamSpec(8, 2, r, dp, 3), num_workers=workers, on_corrupt="skip")
                   for r in range(dp)]
        per_rank = [[np.concatenate([t[:, 0].numpy() for t in loader.next_step()]) for _ in range(steps)]
                    for loader in loaders]
        runs[dp] = np.concatenate([np.concatenate([per_rank[r][s] for r in range(dp)]) for s in range(steps)])
        assert sum(loader.skipped_samples for loader in loaders) == len(bad)
        assert {tuple(loader.corrupt_shards) for loader in loaders} == {(str(ids.path / "train-000002.tar"),)}
    assert np.array_equal(runs[1], runs[2])
    assert not np.any(runs[1] >= 42)  # nothing of shard 2 (samples 42..62) was trained on
    keep = np.setdiff1d(np.arange(160), bad)
    assert np.array_equal(runs[1][keep], order_samples(ids, 160)[keep])  # only the bad positions changed


def order_samples(source, positions: int) -> np.ndarray:
    _, _, samples = TrainStream([source], StreamSpec(8, 2, 0, 1, 3)).locate(np.arange(positions))
    return samples


def test_skip_with_no_readable_sample_left_stops(ids):
    for shard in range(3):
        damage(ids.path / f"train-00000{shard}.tar", "header")
    loader = TrainLoader([ids], StreamSpec(8, 2, 0, 1, 3), on_corrupt="skip")
    with pytest.raises(DataStop, match=r"no readable sample found in 64 tries for position 0 of source .*ids: "
                                        r"most of its shards are corrupt \(3 found\)"):
        loader.next_step()
