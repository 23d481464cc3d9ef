"""A multi-node `ray up` cluster on one machine: hosts as Linux network namespaces, a sweep, faults, `ray down`.

    sudo .venv/bin/python scripts/multinode_e2e.py      # from the repository root

Four network namespaces stand for four machines on a private network (10.77.0.0/24, a bridge in
this machine's namespace, which plays "your machine" at 10.77.0.1):

    head 10.77.0.2    the Ray head (no CPUs for trials), the sweep driver, the MLflow server
    w1   10.77.0.3    a worker the autoscaler starts over SSH when trials wait for CPUs
    w2   10.77.0.4    another one
    out  10.77.0.5    an outsider on the private network, holding neither secret; it also reaches the
                      head on a second, "outside" link (10.78.0.1 -> head 10.78.0.2), where the head's
                      firewall (iptables in its namespace) lets SSH through and nothing else, as
                      cluster-onprem.yaml asks of a real site's firewall

Each cluster host runs its own sshd, listening on its own address only, inside its own PID
namespace (a worker's `ray stop` must not see the head's Ray) and a private mount namespace that
hides the checkout (tmpfs over the checkout's top folder; the project's virtual environment alone
is bound back, read-only, standing in for a machine with PyTorch and Ray preinstalled) and the
client's home (the secrets and the submit folder), and gives the SSH user a home of that host's
own. The hosts have no internet: what setup.sh would download is installed in the prepared venv
beforehand and their pip reads a local wheelhouse. Code reaches the hosts only as it would on
real machines: `ray up`'s file_mounts (the project, installed by cluster/setup.sh) and the job's
working directory (a user trainer, `my_trainer:train`, that exists only in the submit folder).
Trial checkpoints go to a folder every namespace sees (network namespaces share the file
system): the stand-in for NFS.

The config is cluster-onprem.yaml with only test-specific overrides: cluster name, head_ip and
worker_ips, the SSH user and key, `min_workers: 0` and `max_workers: 2` (written as the one local
node type Ray makes of an on-prem config, with `resources: {CPU: 2}`, because the head gets
`--num-cpus=0`, the config's own advice for keeping trials off the head, and Ray would otherwise
learn the node type's CPUs from the head) and a short `idle_timeout_minutes`.

Then: `ray up`; a 4-trial sweep of the user trainer through `ray dashboard` and `ray job submit`
(Ray's token); while it runs, one worker's processes are killed mid-trial and the head's MLflow
server is restarted; the runs are counted from the server with the login; the trials' node IPs
come from what the trials recorded (Ray's node IP of the process); the outsider's probes;
`ss -ltn` per namespace; scale-down after the idle timeout; `ray down`; every process in the
namespaces this script made, the namespaces, the user and the temporary folder removed. A run
first removes what an earlier run killed before its end left (its namespaces, bridge and user,
whose fixed addresses would collide), holding a lock no two runs of the namespace tests share.

Needs root, openssh-server, rsync, iptables, PyPI (setup.sh pip-installs what the environment
lacks). Exit status 0: passed. Figures are printed as lines starting with "FIGURE".
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onprem_e2e as onprem  # noqa: E402  (the head-only test's machinery: user, venv, secrets, MLflow check)

ROOT = onprem.ROOT
CONFIG = onprem.CONFIG
SWEEP = "multinode-e2e"
TRIALS = 4
EPOCHS = 6
EPOCH_S = 4.0  # each epoch sleeps this long besides training: trials long enough to kill one mid-way
IDLE_TIMEOUT_MIN = 0.5
SUBNET = "10.77.0"
CLIENT_IP = f"{SUBNET}.1"
HOSTS = {"head": f"{SUBNET}.2", "w1": f"{SUBNET}.3", "w2": f"{SUBNET}.4", "out": f"{SUBNET}.5"}
OUR_NAMESPACES = rf"mn[0-9a-f]{{4}}-({'|'.join(HOSTS)})"
"""The names of the namespaces :class:`Network` makes (``mn<tag>-<host>``): any left by a killed run is stale."""
OUR_LINKS = r"mnbr[0-9a-f]{4}|mn[0-9a-f]{4}[hno]\d"
"""The bridge and the host-side links :class:`Network` makes here."""
WORKERS = ("w1", "w2")
OUTSIDE_OUT, OUTSIDE_HEAD = "10.78.0.1", "10.78.0.2"
LOCAL_TYPE = "local.cluster.node"  # ray.autoscaler._private.local.config.LOCAL_CLUSTER_NODE_TYPE

TRAINER = '''"""A user's own trainer: it exists only in the submit folder; Ray's job working dir carries it."""

import os
import time

import ray
import torch
import torch.nn.functional as F
from torch import nn


def train(config, run):
    """A tiny denoiser on random images; every epoch appends "epoch node_ip pid" to a trace."""
    torch.manual_seed(config.seed)
    data = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    run.checkpoint({"model": model, "optimizer": optimizer})
    trace = os.path.join(config["trace_dir"], f"{config['lr']!r}.log")
    for epoch in range(run.restore(), run.epochs):
        for start in range(0, 64, 16):
            x = data[start : start + 16]
            loss = F.mse_loss(model(x + 0.1 * torch.randn_like(x)), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.step(loss=loss, optimizer=optimizer)
        time.sleep(config["epoch_s"])
        with torch.no_grad():
            out = model(data[:4])
        with open(trace, "a") as file:
            file.write(f"{epoch + 1} {ray.util.get_node_ip_address()} {os.getpid()}\\n")
        run.image(out.clamp(0, 1))
        run.report(epoch + 1, val_loss=F.mse_loss(out, data[:4]).item())
'''


def log(message: str) -> None:
    """One line of the script's own narration."""
    print(f"[multinode-e2e {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sh(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a short command, output captured."""
    done = subprocess.run(list(command), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise onprem.E2EError(f"{' '.join(command)}: {done.stderr.strip()[-500:]}")
    return done


def owner(pid: int) -> int:
    """A process's uid (-1 once it is gone)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


class Network:
    """The namespaces, the bridge, the links, the head's firewall; everything to undo them."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.ns = {name: f"mn{tag}-{name}" for name in HOSTS}
        self.bridge = f"mnbr{tag}"
        self.made: list[str] = []
        self.bridge_made = False

    def exec(self, name: str, *command: str) -> list[str]:
        """``command`` inside host ``name``'s network namespace."""
        return ["ip", "netns", "exec", self.ns[name], *command]

    def create(self) -> None:
        """Bridge 10.77.0.1/24 here, one namespace per host on it, the outside link, the head's firewall."""
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.bridge_made = True
        sh("ip", "addr", "add", f"{CLIENT_IP}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for index, (name, address) in enumerate(HOSTS.items()):
            ns = self.ns[name]
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            host_end, ns_end = f"mn{self.tag}h{index}", f"mn{self.tag}n{index}"
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            sh("ip", "link", "set", ns_end, "netns", ns)
            sh("ip", "link", "set", host_end, "master", self.bridge)
            sh("ip", "link", "set", host_end, "up")
            sh(*self.exec(name, "ip", "link", "set", "lo", "up"))
            sh(*self.exec(name, "ip", "addr", "add", f"{address}/24", "dev", ns_end))
            sh(*self.exec(name, "ip", "link", "set", ns_end, "up"))
            # A default route so that Ray finds the node's address (a UDP connect, nothing sent);
            # this machine does not forward (net.ipv4.ip_forward is checked to be 0), so nothing
            # leaves the private network.
            sh(*self.exec(name, "ip", "route", "add", "default", "via", CLIENT_IP))
        # The outside link: out <-> head, and the head's firewall on it (SSH only).
        out_end, head_end = f"mn{self.tag}o0", f"mn{self.tag}o1"
        sh("ip", "link", "add", out_end, "type", "veth", "peer", "name", head_end)
        sh("ip", "link", "set", out_end, "netns", self.ns["out"])
        sh("ip", "link", "set", head_end, "netns", self.ns["head"])
        sh(*self.exec("out", "ip", "addr", "add", f"{OUTSIDE_OUT}/30", "dev", out_end))
        sh(*self.exec("out", "ip", "link", "set", out_end, "up"))
        sh(*self.exec("head", "ip", "addr", "add", f"{OUTSIDE_HEAD}/30", "dev", head_end))
        sh(*self.exec("head", "ip", "link", "set", head_end, "up"))
        for rule in (
            ["-A", "INPUT", "-i", head_end, "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
            ["-A", "INPUT", "-i", head_end, "-m", "state", "--state", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
            ["-A", "INPUT", "-i", head_end, "-j", "DROP"],
        ):
            sh(*self.exec("head", "iptables", *rule))
        log(
            f"namespaces {', '.join(f'{n}={HOSTS[n]}' for n in HOSTS)} on bridge {self.bridge} ({CLIENT_IP}); "
            f"outside link {OUTSIDE_OUT} -> head {OUTSIDE_HEAD} (head firewall: tcp/22 only)"
        )

    def pids(self, name: str) -> list[int]:
        """Every process in host ``name``'s network namespace."""
        if self.ns[name] not in self.made:
            return []
        found = sh("ip", "netns", "pids", self.ns[name], check=False)
        return [int(pid) for pid in found.stdout.split()]

    def listening(self, name: str) -> str:
        """``ss -ltn`` inside host ``name``."""
        return sh(*self.exec(name, "ss", "-ltn"), check=False).stdout

    def remove(self) -> None:
        """Kill every process left in our namespaces (all started by this script), delete them and the bridge."""
        for name in HOSTS:
            for pid in self.pids(name):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)
        if self.bridge_made:
            sh("ip", "link", "del", self.bridge, check=False)


def hidden_folder(base: Path) -> Path:
    """The folder each host's mount namespace covers with an empty tmpfs, so that it cannot see the checkout.

    The checkout's top folder (e.g. /work: every checkout under it), unless this script's own
    folder ``base`` is under it too (a checkout in /tmp, as CI's clone may be): then the checkout.
    """
    top = Path(*ROOT.parts[:2])
    return ROOT if base.resolve().is_relative_to(top) else top


class Hosts:
    """One sshd per cluster host, in a mount namespace that hides the checkout and gives the host its own home."""

    def __init__(self, base: Path, network: Network, machine: onprem.Machine) -> None:
        self.base = base
        self.network = network
        self.machine = machine
        self.sshd: dict[str, subprocess.Popen[bytes]] = {}

    def mount_script(self, name: str) -> str:
        """The mounts of host ``name``, then exec sshd."""
        venv = Path(sys.prefix).resolve()
        hidden = hidden_folder(self.base)
        keep = self.base / "venv-mount"
        client = self.base / "client"
        home, ray_tmp = self.machine.home, self.machine.ray_tmp
        own_home, own_tmp = self.base / "homes" / name, self.base / "rts" / name
        lines = [
            "set -e",
            f"mount --bind {venv} {keep}",
            f"mount -t tmpfs -o size=1m,mode=755 hidden {hidden}",
        ]
        if venv.is_relative_to(hidden):
            lines += [f"mkdir -p {venv}", f"mount --bind {keep} {venv}", f"mount -o remount,bind,ro {venv}"]
        lines += [
            f"umount {keep}",
            f"mount -t tmpfs -o size=1m,mode=755 hidden {client}",
            f"mount --bind {own_home} {home}",
            f"mount --bind {own_tmp} {ray_tmp}",
            f"exec /usr/sbin/sshd -D -e -f {self.base / f'sshd-{name}.conf'}",
        ]
        return "\n".join(lines)

    def start(self) -> None:
        """Give each host a copy of the prepared home, then start its sshd."""
        (self.base / "venv-mount").mkdir()
        entry = pwd.getpwnam(self.machine.user)
        for name in ("head", *WORKERS):
            own_home, own_tmp = self.base / "homes" / name, self.base / "rts" / name
            own_home.parent.mkdir(exist_ok=True)
            own_tmp.parent.mkdir(exist_ok=True)
            shutil.copytree(self.machine.home, own_home, symlinks=True)
            own_tmp.mkdir(mode=0o700)
            sh("chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", str(own_home), str(own_tmp))
            key = self.base / f"ssh_host_{name}"
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
            listen = [HOSTS[name]] + ([OUTSIDE_HEAD] if name == "head" else [])
            (self.base / f"sshd-{name}.conf").write_text(
                "\n".join(
                    [
                        *(f"ListenAddress {address}:22" for address in listen),
                        f"HostKey {key}",
                        f"PidFile {self.base / f'sshd-{name}.pid'}",
                        f"AllowUsers {self.machine.user}",
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
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
            log_file = (self.base / f"sshd-{name}.log").open("ab")
            self.sshd[name] = subprocess.Popen(
                # Own PID namespace too: the start commands' `ray stop` (and Ray's process scans)
                # must see this host's processes only, as on separate machines.
                self.network.exec(
                    name,
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--mount-proc",
                    "sh",
                    "-c",
                    self.mount_script(name),
                ),
                stdout=log_file,
                stderr=log_file,
            )
        for name, process in self.sshd.items():
            deadline = time.monotonic() + 20
            while not self.sshd_up(name):
                if process.poll() is not None or time.monotonic() > deadline:
                    text = (self.base / f"sshd-{name}.log").read_text()[-2000:]
                    raise onprem.E2EError(f"sshd of {name} did not start: {text}")
                time.sleep(0.3)
        log("sshd on " + ", ".join(f"{name} {HOSTS[name]}:22 (pid {p.pid})" for name, p in self.sshd.items()))

    def sshd_up(self, name: str) -> bool:
        """Whether host ``name``'s sshd listens."""
        return f"{HOSTS[name]}:22" in self.network.listening(name)

    def stop(self) -> None:
        """Stop the sshd listeners."""
        for process in self.sshd.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


def same_lr(param: str | None, traced: str) -> bool:
    """Whether an MLflow run's ``lr`` param is the lr a trace file is named by (params are logged to 4 digits)."""
    try:
        return param is not None and f"{float(param):.4g}" == f"{float(traced):.4g}"
    except ValueError:
        return False


def machine_uid(machine: onprem.Machine) -> int:
    """The SSH user's uid (-2 once it is gone)."""
    try:
        return pwd.getpwnam(machine.user).pw_uid
    except KeyError:
        return -2


def ssh(key: Path, user: str, address: str, command: str) -> subprocess.CompletedProcess[str]:
    """``command`` on a host, over SSH as the cluster's user."""
    return subprocess.run(
        [
            "ssh",
            "-i",
            str(key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            f"{user}@{address}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def derived_config(machine: onprem.Machine, key: Path, tag: str) -> dict[str, Any]:
    """cluster-onprem.yaml with only what this test must change."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    config["cluster_name"] = f"{SWEEP}-{tag}"
    config["provider"]["head_ip"] = HOSTS["head"]
    config["provider"]["worker_ips"] = [HOSTS[w] for w in WORKERS]
    config["auth"] = {"ssh_user": machine.user, "ssh_private_key": str(key)}
    # The node type Ray's local provider makes of head_ip/worker_ips (prepare_local), written out to
    # give it min_workers 0 and the workers' CPUs (the head starts with none, below).
    config["max_workers"] = len(WORKERS)
    config["available_node_types"] = {
        LOCAL_TYPE: {"node_config": {}, "resources": {"CPU": 2}, "min_workers": 0, "max_workers": len(WORKERS)}
    }
    config["head_node_type"] = LOCAL_TYPE
    config["idle_timeout_minutes"] = IDLE_TIMEOUT_MIN
    starts = config["head_start_ray_commands"]
    head = [i for i, command in enumerate(starts) if onprem.HEAD_START in command]
    if len(head) != 1:
        raise onprem.E2EError(f"cluster-onprem.yaml: expected one '{onprem.HEAD_START}' in head_start_ray_commands")
    starts[head[0]] = starts[head[0]].replace(onprem.HEAD_START, f"{onprem.HEAD_START} --num-cpus=0")
    return config


def write_submit_folder(folder: Path, shared: Path) -> None:
    """The user's submit folder: a spec and a trainer that exist nowhere else."""
    folder.mkdir(parents=True)
    (folder / "my_trainer.py").write_text(TRAINER)
    spec = {
        "name": SWEEP,
        "trainer": "my_trainer:train",
        "metric": {"name": "val_loss", "mode": "min"},
        "budget": {"trials": TRIALS, "epochs": EPOCHS, "concurrency": 2, "cpus_per_trial": 2, "retries": 3},
        "asha": False,
        "divergence": False,
        "record": {"report_every_s": 0},
        "search": {"sampler": "random"},
        "fixed": {"epoch_s": EPOCH_S, "trace_dir": str(shared / "trace")},
        "params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "trial_storage": str(shared / "trials"),
    }
    (folder / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def read_traces(trace_dir: Path) -> dict[str, list[tuple[int, str, int]]]:
    """Each trial's (epoch, node_ip, pid) lines as it wrote them, by its lr."""
    traces: dict[str, list[tuple[int, str, int]]] = {}
    for path in sorted(trace_dir.glob("*.log")):
        lines = []
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                lines.append((int(parts[0]), parts[1], int(parts[2])))
        traces[path.stem] = lines
    return traces


@dataclass
class Watch:
    """What a sampling thread saw: when each worker's raylet came and went."""

    network: Network
    started: float = field(default_factory=time.monotonic)
    up: dict[str, list[float]] = field(default_factory=dict)
    down: dict[str, list[float]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def raylet(self, name: str) -> bool:
        """Whether a raylet runs in host ``name``."""
        return any("raylet" in onprem.cmdline(pid).split(" ")[0] for pid in self.network.pids(name))

    def run(self) -> None:
        """Sample every second until stopped."""
        state = dict.fromkeys(WORKERS, False)
        while not self.stop.is_set():
            now = time.monotonic() - self.started
            for name in WORKERS:
                alive = self.raylet(name)
                if alive != state[name]:
                    (self.up if alive else self.down).setdefault(name, []).append(now)
                    log(f"raylet on {name} {'up' if alive else 'gone'} at +{now:.0f} s")
                    state[name] = alive
            time.sleep(1.0)


def probes(
    network: Network, head_ports: list[tuple[str, int]], mlflow_uri: str, python: str, probe_tmp: Path
) -> list[str]:
    """From the outsider, as user nobody with no token and no login: what answers it.

    ``python``: one that nobody may run, with Ray (the prepared venv's, before it was copied to
    the hosts: it holds no secret).
    """
    problems = []
    script = f"""
import json, os, socket, subprocess, sys, urllib.request, urllib.error
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close(); return "open"
    except socket.timeout: return "timeout (dropped)"
    except OSError as e: return type(e).__name__
out = {{}}
out["inside"] = {{f"{HOSTS["head"]}:{{p}} ({{h}})": tcp("{HOSTS["head"]}", p) for h, p in {head_ports!r}}}
out["inside"]["{HOSTS["head"]}:8265 (dashboard)"] = tcp("{HOSTS["head"]}", 8265)
out["outside"] = {{f"{OUTSIDE_HEAD}:{{p}}": tcp("{OUTSIDE_HEAD}", p) for h, p in {head_ports!r}}}
out["outside"]["{OUTSIDE_HEAD}:22"] = tcp("{OUTSIDE_HEAD}", 22)
try:
    urllib.request.urlopen("{mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    out["mlflow"] = 200
except urllib.error.HTTPError as e:
    out["mlflow"] = e.code
except OSError as e:
    out["mlflow"] = type(e).__name__
code = "import ray; ray.init(address='{HOSTS["head"]}:6379', log_to_driver=False); print('CONNECTED')"
for case, extra in (("gcs_no_token", {{}}), ("gcs_wrong_token", {{"RAY_AUTH_TOKEN": "x" * 32}})):
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90,
                              env={{"PATH": os.environ["PATH"], "HOME": "/nonexistent", "RAY_AUTH_MODE": "token",
                                   "RAY_TMPDIR": "{probe_tmp}", **extra}})
        tail = [l for l in (done.stdout + done.stderr).strip().splitlines() if l.strip()]
        out[case] = "CONNECTED" if "CONNECTED" in done.stdout else "refused: " + next(
            (l for l in reversed(tail) if "oken" in l or "uthent" in l), tail[-1] if tail else "")[:200]
    except subprocess.TimeoutExpired:
        out[case] = "no answer in 90 s"
print(json.dumps(out))
"""
    done = subprocess.run(
        network.exec("out", "runuser", "-u", "nobody", "--", python, "-c", script),
        capture_output=True,
        text=True,
        timeout=150,
        cwd="/",
    )
    if done.returncode != 0:
        return [f"outsider probe failed: {done.stderr.strip()[-800:]}"]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    log(f"from the outsider ({HOSTS['out']}, user nobody, no token, no login):")
    for where in ("inside", "outside"):
        for address, result in found[where].items():
            print(f"    {where:7s} {address:40s} {result}")
    print(f"    MLflow {mlflow_uri} without a login: HTTP {found['mlflow']}")
    for case in ("gcs_no_token", "gcs_wrong_token"):
        print(f"    ray.init(address='{HOSTS['head']}:6379'), {case[4:].replace('_', ' ')}: {found[case]}")
    if found["mlflow"] != 401:
        problems.append(f"MLflow answered the outsider {found['mlflow']} (want 401)")
    for case in ("gcs_no_token", "gcs_wrong_token"):
        if not found[case].startswith("refused"):
            problems.append(f"Ray's GCS, {case}: {found[case]} (want refused)")
    opened = [a for a, r in found["outside"].items() if r == "open" and not a.endswith(":22")]
    if opened or found["outside"][f"{OUTSIDE_HEAD}:22"] != "open":
        problems.append(f"outside address: open besides SSH {opened}, SSH {found['outside'][f'{OUTSIDE_HEAD}:22']}")
    if found["inside"][f"{HOSTS['head']}:8265 (dashboard)"] == "open":
        problems.append("the dashboard answers on the head's private address")
    return problems


def answers_logged_in(uri: str, login: tuple[str, str]) -> bool:
    """Whether the MLflow server answers a search with the login within 5 s (as `sweeps run` asks it)."""
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1")
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(reply.status) == 200
    except OSError:
        return False


def head_ports(listing: str) -> list[tuple[str, int]]:
    """(address, port) of every listener in ``ss -ltn`` output that is not on loopback."""
    ports = []
    for line in listing.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4:
            address, _, port = parts[3].rpartition(":")
            if not address.startswith(("127.", "[::1]", "::1", "[::ffff:127.")):
                ports.append((address, int(port)))
    return sorted(set(ports), key=lambda p: p[1])


def main() -> int:  # noqa: C901  (one test, in order)
    """Run the whole test; 0 if every step passed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) at the end")
    parser.add_argument("--no-faults", action="store_true", help="skip the worker kill and the MLflow restart")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("multinode_e2e.py: run as root (namespaces, a throwaway user, sshd)", file=sys.stderr)
        return 2
    tools = ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "runuser", "useradd", "ip", "unshare", "iptables")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        print(
            f"multinode_e2e.py: missing {', '.join(missing)}: apt-get install -y openssh-server rsync iptables",
            file=sys.stderr,
        )
        return 2
    if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "0":
        print("multinode_e2e.py: net.ipv4.ip_forward is on here; the namespaces could reach out", file=sys.stderr)
        return 2
    try:
        _run_lock = onprem.hold_run_lock()  # held until this function returns
        onprem.clear_stale_runs(OUR_NAMESPACES, OUR_LINKS, SUBNET)
    except onprem.E2EError as exc:
        print(f"multinode_e2e.py: {exc}", file=sys.stderr)
        return 2

    started = time.monotonic()
    tag = secrets.token_hex(2)
    base = Path(tempfile.mkdtemp(prefix="mne2e-", dir="/tmp"))
    base.chmod(0o755)
    machine = onprem.Machine(base)
    network = Network(tag)
    hosts = Hosts(base, network, machine)
    home = base / "client"
    home.mkdir(mode=0o700)
    env = onprem.client_environment(home, base)
    # Ray 2.60's autoscaler v2 (the default since 2.50) never starts a local-provider worker: it
    # logs "Adding 2 node(s) of type local.cluster.node" every 5 s and launches none (tried here).
    # `ray up` takes this variable to start the head's autoscaler as v1, which does.
    env["RAY_UP_enable_autoscaler_v2"] = "0"
    config_path = base / "cluster-multinode-e2e.yaml"
    shared = base / "shared"
    submit = home / "submit"
    up = False
    forward: subprocess.Popen[bytes] | None = None
    watch = Watch(network)
    watcher = threading.Thread(target=watch.run, daemon=True)
    problems: list[str] = []
    figures: list[str] = []
    findings: list[str] = []
    try:
        key = home / ".ssh" / "id_ed25519"
        key.parent.mkdir(mode=0o700)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "multinode-e2e", "-f", str(key))
        machine.create(Path(f"{key}.pub").read_text())
        machine.preinstall()
        onprem.offline_hosts(machine, base)
        network.create()
        hosts.start()
        entry = pwd.getpwnam(machine.user)
        for folder in (shared, shared / "trace", shared / "trials"):
            folder.mkdir()
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        write_submit_folder(submit, shared)
        for name in ("head", *WORKERS):
            seen = ssh(
                key,
                machine.user,
                HOSTS[name],
                f"ls {ROOT}/sweeps {submit} 2>&1; ls -A {hidden_folder(base)}; echo ssh-ok",
            )
            print(f"    {name} ({HOSTS[name]}) over SSH: {' | '.join(seen.stdout.strip().splitlines())}")
            if "ssh-ok" not in seen.stdout or "No such file" not in seen.stdout:
                problems.append(f"SSH to {name} failed: {seen.stderr.strip()[-300:]}")
            if "cli.py" in seen.stdout or "my_trainer" in seen.stdout:
                problems.append(f"{name} sees the checkout or the submit folder")
        log(f"hosts see neither {ROOT} nor {submit} (each host's own home, the venv bound back read-only)")
        make = onprem.make_secrets
        make(home, env, 5000)
        config_path.write_text(yaml.safe_dump(derived_config(machine, key, tag), sort_keys=False))
        log(
            f"config: {CONFIG.name} with cluster_name, head_ip, worker_ips, ssh user, min_workers 0, "
            f"max_workers 2, idle_timeout_minutes {IDLE_TIMEOUT_MIN}, --num-cpus=0 on the head"
        )

        t = time.monotonic()
        up = True
        onprem.run(
            ["ray", "up", "-y", "--no-config-cache", "--log-color", "false", str(config_path)], env=env, timeout=1200
        )
        figures.append(f"ray up (head only): {time.monotonic() - t:.0f} s")
        log(figures[-1])

        uri_out = onprem.run(
            ["ray", "exec", "--no-config-cache", str(config_path), "cat ~/mlflow/tracking_uri"], env=env
        )
        uri = next(line.strip() for line in reversed(uri_out.splitlines()) if line.strip().startswith("http://"))
        log(f"tracking URI on the head: {uri}")
        if HOSTS["head"] not in uri:
            problems.append(f"MLflow is not on the head's private address: {uri}")

        # start_mlflow.py returns once the server listens; on a loaded machine it may take a while
        # longer to answer a logged-in request, and `sweeps run` gives a server 5 s. Wait for that.
        t = time.monotonic()
        while not answers_logged_in(uri, onprem.read_login(home)) and time.monotonic() - t < 300:
            time.sleep(2.0)
        log(f"MLflow answered a logged-in request within 5 s after {time.monotonic() - t:.0f} s")
        forward_port = onprem.free_port()
        forward = subprocess.Popen(
            ["ray", "dashboard", "--no-config-cache", "--port", str(forward_port), str(config_path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not onprem.listening("127.0.0.1", forward_port):
            if forward.poll() is not None or time.monotonic() > deadline:
                raise onprem.E2EError("ray dashboard did not forward the dashboard port")
            time.sleep(0.5)
        address = f"http://127.0.0.1:{forward_port}"
        status = onprem.http_status(f"{address}/api/jobs/")
        log(f"job API through the forwarded port without the token: HTTP {status}")
        if status not in (401, 403):
            problems.append(f"the job API answered HTTP {status} without Ray's token (want 401 or 403)")

        # The sweep, in a thread; the faults and the watching from here.
        watch.started = time.monotonic()
        watcher.start()
        job: dict[str, Any] = {}

        def submit_job() -> None:
            try:
                job["output"] = onprem.run(
                    [
                        "ray",
                        "job",
                        "submit",
                        "--address",
                        address,
                        "--working-dir",
                        str(submit),
                        "--",
                        "python",
                        "-m",
                        "sweeps",
                        "run",
                        "sweep.yaml",
                        "--name",
                        SWEEP,
                        "--tracking-uri",
                        uri,
                        "--storage",
                        str(machine.home / "sweep_runs"),
                    ],
                    env={**env, "RAY_AUTH_MODE": "token"},
                    timeout=1500,
                )
            except onprem.E2EError as error:
                job["error"] = str(error)
            job["ended"] = time.monotonic()

        submitter = threading.Thread(target=submit_job, daemon=True)
        submitter.start()
        worker_ips = {HOSTS[w]: w for w in WORKERS}
        first_worker_trial: float | None = None
        killed: dict[str, Any] = {}
        restarted_mlflow = False
        while submitter.is_alive():
            traces = read_traces(shared / "trace")
            now = time.monotonic()
            if first_worker_trial is None and any(ip in worker_ips for t in traces.values() for _, ip, _ in t):
                first_worker_trial = now - watch.started
                figures.append(f"first trial epoch on a worker: {first_worker_trial:.0f} s after ray job submit")
                log(figures[-1])
                for name in HOSTS:
                    log(f"ss -ltn in {name} ({HOSTS[name]}):")
                    print("\n".join("    " + line for line in network.listening(name).splitlines()), flush=True)
            if not args.no_faults and not killed:
                target = next(
                    (
                        (lr, lines[-1])
                        for lr, lines in traces.items()
                        if lines and lines[-1][1] in worker_ips and lines[-1][0] >= 2 and lines[-1][0] < EPOCHS - 1
                    ),
                    None,
                )
                if target is not None:
                    lr, (epoch, ip, _) = target
                    name = worker_ips[ip]
                    victims = [p for p in network.pids(name) if owner(p) == entry.pw_uid]
                    for pid in victims:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    killed = {"lr": lr, "epoch": epoch, "worker": name, "at": now, "count": len(victims)}
                    log(
                        f"FAULT 1: killed all {len(victims)} processes of {machine.user} on {name} ({ip}) "
                        f"while trial lr={lr} was past epoch {epoch}"
                    )
            if not args.no_faults and killed and not restarted_mlflow and now - killed["at"] > 5:
                restarted_mlflow = True
                t = time.monotonic()
                log("FAULT 2: restarting the head's MLflow server mid-sweep (start_mlflow.py stops and starts it)")
                onprem.run(
                    [
                        "ray",
                        "exec",
                        "--no-config-cache",
                        str(config_path),
                        "python ~/image-sweeps/cluster/start_mlflow.py",
                    ],
                    env=env,
                    timeout=600,
                    check=False,
                )
                log(f"MLflow server restarted in {time.monotonic() - t:.0f} s")
            time.sleep(1.0)
        submitter.join()
        job_end = job.get("ended", time.monotonic())
        log(f"ray job submit: {job_end - watch.started:.0f} s")
        if "error" in job:
            problems.append(job["error"])
        output = job.get("output", "")
        if f"trials {TRIALS}/{TRIALS}" not in output or "succeeded" not in output:
            problems.append(f"the job's output lacks 'trials {TRIALS}/{TRIALS}' or 'succeeded'")
        if first_worker_trial is None:
            problems.append("no trial ran on a worker")
        if not args.no_faults and not killed:
            problems.append("no worker was killed (no trial on a worker past epoch 2 in time)")

        # Ray's record of where each trial's epochs ran (the trials' own ray.util.get_node_ip_address()).
        traces = read_traces(shared / "trace")
        log("where each trial's epochs ran (epoch@node):")
        for lr, lines in traces.items():
            print(f"    lr={lr:24s} " + " ".join(f"{e}@{worker_ips.get(ip, ip)}" for e, ip, _ in lines))
            if any(ip not in worker_ips for _, ip, _ in lines):
                problems.append(f"trial lr={lr} ran an epoch off the workers")
        nodes_used = {worker_ips.get(ip, ip) for t in traces.values() for _, ip, _ in t}
        log(f"trials ran on: {sorted(nodes_used)}")
        if len(nodes_used & set(WORKERS)) < 2:
            problems.append(f"trials ran on {sorted(nodes_used)}, not on both workers")

        problems += onprem.check_mlflow(
            uri, onprem.read_login(home), sweep=SWEEP, trials_wanted=TRIALS, metric="val_loss"
        )
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        ids = [e.experiment_id for e in client.search_experiments()]
        parents = client.search_runs(ids, f"tags.`sweep.name` = '{SWEEP}' and tags.`sweep.role` = 'parent'")
        if not parents:
            raise onprem.E2EError("no parent run on the server")
        parent = parents[0]
        artifacts = [a.path for a in client.list_artifacts(parent.info.run_id)]
        report = [a.path for a in client.list_artifacts(parent.info.run_id, "report")]
        log(f"parent run artifacts: {artifacts}; report/: {report}")
        if not report or any("error" in path for path in report) or "summary.txt" not in artifacts:
            problems.append("the parent run lacks its report or summary")
        children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        restarted = [c for c in children if int(c.data.tags.get("sweep.restarts", "0") or 0) > 0]
        lost = [c for c in children if c.info.status != "FINISHED"] + [None] * max(0, TRIALS - len(children))
        duplicated = 0
        for child in children:
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
            duplicated += len(steps) - len(set(steps))
        if killed:
            victim = next((c for c in children if same_lr(c.data.params.get("lr"), killed["lr"])), None)
            lines = traces.get(killed["lr"], [])
            moved = [worker_ips.get(ip, ip) for e, ip, _ in lines]
            resumed_at = next(
                (e for (e, ip, pid), prev in zip(lines[1:], lines, strict=False) if (ip, pid) != prev[1:]), None
            )
            log(
                f"the killed trial (lr={killed['lr']}): epochs {[e for e, _, _ in lines]} on {moved}; "
                f"restarted at epoch {resumed_at}; sweep.restarts="
                f"{victim.data.tags.get('sweep.restarts') if victim else None} "
                f"reason={victim.data.tags.get('sweep.restart_reason') if victim else None}"
            )
            if victim is None or victim.info.status != "FINISHED":
                problems.append("the killed trial did not finish")
        figures.append(
            f"faults (worker killed mid-trial + MLflow restarted): trials lost {len(lost)}, "
            f"metric steps logged twice {duplicated}, trials restarted {len(restarted)}"
        )
        log(figures[-1])
        if lost or duplicated:
            problems.append(f"{len(lost)} trials lost, {duplicated} steps logged twice")

        # Scale-down: the workers go idle; the autoscaler removes them after the idle timeout.
        deadline = time.monotonic() + 300
        while any(watch.raylet(w) for w in WORKERS) and time.monotonic() < deadline:
            time.sleep(1.0)
        time.sleep(2.5)  # the watching thread samples once a second: let it see the last one go
        for name in WORKERS:
            ups, downs = watch.up.get(name, []), watch.down.get(name, [])
            print(f"    {name}: raylet up at {[f'+{u:.0f}s' for u in ups]}, gone at {[f'+{d:.0f}s' for d in downs]}")
        first_up = min((u[0] for u in watch.up.values() if u), default=None)
        if first_up is not None:
            figures.append(f"scale-up: first worker raylet {first_up:.0f} s after ray job submit")
        last_down = max((d[-1] for d in watch.down.values() if d), default=None)
        if any(watch.raylet(w) for w in WORKERS):
            problems.append("a worker's raylet still runs 300 s after the job ended (no scale-down)")
        elif last_down is not None:
            figures.append(
                f"scale-down: last worker raylet gone {last_down - (job_end - watch.started):.0f} s after "
                f"the job ended (idle_timeout_minutes {IDLE_TIMEOUT_MIN})"
            )
        for line in figures[-2:]:
            log(line)

        head_listing = network.listening("head")
        probe_tmp = base / "probe-tmp"
        probe_tmp.mkdir(mode=0o777)
        probe_tmp.chmod(0o1777)
        venv_python = str(machine.home / "sweeps-venv" / "bin" / "python")
        problems += probes(network, head_ports(head_listing), uri, venv_python, probe_tmp)
    except (onprem.E2EError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        problems.append(str(error))
    finally:
        watch.stop.set()
        if forward is not None:
            os.killpg(forward.pid, signal.SIGTERM)
            forward.wait(timeout=10)
        if up:
            t = time.monotonic()
            try:
                stop = "python ~/image-sweeps/cluster/start_mlflow.py --stop"
                onprem.run(["ray", "exec", "--no-config-cache", str(config_path), stop], env=env)
                onprem.run(["ray", "down", "-y", "--log-color", "false", str(config_path)], env=env)
            except onprem.E2EError as error:
                problems.append(str(error))
            log(f"ray down: {time.monotonic() - t:.0f} s")
            deadline = time.monotonic() + 30
            while onprem.ray_processes(machine) and time.monotonic() < deadline:
                time.sleep(1)
            left = onprem.ray_processes(machine)
            log(f"processes of {machine.user} after ray down (SSH sessions aside): {len(left)}")
            stale = []
            for name in ("head", *WORKERS):
                for pid in network.pids(name):
                    if owner(pid) == machine_uid(machine) and not onprem.cmdline(pid).startswith("sshd"):
                        print(f"    {name}: {pid} {onprem.cmdline(pid)[:400]}")
                        scaled_down = name in WORKERS and watch.down.get(name)
                        if scaled_down and "ray/_private/log_monitor.py" in onprem.cmdline(pid):
                            stale.append(f"{name}:{pid}")
            if stale:
                findings.append(
                    f"Ray's log_monitor.py outlived the autoscaler's removal of {len(stale)} worker(s) and "
                    f"`ray down` ({', '.join(stale)}; ended by pid by this script; the worker's next "
                    "`ray stop` would end it)"
                )
            if len(left) > len(stale):
                problems.append(f"{len(left) - len(stale)} processes left running after ray down (ended by pid now)")
        hosts.stop()
        network.remove()
        after = {name: network.pids(name) for name in HOSTS}
        machine.remove()
        onprem.remove_ssh_control_dir(config_path)
        # The head's autoscaler keeps its SSH control sockets (to the workers) in /tmp, shared here.
        user_hash = hashlib.sha256(machine.user.encode()).hexdigest()[:10]
        shutil.rmtree(f"/tmp/ray_ssh_{user_hash}", ignore_errors=True)
        gone = sh("ip", "netns", "list", check=False).stdout
        log(
            f"namespaces left: {[ns for ns in network.made if ns in gone]}; processes in them before removal: "
            f"{sum(len(p) for p in after.values())}"
        )
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    took = time.monotonic() - started
    for line in figures:
        print(f"FIGURE {line}")
    for line in findings:
        print(f"FINDING {line}")
    if problems:
        for problem in problems:
            log(f"FAILED: {problem}")
        log(f"failed after {took:.0f} s")
        return 1
    log(f"passed in {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
