"""The plan of one layout: groups, parameters, memory per GPU, step time; its errors, advice and warnings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from bigtrain.config.schema import Config
from bigtrain.config.validate import config_errors, resolve_precision
from bigtrain.errors import UserError
from bigtrain.plan.activations import activation_bytes, logits_bytes
from bigtrain.plan.advice import candidate_changes, fitting_change
from bigtrain.plan.memory import bucket_bytes, model_states, zero3_gathered_bytes
from bigtrain.config.arithmetic import ParamCounts, padded_vocab_size, param_counts
from bigtrain.plan.steptime import Hardware, step_time

GIB = 1024 ** 3
EMBEDDED_VOCAB = 4096  # the embedded default corpus' tokenizer (bigtrain/data/embedded.py)
MORE_NODES = (2, 4, 8, 16, 32, 64)


class PlanInputError(UserError):
    """Numbers no layout can be computed from (--nodes 0, a non-positive size): every problem, one per line."""

    def __init__(self, errors: list[str]):
        super().__init__("\nerror: ".join(errors))
        self.errors = errors


class PlanErrors(UserError):
    """The plan was printed and has errors: exit 2 with each as an ``error:`` line."""

    def __init__(self, errors: list[str]):
        super().__init__("\nerror: ".join(errors))


@dataclass
class Plan:
    nodes: int
    gpus_per_node: int
    world_size: int
    tensor_parallel: int
    sequence_parallel: bool
    data_parallel: int
    tp_groups: list[list[int]]  # the first few, rank ids
    dp_groups: list[list[int]]
    tp_within_node: bool
    zero_stage: int
    precision: str
    activation_checkpointing: str
    attention_backend: str
    vocab_size: int
    padded_vocab_size: int
    params: ParamCounts
    micro_batch_size: int
    grad_accumulation: int  # 0 when the global batch is not a whole number of micro batches x DP (an error)
    tokens_per_step: int
    tokens_per_micro_batch_per_gpu: int
    memory_bytes: dict[str, int]  # per GPU; see bigtrain/plan/__init__.py
    gpu_memory_gb: float
    fits: bool
    step_time_s: float
    comm_fraction: float
    step_time_detail: dict[str, float]
    errors: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_vocab(cfg: Config) -> tuple[int, str | None]:
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, None
    if cfg.data.path:
        from bigtrain.data.manifest import Manifest

        try:
            return Manifest.load(Path(cfg.data.path)).vocab_size, None
        except Exception as exc:  # plan is advisory: say what was assumed instead of failing
            return EMBEDDED_VOCAB, f"could not read the vocabulary size from {cfg.data.path} ({exc}); assumed {EMBEDDED_VOCAB}"
    return EMBEDDED_VOCAB, None


def input_errors(nodes: int, gpus_per_node: int, gpu_memory_gb: float, reserve_gb: float) -> list[str]:
    errors = [f"{flag} must be positive, got {value}" for flag, value in
              [("--nodes", nodes), ("--gpus-per-node", gpus_per_node), ("--gpu-memory-gb", gpu_memory_gb)]
              if not value > 0]
    return errors + ([f"--reserve-gb must be >= 0, got {reserve_gb}"] if reserve_gb < 0 else [])


def memory(cfg: Config, params: ParamCounts, dp: int, vocab: int, vpad: int, reserve_gb: float) -> tuple[dict, dict]:
    """(bytes per GPU by kind, the activation detail); see bigtrain/plan/memory.py and activations.py."""
    p, m, t = cfg.parallel, cfg.model, cfg.train
    a = 4 if t.precision == "fp32" else 2
    n, tp = params.per_tp_rank, p.tensor_parallel
    mem = model_states(t.precision, p.zero_stage, p.cpu_offload, n, dp)
    acts = activation_bytes(m, vocab, vpad, tp, p.sequence_parallel, a, t.micro_batch_size,
                            m.activation_checkpointing, m.attention_backend)
    mem["activations"] = acts["total"]
    mem["logits"] = logits_bytes(vpad, tp, t.precision, t.micro_batch_size * m.seq_len)["peak"]
    mem["zero3_gathered"] = zero3_gathered_bytes(cfg, max(params.embedding, params.block), n)
    mem["buffers"] = bucket_bytes(cfg, n)
    mem["reserve"] = round(reserve_gb * GIB)
    mem["total"] = sum(mem.values())
    return mem, acts


def groups(world: int, tp: int, limit: int = 4) -> tuple[list[list[int]], list[list[int]]]:
    """megatron's order: TP ranks adjacent, DP ranks strided by TP (bigtrain/parallel/world.py)."""
    tp_groups = [list(range(s, s + tp)) for s in range(0, world, tp)][:limit]
    dp_groups = [list(range(r, world, tp))[:16] for r in range(tp)][:limit]
    return tp_groups, dp_groups


def make_plan(cfg: Config, nodes: int | None = None, gpus_per_node: int | None = None,
              gpu_memory_gb: float | None = None, reserve_gb: float = 2.0, hw: Hardware = Hardware(),
              advise: bool = True) -> Plan:
    """Plan ``cfg`` on nodes x gpus_per_node GPUs (default: the recipe's ``cluster`` section)."""
    cfg = resolve_precision(cfg, cuda=True)  # a plan is for GPUs: train.precision=auto trains in bf16 there
    nodes = cfg.cluster.nodes if nodes is None else nodes
    gpus_per_node = cfg.cluster.gpus_per_node if gpus_per_node is None else gpus_per_node
    gpu_memory_gb = cfg.cluster.gpu_memory_gb if gpu_memory_gb is None else gpu_memory_gb
    errors = input_errors(nodes, gpus_per_node, gpu_memory_gb, reserve_gb)
    errors += [e for e in config_errors(cfg) if "must be positive" in e]
    if errors:
        raise PlanInputError(errors)
    world, tp = nodes * gpus_per_node, cfg.parallel.tensor_parallel
    errors = list(config_errors(cfg, world))
    vocab, note = resolve_vocab(cfg)
    dp = max(world // tp, 1)
    vpad = padded_vocab_size(vocab, cfg.model.vocab_pad_multiple, tp)
    params = param_counts(cfg.model, vpad, tp)
    mem, acts = memory(cfg, params, dp, vocab, vpad, reserve_gb)
    t = cfg.train
    whole = t.global_batch_size % (t.micro_batch_size * dp) == 0
    accum = t.global_batch_size // (t.micro_batch_size * dp) if whole else 0
    timing = step_time(cfg, vocab, params.per_tp_rank, world, gpus_per_node, max(accum, 1), hw)
    tp_groups, dp_groups = groups(world, tp)
    within = tp <= gpus_per_node and gpus_per_node % tp == 0
    fits = mem["total"] <= gpu_memory_gb * GIB
    plan = Plan(nodes, gpus_per_node, world, tp, cfg.parallel.sequence_parallel and tp > 1, dp, tp_groups, dp_groups,
                within, cfg.parallel.zero_stage, t.precision, cfg.model.activation_checkpointing,
                cfg.model.attention_backend, vocab, vpad, params, t.micro_batch_size, accum,
                t.global_batch_size * cfg.model.seq_len, t.micro_batch_size * cfg.model.seq_len, mem, gpu_memory_gb,
                fits, timing["step_time_s"], timing["comm_fraction"], timing, errors, [], [note] if note else [])
    if not fits:
        plan.errors.append(f"does not fit: about {mem['total'] / GIB:.1f} GiB per GPU needed, {gpu_memory_gb:g} GiB "
                           "available")
    if advise and not fits:
        plan.advice += fit_advice(cfg, nodes, gpus_per_node, gpu_memory_gb, reserve_gb, hw)
    plan.warnings += layout_warnings(plan, timing)
    return plan


def fit_advice(cfg: Config, nodes: int, gpus_per_node: int, gpu_memory_gb: float, reserve_gb: float,
               hw: Hardware) -> list[str]:
    def fits(c: Config, n: int = nodes) -> bool:
        if config_errors(c, n * gpus_per_node):
            return False
        return make_plan(c, n, gpus_per_node, gpu_memory_gb, reserve_gb, hw, advise=False).fits

    dp = nodes * gpus_per_node // cfg.parallel.tensor_parallel
    change = fitting_change(cfg, candidate_changes(cfg, gpus_per_node, dp), fits)
    advice = [f"to fit, set {change}"] if change else []
    more = next((n for n in (nodes * k for k in MORE_NODES) if fits(cfg, n)), None)
    if more:
        advice.append(f"or use more nodes: --nodes {more} (ZeRO partitions the model states over more GPUs)")
    if not advice:
        advice.append("no single change found that fits: use a smaller model or larger GPUs")
    return advice


def layout_warnings(plan: Plan, timing: dict) -> list[str]:
    out = []
    if plan.tensor_parallel > plan.gpus_per_node:
        out.append(f"parallel.tensor_parallel ({plan.tensor_parallel}) is larger than a node "
                   f"({plan.gpus_per_node} GPUs): every layer's all-reduce crosses the network")
    elif not plan.tp_within_node:
        out.append(f"gpus per node ({plan.gpus_per_node}) is not a multiple of parallel.tensor_parallel "
                   f"({plan.tensor_parallel}): some tensor-parallel groups straddle two nodes")
    if plan.zero_stage > 0 and plan.data_parallel == 1:
        out.append(f"ZeRO-{plan.zero_stage} with data-parallel size 1 partitions nothing")
    if timing["overlapped_comm_s"] > timing["compute_s"]:
        out.append(f"communication-bound: ZeRO-{plan.zero_stage} traffic ({timing['overlapped_comm_s']:.2f} s per step) "
                   f"exceeds compute ({timing['compute_s']:.2f} s); a larger micro batch or ZeRO-1 amortises it "
                   "(docs/scaling.md)")
    return out
