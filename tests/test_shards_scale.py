"""The shard tool streams: its peak memory does not grow with the corpus (measured RSS, subprocesses)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path


from bigtrain.data.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
# VmHWM (peak RSS of this process image), not ru_maxrss: Linux carries ru_maxrss across fork + exec,
# so a child of the (large) pytest process would report pytest's RSS and hide its own.
MEASURE = """
import json, re, resource, sys
from pathlib import Path
from bigtrain.data.shards import write_shards
def hwm_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
before = hwm_kib()
m = write_shards(sys.argv[1], [sys.argv[2]], 128, sys.argv[3], workers=2, chunk_bytes=1 << 16)
print(json.dumps({"before_kib": before, "peak_kib": hwm_kib(),
                  "workers_peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "tokens": sum(s.num_tokens for s in m.splits.values())}))
"""


def write_corpus(path: Path, megabytes: int) -> Path:
    rng = random.Random(0)
    lines = [json.dumps({"text": f"{i} " + " ".join(rng.choices(WORDS, k=rng.randint(50, 400)))}) + "\n"
             for i in range(1000)]
    with open(path, "w") as f:
        size = 0
        while size < megabytes * 10**6:
            size += f.write(lines[size % 1000])
    return path


def peak_rss(tok: Path, corpus: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(tok), str(corpus), str(out)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_peak_memory_does_not_grow_with_the_corpus(tmp_path):
    """2 MB vs 16 MB of JSONL in 64 KiB chunks: the 14 MB more (2.6M more tokens, 5 MB even as uint16)
    may not raise the writer's peak RSS by more than 4 MiB; each tokenizer worker stays flat too."""
    tok = train_tokenizer([write_corpus(tmp_path / "tok.jsonl", 1)], 400, tmp_path / "tok")
    small = peak_rss(tok, write_corpus(tmp_path / "small.jsonl", 2), tmp_path / "out-small")
    large = peak_rss(tok, write_corpus(tmp_path / "large.jsonl", 16), tmp_path / "out-large")
    assert large["tokens"] > 7 * small["tokens"]
    assert small["peak_kib"] > small["before_kib"]  # the measurement sees this process's own work
    growth_kib = (large["peak_kib"] - large["before_kib"]) - (small["peak_kib"] - small["before_kib"])
    assert growth_kib < 4096, (small, large)
    assert large["workers_peak_kib"] - small["workers_peak_kib"] < 4096, (small, large)
