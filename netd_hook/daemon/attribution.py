"""Who deleted what: a netlink change is networkd's (replayed), the kernel's, ours, or someone
else's (the CNI: forgotten, never replayed), told by the port that sent it (identity.py knows
networkd's ports). What the changes lost is counted here by cause."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from ..adapters.journal import forgotten_bulk_audit
from ..adapters.netlink import Change, LocalAddress, Unsupported
from ..core import decide
from ..core.forgotten import Forget, Ledger
from ..core.model import Route, Rule
from ..core.track import Cause, classify

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("netd_hook.daemon.service")  # the daemon's one logger, as before the split


class Attribution:
    """Applies netlink changes to the tracker by cause; the ledger of what others deleted."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc  # its state, tracker, counters, audit, publisher and networkd's identity
        self.own_ports: frozenset[int] = frozenset()
        self.forgotten = Ledger()
        self.forget_run: dict[int, list[Any]] = {}  # port -> [count, example]: deletions by others, not yet logged
        self.bulk_announced = -1  # the generation whose bulk forgetting is in the journal
        self.unsupported_seen: set[str] = set()
        # Devices that lost an address (seen as its local route going) and carry protected routes:
        # the kernel may have flushed them silently, so the kernel is re-read.
        self.address_gone: set[str] = set()

    def apply(self, ev: Change, lost: dict[str, int]) -> None:
        """Apply one netlink change to the tracker; count what it lost by cause in `lost`."""
        tracker, networkd = self.svc.tracker, self.svc.networkd
        if isinstance(ev.item, Unsupported) and ev.item.what not in self.unsupported_seen:
            self.unsupported_seen.add(ev.item.what)  # once per kind: counted by the tracker
            log.info("not protecting a %s (netd-hook cannot re-create it faithfully)", ev.item.what)
        cause = classify(ev.port, self.own_ports, networkd.ports)
        item = ev.item
        forgets = (cause is Cause.OTHER and not ev.new and isinstance(item, (Rule, Route))
                   and tracker.protects(item))
        if forgets and (networkd.socket_gone or networkd.check_socket()):
            # Who deleted it cannot be told any more: keep it (the liveness gate still stops a
            # gone pod's rules), and let systemd restart us with networkd's current socket.
            cause, forgets = Cause.KERNEL, False
        if isinstance(item, LocalAddress) and not ev.new and tracker.guards_routes_via(item.oif):
            self.address_gone.add(item.oif)
        if tracker.apply(ev, cause):
            lost[cause.value] = lost.get(cause.value, 0) + 1
            self.svc.repairer.chaser.deleted(item)
        elif forgets:
            assert isinstance(item, (Rule, Route))
            self.svc.counters.forgotten_deliberate += 1
            run = self.forget_run.get(ev.port)
            if run is None:
                self.forget_run[ev.port] = [1, item.describe()]
            else:
                run[0] += 1

    def count_losses(self, lost: dict[str, int]) -> None:
        """What the changes applied lost, by cause: counted and logged; the outage has begun."""
        for cause, n in lost.items():
            self.svc.counters.losses[cause] = self.svc.counters.losses.get(cause, 0) + n
            log.info("lost %d protected entries (removed by %s)", n, cause)
            self.svc.publisher.outage_starts()

    def log_forgets(self) -> None:
        """One line per port for the deletions by others seen together: who, how many, one example."""
        if not self.forget_run:
            return
        now = anyio.current_time()
        busy = not decide.settled(self.svc.state, now)
        runs, self.forget_run = self.forget_run, {}
        ports = self.svc.networkd.ports
        for port, (count, example) in runs.items():
            f = self.forgotten.forgot(Forget(now, time.time(), port, ports.process(port), count, example, busy))
            log.log(logging.WARNING if f.busy else logging.INFO,
                    "forgot %d protected entries deleted by port %d (%s)%s, e.g. %s: deliberate, never replayed",
                    count, port, f.process or "process unknown", " while networkd was busy" if f.busy else "", example)
        self._announce_bulk()

    def note_busy(self, now: float) -> None:
        if decide.settled(self.svc.state, now):
            return
        moved = self.forgotten.networkd_busy(now)
        if moved:
            log.info("%d entries forgotten just before networkd became busy count as forgotten while busy", moved)
            self._announce_bulk()

    def _announce_bulk(self) -> None:
        doubt = self.forgotten.doubt()
        generation = self.svc.networkd.generation
        if doubt and self.bulk_announced != generation:
            self.bulk_announced = generation
            self.svc.audit.emit(forgotten_bulk_audit(doubt, self.forgotten.while_busy, generation,
                                                     [(f.port, f.process) for f in self.forgotten.recent if f.busy]))
