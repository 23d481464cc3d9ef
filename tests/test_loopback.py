"""The tests' Ray talks over loopback only: never to this machine's outward address (eth0).

``tests/conftest.py`` sets Ray's switch for that (``tests.helpers.LOOPBACK_RAY``) before Ray is
imported. Here the sockets of the test session's Ray (the driver, GCS, raylet and workers: all
started by this process) are read from ``/proc`` while a task runs: without the switch, Ray
listens on every interface and connects to the eth0 address, and this test fails.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

from tests.helpers import descendants

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
