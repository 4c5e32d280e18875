"""Peak memory of `bigtrain convert to-hf` on a checkpoint large enough to tell copies apart.

    python tools/bench_export_memory.py --workdir /tmp/bench [--hidden 1024 --layers 8 --vocab 32000]
        [--pythonpath OTHER_CHECKOUT]   # measure another version of bigtrain on the same checkpoint

Trains nothing useful: tests/train_tiny.py makes a TP=2 x DP=1 ZeRO-1 checkpoint of an untied
model (1 step on random tokens), then the export runs in a subprocess whose /proc/PID/status is
sampled every 10 ms: peak RssAnon (the process's own memory: tensors, Python) and peak VmRSS (also
counts file pages of the memory-mapped checkpoint, which are page cache the kernel can drop).
Reports fp32 model size for comparison. Results are recorded in docs/conversion.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sample(cmd: list[str], env: dict, cwd: str) -> dict:
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"RssAnon": 0, "VmRSS": 0, "RssFile": 0}
    start = time.time()
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                key = line.split(":")[0]
                if key in peak:
                    peak[key] = max(peak[key], int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.01)
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return {**{k: round(v / 2**20) for k, v in peak.items()}, "seconds": round(time.time() - start, 1)}


def make_checkpoint(work: Path, args) -> Path:
    run = work / "run"
    if (run / "checkpoints" / "latest").exists():
        return run
    overrides = [f"model.hidden_size={args.hidden}", f"model.num_layers={args.layers}", "model.num_heads=16",
                 "model.num_kv_heads=16", f"model.ffn_hidden_size={args.ffn}", "model.tie_embeddings=false",
                 "parallel.zero_stage=1", "train.steps=1", "train.global_batch_size=2", "train.micro_batch_size=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "tests/train_tiny.py", "--vocab-size", str(args.vocab), str(run), *overrides]
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--pythonpath", default=str(REPO), help="bigtrain checkout whose converter is measured")
    parser.add_argument("--check", action="store_true", help="include the parity check (default: --no-check)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    run = make_checkpoint(args.workdir, args)
    env = {**os.environ, "PYTHONPATH": args.pythonpath, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    cwd = args.pythonpath  # `python -m` puts the working directory first on sys.path
    baseline = sample([sys.executable, "-c", "import bigtrain.convert.to_hf, transformers, deepspeed"], env, cwd)
    out = args.workdir / f"hf_{int(time.time())}"
    cmd = [sys.executable, "-m", "bigtrain.cli", "convert", "to-hf", str(run), str(out)]
    supports_check = "--no-check" in subprocess.run([*cmd[:5], "--help"], env=env, cwd=cwd, capture_output=True,
                                                    text=True).stdout
    if supports_check and not args.check:
        cmd.append("--no-check")
    export = sample(cmd, env, cwd)
    params = sum(os.path.getsize(p) for p in out.glob("*.safetensors")) / 4
    print(json.dumps({"bigtrain": args.pythonpath, "params_M": round(params / 1e6, 1),
                      "fp32_model_MiB": round(params * 4 / 2**20), "import_baseline_MiB": baseline,
                      "export_MiB": export, "parity_check": bool(supports_check and args.check)}, indent=2))


if __name__ == "__main__":
    main()
