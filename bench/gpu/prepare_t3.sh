#!/usr/bin/env bash
# Input folder of the Table 3 run over seeds (bench/table3.py, bench/gpu/table3.sh), made on CPU:
#   bash bench/gpu/prepare_t3.sh IN [SRC]    SRC: a folder with collab/item_emb.npy (LightGCN on Beauty,
#                                            e.g. bench/beauty.sh's /tmp/beauty) and optionally features/
# IN gets processed/ (current preprocess defaults), features/ (MiniLM), collab/item_emb.npy, and the
# same without categories in the item text (processed_nocat/, features_nocat/; the tags stay), and
# processed_rawpop/ (popularity from raw counts: Eq. 4 as written). ~50 MB,
# 3-6 CPU minutes (two preprocess + one or two embed runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TQDM_DISABLE=1
IN=${1:?usage: prepare_t3.sh IN [SRC]}; SRC=${2:-/tmp/beauty}
RAW=${RAW:-../shared/data/amazon2014}
S=(-S dataset=beauty -S raw_dir="$RAW" -S download=false)
[ -f "$SRC/collab/item_emb.npy" ] || { echo "prepare_t3: $SRC/collab/item_emb.npy missing: run prism collab on Beauty first" >&2; exit 1; }
mkdir -p "$IN/collab"
cp "$SRC/collab/item_emb.npy" "$IN/collab/"
prism preprocess "${S[@]}" --out "$IN/processed" --stats "$IN/.stats.json"
if [ -f "$SRC/features/content.npy" ]; then cp -r "$SRC/features" "$IN/"; else prism embed "${S[@]}" --data "$IN/processed" --out "$IN/features"; fi
FIELDS=$(python -c "import yaml,sys; f=yaml.safe_load(open('params.yaml'))['preprocess']['text_fields']; print('[' + ','.join(x for x in f if x != 'categories') + ']')")
prism preprocess "${S[@]}" -S "preprocess.text_fields=$FIELDS" --out "$IN/processed_nocat" --stats "$IN/.stats_nocat.json"
prism embed "${S[@]}" --data "$IN/processed_nocat" --out "$IN/features_nocat"
prism preprocess "${S[@]}" -S preprocess.popularity_transform=none --out "$IN/processed_rawpop" --stats "$IN/.stats_rawpop.json"
du -sh "$IN"
