#!/usr/bin/env bash
# Download the wheels the GPU check needs into .whl/, replacing those there (on a machine with a package registry), for the GPU machine's
# Python, and check that they fit the 64 MiB that may travel with the repository:
#
#   bash bench/gpu/fetch_wheels.sh 3.12                      # TRL 1.16 + datasets 5.2 stack and Liger: 61 MiB
#   bash bench/gpu/fetch_wheels.sh 3.12 --without pyarrow,pandas --with-bitsandbytes   # where the machine has those
#   bash bench/gpu/fetch_wheels.sh 3.12 --with-tunesmith-deps --without liger-kernel   # pydantic and rich too
#
# The GPU machine has torch, transformers, peft and accelerate and their dependencies (numpy, huggingface-hub, pyyaml,
# psutil, fsspec, ...; current huggingface-hub brings typer, and with it rich and pydantic, which is all tunesmith's
# config and console need beyond them), so those are not fetched. Every wheel is fetched with --no-deps: the list is
# the closure of what trl, datasets and liger-kernel need beyond that (liger-kernel's triton comes with CUDA torch).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYVER="${1:?usage: bash bench/gpu/fetch_wheels.sh PYTHON_VERSION [--with-bitsandbytes] [--with-tunesmith-deps] [--without a,b]}"
shift
WITH_BNB=0
WITH_DEPS=0
WITHOUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --with-bitsandbytes) WITH_BNB=1 ;;
    --with-tunesmith-deps) WITH_DEPS=1 ;;
    --without) WITHOUT="$2"; shift ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
  shift
done
# datasets as tunesmith pins it (5.2: pyarrow >= 24, 49 MB, the largest wheel; datasets 4.x would allow pyarrow 21 but
# needs huggingface-hub < 2 and fsspec[http] <= 2026.2, which a current transformers install does not have)
# (python-dateutil 2.9: 4.0 needs tzdata)
PKGS=(trl==1.16.0 datasets==5.2.0 pyarrow==24.0.0 pandas python-dateutil==2.9.0.post0 six dill==0.4.1
      multiprocess==0.70.19 xxhash liger-kernel)
[ "$WITH_DEPS" = 1 ] && PKGS+=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection rich==15.0.0
                              markdown-it-py mdurl pygments)
[ "$WITH_BNB" = 1 ] && PKGS+=(bitsandbytes==0.50.2)
KEEP=()
for p in "${PKGS[@]}"; do
  name="${p%%[=<>]*}"
  if [[ ",$WITHOUT," == *",$name,"* ]]; then continue; fi
  KEEP+=("$p")
done
mkdir -p "$REPO/.whl"
rm -f "$REPO"/.whl/*.whl  # the folder this script fills: start it afresh so its total is what travels
python3 -m pip download -q --no-deps --only-binary=:all: --dest "$REPO/.whl" --python-version "$PYVER" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any "${KEEP[@]}"
ls -l "$REPO/.whl"
total=$(du -cb "$REPO"/.whl/*.whl | tail -1 | cut -f1)
echo "total: $total bytes ($(( total / 1048576 )) MiB) of 67108864 (64 MiB)"
if [ "$total" -gt 67108864 ]; then
  echo "too large to travel: drop what the GPU machine already has (--without NAME,...), or leave out bitsandbytes"
  exit 1
fi
