"""What to change when a layout does not fit: the smallest single change that makes it fit, never one
that is already on; if no single change is enough, the cumulative set in this order of cost.

Order (cheapest first): selective activation checkpointing (~no extra FLOPs), sequence parallelism
(no extra traffic), full activation checkpointing (+1 forward), ZeRO-3, more tensor parallelism inside the
node (with sequence parallelism), a smaller micro batch (more accumulation steps), CPU offload, more nodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from bigtrain.config.schema import Config

Change = tuple[str, Callable[[Config], Config]]  # (what to tell the user, how it changes the config)


def replace(cfg: Config, section: str, **values) -> Config:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})


def divides(tp: int, cfg: Config) -> bool:
    m = cfg.model
    return all(v % tp == 0 for v in (m.num_heads, m.num_kv_heads, m.ffn_hidden_size, m.seq_len))


def candidate_changes(cfg: Config, gpus_per_node: int, dp: int) -> list[Change]:
    """The changes not already made, cheapest first (more nodes is handled by the caller)."""
    m, p, t = cfg.model, cfg.parallel, cfg.train
    out: list[Change] = []
    if m.activation_checkpointing == "none":
        out.append(("model.activation_checkpointing=selective",
                    lambda c: replace(c, "model", activation_checkpointing="selective")))
    if p.tensor_parallel > 1 and not p.sequence_parallel:
        out.append(("parallel.sequence_parallel=true", lambda c: replace(c, "parallel", sequence_parallel=True)))
    if m.activation_checkpointing != "full":
        out.append(("model.activation_checkpointing=full", lambda c: replace(c, "model", activation_checkpointing="full")))
    if p.zero_stage != 3 and dp > 1:
        out.append(("parallel.zero_stage=3", lambda c: replace(c, "parallel", zero_stage=3)))
    tp = p.tensor_parallel * 2
    while tp <= gpus_per_node and divides(tp, cfg):
        out.append((f"parallel.tensor_parallel={tp} parallel.sequence_parallel=true",
                    lambda c, tp=tp: replace(c, "parallel", tensor_parallel=tp, sequence_parallel=True)))
        tp *= 2
    micro = t.micro_batch_size // 2
    while micro >= 1:
        out.append((f"train.micro_batch_size={micro}", lambda c, micro=micro: replace(c, "train", micro_batch_size=micro)))
        micro //= 2
    if not p.cpu_offload and p.zero_stage > 0:
        out.append(("parallel.cpu_offload=true", lambda c: replace(c, "parallel", cpu_offload=True)))
    return out


def fitting_change(cfg: Config, changes: list[Change], fits: Callable[[Config], bool]) -> str | None:
    """The first single change that fits, else the shortest cumulative prefix (in order) that fits."""
    for text, change in changes:
        if fits(change(cfg)):
            return text
    applied, texts = cfg, []
    for text, change in changes:
        if text.startswith("train.micro_batch_size") and any(x.startswith("train.micro_batch_size") for x in texts):
            texts = [x for x in texts if not x.startswith("train.micro_batch_size")]
        applied, texts = change(applied), [*texts, text]
        if fits(applied):
            return " ".join(texts)
    return None
