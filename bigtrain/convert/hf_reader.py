"""Read a Hugging Face Llama folder: its config.json as a bigtrain ModelConfig, its weights one tensor at a time.

Accepted ``config.json`` variants (transformers 4.x and 5.x, Llama 1/2, TinyLlama, Llama-3 without
rope scaling): ``rope_theta`` at the top level or in ``rope_parameters``; ``rope_scaling`` absent,
null or of type "default"; ``head_dim`` absent or ``hidden_size / num_attention_heads``;
``num_key_value_heads`` absent (= MHA); ``tie_word_embeddings`` absent (= false, LlamaConfig's
default); ``torch_dtype``/``dtype`` anything (weights are converted to fp32). Rejected, naming the
key: other model types, biases (``attention_bias``/``mlp_bias``), activations other than silu,
rope scaling (llama3, linear, dynamic, yarn...), a ``head_dim`` bigtrain's model cannot express.

Weights: ``model.safetensors``, ``model.safetensors.index.json`` + shards, or ``pytorch_model.bin``
(+ ``pytorch_model.bin.index.json``), the latter read with ``torch.load(weights_only=True)``. All are
memory-mapped; ``get(name)`` materialises one tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from bigtrain.checkpoint.errors import CheckpointError
from bigtrain.checkpoint.safe_load import torch_load
from bigtrain.config.schema import ModelConfig

INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers older transformers saved; recomputed from rope_theta


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist: not a Hugging Face model folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


def rope_theta(hf: dict, where: Path) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default")) if scaling else "default"
    kind = params.get("rope_type", kind)
    if kind != "default":
        raise CheckpointError(f"{where}: rope scaling of type {kind!r} is not supported: bigtrain's model implements "
                              f"plain RoPE (rope_scaling must be absent, null or \"default\")")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config(hf: dict, where: Path, seq_len: int | None = None,
                 vocab_pad_multiple: int = 128) -> tuple[ModelConfig, bool]:
    """config.json -> (bigtrain ModelConfig with vocab_size set, tied embeddings?)."""
    def reject(key: str, expected: str):
        raise CheckpointError(f"{where}: {key}={hf.get(key)!r} is not supported: expected {expected}")

    if hf.get("model_type") != "llama":
        reject("model_type", '"llama" (a Llama-architecture model)')
    if hf.get("architectures") and "LlamaForCausalLM" not in hf["architectures"]:
        reject("architectures", '["LlamaForCausalLM"]')
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key, False):
            reject(key, "false: bigtrain's Llama has no biases")
    if hf.get("hidden_act", "silu") != "silu":
        reject("hidden_act", '"silu" (SwiGLU)')
    try:
        hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        cfg = ModelConfig(hidden_size=hidden, num_layers=int(hf["num_hidden_layers"]), num_heads=heads,
                          num_kv_heads=int(hf.get("num_key_value_heads") or heads),
                          ffn_hidden_size=int(hf["intermediate_size"]), rope_theta=rope_theta(hf, where),
                          tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                          seq_len=int(seq_len or hf.get("max_position_embeddings", 2048)),
                          vocab_size=int(hf["vocab_size"]), vocab_pad_multiple=vocab_pad_multiple,
                          norm_eps=float(hf.get("rms_norm_eps", 1e-6)), init_std=float(hf.get("initializer_range", 0.02)))
    except KeyError as exc:
        raise CheckpointError(f"{where} lacks {exc.args[0]!r}") from None
    if hf.get("head_dim") not in (None, hidden // heads):
        reject("head_dim", f"hidden_size / num_attention_heads = {hidden // heads}")
    return cfg, cfg.tie_embeddings


class HFWeights:
    """Tensor name -> fp32 tensor, from whichever weight files the folder has."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: dict[str, object] = {}
        self.where = self.index()

    def index(self) -> dict[str, str]:
        for name in INDEXES:
            if (self.folder / name).is_file():
                weight_map = read_json(self.folder / name).get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise CheckpointError(f"{self.folder / name} has no weight_map")
                missing = sorted({f for f in weight_map.values() if not (self.folder / f).is_file()})
                if missing:
                    raise CheckpointError(f"{self.folder / name} lists shard(s) that are missing: {', '.join(missing)}")
                return dict(weight_map)
        for name in SINGLE_FILES:
            if (self.folder / name).is_file():
                return {key: name for key in self.open(name).keys()}
        raise CheckpointError(f"{self.folder} holds no weights: expected one of {', '.join(SINGLE_FILES + INDEXES)}")

    def open(self, file: str):
        if file not in self.files:
            path = self.folder / file
            try:
                self.files[file] = open_safetensors(path) if file.endswith(".safetensors") else open_bin(path)
            except CheckpointError:
                raise
            except Exception as exc:  # safetensors/torch raise several types for damaged files
                raise CheckpointError(f"{path} is truncated or corrupt: {exc}") from exc
        return self.files[file]

    def names(self) -> list[str]:
        return [n for n in self.where if not n.endswith(IGNORED_SUFFIXES)]

    def shape(self, name: str) -> tuple[int, ...]:
        handle = self.open(self.where[name])
        if isinstance(handle, dict):
            return tuple(handle[name].shape)
        return tuple(handle.get_slice(name).get_shape())

    def get(self, name: str) -> Tensor:
        if name not in self.where:
            raise CheckpointError(f"{self.folder}: the weights lack {name}")
        handle = self.open(self.where[name])
        try:
            tensor = handle[name] if isinstance(handle, dict) else handle.get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f"{self.folder / self.where[name]}: cannot read {name}: {exc}") from exc
        return tensor.float().clone() if tensor.dtype == torch.float32 else tensor.float()


def open_safetensors(path: Path):
    from safetensors import safe_open

    return safe_open(str(path), framework="pt")


def open_bin(path: Path) -> dict:
    data = torch_load(path, mmap=True)  # tensors only: no class of any library is allowed
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a state dict")
    return data
