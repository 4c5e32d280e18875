"""Self-describing, atomic checkpoints under ``<run.dir>/checkpoints/``.

Layout::

    checkpoints/
      latest                  -> text: the tag of the newest *complete* checkpoint
      step_00000020/
        meta.json             bigtrain's description (written last: its presence = complete)
        config.yaml           the resolved run config
        tokenizer/            the tokenizer the model was trained with
        rng_rank_00000.safetensors ...   every rank's RNG states (safetensors + JSON, no pickle)
        mp_rank_*_model_states.pt, zero_pp_rank_*_optim_states.pt   DeepSpeed's files

Saving: every rank writes its DeepSpeed files and its RNG file -> barrier -> rank 0 writes config,
tokenizer and ``meta.json`` -> rank 0 atomically replaces ``latest`` -> rank 0 applies retention
(``checkpoint.keep`` / ``keep_every``, see retention.py) -> barrier. A run killed at any point
leaves ``latest`` on the previous complete checkpoint; a folder without ``meta.json`` is ignored
and deleted by the next successful save.

Loading reads DeepSpeed's files with ``weights_only=True`` and an explicit class allowlist
(safe_load.py), then restores this rank's RNG states.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch.distributed as dist

from bigtrain.checkpoint.errors import CheckpointError
from bigtrain.checkpoint.retention import apply_retention
from bigtrain.checkpoint.rng import RNG_PATTERN, load_rng, save_rng
from bigtrain.checkpoint.safe_load import weights_only_loading

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
META = "meta.json"
FORMAT = "bigtrain-checkpoint/1"
# DeepSpeed copies its consolidation scripts next to every save; they expect one model-parallel rank
# ("Expected 2 ... found 4 files" at TP>1), so bigtrain removes them (use `bigtrain convert to-hf`)
DEEPSPEED_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")

__all__ = ["CheckpointError", "Checkpointer", "latest_checkpoint", "read_meta", "resolve_checkpoint"]


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "deepspeed", "megatron-core", "transformers", "webdataset", "bigtrain"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint folder under ``root`` (a checkpoints/ dir), or None."""
    pointer = root / LATEST
    if not pointer.exists():
        return None
    folder = root / pointer.read_text().strip()
    if not (folder / META).exists():
        raise CheckpointError(f"{pointer} names {folder.name}, which has no {META}: the checkpoint is incomplete")
    return folder


def resolve_checkpoint(path: str | Path) -> Path:
    """A run dir, a checkpoints/ dir or a checkpoint folder -> the checkpoint folder (with meta.json)."""
    path = Path(path)
    if (path / META).exists():
        return path
    for root in (path / CHECKPOINT_DIR, path):
        if (root / LATEST).exists():
            return latest_checkpoint(root)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    raise CheckpointError(f"{path} is not a bigtrain run or checkpoint: expected {META}, or "
                          f"{CHECKPOINT_DIR}/{LATEST} pointing at a complete checkpoint")


def read_meta(folder: Path) -> dict:
    meta = json.loads((folder / META).read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / META}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


class Checkpointer:
    def __init__(self, run_dir: Path, is_main: bool, keep: int = 0, keep_every: int = 0,
                 before_commit: Callable[[int], None] | None = None):
        self.root = Path(run_dir) / CHECKPOINT_DIR
        self.is_main = is_main
        self.keep, self.keep_every = keep, keep_every
        self.before_commit = before_commit  # called on every rank once its files are written (testing aid)

    def save(self, engine, meta: dict, config_yaml: str, tokenizer_dir: Path | None) -> Path:
        """Collective: every rank must call it. ``meta`` must hold ``step``."""
        tag = tag_for(meta["step"])
        folder = self.root / tag
        if self.is_main and folder.exists():  # an incomplete earlier attempt at this step
            shutil.rmtree(folder)
        dist.barrier()
        engine.save_checkpoint(str(self.root), tag=tag, save_latest=False,
                               client_state={"bigtrain_step": meta["step"]})
        save_rng(folder, dist.get_rank())
        if self.before_commit is not None:
            self.before_commit(meta["step"])
        dist.barrier()
        if self.is_main:
            self.commit(folder, meta, config_yaml, tokenizer_dir)
        dist.barrier()
        return folder

    def commit(self, folder: Path, meta: dict, config_yaml: str, tokenizer_dir: Path | None) -> None:
        """Rank 0, after every rank wrote: describe, mark complete, point ``latest`` at it, retire old ones."""
        (folder / "config.yaml").write_text(config_yaml)
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, folder / "tokenizer", dirs_exist_ok=True)
        full = {"format": FORMAT, **meta, "world_size": dist.get_world_size(), "rng": RNG_PATTERN,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": library_versions()}
        write_atomic(folder / META, json.dumps(full, indent=2) + "\n")
        write_atomic(self.root / LATEST, folder.name + "\n")
        apply_retention(self.root, meta["step"], self.keep, self.keep_every, META)
        for script in DEEPSPEED_SCRIPTS:  # they cannot read bigtrain's TP>1 checkpoints: `bigtrain convert` can
            (self.root / script).unlink(missing_ok=True)

    def load_latest(self, engine) -> dict | None:
        """Restore engine (model, optimizer, LR schedule) and this rank's RNG from the latest checkpoint.

        Returns its meta, or None when there is none. RNG states are restored when the checkpoint
        was saved by the same number of ranks (else ``meta["rng_restored"]`` is False).
        """
        folder = latest_checkpoint(self.root)
        if folder is None:
            return None
        meta = read_meta(folder)
        with weights_only_loading(engine):
            path, _ = engine.load_checkpoint(str(self.root), tag=folder.name, load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {folder}")
        meta["rng_restored"] = "rng" in meta and meta.get("world_size") == dist.get_world_size()
        if meta["rng_restored"]:
            load_rng(folder, dist.get_rank())
        return meta
