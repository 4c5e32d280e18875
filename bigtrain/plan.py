"""Dry run of a layout: parallel groups, per-GPU memory and tokens per step -- no process group, no torch.

    bigtrain plan --config debug --nodes 2 --gpus-per-node 8 --gpu-memory-gb 80 [key=value ...] [--json]

Memory per GPU, in bytes (P = parameters held by one tensor-parallel rank, d = data-parallel size):

- parameters:  w * P,   w = 4 (fp32) or 2 (bf16, fp16);       ZeRO-3 divides by d
- gradients:   4 * P (fp32; bf16 accumulates in fp32, ds_configs/bf16.json), 2 * P (fp16; bf16 without
               ZeRO, where DeepSpeed accumulates in bf16);  ZeRO-2/3: / d
- optimizer:   AdamW m + v = 8 * P, plus the fp32 master copy 4 * P under bf16/fp16;  ZeRO-1/2/3: / d;
               0 on the GPU with parallel.cpu_offload (and ZeRO-3 parameters then live on the CPU too)
- activations: what autograd saves for one micro batch (b sequences of s tokens), per token:
      per block   2 * (4h + 2ah + 4)                          two RMSNorms: fp32 input, normed, linear input
                + a * (3*n_q + 3*n_kv) * D / t + 4 * n_q / t  attention: qkv, roped q and k, SDPA output,
                                                              fp32 log-sum-exp (SDPA/flash: no s x s scores)
                + 4a * F / t                                  SwiGLU: [gate; up], silu(gate), product
      output      4h + 2ah + 4 + 4 * V / t + 17               final norm, fp32 softmax of the logits, ids
  (a = 4 fp32 / 2 bf16 or fp16, h hidden, D head dim, F ffn size, V padded vocab, t TP; no sequence parallel,
  no activation checkpointing), times b * s, plus the fp32 RoPE cos/sin cache 8 * D * s, the padding
  mask V / t (if the vocabulary is padded) and the fp32 logits gradient 4 * b * s * V / t of backward;
- buffers:     ZeRO's communication buckets: min(bucket, P) * (4 + w) (parallel.bucket_size, 5e8 on GPU),
               plus under ZeRO-3 the largest unit gathered at once (embedding or one block, per TP rank) * w;
- reserve:     CUDA context, NCCL and allocator fragmentation: --reserve-gb (default 2).
``--json`` reports bytes (``memory_bytes``); the table shows GiB (2**30 bytes), and --gpu-memory-gb is
GiB too (an "80 GB" H100 has 79.6 GiB).

The activation formula is checked against the tensors autograd really saves for the bigtrain model
(tests/test_plan.py); the rest follows the ZeRO paper's accounting (Rajbhandari et al., 2020).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from bigtrain.config.arithmetic import ParamCounts, padded_vocab_size, param_counts
from bigtrain.config.schema import Config, ModelConfig
from bigtrain.config.validate import config_errors, resolve_precision

GIB = 1024 ** 3
GPU_BUCKET = 500_000_000  # bigtrain/parallel/engine.py: parallel.bucket_size=0 means 5e8 elements on GPU
EMBEDDED_VOCAB = 4096  # the embedded default corpus' tokenizer (bigtrain/data/embedded.py)


@dataclass
class Plan:
    nodes: int
    gpus_per_node: int
    world_size: int
    tensor_parallel: int
    data_parallel: int
    tp_groups: list[list[int]]  # the first few, rank ids
    dp_groups: list[list[int]]
    tp_within_node: bool
    zero_stage: int
    precision: str
    vocab_size: int
    padded_vocab_size: int
    params: ParamCounts
    micro_batch_size: int
    grad_accumulation: int
    tokens_per_step: int
    tokens_per_micro_batch_per_gpu: int
    memory_bytes: dict[str, int]  # per GPU: parameters, gradients, optimizer, activations, buffers, reserve, total
    gpu_memory_gb: float
    fits: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def activation_bytes_per_token(m: ModelConfig, vocab_padded: int, tp: int, act_bytes: int) -> tuple[int, int]:
    """(one block, output layer) bytes saved for backward per token; see the module docstring."""
    h, a, d = m.hidden_size, act_bytes, m.hidden_size // m.num_heads
    norm = 4 * h + 2 * a * h + 4
    attention = a * (3 * m.num_heads + 3 * m.num_kv_heads) * d // tp + 4 * m.num_heads // tp
    mlp = 4 * a * m.ffn_hidden_size // tp
    output = norm + 4 * vocab_padded // tp + 17
    return 2 * norm + attention + mlp, output


def saved_activation_bytes(m: ModelConfig, vocab: int, vocab_padded: int, tp: int, act_bytes: int,
                           micro_batch: int) -> int:
    """Bytes autograd holds for one micro batch after the forward pass (+ the fp32 RoPE cos/sin cache
    and, with a padded vocabulary, the padding mask: one byte per local vocabulary row)."""
    block, output = activation_bytes_per_token(m, vocab_padded, tp, act_bytes)
    rope_cache = 2 * 4 * (m.hidden_size // m.num_heads) * m.seq_len
    padding_mask = vocab_padded // tp if vocab_padded != vocab else 0
    return micro_batch * m.seq_len * (m.num_layers * block + output) + rope_cache + padding_mask


def resolve_vocab(cfg: Config) -> tuple[int, str | None]:
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, None
    if cfg.data.path:
        from bigtrain.data.manifest import Manifest

        try:
            return Manifest.load(Path(cfg.data.path)).vocab_size, None
        except Exception as exc:  # plan is advisory: say what was assumed instead of failing
            return EMBEDDED_VOCAB, f"could not read the vocabulary size from {cfg.data.path} ({exc}); assumed {EMBEDDED_VOCAB}"
    return EMBEDDED_VOCAB, None


def memory(cfg: Config, params: ParamCounts, dp: int, vocab: int, vocab_padded: int, reserve_gb: float) -> dict[str, int]:
    """Bytes per GPU by kind; see the module docstring for each formula."""
    p, m, t = cfg.parallel, cfg.model, cfg.train
    w = 4 if t.precision == "fp32" else 2
    n, stage = params.per_tp_rank, p.zero_stage
    grad = 2 if t.precision == "fp16" or (t.precision == "bf16" and stage == 0) else 4
    optimizer = (8 + (4 if w == 2 else 0)) * n
    mem = {
        "parameters": w * n // (dp if stage == 3 else 1),
        "gradients": grad * n // (dp if stage >= 2 else 1),
        "optimizer": 0 if p.cpu_offload else optimizer // (dp if stage >= 1 else 1),
    }
    if p.cpu_offload and stage == 3:
        mem["parameters"] = 0
    logits_grad = 4 * t.micro_batch_size * m.seq_len * vocab_padded // p.tensor_parallel  # fp32, in backward
    saved = saved_activation_bytes(m, vocab, vocab_padded, p.tensor_parallel, w, t.micro_batch_size)
    mem["activations"] = saved + logits_grad
    bucket = min(p.bucket_size or GPU_BUCKET, n)  # a bucket never holds more than the rank's parameters
    gathered = w * max(params.embedding, params.block) if stage == 3 else 0
    mem["buffers"] = bucket * (4 + w) + gathered
    mem["reserve"] = round(reserve_gb * GIB)
    mem["total"] = sum(mem.values())
    return mem


def groups(world: int, tp: int, limit: int = 4) -> tuple[list[list[int]], list[list[int]]]:
    """megatron's order: TP ranks adjacent, DP ranks strided by TP (bigtrain/parallel/world.py)."""
    tp_groups = [list(range(s, s + tp)) for s in range(0, world, tp)][:limit]
    dp_groups = [list(range(r, world, tp))[:16] for r in range(tp)][:limit]
    return tp_groups, dp_groups


def make_plan(cfg: Config, nodes: int, gpus_per_node: int, gpu_memory_gb: float, reserve_gb: float = 2.0) -> Plan:
    world = nodes * gpus_per_node
    cfg = resolve_precision(cfg, cuda=True)  # a plan is for GPUs: train.precision=auto trains in bf16 there
    tp = cfg.parallel.tensor_parallel
    warnings = list(config_errors(cfg, world))
    if warnings and any("must be positive" in w for w in warnings):
        raise_plan_error(warnings)
    vocab, note = resolve_vocab(cfg)
    if note:
        warnings.append(note)
    dp = max(world // tp, 1)
    vpad = padded_vocab_size(vocab, cfg.model.vocab_pad_multiple, tp)
    params = param_counts(cfg.model, vpad, tp)
    mem = memory(cfg, params, dp, vocab, vpad, reserve_gb)
    t = cfg.train
    accum = t.global_batch_size // (t.micro_batch_size * dp) if t.global_batch_size % (t.micro_batch_size * dp) == 0 else 0
    tp_groups, dp_groups = groups(world, tp)
    within = tp <= gpus_per_node and gpus_per_node % tp == 0
    plan = Plan(nodes, gpus_per_node, world, tp, dp, tp_groups, dp_groups, within, cfg.parallel.zero_stage,
                t.precision, vocab, vpad, params, t.micro_batch_size, accum, t.global_batch_size * cfg.model.seq_len,
                t.micro_batch_size * cfg.model.seq_len, mem, gpu_memory_gb, mem["total"] <= gpu_memory_gb * GIB,
                warnings)
    plan.warnings += layout_warnings(plan)
    return plan


def raise_plan_error(errors: list[str]) -> None:
    from bigtrain.config.load import ConfigError

    raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))


def layout_warnings(plan: Plan) -> list[str]:
    out = []
    if not plan.fits:
        out.append(f"does not fit: about {plan.memory_bytes['total'] / GIB:.1f} GiB per GPU needed, "
                   f"{plan.gpu_memory_gb:g} GiB available (try more tensor_parallel, ZeRO-3, bf16, a smaller "
                   "micro_batch_size or parallel.cpu_offload)")
    if plan.tensor_parallel > plan.gpus_per_node:
        out.append(f"parallel.tensor_parallel ({plan.tensor_parallel}) is larger than a node "
                   f"({plan.gpus_per_node} GPUs): every layer's all-reduce crosses the network")
    elif not plan.tp_within_node:
        out.append(f"gpus per node ({plan.gpus_per_node}) is not a multiple of parallel.tensor_parallel "
                   f"({plan.tensor_parallel}): some tensor-parallel groups straddle two nodes")
    if plan.zero_stage > 0 and plan.data_parallel == 1:
        out.append(f"ZeRO-{plan.zero_stage} with data-parallel size 1 partitions nothing")
    return out


def format_plan(plan: Plan) -> str:
    m, p = {k: v / GIB for k, v in plan.memory_bytes.items()}, plan.params
    lines = [
        f"layout: {plan.nodes} node(s) x {plan.gpus_per_node} GPU(s) = {plan.world_size} ranks; "
        f"tensor parallel {plan.tensor_parallel} x data parallel {plan.data_parallel}; "
        f"{plan.gpus_per_node} ranks per node",
        f"  TP groups {'inside nodes' if plan.tp_within_node else 'ACROSS nodes'}: "
        + " ".join(map(str, plan.tp_groups)) + (" ..." if plan.world_size > plan.tensor_parallel * 4 else ""),
        "  DP groups (ZeRO partitions over these): " + " ".join(map(str, plan.dp_groups)),
        f"model: {p.total / 1e6:,.2f}M parameters ({p.per_tp_rank / 1e6:,.2f}M per TP rank); vocabulary "
        f"{plan.vocab_size} padded to {plan.padded_vocab_size}",
        f"batch: {plan.tokens_per_step:,} tokens per step; micro batch {plan.micro_batch_size} x "
        f"{plan.grad_accumulation} accumulation steps x {plan.data_parallel} data-parallel ranks",
        f"memory per GPU (ZeRO-{plan.zero_stage}, {plan.precision}, TP {plan.tensor_parallel}), GiB:",
    ]
    for key in ("parameters", "gradients", "optimizer", "activations", "buffers", "reserve"):
        lines.append(f"  {key:<12} {m[key]:>10.3f}")
    lines.append(f"  {'total':<12} {m['total']:>10.3f}   of {plan.gpu_memory_gb:g} GiB: "
                 + ("fits" if plan.fits else "DOES NOT FIT"))
    lines += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(lines)
