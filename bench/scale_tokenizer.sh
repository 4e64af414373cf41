#!/usr/bin/env bash
# CDs-scale check of the tokenizer stages on the synthetic `cds` set (~64k items, ~1.1M interactions):
# preprocess -> embed -> collab (ALS: LightGCN at this size is a long CPU job) -> quantize -> dedup, each
# dvc.yaml stage run alone by `prism dag --dir $OUT/run --from S --until S` under /usr/bin/time (wall time,
# peak memory). Writes into $OUT (default /tmp/prism-cds).
# Usage: [SIZE=cds] bash bench/scale_tokenizer.sh [quantize-epochs] [tokenizer]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
OUT=${OUT:-/tmp/prism-cds}
mkdir -p "$OUT"
S=(-S dataset=synthetic -S synthetic.size="${SIZE:-cds}" -S raw_dir="$OUT/raw" -S collab.method=als -S quantize.epochs="${1:-20}"
   -S tokenizer="${2:-prism}")
for stage in preprocess embed collab quantize dedup; do
  if [ "$stage" = preprocess ] && [ -f "$OUT/run/data/processed/items.parquet" ]; then continue; fi
  /usr/bin/time -f "$stage: wall %e s, peak RSS %M KB" prism dag --dir "$OUT/run" --from $stage --until $stage "${S[@]}" \
    2>"$OUT/$stage.err" | tail -1
  grep -aoE "$stage: wall.*" "$OUT/$stage.err"
done
