"""rtnetlink's wire format: constants, NetlinkError, and the struct decoder the hot path uses
(cross-checked against pyroute2's in tests/)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Mapping

from ...core.kernel import BatchResult as BatchResult  # re-exported: the adapters' callers get them here too
from ...core.kernel import Change as Change
from ...core.kernel import Dump as Dump
from ...core.kernel import HostRoute as HostRoute
from ...core.kernel import Item as Item
from ...core.kernel import Link as Link
from ...core.kernel import LocalAddress as LocalAddress
from ...core.kernel import Unsupported as Unsupported
from ...core.model import (
    AF_INET,
    AF_INET6,
    RESERVED_TABLES,
    RT_TABLE_LOCAL,
    RT_TABLE_MAIN,
    RTN_LOCAL,
    RTN_UNICAST,
    Route,
    Rule,
)

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
# Without NLM_F_ACK: a batch asks for one ack, on its last message (batch.py).
ADD_FLAGS = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
DEL_FLAGS = NLM_F_REQUEST

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34

RTNLGRP_LINK = 1
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV4_RULE = 8
RTNLGRP_IPV6_ROUTE = 11
RTNLGRP_IPV6_RULE = 19
MONITOR_GROUPS = sum(
    1 << (g - 1) for g in (RTNLGRP_LINK, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE)
)
RTM_F_CLONED = 0x200
RT_TABLE_COMPAT = 252
HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid



class NetlinkError(Exception):
    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.errno = code


def _prefix(addr: str, length: int) -> str:
    return f"{addr}/{length}"


def _default(family: int) -> str:
    return "0.0.0.0/0" if family == AF_INET else "::/0"


# Decoding is on the repair path (a wipe of 2,000 rules is 2,000 notifications to read before
# networkd's "configured" can be acted on), so it is a few struct calls per message; pyroute2's
# generic decoder costs ~70 us per rule here. tests/ cross-check both against each other.
_RULE_HDR = struct.Struct("=BBBBBBBBI")  # fib_rule_hdr
_RT_HDR = struct.Struct("=BBBBBBBBI")  # rtmsg
_IFI_HDR = struct.Struct("=BxHiII")  # ifinfomsg
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
NLA_TYPE_MASK = 0x3FFF

FRA_DST, FRA_SRC, FRA_IIFNAME, FRA_GOTO, FRA_PRIORITY = 1, 2, 3, 4, 6
FRA_FWMARK, FRA_SUPPRESS_IFGROUP, FRA_SUPPRESS_PREFIXLEN, FRA_TABLE, FRA_FWMASK = 10, 13, 14, 15, 16
FRA_OIFNAME, FRA_L3MDEV, FRA_PROTOCOL = 17, 19, 21
# flow (realms), tun_id, uid_range, ip_proto, sport/dport ranges: not re-created faithfully
UNSUPPORTED_RULE_ATTRS = {11: "flow", 12: "tun_id", 20: "uid_range", 22: "ip_proto", 23: "sport", 24: "dport"}
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
UNSUPPORTED_ROUTE_ATTRS = {2: "src", 3: "iif", 9: "multipath", 18: "via", 19: "newdst", 22: "encap", 30: "nh_id"}
IFLA_IFNAME = 3
# Dump-only flags: the kernel sets them while an iif/oif device is absent, and clears them
# silently when it appears, so they are not part of a rule's identity.
FIB_RULE_DETACHED = 0x8 | 0x10


def _attrs(data: bytes | memoryview, offset: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + 4 <= end:
        length, kind = _ATTR.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            break
        out[kind & NLA_TYPE_MASK] = bytes(data[offset + 4 : offset + length])
        offset += (length + 3) & ~3
    return out


def _u32(attrs: dict[int, bytes], kind: int) -> int | None:
    raw = attrs.get(kind)
    return _U32.unpack(raw[:4])[0] if raw is not None and len(raw) >= 4 else None


def _str(attrs: dict[int, bytes], kind: int) -> str | None:
    raw = attrs.get(kind)
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace") if raw is not None else None


def _addr(family: int, raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return socket.inet_ntop(socket.AF_INET if family == AF_INET else socket.AF_INET6, raw)


def _unset_if_max(value: int | None) -> int | None:
    """The kernel reports unset suppress_* attributes as -1 (0xffffffff)."""
    return None if value == 0xFFFFFFFF else value


def decode_rule(data: bytes | memoryview, offset: int, end: int) -> Rule | Unsupported:
    """One RTM_NEWRULE/RTM_DELRULE body (after the nlmsghdr at `offset`)."""
    family, dst_len, src_len, tos, table, _r1, _r2, action, flags = _RULE_HDR.unpack_from(data, offset)
    a = _attrs(data, offset + _RULE_HDR.size, end)
    if not UNSUPPORTED_RULE_ATTRS.keys().isdisjoint(a):
        return Unsupported(f"rule with {sorted(n for k, n in UNSUPPORTED_RULE_ATTRS.items() if k in a)}")
    src = _addr(family, a.get(FRA_SRC))
    dst = _addr(family, a.get(FRA_DST))
    l3mdev = a.get(FRA_L3MDEV)
    protocol = a.get(FRA_PROTOCOL)
    return Rule(
        family=family,
        priority=_u32(a, FRA_PRIORITY) or 0,
        table=_u32(a, FRA_TABLE) or table,
        action=action,
        src=f"{src}/{src_len}" if src is not None else None,
        dst=f"{dst}/{dst_len}" if dst is not None else None,
        fwmark=_u32(a, FRA_FWMARK),
        fwmask=_u32(a, FRA_FWMASK),
        iifname=_str(a, FRA_IIFNAME),
        oifname=_str(a, FRA_OIFNAME),
        tos=tos,
        flags=flags & ~FIB_RULE_DETACHED,
        goto=_u32(a, FRA_GOTO),
        suppress_prefixlen=_unset_if_max(_u32(a, FRA_SUPPRESS_PREFIXLEN)),
        suppress_ifgroup=_unset_if_max(_u32(a, FRA_SUPPRESS_IFGROUP)),
        l3mdev=l3mdev[0] if l3mdev else None,
        protocol=protocol[0] if protocol else 0,
    )


def decode_route(data: bytes | memoryview, offset: int, end: int, names: Mapping[int, str]) -> Item | None:
    """A protected-table Route, a HostRoute/LocalAddress for the liveness gate, or None."""
    family, dst_len, _src_len, tos, table, proto, scope, rtype, flags = _RT_HDR.unpack_from(data, offset)
    if flags & RTM_F_CLONED or family not in (AF_INET, AF_INET6):
        return None
    a = _attrs(data, offset + _RT_HDR.size, end)
    table = _u32(a, RTA_TABLE) or table
    oif_index = _u32(a, RTA_OIF)
    oif = names.get(oif_index) if oif_index is not None else None
    dst = _addr(family, a.get(RTA_DST))
    host = dst is not None and dst_len == (32 if family == AF_INET else 128)
    if table == RT_TABLE_MAIN:
        if host and dst is not None and oif is not None and RTA_GATEWAY not in a and rtype == RTN_UNICAST:
            return HostRoute(dst, oif)
        return None
    if table == RT_TABLE_LOCAL:
        if host and dst is not None and oif is not None and rtype == RTN_LOCAL:
            return LocalAddress(dst, oif)
        return None
    if table in RESERVED_TABLES:
        return None
    if not UNSUPPORTED_ROUTE_ATTRS.keys().isdisjoint(a):
        bad = sorted(n for k, n in UNSUPPORTED_ROUTE_ATTRS.items() if k in a)
        return Unsupported(f"route in table {table} with {bad}")
    if oif_index is not None and oif is None:
        return Unsupported(f"route in table {table} on unknown ifindex {oif_index}")
    return Route(
        family=family,
        table=table,
        dst=f"{dst}/{dst_len}" if dst is not None else _default(family),
        oif=oif,
        gateway=_addr(family, a.get(RTA_GATEWAY)),
        prefsrc=_addr(family, a.get(RTA_PREFSRC)),
        priority=_u32(a, RTA_PRIORITY),
        tos=tos,
        scope=scope,
        type=rtype,
        protocol=proto,
    )


# decode_rule by a rule message's body: the kernel writes a rule the same way in a dump, in its
# deletion and in its re-addition, so a wipe's 2,000 deletions are looked up, not decoded again
# (~5 us each in Python, the chase's largest cost per rule after the kernel's). The same Rule
# objects as the tracker's (its dump went through here). Emptied when full: pod churn.
RULES_MEMO = 1 << 14
_RULES: dict[bytes, Rule | Unsupported] = {}


def decode(data: bytes | memoryview, names: dict[int, str]) -> Iterator[tuple[int, int, int, int, Item | None]]:
    """Split a netlink datagram; yield (type, flags, seq, port, item) per message.

    Link messages update `names` as they pass so later routes in the same datagram resolve.
    """
    offset, end = 0, len(data)
    while offset + HDR.size <= end:
        length, mtype, flags, seq, port = HDR.unpack_from(data, offset)
        if length < HDR.size or offset + length > end:
            break
        body, stop = offset + HDR.size, offset + length
        item: Item | None = None
        if mtype in (RTM_NEWRULE, RTM_DELRULE):
            key = bytes(data[body:stop])
            item = _RULES.get(key)
            if item is None:
                if len(_RULES) >= RULES_MEMO:
                    _RULES.clear()
                item = _RULES[key] = decode_rule(data, body, stop)
        elif mtype in (RTM_NEWROUTE, RTM_DELROUTE):
            item = decode_route(data, body, stop, names)
        elif mtype in (RTM_NEWLINK, RTM_DELLINK):
            _family, _type, index, _flags, _change = _IFI_HDR.unpack_from(data, body)
            name = _str(_attrs(data, body + _IFI_HDR.size, stop), IFLA_IFNAME)
            if name is not None:
                item = Link(index, name)
                if mtype == RTM_NEWLINK:
                    names[index] = name
                else:
                    names.pop(index, None)
        yield mtype, flags, seq, port, item
        offset += (length + 3) & ~3


# Encoding ---------------------------------------------------------------------------------
