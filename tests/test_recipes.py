"""The shipped recipes for real sizes: complete, citing their sources, fitting their intended cluster.

- every model/train/parallel key a size recipe owns is set in its YAML (nothing silently keeps the
  schema's debug-sized default), and the file cites where its shape and hyper-parameters come from;
- published parameter counts (Llama 2 7B/13B/70B, Llama 3 8B, Llama 3.2 1B/3B as HF counts them);
- `bigtrain plan` on each recipe's intended cluster of 80 GB GPUs (the `cluster` section) fits with no
  error; llama-70b needs at most 8 nodes x 8 GPUs, llama-7b one node;
- `bigtrain config recipes` lists parameters, tokens per step and the cluster; `bigtrain bench --size`
  reads the same shapes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from launch import REPO

from bigtrain.config.load import RECIPE_DIR, load_config
from bigtrain.plan import make_plan

SIZES = ["llama-125m", "llama-350m", "llama-1b", "llama-1.3b", "llama-3b", "llama-7b", "llama-8b", "llama-13b",
         "llama-70b"]
OWNED = {
    "model": ["hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size", "rope_theta",
              "tie_embeddings", "seq_len", "vocab_size", "vocab_pad_multiple", "norm_eps", "init_std",
              "attention_backend", "activation_checkpointing"],
    "train": ["steps", "global_batch_size", "micro_batch_size", "lr", "min_lr_ratio", "warmup_steps", "weight_decay",
              "beta1", "beta2", "eps", "grad_clip", "seed", "precision"],
    "parallel": ["tensor_parallel", "sequence_parallel", "zero_stage", "cpu_offload"],
    "cluster": ["nodes", "gpus_per_node", "gpu_memory_gb"],
}
# published totals: HF's model cards / config.json parameter counts (untied 7B/13B/70B/8B, tied 1B/3B)
PUBLISHED = {"llama-7b": 6_738_415_616, "llama-13b": 13_015_864_320, "llama-70b": 68_976_648_192,
             "llama-8b": 8_030_261_248, "llama-1b": 1_235_814_400, "llama-3b": 3_212_749_824}


@pytest.mark.parametrize("name", SIZES)
def test_recipe_sets_every_key_it_owns_and_cites_its_source(name):
    text = (RECIPE_DIR / f"{name}.yaml").read_text()
    raw = yaml.safe_load(text)
    for section, keys in OWNED.items():
        missing = [k for k in keys if k not in raw.get(section, {})]
        assert not missing, f"{name}: {section}.{missing} would silently keep the default"
    assert raw["train"]["precision"] == "bf16"
    assert raw["model"]["seq_len"] >= 4096
    assert any(source in text for source in ("Llama 2 paper", "Llama 3 Herd", "GPT-3 paper")), name


@pytest.mark.parametrize("name", SIZES)
def test_recipe_fits_its_intended_cluster(name):
    cfg = load_config(name)
    plan = make_plan(cfg)
    assert plan.gpu_memory_gb <= 79.6 and plan.errors == [] and plan.fits, (plan.errors, plan.memory_bytes)
    assert plan.grad_accumulation >= 1
    if name in PUBLISHED:
        assert plan.params.total == PUBLISHED[name]
    if plan.tensor_parallel > 1:
        assert plan.sequence_parallel and plan.tp_within_node


def test_intended_clusters_of_the_contract():
    seventy, seven = load_config("llama-70b").cluster, load_config("llama-7b").cluster
    assert seventy.nodes * seventy.gpus_per_node <= 64 and seventy.gpus_per_node == 8
    assert (seven.nodes, seven.gpus_per_node) == (1, 8)


def test_config_recipes_lists_size_batch_and_cluster():
    out = subprocess.run([sys.executable, "-m", "bigtrain.cli", "config", "recipes"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env={"PYTHONPATH": str(REPO)}).stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(SIZES) | {"debug"} <= set(rows)
    assert "68.977B" in rows["llama-70b"] and "4,194,304" in rows["llama-70b"] and "8 x 8 x 79.6 GiB" in rows["llama-70b"]
    assert "6.738B" in rows["llama-7b"] and "1 x 8 x 79.6 GiB" in rows["llama-7b"]


def test_bench_sizes_are_the_recipes():
    from bigtrain.bench.sizes import get_size

    for short, recipe in [("7b", "llama-7b"), ("125m", "llama-125m"), ("llama-70b", "llama-70b")]:
        model = load_config(recipe).model
        size = get_size(short)
        assert (size.hidden, size.layers, size.model["num_kv_heads"], size.model["seq_len"]) == (
            model.hidden_size, model.num_layers, model.num_kv_heads, model.seq_len)
    assert get_size("7b-2l").layers == 2 and get_size("7b-2l").hidden == 4096
