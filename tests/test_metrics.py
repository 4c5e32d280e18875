"""MFU's FLOP model and peaks, the progress display, metric sinks and the logging config (one process)."""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

import pytest
import torch

from bigtrain.config.load import ConfigError, load_config
from bigtrain.config.validate import validate
from bigtrain.config.arithmetic import matmul_params, train_flops_per_token
from bigtrain.train.flops import Peak, mfu, peak_flops, table_peak
from bigtrain.train.metrics import MetricsLogger
from bigtrain.train.progress import Console, render_bar
from bigtrain.train.sinks import TensorBoardSink, WandbSink, build_sinks, scalars


def test_flops_per_token_of_the_debug_model_by_hand():
    model = load_config("debug").model  # C=128, L=4, H=4, G=2 (D=32), F=352, T=128; embedded vocabulary 4096
    qkv = 128 * (4 + 2 * 2) * 32  # 32,768
    attn_out = 4 * 32 * 128  # 16,384
    mlp = 128 * 2 * 352 + 352 * 128  # 90,112 + 45,056
    n = 4 * (qkv + attn_out + mlp) + 128 * 4096  # 737,280 + 524,288 (output projection; tied, still a matmul)
    assert n == 1_261_568 == matmul_params(model, 4096)
    assert train_flops_per_token(model, 4096) == 6 * 1_261_568 + 12 * 4 * 128 * 128 == 8_355_840


def test_flops_per_token_of_the_test_model_by_hand():
    model = load_config(None, ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4",
                               "model.num_kv_heads=2", "model.ffn_hidden_size=176", "model.seq_len=64"]).model
    # per layer: qkv 64*8*16 = 8,192; out 4,096; fc1 64*352 = 22,528; fc2 11,264 -> 46,080; x2 + 64*1024
    assert matmul_params(model, 1024) == 157_696
    assert train_flops_per_token(model, 1024) == 6 * 157_696 + 12 * 2 * 64 * 64 == 1_044_480


def test_peak_table_per_device_and_precision():
    assert table_peak("NVIDIA H100 80GB HBM3", "bf16").flops == 989e12
    assert table_peak("NVIDIA H100 80GB HBM3", "fp32").flops == 67e12
    assert table_peak("NVIDIA H100 PCIe", "bf16").flops == 756e12
    assert table_peak("NVIDIA H200", "bf16").flops == 989e12
    assert table_peak("NVIDIA A100-SXM4-80GB", "bf16").flops == 312e12
    assert table_peak("NVIDIA L40S", "bf16").flops == 362e12 and table_peak("NVIDIA L4", "bf16").flops == 121e12
    assert table_peak("Tesla V100-SXM2-32GB", "bf16") is None  # no bf16 tensor cores: measure instead
    assert table_peak("Some Future GPU", "bf16") is None
    assert "H100" in table_peak("NVIDIA H100 80GB HBM3", "bf16").source


def test_peak_on_cpu_is_measured_in_the_run_precision_and_says_so():
    assert peak_flops("cpu", "fp32", measure_unknown=False) is None
    for precision in ("fp32", "bf16"):
        peak = peak_flops("cpu", precision)
        assert peak.source.startswith(f"measured: 512x512 {precision} GEMM on cpu")
        assert 1e8 < peak.flops < 1e14


def test_mfu_is_achieved_model_flops_over_peak():
    assert mfu(1000.0, 8_355_840, Peak(989e12, "table")) == pytest.approx(1000 * 8_355_840 / 989e12)


def test_progress_bar_only_on_a_terminal():
    assert render_bar(150, 600, 83) == f"[{'#' * 8}{'.' * 22}] 150/600  25.0% | eta 0:01:23"
    piped = io.StringIO()
    console = Console(piped)  # StringIO is not a TTY: plain lines only
    console.progress(1, 10, 5.0)
    console.print("step      1/10 | loss 1.0")
    console.close()
    assert piped.getvalue() == "step      1/10 | loss 1.0\n"
    tty = io.StringIO()
    console = Console(tty, bar=True)
    console.progress(1, 10, 5.0)
    console.print("step      1/10 | loss 1.0")
    console.close()
    out = tty.getvalue()
    assert "1/10" in out and "\r\x1b[K" in out
    assert "\nstep      1/10 | loss 1.0\n" in "\n" + out.split("\r\x1b[K", 1)[1]  # the log line stays whole


def test_log_line_is_parseable():
    row = {"step": 7, "loss": 2.5, "lr": 1e-3, "grad_norm": None, "tokens_per_sec": 1000.0, "mfu": 0.25,
           "step_time": 0.5, "mem_gib": 1.0, "skipped": True, "skipped_steps": 1}
    line = MetricsLogger.format(row, 100, 61.0)
    assert line.startswith("step      7/100 | loss 2.5000 | lr 1.00e-03 | grad_norm nan | 1,000 tok/s | mfu 25.0%")
    assert line.endswith("eta 0:01:01 | SKIPPED (1 total)")


def test_sink_scalars_put_validation_under_val():
    row = {"step": 4, "loss": 2.0, "val_loss": 1.5, "val_ppl": math.exp(1.5), "peak_source": "measured",
           "grad_norm": None, "skipped": False}
    assert scalars(row) == {"train/loss": 2.0, "val/loss": 1.5, "val/ppl": math.exp(1.5), "train/skipped": 0.0}


def test_wandb_is_off_by_default_and_validated_when_on(tmp_path):
    cfg = load_config("debug", [f"run.dir={tmp_path}"])
    assert cfg.log.wandb is False
    assert [type(s) for s in build_sinks(cfg)] == [TensorBoardSink]  # wandb never imported on this path
    on = load_config("debug", [f"run.dir={tmp_path}", "log.wandb=true"])
    if importlib.util.find_spec("wandb") is None:  # CI installs bigtrain[dev,plot], without wandb
        with pytest.raises(ConfigError, match=r"log.wandb=true but the wandb package is not installed"):
            validate(on)
    else:
        validate(on)
        assert [type(s) for s in build_sinks(on)] == [TensorBoardSink, WandbSink]
    with pytest.raises(ConfigError, match="log.wandb: expected true or false"):
        load_config("debug", ["log.wandb=maybe"])


WANDB_RUN = r"""
import json, sys
from bigtrain.config.load import load_config
from bigtrain.train.sinks import WandbSink
cfg = load_config("debug", [f"run.dir={sys.argv[1]}", "log.wandb=true", "run.name=wb"])
out = []
for rows in ([{"step": 1, "loss": 3.5, "val_loss": 3.0, "tag": "x"}, {"step": 2, "loss": 3.25}], [{"step": 3, "loss": 3.0}]):
    sink = WandbSink(cfg)
    sink.open(rows[0]["step"] - 1)  # the second open is a restart of the same bigtrain run
    for row in rows:
        sink.log(row, row["step"])
    out.append({"id": sink.run.id, "name": sink.run.name, "offline": sink.run.offline,
                "summary": {k: sink.run.summary.get(k) for k in ("train/loss", "val/loss")}})
    sink.close()
print(json.dumps(out))
"""


def test_wandb_sink_logs_offline_and_a_restart_continues_the_same_run(tmp_path):
    """The real wandb in offline mode (no network): rows land in the run; a restart reuses its id."""
    pytest.importorskip("wandb", reason="wandb is in the dev extra; install bigtrain[dev]")
    import json
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", WANDB_RUN, str(run_dir)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = json.loads(proc.stdout.strip().splitlines()[-1])
    run_id = (run_dir / "wandb_id").read_text().strip()
    assert first["id"] == second["id"] == run_id and first["name"] == "wb" and first["offline"]
    assert first["summary"] == {"train/loss": 3.25, "val/loss": 3.0}  # the last value of each scalar
    assert second["summary"]["train/loss"] == 3.0  # the restart logs into the same run
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))) >= 1


def test_peak_memory_kind_on_this_machine():
    from bigtrain.train.metrics import peak_memory

    gib, kind = peak_memory(torch.device("cpu"))
    assert kind == "rss_peak" and 0.01 < gib < 64


def test_resume_drops_rows_after_the_checkpoint_and_a_torn_last_row(tmp_path):
    import json

    from bigtrain.train.metrics import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    truncate_metrics(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
