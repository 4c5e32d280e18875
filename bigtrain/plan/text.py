"""Plans as text: one layout, the recipes list and docs/scaling.md's recommended-layout table."""

from __future__ import annotations

from bigtrain.config.load import RECIPE_DIR, load_config, recipe_names
from bigtrain.plan.report import GIB, Plan, make_plan

MEMORY_ROWS = ("parameters", "gradients", "optimizer", "activations", "logits", "zero3_gathered", "buffers", "reserve")
# docs/scaling.md's table: (recipe, what the row shows); `bigtrain plan --recipes-table` prints it
SCALING_ROWS = ("llama-1.3b", "llama-7b", "llama-13b", "llama-70b")


def format_plan(plan: Plan) -> str:
    m, p = {k: v / GIB for k, v in plan.memory_bytes.items()}, plan.params
    batch = (f"micro batch {plan.micro_batch_size} x {plan.grad_accumulation} accumulation steps x "
             f"{plan.data_parallel} data-parallel ranks" if plan.grad_accumulation else
             f"micro batch {plan.micro_batch_size} x {plan.data_parallel} data-parallel ranks does not divide it")
    lines = [
        f"layout: {plan.nodes} node(s) x {plan.gpus_per_node} GPU(s) = {plan.world_size} ranks; "
        f"tensor parallel {plan.tensor_parallel} x data parallel {plan.data_parallel}; "
        f"{plan.gpus_per_node} ranks per node; sequence parallel {'on' if plan.sequence_parallel else 'off'}",
        f"  TP groups {'inside nodes' if plan.tp_within_node else 'ACROSS nodes'}: "
        + " ".join(map(str, plan.tp_groups)) + (" ..." if plan.world_size > plan.tensor_parallel * 4 else ""),
        "  DP groups (ZeRO partitions over these): " + " ".join(map(str, plan.dp_groups)),
        f"model: {p.total / 1e6:,.2f}M parameters ({p.per_tp_rank / 1e6:,.2f}M per TP rank); vocabulary "
        f"{plan.vocab_size} padded to {plan.padded_vocab_size}",
        f"batch: {plan.tokens_per_step:,} tokens per step; {batch}",
        f"memory per GPU (ZeRO-{plan.zero_stage}, {plan.precision}, TP {plan.tensor_parallel}, activation "
        f"checkpointing {plan.activation_checkpointing}, attention {plan.attention_backend}), GiB:",
    ]
    lines += [f"  {key:<15} {m[key]:>10.3f}" for key in MEMORY_ROWS]
    verdict = "fits" if plan.fits and not plan.errors else ("DOES NOT FIT" if not plan.fits else "invalid layout, see the errors")
    lines.append(f"  {'total':<15} {m['total']:>10.3f}   of {plan.gpu_memory_gb:g} GiB: {verdict}")
    lines.append(f"step time: {plan.step_time_s:.2f} s estimated ({100 * plan.comm_fraction:.0f}% communication not "
                 "hidden by compute; docs/scaling.md)")
    # errors go to stderr as `error:` lines, once (bigtrain/cli/)
    lines += [f"advice: {a}" for a in plan.advice]
    lines += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(lines)


def cluster_text(plan: Plan) -> str:
    return f"{plan.nodes} x {plan.gpus_per_node} x {plan.gpu_memory_gb:g} GiB"


def recipe_table() -> str:
    """`bigtrain config recipes`: every shipped recipe with its size, batch and intended cluster."""
    rows = [f"{'recipe':<12} {'parameters':>11} {'tokens/step':>12}  {'cluster (nodes x GPUs x memory)':<32} file"]
    plans = sorted(((make_plan(load_config(name), advise=False), name) for name in recipe_names()),
                   key=lambda pair: pair[0].params.total)
    for plan, name in plans:
        rows.append(f"{name:<12} {plan.params.total / 1e9:>10.3f}B {plan.tokens_per_step:>12,}  "
                    f"{cluster_text(plan):<32} {RECIPE_DIR / (name + '.yaml')}")
    return "\n".join(rows)


def scaling_table() -> str:
    """docs/scaling.md's recommended layouts: each recipe planned on its intended cluster."""
    rows = ["| recipe | parameters | cluster (nodes × GPUs) | TP | SP | ZeRO | activation checkpointing | "
            "micro batch × seq | accumulation | memory GiB/GPU | step s | communication not hidden |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in SCALING_ROWS:
        p = make_plan(load_config(name), advise=False)
        rows.append(f"| {name} | {p.params.total / 1e9:.2f}B | {p.nodes} × {p.gpus_per_node} | {p.tensor_parallel} | "
                    f"{'on' if p.sequence_parallel else 'off'} | {p.zero_stage} | {p.activation_checkpointing} | "
                    f"{p.micro_batch_size} × {p.tokens_per_micro_batch_per_gpu // p.micro_batch_size} | "
                    f"{p.grad_accumulation} | {p.memory_bytes['total'] / GIB:.1f} | {p.step_time_s:.1f} | "
                    f"{100 * p.comm_fraction:.0f}% |")
    return "\n".join(rows)
