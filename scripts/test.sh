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
  # No llava/mtmd library: the server imports it only for image chat handlers, and it is a large part of the compile.
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" .venv/bin/pip install --disable-pip-version-check -q \
    "llama-cpp-python[server]==0.3.36" >/tmp/agreemate-llama-install.log 2>&1 \
    || { tail -30 /tmp/agreemate-llama-install.log >&2; echo "[test] llama-cpp-python install failed" >&2; exit 1; }
fi
# Debian packages the tests need (they start and stop the programs themselves): chromium (the report is tested in
# a real headless browser) and redis-server (the cluster-profile test). Installed when missing and we are root.
need() {  # need COMMAND PACKAGE
  command -v "$1" >/dev/null && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "[test] installing $2 (first time on this machine)"
    { apt-get install -y -q "$2" || { apt-get update -q && apt-get install -y -q "$2"; }; } >"/tmp/agreemate-$2.log" 2>&1 \
      || { tail -30 "/tmp/agreemate-$2.log" >&2; echo "[test] $2 install failed" >&2; exit 1; }
  else
    echo "[test] $1 is missing and this user cannot install it: sudo apt-get install $2" >&2; exit 1
  fi
}
need chromium chromium
need redis-server redis-server
# The Dagster tests also run against a real Postgres: a throwaway server for this run, removed on exit.
PGROOT=$(mktemp -d /tmp/agreemate-test-pg-XXXXXX)
trap '.venv/bin/python -m agreemate_assets.deploy postgres-down --root "$PGROOT" >/dev/null 2>&1; rm -rf "$PGROOT"' EXIT
PGENV=$(.venv/bin/python -m agreemate_assets.deploy postgres-up --root "$PGROOT") \
  || { echo "[test] could not start Postgres (PostgreSQL 15 server binaries: apt-get install postgresql-15)" >&2; exit 1; }
eval "$PGENV"
echo "[test] Postgres for the instance tests: $AGREEMATE_TEST_PG_URL"
# Lint first (configured in pyproject.toml): a lint error fails the run like a failing test.
.venv/bin/ruff check . || { echo "[test] ruff found problems (fix them or run: .venv/bin/ruff check . --fix)" >&2; exit 1; }
# Two parts. Most tests run on two pytest-xdist workers with one torch thread each (a file's tests stay on one
# worker, so module fixtures are built once): many tests wait on subprocesses, servers and daemons, and the other
# worker computes meanwhile. The deployment tests (Postgres, Redis, celery workers with a 10 s visibility timeout)
# run alone afterwards with two threads, as before. pytest's exit code 5 (nothing selected, e.g. for a file
# given as an argument that has no serial tests) is not a failure.
WORKERS=${AGREEMATE_TEST_WORKERS:-2}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest -p no:cacheprovider --durations=12 \
  -n "$WORKERS" --dist loadfile -m "not serial" "$@"
rc1=$?
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} .venv/bin/python -m pytest -p no:cacheprovider --durations=12 -m serial "$@"
rc2=$?
for rc in $rc1 $rc2; do [[ $rc -eq 0 || $rc -eq 5 ]] || exit "$rc"; done
exit 0
