"""Markdown table of ``bigtrain bench`` JSON results (BENCHMARKS.md's training table).

    python tools/bench_table.py results/*.json > table.md

One row per result: size, ZeRO stage, activation checkpointing, compile, attention backend, micro
batch x accumulation, tokens/s, MFU (stated peak and measured GEMM ceiling), peak memory, the bare
baseline's tokens/s and memory, and bigtrain's step time / bare's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = ("| size | device | ZeRO | AC | compile | attention | mb x accum | tokens/s | MFU (stated) | MFU (GEMM) "
          "| peak mem GiB | bare tokens/s | bare mem GiB | overhead |")


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def row(r: dict) -> str:
    s, bare = r["setup"], r.get("bare") or {}
    return (f"| {r['size']} | {r['device']} | {s['zero_stage']} | {s['activation_checkpointing']} "
            f"| {str(s['compile']).lower()} | {s['attention_backend']} | {s['micro_batch_size']} x {s['grad_accum']} "
            f"| {r['tokens_per_sec']:,.0f} | {100 * r['mfu']:.1f}% | {100 * r['mfu_vs_gemm']:.1f}% "
            f"| {fmt(r['peak_memory_gb'], '.2f')} | {fmt(r['bare_tokens_per_sec'], ',.0f')} "
            f"| {fmt(bare.get('peak_memory_gb'), '.2f')} | {fmt(r['overhead'], '.3f')} |")


def main(paths: list[str]) -> None:
    results = [json.loads(Path(p).read_text()) for p in paths]
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for r in results:
        print(row(r))
    if results:
        r = results[0]
        print(f"\nPeak: {r['peak_tflops']:.3g} TFLOP/s ({r['peak_source']}); GEMM ceiling measured in each run "
              f"(first: {r['gemm_tflops']:.3g} TFLOP/s, {r['gemm_source']}). Versions: {r['versions']}")


if __name__ == "__main__":
    main(sys.argv[1:])
