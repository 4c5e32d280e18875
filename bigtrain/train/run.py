"""Compose a pretraining run: data -> world -> engine -> resume -> loader -> loop.

Everything that can be checked without a process group (config, data, the existing run
directory) is checked first, so a bad run fails in seconds with a message naming the problem.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from bigtrain.checkpoint.manager import CHECKPOINT_DIR, Checkpointer, latest_checkpoint, read_meta, resolve_checkpoint
from bigtrain.checkpoint.reshard import restore
from bigtrain.config.arithmetic import padded_vocab_size
from bigtrain.config.load import ConfigError, dump_yaml, to_dict
from bigtrain.config.schema import MODEL_EXECUTION_KEYS, Config
from bigtrain.config.validate import resolve_precision, validate
from bigtrain.data.errors import DataStop
from bigtrain.data.loader import StreamSpec, TrainLoader, state_problems
from bigtrain.data.manifest import Manifest
from bigtrain.data.sources import Source, check_mixture, load_sources
from bigtrain.data.text_tokenizer import folder_sha256
from bigtrain.parallel.world import World, destroy_world, init_world, launch_env
from bigtrain.train import inject
from bigtrain.train.checkpointing import CheckpointCallback
from bigtrain.train.data_metrics import DataMetrics
from bigtrain.train.evaluation import EvalCallback
from bigtrain.train.faults import HealthCallback, NonFiniteGuard
from bigtrain.train.loop import Trainer, TrainState
from bigtrain.train.metrics import MetricsLogger, agreed_peak
from bigtrain.train.objectives import build_objective, check_objective
from bigtrain.train.signals import SignalStop
from bigtrain.train.stop_at import StopAt
from bigtrain.train.sinks import build_sinks
from bigtrain.train.watchdog import Watchdog


def resolve_data(cfg: Config) -> tuple[Config, list[Source]]:
    """Find (or build, for the embedded default) the shards; fill data.path/sources and model.vocab_size."""
    if cfg.data.sources:
        entries = [(s.path, s.weight, s.name) for s in cfg.data.sources]
    elif cfg.data.path:
        entries = [(cfg.data.path, 1.0, "")]
    else:
        from bigtrain.data.embedded import ensure_embedded_dataset

        entries = [(str(ensure_embedded_dataset(seq_len=cfg.model.seq_len)), 1.0, "")]
    sources = load_sources(entries, "data.sources" if cfg.data.sources else "data.path", cfg.data.cache_dir,
                           cfg.data.cache_bytes)
    check_mixture(sources, cfg.data.mix_block_size)
    shard_dir, manifest = sources[0].path, sources[0].manifest
    if manifest.seq_len != cfg.model.seq_len:
        raise ConfigError(f"model.seq_len={cfg.model.seq_len} but the shards in {shard_dir} hold sequences of "
                          f"{manifest.seq_len} tokens: set model.seq_len={manifest.seq_len} or re-shard")
    if cfg.model.vocab_size not in (0, manifest.vocab_size):
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} but the shards in {shard_dir} were "
                          f"tokenized with a vocabulary of {manifest.vocab_size}")
    if cfg.eval.every and not any(s.has_val for s in sources):
        raise ConfigError(f"eval.every={cfg.eval.every} but the shards in {', '.join(str(s.path) for s in sources)} "
                          "have no validation samples: re-shard with --val-fraction > 0 or set eval.every=0")
    model = dataclasses.replace(cfg.model, vocab_size=manifest.vocab_size)
    if cfg.data.sources:
        resolved = [dataclasses.replace(c, path=str(s.path), name=s.name) for c, s in zip(cfg.data.sources, sources)]
        data = dataclasses.replace(cfg.data, sources=resolved)
    else:
        data = dataclasses.replace(cfg.data, path=str(shard_dir))
    return dataclasses.replace(cfg, model=model, data=data), sources


def check_data_resumable(cfg: Config, sources: list[Source]) -> None:
    """The latest checkpoint's data stream must continue with these sources (any number of ranks)."""
    folder = latest_checkpoint(Path(cfg.run.dir) / CHECKPOINT_DIR)
    state = read_meta(folder).get("data") if folder else None
    if not state or "format" not in state:  # no checkpoint, or one from before the loader state existed
        return
    problems = state_problems(state, sources, cfg.train.seed, cfg.data.mix_block_size)
    if problems:
        raise ConfigError(f"{folder} continues a different data stream: {'; '.join(problems)}. Restore those "
                          f"data settings to resume, or use a new run.dir")


def check_resumable(cfg: Config, manifest: Manifest) -> None:
    """A restart (or ``checkpoint.init_from``) must hold the same model, trained with the data's tokenizer.

    A different layout (TP, DP, ZeRO stage, precision) is fine: bigtrain/checkpoint/reshard.py reshards.
    """
    folder = latest_checkpoint(Path(cfg.run.dir) / CHECKPOINT_DIR)
    where = f"run.dir {cfg.run.dir} holds a checkpoint"
    if folder is None and cfg.checkpoint.init_from:
        folder, where = resolve_checkpoint(cfg.checkpoint.init_from), f"checkpoint.init_from={cfg.checkpoint.init_from} is"
    if folder is None:
        return
    meta = read_meta(folder)
    encoder = {"mlm": "masked-LM encoder"}
    theirs, ours_objective = meta.get("objective", "clm"), cfg.train.objective
    if encoder.get(theirs, "causal LM") != encoder.get(ours_objective, "causal LM"):
        raise ConfigError(f"{where} of a train.objective={theirs} model, but this run has train.objective="
                          f"{ours_objective}: a causal LM and a masked-LM encoder do not share weights")
    # execution keys (kernels, checkpointing) change how the model computes, not what: a resume may differ
    other_run = meta.get("weights_only") or folder.parent != Path(cfg.run.dir) / CHECKPOINT_DIR
    ignore = set(MODEL_EXECUTION_KEYS) | ({"seq_len"} if other_run else set())
    ours = to_dict(cfg)["model"]
    diff = {k: (v, meta["model"].get(k)) for k, v in ours.items() if k not in ignore and meta["model"].get(k) != v}
    if diff:
        saved_config = Path(cfg.run.dir) / "config.yaml"
        hint = f"; resume with --config {saved_config}" if saved_config.is_file() else ""
        raise ConfigError(f"{where} of a different model (key: this config vs checkpoint): {diff}{hint}")
    saved = folder_sha256(folder / "tokenizer")
    if saved is not None and saved != manifest.tokenizer.sha256:
        raise ConfigError(f"{folder} was trained with the tokenizer in {folder / 'tokenizer'}, but the shards in "
                          f"{manifest.root} were made with {manifest.tokenizer.path} (different tokenizer "
                          f"sha256): re-shard the data with --tokenizer {folder / 'tokenizer'}")


def describe(trainer: Trainer, loader: TrainLoader) -> dict:
    """meta.json content of a checkpoint (see bigtrain/checkpoint/manager.py); "data" is the loader's state."""
    cfg, world = trainer.cfg, trainer.world
    return {
        "step": trainer.state.step,
        "consumed_samples": trainer.state.consumed_samples,
        "consumed_tokens": trainer.state.consumed_samples * cfg.model.seq_len,
        "tensor_parallel": world.tp_size,
        "data_parallel": world.dp_size,
        "zero_stage": cfg.parallel.zero_stage,
        "precision": cfg.train.precision,
        "vocab_size": cfg.model.vocab_size,
        "padded_vocab_size": padded_vocab_size(cfg.model.vocab_size, cfg.model.vocab_pad_multiple, world.tp_size),
        "model": to_dict(cfg)["model"],
        "objective": cfg.train.objective,
        **trainer.objective.describe(),  # mlm: the masking; distill: the teacher's identity (path, sha256)
        "data": loader.state_dict(),
        "health": trainer.state.health(),
    }


def check_precision_supported(cfg: Config) -> None:
    """fp16 needs an accelerator DeepSpeed supports it on (not a plain CPU): say so before any process group."""
    if cfg.train.precision != "fp16":
        return
    import torch

    if not torch.cuda.is_available():  # DeepSpeed's CPU accelerator may claim fp16 (mkldnn) yet cannot train it
        raise ConfigError("train.precision=fp16 needs CUDA (DeepSpeed's fp16 loss scaling), and this machine has "
                          "none: use train.precision=bf16 or fp32")
    from bigtrain.parallel.dsenv import import_deepspeed

    import_deepspeed()
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if not accelerator.is_fp16_supported():
        raise ConfigError(f"train.precision=fp16: DeepSpeed's {accelerator.device_name()} accelerator does not "
                          "support fp16 on this machine (no CUDA device); use train.precision=bf16 or fp32")


def check_compile_supported(cfg: Config) -> None:
    """train.compile needs a C++ compiler (CPU) or triton (CUDA) on the machine that trains: checked here,
    before any process group, not in config validation (which also runs on login nodes)."""
    if not cfg.train.compile:
        return
    from bigtrain.parallel.optimize import compile_problem

    problem = compile_problem("cuda" if torch.cuda.is_available() else "cpu")
    if problem:
        raise ConfigError(f"train.compile=true: {problem}; or set train.compile=false")


def write_run_dir(run_dir: Path, cfg: Config, sources: list[Source], ds_config: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    (run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2) + "\n")
    tokenizer_dir = sources[0].manifest.tokenizer_dir
    if tokenizer_dir.resolve() != (run_dir / "tokenizer").resolve():  # from-hf runs shard with their own
        shutil.copytree(tokenizer_dir, run_dir / "tokenizer", dirs_exist_ok=True)


def pretrain(cfg: Config, open_teacher=None) -> Trainer:
    """Run (or resume) pretraining as one rank of the job described by the launcher's environment.

    ``open_teacher`` reads a distillation teacher (``train.objective=distill``): the entry points pass
    bigtrain.convert.teacher.open_teacher."""
    import torch

    launch = launch_env()
    cuda = torch.cuda.is_available()
    validate(cfg, launch.world_size, cuda=cuda)
    cfg = resolve_precision(cfg, cuda)  # config.yaml, meta.json and the start line hold bf16/fp32, never auto
    cfg, sources = resolve_data(cfg)
    check_resumable(cfg, sources[0].manifest)
    check_data_resumable(cfg, sources)
    check_precision_supported(cfg)
    check_compile_supported(cfg)
    check_objective(cfg, sources[0].manifest, open_teacher)
    world = init_world(cfg.parallel.tensor_parallel, cfg.parallel.backend, cfg.parallel.timeout_min)
    try:
        return train(cfg, world, sources, open_teacher)
    finally:
        destroy_world()


def build_loader(cfg: Config, world: World, sources: list[Source], meta: dict | None) -> TrainLoader:
    """This rank's loader, resumed from the checkpoint's data state (older checkpoints: consumed_samples)."""
    saved = meta.get("data") if meta else None
    spec = StreamSpec(cfg.train.global_batch_size, cfg.train.micro_batch_size, world.dp_rank, world.dp_size,
                      cfg.train.seed, start_sample=meta["consumed_samples"] if meta else 0,
                      mix_block_size=cfg.data.mix_block_size)
    return TrainLoader(sources, spec, num_workers=cfg.data.num_workers, pin_memory=world.device.type == "cuda",
                       on_corrupt=cfg.data.on_corrupt, verify_checksums=cfg.data.verify_checksums,
                       device=world.device, collective=True, state=saved if saved and "format" in saved else None)


def stop_on_data_error(trainer: Trainer, error: DataStop) -> None:
    """All ranks agreed on a corrupt shard before computing anything of the step: end as on a stop request
    (the callbacks' on_train_end: a checkpoint of the last completed step); the caller re-raises."""
    trainer.stop(f"corrupt training data: {error}", failed=True)
    for cb in trainer.callbacks:
        cb.on_train_end(trainer)


def device_line(world: World, precision: str) -> str:
    """The start line naming the device and the resolved precision (``train.precision=auto`` included)."""
    tf32 = " (TF32 matmuls)" if world.device.type == "cuda" and precision == "fp32" else ""
    return f"training on {world.world_size} x {world.device.type} ({world.backend}), train.precision={precision}{tf32}"


def train(cfg: Config, world: World, sources: list[Source], open_teacher=None) -> Trainer:
    from bigtrain.parallel.engine import build_engine, release_engine

    run_dir = Path(cfg.run.dir)
    engine, ds_config = build_engine(cfg, world, cfg.model.vocab_size)
    if world.is_main:
        write_run_dir(run_dir, cfg, sources, ds_config)
        print(device_line(world, cfg.train.precision), flush=True)
    dist.barrier()
    injector = inject.Injector(world.rank)
    checkpointer = Checkpointer(run_dir, world.is_main, cfg.checkpoint.keep, cfg.checkpoint.keep_every,
                                before_commit=injector.hold_in_save if injector.active else None)
    meta = restore(engine, checkpointer, world, cfg.parallel.zero_stage, cfg.train.precision, cfg.checkpoint.init_from)
    state = TrainState.from_meta(meta) if meta else TrainState()
    if world.is_main and meta:
        rng = "" if meta.get("rng_restored") else f" (RNG states not restored: saved by {meta.get('world_size')} ranks)"
        print(f"resumed from {run_dir / CHECKPOINT_DIR} at step {state.step}{rng}", flush=True)
    loader = build_loader(cfg, world, sources, meta)
    objective = build_objective(cfg, world, sources[0].manifest, open_teacher)
    t = cfg.train
    guard = NonFiniteGuard(engine, world.device, check_grads=t.precision != "fp16", nan_steps=inject.nan_steps(),
                           inject_rank=world.rank == 0)
    callbacks = [
        EvalCallback(sources, cfg.eval.every, cfg.eval.batches, cfg.data.on_corrupt, objective),  # before metrics
        DataMetrics(loader),  # before metrics: logs epoch, samples/<source>, skipped_samples
        HealthCallback(t.max_consecutive_skips, t.spike_threshold),  # before metrics: counters, loss_spike
        MetricsLogger(cfg, agreed_peak(world, t.precision), build_sinks(cfg) if world.is_main else []),
        SignalStop(),
        StopAt(t.stop_at),  # before the checkpoint callback: its on_train_end saves the stopped step
        CheckpointCallback(checkpointer, cfg.checkpoint.every, cfg.checkpoint.save_final,
                           lambda trainer: describe(trainer, loader), dump_yaml(cfg), run_dir / "tokenizer"),
    ]
    if t.watchdog_timeout_s:  # after the checkpoint callback: its on_train_end (the final save) is guarded too
        callbacks.append(Watchdog(t.watchdog_timeout_s, run_dir, world.rank))
    callbacks.append(injector)  # testing aids (inject.py): no-ops unless their environment variables are set
    trainer = Trainer(cfg, world, engine, objective.batches(loader), state, callbacks, guard, objective)
    try:
        trainer.fit()
    except DataStop as error:
        stop_on_data_error(trainer, error)
        raise
    finally:  # the engine and its process groups go before destroy_world, not at interpreter exit
        release_engine(engine)
        trainer.engine = None
    return trainer
