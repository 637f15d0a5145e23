"""A cured node, and Ubuntu's common layout, on booted nodes (issue 11, item 5).

**The cured node.** kops and the EKS Amazon Linux 2023 AMI turn networkd's wipes off with a drop-in
(`[Network] ManageForeignRoutes=no`, `ManageForeignRoutingPolicyRules=no`; kops nodeup writes
/usr/lib/systemd/networkd.conf.d/40-disable-manage-foreign-routes.conf, the AL2023 AMI
/etc/systemd/networkd.conf.d/80-release.conf, which is the one written here, with the AMI's text)
and restart networkd. No rule is lost after that. But networkd still takes a managed ENI's address
away and re-adds it at some moments, and the kernel flushes every route through a link when its
last address goes (no RTM_DELROUTE): the ENI's own table goes with it. For each trigger, on each
networkd, two tests: with netd-hook stopped, what the kernel has lost once networkd is done (the
finding: `LOST`), and netd-hook's start puts it back; with netd-hook running, an independent
netlink observer in the node (address, rule and route groups) times the outage from the address
going to the table's last route back. `netd-hook doctor` on that node says it is cured and what
netd-hook still guards, from `netd_hook.commands.doctor.ADDRESS_DROPS`, which must name exactly the
triggers that lost something here.

**Ubuntu's common layout.** The primary ENI managed by networkd (netplan's file), the secondaries
`[Link] Unmanaged=yes`, their address, tables and rules set by the CNI (ipamd's setupENINetwork),
networkd's defaults. Unmanaged keeps networkd off the secondaries' addresses and routes, not off
the rules: configuring the primary (and a restart) still deletes every foreign rule.

Every verdict reads the kernel inside the node (`ip -j`); in every test a pod the CNI deleted
just before the trigger stays deleted. Same nodes, package and helpers as tests/test_booted.py.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from netd_hook.commands import doctor
from tests import node as nodemod
from tests.node import Eni, Node, Observer, wait_until
from tests.test_booted import (
    NODES,
    PODS,
    REPAIR_TIMEOUT,
    explain,
    foreign_rules,
    networkd_port,
    repairs,
    restore,
    rule_deletions,
    status,
    wait_protecting,
)
from tests.test_booted import pytestmark as booted_marks

pytestmark = list(booted_marks)

# The AL2023 AMI's drop-in (amazon-eks-ami templates/al2023/runtime/rootfs/etc/systemd/networkd.conf.d/)
CURE = "/etc/systemd/networkd.conf.d/80-release.conf"
CURE_BODY = ("# Make networkd ignore foreign settings, otherwise it may unexpectedly delete IP\n"
             "# rules and routes added by CNI.\n[Network]\nManageForeignRoutes=no\n"
             "ManageForeignRoutingPolicyRules=no\n")
CARRIER_DOWN = 1.0  # seconds a secondary ENI has no carrier (its peer down), in the carrier-loss trigger
SETTLE = 1.0        # after networkd settles: its late passes (249 configures twice) show up within this


def _carrier_loss(link: str) -> Callable[[Node], None]:
    def run(n: Node) -> None:
        peer = n.enis[int(link[3:])].peer
        n.run("ip", "link", "set", peer, "down")
        time.sleep(CARRIER_DOWN)
        n.run("ip", "link", "set", peer, "up")
    return run


TRIGGERS: dict[str, Callable[[Node], Any]] = {
    "reconfigure-secondary": lambda n: n.run("networkctl", "reconfigure", "eth1"),
    "reconfigure-primary": lambda n: n.run("networkctl", "reconfigure", "eth0"),
    "restart": lambda n: n.systemctl("restart", "systemd-networkd.service"),
    "carrier-loss": _carrier_loss("eth1"),
    "carrier-loss-primary": _carrier_loss("eth0"),
}
# doctor's words for the triggers (netd_hook.commands.doctor.ADDRESS_DROPS)
DOCTOR_NAMES = {"reconfigure-secondary": "networkctl reconfigure", "restart": "networkd restart",
                "carrier-loss": "carrier loss"}

# The finding: on a cured node, the ENI tables whose routes each trigger loses (read from the kernel
# with netd-hook stopped, after networkd is done), per networkd. No trigger loses a rule.
CURED_TRIGGERS = ("reconfigure-secondary", "reconfigure-primary", "restart", "carrier-loss")
LOST: dict[int, dict[str, frozenset[int]]] = {
    249: {"reconfigure-secondary": frozenset({2}), "reconfigure-primary": frozenset(), "restart": frozenset(),
          "carrier-loss": frozenset({2})},
    252: {"reconfigure-secondary": frozenset({2}), "reconfigure-primary": frozenset(),
          "restart": frozenset({2, 3}), "carrier-loss": frozenset({2})},
    257: {"reconfigure-secondary": frozenset(), "reconfigure-primary": frozenset(), "restart": frozenset(),
          "carrier-loss": frozenset({2})},
}

# Ubuntu's layout, networkd's defaults: which triggers wipe every foreign rule (no route is lost).
UBUNTU_TRIGGERS = ("reconfigure-primary", "restart", "reconfigure-secondary", "carrier-loss-primary", "carrier-loss")
WIPES: dict[int, frozenset[str]] = {
    249: frozenset({"reconfigure-primary", "restart", "carrier-loss-primary"}),  # 249 drops rules on carrier loss
    252: frozenset({"reconfigure-primary", "restart"}),
    257: frozenset({"reconfigure-primary", "restart"}),
}
UNMANAGED = "[Match]\nName=eth{i}\n\n[Link]\nUnmanaged=yes\n"


# ---------------------------------------------------------------------------------- observer

# tests/node.py's observer, also bound to RTMGRP_IPV4_IFADDR: ["new"|"del", "addr", port, [family,
# ifindex, address, prefixlen]]. The address going is the moment the kernel flushes the ENI's table.
ADDR_OBSERVER = nodemod.OBSERVER.replace("s.bind((0, 0x40 | 0x80))", "s.bind((0, 0x10 | 0x40 | 0x80))").replace(
    "        elif ty in (24, 25):   # RTM_NEWROUTE, RTM_DELROUTE",
    "        elif ty in (20, 21):   # RTM_NEWADDR, RTM_DELADDR\n"
    "            fam, plen, _, _, index = struct.unpack_from('=BBBBI', body, 0)\n"
    "            a = attrs(body, 8)\n"
    "            key = [fam, index, addr(a.get(2) or a.get(1), fam), plen]\n"
    "            out.write(json.dumps([now, 'new' if ty == 20 else 'del', 'addr', pid, key]) + '\\n')\n"
    "        elif ty in (24, 25):   # RTM_NEWROUTE, RTM_DELROUTE")
assert ADDR_OBSERVER.count("0x10 | 0x40 | 0x80") == 1 and "RTM_NEWADDR" in ADDR_OBSERVER, \
    "tests/node.py's OBSERVER changed: adapt ADDR_OBSERVER"


class AddrObserver(Observer):
    """tests.node.Observer with address events too (its script is the module constant it reads)."""

    def __init__(self, node: Node) -> None:
        with mock.patch.object(nodemod, "OBSERVER", ADDR_OBSERVER):
            super().__init__(node)


def ifindex(n: Node, link: str) -> int:
    return int(n.read_file(f"/sys/class/net/{link}/ifindex"))


def table_outage(events: list[list[Any]], t0: int, n: Node, table: int) -> dict[str, Any] | None:
    """ENI table `table`: from its link's address going (the kernel's silent flush) to both of its
    routes added back; also from the address coming back. None if the address never went."""
    idx, gw = ifindex(n, f"eth{table - 1}"), f"10.0.{table - 1}.1"
    lost = addr_back = back = None
    seen: set[tuple[Any, Any]] = set()
    ports: set[int] = set()
    for ev in events:
        if ev[0] < t0 or ev[1] not in ("new", "del"):
            continue
        if ev[2] == "addr" and ev[4][1] == idx:
            if ev[1] == "del" and lost is None:
                lost = ev
            elif ev[1] == "new" and lost is not None and addr_back is None:
                addr_back = ev
        elif ev[2] == "route" and ev[1] == "new" and lost is not None and ev[4][1] == table and back is None:
            seen.add((ev[4][2], ev[4][3]))
            ports.add(ev[3])
            if {(gw, 32), (None, 0)} <= seen:
                back = ev
    if lost is None:
        return None
    return {"address_removed_by": lost[3], "outage_ms": None if back is None else (back[0] - lost[0]) / 1e6,
            "after_address_ms": None if back is None or addr_back is None else (back[0] - addr_back[0]) / 1e6,
            "added_by": sorted(ports)}


# ---------------------------------------------------------------------------------- nodes

def _boot(param: str, deb: Path) -> Node:
    suite, networkd249, _ = NODES[param]
    n = Node(suite, networkd249=networkd249)
    n.start()
    n.install_deb(deb)
    return n


@pytest.fixture(scope="module", params=list(NODES), ids=list(NODES))
def cured_node(request: pytest.FixtureRequest, deb: Path) -> Iterator[Node]:
    """The VPC CNI layout of tests/test_booted.py, then the cure as kops applies it: the drop-in,
    then `systemctl restart systemd-networkd` with netd-hook running."""
    n = _boot(request.param, deb)
    try:
        n.setup_layout((0, 1, 2), PODS)
        n.baseline = n.protected()
        wait_protecting(n)
        n.path("/etc/systemd/networkd.conf.d").mkdir(parents=True, exist_ok=True)
        n.write_file(CURE, CURE_BODY)
        with Observer(n) as obs:
            n.systemctl("restart", "systemd-networkd.service")
            rules, routes = n.missing()
            n.wait_settled()
            time.sleep(SETTLE)
            events = obs.events()
        # the restart that applies the cure already runs the cured networkd: it wipes no rule
        assert not rule_deletions(events), rule_deletions(events)[:3]
        assert not rules and not routes, explain(n, "right after the cure's networkd restart")
        print(f"\n{n.label}: " + ", ".join(f"{k} {v:.2f}s" for k, v in n.timings.items()))
        yield n
    finally:
        n.close()


def setup_ubuntu_layout(n: Node, pods: dict[int, int]) -> None:
    """Ubuntu's common layout: eth0 managed (as netplan's file would), eth1 and eth2 `Unmanaged=yes`;
    what networkd does not do for them the CNI does (ipamd's setupENINetwork: link up, the ENI's
    primary address, its table, the 32765 rule), then the node rule and `pods`."""
    lines = []
    for i in (0, 1, 2):
        lines += [f"link add eth{i} type veth peer name vpc{i}", f"link set vpc{i} up"]
        text = Node.network_file(0) if i == 0 else UNMANAGED.format(i=i)
        n.write_file(f"/etc/systemd/network/10-eth{i}.network", text)
    n.ip_batch(lines)
    for i in (0, 1, 2):
        n.enis[i] = Eni(i, f"eth{i}", f"vpc{i}", f"10.0.{i}.10", f"10.0.{i}.1", i + 1 if i else None)
    n.systemctl("enable", "--now", "systemd-networkd.service")
    n.wait_settled()
    lines = ["rule add fwmark 0x80/0x80 lookup main priority 1024"]
    for i in (1, 2):
        lines += [f"link set eth{i} up", f"addr add 10.0.{i}.10/24 dev eth{i}", *n.eni_table_lines(i),
                  f"rule add from 10.0.{i}.10 lookup {i + 1} priority 32765"]
    n.ip_batch(lines)
    for eni, count in sorted(pods.items()):
        n.add_pods(eni, count)
    n.wait_settled()


@pytest.fixture(scope="module", params=list(NODES), ids=list(NODES))
def ubuntu_node(request: pytest.FixtureRequest, deb: Path) -> Iterator[Node]:
    n = _boot(request.param, deb)
    try:
        setup_ubuntu_layout(n, PODS)
        states = n.link_setup_states()
        assert (states["eth0"], states["eth1"], states["eth2"]) == ("configured", "unmanaged", "unmanaged"), states
        n.baseline = n.protected()
        assert len(n.baseline[1]) == 4, n.baseline[1]
        wait_protecting(n)
        print(f"\n{n.label} (Ubuntu layout): " + ", ".join(f"{k} {v:.2f}s" for k, v in n.timings.items()))
        yield n
    finally:
        n.close()


def _ready(n: Node) -> Node:
    """netd-hook running (a failed test may have left it stopped) and the layout complete."""
    if n.show("netd-hook", "ActiveState")["ActiveState"] != "active":
        n.systemctl("start", "netd-hook")
    restore(n)
    return n


@pytest.fixture()
def cured(cured_node: Node) -> Node:
    return _ready(cured_node)


@pytest.fixture()
def ubuntu(ubuntu_node: Node) -> Node:
    return _ready(ubuntu_node)


# ---------------------------------------------------------------------------------- helpers

def version(n: Node) -> int:
    return NODES[n.label][2]


@contextlib.contextmanager
def cni_deletes_a_pod(n: Node, guarded: bool = True) -> Iterator[str]:
    """Like CNI DEL just before the trigger (its rules, then its host route); afterwards the pod
    comes back (CNI ADD, same IP) for the next test. `guarded`: netd-hook runs and must have
    forgotten the rules before the trigger."""
    victim = nodemod.pod_ips(1, 6)[5]
    pod, full = n.pods[victim], n.baseline
    n.del_pod(victim)
    n.baseline = n.protected()
    try:
        if guarded:
            wait_protecting(n)
        yield victim
    finally:
        n.ip_batch([f"route add {victim} dev {pod.veth} scope link", *n.pod_rule_lines(victim, pod.eni)], force=True)
        n.pods[victim] = pod
        n.baseline = full


def assert_stays_deleted(n: Node, victim: str) -> None:
    back = [r for r in n.rules() if victim in (r.get("src"), r.get("dst"))]
    assert not back, f"the pod the CNI deleted has its rules back: {back}"
    assert not [r for r in n.ip_json("route", "show", "table", "main") if r.get("dst") == victim]


def settle(n: Node) -> None:
    n.wait_settled()
    time.sleep(SETTLE)


def lost_tables(n: Node) -> tuple[frozenset[Any], frozenset[int], int]:
    """(missing rules, the ENI tables with a missing route, missing routes) against the baseline."""
    rules, routes = n.missing()
    return rules, frozenset(r[0] for r in routes), len(routes)


def start_netd_hook_and_wait(n: Node, what: str) -> float:
    """`systemctl start netd-hook`; seconds until the kernel has the whole baseline again."""
    t0 = time.monotonic()
    n.systemctl("start", "netd-hook")
    try:
        wait_until(lambda: not any(n.missing()), REPAIR_TIMEOUT, "netd-hook's start to put everything back", 0.02)
    except AssertionError:
        raise AssertionError(explain(n, what)) from None
    return time.monotonic() - t0


def restored(entries: list[dict[str, Any]], field: str) -> int:
    return sum(int(e[f"NETD_HOOK_{field}_RESTORED"]) for e in entries)


# ---------------------------------------------------------------------------------- (a) the cured node

@pytest.mark.parametrize("trigger", CURED_TRIGGERS)
def test_what_a_cured_node_loses_without_netd_hook(cured: Node, trigger: str) -> None:
    """netd-hook stopped: once networkd is done, exactly the ENI tables of `LOST` are gone from the
    kernel, and no rule; each went with its link's address, removed by networkd's socket. netd-hook's
    next start puts them back, and not the pod the CNI deleted meanwhile."""
    n = cured
    want = LOST[version(n)][trigger]
    port = networkd_port(n)
    n.systemctl("stop", "netd-hook")
    try:
        with cni_deletes_a_pod(n, guarded=False) as victim, AddrObserver(n) as obs:
            t0 = time.monotonic_ns()
            TRIGGERS[trigger](n)
            settle(n)
            rules, tables, count = lost_tables(n)
            events = obs.events()
            assert not rule_deletions(events, None), f"a cured networkd deleted rules: {rule_deletions(events)[:3]}"
            assert not rules, f"{len(rules)} rules missing on a cured node after {trigger}"
            assert tables == want, f"{n.label} {trigger}: lost the tables {sorted(tables)}, want {sorted(want)}"
            assert count == 2 * len(want)  # both routes of each table: the gateway's /32 and the default
            for t in want:  # the cause: networkd took that ENI's address away
                out = table_outage(events, t0, n, t)
                assert out is not None and out["address_removed_by"] == port, (t, out)
            took = start_netd_hook_and_wait(n, f"netd-hook's start after {trigger}")
            assert_stays_deleted(n, victim)
        entries = [e for e in repairs(n) if e["NETD_HOOK_TRIGGER"] == "startup"]
        if want:
            assert entries and restored(entries[-1:], "ROUTES") == count and restored(entries[-1:], "RULES") == 0, \
                [e.get("MESSAGE") for e in entries[-2:]]
        print(f"\n{n.label} cured, {trigger}, netd-hook stopped: 0 rules lost, "
              + (f"{count} routes (tables {sorted(want)}); netd-hook's start put them back in {took * 1000:.0f} ms"
                 if want else "0 routes"))
    finally:
        if n.show("netd-hook", "ActiveState")["ActiveState"] != "active":
            n.systemctl("start", "netd-hook")


@pytest.mark.parametrize("trigger", CURED_TRIGGERS)
def test_a_cured_node_loses_no_rule_and_netd_hook_puts_back_the_table_routes(cured: Node, trigger: str) -> None:
    """netd-hook running: no rule deleted; what the kernel flushed is back within milliseconds of
    networkd re-adding the address, added by netd-hook (networkd never re-adds the CNI's routes)."""
    n = cured
    want = LOST[version(n)][trigger]
    port = networkd_port(n)
    before = len(repairs(n))
    with cni_deletes_a_pod(n) as victim, AddrObserver(n) as obs:
        t0 = time.monotonic_ns()
        TRIGGERS[trigger](n)
        if trigger == "restart":  # `netd-hook wait` as ExecStartPost: back when systemctl returns
            assert not any(n.missing()), explain(n, "right after `systemctl restart systemd-networkd`")
        try:
            wait_until(lambda: not any(n.missing()), REPAIR_TIMEOUT, "every rule and table route back", 0.02)
        except AssertionError:
            raise AssertionError(explain(n, f"after {trigger}")) from None
        settle(n)
        assert not any(n.missing()), explain(n, f"after {trigger}, once settled")
        events = obs.events()
        assert_stays_deleted(n, victim)
    assert not rule_deletions(events), f"a cured networkd deleted rules: {rule_deletions(events)[:3]}"
    outages = {t: table_outage(events, t0, n, t) for t in (2, 3)}
    for t in (2, 3):
        if t not in want:
            continue
        out = outages[t]
        assert out is not None and out["outage_ms"] is not None, (t, out)
        assert out["address_removed_by"] == port and port not in out["added_by"], out
    entries = repairs(n)[before:]
    assert restored(entries, "RULES") == 0, [e.get("MESSAGE") for e in entries]
    assert restored(entries, "ROUTES") == 2 * len(want), [e.get("MESSAGE") for e in entries]
    figures = ", ".join(f"table {t}: outage {o['outage_ms']:.1f} ms, {o['after_address_ms']:.1f} ms after the "
                        f"address was back" for t, o in sorted(outages.items()) if o and o["outage_ms"] is not None)
    batch = ", ".join(f"{e['NETD_HOOK_DURATION_MS']} ms" for e in entries)
    print(f"\n{n.label} cured, {trigger}, netd-hook running: 0 rules deleted; "
          f"{figures or 'nothing lost'}{f'; batch {batch}' if batch else ''}")


def test_doctor_calls_the_cured_node_cured_and_says_what_netd_hook_guards(cured: Node) -> None:
    """The installed `netd-hook doctor`, on the node itself: cured, the AL2023 drop-in named, and the
    triggers it names for this networkd are exactly those that lost routes above (`LOST`)."""
    n = cured
    v = version(n)
    r = n.run("netd-hook", "doctor", "--json", check=False)
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["exit_code"] == 0 and doc["cured"] is True, r.stdout
    assert doc["systemd_version"] == v
    settings = doc["settings"]
    assert settings["ManageForeignRoutingPolicyRules"] == {"value": False, "source": f"{CURE}:5", "invalid": []}
    assert settings["ManageForeignRoutes"] == {"value": False, "source": f"{CURE}:4", "invalid": []}
    by = {f["check"]: f for f in doc["findings"]}
    f = by["networkd.cured"]
    assert f["severity"] == "ok", f
    named = {t for t, words in DOCTOR_NAMES.items() if words in doctor.ADDRESS_DROPS[v]}
    assert named == {t for t, tables in LOST[v].items() if tables}, (doctor.ADDRESS_DROPS[v], LOST[v])
    assert f["summary"] == ("cured: networkd deletes none of the CNI's rules or routes; netd-hook still guards the "
                            "ENI table routes the kernel flushes when networkd re-adds an ENI's address "
                            f"(systemd {v}: {', '.join(doctor.ADDRESS_DROPS[v])})"), f["summary"]
    assert "Links networkd manages now (from netd-hook's status): eth0, eth1, eth2." in f["detail"], f["detail"]
    assert by["networkd.ManageForeignRoutingPolicyRules"]["severity"] == "ok"
    text = n.run("netd-hook", "doctor", check=False).stdout
    assert text.splitlines()[-1].endswith(": cured: networkd deletes none of the CNI's rules or routes; netd-hook "
                                          "guards the ENI table routes the kernel flushes"), text
    print(f"\n{n.label} cured, netd-hook doctor:\n{text}")
    # netd-hook stopped: still cured, but it says that nothing puts the routes back
    n.systemctl("stop", "netd-hook")
    try:
        r = n.run("netd-hook", "doctor", "--json", check=False)
        doc = json.loads(r.stdout)
        f = next(x for x in doc["findings"] if x["check"] == "networkd.cured")
        assert r.returncode == 0 and f["severity"] == "info" and f["summary"].endswith("netd-hook is not running"), f
    finally:
        n.systemctl("start", "netd-hook")


# ---------------------------------------------------------------------------------- (c) Ubuntu's layout

@pytest.mark.parametrize("trigger", UBUNTU_TRIGGERS)
def test_ubuntu_layout_without_netd_hook(ubuntu: Node, trigger: str) -> None:
    """netd-hook stopped, networkd's defaults: a trigger of `WIPES` deletes every foreign rule
    (through networkd's socket), the others nothing; no route is ever lost (networkd leaves the
    unmanaged secondaries' addresses alone). netd-hook's next start puts the rules back."""
    n = ubuntu
    wipes = trigger in WIPES[version(n)]
    port = networkd_port(n)
    n.systemctl("stop", "netd-hook")
    try:
        with cni_deletes_a_pod(n, guarded=False) as victim, AddrObserver(n) as obs:
            want = foreign_rules(n)
            TRIGGERS[trigger](n)
            settle(n)
            rules, tables, _ = lost_tables(n)
            events = obs.events()
            assert not tables, f"{n.label} Ubuntu layout, {trigger}: lost the routes of tables {sorted(tables)}"
            assert not [e for e in events if e[2] == "addr" and e[1] == "del" and
                        e[4][1] in (ifindex(n, "eth1"), ifindex(n, "eth2"))], "networkd touched an unmanaged ENI"
            if wipes:
                assert len(rules) == want and len(rule_deletions(events, port)) == want, (len(rules), want)
                took = start_netd_hook_and_wait(n, f"netd-hook's start after {trigger}")
            else:
                assert not rules and not rule_deletions(events), rule_deletions(events)[:3]
                took = 0.0
                n.systemctl("start", "netd-hook")
            assert_stays_deleted(n, victim)
        print(f"\n{n.label} Ubuntu layout, {trigger}, netd-hook stopped: "
              + (f"{want} rules deleted, 0 routes; netd-hook's start put them back in {took * 1000:.0f} ms"
                 if wipes else "nothing lost"))
    finally:
        if n.show("netd-hook", "ActiveState")["ActiveState"] != "active":
            n.systemctl("start", "netd-hook")


@pytest.mark.parametrize("trigger", UBUNTU_TRIGGERS)
def test_ubuntu_layout_is_repaired(ubuntu: Node, trigger: str) -> None:
    n = ubuntu
    wipes = trigger in WIPES[version(n)]
    port = networkd_port(n)
    before = len(repairs(n))
    with cni_deletes_a_pod(n) as victim, AddrObserver(n) as obs:
        want = foreign_rules(n)
        t0 = time.monotonic_ns()
        TRIGGERS[trigger](n)
        try:
            wait_until(lambda: not any(n.missing()), REPAIR_TIMEOUT, "every rule and table route back", 0.02)
        except AssertionError:
            raise AssertionError(explain(n, f"after {trigger}")) from None
        settle(n)
        assert not any(n.missing()), explain(n, f"after {trigger}, once settled")
        events = obs.events()
        assert_stays_deleted(n, victim)
    out = nodemod.outage(events, t0)
    entries = repairs(n)[before:]
    if wipes:
        assert out["deleted_by_port"] == {port: want} and out["missing"] == 0 and out["outage_ms"] is not None, out
        assert restored(entries, "RULES") == want and restored(entries, "ROUTES") == 0, [e["MESSAGE"] for e in entries]
    else:
        assert out["deleted"] == 0 and restored(entries, "RULES") == 0, (out, [e["MESSAGE"] for e in entries])
    print(f"\n{n.label} Ubuntu layout, {trigger}, netd-hook running: "
          + (f"{want} rules deleted by port {port}, outage {out['outage_ms']:.1f} ms; batch "
             + ", ".join(f"{e['NETD_HOOK_DURATION_MS']} ms" for e in entries) if wipes else "nothing lost"))


def test_doctor_on_the_ubuntu_layout(ubuntu: Node) -> None:
    """Not cured: the rule wipe is still on (a warning, netd-hook guards it), and doctor says that
    Unmanaged=yes on the secondaries protects their routes but not the rules."""
    n = ubuntu
    r = n.run("netd-hook", "doctor", "--json", check=False)
    doc = json.loads(r.stdout)
    by = {f["check"]: f for f in doc["findings"]}
    assert r.returncode == 1 and doc["cured"] is False, r.stdout
    assert by["networkd.ManageForeignRoutingPolicyRules"]["severity"] == "warning"
    f = by["networkd.unmanaged"]
    assert f["severity"] == "info" and f["summary"].startswith(
        "Unmanaged=yes in 10-eth1.network (Name=eth1), 10-eth2.network (Name=eth2): "), f
    assert "manager-wide" in f["summary"] and "amazon-vpc-cni-k8s #1600" in f["detail"], f
    links = by["networkd.links"]["summary"]
    assert links.startswith("networkd manages 1 link: eth0 (configured)"), links
    print(f"\n{n.label} Ubuntu layout, netd-hook doctor:\n{n.run('netd-hook', 'doctor', check=False).stdout}")


def test_the_units_sandbox_held(cured_node: Node) -> None:
    """After all of the above on the cured node: netd-hook never crashed (only our own stops)."""
    n = cured_node
    assert n.show("netd-hook", "ActiveState")["ActiveState"] == "active"
    log = n.run("journalctl", "-u", "netd-hook", "--no-pager", "-o", "cat").stdout
    for bad in ("SIGSYS", "status=31", "code=dumped", "Traceback", "Failed with result"):
        assert bad not in log, f"{bad!r} in the journal of netd-hook:\n{log[-3000:]}"
    assert getattr(status(n), "missing", None) == 0
