"""The ``bigtrain`` command: one subcommand per pipeline stage, each mapped to one function.

Heavy libraries (torch, deepspeed, transformers) are imported inside the handlers so that
``bigtrain --help`` and config checks answer instantly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bigtrain.cli.slurm import add_submit_parser, add_sweep_parser


def cmd_pretrain(args: argparse.Namespace) -> None:
    from bigtrain.parallel.world import launch_env
    from bigtrain.pretrain import main

    # one process has no tensor-parallel partner: the recipe's TP (debug: 2) yields to 1 unless overridden
    single = ["parallel.tensor_parallel=1"] if launch_env().world_size == 1 else []
    sys.exit(main((["--config", args.config] if args.config else []) + single + args.overrides))


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from bigtrain.data.tokenizer import train_tokenizer

    out = train_tokenizer([Path(p) for p in args.input], args.vocab_size, Path(args.out), text_key=args.text_key)
    print(f"tokenizer written to {out} (sentencepiece tokenizer.model + Hugging Face tokenizer files)")


def cmd_data_shard(args: argparse.Namespace) -> None:
    from bigtrain.data.cleaning import CleaningOptions, describe
    from bigtrain.data.shards import write_shards

    cleaning = CleaningOptions(dedup=args.dedup, min_chars=args.min_chars, max_chars=args.max_chars,
                               max_non_letter=args.max_non_letter, drop_undecodable=args.drop_undecodable)
    manifest = write_shards(Path(args.tokenizer), [Path(p) for p in args.input], args.seq_len, Path(args.out),
                            text_key=args.text_key, val_fraction=args.val_fraction,
                            samples_per_shard=args.samples_per_shard, samples_per_block=args.samples_per_block,
                            seed=args.seed, workers=args.workers, cleaning=cleaning)
    for split, info in manifest.splits.items():
        print(f"{split}: {info.num_samples} samples of {manifest.seq_len + 1} tokens in {len(info.shards)} shard(s)")
    if manifest.cleaning:
        print(f"cleaning removed {describe(manifest.cleaning['removed'])} document(s)")
    print(f"shards and manifest.json in {args.out}")


def cmd_data_verify(args: argparse.Namespace) -> None:
    from bigtrain.data.integrity import verify_directory
    from bigtrain.data.manifest import Manifest
    from bigtrain.data.tokenize_pool import default_workers

    manifest = Manifest.load(Path(args.dir))
    count = verify_directory(manifest, args.workers or default_workers())
    print(f"{count} shards in {args.dir} verified: sizes, tar headers and sha256 match manifest.json")


def cmd_data_corpus(args: argparse.Namespace) -> None:
    from bigtrain.data.corpus import write_embedded_corpus

    print(f"embedded corpus written to {write_embedded_corpus(Path(args.out))}")


def cmd_convert_to_hf(args: argparse.Namespace) -> None:
    from bigtrain.convert.to_hf import to_hf

    def report(diff: float) -> None:
        print(f"parity check passed: transformers' model (LlamaForCausalLM, or ModernBertForMaskedLM for a masked-LM "
              f"run) matches bigtrain's logits "
              f"(max |diff| {diff:.2e} <= {args.tolerance:g})")

    out = to_hf(args.src, Path(args.out), dtype=args.dtype, check=not args.no_check, tolerance=args.tolerance,
                report=report)
    print(f"Hugging Face model written to {out}" + (" (parity check skipped: --no-check)" if args.no_check else ""))


def cmd_convert_from_hf(args: argparse.Namespace) -> None:
    from bigtrain.convert.from_hf import from_hf

    out = from_hf(Path(args.hf_dir), Path(args.out), args.tensor_parallel, seq_len=args.seq_len)
    print(f"bigtrain run directory written to {out} (weights only, TP={args.tensor_parallel}); continue pretraining "
          f"with: pretrain.py run.dir={out} data.path=SHARDS (shards made with --tokenizer {out / 'tokenizer'})")


def cmd_eval(args: argparse.Namespace) -> None:
    from bigtrain.evaluate import evaluate

    result = evaluate(args.src, Path(args.text), args.seq_len)
    if args.json:
        print(json.dumps(result))
    else:
        import math

        print(f"loss {result['loss']:.4f} | perplexity {math.exp(result['loss']):.2f} | {result['tokens']} tokens")


def cmd_generate(args: argparse.Namespace) -> None:
    from bigtrain.generate import Sampling, generate

    print(generate(args.src, args.prompt, args.max_new_tokens, Sampling(args.temperature, args.top_k, args.top_p, args.seed)))


def cmd_plot(args: argparse.Namespace) -> None:
    from bigtrain.plot import plot_run

    print(f"plot written to {plot_run(Path(args.run_dir), args.out)}")


def cmd_bench(args: argparse.Namespace) -> None:
    from bigtrain.bench.main import main

    main(args)


def cmd_config_show(args: argparse.Namespace) -> None:
    from bigtrain.config import dump_yaml, load_config, validate

    cfg = load_config(args.config, args.overrides)
    validate(cfg, args.world_size)
    print(dump_yaml(cfg), end="")


def cmd_config_keys(args: argparse.Namespace) -> None:
    from bigtrain.config.load import field_help

    for key, help_text, default in field_help():
        print(f"{key:<40} {default!r:<14} {help_text}")


def cmd_config_recipes(args: argparse.Namespace) -> None:
    from bigtrain.plan import recipe_table

    print(recipe_table())


def cmd_plan(args: argparse.Namespace) -> None:
    from bigtrain.config.load import load_config
    from bigtrain.plan import Hardware, PlanInputError, format_plan, make_plan, scaling_table
    from bigtrain.plan.report import PlanErrors

    if args.recipes_table:
        print(scaling_table())
        return
    hw = Hardware(args.peak_tflops, args.mfu, args.nvlink_gbs, args.ib_gbs)
    try:
        plan = make_plan(load_config(args.config, args.overrides), args.nodes, args.gpus_per_node,
                         args.gpu_memory_gb, reserve_gb=args.reserve_gb, hw=hw)
    except PlanInputError as exc:
        if args.json:
            print(json.dumps({"errors": exc.errors, "advice": []}, indent=2))
        raise
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    if plan.errors:
        raise PlanErrors(plan.errors)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigtrain", description="Pretrain Llama-style models with DeepSpeed "
                                     "ZeRO + megatron-core tensor parallelism; export to Hugging Face.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pretrain", help="run pretraining in this process (one rank, parallel.tensor_parallel=1 "
                       "unless overridden; use deepspeed/torchrun for more)")
    p.add_argument("--config", default=None,
                   help="recipe name or YAML path (default: <run.dir>/config.yaml if it exists, else debug)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_pretrain)

    tok = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="action", required=True)
    p = tok.add_parser("train", help="train a sentencepiece BPE tokenizer (+ Hugging Face files)")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH", help=".jsonl[.gz] (one doc per line) or text files")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--text-key", default="text", help="JSONL field holding the text (default: text)")
    p.set_defaults(func=cmd_tokenizer_train)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="action", required=True)
    p = data.add_parser("shard", help="tokenize (on all cores), pack and write WebDataset shards + manifest.json; "
                                      "a re-run with unchanged inputs and options only verifies")
    p.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="a `bigtrain tokenizer train` folder, or any Hugging Face tokenizer folder (tokenizer.json)")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help=".jsonl/.json (one doc per line; .gz or .zst), .parquet (one doc per row), any other file = one "
                        "doc; directories and quoted globs ('**' recursive) expand to the corpus files in them")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--text-key", default="text", help="JSON key / Parquet column holding the text")
    p.add_argument("--val-fraction", type=float, default=0.01, help="fraction of documents for validation (default: "
                   "0.01; a small corpus may need more: eval.batches x train.global_batch_size samples are evaluated)")
    p.add_argument("--samples-per-shard", type=int, default=None, help="default: ~256 MB per shard")
    p.add_argument("--samples-per-block", type=int, default=None,
                   help="samples per tar member (default: ~1 MiB of tokens per member)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer processes (default: all cores); the shards do not depend on it")
    clean = p.add_argument_group("cleaning (all off by default; docs/data.md)")
    clean.add_argument("--dedup", action="store_true",
                       help="drop documents whose normalised text (NFKC, casefold, whitespace collapsed) repeats an "
                            "earlier one, over all inputs")
    clean.add_argument("--min-chars", type=int, default=0, help="drop documents shorter than this")
    clean.add_argument("--max-chars", type=int, default=0, help="drop documents longer than this (0: no limit)")
    clean.add_argument("--max-non-letter", type=float, default=1.0,
                       help="drop documents whose non-whitespace characters are more than this share non-letters "
                            "(1.0: no limit)")
    clean.add_argument("--drop-undecodable", action="store_true",
                       help="drop (and count) documents that are not valid UTF-8 instead of stopping with an error")
    p.set_defaults(func=cmd_data_shard)
    p = data.add_parser("verify", help="check every shard of a directory against manifest.json (size, tar "
                                       "headers, sha256), in parallel")
    p.add_argument("dir", metavar="SHARD_DIR")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=cmd_data_verify)
    p = data.add_parser("corpus", help="write the embedded default corpus (Python docstrings) as JSONL")
    p.add_argument("--out", required=True, metavar="FILE")
    p.set_defaults(func=cmd_data_corpus)

    conv = sub.add_parser("convert", help="checkpoint conversion").add_subparsers(dest="action", required=True)
    p = conv.add_parser("to-hf", help="export a run/checkpoint as a Hugging Face LlamaForCausalLM folder "
                         "(ModernBertForMaskedLM for train.objective=mlm)")
    p.add_argument("src", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("out", metavar="OUT_DIR")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="dtype of the written weights")
    p.add_argument("--no-check", action="store_true",
                   help="skip the parity check (by default transformers' model must reproduce bigtrain's logits on a "
                        "fixed probe; it loads one model at a time: 4 bytes/parameter)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |logit difference| the check accepts (default 1e-4)")
    p.set_defaults(func=cmd_convert_to_hf)

    p = conv.add_parser("from-hf", help="import a Hugging Face Llama folder as a bigtrain run directory")
    p.add_argument("hf_dir", metavar="HF_DIR")
    p.add_argument("out", metavar="OUT_DIR", help="new run directory (for eval, generate, pretrain.py run.dir=OUT_DIR)")
    p.add_argument("--tensor-parallel", type=int, default=1, help="TP size of the written shards (pretraining "
                   "reshards to its own TP anyway)")
    p.add_argument("--seq-len", type=int, default=None, help="model.seq_len of the run (default: max_position_embeddings)")
    p.set_defaults(func=cmd_convert_from_hf)

    p = sub.add_parser("eval", help="loss of a checkpoint on a text file (one document, BOS, windows of --seq-len)")
    p.add_argument("src", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--text", required=True, metavar="FILE")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--json", action="store_true", help='print {"loss": ..., "tokens": ...}')
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="continuation of a prompt: greedy (default) or sampled (--temperature > 0)")
    p.add_argument("src", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64, help="default: 64")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples from "
                   "softmax(logits / temperature)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (default 0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="... and the smallest set reaching probability p "
                   "(default 1: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler: the same seed gives the same text (default 0)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("plot", help="PNG of a run's loss / val loss / lr / throughput / grad-norm curves")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", default=None, metavar="PNG", help="default: RUN_DIR/metrics.png")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("bench", help="training throughput of a named model size through the full stack, "
                       "beside the same model in bare PyTorch (tokens/s, MFU, step breakdown, memory)")
    p.add_argument("--size", required=True, help="a recipe's model shape: llama-125m ... llama-70b (`bigtrain config recipes`), "
                   "short names 125m, 350m, 1.3b, 7b; or 20m (CPU) or 7b-<k>l (7B width, k layers)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--steps", type=int, default=10, help="measured steps, after the warm-up (default 10)")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured first steps (default 2; 3 with train.compile)")
    p.add_argument("--accum", type=int, default=None,
                   help="micro-batches per step unless train.global_batch_size is given (default 4 on CUDA, 1 on CPU)")
    p.add_argument("--bare", choices=["auto", "interleaved", "sequential", "none"], default="auto",
                   help="the bare PyTorch baseline: one bare step after each bigtrain step (interleaved: same machine "
                   "load; default on CPU), after bigtrain's run (sequential: separate peak memory; default on CUDA), "
                   "or none")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the JSON result to FILE")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. parallel.zero_stage=1")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("plan", help="dry run: parallel layout, per-GPU memory, step time, errors and advice (instant)")
    p.add_argument("--config", default="debug", help="recipe name or YAML path (default: debug)")
    p.add_argument("--nodes", type=int, default=None, help="default: the recipe's cluster.nodes")
    p.add_argument("--gpus-per-node", type=int, default=None, help="default: the recipe's cluster.gpus_per_node")
    p.add_argument("--gpu-memory-gb", type=float, default=None,
                   help="memory of one GPU in GiB (H100 80GB: 79.6); default: the recipe's cluster.gpu_memory_gb")
    p.add_argument("--reserve-gb", type=float, default=2.0, help="CUDA context, NCCL, fragmentation (default 2)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="step time: peak TFLOP/s of a GPU (H100 bf16: 989)")
    p.add_argument("--mfu", type=float, default=0.5, help="step time: single-GPU MFU without communication (0.5)")
    p.add_argument("--nvlink-gbs", type=float, default=360.0, help="step time: NVLink bus GB/s per GPU (360)")
    p.add_argument("--ib-gbs", type=float, default=45.0, help="step time: network GB/s per GPU across nodes (45)")
    p.add_argument("--recipes-table", action="store_true",
                   help="print docs/scaling.md's recommended-layout table (the recipes on their clusters) and exit")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (bigtrain.plan.Plan)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_plan)

    add_submit_parser(sub)
    add_sweep_parser(sub)

    cfg = sub.add_parser("config", help="inspect configs").add_subparsers(dest="action", required=True)
    p = cfg.add_parser("show", help="print the resolved, validated config")
    p.add_argument("--config", default="debug")
    p.add_argument("--world-size", type=int, default=None, help="also check the layout for this many ranks")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_config_show)
    cfg.add_parser("keys", help="list every config key with its default and help").set_defaults(func=cmd_config_keys)
    cfg.add_parser("recipes", help="list the shipped recipes").set_defaults(func=cmd_config_recipes)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bigtrain.errors import UserError

    try:
        args.func(args)
        sys.stdout.flush()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `bigtrain config keys | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 0
    return 0
