"""Desired vs live -> what to replay, in which order, and what the liveness gate holds back.

Pure: every input is plain data, nothing here reads the kernel or a clock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from .model import Entry, Route, Rule, Snapshot


@dataclass(frozen=True, slots=True)
class Liveness:
    """Facts from the live kernel (and networkd) that decide whether an entry may come back."""

    links: Collection[str]  # device names that exist
    host_routes: Mapping[str, Collection[str]]  # address -> devices holding its host route in main
    local_addresses: Collection[str]  # addresses configured on this node now (table local)
    managed: Collection[str]  # devices networkd manages
    node_addresses: Collection[str] = ()  # addresses seen configured on a device that still exists


@dataclass(frozen=True, slots=True)
class Skip:
    entry: Entry
    reason: str
    dead: bool  # the thing it belongs to is gone for good: forget it


@dataclass(frozen=True, slots=True)
class Plan:
    routes: tuple[Route, ...] = ()  # added first: rules point at these tables
    rules: tuple[Rule, ...] = ()
    skipped: tuple[Skip, ...] = ()

    def __len__(self) -> int:
        return len(self.routes) + len(self.rules)


def address_alive(addr: str, live: Liveness) -> bool:
    """A pod is alive exactly while its host route is in main on a link networkd does not manage.

    An address configured on the node itself (the ENI primary address of a 32765 rule) is alive
    while it is configured.
    """
    if addr in live.local_addresses:
        return True
    return any(dev not in live.managed for dev in live.host_routes.get(addr, ()))


def gate_rule(rule: Rule, live: Liveness) -> Skip | None:
    addr = rule.host_address()
    if addr is None or address_alive(addr, live):
        return None
    if addr in live.node_addresses:
        # networkd re-adds a reconfigured link's address; the rule returns with it.
        return Skip(rule, f"node address {addr} is not configured right now", dead=False)
    return Skip(rule, f"{addr} has no host route on an unmanaged link (pod gone)", dead=True)


def gate_route(route: Route, live: Liveness) -> Skip | None:
    if route.oif is None or route.oif in live.links:
        return None
    return Skip(route, f"device {route.oif} does not exist", dead=False)


def plan(
    snapshot: Snapshot,
    present_rules: Collection[Rule],
    present_routes: Collection[Route],
    live: Liveness,
    set_aside: Collection[Entry] = (),
) -> Plan:
    """Everything protected and missing, minus what the gate holds back and what failed before."""
    skipped: list[Skip] = []
    routes: list[Route] = []
    rules: list[Rule] = []
    for route in snapshot.protected_routes():
        if route in present_routes or route in set_aside:
            continue
        skip = gate_route(route, live)
        if skip is None:
            routes.append(route)
        else:
            skipped.append(skip)
    for rule in snapshot.rules:
        if rule in present_rules or rule in set_aside:
            continue
        skip = gate_rule(rule, live)
        if skip is None:
            rules.append(rule)
        else:
            skipped.append(skip)
    # Deterministic order: routes by table and prefix length (gateway /32 before default via it),
    # rules by priority.
    routes.sort(key=lambda r: (r.family, r.table, -int(r.dst.rsplit("/", 1)[1]), r.dst))
    rules.sort(key=lambda r: (r.priority, r.family, r.table, r.src or "", r.dst or ""))
    return Plan(tuple(routes), tuple(rules), tuple(skipped))
