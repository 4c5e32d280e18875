#!/usr/bin/env bash
# The whole bigtrain pipeline on the embedded default corpus, on CPU, in a few minutes:
#   corpus -> sentencepiece tokenizer -> WebDataset shards -> DeepSpeed ZeRO-3 + TP=2 pretraining
#   on 2 ranks -> checkpoint -> Hugging Face export -> greedy sample with transformers -> loss plot.
# Usage: bash tools/demo.sh [key=value ...]   (overrides go to pretrain.py; OUT=dir changes the output)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
start=$(date +%s)
say() { printf '\n== %s\n' "$*"; }

say "1/7 embedded corpus: docstrings of Python's standard library + pydoc topics"
bigtrain data corpus --out "$OUT/corpus.jsonl"

say "2/7 sentencepiece BPE tokenizer (+ Hugging Face tokenizer files)"
bigtrain tokenizer train --input "$OUT/corpus.jsonl" --vocab-size 4096 --out "$OUT/tokenizer"

say "3/7 tokenize, pack into 129-token samples, write WebDataset shards"
bigtrain data shard --tokenizer "$OUT/tokenizer" --input "$OUT/corpus.jsonl" --seq-len 128 --out "$OUT/shards"

say "4/7 pretrain: DeepSpeed ZeRO-3, tensor parallel 2, 2 CPU ranks (gloo)"
deepspeed --num_gpus 2 bigtrain/pretrain.py --config debug run.dir="$OUT/run" data.path="$OUT/shards" "$@"

say "5/7 export the latest checkpoint to Hugging Face format"
rm -rf "$OUT/hf"  # the demo's own previous export (to-hf refuses to overwrite a folder): make demo re-runs
bigtrain convert to-hf "$OUT/run" "$OUT/hf"

say "6/7 greedy sample from the exported model, loaded with transformers"
python tools/hf_sample.py "$OUT/hf" --prompt "Return the number of" --max-new-tokens 40

say "7/7 loss curves of the run"
bigtrain plot "$OUT/run" --out "$OUT/loss.png"

cat <<TXT

== done in $(( $(date +%s) - start )) s. Where everything went:
  $OUT/corpus.jsonl        the embedded corpus, one JSON document per line
  $OUT/tokenizer/          tokenizer.model (sentencepiece) + tokenizer.json (Hugging Face)
  $OUT/shards/             train-*.tar / val-*.tar WebDataset shards + manifest.json
  $OUT/run/                config.yaml, ds_config.json, metrics.jsonl, tensorboard/, checkpoints/
  $OUT/hf/                 LlamaForCausalLM: config.json, model.safetensors, tokenizer files
  $OUT/loss.png            loss / val loss / lr / throughput / grad-norm curves (bigtrain plot)
Next: bigtrain eval $OUT/run --text FILE --seq-len 128 | bigtrain generate $OUT/run --prompt TEXT
      tensorboard --logdir $OUT/run/tensorboard
TXT
