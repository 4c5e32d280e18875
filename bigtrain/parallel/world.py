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


def init_world(tensor_parallel: int, backend: str = "auto", timeout_min: int = 30) -> World:
    """Initialise torch.distributed (through DeepSpeed) and megatron's TP/DP groups."""
    from megatron.core import parallel_state

    from bigtrain.parallel.dsenv import import_deepspeed

    launch = launch_env()
    standalone = is_standalone(launch)
    env = [("RANK", launch.rank), ("WORLD_SIZE", launch.world_size), ("LOCAL_RANK", launch.local_rank)]
    if not standalone:
        env += [("MASTER_ADDR", launch.master_addr), ("MASTER_PORT", launch.master_port)]
    for key, value in env:
        os.environ[key] = str(value)
    backend = pick_backend(backend)
    if backend == "nccl":
        torch.cuda.set_device(launch.local_rank)
        device = torch.device("cuda", launch.local_rank)
    else:
        device = torch.device("cpu")
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
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel)
    return World(
        rank=launch.rank, world_size=launch.world_size, local_rank=launch.local_rank,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        device=device, backend=backend)


def destroy_world() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
