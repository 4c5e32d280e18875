"""``bigtrain convert from-hf``: a random tiny ``LlamaForCausalLM`` becomes a bigtrain run directory.

Two HF folders: (a) untied, GQA, sharded safetensors with an index, transformers-5 config.json;
(b) tied, ``pytorch_model.bin`` only, a transformers-4-style config.json (``rope_theta`` and
``rope_scaling: null`` at the top level, ``torch_dtype``, no ``head_dim``). Their tokenizer is the
sentencepiece tokenizer of the embedded shards, so pretraining can continue on those shards.

Checked: from-hf (TP=2) -> to-hf gives the original tensors bit for bit; ``bigtrain eval`` equals
tools/hf_perplexity.py on the HF folder (<= 1e-4) and ``bigtrain generate`` equals HF's greedy
tokens; ``pretrain.py run.dir=OUT`` (at TP=1: resharded) starts from the HF weights: its first loss
equals the HF model's loss on the same first global batch (<= 1e-5); unsupported or damaged inputs
fail with a message naming the key or file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from launch import REPO, run_ranks  # noqa: E402

from bigtrain.checkpoint.errors import CheckpointError  # noqa: E402

HF_MODEL = dict(vocab_size=1024, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1, bos_token_id=1,
                eos_token_id=2)
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json")

pytestmark = pytest.mark.usefixtures("in_process_world")


def make_hf(folder: Path, tokenizer_dir: Path, variant: str) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0 if variant == "sharded" else 1)
    tied = variant == "bin"
    model = LlamaForCausalLM(LlamaConfig(**HF_MODEL, tie_word_embeddings=tied, rope_theta=20000.0))
    if variant == "sharded":
        model.save_pretrained(folder, max_shard_size="100KB")
        assert (folder / "model.safetensors.index.json").exists()
    else:
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        config = json.loads((folder / "config.json").read_text())
        for key in ("rope_parameters", "head_dim", "dtype"):
            config.pop(key, None)
        config.update(rope_theta=20000.0, rope_scaling=None, torch_dtype="float32")
        (folder / "config.json").write_text(json.dumps(config))
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, shards) -> dict[str, Path]:
    from bigtrain.data.manifest import Manifest

    root = tmp_path_factory.mktemp("hf")
    tok = Manifest.load(shards).tokenizer_dir
    return {v: make_hf(root / v, tok, v) for v in ("sharded", "bin")}


@pytest.fixture(scope="module")
def imported(tmp_path_factory, hf_dirs) -> dict[str, Path]:
    from bigtrain.convert.from_hf import from_hf

    root = tmp_path_factory.mktemp("imported")
    return {v: from_hf(path, root / v, tensor_parallel=2) for v, path in hf_dirs.items()}


@pytest.mark.parametrize("variant", ["sharded", "bin"])
def test_round_trip_gives_the_original_tensors(hf_dirs, imported, variant, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from bigtrain.convert.to_hf import to_hf

    run = imported[variant]
    assert sorted(p.name for p in (run / "checkpoints" / "step_00000000").glob("model_tp*")) == \
        ["model_tp00.safetensors", "model_tp01.safetensors"]
    assert (run / "tokenizer" / "bigtrain_tokenizer.json").exists()  # `bigtrain data shard` accepts it
    back = load_file(to_hf(run, tmp_path / "back") / "model.safetensors")
    original = AutoModelForCausalLM.from_pretrained(hf_dirs[variant]).state_dict()
    assert set(back) == set(original) - ({"lm_head.weight"} if variant == "bin" else set())
    for name, tensor in back.items():
        assert tensor.equal(original[name]), name


@pytest.mark.parametrize("variant", ["sharded", "bin"])
def test_eval_and_generate_agree_with_transformers(hf_dirs, imported, variant, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bigtrain.evaluate import evaluate
    from bigtrain.generate import generate

    text = tmp_path / "doc.txt"
    text.write_text((REPO / "README.md").read_text()[:3000])
    ours = evaluate(imported[variant], text, 64)
    tool = subprocess.run([sys.executable, "tools/hf_perplexity.py", str(hf_dirs[variant]), "--text", str(text),
                           "--seq-len", "64", "--json"], cwd=REPO, capture_output=True, text=True, check=True)
    theirs = json.loads(tool.stdout)
    assert ours["tokens"] == theirs["tokens"] > 500
    assert abs(ours["loss"] - theirs["loss"]) <= 1e-4

    tokenizer = AutoTokenizer.from_pretrained(hf_dirs[variant])
    hf = AutoModelForCausalLM.from_pretrained(hf_dirs[variant]).eval()
    prompt = "Return the"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert generate(imported[variant], prompt, 6) == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_one_model_in_one_process_needs_no_process_group_nor_deepspeed(imported, tmp_path):
    """eval/generate/the export's parity check load the model alone in their process (model/layers.py)."""
    text = tmp_path / "doc.txt"
    text.write_text((REPO / "README.md").read_text()[:1000])
    probe = ("import sys, torch.distributed as dist\n"
             "from bigtrain.evaluate import evaluate\n"
             f"result = evaluate({str(imported['bin'])!r}, {str(text)!r}, 64)\n"
             "assert result['tokens'] > 100, result\n"
             "assert not dist.is_initialized(), 'a process group was created'\n"
             "assert 'deepspeed' not in sys.modules, 'DeepSpeed was imported'\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, check=True, timeout=300)


def first_batch_loss(hf_dir: Path, shards: Path, global_batch: int, seed: int) -> float:
    """The HF model's mean next-token loss on the first global batch of the training stream."""
    from transformers import AutoModelForCausalLM

    from bigtrain.data.reader import ShardReader
    from bigtrain.data.manifest import Manifest
    from bigtrain.data.order import GlobalOrder

    reader = ShardReader(Manifest.load(shards), "train")
    tokens = reader.read_many(GlobalOrder(reader.num_samples, seed).samples(np.arange(global_batch)))
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        logits = hf(tokens[:, :-1]).logits.float()
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).item()


@pytest.mark.slow
def test_pretraining_continues_from_the_hf_weights(hf_dirs, imported, shards, tmp_path):
    """`pretrain.py run.dir=OUT` (its config.yaml, resharded TP2 -> TP1 x DP2), and a new run with
    `checkpoint.init_from=OUT` (TP2 x DP1), both start from the HF weights: first loss = HF's loss."""
    run = tmp_path / "run"
    shutil.copytree(imported["sharded"], run)
    jobs = {run: [f"run.dir={run}", "parallel.tensor_parallel=1"],
            tmp_path / "branch": ["--config", str(run / "config.yaml"), f"run.dir={tmp_path / 'branch'}",
                                  f"checkpoint.init_from={imported['sharded']}", "parallel.tensor_parallel=2"]}
    common = [f"data.path={shards}", "train.steps=2", "log.tensorboard=false"]
    with ThreadPoolExecutor(2) as pool:
        procs = dict(zip(jobs, pool.map(lambda a: run_ranks("bigtrain/pretrain.py", 2, [*a, *common], timeout=300),
                                                 jobs.values())))
    expected = first_batch_loss(hf_dirs["sharded"], shards, global_batch=8, seed=1234)
    for run_dir, proc in procs.items():
        metrics = run_dir / "metrics.jsonl"
        assert metrics.exists(), f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        assert "initialising" in proc.stdout or "resharding" in proc.stdout
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
        assert abs(rows[0]["loss"] - expected) <= 1e-5, (run_dir.name, rows[0]["loss"], expected)
        meta = json.loads((run_dir / "checkpoints" / "step_00000002" / "meta.json").read_text())
        assert (meta["tensor_parallel"], meta["data_parallel"], meta["step"]) == \
            ((1, 2, 2) if run_dir == run else (2, 1, 2))
    assert "initialising the weights from" in procs[tmp_path / "branch"].stdout


def test_shards_of_another_tokenizer_are_refused(imported, shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(imported["sharded"], run)
    meta_file = run / "checkpoints" / "step_00000000" / "tokenizer" / "bigtrain_tokenizer.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "sha256": "0" * 64}))
    proc = subprocess.run([sys.executable, "bigtrain/pretrain.py", f"run.dir={run}", f"data.path={shards}",
                           "parallel.tensor_parallel=1"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "re-shard the data with --tokenizer" in proc.stderr


@pytest.mark.parametrize("edit, message", [
    ({"attention_bias": True}, "attention_bias=True is not supported"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope scaling of type 'llama3'"),
    ({"head_dim": 32}, "head_dim=32 is not supported"),
    ({"model_type": "mistral"}, "model_type='mistral' is not supported"),
    ({"num_key_value_heads": 3}, "num_kv_heads"),
])
def test_unsupported_configs_are_refused(hf_dirs, tmp_path, edit, message):
    from bigtrain.convert.from_hf import from_hf

    hf = tmp_path / "hf"
    shutil.copytree(hf_dirs["bin"], hf)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(CheckpointError, match=message):
        from_hf(hf, tmp_path / "out", tensor_parallel=2)
    assert not (tmp_path / "out").exists()


def test_damaged_inputs_are_refused(hf_dirs, imported, tmp_path):
    from bigtrain.convert.from_hf import from_hf
    from bigtrain.convert.load import load_model

    hf = tmp_path / "hf"
    shutil.copytree(hf_dirs["sharded"], hf)
    shard = sorted(hf.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"{shard.name}.*(truncated or corrupt|cannot read)"):
        from_hf(hf, tmp_path / "out", tensor_parallel=2)
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"lists shard.* that are missing: {shard.name}"):
        from_hf(hf, tmp_path / "out", tensor_parallel=2)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))

    run = tmp_path / "run"
    shutil.copytree(imported["sharded"], run)
    weights = run / "checkpoints" / "step_00000000" / "model_tp01.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="model_tp01.safetensors"):
        load_model(run)
    weights.unlink()
    with pytest.raises(CheckpointError, match="incomplete.*model_tp01.safetensors is missing"):
        load_model(run)
