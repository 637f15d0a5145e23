"""Start-up and exit of `netd-hook run`.

Every resource opens under one exit stack (the daemon lock, three netlink sockets, the replay
lock): a failure half-way through start-up closes what was opened before it, and nothing else.
Then the snapshot file is loaded and merged with the first dump, and in one task group the
producers start: the netlink monitor, the signal handler, the bus watch. Start-up order matters
(subscribe, then list): the monitor socket is opened before the first dump and the D-Bus matches
are added before networkd's links are listed, so no change slips between the picture and the
stream that keeps it current. READY=1 follows both; the loop (service.py) runs until a signal
cancels the group, and the snapshot is written at exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import TYPE_CHECKING, Any, cast

import anyio

from ..adapters import netlink, status, store
from ..adapters.journal import snapshot_rebuilt_audit, watchdog_interval
from ..adapters.netlink import BatchWriter
from ..adapters.networkd import watch
from ..commands import ops
from ..core.track import Tracker
from .events import Incoming, Reload, Startup
from .repairer import open_replay_lock

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("netd_hook.daemon.service")  # the daemon's one logger, as before the split

MONITOR_RCVBUF = 32 << 20  # a wipe of 10,000 rules must not overrun the monitor


class NetworkdSocketGone(Exception):
    """networkd's socket, as systemd passed it, is gone: networkd now uses one whose port
    netd-hook was never told. Exit for systemd to restart netd-hook with the current socket."""


class Lifecycle:
    """Opens what the service needs, starts its producers, says READY=1; closes it all at exit."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc  # the owners it hands the resources to, and the loop it runs

    async def run(self) -> None:
        svc = self.svc
        with contextlib.ExitStack() as stack:
            stack.callback(status.DaemonLock(svc.runtime_dir).close)  # AlreadyRunning: the CLI says so
            mon = svc.mon = netlink.open_socket(netlink.MONITOR_GROUPS, rcvbuf=MONITOR_RCVBUF)  # before the dump
            stack.callback(mon.close)
            batch_sock = netlink.open_socket()
            stack.callback(batch_sock.close)
            dump_sock = netlink.open_socket()
            stack.callback(dump_sock.close)
            svc.attribution.own_ports = frozenset(netlink.port_of(s) for s in (mon, batch_sock, dump_sock))
            svc.echo_port = netlink.port_of(batch_sock)
            svc.networkd.log_sockets()
            svc.repairer.writer = BatchWriter(batch_sock)
            svc.repairer.dump_sock = dump_sock
            try:
                svc.state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # the first save says so (degraded); protecting needs no file
                log.debug("cannot create %s: %s", svc.state_dir, exc)
            self._remove_debris()
            lock = svc.repairer.replay_lock = open_replay_lock(svc.state_dir / ops.REPLAY_LOCK)
            stack.callback(os.close, lock)
            stack.callback(self._at_exit)  # runs first: the sockets are closed after it
            await self._load(dump_sock)
            await self._serve()

    def _remove_debris(self) -> None:
        """Temporary files of a netd-hook killed while writing (kill -9 during a save): only the
        exact names store.atomic_write uses for this daemon's own files."""
        svc = self.svc
        metrics_path = svc.publisher.metrics_path()
        targets = ((svc.state_dir, store.SNAPSHOT_FILE), (svc.runtime_dir, status.STATUS_FILE),
                   (metrics_path.parent, metrics_path.name))
        for directory, name in targets:
            for path in store.remove_stale_temps(directory, name):
                log.info("removed %s: left by a netd-hook killed while writing %s", path, name)

    def _at_exit(self) -> None:
        self.svc.networkd.flush_rejections()
        if hasattr(self.svc, "tracker"):
            self.svc.saver.save_at_exit(self.svc.tracker)

    async def _load(self, dump_sock: Any) -> None:
        """The snapshot file merged with the first dump, and written back at once."""
        svc = self.svc
        svc.saver.boot = store.Boot.current(svc.runtime_dir, create=True)
        loaded = store.load(svc.state_dir, boot=svc.saver.boot)
        if loaded.status == "loaded":
            log.info("loaded snapshot: %d rules, %d routes", len(loaded.snapshot.rules), len(loaded.snapshot.routes))
        svc.tracker = Tracker(svc.cfg.scope, loaded.snapshot)
        svc.tracker.load(await anyio.to_thread.run_sync(netlink.dump_sync, dump_sock))
        if loaded.status != "loaded":
            why = {"corrupt": f"snapshot file is corrupt ({loaded.detail}); rebuilt from the kernel",
                   "earlier-boot": f"the snapshot is of an earlier boot ({loaded.detail}): nothing in it is "
                                   "replayed; built from the kernel"}.get(
                loaded.status, "no snapshot file (first start); built from the kernel")
            svc.audit.emit(snapshot_rebuilt_audit(
                why, len(svc.tracker.rules), svc.tracker.protected_route_count(),
                corrupt=loaded.status == "corrupt", moved_to=loaded.moved_to))
        svc.repairer.warm()
        svc.saver.save(svc.tracker)

    async def _serve(self) -> None:
        svc = self.svc
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._monitor, svc.mon)
            tg.start_soon(self._signals, tg.cancel_scope)
            await tg.start(self._watch)
            svc.inbox.put(Startup())
            svc.publisher.publish(anyio.current_time())
            svc.notifier.send(ready=1, status=svc.publisher.status())
            log.info("ready: protecting %d rules and %d routes", len(svc.tracker.rules), len(svc.tracker.routes))
            if (interval := watchdog_interval()) is not None:
                tg.start_soon(self._watchdog, interval)
            await svc.loop()
            tg.cancel_scope.cancel()  # the loop only returns to exit: networkd's socket is gone
        gone = svc.networkd.socket_gone
        if gone:
            svc.notifier.send(stopping=1, status="restarting: networkd's socket changed")
            raise NetworkdSocketGone(f"networkd's socket (port {','.join(map(str, gone))}) is gone")

    # the producers: they only enqueue ----------------------------------------------------------

    async def _watch(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        # The bus adapter emits only the BusEvent kinds (events.py).
        await watch(lambda ev: self.svc.inbox.put(cast(Incoming, ev)), self.svc.bus, address=self.svc.bus_address,
                    task_status=task_status)

    async def _monitor(self, sock: Any) -> None:
        async for changes in netlink.monitor(sock, self.svc.tracker.links, self.svc.echo_port):
            self.svc.inbox.put(changes)  # one list per wake-up: a wipe is thousands of messages

    async def _signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.svc.inbox.put(Reload())
                    continue
                log.info("stopping on %s", signal.Signals(signum).name)
                self.svc.notifier.send(stopping=1, status="stopping")
                scope.cancel()
                return

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.svc.notifier.send(watchdog=1)
            await anyio.sleep(interval)
