"""Kernel objects netd-hook protects: canonical, hashable values with a JSON round-trip.

A `Rule` or `Route` holds exactly the attributes needed to re-create it; two values are equal
when the kernel would consider them the same object (so set difference is the "missing" test).
Routes name their device (`oif`) rather than its ifindex: an ENI that is detached and
re-attached keeps its name but gets a new index.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import reprlib
import socket
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
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
# The most of a snapshot file that is read. 10,000 pod rules take 1.0 MB, with 10,000 routes
# 2.6 MB; with every attribute set and IPv6 everywhere, 20,000 entries take 6.8 MB. 32 MiB
# holds 94,000 such worst-case entries (a margin of 4.7), and bounds what a corrupt or hostile
# file costs to decode: about 2 s and 150 MB at the cap (measured on 3.11).
SNAPSHOT_MAX_BYTES = 32 << 20

U8 = 0xFF
U32 = 0xFFFFFFFF
IFNAMSIZ = 16  # with its NUL: names are 1..15 bytes (if.h)


class FormatError(ValueError):
    """A snapshot document that does not decode to valid rules and routes. A ValueError, so that
    store.load and ops.read_snapshot, which catch ValueError, set the file aside."""


class _Short(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 60
        self.maxlong = 40
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 6
        self.maxlevel = 3


_SHORT = _Short()


def show(value: Any) -> str:
    """`repr(value)` for an error message: one line, at most about 100 characters, whatever the
    value (a 1 MiB string, a list nested 500 deep, a 4,000-digit integer)."""
    try:
        text = _SHORT.repr(value)
    except (ValueError, RecursionError):  # int too large for str(); pathological nesting
        return f"<{type(value).__name__}>"
    return text if len(text) <= 100 else f"{text[:96]}...{text[-1]}"


# Asked of every rule a wipe deletes and every rule put back (the gate, the restored pods'
# ledger): parsing the prefix each time was the chase's largest cost (~5 us a rule). One entry
# per distinct prefix (a pod address); the bound only stops unbounded growth under pod churn.
@functools.lru_cache(maxsize=1 << 15)
def _host_of(prefix: str) -> str | None:
    net = ipaddress.ip_network(prefix, strict=False)  # the kernel keeps host bits
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else None


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
            if prefix is not None and (addr := _host_of(prefix)) is not None:
                return addr
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


# Decoding: every field is checked for its type and range, so that nothing downstream (the
# tracker's sets, the netlink encoder, `describe`) meets a value it cannot handle. What is
# accepted is at least everything netlink.decode_rule/decode_route produce (the daemon must be
# able to read back what it saved), and the error names the entry, the field and the value.

_Check = Callable[[Any, int], str]  # (value, the entry's family) -> "" or why the value is wrong


def _uint(hi: int) -> _Check:
    def check(value: Any, family: int) -> str:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
            return f"not an integer in 0..{hi}"
        return ""
    return check


def _optional(check: _Check) -> _Check:
    def optional(value: Any, family: int) -> str:
        return "" if value is None else check(value, family)
    return optional


def _family(value: Any, family: int) -> str:
    if isinstance(value, bool) or value not in FAMILIES:
        return "the family is not 2 (IPv4) or 10 (IPv6)"
    return ""


def _af(family: int) -> tuple[int, str, int]:
    return (socket.AF_INET, "IPv4", 32) if family == AF_INET else (socket.AF_INET6, "IPv6", 128)


def _packed(text: str, af: int) -> bytes | None:
    try:
        return socket.inet_pton(af, text)  # strict: no scope ids, spaces or non-ASCII digits
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


def _address(value: Any, family: int) -> str:
    af, name, _ = _af(family)
    packed = _packed(value, af) if isinstance(value, str) else None
    if packed is None:
        return f"not an {name} address"
    if value not in (socket.inet_ntop(af, packed), str(ipaddress.ip_address(packed))):
        return f"not a canonical {name} address"
    return ""


def _prefix_parts(value: Any, family: int) -> tuple[bytes, int] | str:
    af, name, bits = _af(family)
    if not isinstance(value, str):
        return f"not an {name} prefix"
    addr, slash, length = value.partition("/")
    packed = _packed(addr, af)
    if (packed is None or not slash or not length.isascii() or not length.isdigit() or len(length) > 3
            or int(length) > bits or str(int(length)) != length):
        return f"not an {name} prefix"
    return packed, int(length)


def _forms(af: int, packed: bytes, length: int) -> tuple[str, str]:
    # the form netlink.decode produces (inet_ntop), or Python's: they differ for IPv4-mapped addresses
    return f"{socket.inet_ntop(af, packed)}/{length}", f"{ipaddress.ip_address(packed)}/{length}"


def _prefix(value: Any, family: int) -> str:
    """A route's destination: the kernel refuses host bits there, so the network form only."""
    parts = _prefix_parts(value, family)
    if isinstance(parts, str):
        return parts
    af, name, _ = _af(family)
    network = ipaddress.IPv4Network if family == AF_INET else ipaddress.IPv6Network
    net = network(parts, strict=False)
    forms = _forms(af, net.network_address.packed, parts[1])
    if value not in forms:
        return f"not a canonical {name} prefix (that would be {forms[1]!r})"
    return ""


def _rule_prefix(value: Any, family: int) -> str:
    """A rule's from/to: the kernel keeps the address as given (`from 10.1.1.5/24` is its own
    rule, distinct from `from 10.1.1.0/24`), so host bits are part of the key; the address is
    still in its canonical spelling."""
    parts = _prefix_parts(value, family)
    if isinstance(parts, str):
        return parts
    af, name, _ = _af(family)
    forms = _forms(af, *parts)
    if value not in forms:
        return f"not a canonical {name} prefix (that would be {forms[1]!r})"
    return ""


def _ifname(value: Any, family: int) -> str:
    # netlink._str decodes the kernel's 1..15 bytes with errors="replace": at most 15 characters
    if not isinstance(value, str) or not 0 < len(value) < IFNAMSIZ or "\0" in value:
        return f"not an interface name (1..{IFNAMSIZ - 1} characters)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "not an interface name (not encodable as UTF-8)"
    return ""


_U8, _U32 = _uint(U8), _uint(U32)
# In dataclass field order; "family" first, as the prefixes and addresses are checked against it.
RULE_FIELDS: dict[str, _Check] = {
    "family": _family, "priority": _U32, "table": _U32, "action": _U8,
    "src": _optional(_rule_prefix), "dst": _optional(_rule_prefix),
    "fwmark": _optional(_U32), "fwmask": _optional(_U32),
    "iifname": _optional(_ifname), "oifname": _optional(_ifname), "tos": _U8, "flags": _U32,
    "goto": _optional(_U32), "suppress_prefixlen": _optional(_U32), "suppress_ifgroup": _optional(_U32),
    "l3mdev": _optional(_U8), "protocol": _U8,
}
ROUTE_FIELDS: dict[str, _Check] = {
    "family": _family, "table": _U32, "dst": _prefix, "oif": _optional(_ifname),
    "gateway": _optional(_address), "prefsrc": _optional(_address), "priority": _optional(_U32),
    "tos": _U8, "scope": _U8, "type": _U8, "protocol": _U8,
}


def _decode(cls: type[Rule] | type[Route], raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise FormatError(f"{where}: bad value {show(raw)} (not an object)")
    checks = RULE_FIELDS if cls is Rule else ROUTE_FIELDS
    unknown = sorted(set(raw) - set(checks))
    if unknown:
        raise FormatError(f"{where}: unknown keys {show(unknown)}")
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    for key, check in checks.items():
        if key not in raw:
            if key in required:
                raise FormatError(f"{where}: {key} is missing")
            continue
        why = check(raw[key], raw["family"])
        if why:
            raise FormatError(f"{where}.{key}: bad value {show(raw[key])} ({why})")
    return cls(**raw)


@dataclass(frozen=True, slots=True)
class Saved:
    """A snapshot as a file holds it: with the id of the boot whose kernel it describes (None in
    files written before netd-hook 0.3.0)."""

    snapshot: Snapshot
    boot_id: str | None = None


# A boot's id (store.Boot): a random UUID in lower case, as uuid4() and the kernel's boot_id write it
BOOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def snapshot_to_json(snapshot: Snapshot, boot_id: str | None = None) -> dict[str, Any]:
    def compact(entry: Entry) -> dict[str, Any]:
        # Unset attributes are left out: the file stays readable and small at 10,000 rules.
        return {k: v for k, v in asdict(entry).items() if v is not None}

    doc: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "rules": sorted((compact(r) for r in snapshot.rules), key=_sort_key),
        "routes": sorted((compact(r) for r in snapshot.routes), key=_sort_key),
    }
    if boot_id is not None:
        doc["boot_id"] = boot_id
    return doc


def _sort_key(d: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, str(v)) for k, v in d.items()))


_SNAPSHOT_KEYS = ("format", "version", "rules", "routes", "boot_id")


def snapshot_from_json(doc: Any) -> Snapshot:
    """The snapshot in `doc` (parsed JSON); FormatError, naming field and value, if anything is wrong."""
    return saved_from_json(doc).snapshot


def saved_from_json(doc: Any) -> Saved:
    """The snapshot in `doc` and the boot it was taken in; FormatError if anything is wrong."""
    if not isinstance(doc, dict):
        raise FormatError(f"snapshot is not a JSON object: {show(doc)}")
    if doc.get("format") != SNAPSHOT_FORMAT:
        raise FormatError(f"format is {show(doc.get('format'))}, expected {SNAPSHOT_FORMAT!r}")
    version = doc.get("version")
    if isinstance(version, bool) or version != SNAPSHOT_VERSION:
        raise FormatError(f"version {show(version)} is not supported (expected {SNAPSHOT_VERSION})")
    unknown = sorted(set(doc) - set(_SNAPSHOT_KEYS))
    if unknown:
        raise FormatError(f"snapshot has unknown keys {show(unknown)}")
    rules, routes = doc.get("rules"), doc.get("routes")
    if not isinstance(rules, list) or not isinstance(routes, list):
        raise FormatError(f"rules and routes must be lists, not {type(rules).__name__} and {type(routes).__name__}")
    boot_id = doc.get("boot_id")
    if boot_id is not None and not (isinstance(boot_id, str) and BOOT_ID.fullmatch(boot_id)):
        raise FormatError(f"boot_id: bad value {show(boot_id)} (not a boot id)")
    return Saved(Snapshot(
        rules=frozenset(_decode(Rule, r, f"rules[{i}]") for i, r in enumerate(rules)),
        routes=frozenset(_decode(Route, r, f"routes[{i}]") for i, r in enumerate(routes)),
    ), boot_id)


def decode_snapshot(raw: bytes) -> Snapshot:
    """A snapshot file's bytes -> Snapshot (see decode_saved)."""
    return decode_saved(raw).snapshot


def decode_saved(raw: bytes) -> Saved:
    """A snapshot file's bytes -> Saved. Raises FormatError and nothing else: not JSON, not
    UTF-8, nested too deeply (RecursionError), too large to decode (MemoryError), or any field
    of the wrong type or out of range."""
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise FormatError("not a snapshot: JSON nested too deeply") from None
    except MemoryError:
        raise FormatError("not a snapshot: too large to decode") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4,300 digits
        raise FormatError(f"not JSON: {exc}") from None
    return saved_from_json(doc)
