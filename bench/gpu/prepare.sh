#!/usr/bin/env bash
# Assemble the input folder of the prepared GPU run (bench/gpu/run.py) from run folders made on CPU by
# `prism dag --dir` (the pipeline's own stages; nothing is wired here).
#   Beauty:  bash bench/gpu/prepare.sh IN [SRC]   SRC = bench/beauty.sh's output (default /tmp/beauty): its run
#            folders SRC/prism (data/processed, data/features, models/collab, data/sid) and SRC/tiger (data/sid);
#            the raw files come from $RAW/Beauty (default ../shared/data/amazon2014). Without SRC/prism, the
#            CPU part the GPU machine cannot do (preprocess + embed: MiniLM comes from a PyPI package) runs here.
#            Without SRC's semantic IDs (or with LIGHT=1) only raw + processed + features are packed and the GPU
#            run computes the rest first (its prep phase).
#   Smoke:   SMOKE=1 [LIGHT=1] bash bench/gpu/prepare.sh IN   the same on the tiny synthetic set, all made here.
# IN/ is what the device call carries (name it in `carry`; keep it ignored by git): ~40 MB for Beauty.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TQDM_DISABLE=1
IN=${1:?usage: prepare.sh IN [SRC]}
mkdir -p "$IN"
IN=$(cd "$IN" && pwd)
if [ "${SMOKE:-0}" = 1 ]; then
  SRC=$IN/.work
  S=(-S dataset=synthetic -S synthetic.size=tiny -S device=cpu -S raw_dir="$IN/raw" -S collab.max_epochs=2
     -S collab.eval_every=1 -S quantize.epochs=2)
else
  SRC=${2:-/tmp/beauty}
  RAW=${RAW:-../shared/data/amazon2014}
  S=(-S dataset=beauty -S raw_dir="$RAW" -S download=false)
  mkdir -p "$IN/raw"
  cp -r "$RAW/Beauty" "$IN/raw/"
fi
P=$SRC/prism
if [ ! -d "$P/data/features" ]; then
  echo "prepare: $P has no data/features: preprocess + embed here (a few CPU minutes on Beauty)"
  prism dag --dir "$P" --until embed "${S[@]}" >/dev/null
fi
if [ "${SMOKE:-0}" = 1 ] && [ "${LIGHT:-0}" != 1 ]; then
  prism dag --dir "$P" --from collab --until dedup "${S[@]}" >/dev/null
  prism dag --dir "$SRC/tiger" --from quantize --until dedup --link data/processed="$P/data/processed" \
    --link data/features="$P/data/features" --link models/collab="$P/models/collab" "${S[@]}" -S variant=tiger >/dev/null
fi
rm -rf "$IN/processed" "$IN/features" "$IN/collab" "$IN/sid_prism" "$IN/sid_tiger"
cp -rL "$P/data/processed" "$P/data/features" "$IN/"
if [ "${LIGHT:-0}" != 1 ] && [ -f "$P/models/collab/item_emb.npy" ] && [ -d "$P/data/sid" ] && [ -d "$SRC/tiger/data/sid" ]; then
  mkdir -p "$IN/collab"
  cp "$P/models/collab/item_emb.npy" "$IN/collab/"
  cp -rL "$P/data/sid" "$IN/sid_prism"
  cp -rL "$SRC/tiger/data/sid" "$IN/sid_tiger"
else
  echo "prepare: no CPU-made collab/ or semantic IDs: the GPU run computes them (its prep phase)"
fi
du -sh "$IN"
