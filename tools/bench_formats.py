"""Read rates per core of the shard tool's input formats: JSONL, gzip, zstd, Parquet vs. a raw read.

    python tools/bench_formats.py                 # ~50 MB of real text (the embedded corpus, repeated)
    python tools/bench_formats.py --mb 200 --json out.json

The same documents are written as ``.jsonl``, ``.jsonl.gz`` (level 6), ``.jsonl.zst`` (level 3) and
``.parquet`` (row groups of 1,000 rows, snappy and zstd). For each, in this one process, after one
warm-up read (page cache):

- ``serial``: ``document_chunks`` (read + decompress + cut into chunks), the part of ``bigtrain data
  shard`` that runs in the one reading process: it bounds the tool's throughput whatever ``--workers``;
- ``full``: ``iter_documents`` (+ UTF-8 decode and JSON parse: the per-worker part too);
- ``raw``: ``f.read`` of the uncompressed JSONL in 1 MiB blocks, the disk/page-cache ceiling.

Rates are MB of *uncompressed JSONL text* per CPU-second of this process (per core), best of
``--rounds``, so formats compare on the same content. Tokenization (≈1.2M tokens/s per core, FACTS.md)
is the bigger cost per worker; the serial rate is what must stay above ``workers × tokenizer rate``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bigtrain.data.corpus import embedded_documents  # noqa: E402
from bigtrain.data.documents import document_chunks, iter_documents  # noqa: E402


def write_inputs(root: Path, mb: int) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    base = list(embedded_documents())
    docs: list[str] = []
    while sum(map(len, docs)) < mb << 20:
        docs += base
    lines = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs).encode()
    paths = {"jsonl": root / "c.jsonl", "jsonl.gz": root / "c.jsonl.gz", "jsonl.zst": root / "c.jsonl.zst",
             "parquet (snappy)": root / "c.parquet", "parquet (zstd)": root / "z.parquet"}
    paths["jsonl"].write_bytes(lines)
    paths["jsonl.gz"].write_bytes(gzip.compress(lines, 6))
    paths["jsonl.zst"].write_bytes(zstandard.ZstdCompressor(level=3).compress(lines))
    table = pa.table({"text": docs})
    pq.write_table(table, paths["parquet (snappy)"], row_group_size=1000)
    pq.write_table(table, paths["parquet (zstd)"], row_group_size=1000, compression="zstd")
    return paths


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def raw_read(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def measure(paths: dict[str, Path], rounds: int) -> list[dict]:
    text_mb = paths["jsonl"].stat().st_size / 1e6
    rows = [{"format": "raw read (jsonl bytes)", "file_mb": text_mb,
             "serial_mb_s": text_mb / min(cpu_seconds(lambda: raw_read(paths["jsonl"])) for _ in range(rounds))}]
    for name, path in paths.items():
        serial = min(cpu_seconds(lambda path=path: sum(1 for _ in document_chunks([path]))) for _ in range(rounds))
        full = min(cpu_seconds(lambda path=path: sum(1 for _ in iter_documents([path]))) for _ in range(rounds))
        rows.append({"format": name, "file_mb": path.stat().st_size / 1e6, "serial_mb_s": text_mb / serial,
                     "full_mb_s": text_mb / full})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=50, help="MB of text (default 50)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_inputs(Path(tmp), args.mb)
        for path in paths.values():
            raw_read(path)  # page cache
        rows = measure(paths, args.rounds)
    versions = {p: metadata.version(p) for p in ("pyarrow", "zstandard", "numpy")}
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, {versions}")
    print(f"{'format':<24} {'file MB':>8} {'serial MB/s':>12} {'full MB/s':>10}")
    for r in rows:
        full = f"{r['full_mb_s']:10.0f}" if "full_mb_s" in r else f"{'':>10}"
        print(f"{r['format']:<24} {r['file_mb']:8.1f} {r['serial_mb_s']:12.0f} {full}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "versions": versions}, indent=2) + "\n")


if __name__ == "__main__":
    main()
