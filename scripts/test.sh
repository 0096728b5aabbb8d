#!/usr/bin/env bash
# Set up the environment and run the whole test suite. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
# The HTTP backend is tested against a real OpenAI-compatible server (llama-cpp-python serving the embedded GGUF).
# Its first build compiles for ~5-10 minutes on 2 cores; pip's wheel cache (~/.cache/pip) keeps the wheel, so only
# the first run on a machine pays.
if ! .venv/bin/python -c "import llama_cpp.server" 2>/dev/null; then
  echo "[test] installing llama-cpp-python[server] (first time on this machine: a ~10 minute compile)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/pip install --disable-pip-version-check -q \
    "llama-cpp-python[server]==0.3.36" >/tmp/agreemate-llama-install.log 2>&1 \
    || { tail -30 /tmp/agreemate-llama-install.log >&2; echo "[test] llama-cpp-python install failed" >&2; exit 1; }
fi
# The report is tested in a real browser: Debian's chromium, headless, started and stopped by the tests.
if ! command -v chromium >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "[test] installing chromium (first time on this machine: about a minute)"
    { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } \
      >/tmp/agreemate-chromium-install.log 2>&1 \
      || { tail -30 /tmp/agreemate-chromium-install.log >&2; echo "[test] chromium install failed" >&2; exit 1; }
  else
    echo "[test] chromium is missing and this user cannot install it: sudo apt-get install chromium" >&2; exit 1
  fi
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Lint first (configured in pyproject.toml): a lint error fails the run like a failing test.
.venv/bin/ruff check . || { echo "[test] ruff found problems (fix them or run: .venv/bin/ruff check . --fix)" >&2; exit 1; }
.venv/bin/python -m pytest -p no:cacheprovider --durations=12 "$@"
rc=$?
if [[ $rc -eq 5 ]]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi
exit $rc
