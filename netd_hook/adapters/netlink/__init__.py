"""The kernel edge: rtnetlink sockets, dumps, the monitor, and the one-sendmsg batch writer.

pyroute2 encodes the requests (fibmsg, rtmsg), ahead of time; the hot path decodes with a few
struct calls (cross-checked against pyroute2's decoder in tests/). The sockets are
plain `socket.socket(AF_NETLINK)`, because the repair path must be a single `sendmsg` of bytes
prepared in advance, and pyroute2's sync `IPRoute` cannot be created inside a running loop.
Everything foreign (pyroute2 message objects, errno) is translated here into model values and
`NetlinkError`.
"""

from __future__ import annotations

from ...core.kernel import BatchResult as BatchResult
from ...core.kernel import Change as Change
from ...core.kernel import Dump as Dump
from ...core.kernel import HostRoute as HostRoute
from ...core.kernel import Item as Item
from ...core.kernel import Link as Link
from ...core.kernel import LocalAddress as LocalAddress
from ...core.kernel import Unsupported as Unsupported
from .batch import ACK_ROOM as ACK_ROOM
from .batch import BatchWriter as BatchWriter
from .dump import DUMP_ATTEMPTS as DUMP_ATTEMPTS
from .dump import DUMP_RETRY_DELAY as DUMP_RETRY_DELAY
from .dump import dump_sync as dump_sync
from .dump import monitor as monitor
from .dump import read_available as read_available
from .dump import read_some as read_some
from .encode import Encoder as Encoder
from .encode import delete_request as delete_request
from .encode import encode_route as encode_route
from .encode import encode_rule as encode_rule
from .sockets import SD_LISTEN_FDS_START as SD_LISTEN_FDS_START
from .sockets import ListenedSocket as ListenedSocket
from .sockets import grow_buffers as grow_buffers
from .sockets import listen_fds as listen_fds
from .sockets import open_socket as open_socket
from .sockets import port_of as port_of
from .sockets import rtnetlink_ports as rtnetlink_ports
from .sockets import rtnetlink_sockets as rtnetlink_sockets
from .wire import ADD_FLAGS as ADD_FLAGS
from .wire import DEL_FLAGS as DEL_FLAGS
from .wire import FIB_RULE_DETACHED as FIB_RULE_DETACHED
from .wire import FRA_DST as FRA_DST
from .wire import FRA_FWMARK as FRA_FWMARK
from .wire import FRA_FWMASK as FRA_FWMASK
from .wire import FRA_GOTO as FRA_GOTO
from .wire import FRA_IIFNAME as FRA_IIFNAME
from .wire import FRA_L3MDEV as FRA_L3MDEV
from .wire import FRA_OIFNAME as FRA_OIFNAME
from .wire import FRA_PRIORITY as FRA_PRIORITY
from .wire import FRA_PROTOCOL as FRA_PROTOCOL
from .wire import FRA_SRC as FRA_SRC
from .wire import FRA_SUPPRESS_IFGROUP as FRA_SUPPRESS_IFGROUP
from .wire import FRA_SUPPRESS_PREFIXLEN as FRA_SUPPRESS_PREFIXLEN
from .wire import FRA_TABLE as FRA_TABLE
from .wire import HDR as HDR
from .wire import IFLA_IFNAME as IFLA_IFNAME
from .wire import MONITOR_GROUPS as MONITOR_GROUPS
from .wire import NETLINK_CAP_ACK as NETLINK_CAP_ACK
from .wire import NETLINK_ROUTE as NETLINK_ROUTE
from .wire import NLA_TYPE_MASK as NLA_TYPE_MASK
from .wire import NLM_F_ACK as NLM_F_ACK
from .wire import NLM_F_CREATE as NLM_F_CREATE
from .wire import NLM_F_DUMP as NLM_F_DUMP
from .wire import NLM_F_DUMP_INTR as NLM_F_DUMP_INTR
from .wire import NLM_F_EXCL as NLM_F_EXCL
from .wire import NLM_F_MULTI as NLM_F_MULTI
from .wire import NLM_F_REQUEST as NLM_F_REQUEST
from .wire import NLMSG_DONE as NLMSG_DONE
from .wire import NLMSG_ERROR as NLMSG_ERROR
from .wire import RT_TABLE_COMPAT as RT_TABLE_COMPAT
from .wire import RTA_DST as RTA_DST
from .wire import RTA_GATEWAY as RTA_GATEWAY
from .wire import RTA_OIF as RTA_OIF
from .wire import RTA_PREFSRC as RTA_PREFSRC
from .wire import RTA_PRIORITY as RTA_PRIORITY
from .wire import RTA_TABLE as RTA_TABLE
from .wire import RTM_DELLINK as RTM_DELLINK
from .wire import RTM_DELROUTE as RTM_DELROUTE
from .wire import RTM_DELRULE as RTM_DELRULE
from .wire import RTM_F_CLONED as RTM_F_CLONED
from .wire import RTM_GETLINK as RTM_GETLINK
from .wire import RTM_GETROUTE as RTM_GETROUTE
from .wire import RTM_GETRULE as RTM_GETRULE
from .wire import RTM_NEWLINK as RTM_NEWLINK
from .wire import RTM_NEWROUTE as RTM_NEWROUTE
from .wire import RTM_NEWRULE as RTM_NEWRULE
from .wire import RTNLGRP_IPV4_ROUTE as RTNLGRP_IPV4_ROUTE
from .wire import RTNLGRP_IPV4_RULE as RTNLGRP_IPV4_RULE
from .wire import RTNLGRP_IPV6_ROUTE as RTNLGRP_IPV6_ROUTE
from .wire import RTNLGRP_IPV6_RULE as RTNLGRP_IPV6_RULE
from .wire import RTNLGRP_LINK as RTNLGRP_LINK
from .wire import SO_RCVBUFFORCE as SO_RCVBUFFORCE
from .wire import SO_SNDBUFFORCE as SO_SNDBUFFORCE
from .wire import SOL_NETLINK as SOL_NETLINK
from .wire import UNSUPPORTED_ROUTE_ATTRS as UNSUPPORTED_ROUTE_ATTRS
from .wire import UNSUPPORTED_RULE_ATTRS as UNSUPPORTED_RULE_ATTRS
from .wire import NetlinkError as NetlinkError
from .wire import decode as decode
from .wire import decode_route as decode_route
from .wire import decode_rule as decode_rule
