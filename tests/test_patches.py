"""Every patch of a library and process-wide setting of docs/patches.md: still needed, still working.

Each test fails when an upgrade makes its patch unnecessary (the library no longer misbehaves) or
wrong (the patch no longer takes effect), naming which. The import-time and process-state patches are
observed in fresh processes (tests/patch_probe.py), the rest in this one.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from launch import REPO  # noqa: E402


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict[str, dict]:
    """tests/patch_probe.py without bigtrain ("bare") and through it ("bigtrain"), both with `-W always`."""
    root = tmp_path_factory.mktemp("patches")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR", "LOCAL_SIZE",
                        "CUDA_DEVICE_MAX_CONNECTIONS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])

    def probe(mode: str) -> dict:
        out = root / mode / "out.json"
        out.parent.mkdir()
        proc = subprocess.run([sys.executable, "-W", "always", "tests/patch_probe.py", mode, str(out)], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return {**json.loads(out.read_text()), "output": proc.stdout + proc.stderr}

    with ThreadPoolExecutor(2) as pool:
        bare, ours = pool.map(probe, ["bare", "bigtrain"])
    return {"bare": bare, "bigtrain": ours}


@pytest.mark.slow
def test_megatron_warning_filters(probes):
    bare, ours = probes["bare"], probes["bigtrain"]
    assert bare["te_apex"], "megatron no longer warns about Transformer Engine/Apex: drop the filter in bigtrain/__init__.py"
    assert ours["te_apex"] == [], "the filter in bigtrain/__init__.py no longer matches"
    assert bare["max_connections"] and ours["max_connections"], "CUDA_DEVICE_MAX_CONNECTIONS' warning is not hidden"


@pytest.mark.slow
def test_deepspeed_accelerator_and_local_size(probes):
    bare, ours = probes["bare"], probes["bigtrain"]
    # DS_ACCELERATOR=cpu: without it DeepSpeed guesses, and says so on every rank
    assert "Setting accelerator to CPU" in bare["output"], "DeepSpeed no longer guesses noisily: DS_ACCELERATOR unneeded"
    assert ours["accelerator"] == "cpu" and "Setting accelerator to CPU" not in ours["output"]
    # LOCAL_SIZE: without it the CPU accelerator's device_count() probes NUMA (a subprocess) on every call
    assert bare["numa_probes_per_device_count"] == 1, "device_count() no longer probes NUMA: LOCAL_SIZE unneeded"
    assert ours["local_size"] == "1"


@pytest.mark.slow
def test_deepspeed_shm_comm_op_is_not_built(probes):
    assert probes["bare"]["shm_compatible"] is True, "DeepSpeed no longer builds its shm op on CPU: drop the patch"
    assert probes["bigtrain"]["shm_op"] == "None", "DeepSpeed builds deepspeed_shm_comm despite the patch (dsenv.py)"


@pytest.mark.slow
def test_torch_deprecation_warnings_of_collectives_are_filtered(probes):
    """The probe calls deepspeed.comm.all_gather_into_tensor, which calls torch's deprecated collective."""
    assert probes["bigtrain"]["future_warnings"] == [], "dsenv.py's filter no longer matches torch's deprecation"
    assert "all_gather_into_tensor` is deprecated" not in probes["bigtrain"]["output"]


@pytest.mark.slow
def test_init_world_environment_is_undone_and_resume_refuses_foreign_objects(probes):
    ours = probes["bigtrain"]
    assert ours["env_during"]["RANK"] == "0" and ours["env_after_matches"], "destroy_world left RANK... behind"
    # a real engine's load_checkpoint goes through engine.checkpoint_engine.load (safe_load.weights_only_loading)
    assert "refusing to unpickle" in ours["resume_refused"], ours["resume_refused"]
    assert "payload executed" not in ours["output"]


@pytest.mark.slow
def test_no_process_group_outlives_destroy_world(probes):
    """The cause of the rare SIGABRT at exit: gloo groups (and their threads) torn down during interpreter
    finalization. release_engine + destroy_world free them all while the interpreter is whole."""
    ours = probes["bigtrain"]
    assert ours["deepspeed_keeps_the_model"], "DeepSpeed no longer keeps a ZeRO-3 model alive: release_engine's patch may go"
    assert ours["gloo_threads_after_destroy_world"] == [], "a process group outlives destroy_world (parallel/world.py)"


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["BIGTRAIN_TEST_MARKER"]),))


def test_deepspeed_checkpoint_engine_still_unpickles_anything(tmp_path, monkeypatch):
    """Why safe_load.weights_only_loading replaces the engine's load: DeepSpeed's own runs pickled code."""
    from bigtrain.parallel.dsenv import import_deepspeed

    import_deepspeed()
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    marker = tmp_path / "executed"
    monkeypatch.setenv("BIGTRAIN_TEST_MARKER", str(marker))
    torch.save({"payload": Payload()}, tmp_path / "f.pt")
    TorchCheckpointEngine(None).load(str(tmp_path / "f.pt"))
    assert marker.exists(), "DeepSpeed's checkpoint engine is weights-only now: weights_only_loading may be unneeded"


def test_torch_honours_force_weights_only_load(tmp_path, monkeypatch):
    """safe_load's second line: TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 overrides an explicit weights_only=False."""
    monkeypatch.setenv("BIGTRAIN_TEST_MARKER", str(tmp_path / "executed"))
    torch.save({"payload": Payload()}, tmp_path / "f.pt")
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "f.pt", weights_only=False)
    assert not (tmp_path / "executed").exists()


def test_torch_adam_wins_over_deepspeed_cpu_adam():
    """ds_configs/README.md: with torch_adam (our templates) CPU offload still steps torch's AdamW."""
    from bigtrain.parallel.dsenv import import_deepspeed

    import_deepspeed()
    from deepspeed.runtime.engine import DeepSpeedEngine

    optimizer, _ = DeepSpeedEngine.get_optimizer_configuration(None, {"torch_adam": True, "lr": 1e-3}, True)
    assert optimizer is torch.optim.AdamW


def test_sequence_parallel_cpu_device_patch_still_needed_and_effective():
    """parallel/sequence.py: megatron's SP gathers allocate on torch.cuda.current_device(); on a machine
    without CUDA bigtrain makes that call answer "cpu" (checked in a fresh process: it is process-wide)."""
    import inspect

    from megatron.core.tensor_parallel import mappings

    source = inspect.getsource(mappings._gather_along_first_dim) + inspect.getsource(
        mappings._reduce_scatter_along_first_dim)
    assert "torch.cuda.current_device()" in source, \
        "megatron's SP gathers no longer ask CUDA for their device: drop allow_sequence_parallel_on_cpu"
    if torch.cuda.is_available():
        return  # the patch is a no-op with CUDA
    code = ("import torch; from bigtrain.parallel.sequence import allow_sequence_parallel_on_cpu; "
            "allow_sequence_parallel_on_cpu(); print(torch.empty(1, device=torch.cuda.current_device()).device)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "cpu", proc.stdout + proc.stderr[-2000:]
