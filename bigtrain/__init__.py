"""bigtrain: pretrain Llama-style models with DeepSpeed ZeRO-3 + megatron-core tensor parallelism."""

import warnings as _warnings

__version__ = "0.1.0"

# megatron-core warns at import (4x) that the GPU-only Transformer Engine / Apex fused kernels are absent
# (torch's are used): filtered for warnings raised by megatron's modules only (docs/patches.md). Its
# CUDA_DEVICE_MAX_CONNECTIONS warning is not hidden: init_world sets the variable for TP > 1.
_warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed",
                         module="megatron")  # megatron.*, megatron_fsdp.*
