"""What the CLI, the metrics and systemd see: status.json, the metrics file, the STATUS= text,
the outage clock, and the heartbeat that re-publishes an idle picture."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ..adapters import status, store
from ..adapters.store import Write
from ..commands import metrics
from ..core import decide
from ..core import status_doc as sd
from ..core.model import Entry

if TYPE_CHECKING:
    from .service import Service

PUBLISH_INTERVAL = 0.5  # status.json and metrics during pod churn; changes that matter go out at once
HEARTBEAT = 30.0  # re-publish this often even when nothing changed (doctor calls older "stale")


class Publisher:
    def __init__(self, svc: Service) -> None:
        self.svc = svc  # read only: the picture published is the service's
        self.started_at = time.time()
        self.outage_total = 0.0  # seconds with protected entries missing, closed spells
        self.missing_since: float | None = None  # loop clock; wall time in missing_since_wall
        self.missing_since_wall = 0.0
        self.published_key: tuple[Any, ...] = ()
        self.published_at = -math.inf
        self.publish_at: float | None = None

    def metrics_path(self) -> Path:
        return self.svc.cfg.metrics_textfile or self.svc.runtime_dir / metrics.DEFAULT_FILE

    def outage_starts(self) -> None:
        if self.missing_since is None:
            self.missing_since = anyio.current_time()
            self.missing_since_wall = time.time()

    def _spell(self, now: float) -> float:
        """How long the outage going on has lasted at `now`, 0 without one. `now` is the loop's
        clock when its iteration began, and the outage may have started since (outage_starts()
        reads the clock afresh): a negative outage_seconds would make every reader refuse the
        status file."""
        return max(0.0, now - self.missing_since) if self.missing_since is not None else 0.0

    def maybe_publish(self, now: float) -> None:
        """Publish status.json (and metrics) when the picture changed: at once when something
        `netd-hook wait` or an operator acts on changed, else at most every PUBLISH_INTERVAL."""
        svc = self.svc
        st, c, failing = svc.state, svc.counters, svc.writes.failing
        urgent = (svc.networkd.generation, svc.networkd.pid, decide.settled(st, now), st.busy, st.lost, st.verify,
                  tuple(sorted(st.links.items())), c.repairs, c.rollbacks,
                  svc.attribution.forgotten.doubt() is not None, tuple(sorted(failing)))
        key = (*urgent, svc.tracker.version, svc.saver.saved_version,
               svc.bus.rejected_signals, svc.bus.bad_values, svc.bus.reconnects,
               len(svc.repairer.holds.set_aside), svc.attribution.forgotten.total, c.save_failures + c.publish_failures,
               len(svc.repairer.holds.unattributed), c.monitor_overruns)
        # a status.json or metrics write that failed is tried again on its backoff, not sooner
        retry = min((f.retry_at for w, f in failing.items() if w is not Write.SNAPSHOT), default=math.inf)
        if key == self.published_key and now < self.published_at + HEARTBEAT and now < retry:
            self.publish_at = min(self.published_at + HEARTBEAT, retry)
            return
        if (urgent != self.published_key[:len(urgent)] or now >= self.published_at + PUBLISH_INTERVAL
                or now >= retry):
            self.publish(now)
            if self.publish_at is None:  # nothing newer arrived meanwhile
                self.published_key = key
                self.publish_at = self.published_at + HEARTBEAT  # the next heartbeat, however idle
        else:
            self.publish_at = self.published_at + PUBLISH_INTERVAL
        # a failed write's next attempt is a timer of its own: nothing else need wake the loop by then
        retry = min((f.retry_at for w, f in failing.items() if w is not Write.SNAPSHOT), default=math.inf)
        if retry < math.inf and (self.publish_at is None or retry < self.publish_at):
            self.publish_at = retry

    def publish(self, now: float) -> None:
        # Only from a consistent picture: netlink changes still unread (our own batch's echoes
        # among them) are queued for the loop first, in order, and publishing waits for them.
        svc, writes = self.svc, self.svc.writes
        if svc.inbox.unread():
            # Right after the loop has handled them: reading them here (a wipe's thousands of
            # deletions) would hold up the loop's chase of that very wipe.
            self.publish_at = now
            return
        self.publish_at = None
        missing, held_back = svc.repairer.missing()
        if missing == 0 and not svc.state.lost and self.missing_since is not None:
            self.outage_total += self._spell(now)
            self.missing_since = None
        elif missing and self.missing_since is None:
            self.outage_starts()
        doc = self.status_doc(now, missing, held_back)
        failing = set(writes.failing)
        for what, path in ((Write.STATUS, svc.runtime_dir / status.STATUS_FILE), (Write.METRICS, self.metrics_path())):
            spell = writes.failing.get(what)
            if spell is not None and now < spell.retry_at:
                continue  # backing off: a full or read-only directory is tried again at retry_at
            try:
                if what is Write.STATUS:
                    status.publish(svc.runtime_dir, doc)
                else:
                    metrics.write(path, doc)
            except OSError as exc:
                writes.failed(what, path, exc)
            else:
                writes.ok(what)
        self.published_at = now
        if set(writes.failing) != failing:  # what was just written says otherwise: again, with the news
            self.publish_at = now

    def status_doc(self, now: float, missing: int, held_back: int) -> sd.Status:
        svc = self.svc
        st, t, c, r, bus = svc.state, svc.tracker, svc.counters, svc.repairer, svc.bus
        outage = self.outage_total + self._spell(now)
        rules, routes = svc.saver.protected(t)
        return sd.Status(
            pid=os.getpid(),
            started_at=self.started_at,
            updated_at=time.time(),
            networkd=sd.Networkd(
                owner=st.owner,
                pid=svc.networkd.pid,
                generation=svc.networkd.generation,
                settled=decide.settled(st, now),
                stuck={t.links.get(i, str(i)): round(secs, 1)
                       for i, secs in sorted(decide.stuck_links(st, now).items())},
                links={t.links.get(i, str(i)): s for i, s in sorted(st.links.items())},
            ),
            complete=decide.complete(st, now, missing),
            # what a crash of this daemon would not lose: written to the snapshot file (saver.protected)
            protected=sd.Protected(rules=rules, routes=routes),
            missing=missing,
            held_back=held_back,
            set_aside=_listed(r.holds.set_aside),
            unattributed=_listed(r.holds.unattributed),
            forgotten=svc.attribution.forgotten.status(),
            missing_since=self.missing_since_wall if self.missing_since is not None else None,
            outage_seconds=round(outage, 6),
            last_repair=None if r.last_repair is None else sd.LastRepair(at=r.last_repair_at, **asdict(r.last_repair)),
            counters=sd.Counters(**asdict(c), rejected_signals=bus.rejected_signals, bad_bus_values=bus.bad_values,
                                 bus_reconnects=bus.reconnects),
            networkd_sockets=tuple(s.port for s in svc.networkd.sockets),
            config=svc.cfg.source,
            state_dir=str(svc.state_dir),
            degraded=store.degraded(svc.writes.failing, now, time.time()),
            snapshot_saved_at=svc.saver.saved_at,
            snapshot_unsaved=t.version != svc.saver.saved_version,
        )

    def status(self) -> str:
        """The STATUS= text systemd shows."""
        svc = self.svc
        t, last, failing = svc.tracker, svc.repairer.last_repair, svc.writes.failing
        settled = decide.settled(svc.state, anyio.current_time())
        s = (f"protecting {len(t.rules)} rules, {t.protected_route_count()} routes; "
             f"networkd {'settled' if settled else 'busy'}; repairs {svc.counters.repairs}")
        if last:
            s += f"; last: {last.trigger} +{last.rules_restored} rules"
        if failing:
            since = min(f.since for f in failing.values())
            s = (f"DEGRADED since {time.strftime('%H:%M:%S UTC', time.gmtime(since))}: "
                 f"{'; '.join(store.describe(f) for f in failing.values())}; {s}")
        return s


def _listed(entries: Iterable[Entry]) -> tuple[str, ...]:
    """The first of `entries` in the status document, described, in order."""
    return tuple(sorted(e.describe() for e in entries)[:sd.LISTED_MAX])
