#!/usr/bin/env bash
# The wheels the prepared GPU run carries in .whl/ (bench/gpu/env.sh installs them there): the versions
# requirements.lock pins, for Python 3.12 on manylinux (the device image's python3), of the packages the
# image lacks. The image's own numpy/pandas/pyarrow/scipy stay (their wheels exceed a call's 64 MiB carry);
# the run's env phase lists every package whose version differs from the lock (results.json "lock_diff").
#   bash bench/gpu/wheels.sh [NAME ...]     default: ruamel.yaml (pure Python since 0.19)
set -euo pipefail
cd "$(dirname "$0")/../.."
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(ruamel.yaml)
mkdir -p .whl
for n in "${names[@]}"; do
  pin=$(grep -i -E "^${n//./[._-]}==" requirements.lock | sed 's/ .*//') || true
  if [ -z "$pin" ]; then echo "wheels: $n is not in requirements.lock" >&2; exit 1; fi
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$pin"
  echo "wheels: $pin"
done
du -sh .whl
