"""bigtrain: pretrain Llama-style models with DeepSpeed ZeRO-3 + megatron-core tensor parallelism."""

import warnings as _warnings

__version__ = "0.1.0"

# megatron-core warns at import about GPU-only extras bigtrain does not use (Transformer Engine/Apex
# fused kernels). Its CUDA_DEVICE_MAX_CONNECTIONS warning is not hidden: init_world sets it for TP > 1.
_warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
