#!/usr/bin/env bash
# Build llama.cpp's llama-server, llama-quantize and llama-tokenize from the source package of llama-cpp-python
# (PyPI sdist, which vendors llama.cpp), for `make test-runtime`.  Takes about 30 minutes on 2 cores.
#
#   scripts/build-llama-cpp.sh [PREFIX]      # default PREFIX: ${TUNESMITH_HOME:-~/.cache/tunesmith}/llama.cpp
#
# Skips the build when PREFIX/bin already holds the three tools.  Needs cmake, a C++ compiler and pip.
set -euo pipefail
PREFIX="${1:-${TUNESMITH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/tunesmith}/llama.cpp}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
TOOLS=(llama-server llama-quantize llama-tokenize)
PYTHON="${PYTHON:-python3}"

have_all() { for t in "${TOOLS[@]}"; do [ -x "$PREFIX/bin/$t" ] || return 1; done; }
if have_all; then echo "llama.cpp tools present in $PREFIX/bin"; exit 0; fi
for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed to build llama.cpp (apt-get install cmake g++)" >&2; exit 2; }
done
mkdir -p "$PREFIX/src"
sdist="$PREFIX/src/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  "$PYTHON" -m pip download --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$PREFIX/src"
fi
src="$PREFIX/src/llama_cpp_python-$VERSION"
[ -d "$src" ] || tar xzf "$sdist" -C "$PREFIX/src"
start=$(date +%s)
cmake -S "$src/vendor/llama.cpp" -B "$PREFIX/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF
cmake --build "$PREFIX/build" --config Release -j "${JOBS:-$(nproc)}" --target "${TOOLS[@]}"
mkdir -p "$PREFIX/bin"
for t in "${TOOLS[@]}"; do cp "$PREFIX/build/bin/$t" "$PREFIX/bin/$t"; done
echo "built ${TOOLS[*]} from llama-cpp-python $VERSION in $(( $(date +%s) - start )) s: $PREFIX/bin"
