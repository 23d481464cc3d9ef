#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its dev tools.
# PyTorch goes in first as the CPU build: a plain `torch` requirement would pull a CUDA build of several GB.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" torch==2.13.0 2>/dev/null \
    || "${PIP[@]}" torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
fi
"${PIP[@]}" -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import torch, ray, optuna, mlflow, pyarrow; print('installed: torch', torch.__version__, '| ray', ray.__version__, '| optuna', optuna.__version__, '| mlflow', mlflow.__version__)"
