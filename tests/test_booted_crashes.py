"""Crashes and carrier loss on booted nodes: issue 11, items 3 and 4.

The same three nodes as tests/test_booted.py (Debian 12 / systemd 252, Debian 13 / 257, Debian 12
with Ubuntu 22.04's networkd 249), the same package installed with dpkg and the same layout (30
pods on the primary and two secondary ENIs); its fixtures and helpers are reused, not copied.

- networkd SIGKILLed: systemd restarts it (`Restart=on-failure`, `RestartSec=0` in Debian's
  unit); with udev the new networkd configures every link and wipes every foreign rule;
  netd-hook repairs, and the package's `ExecStartPost=` (`netd-hook wait`) holds the restarted
  unit in `activating` until it has: the moment systemd calls it active, nothing is missing.
- netd-hook SIGKILLed with `networkctl reconfigure eth1`: networkd wipes while no
  netd-hook runs, and the CNI deletes a pod (rules and host route) meanwhile. systemd restarts
  netd-hook 2 s later (`Restart=on-failure`, `RestartSec=2`); it merges its saved snapshot with
  the kernel at start and repairs what is missing. Nothing tells it who deleted what while it was
  down: the deleted pod is kept out by the liveness gate alone (no host route: dead, forgotten).
- Carrier loss on eth1 (`ip link set vpc1 down`, then up; vpc1 is eth1's veth peer): networkd
  249 wipes every foreign rule from `link_carrier_lost()`, and netd-hook repairs at once but
  for eth1's ENI-primary rule, whose address networkd took away with the carrier; 252 and 257
  delete no rule. All three take eth1's address away (the kernel flushes eth1's table routes,
  without a notification: netd-hook sees the address go and puts them back) and configure it
  again when the carrier returns.
- A pod netd-hook learned just before it is killed: in its snapshot file already (the first
  change after a quiet second is written before the status says it is protected), so a wipe
  while netd-hook is down is repaired for that pod too at the restart.

Every verdict reads the kernel inside the node (`ip -j`); outages are measured by the netlink
observer inside the node (tests/node.py's Observer), and printed (run with -s to see them).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests import node as nodemod
from tests import test_booted as booted_tier
from tests.node import Node, Observer, wait_until
from tests.test_booted import (
    NODES,
    REPAIR_TIMEOUT,
    WIPE_TIMEOUT,
    explain,
    foreign_rules,
    networkd_port,
    repairs,
    rule_deletions,
    status,
    wait_protecting,
)

pytestmark = booted_tier.pytestmark  # marker `booted`, and the same skip when the tools are missing

# The module-scoped node (one per entry of NODES, booted once for this module) and the per-test
# `booted` fixture that puts back what an earlier failure left missing.
node = booted_tier.node
booted = booted_tier.booted

RESTART_TIMEOUT = 30.0  # systemd restarts the killed unit within this (RestartSec=0 and 2 s)


# ---------------------------------------------------------------------------------- helpers

def unit(n: Node, name: str) -> dict[str, str]:
    return n.show(name, "ActiveState", "SubState", "MainPID", "NRestarts", "Restart", "RestartUSec", "Result",
                  "ExecMainStartTimestampMonotonic")


def wait_restarted(n: Node, name: str, old_pid: int) -> dict[str, str]:
    """Until systemd has started `name` again (a new MainPID) and calls it active: for a
    Type=notify unit after READY=1, and after its ExecStartPost= commands."""
    last: dict[str, str] = {}

    def up() -> bool:
        nonlocal last
        last = unit(n, name)
        return last["ActiveState"] == "active" and last["MainPID"] not in ("0", str(old_pid))
    try:
        wait_until(up, RESTART_TIMEOUT, f"systemd to restart {name}", 0.02)
    except AssertionError:
        raise AssertionError(f"{name} not restarted: {last}") from None
    return last


def wait_saved(n: Node, timeout: float = 10.0) -> None:
    """Until netd-hook's snapshot file holds every foreign rule and table route there is: it is
    written a second after a change (coalesced), and a daemon killed before that starts again
    from an older picture."""
    want = (foreign_rules(n), len(n.baseline[1]))
    last: tuple[int, int] = (-1, -1)

    def saved() -> bool:
        nonlocal last
        doc = json.loads(n.read_file("/var/lib/netd-hook/snapshot.json"))
        last = (len(doc["rules"]), len(doc["routes"]))
        return last == want
    try:
        wait_until(saved, timeout, "the snapshot file to hold the whole layout", 0.1)
    except AssertionError:
        raise AssertionError(f"snapshot.json has {last[0]} rules, {last[1]} routes; want {want}") from None


def without_pod(rules: frozenset[Any], ip: str) -> frozenset[Any]:
    return frozenset(r for r in rules if json.dumps(ip) not in (v for _, v in r))


def ipv4_addresses(n: Node, dev: str) -> list[str]:
    return [a["local"] for link in n.ip_json("-4", "addr", "show", "dev", dev) for a in link.get("addr_info", [])]


def eni_primary_rule(n: Node, index: int = 1) -> frozenset[Any]:
    ip = n.enis[index].ip
    return frozenset(r for r in n.baseline[0] if dict(r).get("priority") == "32765" and dict(r).get("src") == f'"{ip}"')


def ms(a: int | None, b: int | None) -> str:
    return "-" if a is None or b is None else f"{(b - a) / 1e6:.1f} ms"


def last_add(events: list[list[Any]], tables: list[int]) -> int | None:
    """When the last rule, or route of an ENI table, was added: the moment the kernel was whole
    again, once the oracle has said it is."""
    return max((e[0] for e in events if e[1] == "new" and (e[2] == "rule" or e[4][1] in tables)), default=None)


# ---------------------------------------------------------------------------------- tests

def test_networkd_killed_is_restarted_by_systemd_and_its_wipe_repaired(booted: Node) -> None:
    """SIGKILL to networkd's MainPID: systemd restarts it at once; the new networkd (udev runs)
    wipes every foreign rule through port 1; by the time systemd calls the unit active again
    (after the package's ExecStartPost `netd-hook wait`), the kernel has every protected entry."""
    n = booted
    before = unit(n, "systemd-networkd.service")
    assert before["Restart"] == "on-failure" and before["RestartUSec"] == "0", before  # Debian's unit, all three
    hook = n.main_pid("netd-hook")
    old = int(before["MainPID"])
    port = networkd_port(n)
    foreign = foreign_rules(n)
    with Observer(n) as obs:
        t0 = time.monotonic_ns()
        n.sh(f"kill -KILL {old}")  # the shell's kill: a minbase root has no procps
        after = wait_restarted(n, "systemd-networkd.service", old)
        t_active = time.monotonic_ns()
        rules, routes = n.missing()  # read at once, as the next unit ordered after networkd would
        obs.wait_for(lambda ev: len(rule_deletions(ev, port)) >= foreign, WIPE_TIMEOUT,
                     "the restarted networkd's wipe")
        n.wait_settled()
        time.sleep(0.3)  # networkd 249's second pass, or a late repair, shows up here
        events = obs.events()
    assert not rules and not routes, explain(n, f"when systemd called the restarted networkd active ({after})")
    assert not any(n.missing()), explain(n, "after the restarted networkd settled")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, (before, after)
    assert networkd_port(n) == port == 1  # PID 1 kept the socket: the same port for the new networkd
    deleted = rule_deletions(events, port)
    assert len(deleted) >= foreign, "the restart wiped nothing: is udev running in the node?"
    assert n.main_pid("netd-hook") == hook, "netd-hook was restarted too"
    triggers = [e["NETD_HOOK_TRIGGER"] for e in repairs(n)
                if int(e["__MONOTONIC_TIMESTAMP"]) * 1000 >= t0]
    assert triggers and triggers[0] == "networkd-restart", triggers
    res = nodemod.outage(events, t0)
    assert res["missing"] == 0, res
    print(f"\n{n.label}: networkd SIGKILL: restarted by systemd in {ms(t0, t_active)} (active, after its "
          f"ExecStartPost wait); {res['deleted']} rules deleted by port(s) {res['deleted_by_port']}, outage "
          f"{res['outage_ms']:.1f} ms (first rule deleted -> last back); repairs {triggers}")


def test_netd_hook_killed_during_a_reconfigure_repairs_at_its_restart(booted: Node) -> None:
    """SIGKILL to netd-hook as `networkctl reconfigure eth1` goes out: networkd wipes while no
    netd-hook runs, and meanwhile the CNI deletes a pod (its rules, already wiped, then its host
    route). systemd restarts netd-hook 2 s later; it repairs at start from its snapshot, and the
    liveness gate keeps the deleted pod out: every other entry back, that pod's never."""
    n = booted
    before = unit(n, "netd-hook")
    assert before["Restart"] == "on-failure" and before["RestartUSec"] == "2s", before
    old = int(before["MainPID"])
    port = networkd_port(n)
    victim = nodemod.pod_ips(1, 5)[4]
    pod = n.pods[victim]
    full = n.baseline
    assert without_pod(full[0], victim) != full[0]
    expected = (without_pod(full[0], victim), full[1])
    wait_protecting(n)
    wait_saved(n)
    foreign = foreign_rules(n)
    try:
        with Observer(n) as obs:
            t0 = time.monotonic_ns()
            # The kill goes out with the reconfigure, not after it returns: networkd 257 may have
            # wiped, and netd-hook repaired, before `networkctl reconfigure` returns (measured).
            n.sh(f"networkctl reconfigure eth1 & kill -KILL {old}; wait")
            obs.wait_for(lambda ev: len(rule_deletions(ev, port)) >= foreign, WIPE_TIMEOUT, "networkd's wipe")
            n.del_pod(victim)  # CNI DEL while netd-hook is down: rules (already gone), then host route
            t_del = time.monotonic_ns()
            after = wait_restarted(n, "netd-hook", old)
            t_up = time.monotonic_ns()
            n.baseline = expected
            try:
                wait_until(lambda: not any(n.missing()), REPAIR_TIMEOUT, "everything but the deleted pod back", 0.05)
            except AssertionError:
                raise AssertionError(explain(n, "after netd-hook's restart")) from None
            n.wait_settled()
            time.sleep(1.0)  # a late replay of the deleted pod would show up here
            events = obs.events()
        assert not any(n.missing()), explain(n, "1 s after the repair")
        back = [r for r in n.rules() if victim in (r.get("src"), r.get("dst"))]
        assert not back, f"the pod the CNI deleted while netd-hook was down came back: {back}"
        assert not [r for r in n.ip_json("route", "show", "table", "main") if r.get("dst") == victim]
        # netd-hook was down during the wipe and the deletion: systemd started the new one after both
        # (ExecMainStartTimestampMonotonic is CLOCK_MONOTONIC in µs: nspawn gives the node no time namespace)
        started = int(after["ExecMainStartTimestampMonotonic"]) * 1000
        assert started > t_del, (started, t_del)
        assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, (before, after)
        readds = [e for e in events if e[1] == "new" and e[2] == "rule" and e[0] >= t0]
        assert readds and min(e[0] for e in readds) > started, "rules came back before netd-hook restarted"
        # what stopped the deleted pod: the liveness gate at the start-up repair
        new = [e for e in repairs(n) if int(e["__MONOTONIC_TIMESTAMP"]) * 1000 >= started]
        assert new and new[0]["NETD_HOOK_TRIGGER"] == "startup", [e.get("MESSAGE") for e in new]
        assert sum(int(e["NETD_HOOK_SKIPPED_DEAD"]) for e in new) == 2, [e.get("MESSAGE") for e in new]
        said = n.journal("-u", "netd-hook", "-g", f"not restoring .*{re.escape(victim)}.* has no host route")
        assert len(said) == 2, [e.get("MESSAGE") for e in said]
        res = nodemod.outage(events, t0, key=nodemod.rules_but([victim]))
        assert res["missing"] == 0, res
        st = status(n)
        assert st is not None and st.forgotten.doubt is None, st
        print(f"\n{n.label}: netd-hook SIGKILL during a reconfigure: restarted by systemd "
              f"{ms(t0, started)} after the kill (active {ms(t0, t_up)}); {res['deleted']} rules lost, outage "
              f"{res['outage_ms']:.1f} ms (first rule deleted -> last back, the deleted pod left out); startup "
              f"repair: {new[0]['MESSAGE']}")
    finally:
        # The pod comes back (CNI ADD, same IP); the next test's fixture puts back anything else.
        n.ip_batch([f"route add {victim} dev {pod.veth} scope link", *n.pod_rule_lines(victim, pod.eni)], force=True)
        n.pods[victim] = pod
        n.baseline = full


@contextmanager
def carrier_back(n: Node, peer: str = "vpc1") -> Iterator[None]:
    """Whatever happens in the block, the carrier is back after it (a test that failed with it
    away would leave eth1 configuring, and every later test of the node stuck)."""
    try:
        yield
    finally:
        n.run("ip", "link", "set", peer, "up", check=False)


def test_carrier_loss_of_a_secondary_eni(booted: Node) -> None:
    """eth1 loses its carrier for about a second, then gets it back. 249: every foreign rule is
    wiped through port 1 and put back at once, eth1's 32765 rule too (its address is away);
    252 and 257: no rule is deleted. All: eth1's table routes go with its address, silently, and
    netd-hook puts them back during the loss; eth1 stays `configured` throughout the loss."""
    n = booted
    _, _, version = NODES[n.label]
    port = networkd_port(n)
    held = eni_primary_rule(n)
    flushed = frozenset(r for r in n.baseline[1] if r[0] == 2)  # table 2: the node has IPv4 routes only
    assert len(held) == 1 and len(flushed) == 2, (held, flushed)
    foreign = foreign_rules(n)
    # what the kernel lacks while the carrier is away, once netd-hook has done what it can: the
    # table routes the kernel flushed with the address are put back (netd-hook sees the address's
    # local route go); on 249 eth1's 32765 rule too, before its address (0.4.0 held it back until then)
    during = (frozenset(), frozenset())
    with carrier_back(n), Observer(n) as obs:
        t_down = time.monotonic_ns()
        n.run("ip", "link", "set", "vpc1", "down")
        wait_until(lambda: not ipv4_addresses(n, "eth1"), WIPE_TIMEOUT, "networkd to take eth1's address away", 0.02)
        if version == 249:
            obs.wait_for(lambda ev: len(rule_deletions(ev, port)) >= foreign, WIPE_TIMEOUT, "249's carrier-loss wipe")
        try:
            wait_until(lambda: n.missing() == during, REPAIR_TIMEOUT, "the repair during the loss", 0.05)
        except AssertionError:
            raise AssertionError(explain(n, "during the carrier loss")) from None
        time.sleep(1.0)  # a late wipe, or a late repair, would show up here
        missing_during = n.missing()
        setup_during = n.link_setup_states().get("eth1")
        daemon_during = status(n)
        events = obs.events()
        t_up = time.monotonic_ns()
        n.run("ip", "link", "set", "vpc1", "up")
        n.wait_state("eth1", "configured")
        try:
            wait_until(lambda: not any(n.missing()), REPAIR_TIMEOUT, "whole after the carrier returned", 0.05)
        except AssertionError:
            raise AssertionError(explain(n, "after the carrier returned")) from None
        n.wait_settled()
        time.sleep(0.5)
        after = [e for e in obs.events() if e[0] >= t_up]
    assert not any(n.missing()), explain(n, "0.5 s after the carrier returned")
    assert missing_during == during, (version, missing_during)
    assert setup_during == "configured", setup_during
    deleted = rule_deletions(events)
    assert len(deleted) == (foreign if version == 249 else 0), (version, deleted[:3])
    assert all(e[3] == port for e in deleted), deleted[:3]
    assert rule_deletions(after, port) == [], "a second wipe when the carrier returned"
    repaired = ms(deleted[0][0], last_add(events, [2, 3])) if deleted else "-"
    print(f"\n{n.label}: carrier loss of eth1: {len(deleted)} rules deleted by networkd, repaired during the "
          f"loss in {repaired}; missing while the carrier is away: {len(missing_during[0])} rule(s), "
          f"{len(missing_during[1])} table routes (daemon says missing={getattr(daemon_during, 'missing', None)}, "
          f"held_back={getattr(daemon_during, 'held_back', None)}); "
          f"carrier return -> whole {ms(t_up, last_add(after, [2, 3]))}; "
          f"carrier down -> whole {ms(t_down, last_add(after, [2, 3]))}")


def test_a_pod_added_just_before_netd_hook_is_killed_is_repaired_at_its_restart(booted: Node) -> None:
    """CNI ADD of a pod on eth1; as soon as netd-hook's status.json says it protects it,
    netd-hook is SIGKILLed with a reconfigure of eth1. The pod is alive (host route in place), so
    its rules must be back after the restart. Until 0.3.0 the snapshot was written a second
    after a change: the pod was in neither the file nor the wiped kernel at the restart, it was
    never repaired, and status said nothing was missing. Now the first change after a quiet
    second is written before the status says it is protected."""
    n = booted
    full = n.baseline
    wait_saved(n)  # the rest of the layout is in the file: only the new pod is in the window
    ip = n.add_pods(1, 1, start=len(nodemod.pod_ips(1, 10)) + 20)[0]
    port = networkd_port(n)
    want_rules = foreign_rules(n)
    old = n.main_pid("netd-hook")
    try:
        n.baseline = n.protected()
        wait_until(lambda: json.loads(n.read_file("/run/netd-hook/status.json"))["protected"]["rules"] == want_rules,
                   5, "netd-hook to protect the new pod", 0.01)
        with Observer(n) as obs:
            n.sh(f"networkctl reconfigure eth1 & kill -KILL {old}; wait")
            obs.wait_for(lambda ev: len(rule_deletions(ev, port)) >= want_rules, WIPE_TIMEOUT, "networkd's wipe")
            wait_restarted(n, "netd-hook", old)
            n.wait_settled()
            time.sleep(1.0)
        rules, routes = n.missing()
        st = status(n)
        assert not routes and not rules, (f"{len(rules)} rules of live pod {ip} never came back; the restarted "
                                          f"daemon says missing={getattr(st, 'missing', None)}, forgotten="
                                          f"{st.forgotten.total if st else None}\n" + explain(n, "after the restart"))
    finally:
        n.del_pod(ip)  # CNI DEL; the next test's fixture puts back anything else missing
        n.baseline = full
