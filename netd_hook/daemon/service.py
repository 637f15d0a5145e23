"""`netd-hook run`: wires the adapters to the pure core inside one anyio task group.

Start-up order matters (subscribe, then list): the netlink monitor socket is opened before the
first dump and the D-Bus matches are added before networkd's links are listed, so no change
slips between the picture and the stream that keeps it current. READY=1 follows both.
Callbacks only enqueue; this module's single loop routes what arrives to the owners beside it:
attribution.py (who deleted what), repairer.py (plan, send, record, verify), saver.py (the
snapshot file, write failures) and publisher.py (status, metrics, the outage clock). The state
machine (decide.py) changes only through its events.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..adapters import config as configmod
from ..adapters import netlink, status, store
from ..adapters.journal import (
    AuditSink,
    Notifier,
    RejectedSignals,
    networkd_generation_audit,
    rejected_signals_audit,
    snapshot_rebuilt_audit,
    watchdog_interval,
)
from ..adapters.netlink import BatchWriter, Change, Link, ListenedSocket, NetlinkError
from ..adapters.networkd import BusCounters, Counted, OwnerPid, watch
from ..commands import ops
from ..core import decide
from ..core.track import Tracker
from .attribution import Attribution
from .events import Event, Incoming, Reload, Startup, flatten
from .publisher import Publisher
from .repairer import Repairer, open_replay_lock
from .saver import Saver, Writes

log = logging.getLogger(__name__)

NETLINK_RETRY = 1.0  # after a dump or batch failed twice in a row
MONITOR_RCVBUF = 32 << 20  # a wipe of 10,000 rules must not overrun the monitor

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


class NetworkdSocketGone(Exception):
    """networkd's socket, as systemd passed it, is gone: networkd now uses one whose port
    netd-hook was never told. Exit for systemd to restart netd-hook with the current socket."""


class Service:
    def __init__(self, cfg: configmod.Config, config_path: Path | None, notifier: Notifier,
                 bus_address: str | None = None,
                 runtime_dir: Path = status.DEFAULT_RUNTIME_DIR, audit: AuditSink | None = None,
                 networkd_sockets: Sequence[ListenedSocket] = ()) -> None:
        self.cfg = cfg
        # networkd's rtnetlink socket as systemd passed it (Sockets=): its port and inode (fd closed).
        self.networkd_sockets = list(networkd_sockets)
        self.audit = audit or AuditSink(None, logger=log)  # journald, or log lines when there is none
        self.rejected = RejectedSignals()
        self.announced_generation = 0
        self.previous_owner: str | None = None
        self.config_path = config_path
        self.state_dir = cfg.state_dir
        self.runtime_dir = runtime_dir
        self.generation = 0  # networkd bus owners seen; a restart starts a new generation
        self.networkd_pid: int | None = None
        self.notifier = notifier
        self.bus_address = bus_address
        self.counters = Counters()
        self.bus = BusCounters()
        self.state = decide.State(params=_params(cfg))
        self.wake_at: float | None = None
        self.backlog: list[Event] = []  # events set aside by catch_up, handled first
        self.batch: deque[Event] = deque()  # the rest of the events being handled
        self.tracker: Tracker
        self.mon: Any
        self.publisher = Publisher(self)
        self.writes = Writes(self.counters, lambda: self.notifier.send(status=self.publisher.status()))
        self.saver = Saver(self.state_dir, self.writes)
        self.attribution = Attribution(self, self.networkd_sockets)
        self.repairer = Repairer(self)
        tx, rx = anyio.create_memory_object_stream[Incoming](math.inf)
        self.tx: MemoryObjectSendStream[Incoming] = tx
        self.rx: MemoryObjectReceiveStream[Incoming] = rx

    # lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        # Every resource opens under one exit stack: a failure half-way through start-up closes
        # what was opened before it, and nothing else.
        with contextlib.ExitStack() as stack:
            stack.callback(status.DaemonLock(self.runtime_dir).close)  # AlreadyRunning: the CLI says so
            mon = self.mon = netlink.open_socket(netlink.MONITOR_GROUPS, rcvbuf=MONITOR_RCVBUF)  # before the dump
            stack.callback(mon.close)
            batch_sock = netlink.open_socket()
            stack.callback(batch_sock.close)
            dump_sock = netlink.open_socket()
            stack.callback(dump_sock.close)
            self.attribution.own_ports = frozenset(netlink.port_of(s) for s in (mon, batch_sock, dump_sock))
            if self.networkd_sockets:
                for ls in self.networkd_sockets:
                    log.info("networkd's rtnetlink socket from systemd: port %d (inode %d); its deletions are "
                             "networkd's", ls.port, ls.inode)
            else:
                log.info("no socket from systemd (networkd not socket-activated, or no Sockets= in the unit): "
                         "networkd's deletions are recognised by its PID")
            self.repairer.writer = BatchWriter(batch_sock)
            self.repairer.dump_sock = dump_sock
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # the first save says so (degraded); protecting needs no file
                log.debug("cannot create %s: %s", self.state_dir, exc)
            self._remove_debris()
            lock = self.repairer.replay_lock = open_replay_lock(self.state_dir / ops.REPLAY_LOCK)
            stack.callback(os.close, lock)
            stack.callback(self._at_exit)  # runs first: the sockets are closed after it
            await self._serve(dump_sock)

    def _at_exit(self) -> None:
        self.rejected, burst = self.rejected.flush(anyio.current_time())
        if burst:
            self.audit.emit(rejected_signals_audit(burst))
        if hasattr(self, "tracker"):
            self.saver.save_at_exit(self.tracker)

    async def _serve(self, dump_sock: Any) -> None:
        self.saver.boot = store.Boot.current(self.runtime_dir, create=True)
        loaded = store.load(self.state_dir, boot=self.saver.boot)
        if loaded.status == "loaded":
            log.info("loaded snapshot: %d rules, %d routes", len(loaded.snapshot.rules), len(loaded.snapshot.routes))
        self.tracker = Tracker(self.cfg.scope, loaded.snapshot)
        self.tracker.load(await anyio.to_thread.run_sync(netlink.dump_sync, dump_sock))
        if loaded.status != "loaded":
            why = {"corrupt": f"snapshot file is corrupt ({loaded.detail}); rebuilt from the kernel",
                   "earlier-boot": f"the snapshot is of an earlier boot ({loaded.detail}): nothing in it is "
                                   "replayed; built from the kernel"}.get(
                loaded.status, "no snapshot file (first start); built from the kernel")
            self.audit.emit(snapshot_rebuilt_audit(
                why, len(self.tracker.rules), self.tracker.protected_route_count(),
                corrupt=loaded.status == "corrupt", moved_to=loaded.moved_to))
        self.repairer.warm()
        self.saver.save(self.tracker)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._monitor, self.mon)
            tg.start_soon(self._signals, tg.cancel_scope)
            await tg.start(self._watch)
            self.tx.send_nowait(Startup())
            self.publisher.publish(anyio.current_time())
            self.notifier.send(ready=1, status=self.publisher.status())
            log.info("ready: protecting %d rules and %d routes", len(self.tracker.rules), len(self.tracker.routes))
            if (interval := watchdog_interval()) is not None:
                tg.start_soon(self._watchdog, interval)
            await self._loop()
            tg.cancel_scope.cancel()  # the loop only returns to exit: networkd's socket is gone
        gone = self.attribution.socket_gone
        if gone:
            self.notifier.send(stopping=1, status="restarting: networkd's socket changed")
            raise NetworkdSocketGone(f"networkd's socket (port {','.join(map(str, gone))}) is gone")

    async def _watch(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        # The bus adapter emits only the BusEvent kinds (events.py).
        await watch(lambda ev: self.tx.send_nowait(cast(Incoming, ev)), self.bus, address=self.bus_address,
                    task_status=task_status)

    async def _monitor(self, sock: Any) -> None:
        async for changes in netlink.monitor(sock, self.tracker.links):
            self.tx.send_nowait(changes)  # one list per wake-up: a wipe is thousands of messages

    async def _signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.tx.send_nowait(Reload())
                    continue
                log.info("stopping on %s", signal.Signals(signum).name)
                self.notifier.send(stopping=1, status="stopping")
                scope.cancel()
                return

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.send(watchdog=1)
            await anyio.sleep(interval)

    # the loop -------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            timers = (self.wake_at, self.saver.save_at, self.publisher.publish_at, self.rejected.deadline,
                      self.repairer.set_aside_retry_at)
            deadline = min(t for t in (*timers, math.inf) if t is not None)
            events, self.backlog = self.backlog, []
            incoming: list[Incoming] = []
            if not events:
                with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                    incoming.append(await self.rx.receive())
            while True:
                try:
                    incoming.append(self.rx.receive_nowait())
                except anyio.WouldBlock:
                    break
            events += flatten(incoming)
            now = anyio.current_time()
            self.attribution.socket_checked = False
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
            if self.attribution.socket_gone:
                return
            if self.tracker.orphans:
                await self.repairer.remove_orphans()
            if self.tracker.fresh:
                self.repairer.warm()
            await self.saver.tick(self.tracker, now)
            self._audit_rejections(anyio.current_time())
            self.publisher.maybe_publish(anyio.current_time())

    async def _handle(self, events: list[Event], now: float) -> None:
        # Netlink changes are folded into one Lost per run of changes, so a burst of thousands
        # of deletions costs one decision (and one batch), not thousands.
        lost: dict[str, int] = {}
        self.batch = deque(events)  # what catch_up may take netlink changes from (they are older)
        while self.batch:
            ev = self.batch.popleft()
            if isinstance(ev, Change):
                self.attribution.apply(ev, lost)
                if isinstance(ev.item, Link) and not ev.new:
                    await self._flush(lost)
                    await self._step(decide.LinkRemoved(ev.item.index))
                continue
            await self._flush(lost)
            if ev is None:
                self.counters.monitor_overruns += 1
                self.repairer.overrun_at = self.repairer.overrun_at or anyio.current_time()
                log.warning("netlink monitor overrun: notifications were lost; re-reading the kernel")
                await self._step(decide.Suspect("monitor-overrun"))
            elif isinstance(ev, OwnerPid):
                self._owner_pid(ev)
            elif isinstance(ev, decide.LinkChanged):
                await self._step(replace(ev, name=self.tracker.links.get(ev.index, "")))
            elif isinstance(ev, decide.LinkRemoved):  # its netlink deletion was applied by catch_up
                await self._step(ev)
            elif isinstance(ev, (decide.OwnerChanged, decide.LinksListed)):
                if isinstance(ev, decide.OwnerChanged) and ev.owner != self.state.owner:
                    self._new_owner(ev.owner)
                await self._step(ev)
            elif isinstance(ev, Reload):
                await self._reload()
            elif isinstance(ev, Counted):
                pass  # woke the loop: the end of this round audits and publishes the new counts
            elif isinstance(ev, Startup):
                missing = len(self.repairer.plan())
                if missing:
                    log.info("startup: %d protected entries missing", missing)
                await self._step(decide.Lost(missing, "startup"))
        await self._flush(lost)
        released = self.repairer.release_unattributed(anyio.current_time())
        if released:
            await self._step(released)

    def _owner_pid(self, ev: OwnerPid) -> None:
        if ev.pid is not None:  # a new networkd: does it still use the socket systemd passed us?
            self.attribution.check_networkd_socket()
        self.attribution.ports.set_pid(ev.pid)
        self.networkd_pid = ev.pid
        if ev.pid is not None and self.generation != self.announced_generation:
            self.announced_generation = self.generation
            self.audit.emit(networkd_generation_audit(self.state.owner, ev.pid, self.generation,
                                                      self.previous_owner))

    def _new_owner(self, owner: str | None) -> None:
        log.info("networkd owner: %s", owner or "(none)")
        self.networkd_pid = None  # until its OwnerPid, which announces the generation
        if self.state.owner is not None:
            self.previous_owner = self.state.owner
        if owner is not None:
            self.generation += 1
            self.attribution.forgotten.new_generation()
        else:
            self.audit.emit(networkd_generation_audit(None, None, self.generation, self.state.owner))

    async def _retry_set_aside(self, now: float) -> None:
        retry = self.repairer.retry_set_aside(now)
        if retry:
            await self._step(retry)

    def catch_up(self) -> None:
        """Bring the kernel view up to date before planning a replay or re-reading the kernel.

        networkd's D-Bus signals and the kernel's netlink notifications travel on two sockets:
        the signal that a link is `configured` can be read in the same wake-up as, and ahead of,
        the notifications of what networkd did just before (its wipe, its addresses). Every
        netlink change received so far is older than the decision being made, so all of them
        are applied first: those still in the batch being handled, then those queued, then what
        the socket holds. Without this the plan (or a dump) overtakes them: a deletion by
        someone else was replayed and only then forgotten (on Debian 13 netd-hook 0.1.0 got the
        wipe right or wrong by that luck), or a stale deletion, applied after the dump, left the
        view saying "missing" about an entry the kernel has. Other events keep their order: the
        batch's in the batch, the rest in the backlog.
        """
        lost: dict[str, int] = {}
        rest: deque[Event] = deque()
        self._absorb(self.batch, lost, rest.append)
        self.batch = rest
        self._absorb(self.pending(), lost, self.backlog.append)
        self._count_losses(lost)  # what they lost is in the plan or dump about to be made
        self.attribution.log_forgets()

    def _absorb(self, events: Iterable[Event], lost: dict[str, int], keep: Callable[[Event], None]) -> None:
        """Apply the netlink changes among `events` (what they lost is in the plan about to be
        made); `keep` the rest, in order, a link's removal as the LinkRemoved the loop steps."""
        for ev in events:
            if isinstance(ev, Change):
                self.attribution.apply(ev, lost)
                if isinstance(ev.item, Link) and not ev.new:
                    keep(decide.LinkRemoved(ev.item.index))
            else:
                keep(ev)

    def pending(self) -> list[Event]:
        """Everything queued for the loop, then what the monitor socket holds, in that order
        (queued events are older)."""
        held: list[Incoming] = []
        while True:
            try:
                held.append(self.rx.receive_nowait())
            except anyio.WouldBlock:
                break
        held.extend(netlink.read_available(self.mon, self.tracker.links))
        return flatten(held)

    def _count_losses(self, lost: dict[str, int]) -> None:
        for cause, n in lost.items():
            self.counters.losses[cause] = self.counters.losses.get(cause, 0) + n
            log.info("lost %d protected entries (removed by %s)", n, cause)
            self.publisher.outage_starts()

    async def _flush(self, lost: dict[str, int]) -> None:
        self.attribution.log_forgets()
        self._count_losses(lost)
        for cause, n in lost.items():
            await self._step(decide.Lost(n, cause))
        lost.clear()
        gone = self.attribution.address_gone
        while gone:
            device = gone.pop()
            log.info("%s lost an address: the kernel may have dropped the protected routes through it; "
                     "re-reading the kernel", device)
            await self._step(decide.Suspect(f"address-removed:{device}"))

    async def _step(self, event: decide.Event) -> None:
        """The one place the state machine changes: its actions are carried out by their owners."""
        queue: list[decide.Event] = [event]
        while queue:
            self.state, actions = decide.step(self.state, queue.pop(0), anyio.current_time())
            for action in actions:
                if isinstance(action, decide.Wake):
                    self.wake_at = action.at
                elif isinstance(action, decide.Replay):
                    await self.repairer.replay(action.trigger)
                    queue.append(decide.Done())
                elif isinstance(action, decide.Verify):
                    missing = await self.repairer.verify()
                    log.debug("verify (%s): %d protected entries missing in the kernel", action.trigger, missing)
                    queue.append(decide.Done())
                    if missing:  # gone without a notification (a kernel flush): name what led to it
                        self.publisher.outage_starts()
                        queue.append(decide.Lost(missing, action.trigger))

    # configuration, audits, debris ----------------------------------------------------------

    def _remove_debris(self) -> None:
        """Temporary files of a netd-hook killed while writing (kill -9 during a save): only the
        exact names store.atomic_write uses for this daemon's own files."""
        metrics_path = self.publisher.metrics_path()
        targets = ((self.state_dir, store.SNAPSHOT_FILE), (self.runtime_dir, status.STATUS_FILE),
                   (metrics_path.parent, metrics_path.name))
        for directory, name in targets:
            for path in store.remove_stale_temps(directory, name):
                log.info("removed %s: left by a netd-hook killed while writing %s", path, name)

    async def _reload(self) -> None:
        try:
            cfg = configmod.load(self.config_path)
        except configmod.ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        cfg = replace(cfg, state_dir=self.state_dir)
        if cfg.scope != self.cfg.scope:
            self.tracker.rescope(cfg.scope)  # what newly enters the scope comes with the re-dump below
        self.cfg = cfg
        self.state = replace(self.state, params=_params(cfg))
        logging.getLogger("netd_hook").setLevel(cfg.log_level.upper())
        log.info("reloaded configuration from %s", cfg.source)
        await self._step(decide.Suspect("reload"))

    def _audit_rejections(self, now: float) -> None:
        """At most one journal entry per window for signals that claim to be networkd's."""
        senders, self.bus.rejected_senders = self.bus.rejected_senders, []
        for sender in senders:
            self.rejected, burst = self.rejected.reject(sender, now)
            if burst:
                self.audit.emit(rejected_signals_audit(burst))
        self.rejected, burst = self.rejected.tick(now)
        if burst:
            self.audit.emit(rejected_signals_audit(burst))


def _params(cfg: configmod.Config) -> decide.Params:
    return decide.Params(quiet=cfg.replay.quiet_ms / 1000, absent_grace=cfg.replay.absent_grace_ms / 1000,
                         stuck_after=cfg.replay.stuck_ms / 1000)
