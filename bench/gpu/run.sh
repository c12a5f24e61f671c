#!/usr/bin/env bash
# The GPU check, prepared to run unattended on a GPU machine without network, in at most 8 minutes:
#
#   bash bench/gpu/run.sh runs/gpu                 # installs the wheels in .whl/, then bench/gpu/gpu_bench.py
#   bash bench/gpu/run.sh runs/gpu-dry --dry-run   # CPU: tiny model, 3 steps, the same code paths and output files
#
# The wheels come along in .whl/ (made by bench/gpu/fetch_wheels.sh on a connected machine; 64 MiB at most). Only
# packages that do not import already are installed, from .whl/ alone (pip --no-index). tunesmith itself runs from
# src/ (PYTHONPATH), so the machine's torch, transformers, peft and accelerate stay as they are.
# Results: OUT/gpu-bench.json and OUT/gpu-bench.md (see bench/gpu/README.md).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:?usage: bash bench/gpu/run.sh OUT_DIR [--dry-run] [gpu_bench.py options]}"
shift
PYTHON="${PYTHON:-python}"
[ -x "$REPO/.venv/bin/python" ] && [ "$PYTHON" = python ] && PYTHON="$REPO/.venv/bin/python"
START=$(date +%s)
DRY=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && DRY=1; done

mkdir -p "$OUT"
echo "[run.sh] $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $("$PYTHON" -V 2>&1); load $(cut -d' ' -f1-3 /proc/loadavg)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# install: module to import -> pip requirement; required groups first, optional ones may fail (their rows say why)
install() {  # install REQUIRED MODULE PACKAGE...
  local required=$1 module=$2
  shift 2
  if "$PYTHON" -c "import $module" 2>/dev/null; then return 0; fi
  if ! ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
    echo "[run.sh] $module is not installed and there is no .whl/ folder (bench/gpu/fetch_wheels.sh makes it)"
    [ "$required" = yes ] && return 1 || return 0
  fi
  echo "[run.sh] installing $* from .whl/"
  if ! "$PYTHON" -m pip install -q --no-index --find-links "$REPO/.whl" "$@" 2>&1 | tail -5; then :; fi
  if ! "$PYTHON" -c "import $module" 2>/dev/null; then
    echo "[run.sh] $module could not be installed from .whl/"
    [ "$required" = yes ] && return 1
  fi
  return 0
}
ok=yes
install yes trl trl datasets || ok=no
install yes pydantic pydantic || ok=no
install yes rich rich || ok=no
install no liger_kernel liger-kernel
install no bitsandbytes bitsandbytes
if [ "$ok" != yes ]; then
  echo "[run.sh] a required package is missing: see above; nothing was run"
  exit 3
fi

ELAPSED=$(( $(date +%s) - START ))
CMD=("$PYTHON" "$REPO/bench/gpu/gpu_bench.py" --out "$OUT" "$@")
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$DRY" = 1 ]; then
  # one torch thread per process: the dry run checks code paths, and on a shared CPU two spinning threads per
  # process make every step many times slower
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "${CMD[@]}"
else
  # 8 minutes in all: the driver's own budget (--budget, 450 s) ends the variants; this is the hard stop
  timeout --signal=TERM --kill-after=10 $(( 480 - ELAPSED )) "${CMD[@]}"
fi
rc=$?
echo "[run.sh] exit code $rc after $(( $(date +%s) - START )) s; results in $OUT"
exit $rc
