"""``bigtrain bench``: measure training throughput of a named size through the full stack.

    bigtrain bench --size 20m --steps 10 --json                       # CPU, one process
    torchrun --nproc_per_node 2 -m bigtrain.cli bench --size 20m --json
    bigtrain bench --size 1.3b --device cuda parallel.zero_stage=1 model.activation_checkpointing=selective \\
        train.compile=true --out results/1.3b.json

Prints a human summary (stderr) and, with ``--json``, exactly one JSON object on stdout (everything
else the run prints goes to stderr meanwhile); ``--out`` writes the same object to a file. Exit 0
also when the loss-parity check fails: the result says ``parity.ok`` and a warning goes to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bigtrain.errors import UserError


@contextmanager
def stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """Send file descriptor 1 (Python prints and C libraries alike) to stderr inside the block."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def pick_device(requested: str | None) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this machine has no CUDA device visible to torch (use --device cpu)")
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"  # read by DeepSpeed at import: keep it off a present GPU too
    return device


def run(size: str, device: str | None, steps: int, warmup: int | None, accum: int | None, overrides: list[str],
        bare: str | None = "auto") -> dict | None:
    """Run the benchmark as one rank; returns the result on rank 0 (None on the others)."""
    from bigtrain.bench.config import bench_config
    from bigtrain.bench.data import bench_data
    from bigtrain.bench.run import bench
    from bigtrain.config.validate import validate
    from bigtrain.parallel.world import destroy_world, init_world, launch_env
    from bigtrain.train.flops import peak_flops
    from bigtrain.train.run import check_compile_supported

    if steps < 2:
        raise UserError(f"--steps must be >= 2 (measured steps after the warm-up), got {steps}")
    device_type = pick_device(device)
    launch = launch_env()
    cfg, source = bench_config(size, device_type, overrides, launch.world_size, accum)
    if device_type == "cpu":
        cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, backend="gloo"))
    warmup = warmup if warmup is not None else (3 if cfg.train.compile else 2)
    if warmup < 1:
        raise UserError(f"--warmup must be >= 1 (the first step builds optimizer state), got {warmup}")
    if bare == "auto":
        bare = "interleaved" if device_type == "cpu" else "sequential"
    validate(cfg, launch.world_size)
    check_compile_supported(cfg)
    cfg, sources = bench_data(cfg)
    world = init_world(cfg.parallel.tensor_parallel, cfg.parallel.backend, cfg.parallel.timeout_min)
    try:
        stated = peak_flops(world.device, cfg.train.precision, measure_unknown=False)
        result = bench(cfg, world, sources, steps, warmup, stated, bare)
    finally:
        destroy_world()
    if not world.is_main:
        return None
    return {"size": size, "micro_batch_source": source, "data_path": str(sources[0].path), **result,
            "command": command_line(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def command_line() -> str:
    """How this bench was started, as one would type it again."""
    if sys.argv[0].endswith("bigtrain"):
        return shlex.join(["bigtrain", *sys.argv[1:]])
    if sys.argv[0].endswith(("bigtrain/cli/__main__.py", "bigtrain/__main__.py")):  # python -m bigtrain.cli
        return shlex.join(["python", "-m", "bigtrain.cli", *sys.argv[1:]])
    return shlex.join([sys.executable, *sys.argv])


def summary(result: dict) -> str:
    from bigtrain.bench.report import table_row

    lines = [f"bench {result['size']} on {result['device']} (world {result['world_size']}): {table_row(result)}"]
    b = result["bigtrain"]["breakdown_s"]
    lines.append("  bigtrain step (median s): " + ", ".join(f"{k} {v:.4f}" for k, v in b.items())
                 + f" | step {result['bigtrain']['step_time_s']:.4f}")
    if result["bare"]:
        b = result["bare"]["breakdown_s"]
        lines.append("  bare step (median s):     " + ", ".join(f"{k} {v:.4f}" for k, v in b.items())
                     + f" | step {result['bare']['step_time_s']:.4f}")
        p = result["parity"]
        lines.append(f"  parity: first-step loss {p['first_loss']:.6f} vs bare {p['bare_first_loss']:.6f} "
                     f"(|diff| {p['first_abs_diff']:.2e}, tolerance {p['tolerance']:.0e}: "
                     f"{'ok' if p['ok'] else 'FAILED'}); max |diff| over all steps {p['max_abs_diff_all_steps']:.2e}")
    return "\n".join(lines)


def main(args) -> None:
    with stdout_to_stderr(args.json):
        result = run(args.size, args.device, args.steps, args.warmup, args.accum, args.overrides,
                     bare=None if args.bare == "none" else args.bare)
    if result is None:
        return
    print(summary(result), file=sys.stderr, flush=True)
    if result["parity"] and not result["parity"]["ok"]:
        print("warning: the bare baseline's loss differs from bigtrain's beyond the tolerance: the baseline is "
              "not the same model, so its throughput is not a fair comparison", file=sys.stderr)
    text = json.dumps(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(text, flush=True)
