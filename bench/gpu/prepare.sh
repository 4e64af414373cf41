#!/usr/bin/env bash
# Assemble the input folder of the prepared GPU run (bench/gpu/run.py) from what the CPU computed.
#   Beauty:  bash bench/gpu/prepare.sh IN [SRC]   SRC = bench/beauty.sh's output folder (default /tmp/beauty):
#            SRC/processed, SRC/features, SRC/collab, SRC/t3/full/sid, SRC/t3/rqvae/sid; the raw files
#            come from $RAW/Beauty (default ../shared/data/amazon2014).
#   Smoke:   SMOKE=1 bash bench/gpu/prepare.sh IN   runs the CPU stages on the tiny synthetic set instead.
# IN/ is what the device call carries (name it in `carry`; keep it ignored by git): ~40 MB for Beauty.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TQDM_DISABLE=1
IN=${1:?usage: prepare.sh IN [SRC]}
mkdir -p "$IN"
if [ "${SMOKE:-0}" = 1 ]; then
  S=(-S dataset=synthetic -S synthetic.size=tiny -S device=cpu -S raw_dir="$IN/raw" -S collab.max_epochs=2
     -S collab.eval_every=1 -S quantize.epochs=2)
  W=$IN/.work
  prism preprocess "${S[@]}" --out "$IN/processed" --stats "$W/stats.json" >/dev/null
  prism embed "${S[@]}" --data "$IN/processed" --out "$IN/features" >/dev/null
  prism collab "${S[@]}" --data "$IN/processed" --out "$IN/collab" --metrics "$W/collab.json" --curve "$W/collab.csv" >/dev/null
  for v in prism rqvae; do
    prism quantize "${S[@]}" -S tokenizer=$v --data "$IN/processed" --features "$IN/features" --collab "$IN/collab" \
      --out "$W/q_$v" --metrics "$W/q_$v.json" --curve "$W/q_$v.csv" >/dev/null
    prism dedup "${S[@]}" --data "$IN/processed" --quantizer "$W/q_$v" --out "$IN/sid_$v" --metrics "$W/d_$v.json" >/dev/null
  done
else
  SRC=${2:-/tmp/beauty}
  RAW=${RAW:-../shared/data/amazon2014}
  mkdir -p "$IN/raw" "$IN/collab"
  cp -r "$RAW/Beauty" "$IN/raw/"
  cp -r "$SRC/processed" "$SRC/features" "$IN/"
  cp "$SRC/collab/item_emb.npy" "$IN/collab/"
  rm -rf "$IN/sid_prism" "$IN/sid_rqvae"
  cp -r "$SRC/t3/full/sid" "$IN/sid_prism"
  cp -r "$SRC/t3/rqvae/sid" "$IN/sid_rqvae"
fi
du -sh "$IN"
