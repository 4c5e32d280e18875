"""Shard tool throughput and peak memory vs corpus size and ``--workers``.

    python tools/bench_shards.py --mb 16 64 --workers 1 2      # embedded corpus repeated to 16 and 64 MB

The corpus is the embedded one (Python's docstrings, real English + code), repeated with a counter
prefix to the requested size, as JSONL; the tokenizer is a 4096-token BPE trained on it once. Each
run is ``write_shards`` at seq_len 2048 in a fresh subprocess: wall time, tokens/s, CPU seconds
(writer + workers: tokens per CPU-second is what a shared, loaded box still measures faithfully) and
peak RSS of the writer process and of its tokenizer workers.
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

# Peak RSS: VmHWM of the writer (ru_maxrss would carry this parent's RSS across fork + exec) and
# ru_maxrss of its forked workers. CPU seconds: the writer plus its workers.
RUN = """
import json, re, resource, sys, time
from pathlib import Path
from bigtrain.data.shards import write_shards
start, cpu = time.perf_counter(), time.process_time()
m = write_shards(sys.argv[1], [sys.argv[2]], 2048, sys.argv[3], workers=int(sys.argv[4]))
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
children = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": sum(s.num_tokens for s in m.splits.values()),
                  "cpu_seconds": time.process_time() - cpu + children.ru_utime + children.ru_stime,
                  "writer_rss_mb": hwm / 1024, "worker_rss_mb": children.ru_maxrss / 1024}))
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
        print(f"{'MB':>5} {'workers':>7} {'wall s':>7} {'M tokens/s':>10} {'MB/s':>6} {'CPU s':>6} "
              f"{'M tok/CPU-s':>11} {'writer RSS MB':>13} {'worker RSS MB':>13}")
        for mb in args.mb:
            corpus = write_corpus(tmp / f"corpus-{mb}.jsonl", mb, docs)
            for workers in args.workers:
                proc = subprocess.run([sys.executable, "-c", RUN, str(tok), str(corpus), str(tmp / f"out-{mb}-{workers}"),
                                       str(workers)], capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONPATH": str(REPO)})
                r = json.loads(proc.stdout)
                print(f"{mb:>5} {workers:>7} {r['seconds']:>7.1f} {r['tokens'] / r['seconds'] / 1e6:>10.2f} "
                      f"{corpus.stat().st_size / 1e6 / r['seconds']:>6.1f} {r['cpu_seconds']:>6.1f} "
                      f"{r['tokens'] / r['cpu_seconds'] / 1e6:>11.2f} {r['writer_rss_mb']:>13.0f} "
                      f"{r['worker_rss_mb']:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
