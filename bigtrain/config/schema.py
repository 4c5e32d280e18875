"""The run configuration: typed nested dataclasses, one per YAML section.

Every field carries its help text in ``metadata["help"]``; ``bigtrain config keys`` prints them.
Keys marked *contract* in the issues (``run.dir``, ``model.hidden_size``, ``train.steps`` ...) are
public interface: rename nothing, add freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def doc(default, help: str, **kw):
    """A dataclass field with a help string (mutable defaults go through ``default_factory``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class RunConfig:
    dir: str = doc("runs/debug", "Run directory: config, metrics, checkpoints. Restarting on it resumes.")
    name: str = doc("", "Free-form run name shown in logs (default: the run directory's name).")


@dataclass
class ModelConfig:
    hidden_size: int = doc(256, "Width of the residual stream.")
    num_layers: int = doc(4, "Number of transformer blocks.")
    num_heads: int = doc(8, "Attention (query) heads.")
    num_kv_heads: int = doc(4, "Key/value heads (grouped-query attention); equal to num_heads for MHA.")
    ffn_hidden_size: int = doc(688, "Inner width of the SwiGLU MLP.")
    rope_theta: float = doc(10000.0, "RoPE base frequency.")
    tie_embeddings: bool = doc(True, "Share the input embedding with the output projection.")
    seq_len: int = doc(256, "Training sequence length in tokens (must equal the shards' seq_len).")
    vocab_size: int = doc(0, "Tokenizer vocabulary size; 0 = read it from the data manifest.")
    vocab_pad_multiple: int = doc(128, "Pad the embedding rows to a multiple of this (and of TP); padding is masked.")
    norm_eps: float = doc(1e-5, "RMSNorm epsilon.")
    init_std: float = doc(0.02, "Std of the normal init; output projections use std/sqrt(2*num_layers).")
    attention_backend: str = doc(
        "auto", "Attention kernel: auto (PyTorch's SDPA picks), flash, efficient, cudnn, math (SDPA limited to that "
        "kernel) or flash_attn (the flash-attn package). Same function, different speed (bigtrain/model/attention.py).")
    activation_checkpointing: str = doc(
        "none", "Recompute activations in backward to save memory: none; selective (per op: keep matmul and "
        "attention outputs, recompute norms, RoPE and SwiGLU; ~no extra FLOPs); full (recompute each block: +1 "
        "forward). See bigtrain/parallel/optimize.py.")


# ModelConfig keys that change how the model is computed, not what it computes: a run may resume
# with other values (checkpoints compare only the remaining, architectural keys).
MODEL_EXECUTION_KEYS = ("attention_backend", "activation_checkpointing")
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math", "flash_attn")
ACTIVATION_CHECKPOINTING = ("none", "selective", "full")


@dataclass
class ParallelConfig:
    tensor_parallel: int = doc(1, "Tensor-parallel size (megatron-core layers); must divide the world size.")
    sequence_parallel: bool = doc(
        False, "Megatron sequence parallelism: shard the residual stream, norms and pointwise ops along the "
        "sequence over the TP group (activations outside attention/MLP / TP; same traffic as TP alone). "
        "Off by default; every shipped recipe with TP > 1 turns it on. Ignored at tensor_parallel=1; "
        "needs model.seq_len divisible by TP.")
    zero_stage: int = doc(3, "DeepSpeed ZeRO stage: 0, 1, 2 or 3 (partitioned over data-parallel ranks only).")
    cpu_offload: bool = doc(False, "Offload optimizer state (and ZeRO-3 params) to CPU memory (ds_configs/cpu_offload.json).")
    backend: str = doc("auto", "torch.distributed backend: auto (nccl with CUDA, else gloo), nccl or gloo.")
    bucket_size: int = doc(0, "ZeRO reduce/allgather/prefetch bucket size in elements; 0 = 1e6 on CPU, 5e8 on GPU.")
    param_persistence_threshold: int = doc(
        -1, "ZeRO-3: parameters smaller than this stay unpartitioned; -1 = 0 on CPU, 1e5 on GPU.")
    ds_config: str = doc("", "Optional DeepSpeed JSON merged last over the ds_configs/ templates.")
    timeout_min: int = doc(30, "Collective timeout in minutes.")
    prefetch_bucket_size: int = doc(
        0, "ZeRO-3: elements of parameters fetched ahead of use (stage3_prefetch_bucket_size); 0 = parallel.bucket_size "
        "(or 5e7 on GPU when that is 0 too).")
    max_live_parameters: int = doc(1_000_000_000, "ZeRO-3: most parameter elements kept gathered at once "
                                   "(stage3_max_live_parameters).")
    max_reuse_distance: int = doc(1_000_000_000, "ZeRO-3: keep a gathered parameter if it is used again within "
                                  "this many elements of other parameters (stage3_max_reuse_distance).")
    overlap_comm: bool | None = doc(None, "Overlap ZeRO's gradient reduction with backward: true, false, or null = "
                                    "auto (on with CUDA; off on CPU, which has no second stream to overlap on).")
    contiguous_gradients: bool = doc(True, "ZeRO: copy gradients into one contiguous buffer as they are produced "
                                     "(less fragmentation, one reduce per bucket).")
    sub_group_size: int = doc(
        0, "ZeRO-3: the optimizer steps over its flat fp32 partition in chunks of this many elements "
        "(sub_group_size); 0 = 1e6 on CPU (cache-sized: measured 2x faster Adam on a 20M model) and 1e9 on GPU.")


@dataclass
class SourceConfig:
    path: str = doc("", "Shard directory written by `bigtrain data shard`, or its URL (see data.cache_dir).")
    weight: float = doc(1.0, "Relative share of the training samples drawn from this source.")
    name: str = doc("", "Name in metrics (samples/<name>, val_loss/<name>); default: the directory's name.")


@dataclass
class DataConfig:
    path: str = doc("", "Shard directory written by `bigtrain data shard`, or its URL (data.cache_dir); empty = the "
                        "embedded default corpus. Shorthand for one source; set this or data.sources.")
    sources: list[SourceConfig] = doc([], "Mixture of shard directories: a list of {path, weight, name}, e.g. "
                                          "[{path: web/, weight: 0.7}, {path: code/, weight: 0.3}] (docs/data.md).")
    num_workers: int = doc(0, "DataLoader worker processes per rank (0 = read in the training process).")
    on_corrupt: str = doc("stop", "A corrupt shard found mid-run: stop (all ranks save a checkpoint of the last "
                                  "completed step and exit 2) or skip (its samples are replaced, counted in metrics).")
    verify_checksums: bool = doc(True, "Check each shard's sha256 when a process first opens it (one extra read "
                                       "of the shard); size and tar headers are always checked.")
    mix_block_size: int = doc(1000, "Mixing block: every block of this many stream positions holds a fixed, "
                                    "weight-proportional count from each source (shares exact to 1/block).")
    cache_dir: str = doc("", "Node-local cache for shards read from a URL (data.path / sources[].path = http(s)://, "
                             "pipe:CMD with {} for the file name, s3://, gs://); empty = $TMPDIR/bigtrain-shard-cache. "
                             "Shared safely by the ranks of a node (docs/data.md).")
    cache_bytes: int = doc(32 << 30, "Bound on the cache's size in bytes (least recently used shards are evicted); "
                                     "at least one shard; best: the whole dataset, as every step reads all over it.")


OBJECTIVES = ("clm", "mlm", "distill")


@dataclass
class TrainConfig:
    objective: str = doc(
        "clm", "What the model learns: clm (next-token prediction, a Llama decoder), mlm (masked-token prediction, "
        "a ModernBERT encoder; section mlm) or distill (a causal student matching a frozen teacher; section "
        "distill). See docs/objectives.md.")
    steps: int = doc(40, "Optimizer steps to run.")
    stop_at: int = doc(0, "Stop after this step (checkpoint saved, exit 0) without changing the schedule, which "
                       "still runs to train.steps; a later run without it continues. Used by `bigtrain sweep`'s "
                       "successive halving (rungs). 0 = run to train.steps.")
    global_batch_size: int = doc(8, "Sequences per optimizer step, over all data-parallel ranks.")
    micro_batch_size: int = doc(2, "Sequences per forward/backward on one rank; the rest is accumulation.")
    lr: float = doc(3e-3, "Peak learning rate (AdamW).")
    min_lr_ratio: float = doc(0.1, "Cosine decay ends at lr * min_lr_ratio.")
    warmup_steps: int = doc(4, "Linear warmup steps from 0 to lr.")
    weight_decay: float = doc(0.1, "AdamW weight decay (not applied to norms).")
    beta1: float = doc(0.9, "AdamW beta1.")
    beta2: float = doc(0.95, "AdamW beta2.")
    eps: float = doc(1e-8, "AdamW epsilon.")
    grad_clip: float = doc(1.0, "Clip the global gradient norm to this (0 = off).")
    seed: int = doc(1234, "Seed for initialisation and data order.")
    fused_adam: bool = doc(True, "torch.optim.AdamW(fused=True): one fused kernel per tensor on CPU and CUDA "
                           "(measured 3-7x faster than the default on a 20M model on CPU); false = PyTorch's default.")
    compile: bool = doc(False, "torch.compile (inductor) the layers' parameter-free math: RMSNorm, RoPE + attention, "
                        "SwiGLU (parameter names unchanged; needs a C++ compiler on CPU, Triton on CUDA). See "
                        "bigtrain/parallel/optimize.py.")
    precision: str = doc("auto", "auto (bf16 on CUDA, fp32 on CPU; the resolved value is written to config.yaml), "
                         "fp32 (TF32 matmuls on CUDA), bf16 (bf16 weights/compute, fp32 master weights in DeepSpeed) "
                         "or fp16 (fp32 master weights + dynamic loss scaling, ds_configs/fp16.json; needs a GPU).")
    max_consecutive_skips: int = doc(
        5, "Stop (checkpoint of the last good weights, exit status 3) after this many consecutive steps skipped "
        "for a non-finite loss or gradient; 0 = never stop.")
    spike_threshold: float = doc(
        2.0, "Log a loss spike when a step's loss exceeds this multiple of the running mean of recent losses; 0 = off.")
    allow_schedule_change: bool = doc(
        False, "Resume although train.steps, lr, warmup_steps or min_lr_ratio differ from the checkpoint's: the "
        "learning rate follows the new schedule from the resumed step on (it jumps); default: refuse, naming the keys.")
    watchdog_timeout_s: float = doc(
        0.0, "Hang watchdog: if a rank makes no progress (a step, an eval batch, a checkpoint save) for this many "
        "seconds, every rank dumps its Python stacks to stderr and <run.dir>/hangs/ and exits with status 4; "
        "set it above the longest step and checkpoint save; 0 = off.")


@dataclass
class CheckpointConfig:
    every: int = doc(20, "Save every N steps (0 = only at the end).")
    save_final: bool = doc(True, "Save after the last step.")
    keep: int = doc(0, "Keep only the last K complete checkpoints (older ones are deleted after a new one is "
                    "complete); 0 = keep all.")
    keep_every: int = doc(0, "Also keep forever every checkpoint whose step is a multiple of M (with keep > 0); 0 = none.")
    init_from: str = doc("", "Start a new run from the weights of this run dir or checkpoint (any layout; fresh "
                             "optimizer, step 0). Ignored once run.dir has a checkpoint of its own.")


@dataclass
class LogConfig:
    every: int = doc(1, "Log metrics every N steps.")
    tensorboard: bool = doc(True, "Also write TensorBoard events under <run.dir>/tensorboard.")
    wandb: bool = doc(False, "Also log to Weights & Biases (needs `pip install wandb`; WANDB_MODE=offline works).")
    wandb_project: str = doc("bigtrain", "Weights & Biases project.")
    wandb_entity: str = doc("", "Weights & Biases entity (team or user); empty = your default.")


@dataclass
class EvalConfig:
    every: int = doc(0, "Evaluate validation loss every N steps (0 = off); also after the last step when on.")
    batches: int = doc(4, "Validation set size in global batches (capped by the shards' validation split).")


@dataclass
class MlmConfig:
    probability: float = doc(0.15, "train.objective=mlm: share of the non-special tokens of each sequence chosen "
                             "for prediction (the loss is the mean over them, across the global batch).")
    mask_ratio: float = doc(0.8, "Of the chosen tokens, the share replaced by <mask> in the input.")
    random_ratio: float = doc(0.1, "Of the chosen tokens, the share replaced by a random token; the rest "
                              "(1 - mask_ratio - random_ratio) stay unchanged.")


@dataclass
class DistillConfig:
    teacher: str = doc("", "train.objective=distill: the frozen teacher, a bigtrain run dir or checkpoint folder, "
                       "or a Hugging Face causal-LM folder; it must use the student's tokenizer (same vocabulary).")
    alpha: float = doc(0.5, "Weight of the distillation term: loss = alpha * T^2 * KL(teacher_T || student_T) "
                       "+ (1 - alpha) * cross-entropy on the data.")
    temperature: float = doc(1.0, "Softmax temperature T of both teacher and student in the KL term.")


@dataclass
class ClusterConfig:
    nodes: int = doc(1, "Nodes this recipe is sized for: `bigtrain plan` uses it when --nodes is not given "
                     "(training reads the world size from the launcher, not from here).")
    gpus_per_node: int = doc(1, "GPUs per node this recipe is sized for (`bigtrain plan` default).")
    gpu_memory_gb: float = doc(79.6, "Memory of one GPU in GiB (an 80 GB H100/A100 has 79.6 GiB; `bigtrain plan` "
                               "default).")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mlm: MlmConfig = field(default_factory=MlmConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
