"""Start (or restart) the MLflow tracking server on the Ray head node.

``head_start_ray_commands`` in cluster.yaml and cluster-onprem.yaml run it before ``ray start``,
with the cluster's Python (~/sweeps-venv, set up by cluster/setup.sh)::

    python ~/image-sweeps/cluster/start_mlflow.py

The server

- listens on the head's private address only (never 0.0.0.0, never a public address): trials on
  the workers reach it inside the cluster; you reach it through SSH port forwarding;
- asks every client for a password: MLflow's ``basic-auth`` app (cluster/basic_auth.ini), whose
  admin account is created the first time from the login in ~/.mlflow/credentials, the file your
  machine's ~/.sweeps-cluster/mlflow-credentials is copied to; clients read the same file;
- keeps runs in SQLite on the head's disk (~/mlflow/mlflow.db) and proxies artifacts to
  ``MLFLOW_ARTIFACTS_DESTINATION`` (e.g. ``s3://bucket/prefix``), else ~/mlflow/artifacts;
- signs its CSRF tokens with a random key made on the head at the first start
  (~/mlflow/flask_secret_key, readable by its owner only; basic-auth refuses to start without one).

Optional settings, as plain ``KEY=value`` lines in ~/.sweeps-cluster/settings.env:
``MLFLOW_ARTIFACTS_DESTINATION``, ``MLFLOW_HOST`` (the head's private address, when the detected
one is not the interface the workers use) and ``MLFLOW_PORT`` (default 5000). The tracking URI
to pass to ``sweeps run --tracking-uri`` is printed and written to ~/mlflow/tracking_uri.

``ray down`` stops Ray, not this server: on AWS the head goes with it, but an on-prem head keeps
serving. ``python ~/image-sweeps/cluster/start_mlflow.py --stop`` (through ``ray exec``) stops it;
the runs stay in ~/mlflow.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOME = Path.home()
STATE = HOME / "mlflow"
SETTINGS = HOME / ".sweeps-cluster" / "settings.env"
CREDENTIALS = HOME / ".mlflow" / "credentials"
AUTH_CONFIG = Path(__file__).resolve().parent / "basic_auth.ini"
DEFAULT_PORT = 5000
START_TIMEOUT_S = 300.0  # a loaded head may take minutes to import the server in each worker


class StartError(RuntimeError):
    """The server cannot be started safely; the message says why."""


def read_settings(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (``#`` comments, optional quotes and ``export``); nothing if the file is absent.

    The same file is sourced by setup.sh in bash; keep it to plain assignments.
    """
    settings: dict[str, str] = {}
    if not path.is_file():
        return settings
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = re.split(r"\s#", value, maxsplit=1)[0]  # an inline comment, as bash reads it
        settings[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return settings


def private_host(address: str) -> str:
    """``address`` if it is a private unicast address of this network; raise otherwise.

    0.0.0.0 (every interface), loopback (workers could not connect) and public addresses (the
    server would face the internet) are refused.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise StartError(f"{address!r} is not an IP address") from None
    if ip.is_unspecified:
        raise StartError(f"refusing to listen on {address}: that is every interface, public ones included")
    if ip.is_loopback or ip.is_link_local or ip.is_multicast:
        raise StartError(f"refusing to listen on {address}: the workers cannot reach it")
    if not ip.is_private:
        raise StartError(f"refusing to listen on {address}: not a private address; set MLFLOW_HOST to the private one")
    return str(ip)


def detect_host() -> str:
    """The address Ray picks for this node (the interface its workers connect to)."""
    from ray.util import get_node_ip_address

    return str(get_node_ip_address())


def read_login(path: Path) -> tuple[str, str]:
    """The username and password MLflow clients read from ``path`` (MLflow's credentials file)."""
    config = configparser.ConfigParser()  # the same parser MLflow reads the file with
    config.read(path)
    section = config["mlflow"] if config.has_section("mlflow") else {}
    username = section.get("mlflow_tracking_username", "")
    password = section.get("mlflow_tracking_password", "")
    if not username or not password:
        raise StartError(
            f"{path} has no [mlflow] mlflow_tracking_username and mlflow_tracking_password; "
            "create ~/.sweeps-cluster/mlflow-credentials on your machine and run 'ray up' again"
        )
    return username, password


def flask_secret_key(path: Path) -> str:
    """The key the basic-auth app signs CSRF tokens with: made once, kept on the head."""
    if not path.is_file() or not path.read_text().strip():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))
    return path.read_text().strip()


def tracking_uri(host: str, port: int) -> str:
    """``http://host:port`` (IPv6 addresses in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def allowed_hosts(host: str, port: int) -> str:
    """The Host headers the server answers: its own address, and localhost through a forwarded port.

    (MLflow's default allows only RFC 1918 ranges and localhost; this is narrower and also holds
    for other private ranges.)
    """
    own = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ",".join([own, "localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*"])


def server_command(python: str, host: str, port: int, state: Path, artifacts: str) -> list[str]:
    """The ``mlflow server`` command line: basic-auth app, SQLite runs, proxied artifacts, one address."""
    return [
        python,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        f"sqlite:///{state / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        "--allowed-hosts",
        allowed_hosts(host, port),
    ]


def stop_previous(pid_file: Path, timeout: float = 15.0) -> bool:
    """Stop the server this script started before (its whole process group); False if none ran."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    if b"mlflow" not in cmdline:  # the id was reused by another process: leave that alone
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True


def wait_until_listening(process: subprocess.Popen[bytes], host: str, port: int, timeout: float) -> None:
    """Return once ``host:port`` accepts connections; raise if the server exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(f"mlflow server exited with code {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.5)
    raise StartError(f"mlflow server did not listen on {host}:{port} within {timeout:.0f} s")


def main(argv: list[str]) -> int:
    """Start the server and print its tracking URI; with ``--stop``, stop it."""
    if argv == ["--stop"]:
        stopped = stop_previous(STATE / "server.pid")
        print("MLflow tracking server stopped" if stopped else "no MLflow tracking server was running")
        return 0
    if argv:
        raise StartError(f"unknown arguments {' '.join(argv)} (use none, or --stop)")
    settings = read_settings(SETTINGS)
    host = private_host(settings.get("MLFLOW_HOST") or detect_host())
    port = int(settings.get("MLFLOW_PORT") or DEFAULT_PORT)
    username, password = read_login(CREDENTIALS)
    STATE.mkdir(mode=0o700, exist_ok=True)
    artifacts = settings.get("MLFLOW_ARTIFACTS_DESTINATION") or str(STATE / "artifacts")
    pid_file = STATE / "server.pid"
    stop_previous(pid_file)
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(AUTH_CONFIG),
        "MLFLOW_AUTH_ADMIN_USERNAME": username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_secret_key(STATE / "flask_secret_key"),
    }
    log_path = STATE / "server.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            server_command(sys.executable, host, port, STATE, artifacts),
            cwd=STATE,  # basic_auth.ini keeps its user database here (basic_auth.db)
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the SSH session `ray up` runs this in
        )
    pid_file.write_text(str(process.pid))
    try:
        wait_until_listening(process, host, port, START_TIMEOUT_S)
    except StartError:
        print(log_path.read_text()[-4000:], file=sys.stderr)
        raise
    uri = tracking_uri(host, port)
    (STATE / "tracking_uri").write_text(uri + "\n")
    print(f"MLflow tracking server on {uri} (basic auth; log {log_path}); artifacts in {artifacts}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except StartError as exc:
        print(f"start_mlflow.py: {exc}", file=sys.stderr)
        sys.exit(1)
