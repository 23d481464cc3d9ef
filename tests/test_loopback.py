"""The tests' Ray talks over loopback only: never to this machine's outward address (eth0).

``tests/conftest.py`` sets Ray's switch for that (``tests.helpers.LOOPBACK_RAY``) before Ray is
imported. Here the sockets of the test session's Ray (the driver, GCS, raylet and workers: all
started by this process) are read from ``/proc`` while a task runs: without the switch, Ray
listens on every interface and connects to the eth0 address, and this test fails.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sweeps.compat.ray_internals import LOOPBACK_SWITCH
from tests.helpers import descendants, project_env

pytestmark = pytest.mark.integration

STATES = {"01": "ESTABLISHED", "0A": "LISTEN"}


def socket_inodes(pids: set[int]) -> set[str]:
    """The inodes of the sockets these processes hold open."""
    inodes = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue  # ended meanwhile
        inodes |= {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    return inodes


def address(hex_address: str) -> str:
    """``/proc/net/tcp[6]``'s ``ADDR:PORT`` (bytes of each 32-bit word in host order) as an IP."""
    raw = bytes.fromhex(hex_address.split(":")[0])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words))
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def tcp_sockets(inodes: set[str]) -> list[tuple[str, str, str]]:
    """(state, local IP, remote IP) of each listening or connected TCP socket among ``inodes``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if inode in inodes and state in STATES:
                found.append((STATES[state], address(local), address(remote)))
    return found


def test_the_tests_ray_listens_and_connects_on_loopback_only(ray_session: None) -> None:
    import ray

    @ray.remote
    def node_ip() -> str:
        return str(ray.util.get_node_ip_address())

    assert ray.get([node_ip.remote() for _ in range(4)]) == ["127.0.0.1"] * 4
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    sockets = tcp_sockets(socket_inodes(descendants(os.getpid()) | {os.getpid()}))
    assert any(state == "LISTEN" for state, _, _ in sockets)  # Ray's servers were seen at all
    outward = [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]
    outward += [s for s in sockets if s[0] == "ESTABLISHED" and not ipaddress.ip_address(s[2]).is_loopback]
    assert not outward, outward  # e.g. ('LISTEN', '::', '::') or ('ESTABLISHED', '192.0.2.2', '192.0.2.2')


# A process in a network namespace of its own, with loopback and one outward address (a veth pair
# whose both ends stay in it): a local Ray there would take 10.213.7.1 as its node's address.
NAMESPACE_SETUP = (
    "ip link set lo up && ip link add v0 type veth peer name v1 && ip addr add 10.213.7.1/24 dev v0 && "
    "ip link set v0 up && ip link set v1 up && ip route add default dev v0 && exec {python} -c {script}"
)
CHILD = """
import ipaddress, json, os, sys
import sweeps.engine.runner  # Ray is imported before start_ray, as in `sweeps run`
assert "ray" in sys.modules
import ray
from sweeps.engine.cluster import start_ray
from tests.helpers import descendants
from tests.test_loopback import socket_inodes, tcp_sockets

start_ray(num_cpus=1, address="local")

@ray.remote
def node_ip():
    return ray.util.get_node_ip_address()

ips = sorted({ray.get(node_ip.remote()), ray.util.get_node_ip_address()})
sockets = tcp_sockets(socket_inodes(descendants(os.getpid()) | {os.getpid()}))
outward = sorted({s[1] for s in sockets if not ipaddress.ip_address(s[1]).is_loopback})
print(json.dumps({"ips": ips, "listening": any(s[0] == "LISTEN" for s in sockets), "outward": outward}))
ray.shutdown()
"""


def _namespace_ready() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a network namespace"
    missing = [tool for tool in ("unshare", "ip") if not shutil.which(tool)]
    return f"needs {', '.join(missing)}" if missing else None


def _ray_in_namespace(**env: str) -> dict[str, Any]:
    """Run CHILD in a new network namespace with an outward address; its JSON line."""
    child_env = {k: v for k, v in project_env(**env).items() if k != LOOPBACK_SWITCH or k in env}
    command = NAMESPACE_SETUP.format(python=shlex.quote(sys.executable), script=shlex.quote(CHILD))
    result = subprocess.run(
        ["unshare", "-n", "sh", "-c", command], env=child_env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_namespace_ready() is not None, reason=_namespace_ready() or "")
def test_a_sweeps_own_local_ray_keeps_to_loopback_where_the_machine_has_an_outward_address() -> None:
    """The product's ``start_ray``, without the tests' switch: a user's local sweep is not on the network.

    Run in a namespace this test makes, so nothing reaches a real interface either way. The control:
    with the switch set to 1 by the user (respected), the same Ray listens on the namespace's outward
    address, which is what every local sweep did before ``local_ray_on_loopback``.
    """
    ours = _ray_in_namespace()
    assert ours["listening"] and ours["ips"] == ["127.0.0.1"] and ours["outward"] == [], ours
    theirs = _ray_in_namespace(**{LOOPBACK_SWITCH: "1"})
    assert theirs["ips"] == ["10.213.7.1"] and "10.213.7.1" in theirs["outward"], theirs
