"""Shards read from a URL (bigtrain/data/remote.py, shard_cache.py) with a real ``python -m http.server`` on
127.0.0.1 serving a shard directory, and ``pipe:cat DIR/{}``.

Loader level: the stream from the URL equals the local one chunk for chunk, the cache (smaller than the
dataset) never exceeds its bound (sampled while reading), the ranks of a "node" share it; a server that
stops gives retries then an error naming the URL. Training level (slow): a run from the URL has
exactly the losses of the same run from the local path, across a SIGKILL + restart and an elastic DP
change (2 -> 1); the server stopped mid-run makes every rank stop with a checkpoint and an error naming
the URL, and the restarted run loses nothing.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from launch import run_ranks  # noqa: E402
from tiny_run import tiny_shards  # noqa: E402

from bigtrain.data import remote  # noqa: E402
from bigtrain.data.errors import CorruptShardError, DataError  # noqa: E402
from bigtrain.data.manifest import Manifest  # noqa: E402
from bigtrain.data.reader import ShardReader  # noqa: E402
from bigtrain.data.remote import cache_usage  # noqa: E402
from bigtrain.data.shards import write_samples  # noqa: E402
from bigtrain.data.sources import load_sources  # noqa: E402
from bigtrain.data.stream import StreamSpec, TrainStream  # noqa: E402

PER_SHARD = 16
TINY = ["--config", "debug", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=2",
        "model.ffn_hidden_size=64", "model.seq_len=64", "parallel.tensor_parallel=1", "parallel.zero_stage=1",
        "train.global_batch_size=32", "train.micro_batch_size=4", "train.warmup_steps=1", "checkpoint.every=2",
        "log.every=1", "log.tensorboard=false", "eval.every=0"]


class Server:
    """``python -m http.server`` on 127.0.0.1 serving ``root``; stop() and start() again on the same port."""

    def __init__(self, root: Path):
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                                      "--directory", str(self.root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("http.server did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


class CacheWatch:
    """Samples the cache's size every few ms in a thread; ``peak`` is the largest seen."""

    def __init__(self, cache: Path):
        self.cache, self.peak, self.samples, self._stop = cache, 0, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self._stop.is_set():
            if self.cache.exists():
                self.peak = max(self.peak, cache_usage(self.cache))
                self.samples += 1
            time.sleep(0.002)

    def stop(self) -> int:
        self._stop.set()
        self.thread.join()
        return self.peak


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(local shard dir, server): the embedded dataset rewritten in shards of 16 samples (~20 train shards)."""
    root = tmp_path_factory.mktemp("served")
    m = Manifest.load(tiny_shards(tmp_path_factory))
    splits = {s: ShardReader(m, s).read_many(range(min(320, m.splits[s].num_samples))).numpy()
              for s in ("train", "val")}
    write_samples(root / "shards", splits, m.vocab_size, m.tokenizer, samples_per_shard=PER_SHARD,
                  samples_per_block=4)
    server = Server(root)
    yield root / "shards", server
    server.stop()


def shard_bytes(shards: Path) -> int:
    return max(p.stat().st_size for p in shards.glob("train-*.tar"))


def test_url_and_pipe_streams_equal_the_local_one_within_the_cache_bound(served, tmp_path):
    local, server = served
    bound = 3 * shard_bytes(local)
    spec = StreamSpec(32, 4, 1, 2, 1234)
    expected = TrainStream(load_sources([(str(local), 1.0, "")]), spec)
    watch = CacheWatch(tmp_path / "cache")
    for url in (server.url("shards"), f"pipe:cat {local}/{{}}"):
        sources = load_sources([(url, 1.0, "")], cache_dir=str(tmp_path / "cache"), cache_bytes=bound)
        assert sources[0].name == "shards" and sources[0].path == url
        chunks = zip(iter(expected), iter(TrainStream(sources, spec)), range(3))  # 4096 samples a chunk: 13 epochs
        for a, b, _ in chunks:
            assert not b.notes and a.tokens.equal(b.tokens)
    assert 0 < watch.stop() <= bound
    files = [p for p in (tmp_path / "cache").glob("*/*.tar*") if not p.name.endswith(".lock")]
    assert files and all(p.suffix == ".tar" for p in files)  # no reserved download left behind


def test_ranks_of_a_node_share_the_cache(served, tmp_path):
    """Processes fetching at once: each shard is fetched once, all read the same bytes, bound kept."""
    local, server = served
    bound = 6 * shard_bytes(local)
    script = ("import sys, numpy as np; from bigtrain.data.sources import load_sources; "
              "from bigtrain.data.reader import ShardReader; "
              f"s = load_sources([('{server.url('shards')}', 1.0, '')], cache_dir='{tmp_path / 'cache'}', "
              f"cache_bytes={bound}); r = ShardReader(s[0].manifest, 'train'); "
              "print(int(r.read_many(range(r.num_samples)).sum()))")
    watch = CacheWatch(tmp_path / "cache")
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda _: subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                                      check=True).stdout, range(3)))
    reader = ShardReader(Manifest.load(local), "train")
    assert outs == [f"{int(reader.read_many(range(reader.num_samples)).sum())}\n"] * 3
    assert watch.stop() <= bound


def test_unavailable_shards_and_bad_settings(served, tmp_path, monkeypatch):
    local, server = served
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    with pytest.raises(DataError, match=r"cannot read the shard manifest: .*/nowhere/manifest\.json unavailable "
                                        r"after 5 attempt\(s\): HTTP 404"):
        load_sources([(server.url("nowhere"), 1.0, "")], cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=r"data\.cache_bytes=100 cannot hold one shard of"):
        load_sources([(server.url("shards"), 1.0, "")], cache_dir=str(tmp_path / "c"), cache_bytes=100)
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in local.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    source = load_sources([(f"pipe:cat {copy}/{{}}", 1.0, "")], cache_dir=str(tmp_path / "c"),
                          cache_bytes=1 << 20)[0]
    reader = ShardReader(source.manifest, "train")
    (copy / "train-000001.tar").unlink()  # the "bucket" lost a shard: the command fails
    raw = bytearray((copy / "train-000002.tar").read_bytes())
    raw[600] ^= 1
    (copy / "train-000002.tar").write_bytes(bytes(raw))  # and one is damaged: its sha256 differs
    out, bad = reader.gather(np.arange(PER_SHARD * 3))
    assert bad == list(range(PER_SHARD, 3 * PER_SHARD)) and out[:PER_SHARD].any()
    assert reader.errors[1].startswith(f"shard pipe:cat {copy}/train-000001.tar unavailable after 5 attempt(s): "
                                       "command exited with status 1")
    assert "sha256" in reader.errors[2] and f"{copy}/train-000002.tar" in reader.errors[2]
    with pytest.raises(CorruptShardError, match=r"train-000001\.tar unavailable"):
        reader.read(PER_SHARD)
    proc = subprocess.run([sys.executable, "bigtrain/pretrain.py", "data.path=pipe:cat /x/shards"], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2 and "a pipe: URL marks where the file name goes with {}" in proc.stderr


def rows_by_step(run: Path) -> dict[int, tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["grad_norm"], r["consumed_samples"]) for r in rows}  # last occurrence wins


def pretrain(run: Path, data: str, steps: int, ranks: int, *extra: str, env: dict | None = None, check=True):
    return run_ranks("bigtrain/pretrain.py", ranks, [*TINY, f"run.dir={run}", f"data.path={data}",
                                                     f"train.steps={steps}", *extra], timeout=300, env=env,
                     check=check)


def killed_then_resumed(run: Path, data: str, hold: Path, *extra: str) -> dict[int, tuple]:
    """DP2 for 6 steps, SIGKILLed after step 3 (checkpoint: step 2), restarted on one rank (DP1) to step 6."""
    from chaos import Launch

    job = Launch([*TINY, f"run.dir={run}", f"data.path={data}", "train.steps=6", *extra], 2, run,
                 run.parent / f"{run.name}-killed.log", {"BIGTRAIN_TEST_HOLD": "after_step:3",
                                                         "BIGTRAIN_TEST_HOLD_DIR": str(hold)})
    job.wait_for(lambda: len(list(hold.glob("after_step:3.rank*"))) == 2, 300, "both ranks after step 3")
    job.kill()  # like a node failure: step 3 is done but not checkpointed
    pretrain(run, data, 6, 1, *extra)  # restarts from step 2's checkpoint, on one rank: elastic DP 2 -> 1
    return rows_by_step(run)


@pytest.mark.slow
def test_training_from_a_url_matches_local_across_kill_and_elastic_resume(served, tmp_path):
    local, server = served
    cache = [f"data.cache_dir={tmp_path / 'cache'}", f"data.cache_bytes={4 * shard_bytes(local)}"]
    expected = killed_then_resumed(tmp_path / "local", str(local), tmp_path / "hold-local")
    assert sorted(expected) == list(range(1, 7))
    watch = CacheWatch(tmp_path / "cache")
    assert killed_then_resumed(tmp_path / "url", server.url("shards"), tmp_path / "hold-url", *cache) == expected
    assert watch.stop() <= 4 * shard_bytes(local)


@pytest.mark.slow
def test_server_stopped_mid_run_stops_with_a_checkpoint_and_loses_nothing(served, tmp_path):
    """A rank reads 4096 samples per chunk (stream.py): at G=64 and DP=2, steps 1-128 come from the first
    read; step 129 reads again, all over the dataset, and the cache holds 4 of its 20 train shards."""
    from chaos import Launch

    local, server = served
    args = ["train.global_batch_size=64", "train.micro_batch_size=32", "checkpoint.every=64",
            f"data.cache_dir={tmp_path / 'cache'}", f"data.cache_bytes={4 * shard_bytes(local)}"]
    reference = tmp_path / "local"
    pretrain(reference, str(local), 130, 2, *args)
    run, hold = tmp_path / "url", tmp_path / "hold"
    job = Launch([*TINY, f"run.dir={run}", f"data.path={server.url('shards')}", "train.steps=130", *args], 2, run,
                 tmp_path / "stopped.log", {"BIGTRAIN_TEST_HOLD": "after_step:128", "BIGTRAIN_TEST_HOLD_DIR": str(hold)})
    try:
        job.wait_for(lambda: len(list(hold.glob("after_step:128.rank*"))) == 2, 300, "both ranks after step 128")
        server.stop()
        (hold / "after_step:128.release").touch()
        job.proc.wait(timeout=300)
    finally:
        if server.proc.poll() is not None:
            server.start()
    log = job.log_path.read_text()
    assert job.proc.returncode != 0
    assert "error: corrupt training data at sample 8192 of the stream: shard " + server.url("shards/train-") in log
    assert "unavailable after 5 attempt(s)" in log
    assert sorted(rows_by_step(run)) == list(range(1, 129))
    meta = json.loads((run / "checkpoints" / "step_00000128" / "meta.json").read_text())
    assert meta["step"] == 128 and meta["data"]["position"] == 8192
    pretrain(run, server.url("shards"), 130, 2, *args)  # the server is back: nothing lost
    assert rows_by_step(run) == rows_by_step(reference)
