"""Real bigtrain checkpoints of tiny models for the conversion tests, trained once per test session.

Two launches of tests/train_tiny.py run side by side: 4 gloo ranks (TP=2 x DP=2 by default; TP=4 x
DP=1 and TP=1 x DP=4 runs rebuild megatron's groups) and 2 ranks (TP=1 x DP=2, and one TP=2 x DP=1
run). Each run trains 2 steps on random tokens with the real ``build_engine`` and ``Checkpointer`` and
saves the logits of its trained, still-sharded model (``reference_logits.pt``), the ground truth a
conversion must reproduce. Runs named ``rs_*`` do not train: they load another run's checkpoint into
an engine of a different layout (bigtrain/checkpoint/reshard.py) and save it again.

The matrix (issue 6): TP {1,2} x ZeRO {1,3} x {tied, untied} x {MHA, GQA} x {fp32, bf16}. MHA: 4
heads / 4 KV heads; GQA: 4/2 at TP=2, 8/2 (4 query heads per group) at TP=1, rope_theta 5e5.
All: hidden 64, 2 layers, seq_len 32, vocabulary 300 padded to 384 rows.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from launch import run_ranks

VOCAB = 300


def matrix() -> dict[str, tuple[int, list[str]]]:
    runs = {}
    for tp, zero, tied, attn, prec in itertools.product((1, 2), (1, 3), (True, False), ("mha", "gqa"), ("fp32", "bf16")):
        name = f"tp{tp}_z{zero}_{'tied' if tied else 'untied'}_{attn}_{prec}"
        heads = ["model.num_kv_heads=4"] if attn == "mha" else ["model.rope_theta=500000"]
        if attn == "gqa" and tp == 1:
            heads += ["model.num_heads=8"]
        runs[name] = (4 if tp == 2 else 2, [f"parallel.tensor_parallel={tp}", f"parallel.zero_stage={zero}",
                                            f"model.tie_embeddings={str(tied).lower()}", f"train.precision={prec}",
                                            *heads])
    return runs


MATRIX = matrix()
EXTRA = {
    "z2_untied": (4, ["parallel.zero_stage=2", "model.tie_embeddings=false"]),
    "z0_tied": (4, ["parallel.zero_stage=0"]),
    "tp4_z3_gqa": (4, ["parallel.tensor_parallel=4", "parallel.zero_stage=3", "model.num_heads=8",
                       "model.num_kv_heads=4", "model.rope_theta=1000000"]),
    "z3_dp1_untied": (2, ["parallel.zero_stage=3", "model.tie_embeddings=false"]),
}


def model_overrides(name: str) -> list[str]:
    return [o for o in {**MATRIX, **EXTRA}[name][1] if o.startswith("model.")]


# name -> (source run, layout overrides): load the source at another TP x DP x ZeRO (x precision)
RESHARD = {
    "rs_tp2z3_to_tp1z1": ("tp2_z3_untied_gqa_fp32", ["parallel.tensor_parallel=1", "parallel.zero_stage=1"]),
    "rs_tp2z1b_to_tp4z3b": ("tp2_z1_tied_mha_bf16", ["parallel.tensor_parallel=4", "parallel.zero_stage=3",
                                                     "train.precision=bf16"]),
    "rs_tp2z3b_to_tp1z3": ("tp2_z3_tied_gqa_bf16", ["parallel.tensor_parallel=1", "parallel.zero_stage=3"]),
    "rs_z0_to_tp2z2": ("z0_tied", ["parallel.zero_stage=2"]),
}


def make_tokenizer(out: Path) -> Path:
    """A small byte-level BPE tokenizer in HF format (<unk>=0, <s>=1, </s>=2), 300 tokens."""
    import pydoc_data.topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(pydoc_data.topics.topics.values())[:200], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert len(fast) == VOCAB
    fast.save_pretrained(out)
    return out


def launch_args(root: Path, tok: Path, nprocs: int) -> list:
    args = ["--tokenizer", tok, "--vocab-size", VOCAB]
    for name, (ranks, overrides) in {**MATRIX, **EXTRA}.items():
        if ranks == nprocs:
            args += [root / name, *overrides, "--"]
    if nprocs == 4:  # after their sources were trained in the same launch
        for name, (source, layout) in RESHARD.items():
            args += [root / name, *model_overrides(source), *layout, f"from={root / source}", "--"]
    return args


def trained_runs(tmp_path_factory) -> dict[str, Path]:
    """Train (once per session: later callers find the marker file) and return name -> run dir."""
    root = tmp_path_factory.getbasetemp() / "tiny-runs"
    names = [*MATRIX, *EXTRA, *RESHARD]
    if not (root / "done").exists():
        root.mkdir(exist_ok=True)
        tok = make_tokenizer(root / "tokenizer")
        with ThreadPoolExecutor(2) as pool:  # the two launches overlap their start-up
            procs = list(pool.map(lambda n: run_ranks("tests/train_tiny.py", n, launch_args(root, tok, n),
                                                      timeout=600), [4, 2]))
        missing = [n for n in names if not (root / n / "checkpoints" / "latest").exists()]
        if missing:
            logs = "\n".join(f"{p.stdout[-2000:]}\n{p.stderr[-5000:]}" for p in procs)
            pytest.fail(f"runs {missing} wrote no checkpoint:\n{logs}")
        (root / "done").write_text("ok\n")
    return {name: root / name for name in names}
