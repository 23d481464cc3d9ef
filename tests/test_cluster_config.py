"""The cluster configs: valid for Ray 2.60, no secrets, MLflow on a private address, SSH only.

Fast and offline: nothing here starts Ray, MLflow or a cluster, or calls AWS.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
CONFIGS = {"aws": ROOT / "cluster.yaml", "onprem": ROOT / "cluster-onprem.yaml"}
SSH_CIDR = "203.0.113.0/24"


def load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load(CONFIGS[name].read_text()))


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return dict(json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text()))


def start_mlflow() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("start_mlflow", CLUSTER / "start_mlflow.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_commands(config: dict[str, Any]) -> list[str]:
    keys = [
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ]
    return [command for key in keys for command in config.get(key, [])]


# --- Ray's schema and Ray's own config pipeline -------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_valid_against_rays_schema(name: str) -> None:
    import jsonschema

    jsonschema.validate(load(name), ray_schema())


@pytest.mark.parametrize("name", CONFIGS)
def test_valid_after_rays_defaults(name: str) -> None:
    """What `ray up` does before it talks to the cloud: fill in defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(load(name))
    validate_config(prepared)
    # Explicit commands replace Ray's defaults (which would install a nightly Ray with pip).
    assert prepared["setup_commands"] == []
    assert all("ray-wheels" not in command for command in all_commands(prepared))


def test_the_schema_check_rejects_a_broken_config() -> None:
    import jsonschema

    broken = load("aws")
    broken["available_node_types"]["ray.worker.gpu"]["resources"] = {"GPU": 0.5}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ray_schema())


def test_aws_node_types() -> None:
    config = load("aws")
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no trials on the head
    workers = [node for key, node in nodes.items() if key != config["head_node_type"]]
    assert len(workers) == 1
    gpu = workers[0]
    assert gpu["min_workers"] == 0 and 0 < gpu["max_workers"] <= config["max_workers"]
    assert gpu["resources"]["GPU"] >= 1


def test_aws_and_onprem_share_setup_and_start_commands() -> None:
    aws, onprem = load("aws"), load("onprem")
    for key in ("file_mounts", "rsync_filter", "rsync_exclude", "setup_commands", "worker_setup_commands"):
        assert aws[key] == onprem[key], key
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert aws[key] == onprem[key], key
    # The head differs only in the PyTorch build: CPU on AWS's GPU-less head.
    assert [c.replace(" --cpu-torch", "") for c in aws["head_setup_commands"]] == onprem["head_setup_commands"]
    assert onprem["provider"]["type"] == "local" and onprem["provider"]["head_ip"] and onprem["provider"]["worker_ips"]


@pytest.mark.parametrize("name", CONFIGS)
def test_project_and_secrets_are_mounted_not_committed(name: str) -> None:
    mounts = load(name)["file_mounts"]
    assert mounts["~/image-sweeps"] == "."
    secrets = {remote: local for remote, local in mounts.items() if remote != "~/image-sweeps"}
    assert secrets == {"~/.ray/auth_token": "~/.ray/auth_token", "~/.sweeps-cluster": "~/.sweeps-cluster"}
    # .gitignore'd files (.venv, sweep_runs, mlflow.db) and .git stay on your machine.
    assert load(name)["rsync_filter"] == [".gitignore"]


@pytest.mark.parametrize("name", CONFIGS)
def test_workers_get_cuda_torch_and_the_project(name: str) -> None:
    config = load(name)
    assert config["worker_setup_commands"] == ["bash ~/image-sweeps/cluster/setup.sh"]  # no --cpu-torch
    setup = (CLUSTER / "setup.sh").read_text()
    assert '"${PIP[@]}" -e "$PROJECT"' in setup and 'PROJECT="$HOME/image-sweeps"' in setup
    assert '"${PIP[@]}" "torch==$TORCH_VERSION"\n' in setup  # PyPI's Linux wheel is the CUDA build


def test_setup_pins_the_tested_versions() -> None:
    """setup.sh installs exactly the versions pyproject.toml names as tested (its lower bounds)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    setup = (CLUSTER / "setup.sh").read_text()
    for package, variable in (("torch", "TORCH_VERSION"), ("ray[tune]", "RAY_VERSION")):
        tested = re.search(rf'"{re.escape(package)}>=([\d.]+)"', pyproject)
        pinned = re.search(rf"^{variable}=([\d.]+)$", setup, re.MULTILINE)
        assert tested and pinned and tested.group(1) == pinned.group(1), package


@pytest.mark.parametrize("script", sorted(CLUSTER.glob("*.sh")), ids=lambda p: p.name)
def test_scripts_parse(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


# --- Ray token authentication --------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_every_ray_start_uses_token_auth(name: str) -> None:
    config = load(name)
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert "export RAY_AUTH_MODE=token;" in command, command
    # ~/.ray/auth_token is where Ray 2.60 looks when RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH are unset.
    from ray._private.authentication.authentication_token_setup import _get_default_token_path

    assert str(_get_default_token_path()).endswith("/.ray/auth_token")
    assert "~/.ray/auth_token" in config["file_mounts"]


@pytest.mark.parametrize("name", CONFIGS)
def test_dashboard_and_job_api_only_on_loopback(name: str) -> None:
    config = load(name)
    head = next(c for c in config["head_start_ray_commands"] if "ray start --head" in c)
    assert "--dashboard-host=127.0.0.1" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head


# --- MLflow on the head ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_head_starts_mlflow_through_the_checked_launcher(name: str) -> None:
    config = load(name)
    commands = config["head_start_ray_commands"]
    assert "python ~/image-sweeps/cluster/start_mlflow.py" in commands
    assert commands.index("python ~/image-sweeps/cluster/start_mlflow.py") < next(
        i for i, c in enumerate(commands) if "ray start" in c
    )
    assert not any("mlflow server" in c or "mlflow ui" in c for c in all_commands(config))


@pytest.mark.parametrize("address", ["10.0.1.23", "172.31.5.6", "192.168.1.2", "fd00::5"])
def test_mlflow_accepts_private_addresses(address: str) -> None:
    assert start_mlflow().private_host(address) == address


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "127.0.0.1", "::1", "169.254.1.1", "8.8.8.8", "localhost", ""])
def test_mlflow_refuses_every_interface_public_and_loopback(address: str) -> None:
    module = start_mlflow()
    with pytest.raises(module.StartError):
        module.private_host(address)


def test_mlflow_server_command() -> None:
    module = start_mlflow()
    command = module.server_command("python", "10.0.1.23", 5000, Path("/home/ubuntu/mlflow"), "s3://bucket/mlflow")
    flags = dict(zip(command, command[1:], strict=False))
    assert command[:4] == ["python", "-m", "mlflow", "server"]
    assert flags["--host"] == "10.0.1.23" and command.count("--host") == 1
    assert flags["--app-name"] == "basic-auth"
    assert flags["--backend-store-uri"] == "sqlite:////home/ubuntu/mlflow/mlflow.db"
    assert "--serve-artifacts" in command and flags["--artifacts-destination"] == "s3://bucket/mlflow"
    assert flags["--allowed-hosts"].split(",") == [
        "10.0.1.23:5000",
        "localhost",
        "localhost:*",
        "127.0.0.1",
        "127.0.0.1:*",
    ]
    assert module.tracking_uri("10.0.1.23", 5000) == "http://10.0.1.23:5000"


def test_mlflow_login_comes_from_the_credentials_file(tmp_path: Path) -> None:
    module = start_mlflow()
    path = tmp_path / "credentials"
    with pytest.raises(module.StartError):
        module.read_login(path)
    path.write_text("[mlflow]\nmlflow_tracking_username = admin\nmlflow_tracking_password = not-a-real-one\n")
    assert module.read_login(path) == ("admin", "not-a-real-one")


def test_mlflow_stop_stops_only_its_own_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`start_mlflow.py --stop` (on-prem, before `ray down`): nothing running is fine; a reused pid is left alone."""
    module = start_mlflow()
    monkeypatch.setattr(module, "STATE", tmp_path)
    assert module.main(["--stop"]) == 0  # no pid file
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (tmp_path / "server.pid").write_text(str(sleeper.pid))  # not an mlflow process: not stopped
        assert module.main(["--stop"]) == 0 and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(module.StartError):
        module.main(["--restart"])


def test_mlflow_csrf_key_is_made_once_and_private(tmp_path: Path) -> None:
    module = start_mlflow()
    path = tmp_path / "flask_secret_key"
    key = module.flask_secret_key(path)
    assert len(key) == 64 and module.flask_secret_key(path) == key
    assert path.stat().st_mode & 0o777 == 0o600


def test_mlflow_settings_file(tmp_path: Path) -> None:
    module = start_mlflow()
    assert module.read_settings(tmp_path / "absent.env") == {}
    path = tmp_path / "settings.env"
    path.write_text("# comment\nMLFLOW_ARTIFACTS_DESTINATION='s3://b/p'  # S3\nexport SHARED_FS_PATH=/mnt/sweeps\n\n")
    assert module.read_settings(path) == {"MLFLOW_ARTIFACTS_DESTINATION": "s3://b/p", "SHARED_FS_PATH": "/mnt/sweeps"}


def test_mlflow_auth_config_has_no_password() -> None:
    import configparser

    config = configparser.ConfigParser()
    config.read(CLUSTER / "basic_auth.ini")
    assert config["mlflow"]["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert not config["mlflow"].get("admin_password")
    assert config["mlflow"]["default_permission"] == "READ"


# --- the AWS security group: SSH from one CIDR, everything else only inside the cluster -------------


def test_ray_creates_no_security_group_rules() -> None:
    """Ray's own group would open SSH to 0.0.0.0/0; with SecurityGroupIds on every node type it adds none."""
    config = load("aws")
    assert "security_group" not in config["provider"]
    for node in config["available_node_types"].values():
        assert node["node_config"]["SecurityGroupIds"] == ["sg-REPLACE_WITH_YOUR_GROUP"]


def test_rays_security_group_step_leaves_the_groups_alone(
    ray_aws_config: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray 2.60's own code, not a reading of it: the rules it would add, and that it adds none here."""
    default_rules = ray_aws_config._create_default_inbound_rules({"sg-1"})
    assert {"CidrIp": "0.0.0.0/0"} in [r for rule in default_rules for r in rule.get("IpRanges", [])]

    def refuse(*args: object) -> None:
        raise AssertionError("Ray would create or change a security group")

    config = load("aws")
    monkeypatch.setattr(ray_aws_config, "_upsert_security_groups", refuse)
    assert ray_aws_config._configure_security_group(copy.deepcopy(config)) == config


def security_group_rules() -> list[dict[str, Any]]:
    script = (CLUSTER / "aws-security-group.sh").read_text()
    block = re.search(r"RULES=\$\(\n\s*cat <<EOF\n(.*?)\nEOF\n\)", script, re.DOTALL)
    assert block, "the RULES heredoc moved"
    text = block.group(1).replace("${SSH_CIDR}", SSH_CIDR).replace("${GROUP_ID}", "sg-self")
    assert "$" not in text
    return list(json.loads(text))


def test_security_group_opens_only_ssh_to_the_outside() -> None:
    rules = security_group_rules()
    outside = [r for r in rules if r.get("IpRanges") or r.get("Ipv6Ranges") or r.get("PrefixListIds")]
    assert len(outside) == 1
    ssh = outside[0]
    assert (ssh["IpProtocol"], ssh["FromPort"], ssh["ToPort"]) == ("tcp", 22, 22)
    assert [r["CidrIp"] for r in ssh["IpRanges"]] == [SSH_CIDR] and not ssh.get("Ipv6Ranges")
    inside = [r for r in rules if r is not ssh]
    assert all([p["GroupId"] for p in r["UserIdGroupPairs"]] == ["sg-self"] for r in inside)
    assert all(set(r) <= {"IpProtocol", "FromPort", "ToPort", "UserIdGroupPairs"} for r in inside)


@pytest.mark.parametrize("cidr", ["", "0.0.0.0/0", "::/0", "203.0.113.7"])
def test_security_group_script_refuses_an_open_or_missing_cidr(cidr: str, tmp_path: Path) -> None:
    # An `aws` that fails loudly: the script must stop before any AWS call.
    fake = tmp_path / "aws"
    fake.write_text("#!/bin/sh\necho called >&2\nexit 99\n")
    fake.chmod(0o755)
    result = subprocess.run(
        ["bash", str(CLUSTER / "aws-security-group.sh")],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", "SSH_CIDR": cidr},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "called" not in result.stderr, result.stderr


# --- no secrets in the repository -----------------------------------------------------------------

SECRET_PATTERNS = {
    "a Ray token (64 hex digits)": re.compile(r"(?<![0-9a-fA-F])[0-9a-f]{64}(?![0-9a-fA-F])"),
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a quoted secret": re.compile(
        r"(?i)(?:password|passwd|secret|token|api_key)\w*[\"']?\s*[:=]\s*[\"'](?![~/])([^\"'\s$<{%]{8,})[\"']"
    ),
}
# Unquoted `key = value` lines in config-like files: the value must be a reference, not a secret.
CONFIG_SUFFIXES = {".yaml", ".yml", ".ini", ".env", ".cfg", ".toml", ".sh", ".md", ".txt"}
CONFIG_ASSIGNMENT = re.compile(
    r"(?im)^[\s#>*-]*(?:export\s+)?[\w.]*(?:password|passwd|secret|token)[\w.]*\s*[:=][ \t]*([^\s#]+)"
)
REFERENCE = re.compile(r"""^(?:["']?[$<%{~/]|\[|required$|["']{2}$|none$|null$)""", re.IGNORECASE)


def repository_files() -> list[Path]:
    """Committed files and files that would be committed (not ignored), as git sees them."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available")
    return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def test_the_secret_scan_finds_secrets() -> None:
    # Built at run time, so that this file does not trip the scan itself.
    samples = [
        "token: " + "0123456789abcdef" * 4,
        "aws_access_key_id = AKIA" + "IOSFODNN7EXAMPLE",
        "-----BEGIN OPENSSH PRIVATE " + "KEY-----",
        'MLFLOW_TRACKING_PASSWORD="corr' + 'ect-horse-battery"',
    ]
    for sample in samples:
        assert any(p.search(sample) for p in SECRET_PATTERNS.values()), sample
    found = CONFIG_ASSIGNMENT.search("mlflow_tracking_password = hunter2hunter2")
    assert found and not REFERENCE.match(found.group(1))
    for reference in ("$MLFLOW_PASSWORD", "<generated>", "%s", "${SECRET}", "~/.ray/auth_token"):
        assert REFERENCE.match(reference), reference


def test_no_secrets_in_the_repository() -> None:
    problems = []
    for path in repository_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        relative = path.relative_to(ROOT)
        for what, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                problems.append(f"{relative}: {what}: {match.group(0)[:60]}")
        if path.suffix in CONFIG_SUFFIXES or path.name.endswith(".yaml"):
            for match in CONFIG_ASSIGNMENT.finditer(text):
                if not REFERENCE.match(match.group(1)):
                    problems.append(f"{relative}: a value for a secret: {match.group(0).strip()[:60]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_reference_secrets_by_path_only(name: str) -> None:
    text = CONFIGS[name].read_text()
    assert not re.search(r"(?i)(password|passwd)\s*[:=]", text)
    for command in all_commands(load(name)):
        words = shlex.split(command.replace(";", " "))
        assert not any(re.search(r"(?i)(password|token)=\S", word) for word in words if "RAY_AUTH_MODE" not in word)


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def ray_aws_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """Ray's AWS config module; with stand-ins for boto3 and botocore when they are not installed.

    Nothing here calls AWS: the code under test returns before any client is made.
    """
    name = "ray.autoscaler._private.aws.config"
    for loaded in [m for m in sys.modules if m.startswith("ray.autoscaler._private.aws")]:
        monkeypatch.delitem(sys.modules, loaded)
    if importlib.util.find_spec("boto3") is None:
        stubs: dict[str, dict[str, Any]] = {
            "boto3": {"__version__": "1.40.0"},
            "boto3.exceptions": {"ResourceNotExistsError": type("ResourceNotExistsError", (Exception,), {})},
            "boto3.resources": {},
            "boto3.resources.base": {"ServiceResource": object},
            "botocore": {},
            "botocore.client": {"BaseClient": object},
            "botocore.config": {"Config": object},
            "botocore.exceptions": {"ClientError": type("ClientError", (Exception,), {})},
        }
        for module_name, attributes in stubs.items():
            stub = types.ModuleType(module_name)
            stub.__dict__.update(attributes)
            monkeypatch.setitem(sys.modules, module_name, stub)
    module = importlib.import_module(name)
    yield module
    for loaded in [m for m in sys.modules if m.startswith("ray.autoscaler._private.aws")]:
        sys.modules.pop(loaded, None)


# --- `sweeps run` joins a running cluster ---------------------------------------------------------


def test_sweeps_run_address_defaults_to_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeps.cli import _parser

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _parser().parse_args(["run", "spec.yaml"]).address is None
    assert _parser().parse_args(["run", "spec.yaml", "--address", "10.0.1.23:6379"]).address == "10.0.1.23:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.1.23:6379")  # what `ray job submit` gives its jobs
    assert _parser().parse_args(["run", "spec.yaml"]).address == "10.0.1.23:6379"
    assert _parser().parse_args(["run", "spec.yaml", "--address", "local"]).address == "local"


def test_start_ray_passes_the_address_and_sizes_only_a_local_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from sweeps.engine import cluster as runner

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(runner, "_answers", lambda host, port, timeout: True)  # no network: every head answers
    monkeypatch.setattr(runner, "default_ray_address", lambda: None)  # no earlier `ray start` here
    for key, value in {**runner.ENGINE_ENV, "PYTHONPATH": ""}.items():  # start_ray sets them; undone after
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_preload_python_modules", raising=False)
    runner.start_ray(num_cpus=2, address="10.0.1.23:6379", preload=("sweeps.trial.one_worker",))
    runner.start_ray(num_cpus=2, address="local", preload=("sweeps.trial.one_worker",))
    runner.start_ray(num_cpus=2)
    assert [(c["address"], c["num_cpus"]) for c in calls] == [("10.0.1.23:6379", None), ("local", 2), (None, 2)]
    # a cluster's workers get the engine's env vars as the job's runtime env; a new local Ray's inherit them
    assert calls[0]["runtime_env"]["env_vars"]["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1"
    assert calls[0]["_system_config"] is None  # no preload on a cluster (its config is its own)
    assert calls[1]["runtime_env"] is None and calls[2]["runtime_env"] is None
    assert calls[1]["_system_config"] == {
        "preload_python_modules": ["sweeps.trial.one_worker"],
        "idle_worker_killing_time_threshold_ms": runner.PRESTARTED_IDLE_MS,
    }
    assert calls[2]["_system_config"] is None  # nothing asked to preload


@pytest.mark.integration
def test_sweeps_run_with_cpus_joins_the_cluster_ray_start_left_named(ray_session: None, tmp_path: Path) -> None:
    """``sweeps run --cpus 2`` with no address, where Ray's default-address file (written by ``ray start``)
    names a running Ray: it joins that Ray, with a note that ``--cpus`` sizes only a new local Ray.
    Ray refuses a size for a cluster it joins: the sweep ended in a ValueError traceback before."""
    import ray

    from tests.helpers import project_env, run_cli, write_spec

    head = ray.get_runtime_context().gcs_address  # the test session's Ray, on 127.0.0.1
    temp = tmp_path / "tmp"  # $RAY_TMPDIR: where Ray (and the engine) look for the default-address file
    (temp / "ray").mkdir(parents=True)
    (temp / "ray" / "ray_current_cluster").write_text(head)
    spec = {
        "name": "joined",
        "trainer": "vae",
        "metric": "val_mse",
        "budget": {"trials": 1, "epochs": 1},
        "asha": False,
        "fixed": {"image_size": 16, "train_images": 32, "val_images": 16, "width": 4, "batch_size": 16},
        "params": {"lr": {"low": "1e-4", "high": "1e-2", "log": True}},
    }
    write_spec(tmp_path, spec)
    env = {k: v for k, v in project_env(RAY_TMPDIR=str(temp)).items() if k != "RAY_ADDRESS"}
    run = run_cli("run", "spec.yaml", "--cpus", "2", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    note = f"note: --cpus sizes a new local Ray; ignored: joining the Ray cluster at {head} (named by {temp}"
    assert note in run.stderr, run.stderr
    assert "trials 1/1" in run.stdout and "Traceback" not in run.stdout + run.stderr


PRESTARTED_WORKERS_TAKE_THE_TRIALS = """
import os, sys, time
import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from sweeps.engine.cluster import start_ray

start_ray(num_cpus=2, address="local", preload=("json",))
group = placement_group([{"CPU": 1}, {"CPU": 1}])  # as Tune reserves its trials' CPUs
ray.get(group.ready())
time.sleep(3)  # a driver slower than Ray's idle-worker timeout to create the trial actors

@ray.remote(num_cpus=1)
class Trial:
    def pid(self):
        return os.getpid()

trials = [Trial.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)).remote() for i in range(2)]
ray.get([t.pid.remote() for t in trials])
raylet_log = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs", "raylet.out")
print("workers started:", sum("Started worker process" in line for line in open(raylet_log)))
ray.shutdown()
"""


@pytest.mark.integration
def test_a_new_local_ray_keeps_its_prestarted_workers_for_slow_trials(tmp_path: Path) -> None:
    """Ray's prestarted (preloaded) workers take the trial actors even when those come seconds after
    Tune reserved their CPUs: with Ray's 1 s idle timeout it ended them and started two new processes."""
    script = tmp_path / "prestarted.py"
    script.write_text(PRESTARTED_WORKERS_TAKE_THE_TRIALS)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_preload_python_modules", None)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "workers started: 2" in done.stdout, done.stdout


def test_trial_actors_start_without_a_runtime_env_only_on_a_local_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tune's trial actors carry no runtime env on a local Ray (so Ray's prestarted workers take them), and
    Tune's own env vars reach the workers through the driver's environment; on a cluster Tune's env is back."""
    from ray.tune.execution import class_cache

    from sweeps.compat.ray_internals import trial_actors_inherit_env

    monkeypatch.delenv("PL_DISABLE_FORK", raising=False)
    monkeypatch.setattr(class_cache, "DEFAULT_ENV_VARS", class_cache.DEFAULT_ENV_VARS)  # restored after
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", class_cache.ENV_VARS_TO_PROPAGATE)

    class Trainable:
        pass

    assert trial_actors_inherit_env(True)
    assert os.environ["PL_DISABLE_FORK"] == "1"  # Tune's default, now inherited by local workers
    local = class_cache._ActorClassCache().get(Trainable)
    assert not local._default_options.get("runtime_env", {}).get("env_vars")
    assert not trial_actors_inherit_env(False)
    cluster = class_cache._ActorClassCache().get(Trainable)
    assert cluster._default_options["runtime_env"]["env_vars"]["PL_DISABLE_FORK"] == "1"
