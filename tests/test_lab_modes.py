"""tests/lab.py's ways of running networkd, against the facts of /work/shared/NETWORKD-LAB.md.

Node-like (the default: socket-activated, udev): a plain networkd restart wipes every foreign
rule, as a reconfigure does, and networkd's requests carry the port of the socket the lab
(standing in for PID 1) bound, not networkd's pid. Container-like (activation="self", no udev):
a plain restart wipes nothing. The same for networkd 249 (Ubuntu 22.04's). Rule deletions are
watched with a raw rtnetlink monitor in the lab's namespace (``RuleMonitor``), an oracle
independent of netd-hook's own netlink code.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon
from tests.lab import NETWORKD, Lab, LabError, require_networkd_249

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root (netns, mounts)"),
    pytest.mark.skipif(not os.path.exists(NETWORKD), reason=f"{NETWORKD} not installed"),
]

FOREIGN = frozenset({512, 1024, 1536, 32765})  # the CNI's rules in _node()
NETWORKDS = [pytest.param("252", id="networkd252"), pytest.param("249", id="networkd249")]

_RTMGRP_IPV4_RULE = 0x80
_RTNLGRP_IPV6_RULE = 19
_SOL_NETLINK = 270
_NETLINK_ADD_MEMBERSHIP = 1
_RTM_DELRULE = 33
_FRA_PRIORITY = 6


def _networkd(which: str) -> str | None:
    return require_networkd_249() if which == "249" else None


class RuleMonitor:
    """RTM_DELRULE notifications (IPv4 and IPv6) in the lab: priority -> nlmsg_pid."""

    def __init__(self, lab: Lab) -> None:
        self.sock = lab.netns_socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, _RTMGRP_IPV4_RULE))
        self.sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _RTNLGRP_IPV6_RULE)
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    def _read(self, timeout: float) -> list[tuple[int, int]]:
        """(priority, nlmsg_pid) of the deletions that arrive within ``timeout``."""
        if not select.select([self.sock], [], [], max(timeout, 0))[0]:
            return []
        data = self.sock.recv(1 << 20)
        out = []
        off = 0
        while off + 16 <= len(data):
            length, kind, _flags, _seq, pid = struct.unpack_from("=IHHII", data, off)
            if kind == _RTM_DELRULE:
                attr = off + 16 + 12  # nlmsghdr, fib_rule_hdr
                while attr + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, attr)
                    if atype == _FRA_PRIORITY:
                        out.append((struct.unpack_from("=I", data, attr + 4)[0], pid))
                    attr += (alen + 3) & ~3
            off += (length + 3) & ~3
        return out

    def deletions(self, want: frozenset[int], timeout: float = 5.0) -> dict[int, int]:
        """Every deletion until all of ``want`` were deleted, then 0.2 s more (strays)."""
        seen: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while not want <= set(seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"deleted {seen}, want {sorted(want)} within {timeout}s")
            seen.update(self._read(left))
        end = time.monotonic() + 0.2
        while (left := end - time.monotonic()) > 0:
            seen.update(self._read(left))
        return seen

    def quiet(self, seconds: float) -> list[tuple[int, int]]:
        """All deletions within ``seconds`` (for asserting there are none)."""
        out = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            out += self._read(left)
        return out


def _node(lab: Lab) -> None:
    """A secondary ENI, the node's fwmark rule, one pod: foreign rules 512/1024/1536/32765."""
    lab.add_eni(1)
    lab.node_rules()
    lab.add_pod("10.1.1.5", 1)
    _restore(lab)  # eth1 appearing wiped its own 32765 already (ENI hot-plug)


def _restore(lab: Lab) -> None:
    lab.wait_settled()
    have = set(lab.rule_prefs())
    lines = ["rule add fwmark 0x80/0x80 lookup main priority 1024",
             "rule add from 10.0.1.10 lookup 2 priority 32765", *lab.pod_rule_lines()]
    lab.ip_batch([ln for ln in lines if int(ln.rsplit(" ", 1)[1]) not in have])
    assert set(lab.rule_prefs()) >= FOREIGN


@pytest.fixture
def monitor() -> Iterator[list[RuleMonitor]]:
    made: list[RuleMonitor] = []
    yield made
    for m in made:
        m.close()


def _monitor(lab: Lab, made: list[RuleMonitor]) -> RuleMonitor:
    m = RuleMonitor(lab)
    made.append(m)
    return m


@pytest.mark.parametrize("which", NETWORKDS)
def test_node_like_reconfigure_and_plain_restart_wipe(which: str, monitor: list[RuleMonitor]) -> None:
    with Lab(networkd=_networkd(which)) as lab:
        assert (lab.activation, lab.udev) == ("socket", True)
        port = lab.networkd_socket_port
        assert port is not None and port != lab.networkd_pid
        _node(lab)
        mon = _monitor(lab, monitor)
        lab.reconfigure("eth1")
        assert mon.deletions(FOREIGN) == {pref: port for pref in FOREIGN}
        _restore(lab)
        old = lab.networkd_pid
        lab.stop_networkd()
        lab.start_networkd()  # a plain restart: no reconfigure, no reload
        assert lab.networkd_pid not in (None, old)
        # The same port after the restart: the socket outlives networkd.
        assert mon.deletions(FOREIGN) == {pref: port for pref in FOREIGN}
        assert lab.networkd_socket_port == port
        lab.wait_settled()
        assert FOREIGN.isdisjoint(lab.rule_prefs())


@pytest.mark.parametrize("which", NETWORKDS)
def test_container_like_plain_restart_keeps_rules(which: str, monitor: list[RuleMonitor]) -> None:
    with Lab(activation="self", udev=False, networkd=_networkd(which)) as lab:
        assert lab.networkd_socket_port is None and lab.udevd_pid is None
        _node(lab)
        before = lab.rule_prefs()
        mon = _monitor(lab, monitor)
        lab.restart_networkd()
        assert mon.quiet(0.5) == []
        assert lab.rule_prefs() == before
        lab.reconfigure("eth1")
        # networkd's own socket, autobound: its port is its pid.
        assert mon.deletions(FOREIGN) == {pref: lab.networkd_pid for pref in FOREIGN}


def test_udev_initializes_every_link() -> None:
    with Lab() as lab:
        lab.add_eni(1)
        veth = lab.add_pod("10.1.1.5", 1)
        lab.wait_settled()
        states = lab.link_states()
        assert states["eth0"] == states["eth1"] == "configured" and states[veth] == "unmanaged"
        # lo by the coldplug, the rest through their uevents: each has the lab rule's property.
        for name in ("lo", "eth0", "vpc0", "eth1", "vpc1", veth):
            ifindex = lab.read_file(f"/sys/class/net/{name}/ifindex").strip()
            assert "E:ID_LAB=1" in lab.read_file(f"/run/udev/data/n{ifindex}").splitlines(), name
        # udevd has a private /dev and no rules but the lab's (it also sees the host's uevents).
        assert lab.udevd_pid is not None
        with open(f"/proc/{lab.udevd_pid}/mountinfo") as f:
            mounts = {line.split()[4]: line.split(" - ")[1].split()[0] for line in f}
        assert mounts["/dev"] == "tmpfs" and mounts["/usr/lib/udev/rules.d"] == "tmpfs"
        assert mounts["/run/udev"] == "tmpfs"


_SHOW_FDS = r"""
import fcntl, json, os, socket
s = socket.socket(fileno=3)
print(json.dumps({
    "pid": os.getpid(), "env": {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")},
    "port": s.getsockname()[0], "proto": s.proto, "inode": os.fstat(3).st_ino,
    "nonblock": bool(fcntl.fcntl(3, fcntl.F_GETFL) & os.O_NONBLOCK),
    "rcvbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), "pktinfo": s.getsockopt(270, 3),
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd"))}))
s.detach()
"""


def test_popen_gets_networkds_socket_like_a_unit_with_sockets() -> None:
    with Lab() as lab:
        p = lab.popen([sys.executable, "-c", _SHOW_FDS], networkd_socket=True, stdout=subprocess.PIPE, text=True)
        out, _ = p.communicate(timeout=10)
        got = json.loads(out)
        assert got["pid"] == p.pid
        assert got["env"] == {"LISTEN_PID": str(p.pid), "LISTEN_FDS": "1",
                              "LISTEN_FDNAMES": "systemd-networkd.socket"}
        assert got["port"] == lab.networkd_socket_port and got["proto"] == socket.NETLINK_ROUTE
        assert got["inode"] == os.stat(f"/proc/{lab.networkd_pid}/fd/3").st_ino  # networkd's very socket
        assert got["nonblock"] and got["pktinfo"] == 1
        assert got["rcvbuf"] >= 128 * 1024 * 1024
        assert got["fds"][:4] == [0, 1, 2, 3] and len(got["fds"]) <= 5  # + the listdir's own fd
    with Lab(activation="self", udev=False) as lab, pytest.raises(LabError):
        lab.popen(["true"], networkd_socket=True)


def test_restart_networkd_socket(monitor: list[RuleMonitor]) -> None:
    with Lab() as lab:
        _node(lab)
        mon = _monitor(lab, monitor)
        old_port = lab.networkd_socket_port
        lab.restart_networkd_socket()
        new_port = lab.networkd_socket_port
        assert new_port not in (None, old_port)
        lab.reconfigure("eth1")  # the running networkd still uses the old socket
        assert mon.deletions(FOREIGN) == {pref: old_port for pref in FOREIGN}
        _restore(lab)
        lab.restart_networkd()  # the next one gets the new socket
        assert mon.deletions(FOREIGN) == {pref: new_port for pref in FOREIGN}


_FAKE_DAEMON = r"""
import os, signal, socket, sys
fd3 = os.path.exists("/proc/self/fd/3")
listen = os.environ.get("LISTEN_FDS") == "1" and os.environ.get("LISTEN_PID") == str(os.getpid())
port = socket.socket(fileno=3).getsockname()[0] if listen else None
print(f"fake pid={os.getpid()} port={port} fd3={fd3}", file=sys.stderr, flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
signal.pause()
"""


def test_daemon_started_with_networkds_socket(tmp_path: Path) -> None:
    """tests/daemon.py passes the socket in a socket-activated lab (the unit's Sockets= line)
    unless told not to; a stand-in for `netd-hook run` reports what it got."""
    with Lab() as lab:
        for opt, want in ((None, lab.networkd_socket_port), (False, None)):
            with Daemon(lab, tmp_path / "state", argv=[sys.executable, "-c", _FAKE_DAEMON],
                        networkd_socket=opt) as d:
                m = d.wait_log(r"fake pid=(\d+) port=(\S+) fd3=(\S+)")
                assert d.proc is not None and int(m[1]) == d.proc.pid
                assert m[2] == str(want) and m[3] == str(want is not None)
