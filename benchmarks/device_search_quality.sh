#!/usr/bin/env bash
# Issue 17's GPU run of the search-quality benchmark, on the device machine (one GPU, no network).
#
# That machine's image has torch but no Ray, Optuna or MLflow, and nothing installs there; so the
# packages it lacks travel as one archive, .whl/site.tar.xz (made here from the cp312 wheels of the
# versions the project pins, Ray's jars, RLlib and the dashboard's source map left out to fit the
# 64 MiB a call carries), unpacked into /tmp/site.
#
#   bash benchmarks/device_search_quality.sh SEEDS FIRST_SEED BUDGET_S [SYSTEMS]
#
# writes the rows (--json), the printed tables and the PNG into $OUT.
set -uo pipefail
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
