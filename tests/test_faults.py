"""Fault tolerance through the real entry point on 2 gloo ranks (DP2, ZeRO-3, fp32, tiny Llama).

Every run is compared with one uninterrupted reference run (tests/fault_runs.py). Signals and
SIGKILLs are delivered at exactly known points with the testing hold of bigtrain/train/inject.py:
the ranks pause (``after_step:N`` or ``in_save:N``), the test acts, then releases them, so nothing
depends on timing. Exit codes are read from torchrun's per-rank failure report.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import pytest
import torch

from fault_runs import STEPS, launch, read_metrics, reference_run

pytestmark = pytest.mark.slow
COMPARED = ("loss", "grad_norm", "lr", "val_loss")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return reference_run(tmp_path_factory)


def assert_same_metrics(reference: Path, run: Path) -> None:
    ref, got = read_metrics(reference), read_metrics(run)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for a, b in zip(ref, got):
        assert {k: a.get(k) for k in COMPARED} == {k: b.get(k) for k in COMPARED}, a["step"]


def checkpoint_steps(run: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in (run / "checkpoints").glob("step_*"))


def wait_held(job, hold_dir: Path, point: str, ranks: int = 2) -> None:
    job.wait_for(lambda: all((hold_dir / f"{point}.rank{r}").exists() for r in range(ranks)), 300,
                 f"every rank to reach {point}")


def release(hold_dir: Path, point: str) -> None:
    (hold_dir / f"{point}.release").touch()


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from bigtrain.checkpoint.manager import read_meta
    from bigtrain.checkpoint.zero_reader import read_tp_shards

    return read_tp_shards(folder, read_meta(folder))[0]


def adam_state(folder: Path, dp_rank: int) -> list[torch.Tensor]:
    from bigtrain.checkpoint.zero_reader import load_file

    state = load_file(folder / f"zero_pp_rank_{dp_rank}_mp_rank_00_optim_states.pt")["optimizer_state_dict"]
    inner = state["optimizer_state_dict"]["state"]
    return [t for k in sorted(inner) for t in (inner[k]["exp_avg"], inner[k]["exp_avg_sq"], inner[k]["step"])]


def test_metrics_rows_carry_the_contract_and_mfu(reference):
    rows = read_metrics(reference)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    flops_per_token = 1_044_480  # hand computation for this model: see test_metrics.py
    for r in rows:
        for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "tokens_per_sec_per_device", "step_time",
                    "data_wait", "mfu", "mem_gib", "skipped_steps", "consecutive_skips"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]), (r["step"], key, r.get(key))
        assert r["tokens_per_sec"] == pytest.approx(8 * 64 / r["step_time"])
        assert r["tokens_per_sec_per_device"] == pytest.approx(r["tokens_per_sec"] / 2)
        assert r["mfu"] == pytest.approx(r["tokens_per_sec_per_device"] * flops_per_token / (r["peak_tflops"] * 1e12))
        assert r["peak_source"].startswith("measured: 512x512 fp32 GEMM on cpu")  # no GPU: measured, and says so
        assert r["mem_kind"] == "rss_peak" and 0.05 < r["mem_gib"] < 8
        assert (r["skipped"], r["skipped_steps"], r["consecutive_skips"]) == (False, 0, 0)
        assert r["consumed_tokens"] == r["step"] * 8 * 64


def test_validation_every_4_steps_matches_an_independent_computation(reference):
    from bigtrain.convert.load import load_model
    from bigtrain.data.reader import ShardReader
    from bigtrain.data.manifest import Manifest

    rows = read_metrics(reference)
    val = {r["step"]: r for r in rows if "val_loss" in r}
    assert sorted(val) == [4, 8, 12]  # eval.every=4 (and the last step)
    for r in val.values():
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
        assert r["val_tokens"] == 2 * 8 * 64  # eval.batches=2 global batches of 8 x 64 tokens
    # The step-12 checkpoint holds the weights evaluated at step 12: recompute on 1 process, plain torch.
    model, meta = load_model(reference / "checkpoints" / "step_00000012")
    reader = ShardReader(Manifest.load(Path(meta["data"]["sources"][0]["path"])), "val")
    tokens = reader.read_many(list(range(16)))
    with torch.no_grad():
        losses = model(tokens[:, :-1], tokens[:, 1:])
    assert abs(losses.double().mean().item() - val[12]["val_loss"]) <= 1e-5


def test_tensorboard_gets_train_and_val_scalars(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(reference / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/grad_norm", "train/mfu", "train/tokens_per_sec", "val/loss", "val/ppl"} <= tags
    assert [e.step for e in events.Scalars("val/loss")] == [4, 8, 12]
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, STEPS + 1))


def test_retention_keeps_last_2_plus_every_4th(reference):
    # checkpoint.every=2, keep=2, keep_every=4 over 12 steps: 10 and 12 (last two) + 4 and 8
    assert checkpoint_steps(reference) == [4, 8, 10, 12]
    assert (reference / "checkpoints" / "latest").read_text().strip() == "step_00000012"
    assert not list((reference / "checkpoints").glob(".trash-*"))


def test_checkpoint_describes_itself(reference):
    from safetensors import safe_open

    folder = reference / "checkpoints" / "step_00000012"
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["step"], meta["consumed_samples"], meta["consumed_tokens"]) == (12, 96, 96 * 64)
    assert meta["world_size"] == 2 and meta["health"]["skipped_steps"] == 0
    assert {"torch", "deepspeed", "megatron-core", "python"} <= set(meta["versions"])
    assert (folder / "config.yaml").exists() and (folder / "tokenizer" / "tokenizer.model").exists()
    states = []
    for rank in range(2):
        with safe_open(str(folder / meta["rng"].format(rank=rank)), framework="pt") as f:
            assert {"torch_cpu", "numpy_key"} <= set(f.keys())
            assert json.loads(f.metadata()["python"])["version"] == 3
            states.append(f.get_tensor("torch_cpu"))
    assert states[0].dtype == torch.uint8 and states[0].numel() > 1000


def test_sigusr1_saves_and_exits_75_and_the_resumed_run_is_identical(reference, shards, tmp_path):
    run, holds = tmp_path / "run", tmp_path / "holds"
    env = {"BIGTRAIN_TEST_HOLD": "after_step:4,in_save:5", "BIGTRAIN_TEST_HOLD_DIR": str(holds)}
    job = launch(run, shards, env=env)
    wait_held(job, holds, "after_step:4")
    job.signal_ranks(signal.SIGUSR1, ranks=[1])  # one rank is signalled; the ranks agree to stop after step 5
    release(holds, "after_step:4")
    wait_held(job, holds, "in_save:5")  # both ranks wrote their files; the checkpoint is not complete yet
    job.signal_ranks(signal.SIGUSR1)  # a second (and third) signal during the save
    job.signal_ranks(signal.SIGTERM)
    time.sleep(0.5)  # let the handlers run while the save is held
    release(holds, "in_save:5")
    assert job.wait() != 0
    assert job.rank_exit_codes() == {0: 75, 1: 75}, job.tail()
    assert "stopping after step 5: received a signal on another rank" in job.tail()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000005"
    assert json.loads((run / "checkpoints" / "step_00000005" / "meta.json").read_text())["step"] == 5
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]

    resumed = launch(run, shards, name="resume")
    assert resumed.wait() == 0, resumed.tail()
    assert "resumed from" in resumed.tail() and "at step 5" in resumed.tail()
    assert "RNG states not restored" not in resumed.tail()  # every rank restored its own generators
    assert_same_metrics(reference, run)


def test_kill_during_save_resumes_from_the_previous_checkpoint(reference, shards, tmp_path):
    run, holds = tmp_path / "run", tmp_path / "holds"
    env = {"BIGTRAIN_TEST_HOLD": "in_save:6", "BIGTRAIN_TEST_HOLD_DIR": str(holds)}
    job = launch(run, shards, env=env)
    wait_held(job, holds, "in_save:6")
    job.kill()  # SIGKILL torchrun and both ranks while step 6's checkpoint is half written
    partial = run / "checkpoints" / "step_00000006"
    assert (partial / "zero_pp_rank_1_mp_rank_00_optim_states.pt").exists() and not (partial / "meta.json").exists()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"

    resumed = launch(run, shards, name="resume")
    assert resumed.wait() == 0, resumed.tail()
    assert "at step 4" in resumed.tail()
    assert_same_metrics(reference, run)
    assert checkpoint_steps(run) == [4, 8, 10, 12]  # step 6 was redone and later retired, like the reference's


def test_injected_nan_skips_the_update_and_consecutive_nans_stop_with_a_checkpoint(reference, shards, tmp_path):
    run = tmp_path / "run"
    env = {"BIGTRAIN_INJECT_NAN_STEPS": "3,7-9"}  # NaN loss on rank 0 only: the ranks must agree to skip
    job = launch(run, shards, "checkpoint.every=1", "checkpoint.keep=0", "checkpoint.keep_every=0",
                 "train.max_consecutive_skips=3", env=env)
    job.wait()
    assert job.rank_exit_codes() == {0: 3, 1: 3}, job.tail()
    assert "error: train.max_consecutive_skips=3: steps 7-9" in job.tail()
    assert "holds the weights of step 6" in job.tail()
    rows = {r["step"]: r for r in read_metrics(run)}
    ref = {r["step"]: r for r in read_metrics(reference)}
    assert sorted(rows) == list(range(1, 10))
    assert [rows[s]["loss"] for s in (1, 2)] == [ref[s]["loss"] for s in (1, 2)]
    counters = {s: (r["skipped"], r["skipped_steps"], r["consecutive_skips"]) for s, r in rows.items()}
    assert counters == {1: (False, 0, 0), 2: (False, 0, 0), 3: (True, 1, 1), 4: (False, 1, 0), 5: (False, 1, 0),
                        6: (False, 1, 0), 7: (True, 2, 1), 8: (True, 3, 2), 9: (True, 4, 3)}
    assert rows[3]["loss"] is None and rows[4]["loss"] is not None
    assert rows[4]["lr"] == rows[3]["lr"]  # the skipped update did not advance the LR schedule
    assert rows[7]["lr"] == rows[8]["lr"] == rows[9]["lr"]

    ckpt = run / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_00000009"
    meta = json.loads((ckpt / "step_00000009" / "meta.json").read_text())
    assert meta["health"]["consecutive_skips"] == 3 and meta["health"]["skipped_steps"] == 4
    for before, after in ((2, 3), (6, 9)):  # a skipped step leaves weights and Adam state bit-identical
        a, b = ckpt / f"step_{before:08d}", ckpt / f"step_{after:08d}"
        wa, wb = weights(a), weights(b)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), (before, after)
        for dp in range(2):
            assert all(torch.equal(x, y) for x, y in zip(adam_state(a, dp), adam_state(b, dp))), (before, after)
    w3, w4 = weights(ckpt / "step_00000003"), weights(ckpt / "step_00000004")
    assert not all(torch.equal(w3[k], w4[k]) for k in w3)  # and the next good step does update


def test_watchdog_dumps_stacks_and_exits_when_a_rank_is_stuck(shards, tmp_path):
    run = tmp_path / "run"
    timeout = 4
    job = launch(run, shards, f"train.watchdog_timeout_s={timeout}", env={"BIGTRAIN_INJECT_STALL": "1:3"})
    job.wait_for_step(3)
    stuck_at = time.monotonic()
    job.wait(timeout=120)
    elapsed = time.monotonic() - stuck_at
    assert job.rank_exit_codes() == {0: 4, 1: 4}, job.tail()
    assert elapsed < timeout + 60, elapsed  # fires after ~timeout; generous bound for a loaded 2-core box
    dumps = {r: (run / "hangs" / f"stacks_rank{r:05d}.txt").read_text() for r in range(2)}
    for r, text in dumps.items():
        assert f"[rank {r}] watchdog: no progress for" in text and "last progress: end of step 3" in text
        assert "Thread" in text and "most recent call first" in text
    assert "inject.py" in dumps[1]  # the stuck rank's stack shows where it is stuck
    assert "step.py" in dumps[0] or "loop.py" in dumps[0]  # the other one waits in the next step's collectives
    assert "watchdog: no progress" in job.log_path.read_text()  # also on stderr


def test_bf16_trains_with_fp32_master_weights(reference, shards, tmp_path):
    from bigtrain.checkpoint.zero_reader import load_file

    run = tmp_path / "run"
    job = launch(run, shards, "train.precision=bf16")
    assert job.wait() == 0, job.tail()
    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["bf16"]["enabled"] is True and ds["data_types"]["grad_accum_dtype"] == "fp32"
    folder = run / "checkpoints" / "step_00000012"
    optim = load_file(folder / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")["optimizer_state_dict"]
    assert {t.dtype for t in optim["fp32_flat_groups"]} == {torch.float32}  # master weights in fp32
    for a, b in zip(read_metrics(reference), read_metrics(run)):
        assert abs(a["loss"] - b["loss"]) <= 2e-2, (a["step"], a["loss"], b["loss"])  # bf16 compute, same course
