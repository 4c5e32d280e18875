"""Metrics on rank 0: one stdout line, one ``metrics.jsonl`` row and TensorBoard scalars per logged step."""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path

from bigtrain.train.loop import Callback, Trainer
from bigtrain.train.step import StepResult

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop rows logged after ``last_step`` (a run that died after its last checkpoint redoes them)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep))
    tmp.replace(path)


class MetricsLogger(Callback):
    def __init__(self, run_dir: Path, every: int, tensorboard: bool = True, stream=sys.stdout):
        self.path = Path(run_dir) / METRICS_FILE
        self.every = every
        self.tensorboard = tensorboard
        self.stream = stream
        self.writer = None
        self.file = None

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.world.is_main:
            return
        truncate_metrics(self.path, trainer.state.step)
        self.file = self.path.open("a")
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.path.parent / "tensorboard"), purge_step=trainer.state.step + 1)
        self.started = time.perf_counter()
        self.first_step = trainer.state.step

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        step, total = trainer.state.step, trainer.cfg.train.steps
        if not trainer.world.is_main or (step % self.every and step != total):
            return
        tokens = trainer.cfg.train.global_batch_size * trainer.cfg.model.seq_len
        row = {
            "step": step,
            "loss": result.loss,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "tokens_per_sec": tokens / result.step_time,
            "tokens_per_sec_per_device": tokens / result.step_time / trainer.world.world_size,
            "step_time": result.step_time,
            "data_wait": result.data_wait,
            "consumed_samples": trainer.state.consumed_samples,
            "consumed_tokens": trainer.state.consumed_samples * trainer.cfg.model.seq_len,
            **trainer.extra_metrics,
        }
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.writer:
            for key, value in row.items():
                if key != "step" and value is not None:
                    self.writer.add_scalar(f"train/{key}", value, step)
        print(self.format(row, total, self.eta(step, total)), file=self.stream, flush=True)

    def eta(self, step: int, total: int) -> str:
        done = step - self.first_step
        elapsed = time.perf_counter() - self.started
        return str(timedelta(seconds=round(elapsed / max(done, 1) * (total - step))))

    @staticmethod
    def format(row: dict, total: int, eta: str) -> str:
        norm = "-" if row["grad_norm"] is None else f"{row['grad_norm']:.3f}"
        val = f" | val_loss {row['val_loss']:.4f}" if "val_loss" in row else ""
        return (f"step {row['step']:>6}/{total} | loss {row['loss']:.4f}{val} | lr {row['lr']:.2e} | "
                f"grad_norm {norm} | {row['tokens_per_sec']:,.0f} tok/s | {row['step_time']:.3f} s/step | eta {eta}")

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.world.is_main and trainer.stop_reason:
            print(f"stopping after step {trainer.state.step}: {trainer.stop_reason}", file=self.stream, flush=True)
        if self.file:
            self.file.close()
        if self.writer:
            self.writer.close()
