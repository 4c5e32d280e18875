"""bigtrain: pretrain Llama-style models with DeepSpeed ZeRO-3 + megatron-core tensor parallelism."""

import warnings as _warnings

__version__ = "0.1.0"

# Process-wide warning filters, scoped to the warnings megatron-core's own modules raise (docs/patches.md):
# - at import, that the GPU-only Transformer Engine / Apex fused kernels are absent (torch's are used);
# - on the first tensor-parallel linear at TP > 1: bigtrain *does* use megatron's async input-gradient
#   all-reduce (allreduce_dgrad, overlapped with the weight-gradient GEMM), and megatron recommends
#   CUDA_DEVICE_MAX_CONNECTIONS=1 so a GPU runs the two in that order. The variable matters on GPUs only
#   and belongs in the launcher's environment (it must be set before CUDA initialises).
_warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed",
                         module="megatron")  # megatron.*, megatron_fsdp.*
_warnings.filterwarnings("ignore", message=".*CUDA_DEVICE_MAX_CONNECTIONS.*", module=r"megatron\.core\.tensor_parallel\.")
