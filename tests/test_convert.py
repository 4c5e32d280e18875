"""Reading DeepSpeed checkpoints, the HF export, and single-process eval/generate, on real checkpoints.

The checkpoints come from real short training runs (tests/tiny_runs.py: tests/train_tiny.py with
``build_engine`` + ``Checkpointer`` on random tokens) on 4 gloo ranks (TP=2 x DP=2) and on 2 ranks
(TP=2 x DP=1). Each run also saves the logits of its trained, still TP-sharded model
(``reference_logits.pt``): the ground truth every conversion must reproduce. Tolerance for fp32:
max |logit diff| <= 1e-4. The full layout matrix is in tests/test_convert_matrix.py.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from bigtrain.checkpoint.errors import CheckpointError  # noqa: E402
from bigtrain.checkpoint.manager import read_meta, resolve_checkpoint  # noqa: E402

from tiny_runs import VOCAB, trained_runs  # noqa: E402

ATOL = 1e-4
TEXT = Path(__file__).read_text()[:3000]  # some real text to evaluate on
# the runs these tests use (tests/tiny_runs.py): GQA (4 heads, 2 KV heads), 2 layers, seq_len 32
Z3_TIED, Z1_BF16 = "tp2_z3_tied_gqa_fp32", "tp2_z1_untied_gqa_bf16"
FP32_RUNS = [Z3_TIED, "z2_untied", "z0_tied", "z3_dp1_untied"]

pytestmark = pytest.mark.usefixtures("in_process_world")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return trained_runs(tmp_path_factory)


def hf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def export(run: Path, out: Path, dtype: str = "fp32") -> Path:
    from bigtrain.convert.to_hf import to_hf

    return to_hf(run, out, dtype=dtype)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


# --- the checkpoint really is ZeRO-3 partitioned -------------------------------------------------

def test_zero3_checkpoint_is_partitioned_over_data_parallel_ranks(runs):
    from bigtrain.checkpoint.zero_reader import load_file

    ds_config = json.loads((runs[Z3_TIED] / "ds_config.json").read_text())
    assert ds_config["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    folder = resolve_checkpoint(runs[Z3_TIED])
    for tp in range(2):
        model_states = load_file(folder / f"zero_pp_rank_0_mp_rank_{tp:02d}_model_states.pt")
        assert all(t.numel() == 0 for t in model_states["module"].values() if torch.is_tensor(t))
        shapes = [s for group in model_states["param_shapes"] for s in group.values()]
        shard_numel = sum(math.prod(s) for s in shapes)
        for dp in range(2):
            optim = load_file(folder / f"zero_pp_rank_{dp}_mp_rank_{tp:02d}_optim_states.pt")["optimizer_state_dict"]
            held = sum(t.numel() for t in optim["fp32_flat_groups"])
            assert held == sum(math.ceil(math.prod(s) / 2) for s in shapes) < shard_numel


def test_reader_returns_fp32_tp_shards_without_extra_state(runs):
    from bigtrain.checkpoint.zero_reader import read_tp_shards

    folder = resolve_checkpoint(runs[Z1_BF16])
    shards = read_tp_shards(folder, read_meta(folder))
    assert len(shards) == 2
    for shard in shards:
        assert not [k for k in shard if "_extra_state" in k]
        assert {t.dtype for t in shard.values()} == {torch.float32}
        assert shard["layers.0.attn.qkv.weight"].shape == (64, 64)  # (2 groups*(2q+k+v)*16 / 2, 64)
        assert shard["embed.weight"].shape == (192, 64)  # 384 padded rows / 2


# --- HF export: logits, generation, eval ---------------------------------------------------------

@pytest.mark.parametrize("name", FP32_RUNS)
def test_hf_export_reproduces_the_trained_model(runs, name, tmp_path, offline):
    from transformers import AutoTokenizer

    from bigtrain.convert.load import load_model

    out = export(runs[name], tmp_path / "hf")
    assert (out / "model.safetensors").exists() and not list(tmp_path.glob(".hf.tmp*"))
    hf = hf_model(out)
    cfg = hf.config
    assert (cfg.vocab_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (VOCAB, 4, 2)
    assert cfg.tie_word_embeddings == ("_tied" in name) and cfg.max_position_embeddings == 32
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (cfg.bos_token_id, cfg.eos_token_id) == (1, 2)
    assert tokenizer.model_max_length == 32

    ref = torch.load(runs[name] / "reference_logits.pt")
    model, meta = load_model(runs[name])
    with torch.no_grad():
        ours = model(ref["tokens"])[..., :VOCAB]
        theirs = hf(ref["tokens"]).logits
    assert theirs.std() > 0.1  # a real, non-degenerate model
    assert (ours - theirs).abs().max() <= ATOL
    assert (theirs - ref["logits"]).abs().max() <= ATOL  # = the TP=2 model as trained


def test_bf16_training_and_bf16_export(runs, tmp_path, offline):
    from bigtrain.convert.load import load_model

    ref = torch.load(runs[Z1_BF16] / "reference_logits.pt")
    model, _ = load_model(runs[Z1_BF16])
    fp32 = hf_model(export(runs[Z1_BF16], tmp_path / "fp32"))
    bf16_dir = export(runs[Z1_BF16], tmp_path / "bf16", dtype="bf16")
    bf16 = hf_model(bf16_dir)
    assert bf16.dtype == torch.bfloat16 and json.loads((bf16_dir / "config.json").read_text())["dtype"] == "bfloat16"
    with torch.no_grad():
        ours = model(ref["tokens"])[..., :VOCAB]
        assert (ours - fp32(ref["tokens"]).logits).abs().max() <= ATOL  # fp32 master weights, fp32 math
        assert (ours - bf16(ref["tokens"]).logits.float()).abs().max() < 0.05
    assert (ours - ref["logits"]).abs().max() < 0.05  # the run's forward was in bf16


def hf_greedy_cropped(hf, ids: list[int], n: int, seq_len: int) -> list[int]:
    """Greedy decoding with HF's model, recomputing on the last seq_len tokens (bigtrain's contract)."""
    ids = list(ids)
    for _ in range(n):
        with torch.no_grad():
            ids.append(int(hf(torch.tensor([ids[-seq_len:]])).logits[0, -1].argmax()))
    return ids[-n:]


@pytest.mark.parametrize("name", [Z3_TIED, "z3_dp1_untied"])
def test_greedy_generation_agrees_with_hf(runs, name, tmp_path, offline):
    from bigtrain.convert.load import encode_document, load_model, load_tokenizer
    from bigtrain.generate import generate, greedy_tokens

    hf = hf_model(export(runs[name], tmp_path / "hf"))
    folder = resolve_checkpoint(runs[name])
    tokenizer = load_tokenizer(folder)
    model, _ = load_model(folder)
    prompt = "def main(argv):"
    ids = encode_document(tokenizer, prompt)
    within = 32 - len(ids)  # new tokens that still fit the model's seq_len
    ours = greedy_tokens(model, ids, within + 6, eos_token_id=None, seq_len=32)
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=within, min_new_tokens=within, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    assert ours[:within] == out[0, len(ids):].tolist()  # HF's own generate (KV cache)
    assert ours == hf_greedy_cropped(hf, ids, within + 6, seq_len=32)  # past seq_len: left-cropped context
    text = generate(runs[name], prompt, max_new_tokens=8)
    expected = ours[:8]
    if tokenizer.eos_token_id in expected:  # generate() stops at EOS
        expected = expected[:expected.index(tokenizer.eos_token_id)]
    assert text == tokenizer.decode(expected, skip_special_tokens=True)


def hf_perplexity_tool():
    """tools/hf_perplexity.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hf_perplexity", Path(__file__).parents[1] / "tools" / "hf_perplexity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", [Z3_TIED, "z2_untied"])
def test_evaluate_matches_hf_perplexity_tool(runs, name, tmp_path, offline):
    """`bigtrain eval` on the checkpoint == tools/hf_perplexity.py on its export (same windowing contract)."""
    from transformers import AutoTokenizer

    from bigtrain.evaluate import evaluate

    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT)
    out = export(runs[name], tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = [tokenizer.bos_token_id] + tokenizer.encode(TEXT, add_special_tokens=False)
    tool = hf_perplexity_tool()
    for seq_len in (32, 20):  # 20: more windows, a different last partial window
        result = evaluate(runs[name], text_file, seq_len)
        theirs = tool.perplexity(out, TEXT, seq_len)
        assert result["tokens"] == theirs["tokens"] == len(ids) - math.ceil(len(ids) / seq_len)  # window: len - 1
        assert abs(result["loss"] - theirs["loss"]) <= ATOL
        assert 4.0 < theirs["loss"] < 7.0  # near log(300) = 5.7 after two steps on random tokens


def test_sharded_export_loads(runs, tmp_path, offline, monkeypatch):
    import bigtrain.convert.to_hf as to_hf_module

    monkeypatch.setattr(to_hf_module, "MAX_SHARD_BYTES", 100_000)
    out = export(runs["z2_untied"], tmp_path / "hf")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ref = torch.load(runs["z2_untied"] / "reference_logits.pt")
    with torch.no_grad():
        assert (hf_model(out)(ref["tokens"]).logits - ref["logits"]).abs().max() <= ATOL


# --- broken checkpoints fail loudly ---------------------------------------------------------------

def copy_checkpoint(run: Path, dst: Path) -> Path:
    folder = resolve_checkpoint(run)
    shutil.copytree(folder, dst)
    return dst


def test_missing_rank_file_is_named(runs, tmp_path):
    from bigtrain.convert.load import load_model

    ckpt = copy_checkpoint(runs[Z3_TIED], tmp_path / "ckpt")
    (ckpt / "zero_pp_rank_1_mp_rank_01_optim_states.pt").unlink()
    for convert in (lambda: export(ckpt, tmp_path / "hf"), lambda: load_model(ckpt)):
        with pytest.raises(CheckpointError, match=r"data_parallel=2.*zero_pp_rank_1_mp_rank_01_optim_states\.pt"):
            convert()
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf*"))


def test_truncated_file_is_named(runs, tmp_path):
    ckpt = copy_checkpoint(runs["z2_untied"], tmp_path / "ckpt")
    victim = ckpt / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"zero_pp_rank_1_mp_rank_00_optim_states\.pt is truncated or corrupt"):
        export(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_checkpoint_without_meta_is_rejected(runs, tmp_path):
    ckpt = copy_checkpoint(runs["z0_tied"], tmp_path / "ckpt")
    (ckpt / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="not a bigtrain run or checkpoint"):
        export(ckpt, tmp_path / "hf")


def test_mismatched_partition_count_is_rejected(runs, tmp_path):
    ckpt = copy_checkpoint(runs["z3_dp1_untied"], tmp_path / "ckpt")
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "data_parallel": 2}))
    with pytest.raises(CheckpointError, match="incomplete"):
        export(ckpt, tmp_path / "hf")
    for name in ("zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                 "zero_pp_rank_0_mp_rank_01_model_states.pt", "zero_pp_rank_0_mp_rank_01_optim_states.pt"):
        shutil.copy(ckpt / name, ckpt / name.replace("rank_0_", "rank_1_", 1))
    with pytest.raises(CheckpointError, match="partitioned over 1 ranks, but meta.json says data_parallel=2"):
        export(ckpt, tmp_path / "hf2")


def test_existing_output_folder_is_not_overwritten(runs, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already exists"):
        export(runs["z0_tied"], out)
    assert (out / "keep.txt").read_text() == "mine"


# --- the reshaping functions are exact inverses ---------------------------------------------------

def test_layout_inverses():
    from bigtrain.config.schema import ModelConfig
    from bigtrain.checkpoint.layout import from_hf_parts, merge_tp, split_tp, to_hf_parts

    cfg = ModelConfig(hidden_size=64, num_heads=4, num_kv_heads=2, ffn_hidden_size=96)  # head_dim 16
    full = {"embed.weight": torch.randn(384, 64), "layers.0.attn.qkv.weight": torch.randn(128, 64),
            "layers.0.attn.proj.weight": torch.randn(64, 64), "layers.0.mlp.fc1.weight": torch.randn(192, 64),
            "layers.0.mlp.fc2.weight": torch.randn(64, 96), "layers.0.attn_norm.weight": torch.randn(64)}
    shards = split_tp(full, 2)
    fc1 = full["layers.0.mlp.fc1.weight"]  # [gate (96); up (96)] -> rank 1 holds [gate[48:]; up[48:]]
    assert shards[1]["layers.0.mlp.fc1.weight"].equal(torch.cat([fc1[48:96], fc1[144:]]))
    assert shards[1]["layers.0.attn.qkv.weight"].equal(full["layers.0.attn.qkv.weight"][64:])  # KV group 1
    for tp in (1, 2, 4):
        merged = merge_tp(split_tp(full, tp))
        assert all(merged[k].equal(v) for k, v in full.items())
    for name, tensor in full.items():
        back = from_hf_parts(name, to_hf_parts(name, tensor, cfg, vocab_size=300), cfg, padded_vocab_size=384)
        rows = 300 if name == "embed.weight" else None  # the vocabulary padding comes back as zeros
        assert back[:rows].equal(tensor[:rows]) and back.shape == tensor.shape
    qkv = full["layers.0.attn.qkv.weight"]
    q, k, v = to_hf_parts("layers.0.attn.qkv.weight", qkv, cfg, 300)
    assert (q.shape, k.shape, v.shape) == ((64, 64), (32, 64), (32, 64))
    # group g = [q_2g, q_2g+1, k_g, v_g] (16 rows each)
    assert q[16:32].equal(qkv[16:32]) and k[:16].equal(qkv[32:48]) and v[16:].equal(qkv[112:])


class NotAWeight:
    pass


def test_files_with_foreign_objects_are_refused(tmp_path):
    from bigtrain.checkpoint.zero_reader import load_file

    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.zeros(2)}, "payload": NotAWeight()}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_file(path)
