"""Read a bigtrain checkpoint's DeepSpeed files one parameter at a time, without a DeepSpeed engine.

``ZeroRank(folder, meta, r)`` is tensor-parallel rank r of the checkpoint; ``tensor(name, key)``
returns one parameter's fp32 master weight (``key="fp32"``) or Adam moment (``"exp_avg"``,
``"exp_avg_sq"``) with that rank's shard shape, in new memory. Files are memory-mapped, so only
the bytes of the requested tensors are read: an export touches the fp32 weights and never the
moments, and no more than one parameter is materialised at a time.

Where the tensors live depends on the ZeRO stage in ``meta.json`` (``{p}`` = ``bf16_`` when
``precision`` is bf16, else empty):

- stage 0: ``mp_rank_{tp:02d}_model_states.pt``: ``module`` holds the weights, ``optimizer`` the
  torch AdamW state per parameter (indices in param-group order: matrices, then norms).
- stage 1/2: ``{p}zero_pp_rank_{dp}_mp_rank_{tp:02d}_optim_states.pt``: per param group, the params
  are flattened in ``param_shapes`` order (each followed by its ``param_alignment_paddings`` entry,
  if any), the flat vector is cut into ``dp`` equal partitions; rank d's file holds partition d of
  the fp32 weights (``single_partition_of_fp32_groups``) and of each moment
  (``base_optimizer_state.state[group]``), the last one without its trailing padding.
  ``param_shapes`` comes from ``mp_rank_{tp:02d}_model_states.pt``.
- stage 3: the same optimizer files, but *each parameter* is cut into ``dp`` chunks of
  ``ceil(numel / dp)`` (the last one zero-padded); rank d's stream is its chunk of every param in
  ``param_shapes`` order, stored as sub-groups (``fp32_flat_groups``; moments in
  ``optimizer_state_dict.state[sub_group]``). ``param_shapes`` is in
  ``zero_pp_rank_0_mp_rank_{tp:02d}_model_states.pt``.

This is the layout DeepSpeed's own ``deepspeed/utils/zero_to_fp32.py`` reconstructs; that script
refuses tensor-parallel checkpoints and reads no moments, hence this module. Files are loaded with
``torch.load(weights_only=True)`` allowing only the DeepSpeed classes of ``safe_load.deepspeed_classes()``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from bigtrain.checkpoint.errors import CheckpointError
from bigtrain.checkpoint.safe_load import deepspeed_classes, torch_load
from bigtrain.config.arithmetic import optimizer_order

KEYS = ("fp32", "exp_avg", "exp_avg_sq")
MOMENTS = ("exp_avg", "exp_avg_sq")


def load_file(path: Path) -> dict:
    """A DeepSpeed file, weights-only with DeepSpeed's classes (safe_load.py), memory-mapped."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    return torch_load(path, deepspeed_classes(), mmap=True)


def model_file(stage: int, tp_rank: int, dp_rank: int = 0) -> str:
    if stage == 3:
        return f"zero_pp_rank_{dp_rank}_mp_rank_{tp_rank:02d}_model_states.pt"
    return f"mp_rank_{tp_rank:02d}_model_states.pt"


def optim_file(precision: str, tp_rank: int, dp_rank: int) -> str:
    prefix = "bf16_" if precision == "bf16" else ""
    return f"{prefix}zero_pp_rank_{dp_rank}_mp_rank_{tp_rank:02d}_optim_states.pt"


def expected_files(meta: dict, tp_rank: int) -> list[str]:
    """DeepSpeed files that TP rank ``tp_rank`` of this checkpoint must have."""
    stage, dp = meta["zero_stage"], meta["data_parallel"]
    if stage == 0:
        return [model_file(0, tp_rank)]
    models = [model_file(stage, tp_rank, d) for d in range(dp if stage == 3 else 1)]
    return models + [optim_file(meta["precision"], tp_rank, d) for d in range(dp)]


def check_complete(folder: Path, meta: dict) -> None:
    """Every rank's file is present (before reading any of them)."""
    missing = [name for r in range(meta["tensor_parallel"]) for name in expected_files(meta, r)
               if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {folder} is incomplete: meta.json says tensor_parallel={meta['tensor_parallel']}, "
            f"data_parallel={meta['data_parallel']}, zero_stage={meta['zero_stage']}, precision={meta['precision']}, "
            f"but {len(missing)} DeepSpeed file(s) are missing: {', '.join(missing)}")


class FlatStream:
    """Several 1-D tensors read as one: ``read(start, n)`` copies elements [start, start+n)."""

    def __init__(self, parts: list[Tensor]):
        self.parts = parts
        self.starts = [0]
        for p in parts:
            self.starts.append(self.starts[-1] + p.numel())

    @property
    def numel(self) -> int:
        return self.starts[-1]

    def read(self, start: int, n: int) -> Tensor:
        pieces, end = [], start + n
        for part, lo in zip(self.parts, self.starts):
            hi = lo + part.numel()
            if hi > start and lo < end:
                pieces.append(part[max(start, lo) - lo:min(end, hi) - lo])
        return torch.cat(pieces).float() if pieces else torch.empty(0)  # cat: own memory, not the mmap


class ZeroRank:
    """One tensor-parallel rank of a DeepSpeed checkpoint, read lazily."""

    def __init__(self, folder: Path, meta: dict, tp_rank: int):
        self.folder, self.tp_rank = folder, tp_rank
        self.stage, self.dp, self.precision = meta["zero_stage"], meta["data_parallel"], meta["precision"]
        self.model_path = folder / model_file(self.stage, tp_rank)
        self.model_states = load_file(self.model_path)
        if self.stage == 0:
            self.shapes = {k: v.shape for k, v in self.module().items()}
            return
        self.groups = param_shapes(self.model_states, self.model_path)
        self.shapes = {name: shape for group in self.groups for name, shape in group.items()}
        self.optim_paths = [folder / optim_file(self.precision, tp_rank, d) for d in range(self.dp)]
        self.states = [optimizer_state(load_file(p), p, self.stage, self.dp) for p in self.optim_paths]
        self.locate = self.index_zero3() if self.stage == 3 else self.index_zero12()

    # --- public -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.shapes)

    def tensor(self, name: str, key: str = "fp32") -> Tensor:
        if name not in self.shapes:
            raise CheckpointError(f"{self.model_path}: no parameter {name!r}")
        if self.stage == 0:
            return self.stage0_tensor(name, key)
        return self.locate(name, key).view(self.shapes[name])

    def step(self) -> int:
        """Adam's step count (optimizer steps taken)."""
        steps = {int(s["step"]) for s in self.moment_states() if "step" in s}
        if len(steps) != 1:
            raise CheckpointError(f"{self.folder}: optimizer step counts {sorted(steps)}: expected one value")
        return steps.pop()

    def engine_state(self) -> dict:
        """DeepSpeed's counters and the LR scheduler state saved with the model."""
        keys = ("global_steps", "global_samples", "skipped_steps", "lr_scheduler")
        return {k: self.model_states.get(k) for k in keys}

    # --- stage 0 ------------------------------------------------------------------------------
    def module(self) -> dict[str, Tensor]:
        module = self.model_states.get("module")
        if not isinstance(module, dict) or not module:
            raise CheckpointError(f"{self.model_path} has no module state dict")
        return {k: v for k, v in module.items() if not k.endswith("_extra_state")}

    def stage0_tensor(self, name: str, key: str) -> Tensor:
        if key == "fp32":
            return self.module()[name].float().clone()
        state = self.stage0_optimizer()["state"]
        index = optimizer_order(self.shapes).index(name)  # torch AdamW numbers params across its groups
        return state[index][key].float().clone()

    def stage0_optimizer(self) -> dict:
        opt = self.model_states.get("optimizer")
        if not isinstance(opt, dict) or "state" not in opt:
            raise CheckpointError(f"{self.model_path} holds no optimizer state")
        if len(opt["state"]) != len(self.shapes):
            raise CheckpointError(f"{self.model_path}: optimizer state for {len(opt['state'])} params, "
                                  f"the module has {len(self.shapes)}")
        return opt

    def moment_states(self) -> list[dict]:
        if self.stage == 0:
            return list(self.stage0_optimizer()["state"].values())
        return [s for state in self.states for s in state["moments"]]

    # --- stage 1/2: partitions of each param group, concatenated over DP ranks ----------------------
    def index_zero12(self):
        where = self.optim_paths[0]
        if any(len(s["fp32"]) != len(self.groups) for s in self.states):
            raise CheckpointError(f"{where}: {len(self.states[0]['fp32'])} param groups in the optimizer "
                                  f"files, {len(self.groups)} in param_shapes")
        paddings = self.states[0]["paddings"]
        offsets = {}
        for g, group in enumerate(self.groups):
            total, offset = sum(s["fp32"][g].numel() for s in self.states), 0
            for i, (name, shape) in enumerate(group.items()):
                offsets[name] = (g, offset)
                offset += math.prod(shape) + (paddings[g][i] if paddings else 0)
            if offset > total:
                raise CheckpointError(f"{where}: param group {g} holds {total} values, too few for its params")
            if total - offset >= 8 * self.dp + 64:  # DeepSpeed pads each group to a multiple of (2 or 4) * dp
                raise CheckpointError(f"{where}: param group {g} holds {total} values but its params "
                                      f"need only {offset}: the files do not match param_shapes")

        def locate(name: str, key: str) -> Tensor:
            g, offset = offsets[name]
            stream = FlatStream([self.flat(s, key, g) for s in self.states])
            return stream.read(offset, math.prod(self.shapes[name]))

        return locate

    # --- stage 3: every param cut into dp chunks -----------------------------------------------------
    def index_zero3(self):
        offsets, offset = {}, 0
        for name, shape in self.shapes.items():
            offsets[name] = offset
            offset += math.ceil(math.prod(shape) / self.dp)
        sizes = {FlatStream(s["fp32"]).numel for s in self.states}
        if sizes != {offset}:
            raise CheckpointError(f"{self.optim_paths[0]}: the {self.dp} ranks' flat fp32 partitions hold "
                                  f"{sorted(sizes)} values, param_shapes needs {offset} per rank")
        streams: dict[str, list[FlatStream]] = {}

        def locate(name: str, key: str) -> Tensor:
            if key not in streams:
                streams[key] = [FlatStream([self.flat(s, key, g) for g in range(len(s["fp32"]))])
                                for s in self.states]
            numel = math.prod(self.shapes[name])
            chunk = math.ceil(numel / self.dp)
            return torch.cat([s.read(offsets[name], chunk) for s in streams[key]])[:numel]

        return locate

    def flat(self, state: dict, key: str, g: int) -> Tensor:
        if key == "fp32":
            return state["fp32"][g]
        moments = state["moments"]
        if g >= len(moments) or key not in moments[g]:
            raise CheckpointError(f"{self.optim_paths[0]}: no optimizer state {key!r} for param group {g} "
                                  f"(a checkpoint saved before the first optimizer step?)")
        tensor = moments[g][key]
        if tensor.numel() != state["fp32"][g].numel():
            raise CheckpointError(f"{self.optim_paths[0]}: {key} of param group {g} has {tensor.numel()} values, "
                                  f"the fp32 partition {state['fp32'][g].numel()}")
        return tensor


def param_shapes(model_states: dict, path: Path) -> list[dict[str, torch.Size]]:
    shapes = model_states.get("param_shapes")
    if not shapes:
        raise CheckpointError(f"{path} has no param_shapes: not the model file of a ZeRO checkpoint")
    if model_states.get("frozen_param_shapes"):
        raise CheckpointError(f"{path} has frozen parameters, which bigtrain models do not have")
    return shapes


def optimizer_state(data: dict, path: Path, stage: int, dp: int) -> dict:
    """-> {"fp32": flat fp32 tensors, "moments": per-flat Adam state dicts, "paddings": ...} of one file."""
    state = data.get("optimizer_state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no optimizer_state_dict: not a DeepSpeed ZeRO optimizer file")
    counts = state.get("partition_count")
    if any(c != dp for c in (counts if isinstance(counts, list) else [counts])):
        raise CheckpointError(f"{path} is partitioned over {counts} ranks, but meta.json says data_parallel={dp}")
    saved_stage = state.get("zero_stage")
    if saved_stage is not None and int(saved_stage) != stage:
        raise CheckpointError(f"{path} was saved with ZeRO stage {int(saved_stage)}, but meta.json says {stage}")
    key = "fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups"
    if key not in state:
        raise CheckpointError(f"{path} has no {key}: expected the optimizer file of a ZeRO stage {stage} run")
    base = state.get("optimizer_state_dict" if stage == 3 else "base_optimizer_state") or {}
    per_flat = base.get("state", {}) if isinstance(base, dict) else {}
    moments = [per_flat[i] for i in sorted(per_flat)]
    return {"fp32": state[key], "moments": moments, "paddings": state.get("param_alignment_paddings")}


def read_tp_rank(folder: Path, meta: dict, tp_rank: int) -> dict[str, Tensor]:
    """Every fp32 weight of one tensor-parallel rank (its shard shapes; no ``_extra_state`` keys)."""
    rank = ZeroRank(folder, meta, tp_rank)
    return {name: rank.tensor(name) for name in rank.names()}


def read_tp_shards(folder: Path, meta: dict) -> list[dict[str, Tensor]]:
    """``read_tp_rank`` for every TP rank, after checking that no rank's file is missing."""
    check_complete(folder, meta)
    return [read_tp_rank(folder, meta, r) for r in range(meta["tensor_parallel"])]
