#!/usr/bin/env bash
# The Beauty runs of docs/results.md, each a run folder of `prism dag --dir` (dvc.yaml's stages and commands):
#   $D/prism   preprocess, embed, LightGCN (inputs), then the PRISM tokenizer, recommender and evaluation
#   $D/tiger   the same from the tokenizer on, variant=tiger, on prism's inputs (linked)
#   $D/prism_full  prism's trained model evaluated again with decode_norm=full
# PRISM and TIGER run side by side under the same wall-clock training budget (one thread each on a 2-core
# machine); the table at the end is `prism report --dir ... --details` (the project's one results table).
# Usage: RAW=../shared/data/amazon2014 BUDGET=60 QEPOCHS=150 [ENCODER=causal] bash bench/beauty.sh
#        REC_SET="-S recommender.batch_size=512 -S recommender.lr_scaling=sqrt" ...  (extra params, every run)
#        PHASES="runs full" bash bench/beauty.sh    (skip what is done; default: "inputs runs full")
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
D=${D:-/tmp/beauty}
PHASES=${PHASES:-inputs runs full}
# shellcheck disable=SC2206
S=(-S dataset=beauty -S raw_dir="${RAW:-../shared/data/amazon2014}" -S download=false -S quantize.epochs="${QEPOCHS:-150}"
   -S recommender.encoder="${ENCODER:-causal}" -S recommender.time_budget_min="${BUDGET:-60}" ${REC_SET:-})
P=$D/prism
IN=(--link data/processed="$P/data/processed" --link data/features="$P/data/features" --link models/collab="$P/models/collab")
mkdir -p "$D"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(python -c 'import torch; print("torch", torch.__version__, torch.backends.cpu.get_cpu_capability())'), $(date -u +%F)"
has() { [[ " $PHASES " == *" $1 "* ]]; }
if has inputs; then
  prism dag --dir "$P" --until embed "${S[@]}" > "$D/inputs.log" 2>&1
  OMP_NUM_THREADS=2 prism dag --dir "$P" --from collab --until collab "${S[@]}" >> "$D/inputs.log" 2>&1
fi
if has runs; then
  prism dag --dir "$P" --from quantize --until evaluate "${S[@]}" > "$D/prism.log" 2>&1 &
  prism dag --dir "$D/tiger" --from quantize --until evaluate "${IN[@]}" "${S[@]}" -S variant=tiger > "$D/tiger.log" 2>&1 &
  wait
fi
if has full; then
  OMP_NUM_THREADS=2 prism dag --dir "$D/prism_full" --from evaluate --until evaluate "${IN[@]}" --link data/sid="$P/data/sid" \
    --link models/recommender="$P/models/recommender" "${S[@]}" -S decode_norm=full > "$D/prism_full.log" 2>&1
fi
prism report --details --dir "$P" --dir "$D/tiger" $([ -d "$D/prism_full" ] && echo --dir "$D/prism_full")
