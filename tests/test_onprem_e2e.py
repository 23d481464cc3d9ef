"""`ray up` of cluster-onprem.yaml onto this machine, a sweep through `ray job submit`, `ray down`.

The work is scripts/onprem_e2e.py (see its docstring); this runs it and checks what it printed. Opt-in
with RUN_RAY_UP=1: it needs root (the head is a network namespace), openssh-server and rsync,
PyPI, and takes minutes; .ci/run sets it where the test can run (docs/testing.md).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def e2e_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("onprem_e2e", ROOT / "scripts" / "onprem_e2e.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_test_config_overrides_only_what_the_test_must(tmp_path: Path) -> None:
    """Fast, no root: the config the script runs `ray up` with is cluster-onprem.yaml plus overrides."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    module = e2e_script()
    machine = module.Machine(tmp_path)
    ports = {"gcs": 41001, "dashboard": 41002, "client": 41003, "agent": 41004}
    derived: dict[str, Any] = module.derived_config(machine, tmp_path / "id_ed25519", ports)
    original = yaml.safe_load((ROOT / "cluster-onprem.yaml").read_text())
    changed = {key for key in original if derived[key] != original[key]}
    assert changed == {"cluster_name", "provider", "auth", "head_start_ray_commands"}
    assert derived["provider"] == {"type": "local", "head_ip": "10.79.0.2", "worker_ips": []}
    assert derived["auth"] == {"ssh_user": machine.user, "ssh_private_key": str(tmp_path / "id_ed25519")}
    before, after = original["head_start_ray_commands"], derived["head_start_ray_commands"]
    assert len(before) == len(after) and sum(b != a for b, a in zip(before, after, strict=True)) == 1
    head = next(command for command in after if "ray start --head" in command)
    assert "--port=41001 --dashboard-port=41002" in head and "--port=6379" not in head
    assert "export RAY_AUTH_MODE=token;" in head and "--dashboard-host=127.0.0.1" in head
    validate_config(prepare_config(derived))


@pytest.mark.integration
@pytest.mark.skipif(
    os.environ.get("RUN_RAY_UP") != "1",
    reason="set RUN_RAY_UP=1 to `ray up` cluster-onprem.yaml onto this machine "
    "(root, openssh-server, rsync, IP forwarding off, PyPI; about 4 minutes on 2 cores)",
)
@pytest.mark.timeout(1500)
def test_ray_up_sweep_on_the_head_then_ray_down() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/onprem_e2e.py"], cwd=ROOT, capture_output=True, text=True, timeout=1400
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "setup.sh: torch 2.13.0" in output  # cluster/setup.sh --head ran to its end
    assert re.search(r"MLflow tracking server on http://[\d.]+:\d+ \(basic auth", output)  # start_mlflow.py
    assert "job API through the forwarded port without the token: HTTP 401" in output
    assert "trials 3/3" in output and "succeeded" in output
    assert "without a login: HTTP 401" in output
    assert len(re.findall(r"^    trial   t\d{3} .* FINISHED  val_mse=\d.* epochs=[12] ", output, re.M)) == 3
    assert "MLflow tracking server stopped" in output
    assert re.search(r"processes of \S+ after ray down \(SSH sessions aside\): 0$", output, re.M)
    assert re.search(r"passed in \d+ s$", output, re.M)
