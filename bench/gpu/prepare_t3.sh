#!/usr/bin/env bash
# Input folder of the Table 3 run over seeds (bench/table3.py, bench/gpu/table3.sh), made on CPU with
# `prism dag --dir` (dvc.yaml's preprocess and embed stages, in run folders under $WORK):
#   bash bench/gpu/prepare_t3.sh IN [SRC]    SRC: bench/beauty.sh's output (default /tmp/beauty): its run folder
#                                            SRC/prism gives models/collab/item_emb.npy (LightGCN on Beauty) and,
#                                            when made, data/processed + data/features
# IN gets processed/ (current preprocess defaults), features/ (MiniLM), collab/item_emb.npy, and the
# same without categories in the item text (processed_nocat/, features_nocat/; the tags stay), and
# processed_rawpop/ (popularity from raw counts: Eq. 4 as written). ~50 MB,
# 3-6 CPU minutes (two preprocess + one or two embed runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TQDM_DISABLE=1
IN=${1:?usage: prepare_t3.sh IN [SRC]}; P=${2:-/tmp/beauty}/prism
RAW=${RAW:-../shared/data/amazon2014}
S=(-S dataset=beauty -S raw_dir="$RAW" -S download=false)
[ -f "$P/models/collab/item_emb.npy" ] || { echo "prepare_t3: $P/models/collab/item_emb.npy missing: run bench/beauty.sh (PHASES=inputs) first" >&2; exit 1; }
mkdir -p "$IN/collab"
W=${WORK:-/tmp/prism_prepare_t3}  # the run folders (outside IN: IN is what the device call carries)
cp "$P/models/collab/item_emb.npy" "$IN/collab/"
[ -d "$P/data/features" ] || prism dag --dir "$P" --until embed "${S[@]}"
FIELDS=$(python -c "import yaml,sys; f=yaml.safe_load(open('params.yaml'))['preprocess']['text_fields']; print('[' + ','.join(x for x in f if x != 'categories') + ']')")
prism dag --dir "$W/nocat" --until embed "${S[@]}" -S "preprocess.text_fields=$FIELDS"
prism dag --dir "$W/rawpop" --until preprocess "${S[@]}" -S preprocess.popularity_transform=none
rm -rf "$IN/processed" "$IN/features" "$IN/processed_nocat" "$IN/features_nocat" "$IN/processed_rawpop"
cp -rL "$P/data/processed" "$P/data/features" "$IN/"
cp -rL "$W/nocat/data/processed" "$IN/processed_nocat"
cp -rL "$W/nocat/data/features" "$IN/features_nocat"
cp -rL "$W/rawpop/data/processed" "$IN/processed_rawpop"
du -sh "$IN"
