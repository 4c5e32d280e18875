"""Model code: plain modules, parallelism enters only through megatron's layer config."""

from bigtrain.config.arithmetic import padded_vocab_size
from bigtrain.model.llama import LlamaModel

__all__ = ["LlamaModel", "padded_vocab_size"]
