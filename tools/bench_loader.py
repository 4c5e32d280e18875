"""Loader throughput per core vs a numpy memmap of the same data, and vs what one GPU consumes.

    python tools/bench_loader.py                       # seq_len 2048, 100k samples (~400 MB), micro-batch 8
    python tools/bench_loader.py --samples 20000 --seq-len 128 --model 1.3b --json out.json

Builds a synthetic dataset (random uint16 tokens) twice: as bigtrain shards (format 2, many small
shards so that consecutive samples of the order lie in different files, as in a real corpus) and as
one flat ``(N, seq_len + 1)`` uint16 ``.npy``. Both files are read once first, so both are read from the
page cache: the memmap is then the physical limit of this box (a memcpy per sample). Every reader
reads the same samples in the same order (the loader's global order, one data-parallel rank), one
micro-batch at a time, in this one process (per core):

- ``memmap``: ``mm[ids]`` per micro-batch, the sample ids precomputed (no order computation);
- ``stream``: bigtrain's TrainStream iterated directly (order + mixing + shard lookup + copy);
- ``loader``: TrainLoader.next_step (adds the DataLoader around the stream), ``--workers`` 0;
- ``loader_wN``: with N DataLoader workers (wall-clock rate of the whole box, not per core).

Rates are tokens per CPU-second of this process (per core), best of ``--rounds`` interleaved rounds.

With ``--remote``: the same shards served by ``python -m http.server`` on 127.0.0.1 and read through the
node-local cache (docs/data.md), wall-clock: the time to the first micro-batch from an empty cache (the
first chunk fetches the shards it touches, i.e. nearly all of them) and its fetch rate, then tokens/s of
TrainStream with ``remote_warm`` (cache holding the
dataset: every shard fetched once, then read like local ones) and ``remote_quarter`` (a cache of a
quarter of the dataset: the global order refetches shards every chunk).

Also: the one-off cost of opening a shard (size + every tar header, then sha256 when
``data.verify_checksums``), and the tokens/s one GPU consumes: training FLOPs per token
``6 * N + 12 * L * d * T`` (N = parameters in matmuls, the attention term for causal
self-attention over T tokens) at ``--mfu`` of ``--peak-tflops`` (H100 SXM bf16 dense: 989).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bigtrain.data.integrity import check_layout, check_sha256, map_shard  # noqa: E402
from bigtrain.data.loader import StreamSpec, TrainLoader, TrainStream  # noqa: E402
from bigtrain.data.manifest import Manifest, TokenizerRef  # noqa: E402
from bigtrain.data.shards import write_samples  # noqa: E402
from bigtrain.data.sources import Source  # noqa: E402

MODELS = {  # hidden, layers, ffn (SwiGLU), vocab (untied), seq_len
    "1.3b": (2048, 24, 5504, 32000, 2048),
    "7b": (4096, 32, 11008, 32000, 4096),
}


def flops_per_token(hidden: int, layers: int, ffn: int, vocab: int, seq_len: int) -> tuple[float, float]:
    """(training FLOPs per token, parameters in matmuls) of a Llama with full multi-head attention."""
    matmul_params = layers * (4 * hidden * hidden + 3 * hidden * ffn) + hidden * vocab  # + output head
    return 6 * matmul_params + 12 * layers * hidden * seq_len, matmul_params


def build(root: Path, samples: int, seq_len: int, vocab: int, per_shard: int) -> tuple[Source, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, size=(samples, seq_len + 1), dtype=np.uint16)
    write_samples(root / "shards", {"train": tokens}, vocab, TokenizerRef("/synthetic", "0" * 64),
                  samples_per_shard=per_shard)
    np.save(root / "flat.npy", tokens)
    manifest = Manifest.load(root / "shards")
    for path in [*manifest.shard_paths("train"), root / "flat.npy"]:  # into the page cache
        path.read_bytes()
    return Source("bench", root / "shards", 1.0, manifest), np.load(root / "flat.npy", mmap_mode="r")


def rate(fn, tokens_per_call: int, seconds: float, clock=time.process_time) -> float:
    """tokens per second of ``clock`` over repeated fn() calls for about ``seconds`` of wall time.

    The default clock is this process's CPU time: tokens per core-second, which other load on a shared
    box does not dilute (wall time would). Workers run in other processes: measured with wall time.
    """
    fn()
    calls, start, wall = 0, clock(), time.perf_counter()
    while time.perf_counter() - wall < seconds:
        fn()
        calls += 1
    return calls * tokens_per_call / (clock() - start)


def readers(source: Source, flat: np.ndarray, args) -> dict:
    """name -> a function returning the next micro-batch; all read the same sample sequence."""
    spec = StreamSpec(args.micro_batch, args.micro_batch, 0, 1, seed=0)
    stream = TrainStream([source], spec, verify_checksums=False)
    ids = stream.locate(stream.positions(np.arange(200_000)))[2].reshape(-1, args.micro_batch)
    k = iter(range(10**12))
    batches = (tokens for chunk in stream for tokens, _ in chunk.batches())
    out = {"memmap": lambda: flat[ids[next(k) % len(ids)]], "stream": lambda: next(batches),
           "loader": TrainLoader([source], spec, num_workers=0, verify_checksums=False).next_step}
    for workers in args.workers:
        out[f"loader_w{workers}"] = TrainLoader([source], spec, num_workers=workers, verify_checksums=False).next_step
    return out


def measure(source: Source, flat: np.ndarray, args) -> dict:
    """Best of ``--rounds`` interleaved rounds per reader: the least disturbed by other load on the box."""
    per_batch = args.micro_batch * (args.seq_len + 1)
    fns = readers(source, flat, args)
    best = dict.fromkeys(fns, 0.0)
    for _ in range(args.rounds):
        for name, fn in fns.items():
            clock = time.perf_counter if name.startswith("loader_w") else time.process_time
            best[name] = max(best[name], rate(fn, per_batch, args.seconds, clock))
    return best


def serve(root: Path):
    """``python -m http.server`` on a free loopback port serving ``root``; -> (process, base URL)."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                             str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}/shards"


def remote_rates(root: Path, args) -> dict:
    """Wall-clock tokens/s of TrainStream over a loopback HTTP server: cold, warm, a quarter-size cache."""
    from bigtrain.data.shard_cache import load_remote_manifest

    proc, url = serve(root)
    spec = StreamSpec(args.micro_batch, args.micro_batch, 0, 1, seed=0)
    per_batch = args.micro_batch * (args.seq_len + 1)
    dataset = sum(p.stat().st_size for p in (root / "shards").glob("*.tar"))

    def batches(cache: str, cache_bytes: int):
        source = Source("bench", url, 1.0, load_remote_manifest(url, root / cache, cache_bytes))
        return (tokens for chunk in TrainStream([source], spec, verify_checksums=False) for tokens, _ in chunk.batches())

    try:
        out = {}
        from bigtrain.data.remote import cache_usage

        cold = batches("cache", dataset)
        start = time.perf_counter()
        next(cold)  # the first chunk: fetches (nearly) every shard
        seconds = time.perf_counter() - start
        out["cold_first_batch_s"], out["cold_fetch_mb_s"] = seconds, cache_usage(root / "cache") / seconds / 1e6
        out["remote_warm"] = rate(lambda: next(cold), per_batch, args.seconds, time.perf_counter)
        quarter = batches("small", dataset // 4)
        out["remote_quarter"] = rate(lambda: next(quarter), per_batch, args.seconds, time.perf_counter)
        out["dataset_mb"] = dataset / 1e6
        return out
    finally:
        proc.kill()


def open_costs(source: Source) -> dict:
    m, path = source.manifest, source.manifest.shard_paths("train")[0]
    shard = m.splits["train"].shards[0]
    start = time.perf_counter()
    buf = map_shard(path)
    check_layout(buf, path, 0, shard.num_samples, m)
    layout_s = time.perf_counter() - start
    start = time.perf_counter()
    check_sha256(buf, path, shard.sha256, m)
    sha_s = time.perf_counter() - start  # wall time: includes any other load on the box
    return {"shard_mb": len(buf) / 1e6, "layout_check_ms": layout_s * 1e3, "sha256_ms": sha_s * 1e3,
            "sha256_gb_per_s": len(buf) / sha_s / 1e9}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("numpy", "torch"):
        out[name] = metadata.version(name)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--samples-per-shard", type=int, default=1024,
                        help="small shards, so a chunk's samples are spread over many files as in a real corpus")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of them is reported")
    parser.add_argument("--workers", type=int, nargs="*", default=[2], help="DataLoader worker counts to add")
    parser.add_argument("--model", choices=sorted(MODELS), default="1.3b")
    parser.add_argument("--mfu", type=float, default=0.5)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak (H100 SXM: 989)")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--remote", action="store_true", help="also read the shards from a loopback HTTP server")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        source, flat = build(Path(tmp), args.samples, args.seq_len, args.vocab, args.samples_per_shard)
        results = measure(source, flat, args)
        opening = open_costs(source)
        remote = remote_rates(Path(tmp), args) if args.remote else {}
    flops, params = flops_per_token(*MODELS[args.model][:4], MODELS[args.model][4])
    gpu = args.mfu * args.peak_tflops * 1e12 / flops
    report = {"seq_len": args.seq_len, "micro_batch": args.micro_batch, "samples": args.samples,
              "samples_per_shard": args.samples_per_shard,
              "tokens_per_s": results, "loader_vs_memmap": results["loader"] / results["memmap"],
              "stream_vs_memmap": results["stream"] / results["memmap"], "shard_open": opening,
              "gpu": {"model": args.model, "matmul_params": params, "flops_per_token": flops, "mfu": args.mfu,
                      "peak_tflops": args.peak_tflops, "tokens_per_s": gpu,
                      "gpus_per_loader_core": results["loader"] / gpu},
              "remote": remote, "versions": versions(),
              "machine": f"{platform.machine()}, {platform.processor() or '?'}"}
    for name, value in results.items():
        print(f"{name:<12} {value / 1e6:10.1f} M tokens/s  ({value / results['memmap']:.0%} of memmap)")
    print(f"one GPU ({args.model}, {args.mfu:.0%} MFU of {args.peak_tflops:.0f} TFLOP/s, {flops / 1e9:.2f} GFLOP/token):"
          f" {gpu / 1e3:.1f} k tokens/s; one loader core reads for {results['loader'] / gpu:,.0f} such GPUs")
    print(f"opening a {opening['shard_mb']:.0f} MB shard: layout check {opening['layout_check_ms']:.1f} ms, "
          f"sha256 {opening['sha256_ms']:.0f} ms ({opening['sha256_gb_per_s']:.2f} GB/s)")
    if remote:
        print(f"remote, {remote['dataset_mb']:.0f} MB over loopback HTTP: first batch after {remote['cold_first_batch_s']:.1f} s "
              f"(fetching {remote['cold_fetch_mb_s']:.0f} MB/s); then {remote['remote_warm'] / 1e6:.1f} M tokens/s wall "
              f"(cache = dataset), {remote['remote_quarter'] / 1e6:.2f} M tokens/s (cache = dataset / 4)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
