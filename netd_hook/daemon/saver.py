"""Debounced snapshot writes, and the health of every file the daemon writes (snapshot, status,
metrics): a full or read-only directory makes it degraded, never stops it protecting."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from ..adapters import store
from ..adapters.store import Write
from ..core.model import Snapshot

if TYPE_CHECKING:
    from ..core.track import Tracker
    from .service import Counters

log = logging.getLogger("netd_hook.daemon.service")  # the daemon's one logger, as before the split

SAVE_DELAY = 1.0  # coalesce snapshot writes: a pod burst costs one fsync a second


class Writes:
    """The writes failing now: one warning per spell, the systemd status says degraded, each is
    tried again on its own backoff."""

    def __init__(self, counters: Counters, announce: Callable[[], None]) -> None:
        self.failing: dict[Write, store.Failing] = {}
        self.counters = counters
        self.announce = announce  # sends the systemd status text again

    def failed(self, what: Write, path: Path, exc: OSError) -> float:
        """Count a failed write of `what`; one warning per spell (the rest at debug level), the
        systemd status says degraded. Returns when to try again (the loop's clock)."""
        now = anyio.current_time()
        prev = self.failing.get(what)
        f = self.failing[what] = store.failed(prev, what, path, exc, now, time.time())
        if what is Write.SNAPSHOT:
            self.counters.save_failures += 1
        else:
            self.counters.publish_failures += 1
        # the state directory; the runtime directory
        group = {Write.SNAPSHOT} if what is Write.SNAPSHOT else {Write.STATUS, Write.METRICS}
        if prev is None and not group & (self.failing.keys() - {what}):
            consequence = {
                Write.SNAPSHOT: "the file stays as it was (a restart merges it with the kernel)",
                Write.STATUS: "`netd-hook status` and `wait` read an older status",
                Write.METRICS: "the metrics file stays as it was",
            }[what]
            log.warning("degraded: %s; still protecting from memory, %s; retrying in %.0fs, backing off to once "
                        "every %.0fs", store.describe(f), consequence, f.delay, store.RETRY_MAX)
            self.announce()
        elif prev is None:  # its neighbour already said so: one warning per spell
            log.info("degraded: also %s", store.describe(f))
            self.announce()
        elif (prev.errno, prev.error) != (f.errno, f.error):
            log.info("still degraded: %s", store.describe(f))
        else:
            log.debug("%s (failure %d); retrying in %.0fs", store.describe(f), f.failures, f.delay)
        return f.retry_at

    def ok(self, what: Write) -> None:
        f = self.failing.pop(what, None)
        if f is None:
            return
        log.info("recovered: %s written to %s again, after %d failed attempts over %.0fs%s", what, f.path,
                 f.failures, time.time() - f.since, "" if self.failing else "; no longer degraded")
        self.announce()


class Saver:
    """The snapshot file: written at start, at once after a quiet second, at most once a second
    during a burst, with backoff while it fails, and at exit."""

    def __init__(self, state_dir: Path, writes: Writes) -> None:
        self.state_dir = state_dir
        self.writes = writes
        self.boot = store.Boot(None, 0.0)  # this boot, once the runtime directory is ours
        self.save_at: float | None = None
        self.saved_version = -1
        self.save_tried_at = -math.inf  # loop clock of the last snapshot write
        self.saved_at: float | None = None  # wall clock of the last snapshot written
        self.saved_counts = (0, 0)  # (rules, protected routes) in the file: what a crash would keep

    @property
    def path(self) -> Path:
        return self.state_dir / store.SNAPSHOT_FILE

    def save(self, tracker: Tracker) -> bool:
        """Synchronous: at start only (the loop writes from a worker thread).

        Never raises for a full or read-only state directory: the snapshot is in memory, which
        is what protecting needs; the loop's save timer tries again with backoff."""
        version, snap = tracker.version, tracker.snapshot()
        try:
            store.save(self.state_dir, snap, self.boot.id)
        except OSError as exc:
            self.save_at = self.writes.failed(Write.SNAPSHOT, self.path, exc)
            return False
        self._saved(version, snap)
        return True

    async def tick(self, tracker: Tracker, now: float) -> None:
        """One round of the loop: schedule a write of a changed snapshot, and make it when due."""
        if tracker.version != self.saved_version and self.save_at is None:
            # The first change after a quiet second is written at once, before the status says
            # it is protected (a crash then loses nothing); a burst costs one write a second.
            self.save_at = max(now, self.save_tried_at + SAVE_DELAY)
        if self.save_at is not None and now >= self.save_at:
            self.save_at = None
            self.save_tried_at = now
            version, snap = tracker.version, tracker.snapshot()  # on the loop: no races
            try:
                await anyio.to_thread.run_sync(store.save, self.state_dir, snap, self.boot.id)
            except OSError as exc:  # full or read-only: keep protecting from memory, try again later
                self.save_at = self.writes.failed(Write.SNAPSHOT, self.path, exc)
            else:
                self._saved(version, snap)

    def save_at_exit(self, tracker: Tracker) -> None:
        version, snap = tracker.version, tracker.snapshot()
        try:
            store.save(self.state_dir, snap, self.boot.id)
        except OSError as exc:
            when = ("none written by this daemon" if self.saved_at is None
                    else f"the one from {time.strftime('%H:%M:%S UTC', time.gmtime(self.saved_at))} stays")
            log.error("snapshot not saved at exit: %s; %s (the next start merges it with the kernel)",
                      store.describe(store.failed(None, Write.SNAPSHOT, self.path, exc, 0.0, 0.0)), when)
            return
        self._saved(version, snap)

    def protected(self, tracker: Tracker) -> tuple[int, int]:
        """(rules, routes) the status may call protected: those in the file, which a crash of
        this daemon would not lose (a pod learned a moment ago is protected once it is written);
        while the file cannot be written, what is protected from memory."""
        if tracker.version == self.saved_version or Write.SNAPSHOT in self.writes.failing:
            return len(tracker.rules), tracker.protected_route_count()
        return self.saved_counts

    def _saved(self, version: int, snap: Snapshot) -> None:
        self.saved_counts = (len(snap.rules), len(snap.protected_routes()))
        self.saved_version = version
        self.saved_at = time.time()
        self.writes.ok(Write.SNAPSHOT)
