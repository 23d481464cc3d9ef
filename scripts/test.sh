#!/usr/bin/env bash
# Set up, then lint, type-check and run the whole test suite (real Ray, Optuna, MLflow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
