"""Any Hugging Face tokenizer (``tokenizer.json`` only): a GPT-2 style byte-level BPE of 70,000 ids trained
here with the ``tokenizers`` library (> 65,536 ids: uint32 shards).

Checked: the shards hold exactly ``[bos] + ids + [eos]`` of ``AutoTokenizer``'s ids; the bos/eos rule
(tokenizer_config.json, one named -> both, none -> error); the identity (sha256 of the files) in the
manifest and the refusal of a replaced tokenizer; end to end: shard -> train at TP2 -> ``to-hf`` -> the
exported folder's ``AutoTokenizer`` gives the shards' ids; and ``from-hf`` of a Llama whose tokenizer is
``tokenizer.json`` only -> shard new text with ``run/tokenizer`` -> continue pretraining (first loss =
the HF model's loss on the same batch, <= 1e-5) -> ``to-hf`` -> same ids.
"""

from __future__ import annotations

import json
import random
import shutil
import string
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from launch import run_ranks  # noqa: E402

from bigtrain.data.errors import DataError  # noqa: E402
from bigtrain.data.manifest import Manifest  # noqa: E402
from bigtrain.data.reader import ShardReader  # noqa: E402
from bigtrain.data.shards import is_val, write_shards  # noqa: E402
from bigtrain.data.sources import load_sources  # noqa: E402
from bigtrain.data.text_tokenizer import load_tokenizer  # noqa: E402

VOCAB = 70_000
EOT = "<|endoftext|>"
TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=2",
        "model.ffn_hidden_size=64", "model.seq_len=32", "parallel.tensor_parallel=2", "parallel.zero_stage=1",
        "train.global_batch_size=4", "train.micro_batch_size=2", "train.steps=2", "train.warmup_steps=1",
        "checkpoint.every=0", "log.every=1", "log.tensorboard=false", "eval.every=0"]

pytestmark = pytest.mark.usefixtures("in_process_world")


def random_docs(seed: int, count: int, words: int = 30_000) -> list[str]:
    """Documents of made-up words: 30,000 distinct words give a BPE enough merges for 70,000 ids."""
    made_up = random.Random(0)  # the same words as the tokenizer's training text, whatever the seed
    vocab = ["".join(made_up.choices(string.ascii_lowercase, k=made_up.randint(5, 9))) for _ in range(30_000)]
    rng = random.Random(seed)
    vocab = vocab[:words]
    return [" ".join(rng.choices(vocab, k=200)) + rng.choice([".", "!", " 42.", "\n"]) for _ in range(count)]


def train_byte_level_bpe(docs: list[str], out: Path, **specials) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOT], show_progress=False,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tk, **specials).save_pretrained(out)
    return out


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Path:
    tok = train_byte_level_bpe(random_docs(0, 600), tmp_path_factory.mktemp("bpe") / "tok", bos_token=EOT,
                               eos_token=EOT)
    assert sorted(p.name for p in tok.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    return tok


def first_train_document(docs: list[str], seed: int = 0, val_fraction: float = 0.01) -> str:
    return next(d for i, d in enumerate(docs) if not is_val(seed, i, val_fraction))


def check_same_ids(hf_dir: Path, shards: Path, docs: list[str]) -> None:
    """``AutoTokenizer(hf_dir)`` gives the ids of the shards: sample 0 starts with the first train document."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(hf_dir)
    m = Manifest.load(shards)
    ids = hf.encode(first_train_document(docs), add_special_tokens=False)
    sample = ShardReader(m, "train").read(0)  # a tokenizer of the same 70,000 ids (identity checked at start)
    assert sample.dtype == np.dtype("<u4") and m.dtype == "uint32"
    assert sample.tolist() == ([m.bos_id, *ids] + [m.eos_id])[:m.seq_len + 1]
    reader = ShardReader(m, "train")
    assert reader.read_many(range(reader.num_samples)).max() >= 1 << 16  # ids that need uint32
    config = json.loads((hf_dir / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["vocab_size"]) == (m.bos_id, m.eos_id, VOCAB)
    assert hf.decode(ids) == first_train_document(docs)


def test_ids_specials_and_identity(bpe, tmp_path):
    from transformers import AutoTokenizer

    tok, hf = load_tokenizer(bpe), AutoTokenizer.from_pretrained(bpe)
    assert (tok.backend, tok.vocab_size, tok.bos_id, tok.eos_id) == ("tokenizers", VOCAB, 0, 0)
    texts = ["", " leading", "ünïcödé ☃ 😀 中文", "x<|endoftext|>y", *random_docs(1, 20, words=500)]
    assert [tok.encode(t) for t in texts] == [hf.encode(t, add_special_tokens=False) for t in texts]
    assert all(tok.decode(tok.encode(t)) == t for t in texts if EOT not in t)
    assert tok.encode("x<|endoftext|>y")[1] == 0  # special-token text in a document: its id, as AutoTokenizer does

    # bos/eos rule: only eos named -> both; none -> an error naming the file
    only_eos = tmp_path / "only_eos"
    shutil.copytree(bpe, only_eos)
    config = json.loads((only_eos / "tokenizer_config.json").read_text())
    config["bos_token"] = None
    (only_eos / "tokenizer_config.json").write_text(json.dumps(config))
    assert (load_tokenizer(only_eos).bos_id, load_tokenizer(only_eos).eos_id) == (0, 0)
    config["eos_token"] = None
    (only_eos / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=r"no bos_token or eos_token in tokenizer_config\.json"):
        load_tokenizer(only_eos)
    config["eos_token"] = "<|nope|>"
    (only_eos / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=r"special token '<\|nope\|>' is not in the vocabulary"):
        load_tokenizer(only_eos)
    with pytest.raises(DataError, match=r"is not a tokenizer folder: it has neither bigtrain_tokenizer\.json"):
        load_tokenizer(tmp_path)


def test_shards_record_the_identity_and_refuse_a_replaced_tokenizer(bpe, tmp_path):
    docs = random_docs(2, 40, words=2000)
    tok = shutil.copytree(bpe, tmp_path / "tok")
    m = write_shards(tok, [write_jsonl(tmp_path / "c.jsonl", docs)], 32, tmp_path / "shards", workers=2)
    assert (m.tokenizer.backend, m.dtype, m.vocab_size) == ("tokenizers", "uint32", VOCAB)
    assert m.tokenizer.sha256 == load_tokenizer(tok).sha256
    assert write_shards(tok, [tmp_path / "c.jsonl"], 32, tmp_path / "one", workers=1).splits == m.splits
    load_sources([(str(tmp_path / "shards"), 1.0, "")])
    config = json.loads((tok / "tokenizer_config.json").read_text())
    (tok / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "a"}))  # other eos id
    with pytest.raises(DataError, match=r"is not the one the shards in .* were made with"):
        load_sources([(str(tmp_path / "shards"), 1.0, "")])


@pytest.mark.slow
def test_shard_train_tp2_export_same_ids(bpe, tmp_path):
    from bigtrain.convert.to_hf import to_hf

    docs = random_docs(3, 120)
    shards = tmp_path / "shards"
    write_shards(bpe, [write_jsonl(tmp_path / "c.jsonl", docs)], 32, shards, workers=2)
    run = tmp_path / "run"
    run_ranks("bigtrain/pretrain.py", 2, ["--config", "debug", *TINY, f"run.dir={run}", f"data.path={shards}"],
              timeout=300)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and abs(rows[0]["loss"] - np.log(VOCAB)) < 1.0
    check_same_ids(to_hf(run, tmp_path / "hf"), shards, docs)


def make_hf_llama(folder: Path, tokenizer: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                 bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)).save_pretrained(folder)
    for f in tokenizer.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


@pytest.mark.slow
def test_from_hf_shard_continue_export_same_ids(bpe, tmp_path):
    from transformers import AutoModelForCausalLM

    from bigtrain.convert.from_hf import from_hf
    from bigtrain.convert.to_hf import to_hf
    from bigtrain.data.order import GlobalOrder

    hf_dir = make_hf_llama(tmp_path / "hf", bpe)
    run = from_hf(hf_dir, tmp_path / "run", tensor_parallel=2)
    assert not (run / "tokenizer" / "bigtrain_tokenizer.json").exists()
    docs = random_docs(4, 120)  # new text, sharded with the run's own tokenizer
    shards = tmp_path / "shards"
    write_shards(run / "tokenizer", [write_jsonl(tmp_path / "new.jsonl", docs)], 32, shards, workers=2)
    run_ranks("bigtrain/pretrain.py", 2, [f"run.dir={run}", f"data.path={shards}", "train.steps=2",
                                          "train.global_batch_size=4", "train.micro_batch_size=2",
                                          "log.tensorboard=false", "eval.every=0"], timeout=300)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reader = ShardReader(Manifest.load(shards), "train")
    tokens = reader.read_many(GlobalOrder(reader.num_samples, 1234).samples(np.arange(4)))
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(hf_dir).eval()(tokens[:, :-1]).logits.float()
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).item()
    assert [r["step"] for r in rows] == [1, 2] and abs(rows[0]["loss"] - expected) <= 1e-5
    check_same_ids(to_hf(run, tmp_path / "exported"), shards, docs)
    # eval and generate read the checkpoint's tokenizer.json folder too (bos = eos = <|endoftext|>)
    from bigtrain.evaluate import evaluate
    from bigtrain.generate import generate

    text = tmp_path / "doc.txt"
    text.write_text(docs[0])
    result = evaluate(run, text, 32)
    assert result["tokens"] > 100 and 0 < result["loss"] < 2 * np.log(VOCAB)
    assert isinstance(generate(run, docs[1][:40], 4), str)
