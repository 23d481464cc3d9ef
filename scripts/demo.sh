#!/usr/bin/env bash
# Set up, then run the demo sweep (12 VAE trials on local Ray, recorded in ./mlflow.db).
# Extra arguments go to `sweeps run`, e.g. scripts/demo.sh --trials 4
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sweeps run search_spaces/vae_demo.yaml "$@"
