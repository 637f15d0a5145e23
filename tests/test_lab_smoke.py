"""Smoke test for tests/lab.py: real systemd-networkd in a namespace reproduces the outage.

The lab here is the default, node-like one (socket-activated networkd, udev); the other modes
are in test_lab_modes.py.

Marker (add to pyproject):  markers = ["lab: needs root + systemd-networkd; runs real networkd in a namespace"]
"""

import os
import time

import pytest

from tests.lab import NETWORKD, Lab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root (netns, mounts)"),
    pytest.mark.skipif(not os.path.exists(NETWORKD), reason=f"{NETWORKD} not installed"),
]

CNI_PREFS = {512, 1024, 1536}


def _by_pref(lab):
    return {r.get("priority", 0): r for r in lab.rules()}


def _wait_gone(lab, prefs, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not prefs & set(_by_pref(lab)):
            return time.monotonic() - (deadline - timeout)
        time.sleep(0.01)
    raise AssertionError(f"rules {sorted(prefs)} still there after {timeout}s: {lab.rules()}")


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        lab.add_eni(1)
        lab.node_rules()
        lab.add_pod("10.1.1.5", 1)
        yield lab


def _restore(lab):
    """Put back what networkd wiped (what netd-hook will have to do)."""
    lab.wait_settled()
    rules = _by_pref(lab)
    lines = lab.eni_routes(1)
    if 1024 not in rules:
        lines.append("rule add fwmark 0x80/0x80 lookup main priority 1024")
    if 32765 not in rules:
        lines.append("rule add from 10.0.1.10 lookup 2 priority 32765")
    lines += [ln for ln in lab.pod_rule_lines() if int(ln.rsplit(" ", 1)[1]) not in rules]
    lab.ip_batch(lines)


def _assert_cni_layout(lab):
    rules = _by_pref(lab)
    assert rules[512]["dst"] == "10.1.1.5" and rules[512]["table"] == "main"
    assert rules[1024]["fwmark"] == "0x80" and rules[1024]["fwmask"] == "0x80"
    assert rules[1024]["table"] == "main"
    assert rules[1536]["src"] == "10.1.1.5" and rules[1536]["table"] == "2"
    assert rules[32765]["src"] == "10.0.1.10" and rules[32765]["table"] == "2"
    assert all(rules[p]["protocol"] == "unspec" for p in (512, 1024, 1536, 32765))
    table2 = {(r["dst"], r.get("gateway")) for r in lab.routes(2)}
    assert table2 == {("default", "10.0.1.1"), ("10.0.1.1", None)}
    pod_route = [r for r in lab.routes("main") if r["dst"] == "10.1.1.5"]
    assert pod_route and pod_route[0]["dev"].startswith("eni") and len(pod_route[0]["dev"]) == 14


def test_layout_and_privacy(lab):
    _assert_cni_layout(lab)
    states = lab.link_states()
    assert states["eth0"] == states["eth1"] == "configured"
    pod_veth = lab.pods["10.1.1.5"].veth
    assert states[pod_veth] == "unmanaged"
    assert lab.name_owner() is not None
    # The lab's /etc/systemd/network is a private tmpfs: the host does not see its files.
    assert os.path.exists(lab.path("/etc/systemd/network/10-eth1.network"))
    assert not os.path.exists("/etc/systemd/network/10-eth1.network")
    assert lab.name in os.listdir("/run/netns")


def test_reconfigure_eni_wipes_rules_and_table(lab):
    _assert_cni_layout(lab)
    lab.reconfigure("eth1")
    took = _wait_gone(lab, CNI_PREFS | {32765})
    assert took < 2.0
    lab.wait_settled()
    assert lab.routes(2) == []
    assert {r["priority"] for r in lab.rules()} == {0, 32766, 32767}
    # the pod's host route on the unmanaged veth survives
    assert any(r["dst"] == "10.1.1.5" for r in lab.routes("main"))
    _restore(lab)
    _assert_cni_layout(lab)


def test_reconfigure_primary_alone_wipes_rules(lab):
    _assert_cni_layout(lab)
    lab.reconfigure("eth0")
    _wait_gone(lab, CNI_PREFS | {32765})
    lab.wait_settled()
    # eth0's reconfigure drops foreign rules manager-wide, but eth1's table stays
    assert len(lab.routes(2)) == 2
    _restore(lab)
    _assert_cni_layout(lab)


def test_restart_then_reconfigure_reproduces_outage(lab):
    old = lab.networkd_pid
    owner = lab.name_owner()
    lab.restart_networkd()
    assert lab.networkd_pid not in (None, old)
    assert lab.name_owner() not in (None, owner)
    # With udev, as on a node, a plain restart wipes every foreign rule.
    _wait_gone(lab, CNI_PREFS | {32765})
    _restore(lab)
    _assert_cni_layout(lab)
    lab.reconfigure("eth0", "eth1")
    _wait_gone(lab, CNI_PREFS)
    lab.wait_settled()
    _restore(lab)
    _assert_cni_layout(lab)


def _my_fd_targets():
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return out


def test_close_leaves_nothing():
    lab = Lab()
    lab.start()
    lab.add_eni(1)
    lab.add_pod("10.1.1.7", 1)
    sleeper = lab.popen(["sleep", "300"], networkd_socket=True)
    pids = [lab.holder_pid, lab.dbus_pid, lab.networkd_pid, lab.udevd_pid, sleeper.pid]
    name, ino, logdir = lab.name, lab.netns_inode, lab.logdir
    sock = f"socket:[{os.stat(f'/proc/{lab.networkd_pid}/fd/3').st_ino}]"  # the lab's (PID 1's) socket
    assert all(pids)
    assert sock in _my_fd_targets()
    lab.close()
    lab.close()  # idempotent
    assert lab.networkd_socket_port is None and sock not in _my_fd_targets()
    assert name not in os.listdir("/run/netns")
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"pid {pid} still there"
    leftover = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                    leftover.append(entry)
            except OSError:
                pass
    assert leftover == []
    assert not os.path.exists(logdir)
    with open("/proc/self/mountinfo") as f:
        assert name not in f.read()
