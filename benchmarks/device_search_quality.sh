#!/usr/bin/env bash
# Issue 17's GPU run of the search-quality benchmark, on the device machine (one GPU, no network).
#
# That machine's image has torch but no Ray, Optuna or MLflow, and nothing installs there; so the
# packages it lacks travel as one archive, .whl/site.tar.xz (made here from the cp312 wheels of the
# versions the project pins, Ray's jars, RLlib and the dashboard's source map left out to fit the
# 64 MiB a call carries), unpacked into /tmp/site.
#
#   bash benchmarks/device_search_quality.sh --make-archive     # here, with PyPI: makes .whl/site.tar.xz
#   bash benchmarks/device_search_quality.sh SEEDS FIRST_SEED BUDGET_S [SYSTEMS]   # there
#
# The second writes the rows (--json), the printed tables and the PNG into $OUT. Call the device
# tool with carry [".whl"].
set -uo pipefail
# What that image lacks (its package list: the device tool's KINDS.md), at this project's versions.
MISSING="alembic==1.20.1 annotated-types==0.8.0 blinker==1.9.0 cachetools==7.3.3 cffi==2.1.1 colorlog==6.12.0
cryptography==50.0.2 databricks-sdk==0.167.0 docker==7.2.0 fastapi==0.165.0 flask==3.1.3 flask-cors==6.0.5
gitdb==4.0.12 gitpython==3.2.1 google-auth==2.63.0 graphene==3.4.3 graphql-core==3.2.14 graphql-relay==3.2.0
gunicorn==26.2.0 huey==3.5.4 importlib-metadata==9.1.0 itsdangerous==2.2.0 jsonschema==4.26.0
jsonschema-specifications==2025.9.1 mako==1.4.3 mlflow==3.17.2 mlflow-skinny==3.17.2 mlflow-tracing==3.17.2
opentelemetry-api==1.45.2 opentelemetry-proto==1.45.2 opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2 optuna==5.1.0 prettytable==3.19.0 pyasn1==0.6.5 pyasn1-modules==0.4.2
pycparser==3.12 pydantic==2.14.4 pydantic-core==2.50.5 python-dotenv==1.2.4 ray==2.60.0 referencing==0.37.0
rpds-py==2026.9.1 skops==0.16.0 smmap==5.0.3 sqlalchemy==2.1.9 sqlparse==0.6.1 starlette==1.10.0
tensorboardx==2.6.5 typing-inspection==0.4.5 uvicorn==0.55.0 wcwidth==0.9.4"
if [ "${1:-}" = "--make-archive" ]; then
    work=$(mktemp -d) && mkdir -p "$work/wheels" "$work/site" .whl || exit 1
    platforms=""
    for p in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
        platforms="$platforms --platform ${p}_x86_64"
    done
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $platforms -d "$work/wheels" $MISSING || exit 1
    for w in "$work"/wheels/*.whl; do unzip -q -o "$w" -d "$work/site" || exit 1; done
    rm -rf "$work"/site/ray/jars "$work"/site/ray/rllib "$work"/site/ray/dashboard/client/build/static/js/*.map
    tar -C "$work/site" -cf - . | xz -T0 -6 > .whl/site.tar.xz && rm -rf "$work" && ls -la .whl/site.tar.xz
    exit
fi
seeds=${1:-1} first=${2:-0} budget=${3:-60} systems=${4:-ours,optuna}
out=${OUT:-/tmp/out}
mkdir -p "$out"
if [ ! -d /tmp/site/ray ]; then
    mkdir -p /tmp/site && tar -C /tmp/site -xJf .whl/site.tar.xz || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 - <<'PY' || exit 1
import mlflow, optuna, ray, torch
print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "ray", ray.__version__,
      "optuna", optuna.__version__, "mlflow", mlflow.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m benchmarks.search_quality --tasks sr_gan_gpu --systems "$systems" --seeds "$seeds" \
    --first-seed "$first" --budget-s "$budget" --json "$out/rows.json" --plot "$out/search_quality_gpu.png" \
    --keep /tmp/sq-keep 2>&1 | tee "$out/table.txt"
for log in /tmp/sq-keep/*/*/log.txt; do  # each run's log, last lines, for a run that went wrong
    echo "== $log"; tail -n 5 "$log"
done > "$out/logs.txt" 2>&1
