"""Checks that need no process group: run them before ``init_process_group``.

Each failure names the offending key(s) and what is expected, so a misconfigured 512-GPU job dies
in the first second with a readable message instead of a shape error after the NCCL bring-up.
"""

from __future__ import annotations

import dataclasses
import importlib.util

from bigtrain.config.load import ConfigError
from bigtrain.config.schema import ACTIVATION_CHECKPOINTING, ATTENTION_BACKENDS, OBJECTIVES, Config

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "nccl", "gloo")
# kernels that need CUDA, and those of them that compute only in bf16/fp16 there
CUDA_ONLY_ATTENTION = ("efficient", "cudnn", "flash_attn")
HALF_ONLY_ATTENTION_ON_CUDA = ("flash", "cudnn", "flash_attn")


def resolve_precision(cfg: Config, cuda: bool) -> Config:
    """``train.precision=auto`` -> bf16 on CUDA (fp32 master weights in DeepSpeed), fp32 on CPU."""
    if cfg.train.precision != "auto":
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="bf16" if cuda else "fp32"))


def validate(cfg: Config, world_size: int | None = None, cuda: bool | None = None) -> None:
    """Raise ConfigError naming every problem found. ``world_size`` enables the layout checks,
    ``cuda`` (whether this machine trains on CUDA) the device checks (:func:`device_errors`)."""
    raise_all(all_errors(cfg, world_size, cuda))


def all_errors(cfg: Config, world_size: int | None = None, cuda: bool | None = None) -> list[str]:
    errors = config_errors(cfg, world_size)
    if cuda is not None and cfg.train.precision in PRECISIONS:
        errors += device_errors(cfg, cuda)
    return errors


def raise_all(errors: list[str]) -> None:
    """One ConfigError for all ``errors`` (one line when there is one), or nothing when there are none."""
    if errors:
        raise ConfigError(errors[0] if len(errors) == 1 else
                          "invalid configuration:\n  - " + "\n  - ".join(errors))


def config_errors(cfg: Config, world_size: int | None = None) -> list[str]:
    m, p, t = cfg.model, cfg.parallel, cfg.train
    errors: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    for key, value in [("model.hidden_size", m.hidden_size), ("model.num_layers", m.num_layers),
                       ("model.num_heads", m.num_heads), ("model.num_kv_heads", m.num_kv_heads),
                       ("model.ffn_hidden_size", m.ffn_hidden_size), ("model.seq_len", m.seq_len),
                       ("model.vocab_pad_multiple", m.vocab_pad_multiple),
                       ("parallel.tensor_parallel", p.tensor_parallel), ("train.steps", t.steps),
                       ("cluster.nodes", cfg.cluster.nodes), ("cluster.gpus_per_node", cfg.cluster.gpus_per_node),
                       ("train.global_batch_size", t.global_batch_size),
                       ("train.micro_batch_size", t.micro_batch_size), ("log.every", cfg.log.every)]:
        need(value > 0, f"{key} must be positive, got {value}")
    if errors:
        return errors

    need(cfg.cluster.gpu_memory_gb > 0, f"cluster.gpu_memory_gb must be positive, got {cfg.cluster.gpu_memory_gb}")
    need(m.vocab_size >= 0, f"model.vocab_size must be >= 0 (0 = from the data manifest), got {m.vocab_size}")
    need(m.hidden_size % m.num_heads == 0,
         f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_heads ({m.num_heads})")
    need((m.hidden_size // m.num_heads) % 2 == 0,
         f"model.hidden_size / model.num_heads = {m.hidden_size // m.num_heads} must be even for RoPE")
    need(m.num_heads % m.num_kv_heads == 0,
         f"model.num_heads ({m.num_heads}) must be divisible by model.num_kv_heads ({m.num_kv_heads})")
    need(m.num_heads % p.tensor_parallel == 0,
         f"model.num_heads ({m.num_heads}) must be divisible by parallel.tensor_parallel ({p.tensor_parallel})")
    need(m.num_kv_heads % p.tensor_parallel == 0,
         f"model.num_kv_heads ({m.num_kv_heads}) must be divisible by parallel.tensor_parallel "
         f"({p.tensor_parallel}): each tensor-parallel rank holds whole key/value heads")
    need(m.ffn_hidden_size % p.tensor_parallel == 0,
         f"model.ffn_hidden_size ({m.ffn_hidden_size}) must be divisible by parallel.tensor_parallel "
         f"({p.tensor_parallel})")
    need(not (p.sequence_parallel and p.tensor_parallel > 1 and m.seq_len % p.tensor_parallel),
         f"parallel.sequence_parallel=true shards model.seq_len ({m.seq_len}) over parallel.tensor_parallel "
         f"({p.tensor_parallel}): it must be divisible (or set parallel.sequence_parallel=false)")
    need(not (p.sequence_parallel and p.tensor_parallel > 1 and t.objective == "mlm"),
         "parallel.sequence_parallel=true is not supported with train.objective=mlm (the encoder has no "
         "sequence-parallel path): set parallel.sequence_parallel=false")
    need(m.rope_theta > 0, f"model.rope_theta must be positive, got {m.rope_theta}")
    need(p.zero_stage in (0, 1, 2, 3), f"parallel.zero_stage must be 0, 1, 2 or 3, got {p.zero_stage}")
    need(p.backend in BACKENDS, f"parallel.backend must be one of {BACKENDS}, got {p.backend!r}")
    need(t.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}, got {t.precision!r}")
    need(t.lr > 0, f"train.lr must be positive, got {t.lr}")
    need(0 <= t.min_lr_ratio <= 1, f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}")
    need(t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    need(0 <= t.stop_at <= t.steps, f"train.stop_at must be in [0, train.steps={t.steps}] (0 = off), got {t.stop_at}")
    need(t.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 = off), got {t.grad_clip}")
    need(cfg.checkpoint.every >= 0, f"checkpoint.every must be >= 0 (0 = only at the end), got {cfg.checkpoint.every}")
    errors += fault_tolerance_errors(cfg)
    errors += fast_path_errors(cfg)
    errors += objective_errors(cfg)
    need(cfg.eval.every >= 0, f"eval.every must be >= 0 (0 = off), got {cfg.eval.every}")
    need(cfg.eval.batches > 0, f"eval.batches must be positive, got {cfg.eval.batches}")
    need(cfg.data.num_workers >= 0, f"data.num_workers must be >= 0, got {cfg.data.num_workers}")
    errors.extend(data_errors(cfg.data))
    need(bool(cfg.run.dir), "run.dir must be set")
    need(t.global_batch_size % t.micro_batch_size == 0,
         f"train.global_batch_size ({t.global_batch_size}) must be divisible by train.micro_batch_size "
         f"({t.micro_batch_size})")

    if world_size is not None:
        tp = p.tensor_parallel
        need(world_size % tp == 0,
             f"world size {world_size} must be divisible by parallel.tensor_parallel ({tp})")
        if world_size % tp == 0:
            dp = world_size // tp
            need(t.global_batch_size % (t.micro_batch_size * dp) == 0,
                 f"train.global_batch_size ({t.global_batch_size}) must be divisible by "
                 f"train.micro_batch_size ({t.micro_batch_size}) x data-parallel size ({dp}) = "
                 f"{t.micro_batch_size * dp}")
    return errors


def device_errors(cfg: Config, cuda: bool) -> list[str]:
    """What this device cannot run: backend, precision and attention kernel (precision resolved first)."""
    p, precision, kernel = cfg.parallel, resolve_precision(cfg, cuda).train.precision, cfg.model.attention_backend
    errors = []
    if p.backend == "gloo" and cuda:
        errors.append("parallel.backend=gloo on a machine with CUDA: bigtrain would put the batches on the CPU "
                      "while DeepSpeed puts the model on the GPU. Use parallel.backend=auto (nccl), or hide the "
                      "GPUs (CUDA_VISIBLE_DEVICES=) to train on the CPU")
    if p.backend == "nccl" and not cuda:
        errors.append("parallel.backend=nccl needs CUDA, and this machine has no CUDA device: use "
                      "parallel.backend=auto (gloo on CPU)")
    if precision == "fp16" and not cuda:
        errors.append("train.precision=fp16 needs CUDA (DeepSpeed's fp16 loss scaling), and this machine has no "
                      "CUDA device: use train.precision=bf16 or fp32")
    if kernel in CUDA_ONLY_ATTENTION and not cuda:
        errors.append(f"model.attention_backend={kernel} needs CUDA, and this machine has no CUDA device: use "
                      "model.attention_backend=auto, math or flash (PyTorch's CPU flash kernel)")
    elif kernel in HALF_ONLY_ATTENTION_ON_CUDA and cuda and precision == "fp32":
        errors.append(f"model.attention_backend={kernel} computes only in bf16/fp16 on CUDA, but train.precision="
                      f"{cfg.train.precision} (fp32): use train.precision=bf16, or model.attention_backend=auto "
                      "or efficient")
    return errors


ON_CORRUPT = ("stop", "skip")


def data_errors(d) -> list[str]:
    """The data section's own checks (the shard directories are checked later, still before any process group)."""
    errors = []
    if d.on_corrupt not in ON_CORRUPT:
        errors.append(f"data.on_corrupt must be one of {ON_CORRUPT}, got {d.on_corrupt!r}")
    if d.mix_block_size < 1:
        errors.append(f"data.mix_block_size must be positive, got {d.mix_block_size}")
    if d.path and d.sources:
        errors.append("data.path and data.sources are both set: data.path is the one-source shorthand; "
                      "list every directory in data.sources instead")
    for i, source in enumerate(d.sources):
        if not source.path:
            errors.append(f"data.sources[{i}].path must be set")
        if not source.weight > 0:
            errors.append(f"data.sources[{i}].weight must be positive, got {source.weight}")
    if d.cache_bytes < 1:
        errors.append(f"data.cache_bytes must be positive, got {d.cache_bytes}")
    paths = [("data.path", d.path)] + [(f"data.sources[{i}].path", s.path) for i, s in enumerate(d.sources)]
    for key, path in paths:
        if path.startswith("pipe:") and "{}" not in path:  # remote.py: {} stands for each file name
            errors.append(f"{key}={path!r}: a pipe: URL marks where the file name goes with {{}}, e.g. "
                          f"'pipe:aws s3 cp s3://bucket/shards/{{}} -'")
    return errors


def fault_tolerance_errors(cfg: Config) -> list[str]:
    """Checkpoint retention, numerical-fault, watchdog and logging keys (issue 4)."""
    c, t = cfg.checkpoint, cfg.train
    errors = []
    if c.keep < 0:
        errors.append(f"checkpoint.keep must be >= 0 (0 = keep all), got {c.keep}")
    if c.keep_every < 0:
        errors.append(f"checkpoint.keep_every must be >= 0 (0 = none), got {c.keep_every}")
    if c.keep_every and not c.keep:
        errors.append(f"checkpoint.keep_every={c.keep_every} needs checkpoint.keep > 0 "
                      "(with keep=0 every checkpoint is kept anyway)")
    if t.max_consecutive_skips < 0:
        errors.append(f"train.max_consecutive_skips must be >= 0 (0 = never stop), got {t.max_consecutive_skips}")
    if t.spike_threshold != 0 and t.spike_threshold <= 1:
        errors.append(f"train.spike_threshold must be > 1 (a ratio to the running mean loss) or 0 = off, "
                      f"got {t.spike_threshold}")
    if t.watchdog_timeout_s < 0:
        errors.append(f"train.watchdog_timeout_s must be >= 0 (0 = off), got {t.watchdog_timeout_s}")
    if cfg.log.wandb and importlib.util.find_spec("wandb") is None:
        errors.append("log.wandb=true but the wandb package is not installed: pip install wandb "
                      "(or pip install 'bigtrain[wandb]'), or set log.wandb=false")
    return errors


def fast_path_errors(cfg: Config) -> list[str]:
    """Attention kernel, activation checkpointing and ZeRO-3 knobs (issue 7)."""
    m, p = cfg.model, cfg.parallel
    errors = []
    if m.attention_backend not in ATTENTION_BACKENDS:
        errors.append(f"model.attention_backend must be one of {ATTENTION_BACKENDS}, got {m.attention_backend!r}")
    elif m.attention_backend == "flash_attn" and importlib.util.find_spec("flash_attn") is None:
        errors.append("model.attention_backend=flash_attn but the flash-attn package is not installed: "
                      "pip install flash-attn (CUDA only), or use model.attention_backend=flash")
    if m.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
        errors.append(f"model.activation_checkpointing must be one of {ACTIVATION_CHECKPOINTING}, "
                      f"got {m.activation_checkpointing!r}")
    for key, value in [("parallel.prefetch_bucket_size", p.prefetch_bucket_size),
                       ("parallel.bucket_size", p.bucket_size)]:
        if value < 0:
            errors.append(f"{key} must be >= 0 (0 = the default for the device), got {value}")
    if p.sub_group_size < 0:
        errors.append(f"parallel.sub_group_size must be >= 0 (0 = the default for the device), got {p.sub_group_size}")
    for key, value in [("parallel.max_live_parameters", p.max_live_parameters),
                       ("parallel.max_reuse_distance", p.max_reuse_distance)]:
        if value <= 0:
            errors.append(f"{key} must be positive, got {value}")
    return errors


def objective_errors(cfg: Config) -> list[str]:
    """train.objective and its sections mlm / distill (issue 16)."""
    m, o, mlm, kd = cfg.model, cfg.train.objective, cfg.mlm, cfg.distill
    if o not in OBJECTIVES:
        return [f"train.objective must be one of {OBJECTIVES}, got {o!r}"]
    errors = []
    if not 0 < mlm.probability < 1:
        errors.append(f"mlm.probability must be in (0, 1), got {mlm.probability}")
    if mlm.mask_ratio < 0 or mlm.random_ratio < 0 or mlm.mask_ratio + mlm.random_ratio > 1:
        errors.append(f"mlm.mask_ratio ({mlm.mask_ratio}) and mlm.random_ratio ({mlm.random_ratio}) must be >= 0 "
                      "with a sum <= 1 (the rest of the chosen tokens stay unchanged)")
    if o == "mlm":
        if m.num_kv_heads != m.num_heads:
            errors.append(f"train.objective=mlm: model.num_kv_heads ({m.num_kv_heads}) must equal model.num_heads "
                          f"({m.num_heads}): the encoder (ModernBERT) has no grouped-query attention")
        if not m.tie_embeddings:
            errors.append("train.objective=mlm: model.tie_embeddings must be true (ModernBERT ties its decoder "
                          "to the token embedding)")
        if getattr(cfg.parallel, "sequence_parallel", False):
            errors.append("train.objective=mlm does not support parallel.sequence_parallel: set it to false")
    if not 0 <= kd.alpha <= 1:
        errors.append(f"distill.alpha must be in [0, 1], got {kd.alpha}")
    if not kd.temperature > 0:
        errors.append(f"distill.temperature must be positive, got {kd.temperature}")
    if o == "distill" and not kd.teacher:
        errors.append("train.objective=distill needs distill.teacher: a bigtrain run dir or checkpoint, or a "
                      "Hugging Face causal-LM folder")
    return errors
