"""Wrap the plain model in a DeepSpeed ZeRO engine over megatron's data-parallel group.

Order (fixed): DeepSpeed config from ds_configs/ templates -> model built under ``zero.Init``
(ZeRO-3 partitions each TP shard across the data-parallel group only) -> the fast-path switches
(activation checkpointing, compile: optimize.py) -> ``deepspeed.initialize``
with the megatron mpu adapter, AdamW param groups and the warmup+cosine schedule.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from megatron.core import ModelParallelConfig, parallel_state

from bigtrain.config.arithmetic import is_decayed
from bigtrain.config.load import ConfigError
from bigtrain.config.schema import Config
from bigtrain.config.validate import resolve_precision
from bigtrain.model.encoder import EncoderModel
from bigtrain.model.llama import LlamaModel
from bigtrain.parallel.dsenv import import_deepspeed
from bigtrain.parallel.mpu import MegatronMpu
from bigtrain.parallel.optimize import optimize_model
from bigtrain.parallel.sequence import allow_sequence_parallel_on_cpu, sum_replicated_grads_over_tp
from bigtrain.parallel.world import World
from bigtrain.config.schedule import lr_lambda

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "ds_configs"


def deep_merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"DeepSpeed config {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON: {exc}") from exc


def build_ds_config(cfg: Config, dp_size: int, on_gpu: bool) -> dict[str, Any]:
    """Merge the templates (see ds_configs/README.md) and fill every "auto" from ``cfg``."""
    p, t = cfg.parallel, cfg.train
    ds = load_json(TEMPLATE_DIR / f"zero{p.zero_stage}.json")
    if t.precision in ("bf16", "fp16"):
        ds = deep_merge(ds, load_json(TEMPLATE_DIR / f"{t.precision}.json"))
    if t.precision == "bf16" and p.zero_stage == 0:
        # Without ZeRO, DeepSpeed's bf16 path (FP16_Optimizer: fp32 master weights) accumulates in bf16 only
        ds = deep_merge(ds, {"data_types": {"grad_accum_dtype": "bf16"}})
    if p.cpu_offload:
        ds = deep_merge(ds, load_json(TEMPLATE_DIR / "cpu_offload.json"))
    if p.ds_config:
        ds = deep_merge(ds, load_json(Path(p.ds_config)))
    autos = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.global_batch_size // (t.micro_batch_size * dp_size),
        "gradient_clipping": t.grad_clip,
        "lr": t.lr, "betas": [t.beta1, t.beta2], "eps": t.eps, "weight_decay": t.weight_decay,
        "fused": t.fused_adam,
        **zero_knobs(cfg, on_gpu),
    }
    return fill_auto(ds, autos)


def zero_knobs(cfg: Config, on_gpu: bool) -> dict[str, Any]:
    """ZeRO's communication knobs from ``parallel.*`` (defaults per device: ds_configs/README.md)."""
    p = cfg.parallel
    bucket = p.bucket_size or (500_000_000 if on_gpu else 1_000_000)
    prefetch = p.prefetch_bucket_size or p.bucket_size or (50_000_000 if on_gpu else 1_000_000)
    persistence = p.param_persistence_threshold if p.param_persistence_threshold >= 0 else (
        100_000 if on_gpu else 0)
    return {
        "reduce_bucket_size": bucket, "allgather_bucket_size": bucket,
        "stage3_prefetch_bucket_size": prefetch, "stage3_param_persistence_threshold": persistence,
        "stage3_max_live_parameters": p.max_live_parameters, "stage3_max_reuse_distance": p.max_reuse_distance,
        "overlap_comm": on_gpu if p.overlap_comm is None else p.overlap_comm,
        "contiguous_gradients": p.contiguous_gradients,
        "sub_group_size": p.sub_group_size or (1_000_000_000 if on_gpu else 1_000_000),
    }


def fill_auto(node: Any, autos: dict[str, Any], path: str = "") -> Any:
    if isinstance(node, dict):
        return {k: fill_auto(v, autos, f"{path}{k}.") if v != "auto" else auto_value(autos, k, path)
                for k, v in node.items()}
    return node


def auto_value(autos: dict[str, Any], key: str, path: str) -> Any:
    if key not in autos:
        raise ConfigError(f"DeepSpeed config: no bigtrain value for \"auto\" at {path}{key}")
    return autos[key]


def tp_layer_config(cfg: Config, world: World) -> ModelParallelConfig:
    """The narrow parallel config megatron's layers receive (fusions off: they need CUDA/apex)."""
    return ModelParallelConfig(
        tensor_model_parallel_size=world.tp_size, use_cpu_initialization=True, perform_initialization=True,
        params_dtype=torch.float32, sequence_parallel=sequence_parallel(cfg, world),
        gradient_accumulation_fusion=False)


def sequence_parallel(cfg: Config, world: World) -> bool:
    """parallel.sequence_parallel, which means nothing (and is off) at tensor_parallel=1."""
    return cfg.parallel.sequence_parallel and world.tp_size > 1


def build_model(cfg: Config, world: World, vocab_size: int, ds_config: dict) -> LlamaModel | EncoderModel:
    """Construct the model (partitioned at construction under ZeRO-3) from ``train.seed``: the Llama decoder,
    or the ModernBERT encoder for ``train.objective=mlm``."""
    deepspeed = import_deepspeed()
    if sequence_parallel(cfg, world) and world.device.type == "cpu":
        allow_sequence_parallel_on_cpu()
    torch.manual_seed(cfg.train.seed)
    model_class = EncoderModel if cfg.train.objective == "mlm" else LlamaModel
    with deepspeed.zero.Init(data_parallel_group=parallel_state.get_data_parallel_group(),
                             config_dict_or_path=ds_config, enabled=cfg.parallel.zero_stage == 3,
                             mpu=MegatronMpu()):
        model = model_class(cfg.model, vocab_size, tp_layer_config(cfg, world))
    if sequence_parallel(cfg, world):  # the norms see a sequence shard: sum their gradients over TP
        sum_replicated_grads_over_tp(model, parallel_state.get_tensor_model_parallel_group())
    if cfg.parallel.zero_stage == 3 and (cfg.model.tie_embeddings or model_class is EncoderModel):
        # The output layer reads the embedding's weight: ZeRO-3 must gather it for lm_head too.
        deepspeed.zero.register_external_parameter(model.lm_head, model.embed.weight)
    return optimize_model(model, cfg.model.activation_checkpointing, cfg.train.compile)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; norms (1-D gains) are not decayed (config/arithmetic.py: the order)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if is_decayed(name) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def release_engine(engine) -> None:
    """Let the engine, its model and the process groups they hold be freed now, not at interpreter exit.

    DeepSpeed 0.19's ZeRO-3 keeps the wrapped model in two process-wide places: its module-level
    ``FWD_MODULE_STACK`` (pushed when it wraps the model, never popped) and the class-level
    ``functools.lru_cache`` of ``PartitionedParameterCoordinator.__params_to_release`` (keyed by coordinator
    and submodule). So the model -- its ZeRO-3 parameters hold ``ds_process_group``, megatron's layers
    ``tp_group`` -- and through hooks the engine would live until Python finalizes, with their gloo process
    groups and worker threads (see ``parallel.world.destroy_world``; docs/patches.md). Local: no collective.
    """
    engine.destroy()  # removes DeepSpeed's hooks from the model
    from deepspeed.runtime.zero import parameter_offload
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator

    stack = parameter_offload.FWD_MODULE_STACK
    stack[:] = [m for m in stack if m is not engine.module]
    cached = PartitionedParameterCoordinator._PartitionedParameterCoordinator__params_to_release
    for cell in cached.__closure__ or ():  # the lru_cache sits under DeepSpeed's nvtx wrapper
        if hasattr(cell.cell_contents, "cache_clear"):
            cell.cell_contents.cache_clear()


def enable_tf32(device: torch.device, precision: str) -> bool:
    """fp32 on CUDA computes its matmuls in TF32 (an H100's fp32 peak is ~15x below its TF32/bf16 one;
    TF32 keeps fp32's range with a 10-bit mantissa, the usual choice for fp32 training). -> whether set."""
    if device.type != "cuda" or precision != "fp32":
        return False
    torch.set_float32_matmul_precision("high")  # cuBLAS: TF32
    torch.backends.cudnn.allow_tf32 = True  # cuDNN convolutions (PyTorch's default already)
    return True


def build_engine(cfg: Config, world: World, vocab_size: int):
    """-> (DeepSpeed engine, resolved DeepSpeed config dict)."""
    deepspeed = import_deepspeed()
    cfg = resolve_precision(cfg, world.device.type == "cuda")  # pretrain resolved it already; direct callers
    enable_tf32(world.device, cfg.train.precision)
    ds_config = build_ds_config(cfg, world.dp_size, on_gpu=world.device.type == "cuda")
    model = build_model(cfg, world, vocab_size, ds_config)
    schedule = lr_lambda(cfg.train)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, cfg.train.weight_decay), config=ds_config,
        mpu=MegatronMpu(), lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
    return engine, ds_config
