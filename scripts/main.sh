#!/usr/bin/env bash
# Set up the environment and run the main job: materialize the default roster's pairs and the metrics table on the
# embedded model into the Dagster instance at dagster_home/. Extra arguments go to `python -m agreemate_assets.study`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="$PWD/dagster_home"
exec .venv/bin/python -m agreemate_assets.study "$@"
