"""Real shards and the real training loader for the benchmark.

With ``data.path`` / ``data.sources`` the bench reads those shards. Without, it uses the embedded
corpus (the Python standard library's docstrings) tokenized with a BPE tokenizer of the size's
vocabulary and written by the real shard writer, cached under ``$BIGTRAIN_CACHE``
(bigtrain/data/embedded.py): a 32,000-token tokenizer and 2048-token shards take ~30 s to build once
on 2 cores. The stream loops over epochs, so a few hundred samples feed any number of steps.

The micro-batches come from the same ``TrainLoader`` that ``pretrain`` builds (train/run.py's
``resolve_data`` + ``build_loader``); :class:`Recorder` keeps the ones a run consumed so the bare
baseline trains on the same tokens.
"""

from __future__ import annotations

import dataclasses

import torch

from bigtrain.config.schema import Config
from bigtrain.data.sources import Source


def bench_data(cfg: Config) -> tuple[Config, list[Source]]:
    """``cfg`` with its data resolved (the embedded corpus at the size's vocabulary if none is given)."""
    from bigtrain.train.run import resolve_data

    if not cfg.data.path and not cfg.data.sources:
        from bigtrain.data.embedded import ensure_embedded_dataset

        path = ensure_embedded_dataset(seq_len=cfg.model.seq_len, vocab_size=cfg.model.vocab_size)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(path)))
    return resolve_data(cfg)


class Recorder:
    """A TrainLoader whose steps pass through unchanged, each micro-batch also kept (CPU tensors)."""

    def __init__(self, loader):
        self.loader = loader
        self.seen: list[torch.Tensor] = []

    def take_step(self) -> tuple[list[torch.Tensor], list]:
        batches, notes = self.loader.take_step()
        self.seen.extend(batches)
        return batches, notes

    def settle_step(self, skipped: int, problems: int, notes: list) -> None:
        self.loader.settle_step(skipped, problems, notes)
