"""Model code: plain modules, parallelism enters only through megatron's layer config."""

from bigtrain.model.llama import LlamaModel, padded_vocab_size

__all__ = ["LlamaModel", "padded_vocab_size"]
