"""Knowledge distillation (``train.objective=distill``): a causal student learns from a frozen teacher.

Per token, with student logits s and teacher logits t (both vocab-parallel, (..., V/tp) per TP rank):

    loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, next token)

averaged over the tokens of the global batch (like causal LM). The KL is computed vocab-parallel
(bigtrain/model/vocab_parallel.py): a max and a sum-exp all-reduce over the TP group, so no rank ever
holds full-vocabulary logits. Logged per step (means over the global batch): ``kd_loss`` (the T^2-scaled
KL), ``ce_loss`` (the student's next-token loss), ``teacher_loss`` (the teacher's, on the same batch);
``loss`` is the total. Validation (``val_loss``) is the student's next-token loss, comparable with
causal-LM runs.

The teacher (``distill.teacher``: a bigtrain run/checkpoint or an HF Llama folder, opened by
bigtrain/convert/teacher.py) is built once at the student's TP layout, its weights read one parameter
at a time; under ZeRO-3 it is partitioned over the data-parallel group (``zero.Init``) and wrapped in a
DeepSpeed engine without optimizer (ZeRO-3 inference: parameters gathered per layer in forward). It is
in eval mode with ``requires_grad=False``, never in the optimizer, never saved: checkpoints record its
identity (path, sha256) in meta.json, and a resume re-reads it from there (checked to be the same).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from megatron.core import parallel_state

from bigtrain.checkpoint.manager import CHECKPOINT_DIR, latest_checkpoint, read_meta
from bigtrain.config.load import ConfigError
from bigtrain.config.schema import Config
from bigtrain.data.manifest import Manifest
from bigtrain.model.llama import LlamaModel
from bigtrain.model.vocab_parallel import cross_entropy, kl_divergence
from bigtrain.parallel.dsenv import import_deepspeed
from bigtrain.parallel.engine import build_ds_config, tp_layer_config
from bigtrain.parallel.mpu import MegatronMpu
from bigtrain.train.objectives import CausalLM


def check_teacher(cfg: Config, manifest: Manifest, open_teacher) -> object:
    """Open the teacher's metadata and check it fits the student (vocabulary, tokenizer, TP); -> the Teacher."""
    teacher = open_teacher(cfg.distill.teacher)
    where = f"distill.teacher={cfg.distill.teacher}"
    if teacher.vocab_size != manifest.vocab_size:
        raise ConfigError(f"{where} has a vocabulary of {teacher.vocab_size} tokens, but the student's data "
                          f"({manifest.root}) was tokenized with {manifest.vocab_size}: teacher and student must "
                          "share one tokenizer")
    if teacher.tokenizer_sha256 and teacher.tokenizer_sha256 != manifest.tokenizer.sha256:
        raise ConfigError(f"{where} was trained with another tokenizer (tokenizer.model sha256 "
                          f"{teacher.tokenizer_sha256[:12]}...) than the student's data "
                          f"({manifest.tokenizer.sha256[:12]}..., {manifest.tokenizer.path}), though both have "
                          f"{manifest.vocab_size} tokens")
    check_same_teacher(cfg, teacher)
    tp, t = cfg.parallel.tensor_parallel, teacher.cfg
    for key in ("num_heads", "num_kv_heads", "ffn_hidden_size"):
        value = getattr(t, key)
        if value % tp:
            raise ConfigError(f"{where}: the teacher's {key} ({value}) must be divisible by "
                              f"parallel.tensor_parallel ({tp})")
    return teacher


def check_same_teacher(cfg: Config, teacher) -> None:
    """A resumed run must distill from the teacher its checkpoint recorded (same sha256)."""
    folder = latest_checkpoint(Path(cfg.run.dir) / CHECKPOINT_DIR)
    saved = (read_meta(folder).get("distill") or {}) if folder else {}
    if saved.get("teacher_sha256") not in (None, teacher.sha256):
        raise ConfigError(f"{folder} was distilled from the teacher {saved.get('teacher')} (sha256 "
                          f"{saved['teacher_sha256'][:12]}...), but distill.teacher={cfg.distill.teacher} is "
                          f"{teacher.path} (sha256 {teacher.sha256[:12]}...): set "
                          f"distill.teacher={saved.get('teacher')} to resume, or use a new run.dir")


def build_teacher(cfg: Config, world, teacher) -> torch.nn.Module:
    """The frozen teacher at the student's TP layout (ZeRO-3: partitioned over DP, in an optimizer-less engine)."""
    deepspeed = import_deepspeed()
    tp = dataclasses.replace(tp_layer_config(cfg, world), perform_initialization=False)
    model_cfg = dataclasses.replace(teacher.cfg, attention_backend=cfg.model.attention_backend,
                                    activation_checkpointing="none")
    zero3 = cfg.parallel.zero_stage == 3
    ds_config = build_ds_config(cfg, world.dp_size, on_gpu=world.device.type == "cuda")
    with deepspeed.zero.Init(data_parallel_group=parallel_state.get_data_parallel_group(),
                             config_dict_or_path=ds_config, enabled=zero3, mpu=MegatronMpu()):
        model = LlamaModel(model_cfg, teacher.vocab_size, tp)
    if zero3 and model_cfg.tie_embeddings:
        deepspeed.zero.register_external_parameter(model.lm_head, model.embed.weight)
    for name, param in model.named_parameters():
        shard = teacher.shard(name, world.tp_size, world.tp_rank, model.padded_vocab_size)
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=zero3):
            param.data.copy_(shard)
        param.requires_grad_(False)
    if not zero3:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)
        return model.to(device=world.device, dtype=dtype).eval()
    inference = copy.deepcopy(ds_config)
    inference.pop("optimizer", None)
    inference.pop("scheduler", None)
    engine, _, _, _ = deepspeed.initialize(model=model, config=inference, mpu=MegatronMpu())
    engine.eval()
    return engine


class Distill(CausalLM):
    name = "distill"

    def __init__(self, teacher_model, identity: dict, alpha: float, temperature: float):
        self.teacher, self.identity = teacher_model, identity
        self.alpha, self.temperature = alpha, temperature
        self.sums = torch.zeros(3, dtype=torch.float64)  # kd, ce, teacher losses of this step's micro-batches
        self.micro_batches = 0

    @classmethod
    def build(cls, cfg: Config, world, manifest: Manifest, open_teacher) -> Distill:
        teacher = check_teacher(cfg, manifest, open_teacher)
        return cls(build_teacher(cfg, world, teacher), teacher.identity(), cfg.distill.alpha, cfg.distill.temperature)

    def begin_step(self, micro_batches: list, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.micro_batches = len(micro_batches)

    def losses(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor):
        """Per-token (kd, ce, teacher ce), each (M, T) fp32, from vocab-parallel logits (M, T, V/tp)."""
        kd = kl_divergence(student, teacher, self.temperature)  # before the CEs: they work in place
        ce = cross_entropy(student, labels)
        with torch.no_grad():
            teacher_ce = cross_entropy(teacher, labels)
        return kd, ce, teacher_ce

    def loss(self, engine, tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
        tokens = tokens.to(device, non_blocking=True).long()  # (M, T+1)
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)  # (M, T, V/tp)
        kd, ce, teacher_ce = self.losses(engine(inputs), teacher_logits, labels)
        kd, ce = kd.mean(), ce.mean()
        self.sums += torch.stack([kd.detach(), ce.detach(), teacher_ce.mean()]).double()
        return self.alpha * kd + (1 - self.alpha) * ce

    slots = (("kd_loss", "dp_sum"), ("ce_loss", "dp_sum"), ("teacher_loss", "dp_sum"))

    def contribute(self, agreement) -> None:
        """This rank's means over the step's micro-batches, into the step's one collective (agreement.py)."""
        sums = self.sums / max(self.micro_batches, 1)
        for (name, _), value in zip(self.slots, sums):
            agreement.set(name, value)

    def step_metrics(self, agreed: dict[str, float]) -> dict[str, float]:
        """Means over the data-parallel ranks (dp_sum counts each tensor-parallel group once)."""
        dp = parallel_state.get_data_parallel_world_size()
        return {name: agreed[name] / dp for name, _ in self.slots}

    def describe(self) -> dict:
        return {"distill": {**self.identity, "alpha": self.alpha, "temperature": self.temperature}}
