"""bigtrain <-> Hugging Face Llama: parameter names and the model config.

``KEY_MAP`` is declarative: a bigtrain name pattern -> the HF name(s) it becomes. A tuple means the
bigtrain tensor is fused and splits into those HF tensors, in that order; the reshaping itself lives
in bigtrain/checkpoint/layout.py (``to_hf_parts``/``from_hf_parts``).
"""

from __future__ import annotations

import re

from bigtrain.checkpoint.errors import CheckpointError
from bigtrain.config.schema import ModelConfig

KEY_MAP: dict[str, str | tuple[str, ...]] = {
    "embed.weight": "model.embed_tokens.weight",
    "layers.{layer}.attn_norm.weight": "model.layers.{layer}.input_layernorm.weight",
    "layers.{layer}.attn.qkv.weight": ("model.layers.{layer}.self_attn.q_proj.weight",
                                       "model.layers.{layer}.self_attn.k_proj.weight",
                                       "model.layers.{layer}.self_attn.v_proj.weight"),
    "layers.{layer}.attn.proj.weight": "model.layers.{layer}.self_attn.o_proj.weight",
    "layers.{layer}.mlp_norm.weight": "model.layers.{layer}.post_attention_layernorm.weight",
    "layers.{layer}.mlp.fc1.weight": ("model.layers.{layer}.mlp.gate_proj.weight",
                                      "model.layers.{layer}.mlp.up_proj.weight"),
    "layers.{layer}.mlp.fc2.weight": "model.layers.{layer}.mlp.down_proj.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",  # absent with tied embeddings (HF ties it to embed_tokens)
}

LAYER = re.compile(r"^layers\.(\d+)\.")


def pattern_of(name: str) -> tuple[str, int | None]:
    """'layers.3.mlp.fc2.weight' -> ('layers.{layer}.mlp.fc2.weight', 3)."""
    match = LAYER.match(name)
    if match is None:
        return name, None
    return LAYER.sub("layers.{layer}.", name, count=1), int(match.group(1))


def hf_names(name: str) -> tuple[str, ...]:
    """The HF parameter name(s) of bigtrain parameter ``name``."""
    pattern, layer = pattern_of(name)
    if pattern not in KEY_MAP:
        raise CheckpointError(f"parameter {name!r} has no Hugging Face name (hf_map.KEY_MAP)")
    target = KEY_MAP[pattern]
    targets = target if isinstance(target, tuple) else (target,)
    return tuple(t.format(layer=layer) for t in targets)


def hf_config(model: ModelConfig, vocab_size: int, bos_token_id: int | None, eos_token_id: int | None,
              dtype: str):
    """The transformers ``LlamaConfig`` of a bigtrain model (``dtype``: "float32" or "bfloat16")."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,  # unpadded: the padding rows are dropped on export
        hidden_size=model.hidden_size,
        intermediate_size=model.ffn_hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads,
        num_key_value_heads=model.num_kv_heads,
        head_dim=model.hidden_size // model.num_heads,
        hidden_act="silu",
        max_position_embeddings=model.seq_len,
        rms_norm_eps=model.norm_eps,
        rope_theta=model.rope_theta,
        tie_word_embeddings=model.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=model.init_std,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        dtype=dtype,
        architectures=["LlamaForCausalLM"],
    )


def bigtrain_names(cfg: ModelConfig) -> list[str]:
    """bigtrain's parameter names for ``cfg``, in the model's order (layer by layer)."""
    per_layer = [p for p in KEY_MAP if "{layer}" in p]
    names = ["embed.weight"]
    names += [p.format(layer=i) for i in range(cfg.num_layers) for p in per_layer]
    names.append("norm.weight")
    if not cfg.tie_embeddings:
        names.append("lm_head.weight")
    return names
