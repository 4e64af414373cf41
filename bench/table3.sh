#!/usr/bin/env bash
# Table 3 (SID quality) on a prepared dataset, one seed, `prism quantize` + `prism dedup` per variant:
# full PRISM, w/o ACD, w/o HSA, w/o DHR, RQ-VAE (TIGER), RQ-KMeans; a markdown table (mean ± sd when
# SEEDS names several) next to the paper's numbers. A thin front of bench/table3.py (which also runs on
# a GPU: bench/gpu/table3.sh). Needs the preprocess/embed/collab outputs of the dataset, e.g. for
# ../shared Beauty:
#   S="-S dataset=beauty -S raw_dir=../shared/data/amazon2014"
#   prism preprocess $S --out /tmp/beauty/processed --stats /tmp/beauty/stats.json
#   prism embed $S --data /tmp/beauty/processed --out /tmp/beauty/features
#   prism collab $S --data /tmp/beauty/processed --out /tmp/beauty/collab --metrics /tmp/beauty/collab.json --curve /tmp/beauty/collab.csv
# Usage: [SEEDS=42,43,44] [JOBS=2] bash bench/table3.sh /tmp/beauty [extra -S overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
D=${1:?dataset work dir (with processed/, features/, collab/)}; shift
exec python bench/table3.py "$D" "$D/t3" --work "$D/t3/runs" --seeds "${SEEDS:-42}" --jobs "${JOBS:-2}" --dedup \
  --rows prism,no_acd,no_hsa,no_dhr,rqvae,rqkmeans "$@"
