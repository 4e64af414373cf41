#!/usr/bin/env bash
# The Beauty runs of docs/results.md: Table 3 tokenizers, then PRISM and TIGER recommenders trained
# side by side under the same wall-clock budget (one thread each on a 2-core machine), then
# evaluated on all users. Outputs go to $D (default /tmp/beauty); logs in each run's folder.
# Usage: RAW=../shared/data/amazon2014 BUDGET=40 QEPOCHS=150 bash bench/beauty.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
D=${D:-/tmp/beauty}
S=(-S dataset=beauty -S raw_dir="${RAW:-../shared/data/amazon2014}" -S quantize.epochs="${QEPOCHS:-150}")
mkdir -p "$D"
if [ ! -f "$D/collab/item_emb.npy" ]; then
  prism preprocess "${S[@]}" --out "$D/processed" --stats "$D/stats.json"
  prism embed "${S[@]}" --data "$D/processed" --out "$D/features"
  OMP_NUM_THREADS=2 prism collab "${S[@]}" --data "$D/processed" --out "$D/collab" --metrics "$D/collab.json" --curve "$D/collab.csv"
fi
tok() {  # variant, overrides...
  local v=$1; shift; local o=$D/t3/$v; mkdir -p "$o"
  prism quantize "${S[@]}" "$@" --data "$D/processed" --features "$D/features" --collab "$D/collab" \
    --out "$o/quantizer" --metrics "$o/quantizer.json" --curve "$o/quantizer.csv" > "$o/quantize.out" 2> "$o/quantize.err"
  prism dedup "${S[@]}" "$@" --data "$D/processed" --quantizer "$o/quantizer" --out "$o/sid" --metrics "$o/dedup.json" \
    > "$o/dedup.out" 2> "$o/dedup.err"
}
rec() {  # name, tokenizer variant, overrides...
  local n=$1 v=$2; shift 2; local o=$D/rec/$n; mkdir -p "$o"
  prism train "${S[@]}" -S recommender.time_budget_min="${BUDGET:-40}" "$@" --data "$D/processed" --features "$D/features" \
    --collab "$D/collab" --sid "$D/t3/$v/sid" --out "$o/model" --ckpt "$o/ckpt" --metrics "$o/train.json" \
    --curve "$o/train.csv" > "$o/train.out" 2> "$o/train.err"
  prism evaluate "${S[@]}" "$@" --data "$D/processed" --features "$D/features" --collab "$D/collab" --sid "$D/t3/$v/sid" \
    --model "$o/model" --predictions "$o/predictions.parquet" --metrics "$o/eval.json" --groups-plot "$o/groups.csv" \
    > "$o/eval.out" 2> "$o/eval.err"
}
tok full & tok rqvae -S tokenizer=rqvae & wait
rec prism full & rec tiger rqvae -S dsi=false -S ssa=false -S ats=false -S dt=false & wait
tok no_hsa -S hsa=false & tok no_acd -S acd=false & wait
tok no_dhr -S dhr=false & tok rqkmeans -S tokenizer=rqkmeans & wait
cat "$D"/t3/*/quantize.out "$D"/t3/*/dedup.out "$D"/rec/*/train.out "$D"/rec/*/eval.out
