"""Knowledge distillation (``train.objective=distill``) end to end on real gloo ranks.

A teacher (the tiny Llama of tiny_run.py, 8 causal-LM steps) is distilled into a narrower student
(hidden 32, 2 heads) on the embedded corpus:
- vocab-parallel KL at TP=2 (tests/kd_ranks.py) equals dense torch KL on the full logits: <= 1e-6 at
  T=1 (per-token KL of order 1, fp32), <= 4e-6 = T^2 * 1e-6 at T=2; gradients <= 1e-6; accuracy exact;
- TP2 x DP2 under ZeRO-3 (student and teacher partitioned) gives the TP1 x DP1 losses within 1e-5;
  kd_loss, ce_loss and teacher_loss are logged; meta.json records the teacher's path and sha256;
- resuming the TP2 x DP2 run from its step-4 checkpoint reproduces steps 5-8 (<= 1e-7);
- alpha = 0 reproduces plain causal-LM training of the same student exactly;
- the loss on a batch equals the one computed by transformers from the HF exports of teacher and
  student (<= 1e-4);
- a teacher with another vocabulary is refused before any process group, naming both sizes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from launch import REPO, run_ranks  # noqa: E402
from tiny_run import MODEL_8_STEPS, metrics, pretrain_ranks  # noqa: E402

PARITY_TOL = 1e-5
STUDENT = [*MODEL_8_STEPS, "model.hidden_size=32", "model.num_heads=2", "model.num_kv_heads=2",
           "model.ffn_hidden_size=88", "eval.every=0"]


def run(run_dir: Path, shards: Path, ranks: int, *overrides: str, model=STUDENT) -> list[dict]:
    pretrain_ranks(run_dir, shards, ranks, *overrides, model=model)
    return metrics(run_dir)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, shards) -> Path:
    path = tmp_path_factory.mktemp("kd_teacher") / "run"
    run(path, shards, 1, "parallel.tensor_parallel=1", model=MODEL_8_STEPS)
    return path


def distill(tmp_path_factory, shards, teacher, name: str, ranks: int, *overrides: str) -> Path:
    path = tmp_path_factory.mktemp(name) / "run"
    run(path, shards, ranks, "train.objective=distill", f"distill.teacher={teacher}", "distill.alpha=0.7",
        "distill.temperature=2.0", *overrides)
    return path


@pytest.fixture(scope="module")
def kd_tp1(tmp_path_factory, shards, teacher) -> Path:
    return distill(tmp_path_factory, shards, teacher, "kd_tp1", 1, "parallel.tensor_parallel=1")


@pytest.fixture(scope="module")
def kd_tp2dp2(tmp_path_factory, shards, teacher) -> Path:
    return distill(tmp_path_factory, shards, teacher, "kd_tp2dp2", 4, "parallel.tensor_parallel=2",
                   "parallel.zero_stage=3")


def column(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows]


def test_vocab_parallel_kl_equals_dense_kl(tmp_path):
    out = tmp_path / "kd.json"
    run_ranks("tests/kd_ranks.py", 2, [str(out)], timeout=300, check=True)
    result = json.loads(out.read_text())
    for temperature, kl_tol in (("T=1", 1e-6), ("T=2", 4e-6)):
        r = result[temperature]
        assert r["kl"] <= kl_tol and r["grad"] <= 1e-6 and r["accuracy_equal"] and r["hits"] > 0, r
        assert 0.1 < r["kl_mean"] < 10  # a non-trivial KL


@pytest.mark.slow
def test_distill_tp2dp2_zero3_matches_tp1_and_logs_parts(kd_tp1, kd_tp2dp2, teacher):
    ref, got = metrics(kd_tp1), metrics(kd_tp2dp2)
    assert [r["step"] for r in got] == list(range(1, 9))
    for key in ("loss", "kd_loss", "ce_loss", "teacher_loss"):
        assert np.allclose(column(got, key), column(ref, key), atol=PARITY_TOL, rtol=0), key
    for r in got:  # loss = alpha * kd + (1 - alpha) * ce
        assert abs(r["loss"] - (0.7 * r["kd_loss"] + 0.3 * r["ce_loss"])) < 1e-5
    assert column(got, "kd_loss")[-1] < column(got, "kd_loss")[0]
    meta = json.loads((kd_tp2dp2 / "checkpoints" / "step_00000008" / "meta.json").read_text())
    assert meta["distill"]["teacher"] == str((teacher / "checkpoints" / "step_00000008").resolve())
    assert len(meta["distill"]["teacher_sha256"]) == 64 and meta["distill"]["alpha"] == 0.7
    assert not list((kd_tp2dp2 / "checkpoints" / "step_00000008").rglob("*teacher*"))  # identity, not weights


@pytest.mark.slow
def test_distill_resume_midway_equals_uninterrupted(tmp_path, kd_tp2dp2, shards, teacher):
    path = tmp_path / "resumed"
    shutil.copytree(kd_tp2dp2, path, ignore=shutil.ignore_patterns("step_00000008", "metrics.jsonl"))
    (path / "checkpoints" / "latest").write_text("step_00000004")
    rows = run(path, shards, 4, "train.objective=distill", f"distill.teacher={teacher}", "distill.alpha=0.7",
               "distill.temperature=2.0", "parallel.tensor_parallel=2", "parallel.zero_stage=3")
    assert [r["step"] for r in rows] == [5, 6, 7, 8]
    full = metrics(kd_tp2dp2)[4:]
    for key in ("loss", "kd_loss", "ce_loss", "teacher_loss"):
        assert np.allclose(column(rows, key), column(full, key), atol=1e-7, rtol=0), key


@pytest.mark.slow
def test_alpha_zero_is_plain_causal_lm(tmp_path, shards, teacher):
    plain = run(tmp_path / "clm", shards, 1, "parallel.tensor_parallel=1")
    kd = run(tmp_path / "kd0", shards, 1, "parallel.tensor_parallel=1", "train.objective=distill",
             f"distill.teacher={teacher}", "distill.alpha=0")
    assert column(kd, "loss") == column(plain, "loss") and column(kd, "grad_norm") == column(plain, "grad_norm")
    assert column(kd, "ce_loss") == pytest.approx(column(plain, "loss"), abs=1e-6)


@pytest.mark.slow
@pytest.mark.usefixtures("in_process_world")
def test_distill_loss_equals_transformers_on_the_exports(tmp_path, kd_tp1, teacher, shards):
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from bigtrain.convert.load import load_model
    from bigtrain.convert.to_hf import to_hf
    from bigtrain.train.distill import Distill

    tokens = torch.randint(4, 1024, (2, 33), generator=torch.Generator().manual_seed(0))
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    student, _ = load_model(kd_tp1)
    teacher_model, _ = load_model(teacher)
    objective = Distill(teacher_model, {}, alpha=0.7, temperature=2.0)
    with torch.no_grad():
        kd, ce, _ = objective.losses(student(inputs), teacher_model(inputs), labels)
    ours = (0.7 * kd.mean() + 0.3 * ce.mean()).item()
    hf = [AutoModelForCausalLM.from_pretrained(to_hf(src, tmp_path / name), dtype=torch.float32).eval()
          for src, name in ((kd_tp1, "student"), (teacher, "teacher"))]
    with torch.no_grad():
        s, t = (model(inputs).logits for model in hf)
    kl = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="none").sum(-1)
    theirs = (0.7 * 4 * kl.mean() + 0.3 * F.cross_entropy(s.flatten(0, 1), labels.flatten())).item()
    assert abs(ours - theirs) <= 1e-4, (ours, theirs)


@pytest.mark.usefixtures("in_process_world")
def test_teacher_with_another_vocabulary_is_refused(tmp_path, shards):
    hf = tmp_path / "teacher_hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 176, "vocab_size": 2000,
        "max_position_embeddings": 64, "tie_word_embeddings": True}))
    (hf / "model.safetensors").write_bytes(b"")  # never read: the check comes first
    out = subprocess.run([sys.executable, "bigtrain/pretrain.py", "--config", "debug", f"data.path={shards}",
                          f"run.dir={tmp_path / 'run'}", *STUDENT, "parallel.tensor_parallel=1",
                          "train.objective=distill", f"distill.teacher={hf}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.count("error:") == 1, out.stderr[-2000:]
    assert "2000" in out.stderr and "1024" in out.stderr and "distill.teacher" in out.stderr
