"""Step time and its communication share: docs/scaling.md's model (tools/scaling_model.py prints its tables).

Per GPU and micro batch of b sequences of s tokens, TP t inside a node, DP d, P parameters per TP rank,
w = 2 (bf16, fp16) or 4 (fp32) bytes, ring collectives (an all-gather or reduce-scatter moves
(d-1)/d of the buffer per GPU, an all-reduce twice that):

    compute   F_tok * b*s / t / R            R = peak FLOP/s x MFU of one GPU (--peak-tflops, --mfu);
                                             x 4/3 with full activation checkpointing (one more forward)
    ZeRO-3    3 * w*P * (d-1)/d / B_dp       per micro batch: all-gather forward and backward, reduce-scatter
                                             gradients; overlapped with compute (prefetch)
    ZeRO-2    w*P * (d-1)/d / B_dp           per micro batch (gradients are reduced every micro batch),
                                             overlapped with backward; + w*P (d-1)/d per step (all-gather)
    ZeRO-1    bf16 (BF16_Optimizer): all-reduce of the fp32 gradients 2*4P (d-1)/d + all-gather 2P (d-1)/d;
              fp32/fp16 (stage_1_and_2): reduce-scatter + all-gather 2*w*P (d-1)/d; once per step, exposed
    ZeRO-0    all-reduce of the gradients 2*w*P (d-1)/d per step, exposed
    TP        per layer and micro batch 4 all-reduces of a*b*s*h (2 forward, 2 backward), 2 (t-1)/t each;
              with sequence parallelism 2 all-gathers + 2 reduce-scatters each way plus the backward
              re-gather of the column-parallel inputs: 10 (t-1)/t instead of 8; on the critical path

B_dp is NVLink's bus bandwidth when the whole job fits in one node, else InfiniBand's per GPU.
step = accum * (max(compute, overlapped comm) + TP) + per-step comm;
comm_fraction = the share of the step that compute does not hide.
"""

from __future__ import annotations

from dataclasses import dataclass

from bigtrain.config.schema import Config
from bigtrain.config.arithmetic import train_flops_per_token


@dataclass(frozen=True)
class Hardware:
    peak_tflops: float = 989.0  # H100 SXM bf16 dense
    mfu: float = 0.5  # single-GPU MFU without communication (issue 7's goal)
    nvlink_gbs: float = 360.0  # NCCL bus bandwidth per GPU inside a node
    ib_gbs: float = 45.0  # per GPU across nodes (8 x 400 Gb/s NDR per node, achieved)


def step_time(cfg: Config, vocab: int, n: int, world: int, gpus_per_node: int, accum: int,
              hw: Hardware) -> dict[str, float]:
    """{compute_s, overlapped_comm_s, tp_comm_s, step_comm_s, step_time_s, comm_fraction} per optimizer step."""
    m, p, t = cfg.model, cfg.parallel, cfg.train
    tp, w = p.tensor_parallel, (4 if t.precision == "fp32" else 2)
    dp = max(world // tp, 1)
    tokens = t.micro_batch_size * m.seq_len
    rate = hw.peak_tflops * 1e12 * hw.mfu
    compute = train_flops_per_token(m, vocab) * tokens / tp / rate
    compute *= 4 / 3 if m.activation_checkpointing == "full" else 1
    b_dp = (hw.nvlink_gbs if world <= gpus_per_node else hw.ib_gbs) * 1e9
    share = (dp - 1) / dp
    overlapped = {3: 3 * w * n, 2: w * n}.get(p.zero_stage, 0) * share / b_dp
    per_step = {0: 2 * w * n, 1: (10 * n if t.precision == "bf16" else 2 * w * n), 2: w * n, 3: 0}[p.zero_stage]
    per_step = per_step * share / b_dp
    b_tp = (hw.nvlink_gbs if tp <= gpus_per_node else hw.ib_gbs) * 1e9
    tp_units = (10 if p.sequence_parallel else 8) * (tp - 1) / tp
    tp_comm = m.num_layers * tp_units * w * tokens * m.hidden_size / b_tp
    step = accum * (max(compute, overlapped) + tp_comm) + per_step
    exposed = step - accum * compute
    return {"compute_s": accum * compute, "overlapped_comm_s": accum * overlapped, "tp_comm_s": accum * tp_comm,
            "step_comm_s": per_step, "step_time_s": step, "comm_fraction": exposed / step if step else 0.0}
