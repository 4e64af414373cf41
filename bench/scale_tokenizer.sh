#!/usr/bin/env bash
# CDs-scale check of the tokenizer stages on the synthetic `cds` set (~64k items, ~1.1M interactions):
# preprocess -> embed -> collab (ALS: LightGCN at this size is a long CPU job) -> quantize -> dedup,
# each under /usr/bin/time -v (wall time and peak memory). Writes into $OUT (default /tmp/prism-cds).
# Usage: bash bench/scale_tokenizer.sh [quantize-epochs] [tokenizer]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
OUT=${OUT:-/tmp/prism-cds}
EPOCHS=${1:-20}
TOK=${2:-prism}
mkdir -p "$OUT"
S=(-S dataset=synthetic -S synthetic.size=cds -S raw_dir="$OUT/raw" -S collab.method=als)
run() {  # name, command...
  local name=$1; shift
  /usr/bin/time -f "$name: wall %e s, peak RSS %M KB" "$@" 2>"$OUT/$name.err" | tail -1
  grep -aoE "$name: wall.*" "$OUT/$name.err"
}
[ -f "$OUT/processed/items.parquet" ] || run preprocess prism preprocess "${S[@]}" --out "$OUT/processed" --stats "$OUT/stats.json"
run embed prism embed "${S[@]}" --data "$OUT/processed" --out "$OUT/features"
run collab prism collab "${S[@]}" --data "$OUT/processed" --out "$OUT/collab" --metrics "$OUT/collab.json" --curve "$OUT/collab.csv"
run quantize prism quantize "${S[@]}" -S quantize.epochs="$EPOCHS" -S tokenizer="$TOK" --data "$OUT/processed" \
  --features "$OUT/features" --collab "$OUT/collab" --out "$OUT/quantizer" --metrics "$OUT/quantizer.json" --curve "$OUT/quantizer.csv"
run dedup prism dedup "${S[@]}" --data "$OUT/processed" --quantizer "$OUT/quantizer" --out "$OUT/sid" --metrics "$OUT/dedup.json"
