"""bigtrain: pretrain Llama-style models with DeepSpeed ZeRO-3 + megatron-core tensor parallelism."""

__version__ = "0.1.0"
