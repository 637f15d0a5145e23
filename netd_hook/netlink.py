"""The kernel edge: rtnetlink sockets, dumps, the monitor, and the one-sendmsg batch writer.

pyroute2 encodes the requests (fibmsg, rtmsg), ahead of time; the hot path decodes with a few
struct calls (cross-checked against pyroute2's decoder in tests/). The sockets are
plain `socket.socket(AF_NETLINK)`, because the repair path must be a single `sendmsg` of bytes
prepared in advance, and pyroute2's sync `IPRoute` cannot be created inside a running loop.
Everything foreign (pyroute2 message objects, errno) is translated here into model values and
`NetlinkError`.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .kernel import BatchResult as BatchResult  # re-exported: the adapters' callers get them here too
from .kernel import Change as Change
from .kernel import Dump as Dump
from .kernel import HostRoute as HostRoute
from .kernel import Item as Item
from .kernel import Link as Link
from .kernel import LocalAddress as LocalAddress
from .kernel import Unsupported as Unsupported
from .model import (
    AF_INET,
    AF_INET6,
    RESERVED_TABLES,
    RT_TABLE_LOCAL,
    RT_TABLE_MAIN,
    RTN_LOCAL,
    RTN_UNICAST,
    Entry,
    Route,
    Rule,
)

log = logging.getLogger(__name__)


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
ADD_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
DEL_FLAGS = NLM_F_REQUEST | NLM_F_ACK

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
FR_ACT_TO_TBL = 1
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
            item = decode_rule(data, body, stop)
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


def open_socket(groups: int = 0, rcvbuf: int = 1 << 20) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        grow_buffers(sock, rcvbuf=rcvbuf)
        # Error acks carry only the header of the failed request, not its payload.
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.bind((0, groups))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def grow_buffers(sock: socket.socket, rcvbuf: int = 0, sndbuf: int = 0) -> None:
    """Size socket buffers; *FORCE (root/CAP_NET_ADMIN) ignores net.core.[rw]mem_max."""
    for size, force, plain in ((rcvbuf, SO_RCVBUFFORCE, socket.SO_RCVBUF), (sndbuf, SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        if size <= 0 or sock.getsockopt(socket.SOL_SOCKET, plain) >= size * 2:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[0])


SD_LISTEN_FDS_START = 3  # sd_listen_fds(3)


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[int]:
    """The file descriptors systemd passed (sd_listen_fds(3) with unset_environment=1): only
    when LISTEN_PID is this process, so a child that inherited the variables takes nothing.
    The variables are removed either way; the fds are marked close-on-exec."""
    env = os.environ if environ is None else environ
    pid, count = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", "")
    env.pop("LISTEN_FDNAMES", None)
    if not pid or not count:
        return []
    if not (pid.isdigit() and count.isdigit()) or int(pid) != os.getpid():
        log.debug("LISTEN_PID=%r LISTEN_FDS=%r are not for this process: no sockets taken", pid, count)
        return []
    fds = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + min(int(count), 64)):
        try:
            os.set_inheritable(fd, False)
        except OSError:  # not open after all
            continue
        fds.append(fd)
    return fds


@dataclass(frozen=True, slots=True)
class ListenedSocket:
    """A socket systemd passed: networkd's rtnetlink socket when netd-hook.service has
    `Sockets=systemd-networkd.socket`. Only its port and inode are kept; the fd is closed at once
    (never read): holding it would keep the socket, and its port, alive after PID 1 and networkd
    dropped it, so that the socket PID 1 binds next would get another port."""

    port: int
    inode: int


def rtnetlink_sockets(fds: Sequence[int]) -> tuple[list[ListenedSocket], list[str]]:
    """The rtnetlink sockets among passed fds, and a description of each other fd. Every fd is
    closed."""
    kept: list[ListenedSocket] = []
    other: list[str] = []
    for fd in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            other.append(f"fd {fd}: {exc.strerror or exc}")
            _close_fd(fd)
            continue
        if sock.family != socket.AF_NETLINK or sock.proto != NETLINK_ROUTE:
            other.append(f"fd {fd}: family {sock.family}, protocol {sock.proto}: not rtnetlink")
            sock.detach()
            _close_fd(fd)
            continue
        try:
            kept.append(ListenedSocket(port_of(sock), os.fstat(fd).st_ino))
        except OSError as exc:
            other.append(f"fd {fd}: {exc.strerror or exc}")
        finally:
            sock.close()
    return kept, other


def rtnetlink_ports(table: str) -> dict[int, int]:
    """Port -> socket inode of every NETLINK_ROUTE socket in /proc/self/net/netlink's text (the
    network namespace's; readable by any user, ProcSubset=pid included)."""
    out: dict[int, int] = {}
    for line in table.splitlines()[1:]:
        cols = line.split()
        # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        if len(cols) >= 10 and cols[1] == "0" and cols[2].isdigit() and cols[9].isdigit():
            out[int(cols[2])] = int(cols[9])
    return out


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _recv(sock: socket.socket, size: int = 1 << 18) -> bytes | None:
    try:
        return sock.recv(size)
    except BlockingIOError:
        return None


DUMP_ATTEMPTS = 5  # per dump (links, rules and routes of each family)
DUMP_RETRY_DELAY = 0.05  # then twice as long each time: 0.05 + 0.1 + 0.2 + 0.4 s outlasts a burst of pod churn
_DUMP_NAMES = {RTM_GETLINK: "link", RTM_GETRULE: "rule", RTM_GETROUTE: "route"}
_dump_seq = itertools.count(1)  # sequence numbers never reused: a reply to an older dump is never taken for this one


def dump_sync(sock: socket.socket, attempts: int = DUMP_ATTEMPTS, retry_delay: float = DUMP_RETRY_DELAY) -> Dump:
    """Links, then IPv4/IPv6 rules and routes. Blocking: run it in a worker thread.

    A dump whose replies carry NLM_F_DUMP_INTR (the kernel's list changed while it was being
    dumped: links come and go with pod churn, and a dump of a few hundred links spans several
    reads) is read to its end, thrown away and asked again after `retry_delay`, then twice as
    long each time, each of the five dumps at most `attempts` times. One that keeps being
    interrupted raises NetlinkError (EINTR), logged as such: an inconsistent dump is never
    used, because an entry missing from it reads as gone (a pod's host route: the liveness gate
    would take a live pod for a dead one and forget its rules). The monitor socket, opened
    before any dump, carries whatever changes between the five dumps."""
    names: dict[int, str] = {}  # its own: the links come first, so routes resolve their devices
    dump = Dump()
    requests = (
        (RTM_GETLINK, _IFI_HDR.pack(0, 0, 0, 0, 0), ""),
        (RTM_GETRULE, _RULE_HDR.pack(AF_INET, 0, 0, 0, 0, 0, 0, 0, 0), "IPv4 "),
        (RTM_GETRULE, _RULE_HDR.pack(AF_INET6, 0, 0, 0, 0, 0, 0, 0, 0), "IPv6 "),
        (RTM_GETROUTE, _RT_HDR.pack(AF_INET, 0, 0, 0, 0, 0, 0, 0, 0), "IPv4 "),
        (RTM_GETROUTE, _RT_HDR.pack(AF_INET6, 0, 0, 0, 0, 0, 0, 0, 0), "IPv6 "),
    )
    try:
        _drain(sock)  # whatever a dump aborted by an error or a timeout left unread
        for mtype, body, family in requests:
            what = f"{family}{_DUMP_NAMES[mtype]}"
            delay = retry_delay
            for attempt in range(1, attempts + 1):
                scratch = dict(names)  # a link dump updates it: only a complete one counts
                items, interrupted = _dump_one(sock, mtype, body, scratch)
                if not interrupted:
                    names = scratch
                    for item in items:
                        dump.add(item)
                    break
                if attempt == attempts:
                    log.warning("the kernel's %s dump was interrupted by concurrent changes (NLM_F_DUMP_INTR) "
                                "%d times in a row; giving up rather than use an inconsistent picture", what, attempts)
                    raise NetlinkError(f"{what} dump interrupted by concurrent changes (NLM_F_DUMP_INTR) {attempts} "
                                       "times in a row", errno.EINTR)
                log.info("the kernel's %s dump was interrupted by concurrent changes (NLM_F_DUMP_INTR), attempt %d "
                         "of %d; asking again in %.2fs", what, attempt, attempts, delay)
                time.sleep(delay)
                delay *= 2
    except OSError as exc:
        raise NetlinkError(f"dump failed: {exc}", exc.errno or 0) from exc
    finally:
        sock.setblocking(False)
    return dump


def _dump_one(sock: socket.socket, mtype: int, body: bytes, names: dict[int, str]) -> tuple[list[Item], bool]:
    """One dump request, read to its NLMSG_DONE: its items, and whether it was interrupted."""
    seq = next(_dump_seq) % 0xFFFFFFFF + 1  # 1 .. 2**32 - 1
    sock.setblocking(True)
    sock.settimeout(5.0)
    sock.send(HDR.pack(HDR.size + len(body), mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
    items: list[Item] = []
    interrupted = False
    while True:
        data = sock.recv(1 << 20)
        for rtype, flags, rseq, _port, item in decode(data, names):
            if rseq != seq:
                continue
            if flags & NLM_F_DUMP_INTR:  # on any message of the dump, NLMSG_DONE included
                interrupted = True
            if rtype == NLMSG_DONE:
                return items, interrupted
            if rtype == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, HDR.size)
                raise NetlinkError(f"dump failed: {os.strerror(-code)}", -code)
            if item is not None:
                items.append(item)


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    while True:
        try:
            if not sock.recv(1 << 20):
                return
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise


def read_available(sock: socket.socket, names: dict[int, str]) -> list[Change | None]:
    """Everything the monitor socket holds now, without blocking; None marks an overrun
    (ENOBUFS: the kernel dropped notifications, so the caller must re-dump)."""
    out: list[Change | None] = []
    while True:
        try:
            data = _recv(sock)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise NetlinkError(f"monitor: {exc}", exc.errno or 0) from exc
            out.append(None)
            continue
        if data is None:
            return out
        for mtype, _flags, _seq, port, item in decode(data, names):
            if item is not None:
                out.append(Change(mtype in (RTM_NEWRULE, RTM_NEWROUTE, RTM_NEWLINK), item, port))


async def monitor(sock: socket.socket, names: dict[int, str]) -> AsyncIterator[list[Change | None]]:
    """Yield what a socket bound to MONITOR_GROUPS receives, one list per wake-up."""
    while True:
        await anyio.wait_readable(sock)
        changes = read_available(sock, names)
        if changes:
            yield changes


# The batch --------------------------------------------------------------------------------

ACK_ROOM = 1024  # receive buffer each ack costs (~830 bytes measured), rounded up


class BatchWriter:
    """Sends many requests in one sendmsg and collects one ack per message.

    The kernel processes every message of the buffer even after one fails, so the batch is not
    a transaction; `send` only reports, rollback is the caller's (see replay.py).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = 1

    async def send(self, messages: Sequence[bytes], timeout: float) -> BatchResult:
        result = BatchResult()
        n = len(messages)
        if not n:
            return result
        base = self._seq
        self._seq = (self._seq + n + 1) & 0x7FFFFFFF or 1
        buf = bytearray(b"".join(messages))
        offset = 0
        pack_into = struct.pack_into
        for i, m in enumerate(messages):
            pack_into("=I", buf, offset + 8, base + i)  # nlmsg_seq: one per message
            offset += len(m)
        grow_buffers(self.sock, rcvbuf=n * ACK_ROOM + (1 << 16), sndbuf=len(buf) + (1 << 16))
        self._drain()
        try:
            self.sock.send(buf)
        except OSError as exc:
            raise NetlinkError(f"batch send failed: {exc}", exc.errno or 0) from exc
        pending = n
        seen = bytearray(n)
        with anyio.move_on_after(timeout) as scope:
            while pending:
                try:
                    data = _recv(self.sock)
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        result.unknown = "ENOBUFS: acks were dropped"
                        return result
                    raise NetlinkError(f"batch receive failed: {exc}", exc.errno or 0) from exc
                if data is None:
                    await anyio.wait_readable(self.sock)
                    continue
                pending -= self._acks(data, base, n, seen, result)
        if scope.cancelled_caught:
            result.unknown = f"timeout: {pending} of {n} acks missing after {timeout:.1f}s"
        return result

    @staticmethod
    def _acks(data: bytes, base: int, n: int, seen: bytearray, result: BatchResult) -> int:
        got = 0
        offset, end = 0, len(data)
        while offset + HDR.size <= end:
            length, mtype, _flags, seq, _port = HDR.unpack_from(data, offset)
            if length < HDR.size:
                break
            i = seq - base
            if mtype == NLMSG_ERROR and 0 <= i < n and not seen[i]:
                seen[i] = 1
                got += 1
                (code,) = struct.unpack_from("=i", data, offset + HDR.size)
                if code == 0:
                    result.acked.append(i)
                elif code == -errno.EEXIST:
                    result.existed.append(i)
                else:
                    result.failed.append((i, -code))
            offset += (length + 3) & ~3
        return got

    def _drain(self) -> None:
        """Drop stale acks of an earlier batch that timed out. Dropped acks (ENOBUFS) are no
        matter; any other error is the socket's for good (EBADF, say): raised, never looped on."""
        while True:
            try:
                if _recv(self.sock) is None:
                    return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise NetlinkError(f"batch socket: {exc.strerror or exc}", exc.errno or 0) from exc
