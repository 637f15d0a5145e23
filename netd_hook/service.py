"""`netd-hook run`: wires the adapters to the pure core inside one anyio task group.

Start-up order matters (subscribe, then list): the netlink monitor socket is opened before the
first dump and the D-Bus matches are added before networkd's links are listed, so no change
slips between the picture and the stream that keeps it current. READY=1 follows both.
Callbacks only enqueue; this module's single loop does the work.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import config as configmod
from . import decide, metrics, netlink, ops, status, store
from .forgotten import NEAR, Forget, Ledger
from .journal import (
    AuditSink,
    Notifier,
    RejectedSignals,
    RepairRecord,
    forgotten_bulk_audit,
    networkd_generation_audit,
    rejected_signals_audit,
    repair_audit,
    rollback_audit,
    snapshot_rebuilt_audit,
    watchdog_interval,
)
from .links import managed
from .model import Entry, Route, Rule
from .netlink import (
    BatchWriter,
    Change,
    Encoder,
    Link,
    ListenedSocket,
    LocalAddress,
    NetlinkError,
    Unsupported,
)
from .networkd import BusCounters, Counted, OwnerPid, watch
from .plan import Plan, gate_route, gate_rule, plan
from .procfs import NetworkdPorts
from .replay import Outcome, Writer, execute
from .track import Cause, Tracker, classify

log = logging.getLogger(__name__)

SAVE_DELAY = 1.0  # coalesce snapshot writes: a pod burst costs one fsync a second
PUBLISH_INTERVAL = 0.5  # status.json and metrics during pod churn; changes that matter go out at once
HEARTBEAT = 30.0  # re-publish this often even when nothing changed (doctor calls older "stale")
NETLINK_RETRY = 1.0  # after a dump or batch failed twice in a row
# Entries the kernel refused are tried again after 1 s, then twice as long each time, at most a
# minute apart (and at networkd's next reconfigure): an error can pass (a device or address that
# was not there yet), and one that does not costs one attempt a minute.
SET_ASIDE_RETRY_FIRST = 1.0
SET_ASIDE_RETRY_MAX = 60.0
MONITOR_RCVBUF = 32 << 20  # a wipe of 10,000 rules must not overrun the monitor


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


@dataclass(frozen=True, slots=True)
class Reload:
    pass


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
        self.boot = store.Boot(None, 0.0)  # this boot, once the runtime directory is ours (_run)
        self.started_at = time.time()
        self.generation = 0  # networkd bus owners seen; a restart starts a new generation
        self.networkd_pid: int | None = None
        self.outage_total = 0.0  # seconds with protected entries missing, closed spells
        self.missing_since: float | None = None  # loop clock; wall time in missing_since_wall
        self.missing_since_wall = 0.0
        self.published_key: tuple[Any, ...] = ()
        self.published_at = -math.inf
        self.publish_at: float | None = None
        self.notifier = notifier
        self.bus_address = bus_address
        self.counters = Counters()
        self.bus = BusCounters()
        self.ports = NetworkdPorts(s.port for s in self.networkd_sockets)
        self.forgotten = Ledger()
        self.forget_run: dict[int, list[Any]] = {}  # port -> [count, example]: deletions by others, not yet logged
        self.bulk_announced = -1  # the generation whose bulk forgetting is in the journal
        self.socket_gone: list[int] = []  # ports of passed sockets found gone: restart for the new one
        self.socket_checked = False  # in this round of the loop (a drain deletes thousands of entries)
        self.encoder = Encoder()
        self.set_aside: set[Entry] = set()
        # Devices that lost an address (seen as its local route going) and carry protected routes:
        # the kernel may have flushed them silently, so the kernel is re-read.
        self.address_gone: set[str] = set()
        self.set_aside_retry_at: float | None = None  # loop clock of the next try of what is set aside
        self.set_aside_delay = SET_ASIDE_RETRY_FIRST
        # Found missing after a monitor overrun with networkd idle all the while: who deleted them
        # cannot be told, so they are held back (shown, `netd-hook replay` puts them back).
        self.unattributed: set[Entry] = set()
        self.overrun_at: float | None = None  # loop clock of the last overrun not yet verified
        self.held_overrun_at: float | None = None  # the overrun whose gap `unattributed` holds, until NEAR after it
        self.state = decide.State(params=_params(cfg))
        self.wake_at: float | None = None
        self.save_at: float | None = None
        self.saved_version = -1
        self.save_tried_at = -math.inf  # loop clock of the last snapshot write
        self.saved_at: float | None = None  # wall clock of the last snapshot written
        self.failing: dict[str, store.Failing] = {}  # "snapshot", "status", "metrics": writes failing now
        self.last_repair: RepairRecord | None = None
        self.last_repair_at = 0.0
        self.backlog: list[Any] = []  # events set aside by _catch_up, handled first
        self.batch: deque[Any] = deque()  # the rest of the events being handled
        self.unsupported_seen: set[str] = set()
        self.tracker: Tracker
        tx, rx = anyio.create_memory_object_stream[Any](math.inf)
        self.tx: MemoryObjectSendStream[Any] = tx
        self.rx: MemoryObjectReceiveStream[Any] = rx

    # lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        lock = status.DaemonLock(self.runtime_dir)  # AlreadyRunning: the CLI says so and exits
        try:
            await self._run()
        finally:
            lock.close()

    async def _run(self) -> None:
        mon = netlink.open_socket(netlink.MONITOR_GROUPS, rcvbuf=MONITOR_RCVBUF)  # before the dump
        self.mon = mon
        batch_sock = netlink.open_socket()
        dump_sock = netlink.open_socket()
        self.own_ports = frozenset(netlink.port_of(s) for s in (mon, batch_sock, dump_sock))
        if self.networkd_sockets:
            for ls in self.networkd_sockets:
                log.info("networkd's rtnetlink socket from systemd: port %d (inode %d); its deletions are networkd's",
                         ls.port, ls.inode)
        else:
            log.info("no socket from systemd (networkd not socket-activated, or no Sockets= in the unit): "
                     "networkd's deletions are recognised by its PID")
        self.writer: Writer = BatchWriter(batch_sock)
        self.dump_sock = dump_sock
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the first save says so (degraded); protecting needs no file
            log.debug("cannot create %s: %s", self.state_dir, exc)
        self._remove_debris()
        self.replay_lock = self._open_replay_lock()
        try:
            self.boot = store.Boot.current(self.runtime_dir, create=True)
            loaded = store.load(self.state_dir, boot=self.boot)
            if loaded.status == "loaded":
                log.info("loaded snapshot: %d rules, %d routes",
                         len(loaded.snapshot.rules), len(loaded.snapshot.routes))
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
            self._warm()
            self._save()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._monitor, mon)
                tg.start_soon(self._signals, tg.cancel_scope)
                await tg.start(self._watch)
                self.tx.send_nowait(_Startup())
                self._publish(anyio.current_time())
                self.notifier.send(ready=1, status=self._status())
                log.info("ready: protecting %d rules and %d routes", len(self.tracker.rules), len(self.tracker.routes))
                if (interval := watchdog_interval()) is not None:
                    tg.start_soon(self._watchdog, interval)
                await self._loop()
                tg.cancel_scope.cancel()  # the loop only returns to exit: networkd's socket is gone
            if self.socket_gone:
                self.notifier.send(stopping=1, status="restarting: networkd's socket changed")
                raise NetworkdSocketGone(f"networkd's socket (port {','.join(map(str, self.socket_gone))}) is gone")
        finally:
            self.rejected, burst = self.rejected.flush(anyio.current_time())
            if burst:
                self.audit.emit(rejected_signals_audit(burst))
            with anyio.CancelScope(shield=True):
                if hasattr(self, "tracker"):
                    self._save_at_exit()
                for s in (mon, batch_sock, dump_sock):
                    s.close()
                os.close(self.replay_lock)

    async def _watch(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        await watch(self.tx.send_nowait, self.bus, address=self.bus_address, task_status=task_status)

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
            timers = (self.wake_at, self.save_at, self.publish_at, self.rejected.deadline, self.set_aside_retry_at)
            deadline = min(t for t in (*timers, math.inf) if t is not None)
            events, self.backlog = self.backlog, []
            if not events:
                with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                    events.append(await self.rx.receive())
            while True:
                try:
                    events.append(self.rx.receive_nowait())
                except anyio.WouldBlock:
                    break
            events = _flatten(events)
            now = anyio.current_time()
            self.socket_checked = False
            try:
                try:
                    await self._handle(events, now)
                except NetlinkError as exc:
                    # A batch or dump that failed outright: the next verification starts over.
                    log.error("netlink error: %s; will re-read the kernel", exc)
                    self.state = replace(self.state, busy=False)
                    await self._step(decide.Suspect("netlink-error"))
                if self.wake_at is not None and now >= self.wake_at:
                    self.wake_at = None
                    await self._step(decide.Tick())
                await self._retry_set_aside(now)
            except NetlinkError as exc:  # and again: keep serving, try once more a little later
                log.error("netlink error again: %s; re-reading the kernel in %g s", exc, NETLINK_RETRY)
                self.state = replace(self.state, busy=False, verify=True)
                self.wake_at = anyio.current_time() + NETLINK_RETRY
            self._note_busy(now)
            if self.socket_gone:
                return
            if self.tracker.orphans:
                await self._remove_orphans()
            if self.tracker.fresh:
                self._warm()
            if self.tracker.version != self.saved_version and self.save_at is None:
                # The first change after a quiet second is written at once, before the status says
                # it is protected (a crash then loses nothing); a burst costs one write a second.
                self.save_at = max(now, self.save_tried_at + SAVE_DELAY)
            if self.save_at is not None and now >= self.save_at:
                self.save_at = None
                self.save_tried_at = now
                version, snap = self.tracker.version, self.tracker.snapshot()  # on the loop: no races
                try:
                    await anyio.to_thread.run_sync(store.save, self.state_dir, snap, self.boot.id)
                except OSError as exc:  # full or read-only: keep protecting from memory, try again later
                    self.save_at = self._write_failed("snapshot", self.state_dir / store.SNAPSHOT_FILE, exc)
                else:
                    self._saved(version)
            self._audit_rejections(anyio.current_time())
            self._maybe_publish(anyio.current_time())

    async def _handle(self, events: list[Any], now: float) -> None:
        # Netlink changes are folded into one Lost per run of changes, so a burst of thousands
        # of deletions costs one decision (and one batch), not thousands.
        lost: dict[str, int] = {}
        self.batch = deque(events)  # what _catch_up may take netlink changes from (they are older)
        while self.batch:
            ev = self.batch.popleft()
            if isinstance(ev, Change):
                self._apply(ev, lost)
                if isinstance(ev.item, Link) and not ev.new:
                    await self._flush(lost)
                    await self._step(decide.LinkRemoved(ev.item.index))
                continue
            await self._flush(lost)
            if ev is None:
                self.counters.monitor_overruns += 1
                self.overrun_at = self.overrun_at or anyio.current_time()
                log.warning("netlink monitor overrun: notifications were lost; re-reading the kernel")
                await self._step(decide.Suspect("monitor-overrun"))
            elif isinstance(ev, OwnerPid):
                if ev.pid is not None:  # a new networkd: does it still use the socket systemd passed us?
                    self._check_networkd_socket()
                self.ports.set_pid(ev.pid)
                self.networkd_pid = ev.pid
                if ev.pid is not None and self.generation != self.announced_generation:
                    self.announced_generation = self.generation
                    self.audit.emit(networkd_generation_audit(self.state.owner, ev.pid, self.generation,
                                                              self.previous_owner))
            elif isinstance(ev, decide.LinkChanged):
                await self._step(replace(ev, name=self.tracker.links.get(ev.index, "")))
            elif isinstance(ev, decide.LinkRemoved):  # its netlink deletion was applied by _catch_up
                await self._step(ev)
            elif isinstance(ev, (decide.OwnerChanged, decide.LinksListed)):
                if isinstance(ev, decide.OwnerChanged) and ev.owner != self.state.owner:
                    log.info("networkd owner: %s", ev.owner or "(none)")
                    self.networkd_pid = None  # until its OwnerPid, which announces the generation
                    if self.state.owner is not None:
                        self.previous_owner = self.state.owner
                    if ev.owner is not None:
                        self.generation += 1
                        self.forgotten.new_generation()
                    else:
                        self.audit.emit(networkd_generation_audit(None, None, self.generation, self.state.owner))
                await self._step(ev)
            elif isinstance(ev, Reload):
                await self._reload()
            elif isinstance(ev, Counted):
                pass  # woke the loop: the end of this round audits and publishes the new counts
            elif isinstance(ev, _Startup):
                missing = len(self._plan())
                if missing:
                    log.info("startup: %d protected entries missing", missing)
                await self._step(decide.Lost(missing, "startup"))
        await self._flush(lost)
        await self._release_held(anyio.current_time())

    async def _retry_set_aside(self, now: float) -> None:
        """What the kernel refused is a loss like any other once its retry time has come."""
        at = self.set_aside_retry_at
        if at is None or now < at:
            return
        self.set_aside_retry_at = None
        n = len(self.set_aside)
        if n:
            self.set_aside.clear()
            log.info("trying the %d entries set aside again", n)
            await self._step(decide.Lost(n, "retry"))

    async def _release_held(self, now: float) -> None:
        """What an overrun's gap lost was held back because networkd looked idle at the re-read;
        but networkd's D-Bus signal that it is busy travels on another socket and can be read
        just after that re-read (seen in the fault drill: a reconfigure starting as the daemon
        started). Seen busy within NEAR of the overrun, that is the evidence after all: what was
        held back goes back. Later, the hold is final."""
        at = self.held_overrun_at
        if at is None:
            return
        if not self.unattributed or now > at + NEAR:
            self.held_overrun_at = None
            return
        if self._networkd_active_since(at - NEAR):
            self.held_overrun_at = None
            n = len(self.unattributed)
            self.unattributed.clear()
            log.warning("networkd was busy around the monitor overrun after all: putting back the %d entries "
                        "held back", n)
            self._outage_starts()
            await self._step(decide.Lost(n, "networkd"))

    def _apply(self, ev: Change, lost: dict[str, int]) -> None:
        if isinstance(ev.item, Unsupported) and ev.item.what not in self.unsupported_seen:
            self.unsupported_seen.add(ev.item.what)  # once per kind: counted by the tracker
            log.info("not protecting a %s (netd-hook cannot re-create it faithfully)", ev.item.what)
        cause = classify(ev.port, self.own_ports, self.ports)
        item = ev.item
        forgets = (cause is Cause.OTHER and not ev.new and isinstance(item, (Rule, Route))
                   and self.tracker.protects(item))
        if forgets and (self.socket_gone or self._check_networkd_socket()):
            # Who deleted it cannot be told any more: keep it (the liveness gate still stops a
            # gone pod's rules), and let systemd restart us with networkd's current socket.
            cause, forgets = Cause.KERNEL, False
        if isinstance(item, LocalAddress) and not ev.new and self.tracker.guards_routes_via(item.oif):
            self.address_gone.add(item.oif)
        if self.tracker.apply(ev, cause):
            lost[cause.value] = lost.get(cause.value, 0) + 1
        elif forgets:
            assert isinstance(item, (Rule, Route))
            self.counters.forgotten_deliberate += 1
            run = self.forget_run.get(ev.port)
            if run is None:
                self.forget_run[ev.port] = [1, item.describe()]
            else:
                run[0] += 1

    def _catch_up(self) -> None:
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
        rest: deque[Any] = deque()
        self._absorb(self.batch, lost, rest.append)
        self.batch = rest
        self._absorb(_flatten(self._pending()), lost, self.backlog.append)
        self._count_losses(lost)  # what they lost is in the plan or dump about to be made
        self._log_forgets()

    def _absorb(self, events: Iterable[Any], lost: dict[str, int], keep: Callable[[Any], None]) -> None:
        """Apply the netlink changes among `events` (what they lost is in the plan about to be
        made); `keep` the rest, in order, a link's removal as the LinkRemoved the loop steps."""
        for ev in events:
            if isinstance(ev, Change):
                self._apply(ev, lost)
                if isinstance(ev.item, Link) and not ev.new:
                    keep(decide.LinkRemoved(ev.item.index))
            else:
                keep(ev)

    def _check_networkd_socket(self) -> bool:
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

    def _log_forgets(self) -> None:
        """One line per port for the deletions by others seen together: who, how many, one example."""
        if not self.forget_run:
            return
        now = anyio.current_time()
        busy = not decide.settled(self.state, now)
        runs, self.forget_run = self.forget_run, {}
        for port, (count, example) in runs.items():
            f = self.forgotten.forgot(Forget(now, time.time(), port, self.ports.process(port), count, example, busy))
            log.log(logging.WARNING if f.busy else logging.INFO,
                    "forgot %d protected entries deleted by port %d (%s)%s, e.g. %s: deliberate, never replayed",
                    count, port, f.process or "process unknown", " while networkd was busy" if f.busy else "", example)
        self._announce_bulk()

    def _note_busy(self, now: float) -> None:
        if decide.settled(self.state, now):
            return
        moved = self.forgotten.networkd_busy(now)
        if moved:
            log.info("%d entries forgotten just before networkd became busy count as forgotten while busy", moved)
            self._announce_bulk()

    def _announce_bulk(self) -> None:
        doubt = self.forgotten.doubt()
        if doubt and self.bulk_announced != self.generation:
            self.bulk_announced = self.generation
            self.audit.emit(forgotten_bulk_audit(doubt, self.forgotten.while_busy, self.generation,
                                                 [(f.port, f.process) for f in self.forgotten.recent if f.busy]))

    def _count_losses(self, lost: dict[str, int]) -> None:
        for cause, n in lost.items():
            self.counters.losses[cause] = self.counters.losses.get(cause, 0) + n
            log.info("lost %d protected entries (removed by %s)", n, cause)
            self._outage_starts()

    async def _flush(self, lost: dict[str, int]) -> None:
        self._log_forgets()
        self._count_losses(lost)
        for cause, n in lost.items():
            await self._step(decide.Lost(n, cause))
        lost.clear()
        while self.address_gone:
            device = self.address_gone.pop()
            log.info("%s lost an address: the kernel may have dropped the protected routes through it; "
                     "re-reading the kernel", device)
            await self._step(decide.Suspect(f"address-removed:{device}"))

    async def _step(self, event: decide.Event) -> None:
        queue: list[decide.Event] = [event]
        while queue:
            self.state, actions = decide.step(self.state, queue.pop(0), anyio.current_time())
            for action in actions:
                if isinstance(action, decide.Wake):
                    self.wake_at = action.at
                elif isinstance(action, decide.Replay):
                    await self._replay(action.trigger)
                    queue.append(decide.Done())
                elif isinstance(action, decide.Verify):
                    missing = await self._verify()
                    log.debug("verify (%s): %d protected entries missing in the kernel", action.trigger, missing)
                    queue.append(decide.Done())
                    if missing:  # gone without a notification (a kernel flush): name what led to it
                        self._outage_starts()
                        queue.append(decide.Lost(missing, action.trigger))

    # actions --------------------------------------------------------------------------------

    def _managed(self) -> frozenset[str]:
        names = self.tracker.links
        return frozenset(names[i] for i in managed(self.state.links) if i in names)

    def _held(self) -> set[Entry]:
        """What no plan restores: set aside (the kernel refused it), held back after an overrun."""
        t = self.tracker
        if self.unattributed:  # back (someone re-added them, or a one-shot replay), or no longer protected
            self.unattributed = {e for e in self.unattributed if t.protects(e) and e not in t.present_rules
                                 and e not in t.present_routes}
        return self.set_aside | self.unattributed if self.unattributed else self.set_aside

    def _plan(self, trust_routes: bool = True) -> Plan:
        t = self.tracker
        routes = t.present_routes if trust_routes else ()
        return plan(t.snapshot(), t.present_rules, routes, t.liveness(self._managed()), self._held())

    def _missing(self) -> tuple[int, int]:
        """`len(p)` and `len(p.skipped)` of `p = self._plan()`, for status.json (up to twice a
        second). Neither copies the snapshot nor hashes each of its 10,000 entries again in Python
        (plan() looks every protected entry up in the kernel's view): the set differences use the
        hashes the sets keep, so only what is missing costs a Python step and a gate."""
        t = self.tracker
        held = self._held()
        live = t.liveness(self._managed())
        missing = skipped = 0
        for rule in t.rules - t.present_rules - held:
            if gate_rule(rule, live) is None:
                missing += 1
            else:
                skipped += 1
        for route in t.routes - t.present_routes - held:
            if not t.protects(route):
                continue  # no protected rule looks up its table
            if gate_route(route, live) is None:
                missing += 1
            else:
                skipped += 1
        return missing, skipped

    async def _resync(self) -> Plan:
        self.tracker.load(await anyio.to_thread.run_sync(netlink.dump_sync, self.dump_sock))
        return self._plan()

    async def _verify(self) -> int:
        """Re-read the kernel after networkd settles: the kernel flushes a reconfigured link's
        table routes without any notification, and an overrun monitor misses anything."""
        self.set_aside.clear()  # a new networkd generation: retry what failed before
        self._catch_up()  # whatever deleted what (attribution) before the dump says what is gone
        p = await self._resync()
        overrun, self.overrun_at = self.overrun_at, None
        if overrun is not None and len(p) and not self._networkd_active_since(overrun - NEAR):
            # The deletions in the gap were lost with the notifications, and networkd did nothing
            # then: replaying would be a guess (an operator's `ip rule del`, say). Hold them back.
            entries: list[Entry] = [*p.routes, *p.rules]
            self.unattributed.update(entries)
            self.held_overrun_at = overrun
            log.warning("after a netlink monitor overrun %d protected entries are missing (e.g. %s) and networkd "
                        "was idle: who deleted them cannot be told, so they are not put back; "
                        "`netd-hook replay` puts them back", len(entries), entries[0].describe())
            return 0
        return len(p)

    def _networkd_active_since(self, since: float) -> bool:
        """networkd was busy (a link configuring, a restart) at some point since `since`."""
        return not decide.settled(self.state, anyio.current_time()) or self.state.active_at >= since

    async def _replay(self, trigger: str) -> None:
        started = time.perf_counter()
        self._catch_up()
        # After networkd reconfigured a link, the kernel has flushed that link's table routes
        # without a word (networkd re-adds its address): send every protected route along in
        # this first batch. They are few, and EEXIST counts as present.
        p = self._plan(trust_routes=not self.state.verify)
        dead = [s.entry for s in p.skipped if s.dead]
        for s in p.skipped:
            log.info("not restoring %s: %s", s.entry.describe(), s.reason)
        self.tracker.forget(dead)
        if not len(p):
            if p.skipped:
                self._record(trigger, started, p, None)
            return
        cfg = self.cfg.replay
        await self._lock_replays()
        try:
            out = await execute(
                p, self._add_request, self._delete_request, self.writer,
                timeout=cfg.ack_timeout_ms / 1000, max_attempts=cfg.max_attempts, replan=self._resync,
            )
        finally:
            fcntl.flock(self.replay_lock, fcntl.LOCK_UN)
        self.set_aside.update(e for e, _ in out.set_aside)
        if out.set_aside:
            self.set_aside_retry_at = anyio.current_time() + self.set_aside_delay
            log.info("trying the %d entries set aside again in %gs", len(self.set_aside), self.set_aside_delay)
            self.set_aside_delay = min(2 * self.set_aside_delay, SET_ASIDE_RETRY_MAX)
        elif not self.set_aside:
            self.set_aside_delay = SET_ASIDE_RETRY_FIRST
        # The kernel has what it answered EEXIST for, whatever our view said (an add of ours or of
        # networkd's whose notification we read before the dump that missed it, say): without
        # this, status would call it missing for good, with nothing left to trigger a repair.
        self.tracker.mark_present(out.existed)
        if out.rollbacks and out.set_aside:
            entry, err = out.set_aside[0]
            self.audit.emit(rollback_audit(trigger, entry.describe(), err, out.rolled_back, failed=len(out.set_aside)))
        c = self.counters
        c.rules_restored += out.rules_restored
        c.routes_restored += out.routes_restored
        c.set_aside += len(out.set_aside)
        c.rollbacks += out.rollbacks
        if out.rules_restored + out.routes_restored + len(out.set_aside) + len(p.skipped) == 0:
            # A late notification of something already repaired: nothing happened, nothing to audit.
            log.debug("replay (%s): all %d entries were already present", trigger, out.already_present)
            return
        self._record(trigger, started, p, out)

    async def _lock_replays(self) -> None:
        """The lock `netd-hook replay` takes: uncontended it costs one syscall; held by a one-shot
        replay (milliseconds), the batch waits for it rather than interleave."""
        try:
            fcntl.flock(self.replay_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("a one-shot `netd-hook replay` holds %s; waiting for it", self.state_dir / ops.REPLAY_LOCK)
            await anyio.to_thread.run_sync(fcntl.flock, self.replay_lock, fcntl.LOCK_EX, abandon_on_cancel=True)

    def _record(self, trigger: str, started: float, p: Plan, out: Outcome | None) -> None:
        dead = sum(1 for s in p.skipped if s.dead)
        self.counters.skipped_dead += dead
        rec = RepairRecord(
            trigger=trigger,
            rules_restored=out.rules_restored if out else 0,
            routes_restored=out.routes_restored if out else 0,
            already_present=out.already_present if out else 0,
            skipped_dead=dead,
            skipped_other=len(p.skipped) - dead,
            set_aside=len(out.set_aside) if out else 0,
            rollbacks=out.rollbacks if out else 0,
            batches=out.batches if out else 0,
            duration_ms=(time.perf_counter() - started) * 1000,
            networkd_owner=self.state.owner or "-",
        )
        self.last_repair = rec
        self.last_repair_at = time.time()
        self.counters.repairs += 1
        kind = trigger.partition(":")[0]
        self.counters.repairs_by_trigger[kind] = self.counters.repairs_by_trigger.get(kind, 0) + 1
        self.audit.emit(repair_audit(rec))
        self.notifier.send(status=self._status())

    async def _remove_orphans(self) -> None:
        orphans, self.tracker.orphans = self.tracker.orphans, []
        result = await self.writer.send([self._delete_request(r) for r in orphans],
                                        self.cfg.replay.ack_timeout_ms / 1000)
        self.counters.orphans_removed += len(result.acked)
        for rule in orphans:
            log.warning("removed %s: netd-hook had restored it, and its pod is gone", rule.describe())
        if result.failed or result.unknown:
            log.error("removing restored rules of gone pods: %s", result.unknown or result.failed)

    def _add_request(self, entry: Entry) -> bytes | None:
        return self.encoder.add_request(entry, self.tracker.ifindex)

    def _delete_request(self, entry: Entry) -> bytes:
        return netlink.delete_request(entry, self.tracker.ifindex)

    def _warm(self) -> None:
        fresh, self.tracker.fresh = self.tracker.fresh, []
        self.encoder.warm(fresh, self.tracker.ifindex)
        if len(self.encoder) > 2 * (len(self.tracker.rules) + len(self.tracker.routes)) + 64:
            self.encoder.retain(self.tracker.rules | self.tracker.routes)

    def _save(self) -> bool:
        """Synchronous: at start and at exit only (the loop writes from a worker thread).

        Never raises for a full or read-only state directory: the snapshot is in memory, which
        is what protecting needs; the loop's save timer tries again with backoff."""
        version = self.tracker.version
        try:
            store.save(self.state_dir, self.tracker.snapshot(), self.boot.id)
        except OSError as exc:
            self.save_at = self._write_failed("snapshot", self.state_dir / store.SNAPSHOT_FILE, exc)
            return False
        self._saved(version)
        return True

    def _save_at_exit(self) -> None:
        version, path = self.tracker.version, self.state_dir / store.SNAPSHOT_FILE
        try:
            store.save(self.state_dir, self.tracker.snapshot(), self.boot.id)
        except OSError as exc:
            when = ("none written by this daemon" if self.saved_at is None
                    else f"the one from {time.strftime('%H:%M:%S UTC', time.gmtime(self.saved_at))} stays")
            log.error("snapshot not saved at exit: %s; %s (the next start merges it with the kernel)",
                      store.describe(store.failed(None, "snapshot", path, exc, 0.0, 0.0)), when)
            return
        self._saved(version)

    def _saved(self, version: int) -> None:
        self.saved_version = version
        self.saved_at = time.time()
        self._write_ok("snapshot")

    def _write_failed(self, what: str, path: Path, exc: OSError) -> float:
        """Count a failed write of `what`; one warning per spell (the rest at debug level), the
        systemd status says degraded. Returns when to try again (the loop's clock)."""
        now = anyio.current_time()
        prev = self.failing.get(what)
        f = self.failing[what] = store.failed(prev, what, path, exc, now, time.time())
        if what == "snapshot":
            self.counters.save_failures += 1
        else:
            self.counters.publish_failures += 1
        group = {"snapshot"} if what == "snapshot" else {"status", "metrics"}  # the state dir; the runtime dir
        if prev is None and not group & (self.failing.keys() - {what}):
            consequence = {
                "snapshot": "the file stays as it was (a restart merges it with the kernel)",
                "status": "`netd-hook status` and `wait` read an older status",
                "metrics": "the metrics file stays as it was",
            }.get(what, "")
            log.warning("degraded: %s; still protecting from memory, %s; retrying in %.0fs, backing off to once "
                        "every %.0fs", store.describe(f), consequence, f.delay, store.RETRY_MAX)
            self.notifier.send(status=self._status())
        elif prev is None:  # its neighbour already said so: one warning per spell
            log.info("degraded: also %s", store.describe(f))
            self.notifier.send(status=self._status())
        elif (prev.errno, prev.error) != (f.errno, f.error):
            log.info("still degraded: %s", store.describe(f))
        else:
            log.debug("%s (failure %d); retrying in %.0fs", store.describe(f), f.failures, f.delay)
        return f.retry_at

    def _write_ok(self, what: str) -> None:
        f = self.failing.pop(what, None)
        if f is None:
            return
        log.info("recovered: %s written to %s again, after %d failed attempts over %.0fs%s", what, f.path,
                 f.failures, time.time() - f.since, "" if self.failing else "; no longer degraded")
        self.notifier.send(status=self._status())

    def _metrics_path(self) -> Path:
        return self.cfg.metrics_textfile or self.runtime_dir / metrics.DEFAULT_FILE

    def _remove_debris(self) -> None:
        """Temporary files of a netd-hook killed while writing (kill -9 during a save): only the
        exact names store.atomic_write uses for this daemon's own files."""
        targets = ((self.state_dir, store.SNAPSHOT_FILE), (self.runtime_dir, status.STATUS_FILE),
                   (self._metrics_path().parent, self._metrics_path().name))
        for directory, name in targets:
            for path in store.remove_stale_temps(directory, name):
                log.info("removed %s: left by a netd-hook killed while writing %s", path, name)

    def _open_replay_lock(self) -> int:
        """The lock one-shot `netd-hook replay`s take. When it cannot be opened (a read-only or
        missing state directory), no one-shot can create it either: a private stand-in keeps
        the batches' locking as it is."""
        try:
            return ops.open_lock(self.state_dir / ops.REPLAY_LOCK)
        except OSError as exc:
            log.warning("cannot open %s (%s): batches are not serialised with one-shot `netd-hook replay`s "
                        "(which cannot take it either)", self.state_dir / ops.REPLAY_LOCK, exc.strerror)
            return os.memfd_create("netd-hook-replay-lock", os.MFD_CLOEXEC)

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

    # what the CLI and the metrics see -------------------------------------------------------

    def _outage_starts(self) -> None:
        if self.missing_since is None:
            self.missing_since = anyio.current_time()
            self.missing_since_wall = time.time()

    def _maybe_publish(self, now: float) -> None:
        """Publish status.json (and metrics) when the picture changed: at once when something
        `netd-hook wait` or an operator acts on changed, else at most every PUBLISH_INTERVAL."""
        st = self.state
        urgent = (self.generation, self.networkd_pid, decide.settled(st, now), st.busy, st.lost, st.verify,
                  tuple(sorted(st.links.items())), self.counters.repairs, self.counters.rollbacks,
                  self.forgotten.doubt() is not None, tuple(sorted(self.failing)))
        key = (*urgent, self.tracker.version, self.saved_version, self.bus.rejected_signals, len(self.set_aside),
               self.forgotten.total, self.counters.save_failures + self.counters.publish_failures,
               len(self.unattributed), self.counters.monitor_overruns)
        # a status.json or metrics write that failed is tried again on its backoff, not sooner
        retry = min((f.retry_at for w, f in self.failing.items() if w != "snapshot"), default=math.inf)
        if key == self.published_key and now < self.published_at + HEARTBEAT and now < retry:
            self.publish_at = min(self.published_at + HEARTBEAT, retry)
            return
        if (urgent != self.published_key[:len(urgent)] or now >= self.published_at + PUBLISH_INTERVAL
                or now >= retry):
            self._publish(now)
            if self.publish_at is None:  # nothing newer arrived meanwhile
                self.published_key = key
                self.publish_at = self.published_at + HEARTBEAT  # the next heartbeat, however idle
        else:
            self.publish_at = self.published_at + PUBLISH_INTERVAL
        # a failed write's next attempt is a timer of its own: nothing else need wake the loop by then
        retry = min((f.retry_at for w, f in self.failing.items() if w != "snapshot"), default=math.inf)
        if retry < math.inf and (self.publish_at is None or retry < self.publish_at):
            self.publish_at = retry

    def _pending(self) -> list[Any]:
        """Everything queued for the loop, then what the monitor socket holds, in that order
        (queued events are older)."""
        held: list[Any] = []
        while True:
            try:
                held.append(self.rx.receive_nowait())
            except anyio.WouldBlock:
                break
        held.extend(netlink.read_available(self.mon, self.tracker.links))
        return held

    def _publish(self, now: float) -> None:
        # Only from a consistent picture: netlink changes still unread (our own batch's echoes
        # among them) are queued for the loop first, in order, and publishing waits for them.
        held = self._pending()
        if held:
            self.backlog.extend(held)
            self.publish_at = now  # right after the loop has handled them
            return
        self.publish_at = None
        missing, held_back = self._missing()
        if missing == 0 and not self.state.lost and self.missing_since is not None:
            self.outage_total += now - self.missing_since
            self.missing_since = None
        elif missing and self.missing_since is None:
            self._outage_starts()
        doc = self._status_doc(now, missing, held_back)
        failing = set(self.failing)
        for what, path in (("status", self.runtime_dir / status.STATUS_FILE), ("metrics", self._metrics_path())):
            spell = self.failing.get(what)
            if spell is not None and now < spell.retry_at:
                continue  # backing off: a full or read-only directory is tried again at retry_at
            try:
                if what == "status":
                    status.publish(self.runtime_dir, doc)
                else:
                    metrics.write(path, doc)
            except OSError as exc:
                self._write_failed(what, path, exc)
            else:
                self._write_ok(what)
        self.published_at = now
        if set(self.failing) != failing:  # what was just written says otherwise: again, with the news
            self.publish_at = now

    def _status_doc(self, now: float, missing: int, held_back: int) -> dict[str, Any]:
        st, t, c = self.state, self.tracker, self.counters
        settled = decide.settled(st, now)
        outage = self.outage_total + (now - self.missing_since if self.missing_since is not None else 0.0)
        return {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "networkd": {
                "owner": st.owner,
                "pid": self.networkd_pid,
                "generation": self.generation,
                "settled": settled,
                # busy longer than [replay] stuck_ms: holding back no repair; seconds busy
                "stuck": {t.links.get(i, str(i)): round(secs, 1)
                          for i, secs in sorted(decide.stuck_links(st, now).items())},
                "links": {t.links.get(i, str(i)): s for i, s in sorted(st.links.items())},
            },
            # Nothing missing, nothing pending, networkd settled: what `netd-hook wait` waits for.
            "complete": bool(st.owner and settled and not (st.busy or st.lost or st.verify) and missing == 0),
            "protected": {"rules": len(t.rules), "routes": t.protected_route_count()},
            "missing": missing,
            "held_back": held_back,
            "set_aside": [e.describe() for e in sorted(self.set_aside, key=lambda e: e.describe())][:50],
            # missing after a monitor overrun while networkd was idle: not replayed (who deleted them?)
            "unattributed": [e.describe() for e in sorted(self.unattributed, key=lambda e: e.describe())][:50],
            "forgotten": self.forgotten.doc(),
            "missing_since": self.missing_since_wall if self.missing_since is not None else None,
            "outage_seconds": round(outage, 6),
            "last_repair": None if self.last_repair is None else {
                "at": self.last_repair_at, **asdict(self.last_repair)},
            "counters": {
                **{k: v for k, v in asdict(c).items() if not isinstance(v, dict)},
                "losses": dict(c.losses),
                "repairs_by_trigger": dict(c.repairs_by_trigger),
                "rejected_signals": self.bus.rejected_signals,
                "bad_bus_values": self.bus.bad_values,
                "bus_reconnects": self.bus.reconnects,
            },
            "networkd_sockets": [s.port for s in self.networkd_sockets],
            "config": self.cfg.source,
            "state_dir": str(self.state_dir),
            # None, or the writes failing now (full or read-only directory): still protecting from memory
            "degraded": store.degraded_doc(self.failing, now, time.time()),
            "snapshot_saved_at": self.saved_at,  # wall clock of the last snapshot written (None: not yet)
            "snapshot_unsaved": self.tracker.version != self.saved_version,  # the file lags the daemon
        }

    def _status(self) -> str:
        t = self.tracker
        settled = decide.settled(self.state, anyio.current_time())
        s = (f"protecting {len(t.rules)} rules, {t.protected_route_count()} routes; "
             f"networkd {'settled' if settled else 'busy'}; repairs {self.counters.repairs}")
        if self.last_repair:
            s += f"; last: {self.last_repair.trigger} +{self.last_repair.rules_restored} rules"
        if self.failing:
            since = min(f.since for f in self.failing.values())
            s = (f"DEGRADED since {time.strftime('%H:%M:%S UTC', time.gmtime(since))}: "
                 f"{'; '.join(store.describe(f) for f in self.failing.values())}; {s}")
        return s


@dataclass(frozen=True, slots=True)
class _Startup:
    pass


def _flatten(events: list[Any]) -> list[Any]:
    """The monitor sends lists of changes (None marks an overrun); everything else one by one."""
    out: list[Any] = []
    for ev in events:
        if isinstance(ev, list):
            out.extend(ev)
        else:
            out.append(ev)
    return out


def _params(cfg: configmod.Config) -> decide.Params:
    return decide.Params(quiet=cfg.replay.quiet_ms / 1000, absent_grace=cfg.replay.absent_grace_ms / 1000,
                         stuck_after=cfg.replay.stuck_ms / 1000)
