"""sd_notify and the watchdog: the daemon telling systemd how it is."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict, dataclass

log = logging.getLogger(__package__)  # one logger for the package, as before the split


class Notifier:
    """sd_notify(3) over $NOTIFY_SOCKET; a no-op when the service manager did not set one."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            # '@' marks Linux's abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> None:
        if self._sock is None or self._address is None:
            return
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            self._sock.sendto(payload.encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC, when the watchdog is ours (WATCHDOG_PID unset or our pid)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RepairRecord:
    trigger: str
    rules_restored: int
    routes_restored: int
    already_present: int
    skipped_dead: int
    skipped_other: int
    set_aside: int
    rollbacks: int
    batches: int
    duration_ms: float
    networkd_owner: str

    def _items(self) -> list[tuple[str, str]]:
        return [(k, f"{v:.1f}" if isinstance(v, float) else str(v)) for k, v in asdict(self).items()]

    def fields(self) -> dict[str, str]:
        """NETD_HOOK_* journald fields."""
        return {f"NETD_HOOK_{k.upper()}": v for k, v in self._items()}

    def line(self) -> str:
        return "repair " + " ".join(f"{k}={v}" for k, v in self._items())
