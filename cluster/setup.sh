#!/usr/bin/env bash
# Install the project on one cluster node; `ray up` runs it through cluster.yaml and
# cluster-onprem.yaml (head_setup_commands, worker_setup_commands) after file_mounts copied
# the project to ~/image-sweeps and your secrets to ~/.ray/auth_token and ~/.sweeps-cluster/.
#
#   setup.sh [--head] [--cpu-torch]
#     --head       also what the head needs: MLflow's auth extra (the tracking server) and boto3
#                  (Ray's AWS autoscaler, S3 artifacts)
#     --cpu-torch  PyTorch's CPU build (a head without a GPU); default: PyPI's CUDA build
#
# Everything goes into the virtual environment ~/sweeps-venv, activated from ~/.bashrc so that
# `ray`, `python` and `sweeps` in the start commands, `ray exec` and Ray jobs are the ones here.
# Optional settings come from ~/.sweeps-cluster/settings.env (see README, "Running on a cluster"):
#   SHARED_FS_SOURCE  an NFS export to mount on every node, e.g. fs-0123456789abcdef0.efs.us-west-2.amazonaws.com:/
#   SHARED_FS_PATH    where to mount it (default /mnt/sweeps): pass it to `sweeps run --storage`
set -euo pipefail

# The versions this project is tested with (the lower bounds in pyproject.toml).
TORCH_VERSION=2.13.0
RAY_VERSION=2.60.0
VENV="$HOME/sweeps-venv"
PROJECT="$HOME/image-sweeps"
SECRETS="$HOME/.sweeps-cluster"

fail() {
  echo "setup.sh: $*" >&2
  exit 1
}

head=0
cpu_torch=0
for arg in "$@"; do
  case "$arg" in
    --head) head=1 ;;
    --cpu-torch) cpu_torch=1 ;;
    *) fail "unknown option $arg (use --head, --cpu-torch)" ;;
  esac
done

# Secrets arrive through file_mounts from your machine; stop here, before anything starts, without them.
for file in "$HOME/.ray/auth_token" "$SECRETS/mlflow-credentials"; do
  [ -s "$file" ] || fail "$file is missing or empty: create it on your machine (README, 'Running on a cluster'), then run 'ray up' again"
done
chmod 700 "$SECRETS"
chmod 600 "$HOME/.ray/auth_token" "$SECRETS/mlflow-credentials"
# MLflow clients (the sweep driver, every trial, `sweeps` in `ray exec`) read their login from here.
mkdir -p -m 700 "$HOME/.mlflow"
ln -sfn "$SECRETS/mlflow-credentials" "$HOME/.mlflow/credentials"

SHARED_FS_SOURCE=""
SHARED_FS_PATH=/mnt/sweeps
if [ -f "$SECRETS/settings.env" ]; then
  # shellcheck disable=SC1091
  . "$SECRETS/settings.env"
fi
if [ -n "$SHARED_FS_SOURCE" ] && ! mountpoint -q "$SHARED_FS_PATH"; then
  command -v mount.nfs4 >/dev/null || { sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q nfs-common; }
  sudo mkdir -p "$SHARED_FS_PATH"
  sudo mount -t nfs4 -o nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport \
    "$SHARED_FS_SOURCE" "$SHARED_FS_PATH"
  [ -w "$SHARED_FS_PATH" ] || sudo chown "$(id -u):$(id -g)" "$SHARED_FS_PATH"
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || fail "python3 is $(python3 -V 2>&1); the project needs 3.10+"
if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" 2>/dev/null || {
    # Debian and Ubuntu ship venv's pip bootstrap separately.
    rm -rf "$VENV"
    sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
    python3 -m venv "$VENV"
  }
fi
grep -qxF "source $VENV/bin/activate" "$HOME/.bashrc" 2>/dev/null || echo "source $VENV/bin/activate" >>"$HOME/.bashrc"

PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
if [ "$cpu_torch" = 1 ]; then
  "${PIP[@]}" "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
else
  "${PIP[@]}" "torch==$TORCH_VERSION"
fi
"${PIP[@]}" "ray[default,tune]==$RAY_VERSION"
"${PIP[@]}" -e "$PROJECT"
if [ "$head" = 1 ]; then
  "${PIP[@]}" "mlflow[auth]" boto3
fi
"$VENV/bin/python" -c "import torch, ray, mlflow; print('setup.sh: torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'no cuda', '| ray', ray.__version__, '| mlflow', mlflow.__version__)"
