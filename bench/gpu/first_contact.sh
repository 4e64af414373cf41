#!/usr/bin/env bash
# First contact with a lent GPU (issue 31 A.9): run this first, before anything else, in one device call
# (timeout_s <= 540; it takes <= 8 minutes on one GPU). One line per check, a SUMMARY line last.
#   bash bench/gpu/first_contact.sh IN OUT [--runs prism,tiger] [--epochs 3]    IN from bench/gpu/prepare.sh
#   bash bench/gpu/first_contact.sh IN OUT --smoke                               the same on CPU (tiny synthetic)
# Like beauty.sh it installs nothing that would re-resolve the machine's CUDA torch (bench/gpu/env.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
IN=${1:?usage: first_contact.sh IN OUT [options]}; OUT=${2:?usage: first_contact.sh IN OUT [options]}; shift 2
source bench/gpu/env.sh "$@"
export TQDM_DISABLE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec $PY bench/gpu/first_contact.py "$IN" "$OUT" "$@"
