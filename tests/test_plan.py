"""``bigtrain plan``: numbers against hand-computed values, errors, advice and warnings.

- a small TP2 x DP2 ZeRO-3 layout, every number worked out by hand below;
- model states per ZeRO stage x precision x offload as bigtrain/plan/memory.py's table says;
- the parameter count equals Llama-2-7B's published 6,738,415,616 (the real model: test_plan_measure.py);
- errors (impossible layouts, does not fit: exit 2, never "fits"), advice (never what is already on),
  warnings; bad numbers give `error:` lines and no traceback; the CLI answers without importing torch.
The activation and model-state figures against measurement and DeepSpeed: tests/test_plan_measure.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from launch import REPO

from bigtrain.config.load import load_config
from bigtrain.config.arithmetic import padded_vocab_size, param_counts
from bigtrain.plan import GIB, make_plan

SMALL = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
         "model.ffn_hidden_size=176", "model.seq_len=64", "model.vocab_size=1000", "parallel.tensor_parallel=2",
         "parallel.zero_stage=3", "parallel.bucket_size=1000", "train.micro_batch_size=2",
         "train.global_batch_size=16", "train.precision=fp32"]


def plan_of(*overrides: str, nodes=2, gpus=2, memory_gb=80.0, reserve_gb=0.0):
    return make_plan(load_config("debug", [*SMALL, *overrides]), nodes, gpus, memory_gb, reserve_gb=reserve_gb)


def test_small_layout_by_hand():
    plan = plan_of()
    # layout: 2 nodes x 2 GPUs, TP 2 -> DP 2; TP pairs inside nodes, DP groups stride by TP
    assert (plan.world_size, plan.tensor_parallel, plan.data_parallel) == (4, 2, 2)
    assert plan.tp_groups == [[0, 1], [2, 3]] and plan.dp_groups == [[0, 2], [1, 3]] and plan.tp_within_node
    # vocab 1000 padded to lcm(128, 2) -> 1024; head dim D = 64 / 4 = 16
    assert plan.padded_vocab_size == 1024
    # per TP rank: qkv 64*(4+2*2)*16/2 = 4096, proj 4*16*64/2 = 2048, mlp 3*64*176/2 = 16896, norms 2*64
    assert plan.params.block == 4096 + 2048 + 16896 + 128 == 23168
    assert plan.params.embedding == 1024 * 64 // 2 == 32768 and plan.params.lm_head == 0  # tied
    assert plan.params.per_tp_rank == 32768 + 2 * 23168 + 64 == 79168
    # whole model: embedding 65536 + 2 * (8192 + 4096 + 33792 + 128) + final norm 64
    assert plan.params.total == 65536 + 2 * 46208 + 64 == 158016
    # batch: 16 sequences x 64 tokens; 16 / (micro 2 x DP 2) = 4 accumulation steps
    assert (plan.tokens_per_step, plan.grad_accumulation, plan.tokens_per_micro_batch_per_gpu) == (1024, 4, 128)
    mem = plan.memory_bytes
    # ZeRO-3, fp32: params 4 B, grads 4 B, Adam m+v 8 B per parameter (no fp32 master copy), all divided by DP 2
    assert (mem["parameters"], mem["gradients"], mem["optimizer"]) == (4 * 79168 // 2, 4 * 79168 // 2, 8 * 79168 // 2)
    # activations per token: norm 4*64 + 2*4*64 + 4 = 772; attention 4*(3*4+3*2)*16/2 + 4*4/2 = 584;
    # mlp 4*4*176/2 = 1408 -> block 2*772 + 584 + 1408 = 3536; output norm 772 + 17;
    # x 128 tokens, + RoPE cache 8*16*64, + padding mask 1024/2 (no checkpointing: nothing recomputed)
    assert mem["activations"] == 128 * (2 * 3536 + 772 + 17) + 8 * 16 * 64 + 512 == 1014912
    # logits: fp32, masked in place, turned by megatron's loss into the softmax and the gradient: 4 B x V/t
    assert mem["logits"] == 4 * 128 * 1024 // 2
    # buckets min(1000, P) * (4 + 4); ZeRO-3 gathers the embedding (the largest unit) + a 1000-element prefetch
    assert mem["buffers"] == 1000 * 8 and mem["zero3_gathered"] == 4 * (32768 + 1000)
    assert mem["reserve"] == 0 and mem["total"] == sum(v for k, v in mem.items() if k != "total")
    assert plan.fits and plan.errors == [] and plan.advice == []
    assert [w.split(":")[0] for w in plan.warnings] == ["communication-bound"]  # a tiny model on an H100's numbers
    assert plan.step_time_s > 0 and 0 <= plan.comm_fraction < 1


@pytest.mark.parametrize("overrides, expected", [  # bigtrain/plan/memory.py's table; n = P per TP rank, d = 2
    (["train.precision=bf16"], lambda n: (2 * n // 2, 4 * n // 2, 12 * n // 2)),  # ZeRO-3: 18 B / d
    (["train.precision=fp16"], lambda n: (2 * n // 2, 2 * n // 2, 12 * n // 2)),
    (["parallel.cpu_offload=true"], lambda n: (0, 0, 0)),  # ZeRO-3 offloads parameters and gradients too
    (["parallel.zero_stage=2", "train.precision=bf16"], lambda n: (2 * n, 2 * n // 2 + 4 * n // 2, 12 * n // 2)),
    (["parallel.zero_stage=2", "train.precision=bf16", "parallel.cpu_offload=true"], lambda n: (2 * n, 0, 0)),
    (["parallel.zero_stage=1", "train.precision=bf16"], lambda n: (2 * n, 6 * n, 12 * n // 2)),  # BF16_Optimizer
    (["parallel.zero_stage=1"], lambda n: (4 * n, 4 * n + 4 * n // 2, 12 * n // 2)),
    (["parallel.zero_stage=0"], lambda n: (4 * n, 4 * n, 8 * n)),
    (["parallel.zero_stage=0", "train.precision=bf16"], lambda n: (2 * n, 2 * n, 12 * n)),  # bf16 accumulation
])
def test_model_states_per_stage_precision_and_offload(overrides, expected):
    plan = plan_of(*overrides)
    mem = plan.memory_bytes
    assert (mem["parameters"], mem["gradients"], mem["optimizer"]) == expected(plan.params.per_tp_rank)


def test_activations_follow_checkpointing_sequence_parallelism_and_kernel():
    base = plan_of().memory_bytes["activations"]
    selective = plan_of("model.activation_checkpointing=selective").memory_bytes["activations"]
    full = plan_of("model.activation_checkpointing=full").memory_bytes["activations"]
    sp = plan_of("parallel.sequence_parallel=true").memory_bytes["activations"]
    math = plan_of("model.attention_backend=math").memory_bytes["activations"]
    assert full < selective < base and sp < base and math > base
    # the math kernel keeps the fp32 s x s scores: 4 * (heads / t) * s bytes per token and layer, minus what it
    # does not keep (the log-sum-exp, one of k's copies)
    assert math - base == 2 * 128 * (4 * 2 * 64 - 4 * 2 - 4 * 1 * 16)


def test_llama2_7b_parameter_count():
    cfg = load_config("debug", ["model.hidden_size=4096", "model.num_layers=32", "model.num_heads=32",
                                "model.num_kv_heads=32", "model.ffn_hidden_size=11008", "model.vocab_size=32000",
                                "model.tie_embeddings=false", "parallel.tensor_parallel=1"])
    assert param_counts(cfg.model, padded_vocab_size(32000, 128, 1), 1).total == 6_738_415_616  # HF's Llama-2-7b


@pytest.mark.parametrize("overrides, nodes, gpus, memory_gb, expected", [
    ([], 2, 2, 0.001, "does not fit: about"),
    ([], 1, 3, 80, "world size 3 must be divisible by parallel.tensor_parallel (2)"),
    (["train.global_batch_size=6"], 2, 2, 80,
     "train.global_batch_size (6) must be divisible by train.micro_batch_size (2) x data-parallel size (2) = 4"),
    (["parallel.tensor_parallel=4", "model.num_heads=6", "model.num_kv_heads=2", "model.hidden_size=96"], 1, 4, 80,
     "model.num_heads (6) must be divisible by parallel.tensor_parallel (4)"),
    (["parallel.tensor_parallel=4"], 1, 4, 80, "model.num_kv_heads (2) must be divisible by parallel.tensor_parallel (4)"),
    (["parallel.sequence_parallel=true", "model.seq_len=63"], 2, 2, 80, "parallel.sequence_parallel=true shards "
     "model.seq_len (63) over parallel.tensor_parallel (2): it must be divisible"),
])
def test_errors(overrides, nodes, gpus, memory_gb, expected):
    plan = plan_of(*overrides, nodes=nodes, gpus=gpus, memory_gb=memory_gb)
    assert any(expected in e for e in plan.errors), plan.errors
    if "does not fit" in expected:
        assert not plan.fits and plan.memory_bytes["total"] > 0.001 * GIB


@pytest.mark.parametrize("overrides, nodes, gpus, expected", [
    (["parallel.tensor_parallel=4"], 2, 2, "parallel.tensor_parallel (4) is larger than a node (2 GPUs)"),
    ([], 2, 3, "some tensor-parallel groups straddle two nodes"),
    ([], 1, 2, "ZeRO-3 with data-parallel size 1 partitions nothing"),
])
def test_warnings(overrides, nodes, gpus, expected):
    plan = plan_of(*overrides, nodes=nodes, gpus=gpus)
    assert any(expected in w for w in plan.warnings), plan.warnings


def test_advice_names_the_smallest_change_that_fits_and_never_one_already_on():
    big = ["model.hidden_size=4096", "model.num_layers=32", "model.num_heads=32", "model.num_kv_heads=8",
           "model.ffn_hidden_size=14336", "model.seq_len=8192", "model.vocab_size=128256", "train.precision=bf16",
           "train.micro_batch_size=2", "train.global_batch_size=64", "parallel.bucket_size=0"]
    plan = plan_of(*big, nodes=1, gpus=8)  # TP 2, ZeRO-3, no checkpointing: activations too large
    assert not plan.fits and plan.advice[0] == "to fit, set model.activation_checkpointing=selective"
    assert plan.advice[1].startswith("or use more nodes: --nodes 8")  # ZeRO-3 over 32 GPUs
    on = plan_of(*big, "model.activation_checkpointing=selective", "parallel.sequence_parallel=true",
                 "parallel.zero_stage=3", nodes=1, gpus=8, memory_gb=30)
    assert not on.fits and on.advice, on
    for already in ("activation_checkpointing=selective", "sequence_parallel=true", "zero_stage=3"):
        assert not any(already in a for a in on.advice), on.advice
    assert on.advice[0].startswith("to fit, set ")
    fixed = on.advice[0].removeprefix("to fit, set ").split()
    assert plan_of(*big, "model.activation_checkpointing=selective", "parallel.sequence_parallel=true",
                   "parallel.zero_stage=3", *fixed, nodes=1, gpus=8, memory_gb=30).fits


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0"], "error: --nodes must be positive, got 0"),
    (["--gpus-per-node", "-1"], "error: --gpus-per-node must be positive, got -1"),
    (["--gpu-memory-gb", "0"], "error: --gpu-memory-gb must be positive, got 0"),
    (["train.micro_batch_size=0"], "error: train.micro_batch_size must be positive, got 0"),
    (["parallel.tensor_parallel=3"], "error: model.num_heads (4) must be divisible by parallel.tensor_parallel (3)"),
    (["--gpu-memory-gb", "0.001"], "error: does not fit: about"),
])
def test_bad_layouts_exit_2_with_error_lines_and_no_traceback(args, message):
    flags, overrides = [a for a in args if "=" not in a], [a for a in args if "=" in a]
    proc = subprocess.run([sys.executable, "-m", "bigtrain.cli", "plan", "--config", "debug", "--nodes", "2",
                           "--gpus-per-node", "2", "--gpu-memory-gb", "80", *flags, "--json", *SMALL, *overrides], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr and proc.stderr.count(message) == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["errors"] and any(message.removeprefix("error: ") in e for e in out["errors"])
    assert '"fits"' not in proc.stdout or out["fits"] is False or message.endswith("(3)")


def test_cli_json_without_torch():
    code = ("import sys, io, json, contextlib; from bigtrain.cli import main; buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf): rc = main(sys.argv[1:])\n"
            "assert rc == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]\n"
            "print(buf.getvalue())")
    proc = subprocess.run([sys.executable, "-c", code, "plan", "--config", "debug", *SMALL, "--nodes", "2",
                           "--gpus-per-node", "2", "--gpu-memory-gb", "80", "--reserve-gb", "0", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["memory_bytes"] == plan_of().memory_bytes and out["tokens_per_step"] == 1024
    assert out["errors"] == [] and out["advice"] == [] and out["step_time_s"] > 0 and "comm_fraction" in out
    assert {"logits", "activations", "parameters", "gradients", "optimizer", "buffers", "reserve", "total"} <= set(
        out["memory_bytes"])
    text = subprocess.run([sys.executable, "-m", "bigtrain.cli", "plan", "--config", "debug", *SMALL, "--nodes", "2",
                           "--gpus-per-node", "2", "--gpu-memory-gb", "80"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(REPO)}).stdout
    assert "tensor parallel 2 x data parallel 2" in text and "1,024 tokens per step" in text and "fits" in text
