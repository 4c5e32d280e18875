"""Metrics on rank 0: a stdout line (+ a progress bar on a TTY), a ``metrics.jsonl`` row, TensorBoard
scalars and, when enabled, Weights & Biases, per logged step.

A row is written every ``log.every`` steps, after the last step, and on every step with an event
(an evaluation, a skipped update, a loss spike), so no such value is lost between log steps.
Row keys (a contract: ``grad_norm``, ``mfu``, ``tokens_per_sec``, ``step_time`` must stay):

    step, loss, lr, grad_norm, tokens_per_sec, tokens_per_sec_per_device, step_time, data_wait,
    mfu, peak_tflops, peak_source, mem_gib, mem_kind, consumed_samples, consumed_tokens,
    skipped, skipped_steps, consecutive_skips, [val_loss, val_ppl, val_tokens], [loss_spike]

``loss``/``grad_norm`` are null when not finite. ``mfu`` = tokens_per_sec_per_device x
train_flops_per_token / peak (config/arithmetic.py, flops.py). ``mem_gib`` is the largest, over ranks, of the
peak CUDA memory allocated (``mem_kind`` "cuda_max_allocated") or, without CUDA, of the peak
process RSS ("rss_peak"), read at the step's agreement after its last backward (the optimizer
update's own peak shows from the next step on).
"""

from __future__ import annotations

import json
import math
import resource
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from bigtrain.config.schema import Config
from bigtrain.parallel.world import World
from bigtrain.config.arithmetic import train_flops_per_token
from bigtrain.train.flops import Peak, measure_peak, peak_flops
from bigtrain.train.loop import Callback, Trainer
from bigtrain.train.step import StepResult

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop rows logged after ``last_step`` (a run that died after its last checkpoint redoes them),
    and a last row torn by a kill in the middle of its write."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", 0) <= last_step:
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep))
    tmp.replace(path)


def agreed_peak(world: World, precision: str) -> Peak:
    """The device's table peak, or a GEMM measured on every rank at once (as they will run) and averaged."""
    peak = peak_flops(world.device, precision, measure_unknown=False)
    if peak is not None:
        return peak
    measured = measure_peak(world.device, precision)
    value = torch.tensor([measured.flops], dtype=torch.float64, device=world.device)
    dist.all_reduce(value)
    return Peak(value.item() / world.world_size, f"{measured.source}, mean of {world.world_size} ranks")


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, kind) of this process's peak memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "rss_peak"  # ru_maxrss: KiB on Linux


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


class MetricsLogger(Callback):
    def __init__(self, cfg: Config, peak: Peak, sinks: list | None = None):
        self.path = Path(cfg.run.dir) / METRICS_FILE
        self.every = cfg.log.every
        self.flops_per_token = train_flops_per_token(cfg.model, cfg.model.vocab_size)
        self.peak = peak
        self.sinks = sinks or []  # TensorBoardSink, WandbSink (sinks.py): rank 0 only
        self.file = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()
        self.first_step = trainer.state.step
        self.mem_kind = peak_memory(trainer.world.device)[1]
        # every step, in the step's one agreement (max over ranks): no rank can miss a log step's collective
        trainer.agreement.add("mem_gib", "max", source=lambda: peak_memory(trainer.world.device)[0])
        if not trainer.world.is_main:
            return
        truncate_metrics(self.path, trainer.state.step)
        self.file = self.path.open("a")
        for sink in self.sinks:
            sink.open(trainer.state.step)
        trainer.say(f"MFU: {self.flops_per_token:,} model FLOPs per token (6N + 12LCT, bigtrain/config/arithmetic.py); "
                    f"peak {self.peak.tflops:,.1f} TFLOP/s per device ({self.peak.source})")

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if not trainer.world.is_main:
            return
        step, total = trainer.state.step, trainer.cfg.train.steps
        eta_s = self.eta_seconds(step, total)
        trainer.console.progress(step, total, eta_s)
        events = trainer.extra_metrics or result.skipped
        if step % self.every and step != total and not events:
            return
        row = self.row(trainer, result, result.agreed["mem_gib"], self.mem_kind)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for sink in self.sinks:
            sink.log(row, step)
        trainer.console.print(self.format(row, total, eta_s))

    def row(self, trainer: Trainer, result: StepResult, mem_gib: float, mem_kind: str) -> dict:
        cfg, world, state = trainer.cfg, trainer.world, trainer.state
        tokens = cfg.train.global_batch_size * cfg.model.seq_len
        per_device = tokens / result.step_time / world.world_size
        return {
            "step": state.step,
            "loss": finite_or_none(result.loss),
            "lr": result.lr,
            "grad_norm": finite_or_none(result.grad_norm),
            "tokens_per_sec": tokens / result.step_time,
            "tokens_per_sec_per_device": per_device,
            "step_time": result.step_time,
            "data_wait": result.data_wait,
            "mfu": per_device * self.flops_per_token / self.peak.flops,
            "peak_tflops": self.peak.tflops,
            "peak_source": self.peak.source,
            "mem_gib": mem_gib,
            "mem_kind": mem_kind,
            "consumed_samples": state.consumed_samples,
            "consumed_tokens": state.consumed_samples * cfg.model.seq_len,
            "skipped": result.skipped,
            "skipped_steps": state.skipped_steps,
            "consecutive_skips": state.consecutive_skips,
            **result.extras,
            **trainer.extra_metrics,
        }

    def eta_seconds(self, step: int, total: int) -> float | None:
        done = step - self.first_step
        if done <= 0:
            return None
        return (time.perf_counter() - self.started) / done * (total - step)

    @staticmethod
    def format(row: dict, total: int, eta_s: float | None) -> str:
        def num(key: str, fmt: str) -> str:
            return "nan" if row.get(key) is None else format(row[key], fmt)  # null = not finite

        val = f" | val_loss {row['val_loss']:.4f}" if "val_loss" in row else ""
        skipped = f" | SKIPPED ({row['skipped_steps']} total)" if row["skipped"] else ""
        eta = "?" if eta_s is None else str(timedelta(seconds=round(eta_s)))
        return (f"step {row['step']:>6}/{total} | loss {num('loss', '.4f')}{val} | lr {row['lr']:.2e} | "
                f"grad_norm {num('grad_norm', '.3f')} | {row['tokens_per_sec']:,.0f} tok/s | mfu {100 * row['mfu']:.1f}% | "
                f"{row['step_time']:.3f} s/step | mem {row['mem_gib']:.2f} GiB | eta {eta}{skipped}")

    def on_train_end(self, trainer: Trainer) -> None:
        if not trainer.world.is_main:
            return
        trainer.console.close()
        if trainer.stop_reason:
            trainer.say(f"stopping after step {trainer.state.step}: {trainer.stop_reason}")
        if self.file:
            self.file.close()
        for sink in self.sinks:
            sink.close()
