"""The embedded dataset cache: built once under a lock however many ranks ask, then instant."""

import os
import platform
import subprocess
import sys
import time

import pytest

from bigtrain.data.embedded import FORMAT_VERSION, default_cache_dir, ensure_embedded_dataset
from bigtrain.data.manifest import Manifest

BUILDER = "import sys; from bigtrain.data.embedded import ensure_embedded_dataset as e; print(e(64, sys.argv[1]))"


@pytest.fixture(scope="module")
def concurrent_build(tmp_path_factory):
    """Two processes ask for the same dataset at the same moment; returns (cache, their outputs)."""
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(cache)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return cache, outputs


def test_two_concurrent_builders_produce_one_dataset(concurrent_build):
    cache, outputs = concurrent_build
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    logs = "".join(err for _, err in outputs)
    for stage in ("built embedded corpus", "built a 4096-token BPE tokenizer", "built shards"):
        assert logs.count(stage) == 1, logs  # exactly one process built each stage
    root = cache / "embedded" / f"py{platform.python_version()}-v{FORMAT_VERSION}"
    assert sorted(p.name for p in root.iterdir()) == [".lock", "corpus.jsonl", "shards-4096-64", "tokenizer-4096"]
    m = Manifest.load(paths.pop())
    assert (m.seq_len, m.vocab_size) == (64, 4096)
    assert m.splits["train"].num_samples > 5000 and m.splits["val"].num_samples > 0
    assert m.tokenizer_dir == root / "tokenizer-4096"


def test_second_call_is_instant_and_other_seq_lens_reuse_the_tokenizer(concurrent_build, capfd):
    cache, outputs = concurrent_build
    started = time.perf_counter()
    path = ensure_embedded_dataset(64, cache)
    assert time.perf_counter() - started < 0.05
    assert str(path) == outputs[0][0].strip()
    assert capfd.readouterr().err == ""
    other = ensure_embedded_dataset(32, cache)
    logged = capfd.readouterr().err
    assert logged.count("[bigtrain.data]") == 1 and "built shards" in logged  # corpus and tokenizer reused
    assert Manifest.load(other).tokenizer == Manifest.load(path).tokenizer


def test_an_unfinished_build_is_replaced(concurrent_build):
    cache, _ = concurrent_build
    path = ensure_embedded_dataset(256, cache)
    (path / "manifest.json").unlink()  # as if a builder died before its rename (or someone tampered)
    stale = path.parent / ".tmp-shards-4096-256-dead"
    stale.mkdir()
    assert ensure_embedded_dataset(256, cache) == path
    Manifest.load(path)
    assert not stale.exists()


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BIGTRAIN_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("BIGTRAIN_CACHE")
    assert default_cache_dir() == default_cache_dir().home() / ".cache" / "bigtrain"
