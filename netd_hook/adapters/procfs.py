"""Is a netlink port networkd's? (the attribution adapter)

A notification's `nlmsg_pid` is the port id of the socket whose request caused it. networkd's
requests go through one rtnetlink socket, which it gets one of two ways:

- **Socket activation** (the default on Debian 12/13 and Ubuntu 22.04/24.04):
  `systemd-networkd.socket` makes PID 1 bind the socket and hand it to each networkd it starts.
  Its port is whatever PID 1 got when it bound it (1 on a real node, anything in a test), and it
  stays the same across networkd restarts. netd-hook.service has `Sockets=systemd-networkd.socket`,
  so systemd hands netd-hook the very same socket: its `getsockname()` is networkd's port.
  netd-hook keeps that port and the socket's inode, and closes its copy at once, unread (the
  messages in it are networkd's; see netlink.ListenedSocket for why it must not keep it).
- **networkd binds its own** (no socket unit, or started by hand): the socket is autobound, so its
  port is networkd's PID, which the bus gives for the owner of `org.freedesktop.network1`
  (GetConnectionUnixProcessID). Before networkd has taken its name, /proc/<port>/comm tells
  (world-readable: netd-hook's unit has ProcSubset=pid but not ProtectProc=invisible).

The port is always an integer from the kernel, never bus data.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .netlink import rtnetlink_ports

NETWORKD_COMM = "systemd-network"  # "systemd-networkd" cut to TASK_COMM_LEN - 1
PID_MAX = 1 << 22  # kernel's PID_MAX_LIMIT on 64-bit: larger ports are not PIDs


class NetworkdPorts:
    def __init__(self, sockets: Iterable[int] = (), proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self.sockets = frozenset(sockets)  # ports of the rtnetlink sockets systemd passed us
        self.pid: int | None = None
        self._cache: dict[int, bool] = {}

    def set_pid(self, pid: int | None) -> None:
        self.pid = pid
        self._cache.clear()  # PIDs get reused: verdicts are only good within one generation

    def __call__(self, port: int) -> bool:
        if port in self.sockets or port == self.pid:
            return True
        verdict = self._cache.get(port)
        if verdict is None:
            verdict = 0 < port < PID_MAX and self.comm(port) == NETWORKD_COMM
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[port] = verdict
        return verdict

    def vanished(self) -> list[int]:
        """The passed sockets' ports that no socket has any more (/proc/self/net/netlink).

        PID 1 binds a new socket when systemd-networkd.socket is (re)started; while the old one
        is still open (a running networkd keeps it) the new one cannot get the same port, and
        the next networkd uses the new one. netd-hook does not know that port: it must be
        restarted to be handed the new socket. A new socket with the same port (the usual case:
        the old one was gone first) is still networkd's: only PID 1 binds its own PID's port."""
        if not self.sockets:
            return []
        try:
            table = rtnetlink_ports((self._proc / "self" / "net" / "netlink").read_text())
        except OSError:
            return []  # cannot tell: keep trusting what systemd passed
        return sorted(p for p in self.sockets if p not in table)

    def process(self, port: int) -> str | None:
        """Best effort, for the audit trail: the name of the process that probably owns `port`.
        An autobound port is its process's PID unless that was taken (then a large one)."""
        if port == 0:
            return "kernel"
        if port in self.sockets:
            return "systemd-networkd (socket from systemd)"
        if not 0 < port < PID_MAX:
            return None
        return self.comm(port)

    def comm(self, pid: int) -> str | None:
        try:
            return (self._proc / str(pid) / "comm").read_text().strip()
        except OSError:
            return None
