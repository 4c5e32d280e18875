"""Named model sizes for ``bigtrain bench``: the shipped recipes' shapes (one source of truth).

A size is a recipe's ``model`` section (bigtrain/config/recipes/llama-*.yaml): ``--size llama-7b`` or the
short names ``125m``, ``350m``, ``1.3b``, ``7b`` (llama-125m, llama-350m, llama-1.3b, llama-7b). Two sizes
exist only for benchmarking: ``20m``, the CPU size (the embedded corpus' 4096-token vocabulary, sequences
of 256), and ``7b-<k>l``, the 7B recipe's width with only k layers: the per-layer work of a 7B model on
one GPU.

``micro_batch`` is the default when neither ``train.micro_batch_size=`` nor ``bigtrain plan`` choose
one (bench/config.py): the recipe's own micro batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bigtrain.config.load import load_config, recipe_names
from bigtrain.config.schema import ModelConfig
from bigtrain.errors import UserError

SHAPE_KEYS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size", "rope_theta",
              "tie_embeddings", "seq_len", "vocab_size", "vocab_pad_multiple", "norm_eps", "init_std")
SHORT_NAMES = {"125m": "llama-125m", "350m": "llama-350m", "1.3b": "llama-1.3b", "7b": "llama-7b"}
FEW_LAYERS = re.compile(r"^7b-(\d+)l$")


@dataclass(frozen=True)
class Size:
    model: dict  # ModelConfig keys that define the shape
    micro_batch: int  # per device, when nothing else chooses it

    def model_overrides(self) -> list[str]:
        return [f"model.{key}={str(value).lower() if isinstance(value, bool) else value}"
                for key, value in self.model.items()]

    @property
    def layers(self) -> int:
        return self.model["num_layers"]

    @property
    def hidden(self) -> int:
        return self.model["hidden_size"]


CPU_20M = Size({"hidden_size": 512, "num_layers": 6, "num_heads": 8, "num_kv_heads": 4, "ffn_hidden_size": 1408,
                "seq_len": 256, "tie_embeddings": True, "vocab_size": 4096}, 4)  # 19.9M, grouped-query attention


def recipe_size(recipe: str) -> Size:
    cfg = load_config(recipe)
    return Size({key: getattr(cfg.model, key) for key in SHAPE_KEYS}, cfg.train.micro_batch_size)


def size_names() -> list[str]:
    return ["20m", *SHORT_NAMES, "7b-<k>l", *(n for n in recipe_names() if n.startswith("llama-"))]


def get_size(name: str) -> Size:
    if name == "20m":
        return CPU_20M
    if name in SHORT_NAMES or (name.startswith("llama-") and name in recipe_names()):
        return recipe_size(SHORT_NAMES.get(name, name))
    match = FEW_LAYERS.match(name)
    if match and int(match.group(1)) > 0:
        base = recipe_size("llama-7b")
        return Size({**base.model, "num_layers": int(match.group(1))}, base.micro_batch)
    raise UserError(f"--size {name!r}: expected one of {size_names()} (7b-<k>l: the 7B width with k layers, "
                    "e.g. 7b-4l)")


assert set(SHAPE_KEYS) <= {f for f in ModelConfig.__dataclass_fields__}  # a renamed key fails at import
