"""ZeRO-3 collective traffic of one training step, as DeepSpeed's comms logger records it (docs/scaling.md).

    torchrun --nproc_per_node 2 tests/comm_volume_runs.py OUT.json SHARD_DIR key=value ...

Builds the tiny model of tests/fastpath_runs.py with the real ``build_engine`` and the comms logger
on (``comms_logger`` in the DeepSpeed config), trains one step unlogged (DeepSpeed traces the module
order in it), then one logged step. Rank 0 writes {"params": N, "ops": {op: {"calls": n, "bytes": b}}}:
``bytes`` sums DeepSpeed's message size (the tensor each rank sends) over the calls of that op.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from fastpath_runs import BASE

from bigtrain.config.load import load_config
from bigtrain.data.loader import StreamSpec, TrainLoader
from bigtrain.data.sources import load_sources
from bigtrain.parallel.engine import build_engine, release_engine
from bigtrain.parallel.world import destroy_world, init_world
from bigtrain.train.step import train_step


def main(out: Path, shards: Path, overrides: list[str]) -> None:
    ds_json = Path(tempfile.mkdtemp()) / "comms.json"
    ds_json.write_text(json.dumps({"comms_logger": {"enabled": True, "prof_all": True, "verbose": False}}))
    cfg = load_config(None, [*BASE, "train.global_batch_size=2", "train.micro_batch_size=1",
                             f"parallel.ds_config={ds_json}", *overrides])
    world = init_world(cfg.parallel.tensor_parallel, "auto")
    try:
        from deepspeed.comm import comms_logger

        engine, _ = build_engine(cfg, world, cfg.model.vocab_size)
        t = cfg.train
        spec = StreamSpec(t.global_batch_size, t.micro_batch_size, world.dp_rank, world.dp_size, t.seed)
        batches = TrainLoader(load_sources([(str(shards), 1.0, "")], "data.path"), spec, device=world.device)
        train_step(engine, batches, 1, world.device)
        comms_logger.comms_dict.clear()
        train_step(engine, batches, 1, world.device)
        ops = {name: {"calls": sum(v[0] for v in sizes.values()), "bytes": sum(size * v[0] for size, v in sizes.items())}
               for name, sizes in comms_logger.comms_dict.items()}
        params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in engine.module.parameters())
        if world.is_main:
            out.write_text(json.dumps({"params": params, "dp": world.dp_size, "ops": ops}, indent=1))
        release_engine(engine)
    finally:
        destroy_world()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
