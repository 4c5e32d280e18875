"""Shard tool throughput and peak memory vs corpus size and ``--workers``.

    python tools/bench_shards.py --mb 16 64 --workers 1 2      # embedded corpus repeated to 16 and 64 MB

The corpus is the embedded one (Python's docstrings, real English + code), repeated with a counter
prefix to the requested size, as JSONL; the tokenizer is a 4096-token BPE trained on it once. Each
run is ``write_shards`` at seq_len 2048 in a fresh subprocess: wall time, tokens/s and peak RSS of
the writer process and of its tokenizer workers (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bigtrain.data.corpus import embedded_documents  # noqa: E402
from bigtrain.data.tokenizer import train_tokenizer  # noqa: E402

RUN = """
import json, resource, sys, time
from bigtrain.data.shards import write_shards
start = time.perf_counter()
m = write_shards(sys.argv[1], [sys.argv[2]], 2048, sys.argv[3], workers=int(sys.argv[4]))
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": sum(s.num_tokens for s in m.splits.values()),
                  "writer_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def write_corpus(path: Path, megabytes: int, docs: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        size, i = 0, 0
        while size < megabytes * 10**6:
            size += f.write(json.dumps({"text": f"{i}: {docs[i % len(docs)]}"}, ensure_ascii=False) + "\n")
            i += 1
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, nargs="+", default=[16, 64], help="corpus sizes in MB")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    docs = list(embedded_documents())
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        tok = train_tokenizer([write_corpus(tmp / "tok.jsonl", 2, docs)], 4096, tmp / "tok")
        print(f"{'MB':>5} {'workers':>7} {'seconds':>8} {'M tokens/s':>10} {'MB/s':>6} {'writer RSS MB':>13} {'worker RSS MB':>13}")
        for mb in args.mb:
            corpus = write_corpus(tmp / f"corpus-{mb}.jsonl", mb, docs)
            for workers in args.workers:
                proc = subprocess.run([sys.executable, "-c", RUN, str(tok), str(corpus), str(tmp / f"out-{mb}-{workers}"),
                                       str(workers)], capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONPATH": str(REPO)})
                r = json.loads(proc.stdout)
                print(f"{mb:>5} {workers:>7} {r['seconds']:>8.1f} {r['tokens'] / r['seconds'] / 1e6:>10.2f} "
                      f"{corpus.stat().st_size / 1e6 / r['seconds']:>6.1f} {r['writer_rss_mb']:>13.0f} "
                      f"{r['worker_rss_mb']:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
