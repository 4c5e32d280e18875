"""Build the parallel world in one fixed order: launcher env -> torch.distributed -> megatron groups.

Rank layout (megatron-core's): tensor-parallel ranks are adjacent, so with G GPUs per node and
TP <= G every TP group stays inside a node; data-parallel groups stride across nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    tp_rank: int
    tp_size: int
    dp_rank: int
    dp_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env() -> LaunchEnv:
    """Ranks from torchrun/deepspeed (RANK...), from srun (SLURM_PROCID...), or a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    else:
        rank, world, local = 0, 1, 0
    if world > 1 and "MASTER_ADDR" not in env and "SLURM_JOB_NODELIST" in env:
        from bigtrain.parallel.rendezvous import slurm_master  # plain `srun python ...`: first node, port from job id

        addr, port = slurm_master(env)
    else:
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        port = int(env.get("MASTER_PORT", 29500))
    return LaunchEnv(rank, world, local, addr, port)


def is_standalone(launch: LaunchEnv) -> bool:
    """One process started without a launcher: it needs no TCP rendezvous (and no port to race for)."""
    return launch.world_size == 1 and "MASTER_PORT" not in os.environ


def pick_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() else "gloo"


def cuda_device_index(local_rank: int, device_count: int, visible: str | None = None,
                      local_world_size: int | None = None) -> int:
    """The CUDA device of this rank, from its launcher's LOCAL_RANK and the devices this process sees.

    ``srun --gpus-per-task=1`` (or ``--gpu-bind``) shows each task only its own GPU: index 0, whatever
    its LOCAL_RANK. torchrun/deepspeed and ``srun --gpus-per-node`` show every GPU of the node: index
    LOCAL_RANK. ``visible`` is CUDA_VISIBLE_DEVICES and ``local_world_size`` the ranks on this host
    (if known), only to name the problem when neither rule fits.
    """
    where = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    if device_count < 1:
        raise RuntimeError(f"no CUDA device visible to this process ({where})")
    if device_count == 1 and (local_world_size or 1) > 1 and visible is None:
        raise RuntimeError(f"{local_world_size} ranks on this host share its only CUDA device: start one rank "
                           "per GPU (or give each task its own GPU: srun --gpus-per-task=1)")
    if device_count == 1:
        return 0
    if local_rank < device_count:
        return local_rank
    raise RuntimeError(f"LOCAL_RANK={local_rank} but this process sees {device_count} CUDA devices ({where}): "
                       "start at most one rank per visible GPU")


def local_world_size(env=os.environ) -> int | None:
    """Ranks on this host, as the launcher tells it (torchrun/deepspeed, or srun), else None."""
    value = env.get("LOCAL_WORLD_SIZE") or env.get("SLURM_NTASKS_PER_NODE", "")
    return int(value) if value.isdigit() else None


def init_world(tensor_parallel: int, backend: str = "auto", timeout_min: int = 30) -> World:
    """Initialise torch.distributed (through DeepSpeed) and megatron's TP/DP groups.

    On CUDA, LOCAL_RANK in the environment becomes this rank's device index (:func:`cuda_device_index`):
    DeepSpeed's engine, ``zero.Init`` and ``init_process_group(device_id=...)`` all read it as one.

    With TP > 1, ``CUDA_DEVICE_MAX_CONNECTIONS=1`` (unless the launcher set it): megatron's
    ColumnParallelLinear backward starts the TP all-reduce of the input gradient asynchronously and
    then computes the weight gradient, relying on one hardware queue so the all-reduce is scheduled
    first and overlaps the GEMM (megatron/core/tensor_parallel/layers.py). The driver reads it when
    the CUDA context is created, which no bigtrain code does before this point. Not set for TP = 1:
    it would funnel DeepSpeed's separate communication streams into one queue.
    """
    from megatron.core import parallel_state

    from bigtrain.parallel.dsenv import import_deepspeed

    launch = launch_env()
    if tensor_parallel > 1:
        os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")  # before any CUDA context: see below
    standalone = is_standalone(launch)
    env = [("RANK", launch.rank), ("WORLD_SIZE", launch.world_size), ("LOCAL_RANK", launch.local_rank)]
    if not standalone:
        env += [("MASTER_ADDR", launch.master_addr), ("MASTER_PORT", launch.master_port)]
    backend = pick_backend(backend)
    device = torch.device("cpu")
    if backend == "nccl":
        index = cuda_device_index(launch.local_rank, torch.cuda.device_count(),
                                  os.environ.get("CUDA_VISIBLE_DEVICES"), local_world_size())
        env[2] = ("LOCAL_RANK", index)
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    for key, value in env:  # what torch.distributed's env:// rendezvous reads; undone by destroy_world
        _saved_env.setdefault(key, os.environ.get(key))
        os.environ[key] = str(value)
    deepspeed = import_deepspeed()
    timeout = timedelta(minutes=timeout_min)
    if standalone and not torch.distributed.is_initialized():
        # An in-memory store: a single process never opens a port. DeepSpeed adopts the group below.
        torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1,
                                             timeout=timeout)
    if not torch.distributed.is_initialized() or not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                   timeout=timeout, rank=launch.rank,
                                   world_size=launch.world_size)
    if not parallel_state.model_parallel_is_initialized():
        # no gloo twins of every group: bigtrain never uses them, and on a multi-node job they are one more
        # rendezvous over whatever interface gloo picks (a classic hang when that is the wrong one)
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel,
                                                 create_gloo_process_groups=False)
    return World(
        rank=launch.rank, world_size=launch.world_size, local_rank=launch.local_rank,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        device=device, backend=backend)


def destroy_world() -> None:
    """Free every process group now, while the interpreter is whole (the callers released their engine first).

    Why (the rare SIGABRT "terminate called without an active exception" at exit, after training had
    finished): ``destroy_process_group`` only unregisters groups; each gloo group (2 worker threads + a TCP
    loop thread) lives on as long as a Python object references it. Megatron's ``destroy_model_parallel``
    forgets two of its groups, and a ZeRO-3 model kept alive by DeepSpeed (``engine.release_engine``) holds
    others, so they were destroyed during interpreter finalization, in an order that differs between ranks,
    while peers were tearing down the other ends of their connections -- the teardown torch's own
    ``destroy_process_group`` comment calls unsafe once the interpreter is finalizing.
    """
    import gc

    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    for name in MEGATRON_GROUPS_LEFT_BY_DESTROY:  # megatron-core 0.16 leaves these set (docs/patches.md)
        setattr(parallel_state, name, None)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    gc.collect()  # the groups' last references are in reference cycles (hooks, closures)
    for key, value in _saved_env.items():  # the environment as init_world found it
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _saved_env.clear()


_saved_env: dict[str, str | None] = {}
MEGATRON_GROUPS_LEFT_BY_DESTROY = ("_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP",
                                   "_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP_GLOO")
