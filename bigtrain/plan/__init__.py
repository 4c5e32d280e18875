"""Dry run of a layout: parallel groups, per-GPU memory, step time -- no process group, no torch.

    bigtrain plan --config llama-70b                                   # on the recipe's intended cluster
    bigtrain plan --config debug --nodes 2 --gpus-per-node 8 --gpu-memory-gb 80 [key=value ...] [--json]

``memory_bytes`` per GPU: ``parameters``, ``gradients``, ``optimizer`` (model states as DeepSpeed allocates
them per ZeRO stage x precision x offload: memory.py), ``activations`` (per activation checkpointing mode,
sequence parallelism and attention kernel: activations.py), ``logits`` (the logits and loss buffers),
``zero3_gathered`` (ZeRO-3's working set of gathered parameters), ``buffers`` (ZeRO's buckets), ``reserve``
(CUDA context, NCCL, fragmentation: --reserve-gb) and ``total``. GiB = 2**30 bytes; --gpu-memory-gb is GiB
too (an "80 GB" H100 has 79.6 GiB). ``step_time_s`` and ``comm_fraction``: steptime.py (docs/scaling.md).
``errors`` (impossible layout, does not fit: exit status 2), ``advice`` (the smallest change that fits:
advice.py), ``warnings`` (legal but slow or odd). Parameter counts, FLOPs: bigtrain/config/arithmetic.py.
"""

from bigtrain.plan.activations import activation_bytes, logits_bytes
from bigtrain.plan.report import GIB, Plan, PlanInputError, make_plan
from bigtrain.plan.steptime import Hardware
from bigtrain.plan.text import format_plan, recipe_table, scaling_table

__all__ = ["GIB", "Hardware", "Plan", "PlanInputError", "activation_bytes", "format_plan", "logits_bytes", "make_plan",
           "recipe_table", "scaling_table"]
