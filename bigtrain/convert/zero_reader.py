"""Read the fp32 weights of a bigtrain checkpoint from DeepSpeed's files, without a DeepSpeed engine.

One tensor-parallel rank at a time: ``read_tp_rank(folder, meta, r)`` returns TP rank r's full fp32
state dict (bigtrain module names, that rank's shard shapes). Which files hold the weights depends on
the ZeRO stage saved in ``meta.json`` (``{p}`` = ``bf16_`` when ``precision`` is bf16, else empty):

- stage 0: ``mp_rank_{tp:02d}_model_states.pt`` holds the module's state dict.
- stage 1/2: ``{p}zero_pp_rank_{dp}_mp_rank_{tp:02d}_optim_states.pt`` hold the fp32 master weights:
  per param group, the params are flattened in ``param_shapes`` order (each followed by its
  ``param_alignment_paddings`` entry, if any), the flat vector is padded and cut into ``dp`` equal
  partitions; rank d's file holds partition d (the last one without its trailing padding).
  ``param_shapes`` comes from ``mp_rank_{tp:02d}_model_states.pt``.
- stage 3: the same optimizer files, but *each parameter* is cut into ``dp`` chunks of
  ``ceil(numel / dp)`` (the last one zero-padded); rank d's flat groups are its chunks of every
  param in ``param_shapes`` order, concatenated over the param groups (``fp32_flat_groups``, split
  into sub-groups at arbitrary points). ``param_shapes`` is in ``zero_pp_rank_0_mp_rank_{tp:02d}_model_states.pt``.

This is the layout DeepSpeed's own ``deepspeed/utils/zero_to_fp32.py`` reconstructs; that script
refuses tensor-parallel checkpoints, hence this module. Files are loaded with
``torch.load(weights_only=True)`` allowing only the DeepSpeed classes of ``allowed_globals()``, and
memory-mapped, so the optimizer's moment tensors are never read.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch
from torch import Tensor

from bigtrain.checkpoint.manager import CheckpointError


def allowed_globals() -> list[type]:
    """The only non-torch objects DeepSpeed (0.19) pickles into its checkpoint files."""
    from bigtrain.parallel.dsenv import import_deepspeed

    import_deepspeed()  # DeepSpeed's process-wide settings first (CPU accelerator, quiet logger)
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum,  # optimizer_state_dict["zero_stage"]
            LossScaler,  # optimizer_state_dict["loss_scaler"] (fp32 and ZeRO-3 too)
            fragment_address]  # optimizer_state_dict["param_slice_mappings"] (ZeRO-1/2, bf16)


def load_file(path: Path) -> dict:
    """torch.load with weights_only=True and the DeepSpeed allowlist; a clear error if unreadable."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    allowed = allowed_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        names = [f"{c.__module__}.{c.__qualname__}" for c in allowed]
        raise CheckpointError(f"{path} holds objects outside tensors and the allowed DeepSpeed classes "
                              f"{names}; refusing to unpickle it ({str(exc).splitlines()[0]})") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt: {exc}") from exc


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


def read_tp_rank(folder: Path, meta: dict, tp_rank: int) -> dict[str, Tensor]:
    """The full fp32 state dict of one tensor-parallel rank's shard (no ``_extra_state`` keys)."""
    stage = meta["zero_stage"]
    model_path = folder / model_file(stage, tp_rank)
    model_states = load_file(model_path)
    if stage == 0:
        return module_weights(model_states, model_path)
    shapes = param_shapes(model_states, model_path)
    del model_states
    parts = [read_partition(folder / optim_file(meta["precision"], tp_rank, d), stage, meta["data_parallel"])
             for d in range(meta["data_parallel"])]
    flats = [flat for flat, _ in parts]
    where = folder / optim_file(meta["precision"], tp_rank, 0)
    if stage == 3:
        return unflatten_zero3(flats, shapes, where)
    return unflatten_zero12(flats, shapes, parts[0][1], where)


def read_tp_shards(folder: Path, meta: dict) -> list[dict[str, Tensor]]:
    """``read_tp_rank`` for every TP rank, after checking that no rank's file is missing."""
    check_complete(folder, meta)
    return [read_tp_rank(folder, meta, r) for r in range(meta["tensor_parallel"])]


def module_weights(model_states: dict, path: Path) -> dict[str, Tensor]:
    module = model_states.get("module")
    if not isinstance(module, dict) or not module:
        raise CheckpointError(f"{path} has no module state dict")
    return {k: v.float().clone() for k, v in module.items() if not k.endswith("_extra_state")}


def param_shapes(model_states: dict, path: Path) -> list[dict[str, torch.Size]]:
    shapes = model_states.get("param_shapes")
    if not shapes:
        raise CheckpointError(f"{path} has no param_shapes: not the model file of a ZeRO checkpoint")
    if model_states.get("frozen_param_shapes"):
        raise CheckpointError(f"{path} has frozen parameters, which bigtrain models do not have")
    return shapes


def read_partition(path: Path, stage: int, dp: int) -> tuple[list[Tensor], list[list[int]] | None]:
    """-> (this data-parallel rank's fp32 partition of each param group, per-param alignment paddings)."""
    state = load_file(path).get("optimizer_state_dict")
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
    return [t.float() for t in state[key]], state.get("param_alignment_paddings")


def unflatten_zero12(flats: list[list[Tensor]], shapes: list[dict[str, torch.Size]],
                     paddings: list[list[int]] | None, where: Path) -> dict[str, Tensor]:
    """ZeRO-1/2: concatenate the ranks' partitions of each group, then walk its params in order."""
    if any(len(f) != len(shapes) for f in flats):
        raise CheckpointError(f"{where}: {len(flats[0])} param groups in the optimizer files, "
                              f"{len(shapes)} in param_shapes")
    out = {}
    for g, group_shapes in enumerate(shapes):
        flat = torch.cat([rank_flats[g] for rank_flats in flats])
        offset = 0
        for i, (name, shape) in enumerate(group_shapes.items()):
            numel = math.prod(shape)
            if offset + numel > flat.numel():
                raise CheckpointError(f"{where}: param group {g} holds {flat.numel()} values, too few for "
                                      f"its params (ran out at {name})")
            out[name] = flat[offset:offset + numel].view(shape).clone()
            offset += numel + (paddings[g][i] if paddings else 0)
        slack = flat.numel() - offset  # DeepSpeed pads each group to a multiple of (2 or 4) * dp
        if slack >= 8 * len(flats) + 64:
            raise CheckpointError(f"{where}: param group {g} holds {flat.numel()} values but its params "
                                  f"need only {offset}: the files do not match param_shapes")
        del flat
    return out


def unflatten_zero3(flats: list[list[Tensor]], shapes: list[dict[str, torch.Size]], where: Path) -> dict[str, Tensor]:
    """ZeRO-3: every param is split into dp chunks of ceil(numel/dp); gather chunk d from rank d."""
    dp = len(flats)
    rank_flats = [torch.cat(f) if len(f) > 1 else f[0] for f in flats]  # sub-groups are one stream
    sizes = {t.numel() for t in rank_flats}
    params = [(name, shape) for group in shapes for name, shape in group.items()]
    needed = sum(math.ceil(math.prod(shape) / dp) for _, shape in params)
    if sizes != {needed}:
        raise CheckpointError(f"{where}: the {dp} ranks' flat fp32 partitions hold {sorted(sizes)} values, "
                              f"param_shapes needs {needed} per rank")
    out, offset = {}, 0
    for name, shape in params:
        numel = math.prod(shape)
        chunk = math.ceil(numel / dp)
        full = torch.cat([f[offset:offset + chunk] for f in rank_flats])  # (dp * chunk,) incl. padding
        out[name] = full[:numel].view(shape)
        offset += chunk
    return out
