"""Self-describing, atomic checkpoints under ``<run.dir>/checkpoints/``.

Layout::

    checkpoints/
      latest                  -> text: the tag of the newest *complete* checkpoint
      step_00000020/
        meta.json             bigtrain's description (written last: its presence = complete)
        config.yaml           the resolved run config
        tokenizer/            the tokenizer the model was trained with
        mp_rank_*_model_states.pt, zero_pp_rank_*_optim_states.pt   DeepSpeed's files

Saving: every rank writes its DeepSpeed files -> barrier -> rank 0 writes config, tokenizer and
``meta.json`` -> rank 0 atomically replaces ``latest`` -> barrier. A run killed at any point
leaves ``latest`` on the previous complete checkpoint; a folder without ``meta.json`` is ignored.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path

import torch.distributed as dist

from bigtrain.errors import UserError

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
META = "meta.json"
FORMAT = "bigtrain-checkpoint/1"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete or does not match the run."""


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
    def __init__(self, run_dir: Path, is_main: bool):
        self.root = Path(run_dir) / CHECKPOINT_DIR
        self.is_main = is_main

    def save(self, engine, meta: dict, config_yaml: str, tokenizer_dir: Path | None) -> Path:
        """Collective: every rank must call it. ``meta`` must hold ``step``."""
        tag = tag_for(meta["step"])
        folder = self.root / tag
        if self.is_main and folder.exists():  # an incomplete earlier attempt at this step
            shutil.rmtree(folder)
        dist.barrier()
        engine.save_checkpoint(str(self.root), tag=tag, save_latest=False,
                               client_state={"bigtrain_step": meta["step"]})
        dist.barrier()
        if self.is_main:
            (folder / "config.yaml").write_text(config_yaml)
            if tokenizer_dir is not None:
                shutil.copytree(tokenizer_dir, folder / "tokenizer", dirs_exist_ok=True)
            full = {"format": FORMAT, **meta, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "versions": library_versions()}
            write_atomic(folder / META, json.dumps(full, indent=2) + "\n")
            write_atomic(self.root / LATEST, tag + "\n")
        dist.barrier()
        return folder

    def load_latest(self, engine) -> dict | None:
        """Restore engine (model, optimizer, LR schedule) from the latest checkpoint; its meta or None."""
        folder = latest_checkpoint(self.root)
        if folder is None:
            return None
        meta = read_meta(folder)
        path, _ = engine.load_checkpoint(str(self.root), tag=folder.name, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {folder}")
        return meta
