"""The CUDA path's decisions as pure functions, checked on CPU: device index, backend/kernel/precision
per device, Adam's step tensor placement, TF32, megatron's groups (issue 14)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from bigtrain.checkpoint.reshard import adam_step
from bigtrain.config.load import ConfigError, load_config
from bigtrain.config.validate import config_errors, device_errors, resolve_precision, validate
from bigtrain.parallel.engine import enable_tf32
from bigtrain.parallel.world import cuda_device_index, local_world_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import run_ranks  # noqa: E402
from tiny_run import MODEL_8_STEPS, tiny_shards  # noqa: E402


@pytest.fixture(scope="module")
def tiny_shards_dir(tmp_path_factory) -> Path:
    return tiny_shards(tmp_path_factory)


@pytest.mark.parametrize("local_rank, count, visible, local_world, want", [
    (0, 8, None, 8, 0), (5, 8, None, 8, 5),  # torchrun/deepspeed: every GPU of the node visible
    (3, 1, "3", 4, 0),  # srun --gpus-per-task=1 / --gpu-bind: each task sees its own GPU only
    (1, 4, "0,1,2,3", 4, 1),  # srun --gpus-per-node=4: every task sees the node's GPUs
    (0, 1, None, 1, 0), (0, 1, None, None, 0),  # one process, one GPU
])
def test_device_index_from_local_rank_and_visible_devices(local_rank, count, visible, local_world, want):
    assert cuda_device_index(local_rank, count, visible, local_world) == want


@pytest.mark.parametrize("local_rank, count, visible, local_world, message", [
    (4, 4, None, 8, r"LOCAL_RANK=4 but this process sees 4 CUDA devices \(CUDA_VISIBLE_DEVICES unset\)"),
    (2, 2, "0,1", 4, r"LOCAL_RANK=2 but this process sees 2 CUDA devices \(CUDA_VISIBLE_DEVICES='0,1'\)"),
    (1, 1, None, 2, "2 ranks on this host share its only CUDA device"),
    (0, 0, "", 1, "no CUDA device visible"),
])
def test_device_index_names_the_problem(local_rank, count, visible, local_world, message):
    with pytest.raises(RuntimeError, match=message):
        cuda_device_index(local_rank, count, visible, local_world)


def test_local_world_size_from_the_launcher():
    assert local_world_size({"LOCAL_WORLD_SIZE": "4"}) == 4
    assert local_world_size({"SLURM_NTASKS_PER_NODE": "2"}) == 2
    assert local_world_size({"SLURM_NTASKS_PER_NODE": "2(x3)"}) is None and local_world_size({}) is None


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu_and_explicit_values_stay():
    assert load_config(None).train.precision == "auto"
    auto = load_config("debug", ["train.precision=auto"])
    assert resolve_precision(auto, cuda=True).train.precision == "bf16"
    assert resolve_precision(auto, cuda=False).train.precision == "fp32"
    for explicit in ("fp32", "bf16", "fp16"):
        cfg = load_config("debug", [f"train.precision={explicit}"])
        assert resolve_precision(cfg, cuda=True).train.precision == explicit
        assert resolve_precision(cfg, cuda=False).train.precision == explicit


@pytest.mark.parametrize("overrides, cuda, message", [
    (["model.attention_backend=flash", "train.precision=fp32"], True,
     "model.attention_backend=flash computes only in bf16/fp16 on CUDA, but train.precision=fp32"),
    (["model.attention_backend=flash_attn", "train.precision=fp32"], True,
     "model.attention_backend=flash_attn computes only in bf16/fp16 on CUDA"),
    (["model.attention_backend=cudnn", "train.precision=fp32"], True, "model.attention_backend=cudnn computes only"),
    (["model.attention_backend=flash_attn"], False, "model.attention_backend=flash_attn needs CUDA"),
    (["model.attention_backend=efficient"], False, "model.attention_backend=efficient needs CUDA"),
    (["parallel.backend=gloo"], True, "parallel.backend=gloo on a machine with CUDA"),
    (["parallel.backend=nccl"], False, "parallel.backend=nccl needs CUDA"),
    (["train.precision=fp16"], False, "train.precision=fp16 needs CUDA"),
])
def test_kernel_precision_and_backend_checked_per_device_before_any_process_group(overrides, cuda, message):
    cfg = load_config("debug", overrides)
    assert any(message in e for e in device_errors(cfg, cuda)), device_errors(cfg, cuda)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(cfg, world_size=2, cuda=cuda)
    assert not any(message in e for e in config_errors(cfg, 2))  # a device check, not a config check


@pytest.mark.parametrize("overrides, cuda", [
    (["model.attention_backend=flash"], True),  # auto -> bf16 on CUDA: flash runs
    (["model.attention_backend=flash", "train.precision=bf16"], True),
    (["model.attention_backend=efficient", "train.precision=fp32"], True),
    (["model.attention_backend=flash"], False),  # PyTorch's CPU flash kernel computes fp32
    (["model.attention_backend=math", "parallel.backend=gloo"], False),
    (["parallel.backend=nccl"], True),
])
def test_what_each_device_runs_passes(overrides, cuda):
    assert device_errors(load_config("debug", overrides), cuda) == []


def test_adam_step_lives_where_torch_puts_it():
    """Fused/capturable AdamW reads ``step`` on the parameter's device (its CUDA kernel does not check)."""
    param = torch.empty(4, device="meta")  # a device that is not the CPU, without a GPU
    assert adam_step(7, param, {"fused": True}).device == param.device
    assert adam_step(7, param, {"capturable": True}).device == param.device
    assert adam_step(7, param, {"fused": False, "capturable": False}).device.type == "cpu"
    for fused in (True, False):  # the same device and dtype as torch's own first step creates
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.AdamW([p], fused=fused)
        p.grad = torch.ones(3)
        opt.step()
        ours = adam_step(1, p, opt.param_groups[0])
        theirs = opt.state[p]["step"]
        assert (ours.device, ours.dtype, ours.item()) == (theirs.device, theirs.dtype, theirs.item())


def test_tf32_only_for_fp32_on_cuda():
    assert not enable_tf32(torch.device("cpu"), "fp32")
    assert not enable_tf32(torch.device("cuda", 0), "bf16")


@pytest.mark.slow
def test_engines_make_no_gloo_groups_init_alike_over_zero_stages_and_keep_adam_step_on_device(tmp_path):
    """2 gloo ranks: no megatron gloo side groups; ZeRO 0/1/3 (fp32 and bf16) start from the same
    weights (exactly); a ZeRO-1 checkpoint resharded into ZeRO-3 with fused AdamW keeps every step
    tensor on its parameter's device and the next step runs."""
    run_ranks("tests/device_runs.py", 2, [tmp_path], timeout=300)
    report = json.loads((tmp_path / "result.json").read_text())
    assert report["gloo_groups"] == []
    assert report["fp32"] == {"zero1": 0.0, "zero3": 0.0}
    assert report["bf16"] == {"zero1": 0.0, "zero3": 0.0}
    reshard = report["reshard"]
    assert reshard["adam_step"] == 2 and reshard["steps_after"] == 3
    assert reshard["placement"] and all(step == param and fused for step, param, fused in reshard["placement"])


@pytest.mark.slow
def test_one_collective_per_step_from_bigtrain(tmp_path, tiny_shards_dir):
    """2 ranks, TP=1 x DP=2, ZeRO-3, accumulation 2, the default callbacks (metrics, signals, health,
    data metrics, NaN guard): bigtrain issues exactly one collective per step (the agreement), where it
    used to issue five (loader, loss, faults, metrics, signals). DeepSpeed's own are not counted."""
    out = tmp_path / "counts.json"
    run_ranks("tests/collective_count.py", 2, [out, "--", "--config", "debug", *MODEL_8_STEPS, "train.steps=5",
                                                "checkpoint.every=0", "checkpoint.save_final=false",
                                                f"data.path={tiny_shards_dir}", f"run.dir={tmp_path / 'run'}"],
              timeout=300)
    counts = json.loads(out.read_text())
    assert counts["per_step"] == [1, 1, 1, 1], counts
    assert all(names == ["all_gather_into_tensor"] for names in counts["names"]), counts
