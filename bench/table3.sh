#!/usr/bin/env bash
# Table 3 (SID quality) on a prepared dataset: full PRISM, w/o HSA, w/o ACD, w/o DHR, RQ-VAE (TIGER),
# RQ-KMeans; each `prism quantize` + `prism dedup`, then a markdown table next to the paper's numbers.
# Needs the preprocess/embed/collab outputs of the dataset, e.g. for ../shared Beauty:
#   S="-S dataset=beauty -S raw_dir=../shared/data/amazon2014"
#   prism preprocess $S --out /tmp/beauty/processed --stats /tmp/beauty/stats.json
#   prism embed $S --data /tmp/beauty/processed --out /tmp/beauty/features
#   prism collab $S --data /tmp/beauty/processed --out /tmp/beauty/collab --metrics /tmp/beauty/collab.json --curve /tmp/beauty/collab.csv
# Usage: bash bench/table3.sh /tmp/beauty [extra -S overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
D=${1:?dataset work dir (with processed/, features/, collab/)}; shift
declare -A VARIANTS=(
  [full]=""
  [no_hsa]="-S hsa=false"
  [no_acd]="-S acd=false"
  [no_dhr]="-S dhr=false"
  [rqvae]="-S tokenizer=rqvae"
  [rqkmeans]="-S tokenizer=rqkmeans"
)
for v in full no_hsa no_acd no_dhr rqvae rqkmeans; do
  o="$D/t3/$v"; mkdir -p "$o"
  # shellcheck disable=SC2086
  prism quantize ${VARIANTS[$v]} "$@" --data "$D/processed" --features "$D/features" --collab "$D/collab" \
    --out "$o/quantizer" --metrics "$o/quantizer.json" --curve "$o/quantizer.csv" 2>"$o/quantize.err" | tail -1
  prism dedup "$@" --data "$D/processed" --quantizer "$o/quantizer" --out "$o/sid" --metrics "$o/dedup.json" \
    2>"$o/dedup.err" | tail -1
done
python - "$D/t3" <<'PY'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
paper = {"full": (17.57, 1.79, 248.5), "no_hsa": (28.67, 4.77, 210.3), "no_acd": (19.85, 2.78, 241.8),
         "no_dhr": (18.22, 2.21, 245.2), "rqvae": (95.73, 31.57, 84.2), "rqkmeans": None}
names = {"full": "PRISM (full)", "no_hsa": "w/o HSA", "no_acd": "w/o ACD", "no_dhr": "w/o DHR",
         "rqvae": "RQ-VAE (TIGER)", "rqkmeans": "RQ-KMeans"}
print("| variant | CR layer 2 | CR final | PPL l1/l2/l3 (mean) | util l1/l2/l3 | epochs | quantize s | moved by dedup | dedup s | paper CR2 / CRf / PPL |")
print("|---|---|---|---|---|---|---|---|---|---|")
for v, name in names.items():
    q = json.loads((root / v / "quantizer.json").read_text()); d = json.loads((root / v / "dedup.json").read_text())
    ppl = "/".join(f"{q[f'perplexity_l{l}']:.1f}" for l in (1, 2, 3))
    util = "/".join(f"{q[f'utilisation_l{l}']:.2f}" for l in (1, 2, 3))
    p = paper[v]
    ps = f"{p[0]:.2f}% / {p[1]:.2f}% / {p[2]}" if p else "–"
    print(f"| {name} | {q['collision_rate_l2']:.2%} | {q['collision_rate_final']:.2%} | {ppl} ({q['perplexity_mean']:.1f}) "
          f"| {util} | {q['epochs_run']} | {q['wall_s']} | {d['moved']} | {d['wall_s']} | {ps} |")
PY
