"""Resume at another layout: load any bigtrain checkpoint into an engine of any TP x DP x ZeRO stage.

DeepSpeed's own ``load_checkpoint`` needs the layout the checkpoint was saved with. When the layout
differs (tensor parallel size, number of data-parallel ranks, ZeRO stage or precision), or the
checkpoint holds weights only (``bigtrain convert from-hf``), every rank instead

1. reads, per parameter, the TP=1 fp32 master weight and both Adam moments from the checkpoint's
   files (bigtrain/checkpoint/source.py: memory-mapped, one parameter at a time) and cuts out its own
   tensor-parallel shard for the new layout (bigtrain/checkpoint/layout.py);
2. writes them into the engine's ZeRO partitions with DeepSpeed's ``safe_set_full_fp32_param`` /
   ``safe_set_full_optimizer_state`` (each rank keeps only its data-parallel partition), after
   creating the Adam state those calls write into (DeepSpeed creates it lazily at the first step);
3. copies the fp32 master weights into the module's working weights (``update_lp_params`` for
   ZeRO-1/2 and bf16, the partition flats for ZeRO-3), and restores Adam's step count, the LR
   scheduler state and DeepSpeed's step counters.

Preserved exactly: model weights, Adam moments, Adam's step, learning-rate schedule, step and data
position (kept by the caller from meta.json; the global sample order does not depend on DP, see
bigtrain/data/order.py). Not carried over: per-rank RNG states (they have no meaning once ranks
change; bigtrain's model has no dropout, so training does not consume them). A weights-only
checkpoint starts a fresh optimizer at step 0.
"""

from __future__ import annotations

import torch

from bigtrain.checkpoint.errors import CheckpointError
from bigtrain.checkpoint.source import Checkpoint
from bigtrain.checkpoint.zero_reader import MOMENTS


def layout_of(meta: dict) -> dict:
    keys = ("tensor_parallel", "data_parallel", "zero_stage", "precision")
    return {k: meta.get(k) for k in keys}


def needs_reshard(meta: dict, tensor_parallel: int, data_parallel: int, zero_stage: int, precision: str) -> bool:
    """True unless DeepSpeed can load the checkpoint as saved (same layout, DeepSpeed files)."""
    here = {"tensor_parallel": tensor_parallel, "data_parallel": data_parallel, "zero_stage": zero_stage,
            "precision": precision}
    return meta.get("weights_only", False) or layout_of(meta) != here


def adam_step(step: int, param: torch.Tensor, group: dict) -> torch.Tensor:
    """Adam's ``step`` count as torch itself creates it (torch/optim/adam.py ``_init_group``): on the
    parameter's device for fused or capturable Adam (the fused CUDA kernel reads it there and does not
    check; a CPU tensor is a device error or a memory fault), else a CPU scalar."""
    if group.get("fused") or group.get("capturable"):
        return torch.tensor(float(step), dtype=torch.float32, device=param.device)
    return torch.tensor(float(step), dtype=torch.get_default_dtype())


class OptimizerAdapter:
    """Where one DeepSpeed optimizer wrapper keeps its fp32 master partitions and how to refresh the model."""

    def __init__(self, engine):
        self.engine = engine
        self.opt = engine.optimizer
        self.kind = type(self.opt).__name__
        self.base = getattr(self.opt, "optimizer", self.opt)  # the torch optimizer under ZeRO's wrapper
        self.flats = self.hp_partitions()

    def hp_partitions(self) -> list:
        for attr in ("single_partition_of_fp32_groups",  # ZeRO-1/2
                     "fp32_groups_flat_partition",  # BF16_Optimizer (bf16 + ZeRO-1)
                     "fp32_partitioned_groups_flat"):  # ZeRO-3
            if hasattr(self.opt, attr):
                return list(getattr(self.opt, attr))
        if isinstance(self.opt, torch.optim.Optimizer) and self.engine.zero_optimization_stage() == 0:
            return [p for group in self.opt.param_groups for p in group["params"]]  # plain AdamW on the module
        raise CheckpointError(f"cannot load a checkpoint of another layout into DeepSpeed's {self.kind}: "
                              f"restart with the layout the checkpoint was saved with")

    def init_adam_state(self, step: int) -> None:
        """The state Adam would create at its first step, with ``step`` steps already taken."""
        as_tensor = isinstance(self.base, torch.optim.Adam | torch.optim.AdamW)
        # fused/capturable are optimizer-wide here (ds_config "fused"); ZeRO-3 swaps each flat into its
        # param group only for the duration of its step, so look them up in the defaults, not the groups
        for flat in self.flats:
            self.base.state[flat] = {"step": adam_step(step, flat, self.base.defaults) if as_tensor else step,
                                     "exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
        if hasattr(self.opt, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2, bf16: point fragments at it
            self.opt._hp_optimizer_states_linked = False
            self.opt._lazy_init_hp_params_optimizer_state()

    def set(self, param, value: torch.Tensor, key: str) -> None:
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        value = value.to(self.flats[0].device)
        if self.engine.zero_optimization_stage() == 0:
            target = param.data if key == "fp32" else self.base.state[param][key]
            target.copy_(value.view_as(target))
        elif key == "fp32":
            safe_set_full_fp32_param(param, value)
        else:
            safe_set_full_optimizer_state(param, value, key)

    def refresh_model_weights(self) -> None:
        """Copy the fp32 master weights into the module's (bf16 or fp32) working weights."""
        if hasattr(self.opt, "update_lp_params"):  # ZeRO-1/2 and BF16_Optimizer: copy + DP all-gather
            self.opt.update_lp_params()
        elif hasattr(self.opt, "fp32_partitioned_groups_flat"):  # ZeRO-3: each rank's own partition
            for lp_flat, fp32_flat in zip(self.opt.fp16_partitioned_groups_flat, self.flats):
                if lp_flat is not None and fp32_flat.numel():
                    lp_flat.data.copy_(fp32_flat.data)
            self.opt.checkpoint_event_epilogue()  # re-gathers persistent (unpartitioned) params


def load_into_engine(engine, ckpt: Checkpoint, tp: int, tp_rank: int, with_optimizer: bool = True) -> int:
    """Fill ``engine`` (at TP size ``tp``) from ``ckpt`` of any layout; -> the optimizer step restored.

    ``with_optimizer=False`` (or a weights-only checkpoint) sets the weights and leaves the optimizer fresh.
    """
    adapter = OptimizerAdapter(engine)
    with_optimizer = with_optimizer and not ckpt.weights_only
    step = ckpt.step() if with_optimizer else 0
    if with_optimizer:
        adapter.init_adam_state(step)
    params = dict(engine.module.named_parameters())
    names = ckpt.names()
    if set(params) != set(names):
        raise CheckpointError(f"{ckpt.folder} holds parameters {sorted(set(names) - set(params))} the model lacks, "
                              f"and lacks {sorted(set(params) - set(names))}")
    padded = ckpt.padded_vocab_for(tp)
    for name, param in params.items():
        for key in ("fp32", *MOMENTS) if with_optimizer else ("fp32",):
            value = ckpt.shard(name, key, tp, tp_rank, padded)
            shape = tuple(getattr(param, "ds_shape", param.shape))
            if tuple(value.shape) != shape:
                raise CheckpointError(f"{ckpt.folder}: {name} ({key}) becomes {tuple(value.shape)} at TP={tp}, "
                                      f"the model's shard is {shape}")
            adapter.set(param, value, key)
    adapter.refresh_model_weights()
    if with_optimizer:
        restore_counters(engine, ckpt.engine_state())
    return step


def restore_counters(engine, state: dict) -> None:
    """DeepSpeed's step counters and the LR schedule (its current lr goes into the param groups)."""
    for key in ("global_steps", "global_samples", "skipped_steps"):
        if state.get(key) is not None:
            setattr(engine, key, state[key])
    schedule = state.get("lr_scheduler")
    if schedule is not None and engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(schedule)
        for group, lr in zip(engine.optimizer.param_groups, engine.lr_scheduler.get_last_lr()):
            group["lr"] = lr


def describe_layout(meta: dict) -> str:
    if meta.get("weights_only"):
        return f"weights only, TP={meta['tensor_parallel']}"
    return (f"TP={meta['tensor_parallel']}, DP={meta['data_parallel']}, ZeRO-{meta['zero_stage']}, "
            f"{meta['precision']}")


def restore(engine, checkpointer, world, zero_stage: int, precision: str, init_from: str = "") -> dict | None:
    """Resume ``engine`` from the run's latest checkpoint, resharding it if its layout differs.

    With no checkpoint in the run yet, ``init_from`` (a run dir or checkpoint of any layout) gives the
    initial weights only: fresh optimizer, step 0. -> the resumed checkpoint's meta, or None.
    """
    from bigtrain.checkpoint.manager import latest_checkpoint, read_meta

    folder = latest_checkpoint(checkpointer.root)
    if folder is None:
        if init_from:
            ckpt = Checkpoint.open(init_from)
            announce(world, f"initialising the weights from {ckpt.folder} ({describe_layout(ckpt.meta)}); "
                            f"fresh optimizer, step 0")
            load_into_engine(engine, ckpt, world.tp_size, world.tp_rank, with_optimizer=False)
        return None
    meta = read_meta(folder)
    if not needs_reshard(meta, world.tp_size, world.dp_size, zero_stage, precision):
        return checkpointer.load_latest(engine)
    here = {"tensor_parallel": world.tp_size, "data_parallel": world.dp_size, "zero_stage": zero_stage,
            "precision": precision}
    announce(world, f"resharding {folder} ({describe_layout(meta)}) into {describe_layout(here)}")
    load_into_engine(engine, Checkpoint(folder, meta), world.tp_size, world.tp_rank)
    return meta


def announce(world, message: str) -> None:
    if world.is_main:
        print(message, flush=True)
