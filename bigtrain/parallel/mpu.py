"""Adapter that lets DeepSpeed use megatron-core's process groups.

DeepSpeed's ``mpu=`` argument calls the legacy Megatron-LM names ``get_model_parallel_*`` besides
``get_{tensor_model,data,pipeline_model}_parallel_*``; megatron-core's ``parallel_state`` only has
the latter. Without pipeline parallelism, "model parallel" is exactly "tensor model parallel".
"""

from __future__ import annotations

from megatron.core import parallel_state


class MegatronMpu:
    def __getattr__(self, name: str):
        return getattr(parallel_state, name)

    def get_model_parallel_rank(self) -> int:
        return parallel_state.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return parallel_state.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self):
        return parallel_state.get_tensor_model_parallel_group()
