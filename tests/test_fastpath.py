"""CPU checks of the fast-path switches (issue 7): each keeps the plain path's function.

- attention backends: the same softmax(QK^T/sqrt(D) + causal mask)V as an explicit reference (1e-5, fp32);
- activation checkpointing: backward recomputes what the mode says (so it is really on), same gradients;
- through the real stack (tests/fastpath_runs.py: build_engine, DeepSpeed ZeRO-3 over megatron layers,
  2 gloo ranks, the real loader): every switch trains to the plain run's losses, 4 steps;
  tolerances are stated at the comparisons;
- torch.compile: a real capability check (inductor's C++ compiler lookup) decides whether it can run.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from launch import run_ranks
from torch.utils._python_dispatch import TorchDispatchMode

from bigtrain.config.load import ConfigError, load_config
from bigtrain.config.schema import ModelConfig
from bigtrain.config.validate import config_errors
from bigtrain.model.attention import causal_attention
from bigtrain.parallel.optimize import compile_problem, optimize_model
from bigtrain.train.run import check_compile_supported

FP32_TOL = 1e-5  # measured: <= 1e-6 (math vs flash kernels sum in another order; compile fuses)
BF16_TOL = 2e-2  # bf16 rounding of one 2-layer model's loss after 4 updates


def reference_attention(q, k, v):
    """(B, H, T, D) with k, v (B, G, T, D): explicit masked softmax in float64."""
    k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1).double() for t in (k, v))
    scores = q.double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).triu(1)
    return (scores.masked_fill(mask, -math.inf).softmax(-1) @ v).float()


def test_attention_backends_compute_the_same_function_and_refuse_kernels_cpu_lacks():
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 8, 32, 16, generator=gen), torch.randn(2, 4, 32, 16, generator=gen), \
        torch.randn(2, 4, 32, 16, generator=gen)  # grouped-query: 8 query heads, 4 key/value heads
    want = reference_attention(q, k, v)
    for backend in ("auto", "math", "flash"):
        torch.testing.assert_close(causal_attention(q, k, v, backend), want, atol=FP32_TOL, rtol=0)
    for backend in ("efficient", "cudnn"):  # CUDA-only kernels: an error, never a silent fallback
        with pytest.raises(RuntimeError):
            causal_attention(q, k, v, backend)


class OpCounter(TorchDispatchMode):
    """Counts aten ops by name (overload packet) while active."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def backward_ops_and_grads(mode: str) -> tuple[dict[str, int], list[torch.Tensor]]:
    from bigtrain.bench.bare import BareLlama

    cfg = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_hidden_size=176,
                      seq_len=32, vocab_size=256)
    torch.manual_seed(0)
    model = optimize_model(BareLlama(cfg, 256), activation_checkpointing=mode)
    tokens = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(1))
    loss = model(tokens[:, :-1], tokens[:, 1:]).mean()
    with OpCounter() as ops:
        loss.backward()
    return ops.counts, [p.grad for p in model.parameters()]


def test_activation_checkpointing_recomputes_what_its_mode_says_and_gives_the_same_gradients():
    plain, grads = backward_ops_and_grads("none")
    selective, sel_grads = backward_ops_and_grads("selective")
    full, full_grads = backward_ops_and_grads("full")
    # backward of the plain model runs no rsqrt (RMSNorm's forward op); recomputation does
    assert plain.get("rsqrt", 0) == 0 and selective.get("rsqrt", 0) > 0 and full.get("rsqrt", 0) > 0
    # selective keeps the matmul outputs (no forward matmul re-run); full re-runs them
    assert selective.get("mm", 0) == plain.get("mm", 0) < full.get("mm", 0), (plain, selective, full)
    for got in (sel_grads, full_grads):
        for a, b in zip(got, grads):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # recomputation repeats the same ops


def test_fast_path_keys_are_validated_by_name():
    cfg = load_config(None, ["model.attention_backend=fast", "model.activation_checkpointing=some",
                             "parallel.max_live_parameters=0", "parallel.prefetch_bucket_size=-1"])
    text = "\n".join(config_errors(cfg))
    for key in ("model.attention_backend", "model.activation_checkpointing", "parallel.max_live_parameters",
                "parallel.prefetch_bucket_size"):
        assert key in text


def test_zero3_knobs_reach_the_deepspeed_config():
    from bigtrain.parallel.engine import build_ds_config

    cfg = load_config(None, ["parallel.zero_stage=3", "parallel.prefetch_bucket_size=12345",
                             "parallel.max_live_parameters=777", "parallel.max_reuse_distance=888",
                             "parallel.overlap_comm=true", "parallel.contiguous_gradients=false",
                             "train.global_batch_size=4", "train.micro_batch_size=2"])
    zero = build_ds_config(cfg, dp_size=2, on_gpu=False)["zero_optimization"]
    assert (zero["stage3_prefetch_bucket_size"], zero["stage3_max_live_parameters"],
            zero["stage3_max_reuse_distance"], zero["overlap_comm"], zero["contiguous_gradients"]) == \
        (12345, 777, 888, True, False)
    auto = build_ds_config(load_config(None, ["train.global_batch_size=4", "train.micro_batch_size=2"]), 2, False)
    assert auto["zero_optimization"]["overlap_comm"] is False  # auto: no second stream to overlap on a CPU
    assert build_ds_config(cfg, 2, on_gpu=True)["zero_optimization"]["overlap_comm"] is True


def test_compile_capability_check_reports_a_missing_compiler():
    from torch._inductor import config as inductor_config

    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",)}):  # what inductor would search for
        problem = compile_problem("cpu")
        cfg = load_config(None, ["train.compile=true"])
        assert config_errors(cfg) == []  # validation (login nodes too) never probes for a compiler
        if not torch.cuda.is_available():
            with pytest.raises(ConfigError, match="train.compile=true: torch.compile on CPU needs a C"):
                check_compile_supported(cfg)  # the training process does, before any process group
    assert problem and "C++ compiler" in problem


def fastpath(tmp_path, shards, *groups: list[str], ranks: int = 2) -> dict:
    args = [tmp_path / "out.json", shards]
    for i, group in enumerate(groups):
        args += (["--"] if i else []) + group
    run_ranks("tests/fastpath_runs.py", ranks, args, timeout=600)
    return json.loads((tmp_path / "out.json").read_text())


def assert_parity(runs: dict, base: str, tol: float) -> None:
    want = runs[base]["losses"]
    for name, run in runs.items():
        diff = max(abs(a - b) for a, b in zip(run["losses"], want))
        assert diff <= tol, f"{name}: losses {run['losses']} vs {base} {want} (max |diff| {diff:.2e} > {tol})"


@pytest.mark.slow
def test_every_switch_keeps_loss_parity_through_zero3_on_two_ranks(tmp_path, shards):
    fp32 = fastpath(
        tmp_path, shards, ["plain"], ["math", "model.attention_backend=math"],
        ["flash", "model.attention_backend=flash"], ["ac_full", "model.activation_checkpointing=full"],
        ["ac_selective", "model.activation_checkpointing=selective"],
        ["zero3_knobs", "parallel.prefetch_bucket_size=1000", "parallel.max_live_parameters=5000",
         "parallel.max_reuse_distance=1000", "parallel.overlap_comm=true", "parallel.contiguous_gradients=false",
         "parallel.sub_group_size=1000"],
        ["unfused_adam", "train.fused_adam=false"],
        ["bf16", "train.precision=bf16"],
        ["bf16_fast", "train.precision=bf16", "model.activation_checkpointing=selective",
         "model.attention_backend=flash"])
    assert all(not math.isnan(x) for run in fp32.values() for x in run["losses"])
    # ZeRO-3 must leave torch alone: no process-wide F.linear swap (ds_configs/zero3.json, memory_efficient_linear)
    assert not any(run["patched_torch_linear"] for run in fp32.values())
    assert_parity({k: v for k, v in fp32.items() if not k.startswith("bf16")}, "plain", FP32_TOL)
    assert_parity({k: v for k, v in fp32.items() if k.startswith("bf16")}, "bf16", BF16_TOL)
    assert abs(fp32["bf16"]["losses"][0] - fp32["plain"]["losses"][0]) <= BF16_TOL


@pytest.mark.slow
def test_compile_keeps_loss_parity_through_zero3(tmp_path, shards):
    problem = compile_problem("cpu")
    if problem:
        pytest.skip(f"torch.compile cannot run on this machine: {problem}")
    runs = fastpath(tmp_path, shards, ["plain"], ["compile", "train.compile=true"])
    assert runs["compile"]["compiled_graphs"] >= 3, runs  # RMSNorm, attention core, SwiGLU really compiled
    assert runs["plain"]["compiled_graphs"] == 0
    assert_parity(runs, "plain", FP32_TOL)
