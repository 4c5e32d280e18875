"""What the libraries do, with and without bigtrain's patches (docs/patches.md), printed as JSON.

    python tests/patch_probe.py bare OUT.json      # the libraries alone: is each patch still needed?
    python tests/patch_probe.py bigtrain OUT.json  # through bigtrain: does each patch still work?

Run by tests/test_patches.py in fresh processes, since most patches act at import or on process state.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch


def warned(fn, pattern: str) -> list[str]:
    """Messages (with the module they are attributed to) of warnings matching ``pattern`` that ``fn`` shows
    under the filters in force (the test prepends `-W always`, so only bigtrain's filters can hide one)."""
    import re

    shown = []
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if re.search(pattern, str(message)):
            shown.append(f"{category.__name__}: {message} [{filename}]")

    warnings.showwarning = record
    try:
        fn()
    finally:
        warnings.showwarning = original
    return shown


def megatron_warnings() -> dict:
    def import_megatron():
        import megatron.core.optimizer  # noqa: F401
        import megatron.core.tensor_parallel  # noqa: F401

    def tp_linear():
        from megatron.core.tensor_parallel.layers import linear_with_grad_accumulation_and_async_allreduce as linear

        linear.warned = False
        linear(torch.ones(2, 4), torch.ones(3, 4), None, gradient_accumulation_fusion=False, allreduce_dgrad=True,
               sequence_parallel=False)  # what ColumnParallelLinear does at TP > 1

    os.environ.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    return {"te_apex": warned(import_megatron, "Transformer Engine and Apex are not installed"),
            "max_connections": warned(tp_linear, "CUDA_DEVICE_MAX_CONNECTIONS")}


def deepspeed_bare() -> dict:
    os.environ.pop("DS_ACCELERATOR", None)
    os.environ.pop("LOCAL_SIZE", None)
    import deepspeed.ops
    import deepspeed.utils.numa as numa
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()  # logs "Setting accelerator to CPU ..." when it has to guess
    calls = []
    original = numa.get_numa_cores
    numa.get_numa_cores = lambda: calls.append(1) or original()  # a `numactl --hardware` subprocess
    accelerator.device_count()
    numa.get_numa_cores = original
    return {"accelerator": accelerator._name, "shm_compatible": deepspeed.ops.__compatible_ops__.get("deepspeed_shm_comm"),
            "numa_probes_per_device_count": len(calls)}


def deepspeed_through_bigtrain(out_dir: Path) -> dict:
    import importlib

    from bigtrain.parallel.dsenv import import_deepspeed
    from bigtrain.parallel.world import destroy_world, init_world

    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env_before = {k: os.environ.get(k) for k in keys}
    deepspeed = import_deepspeed()
    from deepspeed.accelerator import get_accelerator

    ds_torch = importlib.import_module("deepspeed.comm.torch")  # (deepspeed.comm.torch the attribute is torch)

    result = {"accelerator": get_accelerator()._name, "local_size": os.environ.get("LOCAL_SIZE"),
              "shm_op": repr(ds_torch.build_shm_op())}
    init_world(1, "gloo")
    result["env_during"] = {k: os.environ.get(k) for k in keys}

    def gather():
        out = torch.empty(4)
        deepspeed.comm.all_gather_into_tensor(out, torch.ones(4))

    result["future_warnings"] = warned(gather, ".")
    result["resume_refused"] = resume_with_a_foreign_object(out_dir)
    result["deepspeed_keeps_the_model"] = zero3_step_and_release()
    destroy_world()
    result["gloo_threads_after_destroy_world"] = gloo_threads()
    result["env_after_matches"] = {k: os.environ.get(k) for k in keys} == env_before
    return result


def tiny_config(*extra: str):
    from bigtrain.config.load import load_config

    return load_config(None, ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=2",
                              "model.ffn_hidden_size=64", "model.seq_len=16", "model.vocab_size=64",
                              "train.global_batch_size=1", "train.micro_batch_size=1", *extra])


def zero3_step_and_release() -> bool:
    """One ZeRO-3 step, then release_engine: -> whether DeepSpeed still held the model (the leak it patches)."""
    from deepspeed.runtime.zero import parameter_offload

    from bigtrain.parallel.engine import build_engine, release_engine
    from bigtrain.parallel.world import init_world

    engine, _ = build_engine(tiny_config("parallel.zero_stage=3"), init_world(1, "gloo"), 64)
    tokens = torch.randint(0, 64, (1, 17))
    engine.backward(engine(tokens[:, :-1], tokens[:, 1:]).mean())
    engine.step()
    kept = any(m is engine.module for m in parameter_offload.FWD_MODULE_STACK)
    release_engine(engine)
    return kept


def gloo_threads() -> list[str]:
    """Native threads of gloo process groups still alive in this process (pt_gloo_runloop, gloo_tcp_loop)."""
    import gc

    gc.collect()
    tasks = Path(f"/proc/{os.getpid()}/task")
    return [n for n in ((t / "comm").read_text().strip() for t in tasks.iterdir()) if "gloo" in n]


class Payload:
    def __reduce__(self):
        return (print, ("payload executed",))


def resume_with_a_foreign_object(out_dir: Path) -> str:
    """A real engine's load_checkpoint, inside weights_only_loading, of a file carrying a foreign object."""
    from bigtrain.checkpoint.errors import CheckpointError
    from bigtrain.checkpoint.safe_load import weights_only_loading
    from bigtrain.parallel.engine import build_engine, release_engine
    from bigtrain.parallel.world import init_world

    engine, _ = build_engine(tiny_config("parallel.zero_stage=0"), init_world(1, "gloo"), 64)
    engine.save_checkpoint(str(out_dir), tag="t")
    path = out_dir / "t" / "mp_rank_00_model_states.pt"
    state = torch.load(path, weights_only=False)
    state["payload"] = Payload()
    torch.save(state, path)
    try:
        with weights_only_loading(engine):
            engine.load_checkpoint(str(out_dir), tag="t")
    except CheckpointError as exc:
        return str(exc)
    finally:
        release_engine(engine)
    return "loaded"


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "bigtrain":
        import bigtrain  # noqa: F401  (its warning filters)

        result = {**megatron_warnings(), **deepspeed_through_bigtrain(out.parent)}
    else:
        result = {**megatron_warnings(), **deepspeed_bare()}
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
