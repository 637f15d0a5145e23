"""`python -m tests.drill <netd-hook arguments>`: the real daemon with a fault only a test can
inject, so that none of it ships (tests/test_fault_drill.py).

``NETD_HOOK_DRILL_MONITOR_RCVBUF=<bytes>``: the monitor socket's receive buffer is shrunk to
that size after the daemon sized it (the kernel doubles it and keeps a floor of about 4.6 KiB),
so that a wipe of thousands of rules overruns it.

``NETD_HOOK_DRILL_FAIL_RULE=<n>``: the n-th rule message of the first batch that has one goes out
with an address family no kernel knows, so the kernel itself fails it (EAFNOSUPPORT) mid-batch:
the rollback path (FaultyWriter below).

``NETD_HOOK_DRILL_HEARTBEAT=<seconds>``: the daemon re-publishes its status and metrics this often
when nothing changes (publisher.HEARTBEAT, 30 s), so that a test sees several heartbeats quickly."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence

from netd_hook.adapters import netlink
from netd_hook.commands import cli
from netd_hook.core.apply import Writer
from netd_hook.core.kernel import BatchResult
from netd_hook.daemon import lifecycle, publisher


def _shrink_monitor_buffer(size: int) -> None:
    real = netlink.open_socket

    def open_socket(groups: int = 0, rcvbuf: int = 1 << 20) -> socket.socket:
        sock = real(groups, rcvbuf)
        if groups:  # the monitor: the only socket bound to multicast groups
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return sock

    netlink.open_socket = open_socket  # type: ignore[assignment]


class FaultyWriter:
    """A writer whose `nth` rule message of the first batch that has one goes out with an
    address family no kernel knows (fib_rule_hdr.family 0x7f): the kernel fails it mid-batch."""

    def __init__(self, inner: Writer, nth: int) -> None:
        self.inner = inner
        self.nth = nth

    async def send(self, messages: Sequence[bytes], timeout: float) -> BatchResult:
        rules = [i for i, m in enumerate(messages) if netlink.HDR.unpack_from(m)[1] == netlink.RTM_NEWRULE]
        if self.nth and len(rules) >= self.nth:
            i = rules[self.nth - 1]
            bad = bytearray(messages[i])
            bad[netlink.HDR.size] = 0x7F
            messages = [*messages[:i], bytes(bad), *messages[i + 1:]]
            self.nth = 0
        return await self.inner.send(messages, timeout)


def _fail_rule(nth: int) -> None:
    real = lifecycle.BatchWriter

    def writer(sock: socket.socket) -> FaultyWriter:
        return FaultyWriter(real(sock), nth)

    lifecycle.BatchWriter = writer  # type: ignore[assignment,misc]
    print(f"drill: the kernel will be made to fail rule {nth} of the next batch", file=sys.stderr, flush=True)


if __name__ == "__main__":
    rcvbuf = int(os.environ.pop("NETD_HOOK_DRILL_MONITOR_RCVBUF", "0"))
    if rcvbuf:
        _shrink_monitor_buffer(rcvbuf)
    if nth := os.environ.pop("NETD_HOOK_DRILL_FAIL_RULE", ""):
        _fail_rule(int(nth))
    if heartbeat := os.environ.pop("NETD_HOOK_DRILL_HEARTBEAT", ""):
        publisher.HEARTBEAT = float(heartbeat)
    sys.exit(cli.main())
