#!/usr/bin/env bash
# Build llama.cpp's own server (`llama-server`) natively for this CPU: the bench's CPU peer (docs/performance.md).
# The source is the llama.cpp tree inside the llama-cpp-python sdist the tests pin (0.3.36), so both run the same
# llama.cpp. Cached per version and CPU flags under ~/.cache/agreemate/llama-server/; prints the binary's path.
# About 5 minutes on 2 cores the first time. Needs cmake and a C++ compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
FLAGS=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-12)
DEST=${AGREEMATE_LLAMA_SERVER_CACHE:-$HOME/.cache/agreemate/llama-server}/$VERSION-$FLAGS
if [[ -x "$DEST/llama-server" ]]; then echo "$DEST/llama-server"; exit 0; fi
command -v cmake >/dev/null || { echo "[llama-server] cmake is needed (apt-get install cmake)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "[llama-server] fetching the llama-cpp-python $VERSION sdist" >&2
.venv/bin/pip download --disable-pip-version-check --no-deps --no-binary :all: -q -d "$WORK" \
  "llama-cpp-python==$VERSION" >&2
tar xzf "$WORK"/llama_cpp_python-$VERSION.tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
# GCC 12's _tile_loadconfig declares an 8-byte memory operand, so the stores that fill the 64-byte tile config just
# before it are dropped as dead and the first AMX matrix multiply dies with "Illegal instruction" (measured on a
# Xeon with AMX, ../shared/STACK_NOTES.md). A compiler barrier on the config keeps them.
sed -i 's|^\(\s*\)_tile_loadconfig(&tc);|\1__asm__ __volatile__("" : : "r"(\&tc) : "memory");\n\1_tile_loadconfig(\&tc);|' \
  "$SRC/ggml/src/ggml-cpu/amx/mmq.cpp"
grep -q '__asm__ __volatile__("" : : "r"(&tc)' "$SRC/ggml/src/ggml-cpu/amx/mmq.cpp" \
  || { echo "[llama-server] the AMX tile-config fix did not apply" >&2; exit 1; }
echo "[llama-server] building natively (GGML_NATIVE=ON) in $WORK; log: $WORK/build.log" >&2
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF \
  >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; exit 1; }
cmake --build "$WORK/build" --target llama-server -j "$(nproc)" >>"$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log" >&2; exit 1; }
mkdir -p "$DEST"
cp "$WORK/build/bin/llama-server" "$DEST/llama-server.tmp" && mv "$DEST/llama-server.tmp" "$DEST/llama-server"
echo "$DEST/llama-server"
