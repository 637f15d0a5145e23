"""Who deleted it: networkd's port however systemd starts networkd, and the ledger of what was
forgotten. Real sockets and a real sd_listen_fds hand-over (a child process gets fd 3 the way
systemd passes it), no mocks of the socket module."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from netd_hook.adapters import netlink
from netd_hook.adapters.procfs import NETWORKD_COMM, NetworkdPorts
from netd_hook.core.forgotten import BULK, NEAR, Forget, Ledger
from netd_hook.core.status_doc import PortTally
from netd_hook.core.track import Cause, classify

ROOT = Path(__file__).resolve().parent.parent


def rtnl(groups: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    s.bind((0, groups))
    return s


# ------------------------------------------------------------------ sd_listen_fds hand-over

_CHILD = """
import json, sys
from netd_hook.adapters import netlink
kept, other = netlink.rtnetlink_sockets(netlink.listen_fds())
import os
print(json.dumps({"ports": [k.port for k in kept], "inodes": [k.inode for k in kept], "other": other,
                  "env": [v for v in ("LISTEN_PID", "LISTEN_FDS") if v in os.environ]}))
"""


def _child(fd: int, *, listen_pid: str = "$$", count: str = "1") -> dict:
    """Run a child with `fd` as its fd 3 and LISTEN_* set like systemd does (LISTEN_PID its own pid)."""
    script = f'export LISTEN_PID={listen_pid} LISTEN_FDS={count}; exec "$0" -c "$1" 3<&{fd}'
    r = subprocess.run(["bash", "-c", script, sys.executable, _CHILD], pass_fds=(fd,), capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30, check=True)
    return json.loads(r.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="binding rtnetlink groups may need privileges")
def test_a_passed_rtnetlink_socket_gives_its_port_and_the_variables_are_gone():
    s = rtnl(groups=1361)  # what systemd-networkd.socket binds (ListenNetlink=route 1361)
    try:
        out = _child(s.fileno())
        assert out["ports"] == [s.getsockname()[0]] and out["ports"][0] != 0
        assert out["inodes"] == [os.fstat(s.fileno()).st_ino]
        assert out["other"] == [] and out["env"] == []
    finally:
        s.close()


def test_sockets_for_another_process_are_not_taken():
    s = rtnl()
    try:
        out = _child(s.fileno(), listen_pid="1")  # LISTEN_PID names someone else
        assert out["ports"] == [] and out["env"] == []
    finally:
        s.close()


def test_a_passed_socket_that_is_not_rtnetlink_is_closed_and_named():
    a, b = socket.socketpair()
    try:
        out = _child(a.fileno())
        assert out["ports"] == []
        assert len(out["other"]) == 1 and "not rtnetlink" in out["other"][0]
    finally:
        a.close()
        b.close()


def test_listen_fds_without_variables_takes_nothing():
    env: dict[str, str] = {"LISTEN_FDS": "2"}
    assert netlink.listen_fds(env) == [] and env == {}
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"}
    assert netlink.listen_fds(env) == [] and env == {}


# ------------------------------------------------------------------ the verdict


def test_the_passed_sockets_port_is_networkds_whatever_its_value(tmp_path: Path):
    ports = NetworkdPorts([1], proc=tmp_path)
    assert classify(1, frozenset({4242}), ports) is Cause.NETWORKD  # socket-activated: PID 1's port
    ports = NetworkdPorts([2_147_483_000], proc=tmp_path)  # an autobind after a clash: not a PID at all
    assert classify(2_147_483_000, frozenset(), ports) is Cause.NETWORKD
    assert ports.process(2_147_483_000) == "systemd-networkd (socket from systemd)"


def test_without_a_passed_socket_networkds_pid_and_comm_still_tell(tmp_path: Path):
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "comm").write_text(NETWORKD_COMM + "\n")
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "comm").write_text("systemd\n")
    ports = NetworkdPorts((), proc=tmp_path)
    ports.set_pid(55)
    assert classify(55, frozenset(), ports) is Cause.NETWORKD
    assert classify(77, frozenset(), ports) is Cause.NETWORKD  # before networkd owns its bus name
    # port 1 is not networkd's unless it is the port of the socket systemd passed: nothing hard-coded
    assert classify(1, frozenset(), ports) is Cause.OTHER
    assert ports.process(1) == "systemd"
    assert classify(0, frozenset(), ports) is Cause.KERNEL
    assert classify(4242, frozenset({4242}), ports) is Cause.SELF


# ------------------------------------------------------------------ the ledger


def _f(at: float, n: int, port: int = 1, busy: bool = False) -> Forget:
    return Forget(at, 1000.0 + at, port, "systemd", n, "pref 512 from all to 10.1.1.5/32 lookup 254", busy)


def test_a_pod_deleted_by_the_cni_is_no_doubt():
    led = Ledger()
    led.forgot(_f(10.0, 2, port=9000))
    assert led.doubt() is None and led.total == 2 and led.while_busy == 0
    assert led.status().by_port == (PortTally(port=9000, process="systemd", count=2, last_at=1010.0),)


def test_bulk_forgetting_while_networkd_is_busy_is_a_doubt_until_the_next_generation():
    led = Ledger()
    led.networkd_busy(5.0)
    led.forgot(_f(5.1, BULK, busy=True))
    doubt = led.doubt()
    assert doubt is not None and f"{BULK} protected entries" in doubt and "port 1 (systemd)" in doubt
    last = led.status().last
    assert led.status().doubt == doubt and last is not None and last.while_busy is True
    led.new_generation()
    assert led.doubt() is None and led.total == BULK


def test_deletions_just_before_the_busy_signal_count_as_while_busy():
    # The netlink deletions of a wipe can be read before the D-Bus signal that the link is configuring.
    led = Ledger()
    assert not led.forgot(_f(20.0, BULK)).busy
    assert led.doubt() is None
    assert led.networkd_busy(20.0 + NEAR / 2) == BULK
    assert led.doubt() is not None
    # ...but not deletions long before
    led2 = Ledger()
    led2.forgot(_f(20.0, BULK))
    assert led2.networkd_busy(20.0 + NEAR * 2) == 0 and led2.doubt() is None
    # and a deletion close after a busy spell counts too
    led3 = Ledger()
    led3.networkd_busy(30.0)
    assert led3.forgot(_f(30.0 + NEAR / 2, 1)).busy


_TABLE = """sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode
0000000027c5a521 0   1          00000551 0        0        0     2        0        47673
00000000b17bdfce 0   3870231608 00000000 0        0        0     2        0        51000
00000000b17bdfc0 15  1          00000001 0        0        0     2        0        1587
"""


def test_the_netlink_table_gives_route_sockets_by_port():
    assert netlink.rtnetlink_ports(_TABLE) == {1: 47673, 3870231608: 51000}  # protocol 15 is not route


def test_a_passed_socket_is_gone_once_no_route_socket_has_its_port(tmp_path: Path):
    (tmp_path / "self" / "net").mkdir(parents=True)
    table = tmp_path / "self" / "net" / "netlink"
    table.write_text(_TABLE)
    assert NetworkdPorts([1], proc=tmp_path).vanished() == []
    # PID 1 bound a new socket with the same port (the old one was gone first): still networkd's
    table.write_text(_TABLE.replace("47673", "47999"))
    assert NetworkdPorts([1], proc=tmp_path).vanished() == []
    table.write_text(_TABLE.replace("0000000027c5a521 0   1 ", "0000000027c5a521 0   2 "))
    assert NetworkdPorts([1], proc=tmp_path).vanished() == [1]
    assert NetworkdPorts([], proc=tmp_path).vanished() == []  # no socket passed: nothing to check
