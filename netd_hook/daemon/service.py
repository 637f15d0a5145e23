"""`netd-hook run`: the event loop that wires the adapters to the pure core.

lifecycle.py opens the resources, starts the producers (the netlink monitor, the bus watch,
signals) in one anyio task group and says READY=1; callbacks only enqueue, into inbox.py. This
module's single loop routes what arrives to the owners beside it: identity.py (who networkd
is), attribution.py (who deleted what), repairer.py (plan, send, record, verify) and holds.py
(what is not restored for now), saver.py (the snapshot file, write failures), publisher.py
(status, metrics, the outage clock) and reloader.py (SIGHUP). The state machine (decide.py)
changes only through its events, in `Service._step`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from ..adapters import config as configmod
from ..adapters import status
from ..adapters.journal import AuditSink, Notifier
from ..adapters.netlink import Change, Link, ListenedSocket, NetlinkError
from ..adapters.networkd import BusCounters, Counted, OwnerPid
from ..core import decide
from ..core.track import Tracker
from .attribution import Attribution
from .events import Event, Reload, Startup
from .identity import NetworkdIdentity
from .inbox import Inbox
from .lifecycle import Lifecycle, NetworkdSocketGone
from .publisher import Publisher
from .reloader import Reloader, params
from .repairer import Repairer
from .saver import Saver, Writes

log = logging.getLogger(__name__)

NETLINK_RETRY = 1.0  # after a dump or batch failed twice in a row
# A link losing its address is re-read for silently flushed routes this long after, not at once:
# networkd takes the address away as it starts a link's configure, before its D-Bus signal says
# so, and a re-read then (a dump of thousands of rules) would hold up the chase of its wipe.
ADDRESS_GRACE = 0.05

__all__ = ["Counters", "NetworkdSocketGone", "Reload", "Service"]


@dataclass(slots=True)
class Counters:
    repairs: int = 0
    rules_restored: int = 0
    routes_restored: int = 0
    skipped_dead: int = 0
    set_aside: int = 0
    rollbacks: int = 0
    losses: dict[str, int] = field(default_factory=dict)  # repairable losses by cause
    forgotten_deliberate: int = 0  # deletions by others (the CNI): never replayed
    orphans_removed: int = 0  # rules we had restored for a pod that then went away
    monitor_overruns: int = 0
    save_failures: int = 0  # snapshot writes that failed (full or read-only state directory)
    publish_failures: int = 0  # status.json or metrics writes that failed
    repairs_by_trigger: dict[str, int] = field(default_factory=dict)  # trigger kind: "reconfigure", ...
    chases: int = 0  # batches sent while networkd was still busy (decide's chase)
    chase_rewiped: int = 0  # entries a chase put back that networkd deleted again in the same busy spell
    chase_capped: int = 0  # entries chased [replay] chase_max times in a busy spell: then left for the re-read


class Service:
    """The event loop: each round takes what arrived, hands it to its owner, steps the state
    machine, and carries out its actions; then the timers' work (save, publish, audits)."""

    def __init__(self, cfg: configmod.Config, config_path: Path | None, notifier: Notifier,
                 bus_address: str | None = None,
                 runtime_dir: Path = status.DEFAULT_RUNTIME_DIR, audit: AuditSink | None = None,
                 networkd_sockets: Sequence[ListenedSocket] = ()) -> None:
        self.cfg = cfg
        self.audit = audit or AuditSink(None, logger=log)  # journald, or log lines when there is none
        self.state_dir = cfg.state_dir
        self.runtime_dir = runtime_dir
        self.notifier = notifier
        self.bus_address = bus_address
        self.counters = Counters()
        self.bus = BusCounters()
        self.state = decide.State(params=params(cfg))
        self.wake_at: float | None = None
        self.tracker: Tracker  # the kernel view and the snapshot: set by lifecycle, once dumped
        self.mon: Any  # the netlink monitor socket: set by lifecycle
        self.echo_port: int | None = None  # the batch socket's: its additions' echoes are not read back
        self.networkd = NetworkdIdentity(self, networkd_sockets)
        self.publisher = Publisher(self)
        self.writes = Writes(self.counters, lambda: self.notifier.send(status=self.publisher.status()))
        self.saver = Saver(self.state_dir, self.writes)
        self.attribution = Attribution(self)
        self.repairer = Repairer(self)
        self.reloader = Reloader(self, config_path)
        self.inbox = Inbox(self)
        self.lifecycle = Lifecycle(self)

    async def run(self) -> None:
        await self.lifecycle.run()

    # the loop -------------------------------------------------------------------------------

    async def loop(self) -> None:
        """Until networkd's passed socket is found gone (a signal cancels it otherwise)."""
        while True:
            timers = (self.wake_at, self.saver.save_at, self.publisher.publish_at, self.networkd.rejected.deadline,
                      self.repairer.holds.set_aside_retry_at)
            events = await self.inbox.take(min(t for t in (*timers, math.inf) if t is not None))
            now = anyio.current_time()
            self.networkd.socket_checked = False
            try:
                try:
                    await self._handle(events, now)
                except NetlinkError as exc:
                    # A batch or dump that failed outright: the next verification starts over.
                    log.error("netlink error: %s; will re-read the kernel", exc)
                    await self._step(decide.Failed("netlink-error"))
                if self.wake_at is not None and now >= self.wake_at:
                    self.wake_at = None
                    await self._step(decide.Tick())
                await self._retry_set_aside(now)
            except NetlinkError as exc:  # and again: keep serving, try once more a little later
                log.error("netlink error again: %s; re-reading the kernel in %g s", exc, NETLINK_RETRY)
                await self._step(decide.Failed("netlink-error", retry_at=anyio.current_time() + NETLINK_RETRY))
            self.attribution.note_busy(now)
            if self.networkd.socket_gone:
                return
            if self.tracker.restored.orphans:
                await self.repairer.remove_orphans()
            if self.tracker.fresh:
                self.repairer.warm()
            await self.saver.tick(self.tracker, now)
            self.networkd.audit_rejections(anyio.current_time())
            self.publisher.maybe_publish(anyio.current_time())

    async def _handle(self, events: list[Event], now: float) -> None:
        # Netlink changes are folded into one Lost per run of changes, so a burst of thousands
        # of deletions costs one decision (and one batch), not thousands.
        lost: dict[str, int] = {}
        for ev in self.inbox.handling(events):  # catch_up may take netlink changes from the rest
            if isinstance(ev, Change):
                self.attribution.apply(ev, lost)
                if isinstance(ev.item, Link) and not ev.new:
                    await self._flush(lost)
                    await self._step(decide.LinkRemoved(ev.item.index))
                continue
            await self._flush(lost)
            if ev is None:
                self.counters.monitor_overruns += 1
                self.repairer.holds.overrun(anyio.current_time())
                log.warning("netlink monitor overrun: notifications were lost; re-reading the kernel")
                await self._step(decide.Suspect("monitor-overrun"))
            elif isinstance(ev, OwnerPid):
                self.networkd.owner_pid(ev)
            elif isinstance(ev, decide.LinkChanged):
                await self._step(replace(ev, name=self.tracker.links.get(ev.index, "")))
            elif isinstance(ev, decide.LinkRemoved):  # its netlink deletion was applied by catch_up
                await self._step(ev)
            elif isinstance(ev, (decide.OwnerChanged, decide.LinksListed)):
                if isinstance(ev, decide.OwnerChanged) and ev.owner != self.state.owner:
                    self.networkd.new_owner(ev.owner)
                await self._step(ev)
            elif isinstance(ev, Reload):
                if (reconfigured := self.reloader.reload()) is not None:
                    await self._step(reconfigured)
            elif isinstance(ev, Counted):
                pass  # woke the loop: the end of this round audits and publishes the new counts
            elif isinstance(ev, Startup):
                missing = len(self.repairer.plan())
                if missing:
                    log.info("startup: %d protected entries missing", missing)
                await self._step(decide.Lost(missing, "startup"))
        await self._flush(lost)
        released = self.repairer.holds.release_unattributed(anyio.current_time())
        if released:
            await self._step(released)

    async def _retry_set_aside(self, now: float) -> None:
        retry = self.repairer.holds.retry_set_aside(now)
        if retry:
            await self._step(retry)

    async def _flush(self, lost: dict[str, int]) -> None:
        self.attribution.log_forgets()
        self.attribution.count_losses(lost)
        for cause, n in lost.items():
            await self._step(decide.Lost(n, cause))
        lost.clear()
        gone = self.attribution.address_gone
        while gone:
            device = gone.pop()
            log.info("%s lost an address: the kernel may have dropped the protected routes through it; "
                     "re-reading the kernel", device)
            await self._step(decide.Suspect(f"address-removed:{device}", ADDRESS_GRACE))

    def _spell(self, was: decide.State) -> None:
        """The end of a busy spell that was chased: said in one line; the chase starts afresh."""
        if was.chases and not self.state.chases:
            chaser = self.repairer.chaser
            log.info("networkd settled after %d repairs while it was busy (%d entries deleted again after one)",
                     was.chases, chaser.rewiped)
            chaser.spell_over()

    async def _step(self, event: decide.Event) -> None:
        """The one place the state machine changes: its actions are carried out by their owners."""
        queue: list[decide.Event] = [event]
        while queue:
            was = self.state
            self.state, actions = decide.step(self.state, queue.pop(0), anyio.current_time())
            self._spell(was)
            for action in actions:
                if isinstance(action, decide.Wake):
                    self.wake_at = action.at
                elif isinstance(action, decide.Replay):
                    await self.repairer.replay(action.trigger, chase=action.chase)
                    queue.append(decide.Done())
                elif isinstance(action, decide.Verify):
                    missing = await self.repairer.verify()
                    log.debug("verify (%s): %d protected entries missing in the kernel", action.trigger, missing)
                    queue.append(decide.Done())
                    if missing:  # gone without a notification (a kernel flush): name what led to it
                        self.publisher.outage_starts()
                        queue.append(decide.Lost(missing, action.trigger))
