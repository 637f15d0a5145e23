"""Desired vs live -> what to replay, in which order, and what the liveness gate holds back.

Pure: every input is plain data, nothing here reads the kernel or a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

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
class HeldBack:
    """A missing entry the liveness gate holds back: what it belongs to is not alive now."""

    entry: Entry
    reason: str
    dead: bool  # what it belongs to is gone for good (a pod): no longer protected


@dataclass(frozen=True, slots=True)
class Plan:
    routes: tuple[Route, ...] = ()  # added first: rules point at these tables
    rules: tuple[Rule, ...] = ()
    held_back: tuple[HeldBack, ...] = ()  # by the liveness gate

    def __len__(self) -> int:
        return len(self.routes) + len(self.rules)

    def entries(self) -> list[Entry]:
        """In the order they are added: routes, then the rules that point at their tables."""
        return [*self.routes, *self.rules]


def address_alive(addr: str, live: Liveness) -> bool:
    """A pod is alive exactly while its host route is in main on a link networkd does not manage.

    An address of the node itself (the ENI primary address of a 32765 rule) is alive while it is
    configured, and while it is away on a device that still exists: networkd takes a link's
    address away as it configures it (and on carrier loss), and its rule is put back at once, not
    after the address (a rule no packet can match until then; 249 takes ~60 ms to re-add it).
    """
    if addr in live.local_addresses or addr in live.node_addresses:
        return True
    return any(dev not in live.managed for dev in live.host_routes.get(addr, ()))


def gate_rule(rule: Rule, live: Liveness) -> HeldBack | None:
    addr = rule.host_address()
    if addr is None or address_alive(addr, live):
        return None
    return HeldBack(rule, f"{addr} has no host route on an unmanaged link (pod gone)", dead=True)


def gate_route(route: Route, live: Liveness) -> HeldBack | None:
    if route.oif is None or route.oif in live.links:
        return None
    return HeldBack(route, f"device {route.oif} does not exist", dead=False)


E = TypeVar("E", Rule, Route)


def _missing(
    protected: Iterable[E],
    present: Collection[E],
    excluded: Collection[Entry],
    gate: Callable[[E, Liveness], HeldBack | None],
    live: Liveness,
    held_back: list[HeldBack],
) -> list[E]:
    out: list[E] = []
    for entry in protected:
        if entry in present or entry in excluded:
            continue
        held = gate(entry, live)
        if held is None:
            out.append(entry)
        else:
            held_back.append(held)
    return out


def plan(
    snapshot: Snapshot,
    present_rules: Collection[Rule],
    present_routes: Collection[Route],
    live: Liveness,
    excluded: Collection[Entry] = (),
) -> Plan:
    """Everything protected and missing but `excluded` (set aside: the kernel refused it before;
    unattributed: missing after a monitor overrun), with what the liveness gate holds back apart."""
    held_back: list[HeldBack] = []
    routes = _missing(snapshot.protected_routes(), present_routes, excluded, gate_route, live, held_back)
    rules = _missing(snapshot.rules, present_rules, excluded, gate_rule, live, held_back)
    # Deterministic order: routes by table and prefix length (gateway /32 before default via it),
    # rules by priority.
    routes.sort(key=lambda r: (r.family, r.table, -int(r.dst.rsplit("/", 1)[1]), r.dst))
    rules.sort(key=_rule_order)
    return Plan(tuple(routes), tuple(rules), tuple(held_back))


def plan_rules(missing: Iterable[Rule], live: Liveness, excluded: Collection[Entry], limit: int) -> Plan:
    """The first `limit` rules of `missing` (protected, not in the kernel, oldest deletion first)
    the gate lets through, in that order: what a chase puts back while networkd is still
    configuring, the first rule gone first back. The caller keeps `missing` (Tracker.gone), so a
    chase does not walk the whole snapshot."""
    held_back: list[HeldBack] = []
    rules: list[Rule] = []
    for rule in missing:
        if rule in excluded:
            continue
        held = gate_rule(rule, live)
        if held is not None:
            held_back.append(held)
        elif len(rules) < limit:
            rules.append(rule)
        else:
            break
    return Plan((), tuple(rules), tuple(held_back))


def _rule_order(r: Rule) -> tuple[int, int, int, str, str]:
    return (r.priority, r.family, r.table, r.src or "", r.dst or "")
