"""Training objectives (``train.objective``): how a micro-batch becomes the loss that is backpropagated.

The step (step.py) is the same for every objective: fetch the step's micro-batches, ``begin_step``,
then per micro-batch ``loss`` -> ``engine.backward``, then the update. An objective returns, per
micro-batch, a loss whose mean over the step's micro-batches and the data-parallel ranks is the
step's loss (what DeepSpeed's gradient averaging assumes), and the numbers to log beside it.

- :class:`CausalLM` (``clm``): mean next-token cross-entropy; micro-batches are token tensors (M, T+1).
- :class:`MaskedLM` (``mlm``): cross-entropy on the chosen (masked) positions only, averaged over the
  chosen positions of the *global* batch: ``begin_step`` all-reduces the step's chosen-token count over
  the data-parallel group (one small all-reduce), and each micro-batch's loss is its sum of chosen-token
  losses times ``accum * dp / count``. Micro-batches are (inputs, labels) pairs masked on the host
  (bigtrain/data/masking.py) by :class:`MaskedBatches`.
- distillation (``distill``): bigtrain/train/distill.py.

``eval_batch`` gives the validation numbers of a batch (evaluation.py): per-sample loss sums, counted
tokens and correct predictions (masked-LM accuracy; None for causal LM).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from bigtrain.config.load import ConfigError
from bigtrain.config.schema import Config
from bigtrain.data.manifest import Manifest
from bigtrain.data.masking import IGNORE, MaskSpec, mask_tokens, train_keys, val_keys
from bigtrain.data.order import rank_positions
from bigtrain.data.tokenizer import read_meta as read_tokenizer_meta
from bigtrain.model.vocab_parallel import correct, cross_entropy


class CausalLM:
    name = "clm"

    def batches(self, loader):
        return loader

    def begin_step(self, micro_batches: list, device: torch.device) -> None:
        pass

    def loss(self, engine, tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
        tokens = tokens.to(device, non_blocking=True).long()  # (M, T+1); shards hold uint16/uint32
        return engine(tokens[:, :-1], tokens[:, 1:]).mean()  # (M, T) fp32 -> scalar

    slots: tuple[tuple[str, str], ...] = ()  # the objective's own slots in the step's agreement (agreement.py)

    def contribute(self, agreement) -> None:
        """This rank's values of :attr:`slots`, set before the step's one collective."""

    def step_metrics(self, agreed: dict[str, float]) -> dict[str, float]:
        """The objective's numbers to log, from the agreed slots."""
        return {}

    def describe(self) -> dict:
        """What a checkpoint's meta.json records about the objective (besides ``objective``)."""
        return {}

    def eval_batch(self, engine, tokens: torch.Tensor, ids: np.ndarray):
        """tokens (M, T+1) on the device -> (loss sum (M,), tokens (M,), correct (M,) or None)."""
        losses = engine(tokens[:, :-1], tokens[:, 1:])  # (M, T)
        count = torch.full((losses.shape[0],), losses.shape[1], dtype=torch.float64, device=losses.device)
        return losses.double().sum(dim=1), count, None


def mask_spec(cfg: Config, tokenizer_meta: dict, tokenizer_dir) -> MaskSpec:
    """The masking of ``cfg.mlm`` with the tokenizer's special ids; a tokenizer without ``<mask>`` is refused."""
    if tokenizer_meta.get("mask_id") is None:
        raise ConfigError(f"train.objective=mlm needs a tokenizer with a mask token, but {tokenizer_dir} has none "
                          "(trained before bigtrain added <mask>): retrain it with `bigtrain tokenizer train` "
                          "and re-shard the data")
    specials = tuple(sorted({tokenizer_meta[k] for k in ("unk_id", "bos_id", "eos_id", "mask_id")}))
    m = cfg.mlm
    return MaskSpec(m.probability, m.mask_ratio, m.random_ratio, tokenizer_meta["mask_id"],
                    tokenizer_meta["vocab_size"], specials)


class MaskedBatches:
    """The loader's micro-batches of a step, masked: [(inputs (M, T), labels (M, T))] per step."""

    def __init__(self, loader, spec: MaskSpec, seed: int):
        self.loader, self.spec, self.seed = loader, spec, seed

    def take_step(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list]:
        """The loader's ``take_step`` (no agreement: the training step's one collective settles it), masked."""
        start = self.loader.position  # the step's first global stream position (advanced by settle_step)
        tokens, notes = self.loader.take_step()
        return self.mask(start, tokens), notes

    def settle_step(self, *args) -> None:
        self.loader.settle_step(*args)

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        start = self.loader.position
        return self.mask(start, self.loader.next_step())

    def mask(self, start: int, micro_batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        s = self.loader.spec
        out = []
        for i, tokens in enumerate(micro_batches):
            positions = rank_positions(start, 0, i, global_batch=s.global_batch, micro_batch=s.micro_batch,
                                       dp_rank=s.dp_rank, dp_size=s.dp_size)
            out.append(mask_tokens(tokens[:, :-1], train_keys(self.seed, positions), self.spec))
        return out


class MaskedLM:
    name = "mlm"

    def __init__(self, spec: MaskSpec, seed: int):
        self.spec, self.seed = spec, seed
        self.scale = 0.0

    def batches(self, loader):
        return MaskedBatches(loader, self.spec, self.seed)

    def begin_step(self, micro_batches: list, device: torch.device) -> None:
        """Agree on the global batch's chosen-token count: the denominator of the step's loss."""
        local = sum(int((labels != IGNORE).sum()) for _, labels in micro_batches)
        count = torch.tensor([float(local)], dtype=torch.float64, device=device)
        dist.all_reduce(count, group=parallel_state.get_data_parallel_group())
        dp = parallel_state.get_data_parallel_world_size()
        self.scale = len(micro_batches) * dp / max(count.item(), 1.0)

    def loss(self, engine, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> torch.Tensor:
        inputs, labels = (t.to(device, non_blocking=True) for t in batch)
        return engine(inputs, labels).sum() * self.scale  # (M, T) fp32, 0 off the chosen positions

    slots = CausalLM.slots
    contribute = CausalLM.contribute
    step_metrics = CausalLM.step_metrics

    def describe(self) -> dict:
        return {"mlm": dataclasses.asdict(self.spec)}

    @torch.no_grad()
    def eval_batch(self, engine, tokens: torch.Tensor, ids: np.ndarray):
        inputs, labels = (t.to(tokens.device) for t in mask_tokens(tokens[:, :-1], val_keys(self.seed, ids),
                                                                    self.spec))
        logits = engine(inputs)  # (M, T, V/tp)
        chosen = labels != IGNORE
        safe = labels.masked_fill(~chosen, 0)
        hits = correct(logits, safe) & chosen
        losses = cross_entropy(logits, safe) * chosen  # last: it may work in place on the logits
        return losses.double().sum(dim=1), chosen.double().sum(dim=1), hits.double().sum(dim=1)


def check_objective(cfg: Config, manifest: Manifest, open_teacher=None) -> None:
    """What the objective needs from the data and the teacher, checked before any process group.

    ``open_teacher``: how to read a distillation teacher (bigtrain/convert/teacher.py's ``open_teacher``,
    handed down by the entry points: the converters sit above this layer)."""
    if cfg.train.objective == "mlm":
        mask_spec(cfg, read_tokenizer_meta(manifest.tokenizer_dir), manifest.tokenizer_dir)
    elif cfg.train.objective == "distill":
        from bigtrain.train.distill import check_teacher

        if open_teacher is None:
            raise ConfigError("train.objective=distill: this entry point cannot load a teacher (no open_teacher)")
        check_teacher(cfg, manifest, open_teacher)


def build_objective(cfg: Config, world, manifest: Manifest, open_teacher=None):
    """The objective of ``train.objective`` (after :func:`check_objective`; distill loads its teacher)."""
    if cfg.train.objective == "mlm":
        return MaskedLM(mask_spec(cfg, read_tokenizer_meta(manifest.tokenizer_dir), manifest.tokenizer_dir),
                        cfg.train.seed)
    if cfg.train.objective == "distill":
        from bigtrain.train.distill import Distill

        return Distill.build(cfg, world, manifest, open_teacher)
    return CausalLM()
