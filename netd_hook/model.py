"""Kernel objects netd-hook protects: canonical, hashable values with a JSON round-trip.

A `Rule` or `Route` holds exactly the attributes needed to re-create it; two values are equal
when the kernel would consider them the same object (so set difference is the "missing" test).
Routes name their device (`oif`) rather than its ifindex: an ENI that is detached and
re-attached keeps its name but gets a new index.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, fields
from typing import Any

AF_INET = 2
AF_INET6 = 10
FAMILIES = (AF_INET, AF_INET6)

FR_ACT_TO_TBL = 1

# Routing tables the kernel owns, never protected as route tables (rtnetlink.h).
RT_TABLE_DEFAULT = 253
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
RESERVED_TABLES = frozenset({RT_TABLE_DEFAULT, RT_TABLE_MAIN, RT_TABLE_LOCAL})

RTN_UNICAST = 1
RTN_LOCAL = 2

# rtnetlink.h RTPROT_* values and the names `ip` prints for them.
PROTOCOLS: dict[str, int] = {
    "unspec": 0,
    "redirect": 1,
    "kernel": 2,
    "boot": 3,
    "static": 4,
    "ra": 9,
    "dhcp": 16,
}

SNAPSHOT_FORMAT = "netd-hook/snapshot"
SNAPSHOT_VERSION = 1


class FormatError(ValueError):
    """A snapshot document that does not decode to valid rules and routes."""


def canonical_prefix(value: str) -> str:
    """'10.1.1.5' or '10.1.1.5/32' -> '10.1.1.5/32'; raises ValueError on garbage."""
    return str(ipaddress.ip_network(value, strict=False))


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule (`ip rule`), as the kernel keys it."""

    family: int
    priority: int
    table: int
    action: int = FR_ACT_TO_TBL
    src: str | None = None  # canonical prefix, e.g. "10.1.1.5/32"
    dst: str | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    iifname: str | None = None
    oifname: str | None = None
    tos: int = 0
    flags: int = 0  # FIB_RULE_INVERT etc.
    goto: int | None = None
    suppress_prefixlen: int | None = None
    suppress_ifgroup: int | None = None
    l3mdev: int | None = None
    protocol: int = 0

    def host_address(self) -> str | None:
        """The single pod address this rule is keyed on (/32 or /128 src or dst), if any."""
        for prefix in (self.src, self.dst):
            if prefix is not None:
                net = ipaddress.ip_network(prefix)
                if net.prefixlen == net.max_prefixlen:
                    return str(net.network_address)
        return None

    def describe(self) -> str:
        parts = [f"pref {self.priority}"]
        if self.flags & 0x2:
            parts.append("not")
        parts.append(f"from {self.src or 'all'}")
        if self.dst:
            parts.append(f"to {self.dst}")
        if self.fwmark is not None:
            parts.append(f"fwmark {self.fwmark:#x}/{(self.fwmask or 0xFFFFFFFF):#x}")
        if self.iifname:
            parts.append(f"iif {self.iifname}")
        if self.oifname:
            parts.append(f"oif {self.oifname}")
        parts.append(f"lookup {self.table}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Route:
    """One unicast route in a non-reserved table (`ip route show table N`)."""

    family: int
    table: int
    dst: str  # canonical prefix; "0.0.0.0/0" is the default route
    oif: str | None = None  # device name
    gateway: str | None = None
    prefsrc: str | None = None
    priority: int | None = None  # metric
    tos: int = 0
    scope: int = 0
    type: int = RTN_UNICAST
    protocol: int = 3  # boot, what `ip route add` uses

    def describe(self) -> str:
        parts = [self.dst]
        if self.gateway:
            parts.append(f"via {self.gateway}")
        if self.oif:
            parts.append(f"dev {self.oif}")
        parts.append(f"table {self.table}")
        if self.priority is not None:
            parts.append(f"metric {self.priority}")
        return " ".join(parts)


Entry = Rule | Route


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What netd-hook protects: rules, and the routes of tables that rules look up."""

    rules: frozenset[Rule] = frozenset()
    routes: frozenset[Route] = frozenset()

    def protected_routes(self) -> frozenset[Route]:
        tables = {r.table for r in self.rules}
        return frozenset(r for r in self.routes if r.table in tables)


def _decode(cls: type[Rule] | type[Route], raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise FormatError(f"{cls.__name__.lower()} entry is not an object: {raw!r}")
    names = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(names)
    if unknown:
        raise FormatError(f"{cls.__name__.lower()} has unknown keys {sorted(unknown)}")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, str, type(None))):
            raise FormatError(f"{cls.__name__.lower()} key {key!r}: bad value {value!r}")
    try:
        obj = cls(**raw)
        for key in ("src", "dst"):
            value = getattr(obj, key, None)
            if value is not None and canonical_prefix(value) != value:
                raise FormatError(f"{key} {value!r} is not a canonical prefix")
        for key in ("gateway", "prefsrc"):
            value = getattr(obj, key, None)
            if value is not None:
                ipaddress.ip_address(value)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{cls.__name__.lower()} {raw!r}: {exc}") from exc
    if obj.family not in FAMILIES:
        raise FormatError(f"{cls.__name__.lower()} family {obj.family!r} is not 2 or 10")
    return obj


def snapshot_to_json(snapshot: Snapshot) -> dict[str, Any]:
    def compact(entry: Entry) -> dict[str, Any]:
        # Unset attributes are left out: the file stays readable and small at 10,000 rules.
        return {k: v for k, v in asdict(entry).items() if v is not None}

    return {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "rules": sorted((compact(r) for r in snapshot.rules), key=_sort_key),
        "routes": sorted((compact(r) for r in snapshot.routes), key=_sort_key),
    }


def _sort_key(d: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, str(v)) for k, v in d.items()))


def snapshot_from_json(doc: Any) -> Snapshot:
    if not isinstance(doc, dict):
        raise FormatError("snapshot is not a JSON object")
    if doc.get("format") != SNAPSHOT_FORMAT:
        raise FormatError(f"format is {doc.get('format')!r}, expected {SNAPSHOT_FORMAT!r}")
    if doc.get("version") != SNAPSHOT_VERSION:
        raise FormatError(f"version {doc.get('version')!r} is not supported (expected {SNAPSHOT_VERSION})")
    rules, routes = doc.get("rules"), doc.get("routes")
    if not isinstance(rules, list) or not isinstance(routes, list):
        raise FormatError("rules and routes must be lists")
    return Snapshot(
        rules=frozenset(_decode(Rule, r) for r in rules),
        routes=frozenset(_decode(Route, r) for r in routes),
    )
