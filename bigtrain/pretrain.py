"""Pretrain a Llama-style model with DeepSpeed ZeRO + megatron-core tensor parallelism.

Usage (one process per GPU; on a CPU-only machine the ranks use gloo automatically):

    deepspeed --num_gpus 2 bigtrain/pretrain.py                       # debug recipe, embedded corpus
    deepspeed --num_gpus 8 bigtrain/pretrain.py --config debug parallel.tensor_parallel=2 train.steps=100
    torchrun --nproc_per_node 4 bigtrain/pretrain.py --config my_recipe.yaml run.dir=runs/exp1
    bigtrain pretrain --config debug                                  # same, as one process

``--config`` takes a recipe name (``bigtrain config recipes`` lists them) or a YAML path (default:
``<run.dir>/config.yaml`` when ``run.dir=...`` names a run that has one, else ``debug``); every
further ``key=value`` overrides a dotted config key (``bigtrain config keys`` lists them). With no
``--config`` the debug recipe runs on the embedded default corpus (Python's own docstrings), which is
tokenized and sharded into ``~/.cache/bigtrain`` on first use. Restarting the same command on the
same ``run.dir`` resumes from its latest complete checkpoint.

Exit status: 0 done; 2 bad config/data/checkpoint (one ``error:`` line); 3 stopped after
``train.max_consecutive_skips`` non-finite steps in a row (a checkpoint of the last good weights was
saved); 4 the hang watchdog fired (``train.watchdog_timeout_s``; stacks in ``<run.dir>/hangs/``);
75 stopped by SIGTERM, SIGUSR1 or SIGUSR2 after saving a checkpoint: requeue the job and it resumes
(slurm/pretrain.sh and bigtrain submit do).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (deepspeed/torchrun): import bigtrain from the repo
    sys.path[0] = str(Path(__file__).resolve().parents[1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pretrain.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="recipe name or YAML path (default: the config.yaml of the "
                        "run named by run.dir=..., if it has one, e.g. after `bigtrain convert from-hf`; else debug)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def default_config(overrides: list[str]) -> str:
    """``<run.dir>/config.yaml`` when the overrides name a run directory that has one, else "debug"."""
    dirs = [o.split("=", 1)[1] for o in overrides if o.removeprefix("--").startswith("run.dir=")]
    saved = Path(dirs[-1]) / "config.yaml" if dirs else None
    return str(saved) if saved is not None and saved.is_file() else "debug"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.config = args.config or default_config(args.overrides)
    from bigtrain.config.load import load_config
    from bigtrain.errors import UserError

    try:
        cfg = load_config(args.config, args.overrides)
        from bigtrain.convert.teacher import open_teacher
        from bigtrain.train.run import pretrain

        trainer = pretrain(cfg, open_teacher)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if trainer.failed:
        from bigtrain.train.faults import DIVERGED_EXIT_CODE

        if trainer.world.is_main:
            print(f"error: {trainer.stop_reason}", file=sys.stderr, flush=True)
        return DIVERGED_EXIT_CODE
    if trainer.requeue:
        from bigtrain.train.signals import REQUEUE_EXIT_CODE

        return REQUEUE_EXIT_CODE
    return 0


if __name__ == "__main__":
    status = main()
    from bigtrain.train.signals import ignore_stop_signals

    ignore_stop_signals()  # the work is saved: a launcher's late SIGTERM must not replace this rank's status
    sys.exit(status)
