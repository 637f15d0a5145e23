"""The little of rtnetlink that the kernel floor (bench.worker) and the observer (bench.observer)
need: constants from linux/netlink.h, linux/rtnetlink.h and linux/fib_rules.h, and a walk over
messages and attributes. Standard library only, and on purpose none of netd_hook: the floor
measures the kernel without netd-hook, and the observer is the independent oracle, which a
wrong constant or a decoding bug shared with the daemon would blind in the same way."""

from __future__ import annotations

import struct
from collections.abc import Iterator

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NLM_F_ACK = 0x4  # nlmsghdr.flags: answer this message even when it succeeds
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWRULE, RTM_DELRULE = 32, 33
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV4_RULE = 8
RTA_TABLE = 15
FRA_PRIORITY = 6
FRA_PROTOCOL = 21
RTPROT_KERNEL, RTPROT_STATIC = 2, 4
RESERVED_TABLES = (253, 254, 255)  # default, main, local
HDR = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, seq, port
ACK = struct.Struct("=IHHIIi")  # nlmsghdr + nlmsgerr.error
ACK_ROOM = 1024  # receive buffer per ack, as netd_hook.adapters.netlink.ACK_ROOM
U32 = struct.Struct("=I")
PAYLOAD_HDR = 12  # sizeof(struct rtmsg) == sizeof(struct fib_rule_hdr)


def messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(offset, length, type, port) of each netlink message in ``data`` (one datagram, or
    requests laid end to end); stops at a header too short to be one."""
    offset = 0
    while offset + HDR.size <= len(data):
        length, mtype, _flags, _seq, port = HDR.unpack_from(data, offset)
        if length < HDR.size:
            return
        yield offset, length, mtype, port
        offset += (length + 3) & ~3


def attributes(payload: bytes, offset: int = PAYLOAD_HDR) -> Iterator[tuple[int, int]]:
    """(type without the nested/byte-order flags, offset of the value) of each attribute."""
    while offset + 4 <= len(payload):
        alen, atype = struct.unpack_from("=HH", payload, offset)
        if alen < 4:
            return
        yield atype & 0x3FFF, offset + 4
        offset += (alen + 3) & ~3


def route_table(payload: bytes) -> int:
    """The table of an rtmsg payload (RTA_TABLE overrides rtm_table)."""
    for atype, value in attributes(payload):
        if atype == RTA_TABLE:
            return int(U32.unpack_from(payload, value)[0])
    return payload[4]


def rule_attrs(payload: bytes) -> tuple[int, int]:
    """(priority, protocol) of a fib_rule_hdr + attributes payload."""
    prio = proto = 0
    for atype, value in attributes(payload):
        if atype == FRA_PRIORITY:
            prio = int(U32.unpack_from(payload, value)[0])
        elif atype == FRA_PROTOCOL:
            proto = payload[value]
    return prio, proto
