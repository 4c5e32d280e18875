"""Data-stream metrics per step: epochs, samples per source, skipped samples; epoch changes on stdout.

Every value is a function of the loader's global position (or agreed across ranks), so it is the
same on every rank and after a resume. Columns: ``epoch`` (passes over the data so far, fractional;
with several sources the largest, i.e. the most repeated source), and with several sources
``epoch/<name>`` and ``samples/<name>``; ``skipped_samples`` and ``corrupt_shards`` (on_corrupt=skip).
"""

from __future__ import annotations

from bigtrain.data.loader import TrainLoader
from bigtrain.train.loop import Callback, Trainer
from bigtrain.train.step import StepResult


class DataMetrics(Callback):
    def __init__(self, loader: TrainLoader):
        self.loader = loader
        self.epochs: list[int] = []

    def on_train_start(self, trainer: Trainer) -> None:
        self.epochs = [int(e) for e in self.loader.epochs()]

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        loader, epochs = self.loader, self.loader.epochs()
        metrics = {"epoch": max(epochs), "skipped_samples": loader.skipped_samples,
                   "corrupt_shards": len(loader.corrupt_shards)}
        if len(loader.sources) > 1:
            for source, n, epoch in zip(loader.sources, loader.source_samples().tolist(), epochs):
                metrics[f"samples/{source.name}"] = n
                metrics[f"epoch/{source.name}"] = epoch
        trainer.extra_metrics.update(metrics)
        for source, old, new in zip(loader.sources, self.epochs, epochs):
            if int(new) > old:
                trainer.say(f"data: source {source.name!r} finished epoch {int(new) - 1} during step "
                            f"{trainer.state.step} ({source.num_samples} samples); epoch {int(new)} reads them "
                            f"in a new shuffled order")
        self.epochs = [int(e) for e in epochs]
