"""``bigtrain plan``: numbers against hand-computed values, the real model, and the warnings.

- a small TP2 x DP2 ZeRO-3 layout, every number worked out by hand below;
- the parameter count equals the real bigtrain model's (and Llama-2-7B's published 6,738,415,616);
- the activation formula equals the bytes autograd really saves for the bigtrain model (fp32, bf16);
- warnings: does not fit, TP larger than a node, TP groups straddling nodes, batch not divisible,
  heads not divisible, ZeRO without data parallelism; the CLI answers without importing torch.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from launch import REPO

from bigtrain.config.load import load_config
from bigtrain.config.arithmetic import padded_vocab_size, param_counts
from bigtrain.plan import GIB, make_plan, saved_activation_bytes

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
    # ZeRO-3, fp32: params 4 B, grads 4 B, Adam m+v 8 B per parameter, all divided by DP 2
    assert (mem["parameters"], mem["gradients"], mem["optimizer"]) == (4 * 79168 // 2, 4 * 79168 // 2, 8 * 79168 // 2)
    # activations per token: norm 4*64 + 2*4*64 + 4 = 772; attention 4*(3*4+3*2)*16/2 + 4*4/2 = 584;
    # mlp 4*4*176/2 = 1408 -> block 2*772 + 584 + 1408 = 3536; output 772 + 4*1024/2 + 17 = 2837;
    # x 128 tokens, + RoPE cache 8*16*64, + padding mask 1024/2, + fp32 logits gradient 4*128*1024/2
    assert mem["activations"] == 128 * (2 * 3536 + 2837) + 8 * 16 * 64 + 512 + 4 * 128 * 1024 // 2 == 1539200
    # buckets min(1000, P) * (4 + 4), + the embedding gathered under ZeRO-3 (the largest unit): 4 * 32768
    assert mem["buffers"] == 1000 * 8 + 4 * 32768
    assert mem["reserve"] == 0 and mem["total"] == sum(v for k, v in mem.items() if k != "total")
    assert plan.fits and plan.warnings == []


def test_precision_stage_and_offload_change_memory_as_stated():
    n = plan_of().params.per_tp_rank
    bf16 = plan_of("train.precision=bf16").memory_bytes
    assert (bf16["parameters"], bf16["gradients"], bf16["optimizer"]) == (2 * n // 2, 4 * n // 2, 12 * n // 2)
    zero1 = plan_of("parallel.zero_stage=1").memory_bytes
    assert (zero1["parameters"], zero1["gradients"], zero1["optimizer"]) == (4 * n, 4 * n, 8 * n // 2)
    zero0 = plan_of("parallel.zero_stage=0").memory_bytes
    assert zero0["optimizer"] == 8 * n
    fp16 = plan_of("train.precision=fp16").memory_bytes
    assert (fp16["parameters"], fp16["gradients"], fp16["optimizer"]) == (2 * n // 2, 2 * n // 2, 12 * n // 2)
    bf16_zero0 = plan_of("train.precision=bf16", "parallel.zero_stage=0").memory_bytes  # DeepSpeed: bf16 accumulation
    assert (bf16_zero0["parameters"], bf16_zero0["gradients"], bf16_zero0["optimizer"]) == (2 * n, 2 * n, 12 * n)
    offload = plan_of("parallel.cpu_offload=true").memory_bytes
    assert offload["optimizer"] == 0 and offload["parameters"] == 0


def test_llama2_7b_parameter_count():
    cfg = load_config("debug", ["model.hidden_size=4096", "model.num_layers=32", "model.num_heads=32",
                                "model.num_kv_heads=32", "model.ffn_hidden_size=11008", "model.vocab_size=32000",
                                "model.tie_embeddings=false", "parallel.tensor_parallel=1"])
    assert param_counts(cfg.model, padded_vocab_size(32000, 128, 1), 1).total == 6_738_415_616  # HF's Llama-2-7b


MEASURE = r"""
import json, os, sys, torch, torch.distributed as dist
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # one process: no port
from megatron.core import ModelParallelConfig, parallel_state
parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
from bigtrain.config.load import load_config
from bigtrain.model.llama import LlamaModel
out = {}
for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
    cfg = load_config("debug", json.loads(sys.argv[1]))
    tp = ModelParallelConfig(tensor_model_parallel_size=1, use_cpu_initialization=True, params_dtype=torch.float32,
                             sequence_parallel=False, gradient_accumulation_fusion=False)
    model = LlamaModel(cfg.model, cfg.model.vocab_size, tp).to(dtype)
    tokens = torch.randint(0, cfg.model.vocab_size, (cfg.train.micro_batch_size, cfg.model.seq_len + 1))
    saved = {}
    def pack(t):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(tokens[:, :-1], tokens[:, 1:]).mean()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    out[precision] = sum(n for ptr, n in saved.items() if ptr not in weights)
    out["params"] = sum(p.numel() for p in model.parameters())
print(json.dumps(out))
"""


def test_activation_formula_and_param_count_match_the_real_model():
    overrides = ["model.hidden_size=128", "model.num_layers=3", "model.num_heads=4", "model.num_kv_heads=2",
                 "model.ffn_hidden_size=352", "model.seq_len=64", "model.vocab_size=1000", "train.micro_batch_size=2",
                 "parallel.tensor_parallel=1"]
    proc = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(overrides)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    cfg = load_config("debug", overrides)
    vpad = padded_vocab_size(1000, 128, 1)
    assert measured["params"] == param_counts(cfg.model, vpad, 1).total
    for precision, act_bytes in (("fp32", 4), ("bf16", 2)):
        predicted = saved_activation_bytes(cfg.model, 1000, vpad, 1, act_bytes, micro_batch=2)
        # exact up to a few scalars (the loss, reduction outputs): 64 bytes on ~5 MB
        assert 0 <= measured[precision] - predicted <= 64, (precision, measured[precision], predicted)


@pytest.mark.parametrize("overrides, nodes, gpus, memory_gb, expected", [
    ([], 2, 2, 0.001, "does not fit: about"),
    (["parallel.tensor_parallel=4"], 2, 2, 80, "parallel.tensor_parallel (4) is larger than a node (2 GPUs)"),
    ([], 1, 3, 80, "world size 3 must be divisible by parallel.tensor_parallel (2)"),
    ([], 2, 3, 80, "some tensor-parallel groups straddle two nodes"),
    (["train.global_batch_size=6"], 2, 2, 80,
     "train.global_batch_size (6) must be divisible by train.micro_batch_size (2) x data-parallel size (2) = 4"),
    (["parallel.tensor_parallel=4", "model.num_heads=6", "model.num_kv_heads=2", "model.hidden_size=96"], 1, 4, 80,
     "model.num_heads (6) must be divisible by parallel.tensor_parallel (4)"),
    (["parallel.tensor_parallel=4"], 1, 4, 80, "model.num_kv_heads (2) must be divisible by parallel.tensor_parallel (4)"),
    ([], 1, 2, 80, "ZeRO-3 with data-parallel size 1 partitions nothing"),
])
def test_warnings(overrides, nodes, gpus, memory_gb, expected):
    plan = plan_of(*overrides, nodes=nodes, gpus=gpus, memory_gb=memory_gb)
    assert any(expected in w for w in plan.warnings), plan.warnings
    if "does not fit" in expected:
        assert not plan.fits and plan.memory_bytes["total"] > 0.001 * GIB


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
    text = subprocess.run([sys.executable, "-m", "bigtrain.cli", "plan", "--config", "debug", *SMALL, "--nodes", "2",
                           "--gpus-per-node", "2", "--gpu-memory-gb", "80"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(REPO)}).stdout
    assert "tensor parallel 2 x data parallel 2" in text and "1,024 tokens per step" in text and "fits" in text
