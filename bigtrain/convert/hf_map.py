"""bigtrain <-> Hugging Face: parameter names and the model config, per architecture.

Two architectures: ``llama`` (the causal LM of ``train.objective`` clm and distill, ``LlamaForCausalLM``)
and ``modernbert`` (the encoder of ``train.objective=mlm``, bigtrain/model/encoder.py,
``ModernBertForMaskedLM``). A checkpoint's architecture follows from the objective in its meta.json.

``KEY_MAP`` / ``ENCODER_KEY_MAP`` are declarative: a bigtrain name pattern -> the HF name(s) it
becomes. A tuple means the bigtrain tensor is fused and splits into those HF tensors, in that order;
one HF name for a tensor layout.py splits in parts (ModernBERT's fused ``Wqkv``, ``Wi``) means the
parts concatenated. The reshaping itself lives in bigtrain/checkpoint/layout.py (``to_hf_parts``/``from_hf_parts``).
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

# ModernBERT: Wqkv = [q; k; v] (all heads each), Wi = [input; gate] with gelu(input) * gate.
ENCODER_KEY_MAP: dict[str, str | tuple[str, ...]] = {
    "embed.weight": "model.embeddings.tok_embeddings.weight",
    "embed_norm.weight": "model.embeddings.norm.weight",
    "layers.{layer}.attn_norm.weight": "model.layers.{layer}.attn_norm.weight",  # absent in layer 0 (Identity)
    "layers.{layer}.attn.qkv.weight": "model.layers.{layer}.attn.Wqkv.weight",
    "layers.{layer}.attn.proj.weight": "model.layers.{layer}.attn.Wo.weight",
    "layers.{layer}.mlp_norm.weight": "model.layers.{layer}.mlp_norm.weight",
    "layers.{layer}.mlp.fc1.weight": "model.layers.{layer}.mlp.Wi.weight",
    "layers.{layer}.mlp.fc2.weight": "model.layers.{layer}.mlp.Wo.weight",
    "norm.weight": "model.final_norm.weight",
    "head.dense.weight": "head.dense.weight",
    "head.norm.weight": "head.norm.weight",
}
LLAMA, MODERNBERT = "llama", "modernbert"
KEY_MAPS = {LLAMA: KEY_MAP, MODERNBERT: ENCODER_KEY_MAP}
AUTO_CLASSES = {LLAMA: "AutoModelForCausalLM", MODERNBERT: "AutoModelForMaskedLM"}


def architecture(objective: str) -> str:
    """The model family a run of ``train.objective`` trains."""
    return MODERNBERT if objective == "mlm" else LLAMA


LAYER = re.compile(r"^layers\.(\d+)\.")


def pattern_of(name: str) -> tuple[str, int | None]:
    """'layers.3.mlp.fc2.weight' -> ('layers.{layer}.mlp.fc2.weight', 3)."""
    match = LAYER.match(name)
    if match is None:
        return name, None
    return LAYER.sub("layers.{layer}.", name, count=1), int(match.group(1))


def hf_names(name: str, arch: str = LLAMA) -> tuple[str, ...]:
    """The HF parameter name(s) of bigtrain parameter ``name``."""
    pattern, layer = pattern_of(name)
    key_map = KEY_MAPS[arch]
    if pattern not in key_map:
        raise CheckpointError(f"parameter {name!r} has no Hugging Face {arch} name (hf_map.KEY_MAPS)")
    target = key_map[pattern]
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


def encoder_hf_config(model: ModelConfig, vocab_size: int, bos_token_id: int | None, eos_token_id: int | None,
                      dtype: str):
    """The transformers ``ModernBertConfig`` of a bigtrain encoder (bigtrain/model/encoder.py).

    Every layer attends globally; sequence classification pools by the mean over tokens (the encoder
    was never trained to summarise a sequence in its first token). ``pad_token_id`` is EOS, the id
    fine-tuning pads with (bigtrain's tokenizers have no pad token).
    """
    from transformers import ModernBertConfig

    return ModernBertConfig(
        vocab_size=vocab_size, hidden_size=model.hidden_size, intermediate_size=model.ffn_hidden_size,
        num_hidden_layers=model.num_layers, num_attention_heads=model.num_heads, hidden_activation="gelu",
        max_position_embeddings=model.seq_len, initializer_range=model.init_std, norm_eps=model.norm_eps,
        norm_bias=False, attention_bias=False, mlp_bias=False, decoder_bias=False, classifier_bias=False,
        classifier_activation="gelu", classifier_pooling="mean", tie_word_embeddings=True,
        layer_types=["full_attention"] * model.num_layers, global_rope_theta=model.rope_theta,
        local_rope_theta=model.rope_theta, pad_token_id=eos_token_id, bos_token_id=bos_token_id,
        eos_token_id=eos_token_id, cls_token_id=bos_token_id, sep_token_id=eos_token_id, dtype=dtype,
        architectures=["ModernBertForMaskedLM"])


def bigtrain_names(cfg: ModelConfig, arch: str = LLAMA) -> list[str]:
    """bigtrain's parameter names for ``cfg``, in the model's order (layer by layer)."""
    if arch == MODERNBERT:
        per_layer = [p for p in ENCODER_KEY_MAP if "{layer}" in p]
        names = ["embed.weight", "embed_norm.weight"]
        names += [p.format(layer=i) for i in range(cfg.num_layers) for p in per_layer
                  if not (i == 0 and p.endswith("attn_norm.weight"))]
        return names + ["norm.weight", "head.dense.weight", "head.norm.weight"]
    per_layer = [p for p in KEY_MAP if "{layer}" in p]
    names = ["embed.weight"]
    names += [p.format(layer=i) for i in range(cfg.num_layers) for p in per_layer]
    names.append("norm.weight")
    if not cfg.tie_embeddings:
        names.append("lm_head.weight")
    return names
