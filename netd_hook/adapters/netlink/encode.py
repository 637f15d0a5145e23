"""Requests, encoded with pyroute2 ahead of time (the repair path only concatenates bytes)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ...core.kernel import BatchResult as BatchResult  # re-exported: the adapters' callers get them here too
from ...core.kernel import Change as Change
from ...core.kernel import Dump as Dump
from ...core.kernel import HostRoute as HostRoute
from ...core.kernel import Item as Item
from ...core.kernel import Link as Link
from ...core.kernel import LocalAddress as LocalAddress
from ...core.kernel import Unsupported as Unsupported
from ...core.model import (
    Entry,
    Route,
    Rule,
)
from ._pyroute2 import fibmsg, rtmsg
from .wire import ADD_FLAGS, DEL_FLAGS, RT_TABLE_COMPAT, RTM_DELROUTE, RTM_DELRULE, RTM_NEWROUTE, RTM_NEWRULE


def _encoded(msg: Any, mtype: int, flags: int, seq: int) -> bytes:
    """A pyroute2 message with its header filled in, as bytes."""
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)


def encode_rule(rule: Rule, mtype: int, flags: int, seq: int = 0) -> bytes:
    msg = fibmsg()
    msg["family"] = rule.family
    msg["table"] = rule.table if rule.table < 256 else RT_TABLE_COMPAT
    msg["action"] = rule.action
    msg["tos"] = rule.tos
    msg["flags"] = rule.flags
    attrs: list[tuple[str, Any]] = [("FRA_PRIORITY", rule.priority), ("FRA_TABLE", rule.table)]
    if rule.src is not None:
        addr, _, length = rule.src.partition("/")
        msg["src_len"] = int(length)
        attrs.append(("FRA_SRC", addr))
    if rule.dst is not None:
        addr, _, length = rule.dst.partition("/")
        msg["dst_len"] = int(length)
        attrs.append(("FRA_DST", addr))
    optional = (
        ("FRA_FWMARK", rule.fwmark),
        ("FRA_FWMASK", rule.fwmask),
        ("FRA_IIFNAME", rule.iifname),
        ("FRA_OIFNAME", rule.oifname),
        ("FRA_GOTO", rule.goto),
        ("FRA_SUPPRESS_PREFIXLEN", rule.suppress_prefixlen),
        ("FRA_SUPPRESS_IFGROUP", rule.suppress_ifgroup),
        ("FRA_L3MDEV", rule.l3mdev),
    )
    attrs.extend((k, v) for k, v in optional if v is not None)
    if rule.protocol:
        attrs.append(("FRA_PROTOCOL", rule.protocol))
    msg["attrs"] = attrs
    return _encoded(msg, mtype, flags, seq)


def encode_route(route: Route, ifindex: int | None, mtype: int, flags: int, seq: int = 0) -> bytes:
    msg = rtmsg()
    addr, _, length = route.dst.partition("/")
    msg["family"] = route.family
    msg["dst_len"] = int(length)
    msg["tos"] = route.tos
    msg["table"] = route.table if route.table < 256 else RT_TABLE_COMPAT
    msg["proto"] = route.protocol
    msg["scope"] = route.scope
    msg["type"] = route.type
    attrs: list[tuple[str, Any]] = [("RTA_TABLE", route.table)]
    if int(length):
        attrs.append(("RTA_DST", addr))
    if ifindex is not None:
        attrs.append(("RTA_OIF", ifindex))
    if route.gateway is not None:
        attrs.append(("RTA_GATEWAY", route.gateway))
    if route.prefsrc is not None:
        attrs.append(("RTA_PREFSRC", route.prefsrc))
    if route.priority is not None:
        attrs.append(("RTA_PRIORITY", route.priority))
    msg["attrs"] = attrs
    return _encoded(msg, mtype, flags, seq)


class Encoder:
    """Keeps each protected entry's add request ready, so a repair only concatenates bytes.

    pyroute2 costs ~0.05-0.17 ms per message: far more than the kernel's own work, so it is
    paid when the snapshot changes (a pod comes or goes), never on the repair path.
    Route requests depend on the device's ifindex and are re-encoded when it changes.
    """

    def __init__(self) -> None:
        self._cache: dict[Entry, tuple[int | None, bytes]] = {}

    def add_request(self, entry: Entry, ifindex: Callable[[str], int | None]) -> bytes | None:
        if isinstance(entry, Rule):
            hit = self._cache.get(entry)
            if hit is None:
                hit = (None, encode_rule(entry, RTM_NEWRULE, ADD_FLAGS))
                self._cache[entry] = hit
            return hit[1]
        index = ifindex(entry.oif) if entry.oif is not None else None
        if entry.oif is not None and index is None:
            return None
        hit = self._cache.get(entry)
        if hit is None or hit[0] != index:
            hit = (index, encode_route(entry, index, RTM_NEWROUTE, ADD_FLAGS))
            self._cache[entry] = hit
        return hit[1]

    def warm(self, entries: Sequence[Entry], ifindex: Callable[[str], int | None]) -> None:
        for entry in entries:
            self.add_request(entry, ifindex)

    def retain(self, keep: set[Entry] | frozenset[Entry]) -> None:
        for entry in [e for e in self._cache if e not in keep]:
            del self._cache[entry]

    def __len__(self) -> int:
        return len(self._cache)


def delete_request(entry: Entry, ifindex: Callable[[str], int | None]) -> bytes:
    """`ifindex` resolves a route's device by name (as for Encoder.add_request)."""
    if isinstance(entry, Rule):
        return encode_rule(entry, RTM_DELRULE, DEL_FLAGS)
    return encode_route(entry, ifindex(entry.oif) if entry.oif else None, RTM_DELROUTE, DEL_FLAGS)


# Sockets ----------------------------------------------------------------------------------
