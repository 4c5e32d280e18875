"""``bigtrain sweep`` without SLURM: the space, the checks before anything runs, and the local executor.

Trials are the 1-rank form of the tiny model of tests/tiny_run.py (8 steps, validation at 4 and 8),
each compared with the same config run alone by ``pretrain.py`` under torchrun (fp32 on CPU:
bit-identical losses are expected, tolerance 0).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch import REPO, run_ranks
from tiny_run import MODEL_8_STEPS, metrics, tiny_shards, trajectory

ONE_RANK = [*MODEL_8_STEPS, "parallel.tensor_parallel=1", "eval.every=4", "eval.batches=1", "checkpoint.every=0"]
WARMUP = "train.warmup_steps=2"  # MODEL_8_STEPS' value, named: references are shared with test_sweep_slurm's grid
_refs: dict[tuple, list[dict]] = {}


def trial_args(shards: Path, *extra: str) -> list[str]:
    return [*ONE_RANK, f"data.path={shards}", *extra]


def reference(tmp_path_factory, *values: str) -> list[dict]:
    """metrics.jsonl of ``values`` run alone: pretrain.py under torchrun, one rank (once per session)."""
    if values not in _refs:
        run = tmp_path_factory.mktemp("sweep-ref") / "run"
        run_ranks("bigtrain/pretrain.py", 1, ["--config", "debug", *trial_args(tiny_shards(tmp_path_factory)),
                                              *values, f"run.dir={run}"], timeout=600)
        _refs[values] = metrics(run)
    return _refs[values]


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bigtrain.cli", "sweep", *args]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", **extra}


def cli(*args: str, timeout: float = 900, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(*args), cwd=REPO, env=env(**extra_env), capture_output=True, text=True,
                          timeout=timeout)


def trial_dirs(sweep_dir: Path) -> dict[str, Path]:
    """swept values (as in sweep.json's trial order) -> trial dir, through the sweep's own plan."""
    from bigtrain.launch.sweep.plan import read_spec, trials_of

    return {t.label(): t.dir for t in trials_of(sweep_dir, read_spec(sweep_dir))}


# ---- the space ---------------------------------------------------------------------------------

def test_space_grid_and_seeded_draws():
    from bigtrain.launch.sweep.space import sample_trials, split_args

    dims, plain = split_args(["train.lr=1e-3,3e-3", "train.beta2=loguniform(0.9,0.99)", "model.num_layers=choice(2,4)",
                              "train.warmup_steps=int(1,3)", "train.steps=8", "run.dir=/s"])
    assert plain == ["train.steps=8", "run.dir=/s"]
    assert [(d.key, d.kind, d.values) for d in dims][0] == ("train.lr", "grid", (1e-3, 3e-3))
    trials = sample_trials(dims, 3, seed=7)
    assert len(trials) == 6 and [t["train.lr"] for t in trials] == [1e-3] * 3 + [3e-3] * 3
    assert all(0.9 <= t["train.beta2"] <= 0.99 and t["model.num_layers"] in (2, 4) and t["train.warmup_steps"] in (1, 2, 3)
               for t in trials)
    assert trials == sample_trials(dims, 3, seed=7) and trials != sample_trials(dims, 3, seed=8)


def test_space_file_equals_command_line(tmp_path):
    from bigtrain.launch.sweep.space import load_space_file, split_args

    (tmp_path / "space.yaml").write_text("train:\n  lr: [1.0e-3, 3.0e-3]\n  beta2: loguniform(0.9, 0.99)\n")
    assert load_space_file(tmp_path / "space.yaml") == split_args(["train.lr=1e-3,3e-3", "train.beta2=loguniform(0.9,0.99)"])[0]


@pytest.mark.parametrize("arg, message", [
    ("train.lr=loguniform(0,1)", r"sweep key train.lr: loguniform\(a,b\) needs a > 0, got 0"),
    ("train.lr=uniform(2,1)", r"sweep key train.lr: uniform\(a,b\) needs two numbers a < b"),
    ("train.lr=normal(0,1)", "sweep key train.lr: unknown distribution 'normal'"),
])
def test_space_errors_name_the_key(arg, message):
    from bigtrain.launch.sweep.space import SpaceError, split_args

    with pytest.raises(SpaceError, match=message):
        split_args([arg])


def test_random_key_needs_trials():
    from bigtrain.launch.sweep.space import SpaceError, sample_trials, split_args

    with pytest.raises(SpaceError, match="sweep key train.lr is a distribution .loguniform.: give --trials N"):
        sample_trials(split_args(["train.lr=loguniform(1e-4,1e-2)"])[0], None, 0)


# ---- checks before anything runs ---------------------------------------------------------------

def test_invalid_combination_refused_before_submission_with_key_named(tmp_path):
    sweep_dir = tmp_path / "sweep"
    out = cli("--config", "debug", "--executor", "slurm", "--nodes", "1", "--tasks-per-node", "2",
              "train.micro_batch_size=2,3", "train.lr=1e-3,3e-3", f"run.dir={sweep_dir}", timeout=120)
    assert out.returncode == 2, out.stderr
    assert "error: 2 of 4 trials are invalid, nothing was started:" in out.stderr
    for lr in ("0.001", "0.003"):
        assert f"trial train.micro_batch_size=3 train.lr={lr}: " in out.stderr
    assert "trial train.micro_batch_size=2" not in out.stderr
    assert "train.global_batch_size (8) must be divisible by train.micro_batch_size (3) x data-parallel size (1)" \
        in out.stderr
    assert not sweep_dir.exists()  # nothing queued, nothing written


def test_changed_space_refused_naming_the_difference(tmp_path, tmp_path_factory):
    from bigtrain.errors import UserError
    from bigtrain.launch.sweep.driver import SweepRequest, plan_sweep

    args = trial_args(tiny_shards(tmp_path_factory), f"run.dir={tmp_path / 'sweep'}")
    first = plan_sweep(SweepRequest("debug", ["train.lr=1e-3,3e-3", *args], executor="local"))
    again = plan_sweep(SweepRequest("debug", ["train.lr=1e-3,3e-3", *args], executor="local"))
    assert [t.id for t in first.trials] == [t.id for t in again.trials]  # the same dirs: a re-run resumes
    with pytest.raises(UserError, match=r"holds a different sweep \(space: .*0\.003.* now\)"):
        plan_sweep(SweepRequest("debug", ["train.lr=1e-3,1e-2", *args], executor="local"))


def test_halving_rung_must_precede_the_end(tmp_path, tmp_path_factory):
    from bigtrain.errors import UserError
    from bigtrain.launch.sweep import parse_halving
    from bigtrain.launch.sweep.driver import SweepRequest, plan_sweep

    args = trial_args(tiny_shards(tmp_path_factory), f"run.dir={tmp_path / 'sweep'}")
    with pytest.raises(UserError, match=r"trial train.lr=0.001: --halving rung 8 must be below train.steps \(8\)"):
        plan_sweep(SweepRequest("debug", ["train.lr=1e-3,3e-3", *args], executor="local",
                                halving=parse_halving("4,8", "val_loss", 2)))
    assert not (tmp_path / "sweep").exists()


# ---- the local executor ------------------------------------------------------------------------

@pytest.mark.slow
def test_local_halving_stops_exactly_the_right_trials(tmp_path, tmp_path_factory):
    sweep_dir = tmp_path / "sweep"
    shards = tiny_shards(tmp_path_factory)
    # eval.every=8: the rung's val_loss at step 4 comes from train.stop_at's own evaluation
    out = cli("--config", "debug", "--executor", "local", "--max-parallel", "2", "--halving", "4",
              "train.lr=1e-3,3e-3,1e-2", *trial_args(shards, "eval.every=8"), f"run.dir={sweep_dir}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    dirs = trial_dirs(sweep_dir)
    # the rule, recomputed from the trials' own metrics.jsonl: rank by val_loss at step 4, keep floor(3/2) = 1
    at_rung = {label: next(r["val_loss"] for r in metrics(d) if r["step"] == 4) for label, d in dirs.items()}
    ranked = sorted(at_rung, key=at_rung.get)
    kept, stopped = ranked[:1], ranked[1:]
    decision = json.loads((sweep_dir / "halving.json").read_text())[0]
    labels = {d.name: label for label, d in dirs.items()}
    assert [labels[t] for t in decision["kept"]] == kept and [labels[t] for t in decision["stopped"]] == stopped
    assert {labels[v["trial"]]: v["val_loss"] for v in decision["values"]} == at_rung
    for label in stopped:  # stopped at the rung, with a checkpoint there
        assert (dirs[label] / "checkpoints" / "latest").read_text().strip() == "step_00000004"
        assert [r["step"] for r in metrics(dirs[label])] == [1, 2, 3, 4]
    # the promoted trial continued exactly as if never stopped (the schedule ran to train.steps throughout)
    assert trajectory(metrics(dirs[kept[0]])) == trajectory(reference(tmp_path_factory, kept[0], WARMUP))
    report = cli("report", str(sweep_dir), "--no-plot", timeout=120)
    assert report.returncode == 0, report.stderr
    rows = {r["train.lr"]: r for r in csv.DictReader(open(sweep_dir / "report.csv"))}
    for label in stopped:
        row = rows[label.split("=")[1]]
        assert row["state"] == "stopped early" and row["steps"] == "4"
        assert f"val_loss {at_rung[label]:.6g} at rung 4 > cut {at_rung[kept[0]]:.6g} (kept 1 of 3)" == row["why"]
    assert rows[kept[0].split("=")[1]]["state"] == "done"


@pytest.mark.slow
def test_local_rerun_after_interruption_trains_nothing_twice(tmp_path, tmp_path_factory):
    sweep_dir, hold = tmp_path / "sweep", tmp_path / "hold"
    hold.mkdir()
    args = ["--config", "debug", "--executor", "local", "train.lr=1e-3,3e-3",
            *trial_args(tiny_shards(tmp_path_factory)), f"run.dir={sweep_dir}"]
    # the first trial pauses after step 3; the sweep is interrupted there (Ctrl-C / SIGTERM to the driver)
    driver = subprocess.Popen(sweep_cmd(*args), cwd=REPO, env=env(BIGTRAIN_TEST_HOLD="after_step:3",
                              BIGTRAIN_TEST_HOLD_DIR=str(hold)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (hold / "after_step:3.rank0").exists():
        assert driver.poll() is None and time.time() < deadline, driver.communicate()[0][-3000:]
        time.sleep(0.2)
    status = cli("status", str(sweep_dir), timeout=120)
    assert "running" in status.stdout and "pending" in status.stdout, status.stdout
    again = cli(*args, timeout=300)  # a second driver on the same sweep must not start the running trial twice
    assert again.returncode == 2 and "trials of this sweep are still running or queued: t-" in again.stderr, again.stderr
    driver.send_signal(signal.SIGINT)
    time.sleep(1)
    (hold / "after_step:3.release").touch()
    log = driver.communicate(timeout=300)[0]
    assert driver.returncode == 75, log[-3000:]
    first, second = trial_dirs(sweep_dir).values()
    assert (first / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert not second.exists()  # never started

    out = cli(*args)  # re-run: the first resumes at step 4, the second runs
    assert out.returncode == 0, out.stdout[-3000:]
    assert f"resumed from {first / 'checkpoints'} at step 4" in (first / "sweep.log").read_text()
    for label, d in trial_dirs(sweep_dir).items():
        assert trajectory(metrics(d)) == trajectory(reference(tmp_path_factory, label, WARMUP))

    out = cli(*args)  # once more: everything is done, nothing starts
    assert out.returncode == 0 and "started" not in out.stdout, out.stdout
    assert out.stdout.count("kept: ") == 2 and "already at step 8" in out.stdout
