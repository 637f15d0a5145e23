"""`python -m tests.drill <netd-hook arguments>`: the real daemon with a fault only a test can
inject, so that none of it ships (tests/test_fault_drill.py).

``NETD_HOOK_DRILL_MONITOR_RCVBUF=<bytes>``: the monitor socket's receive buffer is shrunk to
that size after the daemon sized it (the kernel doubles it and keeps a floor of about 4.6 KiB),
so that a wipe of thousands of rules overruns it.

``NETD_HOOK_DRILL_HEARTBEAT=<seconds>``: the daemon re-publishes its status and metrics this often
when nothing changes (service.HEARTBEAT, 30 s), so that a test sees several heartbeats quickly."""

from __future__ import annotations

import os
import socket
import sys

from netd_hook import cli, netlink, service


def _shrink_monitor_buffer(size: int) -> None:
    real = netlink.open_socket

    def open_socket(groups: int = 0, rcvbuf: int = 1 << 20) -> socket.socket:
        sock = real(groups, rcvbuf)
        if groups:  # the monitor: the only socket bound to multicast groups
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return sock

    netlink.open_socket = open_socket  # type: ignore[assignment]


if __name__ == "__main__":
    rcvbuf = int(os.environ.pop("NETD_HOOK_DRILL_MONITOR_RCVBUF", "0"))
    if rcvbuf:
        _shrink_monitor_buffer(rcvbuf)
    if heartbeat := os.environ.pop("NETD_HOOK_DRILL_HEARTBEAT", ""):
        service.HEARTBEAT = float(heartbeat)
    sys.exit(cli.main())
