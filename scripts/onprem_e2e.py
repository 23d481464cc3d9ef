"""End-to-end test of cluster-onprem.yaml: `ray up` over SSH onto a head namespace here, a sweep, `ray down`.

    sudo .venv/bin/python scripts/onprem_e2e.py      # from the repository root; about 4 min on 2 cores

The on-prem head (no workers) is a network namespace on this machine, on a veth pair (this
machine 10.79.0.1, the head 10.79.0.2): an SSH server started here that listens on the head's
address only, a throwaway unprivileged user as the SSH user, and a config derived from
cluster-onprem.yaml with only test-specific overrides (cluster name, head_ip 10.79.0.2, no workers,
ssh user and key, Ray's ports). The head's Ray and its MLflow server take the namespace's
address: nothing of the test listens on, or talks to, this machine's own outward address.
Everything else (file_mounts, cluster/setup.sh --head, cluster/start_mlflow.py, token auth, the
MLflow server with basic auth) runs as written. Then it follows docs/cluster.md: the tracking URI
with `ray exec`, the dashboard forwarded with `ray dashboard`, a small VAE sweep with `ray job
submit --working-dir .` (Ray token auth), its runs read back from the head's MLflow server with the
login in ~/.sweeps-cluster/mlflow-credentials, and `ray down`.

Needs: root (the user, the namespace, sshd), openssh-server and rsync (`apt-get install -y
openssh-server rsync`), net.ipv4.ip_forward off (the head's default route points at this machine,
which forwards nothing on) and PyPI here. The head has no internet: its ~/sweeps-venv is made
beforehand from this Python's packages (a .pth file), standing in for a machine that has PyTorch
already, plus what setup.sh would pip-install (Ray's dashboard extras, mlflow[auth], boto3),
downloaded here; its pip reads a local wheelhouse (:func:`offline_hosts`). setup.sh then finds
torch==2.13.0 and ray==2.60.0 installed and downloads nothing.

Isolation from other Ray instances on this machine: the node user's Ray lives under its own
RAY_TMPDIR (so /tmp/ray/ray_current_cluster is not written) on free ports, its `ray stop` can
signal only its own processes, the client side runs with its own HOME and RAY_TMPDIR (your
~/.ray/auth_token and ~/.sweeps-cluster are neither read nor written), and everything it started is
stopped by process id at the end, the user and the temporary folder removed. Exit status 0: passed.
"""

from __future__ import annotations

import argparse
import configparser
import fcntl
import getpass
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "cluster-onprem.yaml"
SWEEP = "onprem-e2e"
TRIALS = 3
# search_spaces/vae_demo.yaml made tiny: 3 trials of 2 epochs on 16x16 images.
SWEEP_ARGS = [
    "search_spaces/vae_demo.yaml",
    "--name",
    SWEEP,
    "--trials",
    str(TRIALS),
    "--set",
    "budget.epochs=2",
    "--set",
    "image_size=16",
    "--set",
    "train_images=64",
    "--set",
    "val_images=32",
    "--set",
    "width=4",
    "--set",
    "batch_size=16",
    "--set",
    "precision=fp32",
]
HEAD_START = "ray start --head --port=6379"
SUBNET = "10.79.0"  # the link from this machine to the head's network namespace
CLIENT_IP, HEAD_IP = f"{SUBNET}.1", f"{SUBNET}.2"


class E2EError(RuntimeError):
    """A step failed; the message says which and why."""


def log(message: str) -> None:
    """One line of the script's own narration (as opposed to a command's output)."""
    print(f"[onprem-e2e {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(host: str, port: int) -> bool:
    """Whether ``host:port`` accepts a TCP connection."""
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


# Lines echoed only as a count: the node user's `ray stop` lists every other user's Ray process
# it may not signal, and Ray repeats each SSH command line in full.
QUIET = ("Could not terminate `", "Full command is `")


def run(command: list[str], env: dict[str, str] | None = None, timeout: float = 600, check: bool = True) -> str:
    """Run ``command`` from the repository root, echoing its output as it comes; return that output."""
    print(f"$ {' '.join(command)}", flush=True)
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    quiet = 0
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line)
        if any(marker in line for marker in QUIET):
            quiet += 1
        else:
            print("    " + line.rstrip(), flush=True)
        if time.monotonic() > deadline:
            process.kill()
            raise E2EError(f"{' '.join(command[:3])} ran past {timeout:.0f} s")
    process.wait()
    if quiet:
        print(f"    ({quiet} lines not shown: {' / '.join(QUIET)}...)", flush=True)
    output = "".join(lines)
    if check and process.returncode != 0:
        raise E2EError(f"{' '.join(command[:3])} exited with {process.returncode}")
    return output


def as_user(user: str, *command: str) -> subprocess.CompletedProcess[str]:
    """``command`` as ``user`` (a login-less runuser), output captured."""
    return subprocess.run(["runuser", "-u", user, "--", *command], capture_output=True, text=True, cwd="/")


def sh(*command: str) -> None:
    """Run a short command; a failure is an :class:`E2EError` with its message."""
    done = subprocess.run(list(command), capture_output=True, text=True)
    if done.returncode != 0:
        raise E2EError(f"{' '.join(command)}: {done.stderr.strip()[-500:]}")


STALE_USER = re.compile(r"^sweeps-e2e-[0-9a-f]{6}$")
"""The throwaway users :class:`Machine` makes (this test's and the multi-node test's)."""
RUN_LOCK = Path("/tmp/sweeps-e2e-namespaces.lock")
"""Held by the run of a namespace test in progress (the kernel lets go of it when the run dies)."""


def hold_run_lock() -> IO[str]:
    """Lock :data:`RUN_LOCK` for this run (keep the file open while it runs); E2EError if another run holds it."""
    held = RUN_LOCK.open("a")
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.close()
        raise E2EError(f"another run of the namespace tests is in progress (it holds {RUN_LOCK})") from None
    return held


def clear_stale_runs(namespace: str, link: str, subnet: str) -> list[str]:
    """Remove what an earlier run of these tests left when it was killed; return what was removed.

    Call it holding :func:`hold_run_lock`: no other run is then in progress, so whatever matches
    is stale. A run killed with SIGKILL (a CI job cancelled, a session ended) cannot undo its
    namespaces, links and throwaway user, and the next run's fixed addresses then collide with the
    stale ones (its SSH went to a dead namespace: "Connection refused" for minutes). Processes
    left in namespaces whose names match ``namespace`` are killed and the namespaces deleted, then
    the links here matching ``link``, then the ``sweeps-e2e-*`` users (their processes killed).
    An address of ``subnet`` (e.g. ``10.79.0``) still held here afterwards is an E2EError.
    """
    removed: list[str] = []

    def kill(pids: list[str]) -> None:
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in (line.split()[0] for line in listed.splitlines() if line.strip()):
        if re.fullmatch(namespace, name):
            kill(subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split())
            subprocess.run(["ip", "netns", "del", name], check=False)
            removed.append(f"namespace {name}")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for found in re.finditer(r"^\d+: ([^:@\s]+)", links, re.M):
        if re.fullmatch(link, found.group(1)):
            subprocess.run(["ip", "link", "del", found.group(1)], check=False)
            removed.append(f"link {found.group(1)}")
    for entry in pwd.getpwall():
        if STALE_USER.match(entry.pw_name):
            running = subprocess.run(["ps", "-o", "pid=", "-u", entry.pw_name], capture_output=True, text=True)
            kill(running.stdout.split())
            time.sleep(0.5)
            subprocess.run(["userdel", entry.pw_name], check=False)
            removed.append(f"user {entry.pw_name}")
    if removed:
        log(f"removed what a killed earlier run left: {', '.join(removed)}")
    held = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    for line in held.splitlines():
        if f" {subnet}." in line:
            raise E2EError(f"{subnet}.0/24 is already in use on this machine: {' '.join(line.split()[1:4])}")
    return removed


class HeadNamespace:
    """The head's network namespace on a veth pair from this machine; everything to undo it."""

    def __init__(self, tag: str) -> None:
        self.name = f"ope2e-{tag}"
        self.host_end, self.head_end = f"ope{tag}h", f"ope{tag}n"
        self.made = False

    def exec(self, *command: str) -> list[str]:
        """``command`` inside the head's network namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def create(self) -> None:
        """The namespace, this machine at CLIENT_IP and the head at HEAD_IP on the veth pair."""
        sh("ip", "netns", "add", self.name)
        self.made = True
        sh("ip", "link", "add", self.host_end, "type", "veth", "peer", "name", self.head_end)
        sh("ip", "link", "set", self.head_end, "netns", self.name)
        sh("ip", "addr", "add", f"{CLIENT_IP}/30", "dev", self.host_end)
        sh("ip", "link", "set", self.host_end, "up")
        sh(*self.exec("ip", "link", "set", "lo", "up"))
        sh(*self.exec("ip", "addr", "add", f"{HEAD_IP}/30", "dev", self.head_end))
        sh(*self.exec("ip", "link", "set", self.head_end, "up"))
        # A default route so that Ray finds the node's address (a UDP connect, nothing sent); this
        # machine does not forward (main checks net.ipv4.ip_forward), so nothing leaves the link.
        sh(*self.exec("ip", "route", "add", "default", "via", CLIENT_IP))
        log(f"head namespace {self.name}: {HEAD_IP} on a veth pair from this machine ({CLIENT_IP})")

    def pids(self) -> list[int]:
        """Every process in the namespace."""
        if not self.made:
            return []
        found = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    def remove(self) -> None:
        """Kill what is left in the namespace (all started by this script), delete it and the link."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.made:
            subprocess.run(["ip", "netns", "del", self.name], check=False)  # deletes the veth pair too


class Machine:
    """The on-prem head's user: a throwaway SSH user, sshd, and everything to undo them."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.user = "sweeps-e2e-" + secrets.token_hex(3)
        self.home = base / "node"
        self.ray_tmp = base / "rt"  # the node's RAY_TMPDIR: short, Unix socket paths live under it
        self.sshd: subprocess.Popen[bytes] | None = None
        self.created = False

    def create(self, public_key: str) -> None:
        """Add the user (no password, key login only), its RAY_TMPDIR, and make SSH reach it."""
        subprocess.run(
            [
                "useradd",
                "--create-home",
                "--home-dir",
                str(self.home),
                "--shell",
                "/bin/bash",
                "--password",
                "*",
                self.user,
            ],
            check=True,
        )
        self.created = True
        entry = pwd.getpwnam(self.user)
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text(public_key)
        self.ray_tmp.mkdir(mode=0o700)
        for path in (ssh_dir, ssh_dir / "authorized_keys", self.ray_tmp):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        (ssh_dir / "authorized_keys").chmod(0o600)
        with (self.home / ".bashrc").open("a") as bashrc:
            bashrc.write("\n# onprem_e2e.py: this node's Ray keeps its files (and ray_current_cluster) here\n")
            bashrc.write(f"export RAY_TMPDIR={self.ray_tmp}\n")

    def start_sshd(self, head: HeadNamespace) -> None:
        """Start sshd in ``head`` on HEAD_IP:22 for this user only, key login only, until :meth:`remove`."""
        host_key = self.base / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        config = self.base / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {HEAD_IP}",
                    "Port 22",
                    f"HostKey {host_key}",
                    f"PidFile {self.base / 'sshd.pid'}",
                    f"AllowUsers {self.user}",
                    "AuthorizedKeysFile .ssh/authorized_keys",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin no",
                    "UsePAM no",
                    "AllowTcpForwarding yes",
                    "MaxSessions 50",
                    "MaxStartups 50",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        log_file = (self.base / "sshd.log").open("ab")
        self.sshd = subprocess.Popen(
            head.exec("/usr/sbin/sshd", "-D", "-e", "-f", str(config)), stdout=log_file, stderr=log_file
        )
        deadline = time.monotonic() + 10
        while not listening(HEAD_IP, 22):
            if self.sshd.poll() is not None or time.monotonic() > deadline:
                raise E2EError(f"sshd did not start: {(self.base / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.2)
        log(f"sshd (pid {self.sshd.pid}) on {HEAD_IP}:22 for user {self.user}")

    def preinstall(self) -> None:
        """~/sweeps-venv with this Python's packages: a machine that has PyTorch and Ray already.

        A venv of a system Python of the same version, a .pth file naming this environment's
        site-packages, and a `ray` command (packages seen through a .pth get no console scripts).
        """
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [f"/usr/bin/python{version}", os.path.realpath(getattr(sys, "_base_executable", sys.executable))]
        check = "import sys; print(f'{sys.version_info.major}.{sys.version_info.minor}')"
        base = next((c for c in candidates if as_user(self.user, c, "-c", check).stdout.strip() == version), None)
        if base is None:
            raise E2EError(f"no Python {version} the user {self.user} may run (tried {', '.join(candidates)})")
        venv = self.home / "sweeps-venv"
        made = as_user(self.user, base, "-m", "venv", str(venv))
        if made.returncode != 0:
            raise E2EError(f"{base} -m venv failed: {made.stderr.strip()}")
        site = venv / "lib" / f"python{version}" / "site-packages"
        paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        (site / "project-environment.pth").write_text("".join(f"{p}\n" for p in paths))
        ray_command = venv / "bin" / "ray"
        ray_command.write_text(
            f"#!{venv}/bin/python\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n"
        )
        ray_command.chmod(0o755)
        entry = pwd.getpwnam(self.user)
        for path in (site / "project-environment.pth", ray_command):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        imported = as_user(self.user, str(venv / "bin" / "python"), "-c", "import torch, ray, mlflow, optuna")
        if imported.returncode != 0:
            raise E2EError(
                f"the user {self.user} cannot import this environment's packages (is {paths} readable "
                f"by other users?): {imported.stderr.strip()[-500:]}"
            )
        log(f"{venv}: {base} with the packages of {sys.prefix}")

    def processes(self) -> list[int]:
        """Ids of the processes the throwaway user runs (all of them started by this script's cluster)."""
        if not self.created:
            return []
        found = subprocess.run(["ps", "-o", "pid=", "-u", self.user], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    def remove(self) -> None:
        """Stop what is left of the user's processes and our sshd, then delete the user."""
        left = self.processes()
        if left:
            log(f"stopping {len(left)} process(es) the node user still runs: {left}")
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.sshd is not None:
            self.sshd.terminate()
            self.sshd.wait(timeout=10)
        if self.created:
            deadline = time.monotonic() + 10
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.2)
            subprocess.run(["userdel", self.user], check=False)


def offline_hosts(machine: Machine, base: Path) -> None:
    """The hosts have no internet: what setup.sh would download goes into the image beforehand.

    Into the prepared ~/sweeps-venv (the multi-node test copies it to every host): the extras
    setup.sh pip-installs (Ray's dashboard extras, mlflow[auth], boto3), downloaded here; and a
    pip.conf that points the hosts' pip at a local wheelhouse (setuptools, for `pip install -e`'s
    build) instead of PyPI.
    """
    venv_python = str(machine.home / "sweeps-venv" / "bin" / "python")
    wheelhouse = base / "wheelhouse"
    wheelhouse.mkdir()
    shutil.chown(wheelhouse, machine.user)
    t = time.monotonic()
    pip = [venv_python, "-m", "pip", "--disable-pip-version-check", "-q"]
    for command in (
        [*pip, "install", f"ray[default,tune]=={onprem_ray_version()}", "mlflow[auth]", "boto3"],
        [*pip, "download", "-d", str(wheelhouse), "setuptools>=68", "wheel"],
    ):
        done = as_user(machine.user, *command)
        if done.returncode != 0:
            raise E2EError(f"{' '.join(command[3:6])}: {done.stderr.strip()[-800:]}")
    conf = machine.home / ".config" / "pip" / "pip.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f"[global]\nno-index = true\nfind-links = {wheelhouse}\n")
    for path in (conf.parent.parent, conf.parent, conf):
        shutil.chown(path, machine.user)
    log(f"hosts' image: setup.sh's downloads preinstalled, pip pointed at {wheelhouse} ({time.monotonic() - t:.0f} s)")


def onprem_ray_version() -> str:
    """The Ray version setup.sh pins."""
    found = re.search(r"^RAY_VERSION=(\S+)", (ROOT / "cluster" / "setup.sh").read_text(), re.M)
    if not found:
        raise E2EError("cluster/setup.sh: no RAY_VERSION=")
    return found.group(1)


def derived_config(machine: Machine, key: Path, ports: dict[str, int]) -> dict[str, Any]:
    """cluster-onprem.yaml with only what this test must change; everything else as the user gets it."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    config["cluster_name"] = f"{SWEEP}-{machine.user}"
    config["provider"]["head_ip"] = HEAD_IP
    config["provider"]["worker_ips"] = []  # one machine: the head runs the trials
    config["auth"] = {"ssh_user": machine.user, "ssh_private_key": str(key)}
    # Ray's default ports may be taken by other Ray instances on this machine.
    flags = (
        f"--port={ports['gcs']} --dashboard-port={ports['dashboard']} "
        f"--ray-client-server-port={ports['client']} --dashboard-agent-listen-port={ports['agent']}"
    )
    starts = config["head_start_ray_commands"]
    head = [i for i, command in enumerate(starts) if HEAD_START in command]
    if len(head) != 1:
        raise E2EError(f"cluster-onprem.yaml: expected one '{HEAD_START}' in head_start_ray_commands")
    starts[head[0]] = starts[head[0]].replace("--port=6379", flags)
    return config


def client_environment(home: Path, base: Path) -> dict[str, str]:
    """The environment of `ray up` and friends: your machine, with its own HOME and Ray temp dir."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "MLFLOW_"))}
    client_tmp = base / "client-tmp"
    client_tmp.mkdir(exist_ok=True)
    env.update(
        HOME=str(home),
        RAY_TMPDIR=str(client_tmp),  # `ray up` keeps the local provider's cluster state here
        TMPDIR=str(client_tmp),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


def make_secrets(home: Path, env: dict[str, str], mlflow_port: int) -> None:
    """docs/cluster.md step 1 in ``home``: Ray's token, the MLflow login (a new random password), settings.env."""
    run(["ray", "get-auth-token", "--generate"], env=env)
    (home / ".ray" / "auth_token").chmod(0o600)
    secrets_dir = home / ".sweeps-cluster"
    secrets_dir.mkdir(mode=0o700)
    password = secrets.token_urlsafe(24)
    credentials = secrets_dir / "mlflow-credentials"
    credentials.touch(mode=0o600)
    credentials.write_text(f"[mlflow]\nmlflow_tracking_username = admin\nmlflow_tracking_password = {password}\n")
    # A free port: MLflow's default 5000 may be in use on this machine.
    (secrets_dir / "settings.env").write_text(f"MLFLOW_PORT={mlflow_port}\n")


def read_login(home: Path) -> tuple[str, str]:
    """The MLflow login from ~/.sweeps-cluster/mlflow-credentials, as docs/cluster.md step 4 says to use it."""
    parser = configparser.ConfigParser()
    parser.read(home / ".sweeps-cluster" / "mlflow-credentials")
    return parser["mlflow"]["mlflow_tracking_username"], parser["mlflow"]["mlflow_tracking_password"]


def http_status(url: str) -> int:
    """The status of an unauthenticated GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def check_mlflow(
    uri: str, login: tuple[str, str], sweep: str = SWEEP, trials_wanted: int = TRIALS, metric: str = "val_mse"
) -> list[str]:
    """The sweep's parent and trial runs on the head's server, read with the login; problems found."""
    import mlflow
    from mlflow.tracking import MlflowClient

    problems = []
    status = http_status(f"{uri}/api/2.0/mlflow/experiments/search?max_results=10")
    log(f"MLflow at {uri} without a login: HTTP {status}")
    if status != 401:
        problems.append(f"MLflow answered HTTP {status} without a login (want 401)")
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = login
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiments = client.search_experiments()
    ids = [e.experiment_id for e in experiments]
    parents = client.search_runs(ids, f"tags.`sweep.name` = '{sweep}' and tags.`sweep.role` = 'parent'")
    if len(parents) != 1:
        return [*problems, f"{len(parents)} parent runs named {sweep} on the server (want 1)"]
    parent = parents[0]
    trials = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    log(f"runs on the head's MLflow server (logged in as {login[0]}):")
    print(
        f"    parent  {parent.info.run_name}  {parent.info.status}  sweep.status={parent.data.tags.get('sweep.status')}"
    )
    for trial in sorted(trials, key=lambda r: r.info.run_name or ""):
        # Every epoch the trial ran (the driver's count, tag sweep.epochs) has its val_mse and image.
        epochs = int(trial.data.tags.get("sweep.epochs", "0"))
        steps = sorted(m.step for m in client.get_metric_history(trial.info.run_id, metric))
        images = [a.path for a in client.list_artifacts(trial.info.run_id, "images")]
        value = trial.data.metrics.get(metric)
        shown = f"{value:.5f}" if value is not None else "-"
        print(
            f"    trial   {trial.info.run_name}  {trial.info.status}  {metric}={shown}  "
            f"{trial.data.tags.get('sweep.status')}  epochs={epochs} {metric}_steps={steps} images={len(images)}"
        )
        if epochs < 1 or steps != list(range(1, epochs + 1)) or len(images) != epochs:
            problems.append(f"{trial.info.run_name}: {epochs} epochs, {metric} at {steps}, {len(images)} images")
    if len(trials) != trials_wanted:
        problems.append(f"{len(trials)} trial runs under the parent (want {trials_wanted})")
    if parent.info.status != "FINISHED":
        problems.append(f"the parent run is {parent.info.status}")
    return problems


def cmdline(pid: int) -> str:
    """A process's command line ('' once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def ray_processes(machine: Machine) -> list[str]:
    """The node user's processes other than its SSH sessions (Ray's, MLflow's, jobs')."""
    left = []
    for pid in machine.processes():
        line = cmdline(pid)
        if Path(f"/proc/{pid}").exists() and not line.startswith("sshd"):  # gone: not left running
            left.append(f"{pid} {line[:100]}")
    return left


def remove_ssh_control_dir(config_path: Path) -> None:
    """The folder of SSH control sockets Ray made for this cluster (/tmp/ray_ssh_<user>/<cluster>)."""
    if not config_path.is_file():
        return
    name = yaml.safe_load(config_path.read_text())["cluster_name"]
    user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
    folder = Path(f"/tmp/ray_ssh_{user}") / hashlib.sha256(name.encode()).hexdigest()[:10]
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # only if no other cluster's folder is in it
    except OSError:
        pass


def main() -> int:
    """Run the whole test; 0 if every step passed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) at the end")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("onprem_e2e.py: run as root (a throwaway user, a network namespace, sshd)", file=sys.stderr)
        return 2
    missing = [
        tool
        for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "runuser", "useradd", "ip")
        if not shutil.which(tool)
    ]
    if missing:
        print(f"onprem_e2e.py: missing {', '.join(missing)}: apt-get install -y openssh-server rsync", file=sys.stderr)
        return 2
    if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "0":
        print("onprem_e2e.py: net.ipv4.ip_forward is on here; the head's namespace could reach out", file=sys.stderr)
        return 2
    try:
        _run_lock = hold_run_lock()  # held until this function returns
        clear_stale_runs(r"ope2e-[0-9a-f]{4}", r"ope[0-9a-f]{4}h", SUBNET)
    except E2EError as exc:
        print(f"onprem_e2e.py: {exc}", file=sys.stderr)
        return 2

    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="ope2e-", dir="/tmp"))
    base.chmod(0o755)  # the node user's home is inside
    machine = Machine(base)
    head = HeadNamespace(secrets.token_hex(2))
    home = base / "client"  # "your machine": HOME of every ray command below
    home.mkdir()
    env = client_environment(home, base)
    config_path = base / "cluster-onprem-e2e.yaml"
    up = False
    forward: subprocess.Popen[bytes] | None = None
    problems: list[str] = []
    try:
        key = home / ".ssh" / "id_ed25519"
        key.parent.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "onprem-e2e", "-f", str(key)], check=True)
        machine.create(Path(f"{key}.pub").read_text())
        machine.preinstall()
        offline_hosts(machine, base)
        head.create()
        machine.start_sshd(head)
        ports = {name: free_port() for name in ("gcs", "dashboard", "client", "agent", "mlflow", "forward")}
        make_secrets(home, env, ports["mlflow"])
        config_path.write_text(yaml.safe_dump(derived_config(machine, key, ports), sort_keys=False))
        log(
            f"config: {CONFIG.name} with cluster_name, head_ip {HEAD_IP}, no workers, "
            f"ssh user {machine.user}, ports {ports}"
        )

        t = time.monotonic()
        up = True
        run(["ray", "up", "-y", "--no-config-cache", "--log-color", "false", str(config_path)], env=env, timeout=900)
        log(f"ray up: {time.monotonic() - t:.0f} s")

        uri = run(["ray", "exec", "--no-config-cache", str(config_path), "cat ~/mlflow/tracking_uri"], env=env)
        uri = next(line.strip() for line in reversed(uri.splitlines()) if line.strip().startswith("http://"))
        log(f"tracking URI on the head: {uri}")

        # docs/cluster.md step 3: forward the dashboard (job API) over SSH, submit with Ray's token.
        forward = subprocess.Popen(
            [
                "ray",
                "dashboard",
                "--no-config-cache",
                "--port",
                str(ports["forward"]),
                "--remote-port",
                str(ports["dashboard"]),
                str(config_path),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not listening("127.0.0.1", ports["forward"]):
            if forward.poll() is not None or time.monotonic() > deadline:
                raise E2EError("ray dashboard did not forward the dashboard port")
            time.sleep(0.5)
        address = f"http://127.0.0.1:{ports['forward']}"
        status = http_status(f"{address}/api/jobs/")
        log(f"job API through the forwarded port without the token: HTTP {status}")
        if status not in (401, 403):
            problems.append(f"the job API answered HTTP {status} without Ray's token (want 401 or 403)")
        t = time.monotonic()
        storage = machine.home / "sweep_runs"
        output = run(
            [
                "ray",
                "job",
                "submit",
                "--address",
                address,
                "--working-dir",
                ".",
                "--",
                "python",
                "-m",
                "sweeps",
                "run",
                *SWEEP_ARGS,
                "--tracking-uri",
                uri,
                "--storage",
                str(storage),
            ],
            env={**env, "RAY_AUTH_MODE": "token"},
            timeout=600,
        )
        log(f"ray job submit: {time.monotonic() - t:.0f} s")
        if f"trials {TRIALS}/{TRIALS}" not in output or "succeeded" not in output:
            problems.append(f"the job's output lacks 'trials {TRIALS}/{TRIALS}' or 'succeeded'")

        problems += check_mlflow(uri, read_login(home))
    except (E2EError, subprocess.CalledProcessError) as error:
        problems.append(str(error))
    finally:
        if forward is not None:
            os.killpg(forward.pid, signal.SIGTERM)
            forward.wait(timeout=10)
        if up:
            t = time.monotonic()
            try:
                # An on-prem head outlives `ray down`: stop its MLflow server first (docs/cluster.md step 5).
                stop = "python ~/image-sweeps/cluster/start_mlflow.py --stop"
                run(["ray", "exec", "--no-config-cache", str(config_path), stop], env=env)
                run(["ray", "down", "-y", "--log-color", "false", str(config_path)], env=env)
            except E2EError as error:
                problems.append(str(error))
            log(f"ray down: {time.monotonic() - t:.0f} s")
            deadline = time.monotonic() + 30
            while ray_processes(machine) and time.monotonic() < deadline:
                time.sleep(1)
            left = ray_processes(machine)
            log(f"processes of {machine.user} after ray down (SSH sessions aside): {len(left)}")
            if left:
                problems.append("left running after ray down: " + "; ".join(left))
        machine.remove()
        head.remove()
        remove_ssh_control_dir(config_path)
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    took = time.monotonic() - started
    if problems:
        for problem in problems:
            log(f"FAILED: {problem}")
        log(f"failed after {took:.0f} s")
        return 1
    log(f"passed in {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
