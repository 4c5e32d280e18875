"""Where metric rows go besides ``metrics.jsonl``: TensorBoard and (optional) Weights & Biases.

Both receive the numeric values of each row: validation values (``val_*``) under ``val/``,
everything else under ``train/``. Rank 0 only.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from bigtrain.config.load import to_dict
from bigtrain.config.schema import Config


def scalars(row: dict) -> dict[str, float]:
    """Numeric row values keyed ``train/<key>`` or ``val/<key without val_>``; bools as 0/1."""
    out = {}
    for key, value in row.items():
        if key == "step" or value is None or isinstance(value, str):
            continue
        name = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
        out[name] = float(value)
    return out


class TensorBoardSink:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "tensorboard"
        self.writer = None

    def open(self, resumed_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events after the resumed step (from a run that died) are dropped on load
        self.writer = SummaryWriter(str(self.dir), purge_step=resumed_step + 1)

    def log(self, row: dict, step: int) -> None:
        for name, value in scalars(row).items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


class WandbSink:
    """One W&B run per bigtrain run: its id is kept in ``<run.dir>/wandb_id`` so a restart resumes it."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.run = None

    def open(self, resumed_step: int) -> None:
        import wandb

        run_dir = Path(self.cfg.run.dir)
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]  # W&B ids: [a-z0-9]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=self.cfg.log.wandb_project, entity=self.cfg.log.wandb_entity or None,
                              name=self.cfg.run.name or run_dir.name, dir=str(run_dir), id=run_id,
                              resume="allow", config=to_dict(self.cfg))

    def log(self, row: dict, step: int) -> None:
        # commit: a row is complete when logged; uncommitted it would wait for the next step (lost on a kill)
        self.run.log(scalars(row), step=step, commit=True)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


def build_sinks(cfg: Config) -> list:
    sinks: list = []
    if cfg.log.tensorboard:
        sinks.append(TensorBoardSink(Path(cfg.run.dir)))
    if cfg.log.wandb:
        sinks.append(WandbSink(cfg))
    return sinks
