"""Is a netlink port networkd's? (the attribution adapter)

networkd's rtnetlink socket is autobound, so its port id is networkd's PID (checked on
systemd 252: the deletions of `networkctl reconfigure` carry nlmsg_pid == networkd's pid). The
PID comes from the bus (GetConnectionUnixProcessID of the name's owner, vouched for by the bus
daemon); before networkd has taken its name (it drops foreign rules while starting up), the
process's comm tells: /proc/<pid>/comm is world-readable, so this works with only CAP_NET_ADMIN.
The port is an integer from the kernel, never bus data.
"""

from __future__ import annotations

from pathlib import Path

NETWORKD_COMM = "systemd-network"  # "systemd-networkd" cut to TASK_COMM_LEN - 1
PID_MAX = 1 << 22  # kernel's PID_MAX_LIMIT on 64-bit: larger ports are not PIDs


class NetworkdPorts:
    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self.pid: int | None = None
        self._cache: dict[int, bool] = {}

    def set_pid(self, pid: int | None) -> None:
        self.pid = pid
        self._cache.clear()  # PIDs get reused: verdicts are only good within one generation

    def __call__(self, port: int) -> bool:
        if port == self.pid:
            return True
        verdict = self._cache.get(port)
        if verdict is None:
            verdict = 0 < port < PID_MAX and self._comm(port) == NETWORKD_COMM
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[port] = verdict
        return verdict

    def _comm(self, pid: int) -> str | None:
        try:
            return (self._proc / str(pid) / "comm").read_text().strip()
        except OSError:
            return None
