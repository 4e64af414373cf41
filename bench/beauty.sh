#!/usr/bin/env bash
# The Beauty runs of docs/results.md: the inputs (preprocess, embed, LightGCN), the tokenizers
# (full PRISM and RQ-VAE; `bench/table3.sh` runs all Table 3 variants), then PRISM and TIGER
# recommenders trained side by side under the same wall-clock budget (one thread each on a 2-core
# machine), each evaluated on all users; PRISM also with `decode_norm=full` (same trained model).
# Outputs go to $D (default /tmp/beauty); logs in each run's folder; a summary table at the end.
# Usage: RAW=../shared/data/amazon2014 BUDGET=60 QEPOCHS=150 [ENCODER=causal] bash bench/beauty.sh
#        REC_SET="-S recommender.batch_size=512 -S recommender.lr_scaling=sqrt" ...  (extra train params)
#        PHASES="rec eval" bash bench/beauty.sh    (skip what is done; default: "inputs tok rec eval")
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
D=${D:-/tmp/beauty}
PHASES=${PHASES:-inputs tok rec eval}
S=(-S dataset=beauty -S raw_dir="${RAW:-../shared/data/amazon2014}" -S quantize.epochs="${QEPOCHS:-150}"
   -S recommender.encoder="${ENCODER:-causal}")
mkdir -p "$D"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(python -c 'import torch; print("torch", torch.__version__, torch.backends.cpu.get_cpu_capability())'), $(date -u +%F)"
has() { [[ " $PHASES " == *" $1 "* ]]; }
if has inputs && [ ! -f "$D/collab/item_emb.npy" ]; then
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
  # shellcheck disable=SC2086
  prism train "${S[@]}" -S recommender.time_budget_min="${BUDGET:-60}" ${REC_SET:-} "$@" --data "$D/processed" --features "$D/features" \
    --collab "$D/collab" --sid "$D/t3/$v/sid" --out "$o/model" --ckpt "$o/ckpt" --metrics "$o/train.json" \
    --curve "$o/train.csv" > "$o/train.out" 2> "$o/train.err"
}
ev() {  # name, tokenizer variant, tag, overrides...
  local n=$1 v=$2 t=$3; shift 3; local o=$D/rec/$n
  prism evaluate "${S[@]}" "$@" --data "$D/processed" --features "$D/features" --collab "$D/collab" --sid "$D/t3/$v/sid" \
    --model "$o/model" --predictions "$o/predictions$t.parquet" --metrics "$o/eval$t.json" --groups-plot "$o/groups$t.csv" \
    > "$o/eval$t.out" 2> "$o/eval$t.err"
}
TIGER=(-S variant=tiger)
if has tok; then tok full & tok rqvae "${TIGER[@]}" & wait; fi
if has rec; then rec prism full & rec tiger rqvae "${TIGER[@]}" & wait; fi
if has eval; then
  ev prism full "" & ev tiger rqvae "" "${TIGER[@]}" & wait
  OMP_NUM_THREADS=2 ev prism full _full -S decode_norm=full
fi
python - "$D/rec" <<'PY'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
print("| run | decode | valid R@10 | valid N@20 | test R@5 | R@10 | R@20 | N@5 | N@10 | N@20 | epochs (best) | train min | samples/s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for run in sorted(p for p in root.iterdir() if p.is_dir()):
    tr = json.loads((run / "train.json").read_text()) if (run / "train.json").is_file() else {}
    for tag in ("", "_full"):
        f = run / f"eval{tag}.json"
        if not f.is_file():
            continue
        e = json.loads(f.read_text()); v, t = e["valid"], e["test"]
        print(f"| {run.name} | {e.get('decode_norm', 'renorm')} | {v['recall@10']:.4f} | {v['ndcg@20']:.4f} | "
              + " | ".join(f"{t[k]:.4f}" for k in ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20"))
              + f" | {tr.get('epochs', '-')} ({tr.get('best_epoch', '-')}) | {tr.get('train_wall_s', 0) / 60:.1f} | {tr.get('last_samples_per_s', '-')} |")
PY
