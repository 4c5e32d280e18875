"""Rank script for tests/test_plan_measure.py: the bytes one forward of the real model keeps for backward.

    torchrun --nproc_per_node T tests/activation_measure.py OUT.json '[{"mode": "none", "sp": false, ...}]'

For each case: build bigtrain's LlamaModel at TP = world size (megatron-core layers, gloo), apply the
activation checkpointing of the case (bigtrain/parallel/optimize.py), run one forward of the loss, and
count on this rank
- ``held``: bytes of every tensor storage created during the forward that is still alive after it
  (a TorchDispatchMode sees each op's outputs; torch's StorageWeakRef tells which survive): what the
  micro batch holds until backward, whatever holds it (autograd's saved tensors, the checkpoint's
  inputs, selective checkpointing's cache);
- ``saved``: bytes packed by ``torch.autograd.graph.saved_tensors_hooks`` (distinct storages, no
  parameters). Equal to ``held`` without checkpointing; under checkpointing torch's own hooks take
  the tensors instead, so only ``held`` sees them.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from megatron.core import ModelParallelConfig, parallel_state
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bigtrain.config.load import load_config
from bigtrain.model.llama import LlamaModel
from bigtrain.parallel.optimize import optimize_model
from bigtrain.parallel.sequence import allow_sequence_parallel_on_cpu

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Allocations(TorchDispatchMode):
    """Weak references to the storage of every tensor an op returns while active."""

    def __init__(self):
        super().__init__()
        self.storages: list[tuple[StorageWeakRef, int]] = []  # a freed address can be reused: keep them all

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                s = t.untyped_storage()
                self.storages.append((StorageWeakRef(s), s.nbytes()))
        return out

    def alive_bytes(self, exclude: set[int]) -> int:
        alive = {ref.cdata: n for ref, n in self.storages if not ref.expired()}  # cdata: the C++ storage
        return sum(n for cdata, n in alive.items() if cdata not in exclude)


def measure(case: dict, overrides: list[str]) -> dict:
    cfg = load_config("debug", [*overrides, f"model.activation_checkpointing={case['mode']}",
                                f"model.attention_backend={case['kernel']}"])
    tp_size = dist.get_world_size()
    tp = ModelParallelConfig(tensor_model_parallel_size=tp_size, use_cpu_initialization=True,
                             params_dtype=torch.float32, sequence_parallel=case["sp"] and tp_size > 1,
                             gradient_accumulation_fusion=False)
    torch.manual_seed(0)
    model = LlamaModel(cfg.model, cfg.model.vocab_size, tp).to(DTYPES[case["precision"]])
    optimize_model(model, cfg.model.activation_checkpointing)
    tokens = torch.randint(0, cfg.model.vocab_size, (cfg.train.micro_batch_size, cfg.model.seq_len + 1))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weight_storages = {StorageWeakRef(p.untyped_storage()).cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            saved[s.data_ptr()] = max(saved.get(s.data_ptr(), 0), s.nbytes())
        return t

    allocations = Allocations()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), allocations:
        loss = model(tokens[:, :-1], tokens[:, 1:])
    held = allocations.alive_bytes(weight_storages | {StorageWeakRef(loss.untyped_storage()).cdata})
    loss.sum().backward()  # the graph is complete: backward runs (and frees what was held)
    total = sum(p.numel() if getattr(p, "tensor_model_parallel", False) else p.numel() / tp_size
                for p in model.parameters())  # per TP rank; replicated ones (norms) counted once over the group
    return {**case, "held": held, "saved": sum(saved.values()), "params_total": round(total * tp_size)}


def main() -> None:
    out_path, cases, overrides = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    dist.init_process_group("gloo")
    allow_sequence_parallel_on_cpu()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=dist.get_world_size(),
                                             create_gloo_process_groups=False)
    results = [measure(case, overrides) for case in cases]
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
