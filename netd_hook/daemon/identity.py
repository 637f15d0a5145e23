"""Who networkd is: the owner of its bus name, that owner's PID, its generation (every new owner
starts one, announced in the journal), and the kernel ports that are its: the rtnetlink socket
systemd passed us (is it still the one networkd uses?) or, without one, its PID's sockets. And
who only claimed to be networkd: signals from other senders, audited at most once per window."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from ..adapters.journal import RejectedSignals, networkd_generation_audit, rejected_signals_audit
from ..adapters.netlink import ListenedSocket
from ..adapters.networkd import OwnerPid
from ..adapters.procfs import NetworkdPorts

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("netd_hook.daemon.service")  # the daemon's one logger, as before the split


class NetworkdIdentity:
    """networkd's owner, PID and generation; its ports and passed socket; the impostors."""

    def __init__(self, svc: Service, sockets: Sequence[ListenedSocket]) -> None:
        self.svc = svc  # its state (the current owner), audit sink, bus counters and forgotten ledger
        # networkd's rtnetlink socket as systemd passed it (Sockets=): its port and inode (fd closed).
        self.sockets = list(sockets)
        self.ports = NetworkdPorts(s.port for s in self.sockets)
        self.generation = 0  # networkd bus owners seen; a restart starts a new generation
        self.announced_generation = 0
        self.pid: int | None = None
        self.previous_owner: str | None = None
        self.socket_gone: list[int] = []  # ports of passed sockets found gone: restart for the new one
        self.socket_checked = False  # in this round of the loop (a drain deletes thousands of entries)
        self.rejected = RejectedSignals()

    def log_sockets(self) -> None:
        """At start-up: how networkd's deletions will be recognised."""
        if self.sockets:
            for ls in self.sockets:
                log.info("networkd's rtnetlink socket from systemd: port %d (inode %d); its deletions are "
                         "networkd's", ls.port, ls.inode)
        else:
            log.info("no socket from systemd (networkd not socket-activated, or no Sockets= in the unit): "
                     "networkd's deletions are recognised by its PID")

    # owner and PID --------------------------------------------------------------------------

    def new_owner(self, owner: str | None) -> None:
        """Before the state machine hears of it: a new owner is a new generation."""
        current = self.svc.state.owner
        log.info("networkd owner: %s", owner or "(none)")
        self.pid = None  # until its OwnerPid, which announces the generation
        if current is not None:
            self.previous_owner = current
        if owner is not None:
            self.generation += 1
            self.svc.attribution.forgotten.new_generation()
        else:
            self.svc.audit.emit(networkd_generation_audit(None, None, self.generation, current))

    def owner_pid(self, ev: OwnerPid) -> None:
        if ev.pid is not None:  # a new networkd: does it still use the socket systemd passed us?
            self.check_socket()
        self.ports.set_pid(ev.pid)
        self.pid = ev.pid
        if ev.pid is not None and self.generation != self.announced_generation:
            self.announced_generation = self.generation
            self.svc.audit.emit(networkd_generation_audit(self.svc.state.owner, ev.pid, self.generation,
                                                          self.previous_owner))

    def check_socket(self) -> bool:
        """True (and remembered) when a socket systemd passed us is gone; logs it once."""
        if self.socket_gone or self.socket_checked:
            return bool(self.socket_gone)
        self.socket_checked = True
        gone = self.ports.vanished()
        if gone:
            self.socket_gone = gone
            log.error("networkd's rtnetlink socket (port %s) is gone: systemd-networkd.socket was restarted and "
                      "networkd uses a new socket whose port netd-hook does not know; exiting so that systemd "
                      "restarts netd-hook with it (nothing is forgotten meanwhile)", ",".join(map(str, gone)))
        return bool(gone)

    # impostors ------------------------------------------------------------------------------

    def audit_rejections(self, now: float) -> None:
        """At most one journal entry per window for signals that claim to be networkd's."""
        bus = self.svc.bus
        senders, bus.rejected_senders = bus.rejected_senders, []
        for sender in senders:
            self.rejected, burst = self.rejected.reject(sender, now)
            if burst:
                self.svc.audit.emit(rejected_signals_audit(burst))
        self.rejected, burst = self.rejected.tick(now)
        if burst:
            self.svc.audit.emit(rejected_signals_audit(burst))

    def flush_rejections(self) -> None:
        """At exit: what the window still held."""
        self.rejected, burst = self.rejected.flush(anyio.current_time())
        if burst:
            self.svc.audit.emit(rejected_signals_audit(burst))
