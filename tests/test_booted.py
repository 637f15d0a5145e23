"""The installed package on booted nodes: systemd PID 1, socket-activated networkd, udev, journald.

Three nodes (tests/node.py; recipe in /work/shared/BOOTED-NODE.md), one at a time, each booted once
for the module: Debian 12 (systemd 252), Debian 13 (257), and Debian 12 with Ubuntu 22.04's
networkd 249. On each, the .deb built from the working tree is installed with dpkg (its postinst
starts netd-hook.service under its real unit: sandbox, seccomp filter, User=, the networkd
socket passed with Sockets=), then the VPC CNI layout: 30 pods on the primary ENI and two
secondary ones. Every verdict reads the kernel inside the node (`ip -j`), never the daemon's view.

Marker ``booted``; skipped with a message unless root, systemd-nspawn, nsenter and overlayfs are
there; in CI (env CI non-empty) that is a failure instead. A missing root file system is built
with debootstrap (about a minute per suite) and cached, see tests/node.py.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from netd_hook.adapters.journal import MESSAGE_ID_REPAIR
from netd_hook.core.status_doc import Protected, Status, from_json
from tests import node as nodemod
from tests.node import Node, Observer, wait_until

MISSING = nodemod.tools_missing()
IN_CI = bool(os.environ.get("CI"))
pytestmark = [pytest.mark.booted]
if MISSING and not IN_CI:
    pytestmark.append(pytest.mark.skip(reason=f"booted nodes need {', '.join(MISSING)} "
                                              "(root; apt-get install systemd-container)"))

# node id -> (suite, networkd249, the networkd version `networkctl --version` must report)
NODES = {"bookworm": ("bookworm", False, 252), "trixie": ("trixie", False, 257),
         "bookworm+networkd249": ("bookworm", True, 249)}
PODS = {0: 10, 1: 10, 2: 10}  # ENI index -> pods: 30 pods, 53 protected rules, 4 table routes
WIPE_TIMEOUT = 5.0      # networkd's wipe shows up in the kernel within this
REPAIR_TIMEOUT = 10.0   # and netd-hook has put everything back within this (it takes milliseconds)

@contextmanager
def vpc_node(node_id: str, deb: Path) -> Iterator[Node]:
    """A booted node of NODES with the package installed and the VPC CNI layout (PODS) protected:
    every booted module's node fixture."""
    suite, networkd249, _ = NODES[node_id]
    n = Node(suite, networkd249=networkd249)
    try:
        n.start()
        n.install_deb(deb)
        n.setup_layout((0, 1, 2), PODS)
        n.baseline = n.protected()
        wait_protecting(n)
        print(f"\n{n.label}: " + ", ".join(f"{k} {v:.2f}s" for k, v in n.timings.items()))
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module", params=list(NODES), ids=list(NODES))
def node(request: pytest.FixtureRequest, deb: Path) -> Iterator[Node]:
    with vpc_node(request.param, deb) as n:
        yield n


@pytest.fixture()
def booted(node: Node) -> Node:
    """The module's node, its layout complete again (an earlier failure may have left holes)."""
    restore(node)
    return node


# ---------------------------------------------------------------------------------- helpers

def foreign_rules(n: Node) -> int:
    return sum(1 for fam in (4, 6) for r in n.rules(fam) if r.get("protocol") != "kernel")


def status(n: Node) -> Status | None:
    """The status `netd-hook status --json` prints, read back (from_json); None when it prints none."""
    r = n.run("netd-hook", "status", "--json", check=False)
    doc = json.loads(r.stdout).get("status") if r.stdout.strip() else None
    return None if doc is None else from_json(doc)


def wait_protecting(n: Node, timeout: float = 10.0) -> None:
    """Until the daemon's published status protects every foreign rule and table route there is."""
    want_rules, want_routes = foreign_rules(n), len(n.baseline[1])

    def ok() -> bool:
        st = status(n)
        return st is not None and st.protected == Protected(rules=want_rules, routes=want_routes) and st.missing == 0
    try:
        wait_until(ok, timeout, "netd-hook to protect the whole layout", 0.1)
    except AssertionError as e:
        raise AssertionError(f"{e}: want {want_rules} rules, {want_routes} routes; status {status(n)}") from None


def restore(n: Node) -> None:
    """Put back by hand what an earlier (failed) test left missing, once networkd is done: after
    a restart whose `netd-hook wait` returned at once, networkd may still be configuring links
    (its READY=1 comes before that), and would wipe what is put back too early."""
    if not any(n.missing()):
        wait_protecting(n)
        return
    n.wait_settled()
    time.sleep(0.5)
    rules, routes = n.missing()
    lines = nodemod._rule_lines(rules)
    for t in n.eni_tables():
        lines += n.eni_table_lines(t - 1)
    n.ip_batch(lines, force=True)
    assert n.missing() == (frozenset(), frozenset()), "could not restore the layout by hand"
    wait_protecting(n)


def explain(n: Node, what: str) -> str:
    """The evidence for a failed repair: what is missing, the daemon's own view, its journal."""
    rules, routes = n.missing()
    st = status(n) or Status()
    sample = sorted(" ".join(f"{k}={v}" for k, v in row if k in ("priority", "src", "dst", "table"))
                    for row in rules)[:5]
    tail = n.run("journalctl", "-u", "netd-hook", "-n", "25", "--no-pager", "-o", "cat", check=False).stdout
    return (f"{what}: {len(rules)} rules and {len(routes)} table routes still missing in the kernel, e.g. {sample}\n"
            f"daemon: protected={st.protected} missing={st.missing} "
            f"forgotten={st.forgotten} networkd={replace(st.networkd, links={})}\n"
            f"journalctl -u netd-hook:\n{tail}")


def repairs(n: Node) -> list[dict[str, Any]]:
    return n.journal("-u", "netd-hook", f"MESSAGE_ID={MESSAGE_ID_REPAIR}")


def rule_deletions(events: list[list[Any]], port: int | None = None) -> list[list[Any]]:
    return [e for e in events if e[1] == "del" and e[2] == "rule" and (port is None or e[3] == port)]


def networkd_port(n: Node) -> int:
    """The port of networkd's rtnetlink socket (fd 3, from systemd-networkd.socket)."""
    ino = int(os.readlink(n.path(f"/proc/{n.networkd_pid()}/fd/3")).strip("socket:[]"))
    return next(r["Pid"] for r in n.netlink_sockets() if r["Inode"] == ino)


def wipe_and_wait(n: Node, *argv: str) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    """Run argv in the node (a reconfigure), see networkd's wipe, then wait for the repair.
    Returns the observer's events and the repair journal entries it caused."""
    before = len(repairs(n))
    with Observer(n) as obs:
        n.run(*argv)
        wait_until(lambda: rule_deletions(obs.events()), WIPE_TIMEOUT, f"the wipe after {' '.join(argv)}", 0.02)
        try:
            wait_until(lambda: not any(n.missing()), REPAIR_TIMEOUT,
                       "every rule and table route back", 0.05)
        except AssertionError:
            raise AssertionError(explain(n, f"after {' '.join(argv)}")) from None
        n.wait_settled()
        time.sleep(0.3)  # a second pass (networkd 249 wipes twice) or a late repair shows up here
        events = obs.events()
    assert not any(n.missing()), explain(n, f"after {' '.join(argv)}, once settled")
    return events, repairs(n)[before:]


def check_repair_records(entries: list[dict[str, Any]], events: list[list[Any]], port: int) -> None:
    """The journal's repair records account for every rule networkd deleted."""
    assert entries, "no repair record in the journal"
    lost = len(rule_deletions(events, port))
    restored = sum(int(e["NETD_HOOK_RULES_RESTORED"]) for e in entries)
    present = sum(int(e["NETD_HOOK_ALREADY_PRESENT"]) for e in entries)
    assert restored == lost, f"networkd deleted {lost} rules, the journal says {restored} restored ({entries})"
    for e in entries:
        assert e["_SYSTEMD_UNIT"] == "netd-hook.service" and e["PRIORITY"] == "4", e
        assert float(e["NETD_HOOK_DURATION_MS"]) >= 0 and e["NETD_HOOK_SET_ASIDE"] == "0", e
        assert e["NETD_HOOK_ROLLBACKS"] == "0", e
    assert present >= 0


# ---------------------------------------------------------------------------------- tests

def test_node_runs_the_installed_daemon_with_networkds_socket(booted: Node) -> None:
    n = booted
    _, _, version = NODES[n.label]
    assert n.networkctl_version() == version
    assert n.show("netd-hook", "ActiveState", "SubState") == {"ActiveState": "active", "SubState": "running"}
    assert n.show("systemd-networkd.socket", "ActiveState")["ActiveState"] == "active"
    pid = n.main_pid("netd-hook")
    env = dict(x.split("=", 1) for x in n.read_file(f"/proc/{pid}/environ").split("\0") if "=" in x)
    assert env.get("LISTEN_FDS") == "1" and env.get("LISTEN_FDNAMES") == "systemd-networkd.socket", env
    # the socket systemd passed is networkd's own (same inode), bound by PID 1: port 1; netd-hook
    # took its port and inode and closed its copy (it never reads it, and must not keep it alive)
    theirs = int(os.readlink(n.path(f"/proc/{n.networkd_pid()}/fd/3")).strip("socket:[]"))
    said = n.journal("-u", "netd-hook", "-g", "networkd's rtnetlink socket from systemd")
    assert said and f"port 1 (inode {theirs})" in said[-1]["MESSAGE"], [e.get("MESSAGE") for e in said]
    assert not any(os.readlink(n.path(f"/proc/{pid}/fd/{fd}")) == f"socket:[{theirs}]"
                   for fd in os.listdir(n.path(f"/proc/{pid}/fd")))
    assert networkd_port(n) == 1
    wait_protecting(n)
    assert getattr(status(n), "networkd_sockets", None) == (1,)


def test_reconfigure_of_a_secondary_eni_is_repaired(booted: Node) -> None:
    n = booted
    port = networkd_port(n)
    events, entries = wipe_and_wait(n, "networkctl", "reconfigure", "eth1")
    # networkd's wipe is manager-wide: every foreign rule, deleted through its socket
    assert len(rule_deletions(events, port)) >= foreign_rules(n), rule_deletions(events)[:3]
    check_repair_records(entries, events, port)
    assert sum(int(e["NETD_HOOK_ROUTES_RESTORED"]) for e in entries) >= 2  # table 2, flushed by the kernel


def test_reconfigure_of_the_primary_eni_is_repaired(booted: Node) -> None:
    n = booted
    port = networkd_port(n)
    events, entries = wipe_and_wait(n, "networkctl", "reconfigure", "eth0")
    assert len(rule_deletions(events, port)) >= foreign_rules(n)
    check_repair_records(entries, events, port)


def test_networkd_restart_returns_with_everything_back(booted: Node) -> None:
    """`netd-hook wait` as networkd's ExecStartPost=: when `systemctl restart` returns, the kernel
    already has every protected entry (read at once, no waiting)."""
    n = booted
    old_pid = n.networkd_pid()
    with Observer(n) as obs:
        t0 = time.monotonic()
        n.systemctl("restart", "systemd-networkd.service")
        took = time.monotonic() - t0
        rules, routes = n.missing()
        events = obs.events()
    assert not rules and not routes, explain(n, f"right after `systemctl restart systemd-networkd` ({took:.2f}s)")
    assert n.networkd_pid() != old_pid
    # it was a real wipe (udev runs: the new networkd drops every foreign rule), and a repair
    assert len(rule_deletions(events, networkd_port(n))) >= foreign_rules(n), "networkd's restart wiped nothing"
    # and the wait did its job for this networkd (it never fails networkd's start: exit 0 always)
    waited = n.journal("-u", "systemd-networkd", "SYSLOG_IDENTIFIER=netd-hook", "-n", "1")
    assert waited and re.match(rf"netd-hook wait: networkd generation \d+ \(pid {n.networkd_pid()}\) is settled",
                               waited[-1]["MESSAGE"]), [w.get("MESSAGE") for w in waited]


def test_the_socket_unit_restarted_then_networkd_restarted(booted: Node) -> None:
    """`systemctl restart systemd-networkd.socket` while networkd runs (systemd refuses, and
    leaves the socket unit stopped), then a networkd restart: PID 1 binds a new socket for the
    new networkd. netd-hook holds no copy of the old one, so the new one gets port 1 again and
    the new networkd's wipe is repaired like any other."""
    n = booted
    n.systemctl("restart", "systemd-networkd.socket", check=False)
    n.systemctl("restart", "systemd-networkd.service")
    rules, routes = n.missing()
    assert not rules and not routes, explain(n, "right after the socket and networkd restarts")
    assert networkd_port(n) == 1
    assert n.show("systemd-networkd.socket", "ActiveState")["ActiveState"] == "active"


def test_a_pod_deleted_by_the_cni_stays_deleted(booted: Node) -> None:
    n = booted
    victim = nodemod.pod_ips(1, 3)[2]
    pod = n.pods[victim]
    full = n.baseline
    n.del_pod(victim)  # its 512/1536 rules, then its host route: CNI DEL
    n.baseline = n.protected()
    try:
        wait_protecting(n)
        wipe_and_wait(n, "networkctl", "reconfigure", "eth1")
        time.sleep(1.0)
        back = [r for r in n.rules() if victim in (r.get("src"), r.get("dst"))]
        assert not back, f"the deleted pod's rules came back: {back}"
        assert not [r for r in n.ip_json("route", "show", "table", "main") if r.get("dst") == victim]
    finally:
        # The pod comes back (CNI ADD, same IP); the next test's fixture puts back anything else
        # missing and waits until the daemon protects it all again.
        n.ip_batch([f"route add {victim} dev {pod.veth} scope link", *n.pod_rule_lines(victim, pod.eni)], force=True)
        n.pods[victim] = pod
        n.baseline = full


def test_every_repair_is_in_the_journal_with_its_numbers(booted: Node) -> None:
    n = booted
    entries = repairs(n)
    assert len(entries) >= 4, [e.get("MESSAGE") for e in entries]
    for e in entries:
        assert e["MESSAGE"].startswith("repair trigger="), e["MESSAGE"]
        for k in ("TRIGGER", "RULES_RESTORED", "ROUTES_RESTORED", "DURATION_MS", "NETWORKD_OWNER"):
            assert f"NETD_HOOK_{k}" in e, (k, e)
    triggers = {e["NETD_HOOK_TRIGGER"].split(":")[0] for e in entries}
    assert "reconfigure" in triggers, triggers


def test_the_units_sandbox_is_in_force(booted: Node) -> None:
    """After all of the above: never restarted, never killed by its seccomp filter."""
    n = booted
    props = n.show("netd-hook", "NRestarts", "Result", "User", "AmbientCapabilities", "CapabilityBoundingSet",
                   "NoNewPrivileges", "ProtectSystem", "PrivateTmp", "PrivateDevices",
                   "RestrictAddressFamilies", "SystemCallErrorNumber")
    assert props["NRestarts"] == "0" and props["Result"] == "success", props
    assert props["User"] == "netd-hook", props
    assert props["AmbientCapabilities"] == props["CapabilityBoundingSet"] == "cap_net_admin", props
    assert props["NoNewPrivileges"] == "yes" and props["ProtectSystem"] == "strict", props
    assert props["PrivateTmp"] == props["PrivateDevices"] == "yes", props
    # its snapshot records this boot's id (kept in the runtime directory)
    boot_id = n.read_file("/run/netd-hook/boot-id").strip()
    assert json.loads(n.read_file("/var/lib/netd-hook/snapshot.json"))["boot_id"] == boot_id
    assert sorted(props["RestrictAddressFamilies"].split()) == ["AF_NETLINK", "AF_UNIX"], props
    pid = n.main_pid("netd-hook")
    proc = dict(line.split(":", 1) for line in n.read_file(f"/proc/{pid}/status").splitlines() if ":" in line)
    uid = n.run("id", "-u", "netd-hook").stdout.strip()
    assert proc["Uid"].split()[0] == uid and proc["NoNewPrivs"].strip() == "1" and proc["Seccomp"].strip() == "2"
    assert int(proc["CapEff"], 16) == 1 << 12  # CAP_NET_ADMIN only
    assert os.stat(n.path(f"/proc/{pid}/ns/mnt")).st_ino != os.stat(n.path("/proc/1/ns/mnt")).st_ino
    log = n.run("journalctl", "-u", "netd-hook", "--no-pager", "-o", "cat").stdout
    for bad in ("SIGSYS", "status=31", "code=dumped", "code=killed", "Traceback", "Failed with result"):
        assert bad not in log, f"{bad!r} in the journal of netd-hook:\n{log[-3000:]}"
