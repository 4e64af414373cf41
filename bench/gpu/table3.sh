#!/usr/bin/env bash
# Table 3 over seeds on one CUDA GPU (issue 10): every (variant, seed) quantizer as its own process, all at
# once, inside --total-s. IN: processed/, features/, collab/ (+ processed_nocat/, features_nocat/), made on
# CPU (see bench/table3.py). Figures go to docs/results.md with the GPU named.
#   bash bench/gpu/table3.sh IN OUT [bench/table3.py options]      e.g. IN=.gpu_t3 OUT=$OUT --total-s 400
#   bash bench/gpu/table3.sh IN OUT --smoke                        the same on CPU, tiny synthetic set
set -uo pipefail
cd "$(dirname "$0")/../.."
IN=${1:?usage: table3.sh IN OUT [options]}; OUT=${2:?usage: table3.sh IN OUT [options]}; shift 2
source bench/gpu/env.sh "$@"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cpu', torch.backends.cpu.get_cpu_capability())"
DEV=cuda; [[ " $* " == *" --smoke "* ]] && DEV=cpu
exec $PY bench/table3.py "$IN" "$OUT" --device $DEV "$@"
