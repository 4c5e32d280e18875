"""bigtrain: pretrain Llama-style models with DeepSpeed ZeRO-3 + megatron-core tensor parallelism."""

import warnings as _warnings

__version__ = "0.1.0"

# megatron-core warns at import and on first use about GPU-only extras bigtrain does not use
# (Transformer Engine/Apex fused kernels; CUDA_DEVICE_MAX_CONNECTIONS for its async all-reduce).
_warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
_warnings.filterwarnings("ignore", message=".*CUDA_DEVICE_MAX_CONNECTIONS.*")
