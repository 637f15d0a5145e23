"""Reading the kernel: dumps (retried when interrupted by concurrent changes) and the monitor."""

from __future__ import annotations

import errno
import itertools
import logging
import math
import os
import socket
import struct
import time
from collections.abc import AsyncIterator

import anyio

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
)
from .sockets import _recv_kept
from .wire import (
    _IFI_HDR,
    _RT_HDR,
    _RULE_HDR,
    HDR,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_GETRULE,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    NetlinkError,
    decode,
)

log = logging.getLogger(__package__)  # one logger for the package, as before the split


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


def read_available(sock: socket.socket, names: dict[int, str], limit: float = math.inf,
                   echoes_of: int | None = None) -> list[Change | None]:
    """What the monitor socket holds now (all of it, or the first `limit` datagrams), without
    blocking; None marks an overrun (ENOBUFS: the kernel dropped notifications, so the caller
    must re-dump). The echoes of rules and routes added through the port `echoes_of` are not
    decoded (the caller took their acks as the news: Tracker.added_by_us)."""
    return read_some(sock, names, limit, echoes_of)[0]


def read_some(sock: socket.socket, names: dict[int, str], limit: float,
              echoes_of: int | None = None) -> tuple[list[Change | None], bool]:
    """read_available, and whether the socket is drained (it held fewer than `limit`)."""
    out: list[Change | None] = []
    read = 0
    while read < limit:
        read += 1
        try:
            data = _recv_kept(sock)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise NetlinkError(f"monitor: {exc}", exc.errno or 0) from exc
            out.append(None)
            continue
        if data is None:
            return out, True
        if echoes_of is not None and _is_echo(data, echoes_of):
            continue
        for mtype, _flags, _seq, port, item in decode(data, names):
            if item is not None:
                out.append(Change(mtype in (RTM_NEWRULE, RTM_NEWROUTE, RTM_NEWLINK), item, port))
    return out, False


def _is_echo(data: bytes, port: int) -> bool:
    """One notification, of a rule or route added by `port`."""
    if len(data) < HDR.size:
        return False
    length, mtype, _flags, _seq, sender = HDR.unpack_from(data)
    return sender == port and length == len(data) and mtype in (RTM_NEWRULE, RTM_NEWROUTE)


# Notifications handed on at a time: the loop acts on the first deletions of a wipe (the chase
# puts them back) while the rest are still being read, not after all 2,000 of them.
MONITOR_CHUNK = 64


async def monitor(sock: socket.socket, names: dict[int, str],
                  echoes_of: int | None = None) -> AsyncIterator[list[Change | None]]:
    """Yield what a socket bound to MONITOR_GROUPS receives, at most MONITOR_CHUNK datagrams at a
    time (the caller reads the rest at once when it must: Inbox.catch_up); as read_available."""
    while True:
        await anyio.wait_readable(sock)
        changes = read_available(sock, names, MONITOR_CHUNK, echoes_of)
        if changes:
            yield changes


# The batch --------------------------------------------------------------------------------
