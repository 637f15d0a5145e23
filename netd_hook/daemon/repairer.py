"""Repairs: plan what is missing, send it in one batch under the replay lock, record it; re-read
the kernel to verify; what the kernel refused (set aside, retried with backoff), what an overrun's
gap lost (unattributed, released if networkd turns out to have been busy), orphans of gone pods."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from ..adapters import netlink
from ..adapters.journal import RepairRecord, repair_audit, rollback_audit
from ..adapters.netlink import Encoder
from ..commands import ops
from ..core import decide
from ..core.apply import Outcome, Writer, execute
from ..core.forgotten import NEAR
from ..core.links import managed_names
from ..core.model import Entry
from ..core.plan import Plan, gate_route, gate_rule, plan

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("netd_hook.daemon.service")  # the daemon's one logger, as before the split

# Entries the kernel refused are tried again after 1 s, then twice as long each time, at most a
# minute apart (and at networkd's next reconfigure): an error can pass (a device or address that
# was not there yet), and one that does not costs one attempt a minute.
SET_ASIDE_RETRY_FIRST = 1.0
SET_ASIDE_RETRY_MAX = 60.0


class Repairer:
    writer: Writer  # the batch socket's, the dump socket and the lock's fd: set as the service opens them
    dump_sock: socket.socket
    replay_lock: int

    def __init__(self, svc: Service) -> None:
        self.svc = svc  # its state, tracker, counters, configuration and catch-up
        self.encoder = Encoder()
        self.set_aside: set[Entry] = set()
        self.set_aside_retry_at: float | None = None  # loop clock of the next try of what is set aside
        self.set_aside_delay = SET_ASIDE_RETRY_FIRST
        # Found missing after a monitor overrun with networkd idle all the while: who deleted them
        # cannot be told, so they are unattributed: not replayed (shown, `netd-hook replay` puts them back).
        self.unattributed: set[Entry] = set()
        self.overrun_at: float | None = None  # loop clock of the last overrun not yet verified
        self.unattributed_overrun_at: float | None = None  # the overrun behind `unattributed`, until NEAR after it
        self.last_repair: RepairRecord | None = None
        self.last_repair_at = 0.0

    # what is missing ------------------------------------------------------------------------

    def _managed(self) -> frozenset[str]:
        return managed_names(self.svc.state.links, self.svc.tracker.links)

    def excluded(self) -> set[Entry]:
        """What no plan restores: set aside (the kernel refused it), unattributed (after an overrun)."""
        t = self.svc.tracker
        if self.unattributed:  # back (someone re-added them, or a one-shot replay), or no longer protected
            self.unattributed = {e for e in self.unattributed if t.protects(e) and e not in t.present_rules
                                 and e not in t.present_routes}
        return self.set_aside | self.unattributed if self.unattributed else self.set_aside

    def plan(self, trust_routes: bool = True) -> Plan:
        t = self.svc.tracker
        routes = t.present_routes if trust_routes else ()
        return plan(t.snapshot(), t.present_rules, routes, t.liveness(self._managed()), self.excluded())

    def missing(self) -> tuple[int, int]:
        """`len(p)` and `len(p.held_back)` of `p = self.plan()`, for status.json (up to twice a
        second). Neither copies the snapshot nor hashes each of its 10,000 entries again in Python
        (plan() looks every protected entry up in the kernel's view): the set differences use the
        hashes the sets keep, so only what is missing costs a Python step and a gate."""
        t = self.svc.tracker
        excluded = self.excluded()
        live = t.liveness(self._managed())
        missing = held_back = 0
        for rule in t.rules - t.present_rules - excluded:
            if gate_rule(rule, live) is None:
                missing += 1
            else:
                held_back += 1
        for route in t.routes - t.present_routes - excluded:
            if not t.protects(route):
                continue  # no protected rule looks up its table
            if gate_route(route, live) is None:
                missing += 1
            else:
                held_back += 1
        return missing, held_back

    async def resync(self) -> Plan:
        self.svc.tracker.load(await anyio.to_thread.run_sync(netlink.dump_sync, self.dump_sock))
        return self.plan()

    # verifying ------------------------------------------------------------------------------

    async def verify(self) -> int:
        """Re-read the kernel after networkd settles: the kernel flushes a reconfigured link's
        table routes without any notification, and an overrun monitor misses anything."""
        self.set_aside.clear()  # a new networkd generation: retry what failed before
        self.svc.catch_up()  # whatever deleted what (attribution) before the dump says what is gone
        p = await self.resync()
        overrun, self.overrun_at = self.overrun_at, None
        if overrun is not None and len(p) and not self._networkd_active_since(overrun - NEAR):
            # The deletions in the gap were lost with the notifications, and networkd did nothing
            # then: replaying would be a guess (an operator's `ip rule del`, say): unattributed.
            entries = p.entries()
            self.unattributed.update(entries)
            self.unattributed_overrun_at = overrun
            log.warning("after a netlink monitor overrun %d protected entries are missing (e.g. %s) and networkd "
                        "was idle: who deleted them cannot be told, so they are not put back; "
                        "`netd-hook replay` puts them back", len(entries), entries[0].describe())
            return 0
        return len(p)

    def _networkd_active_since(self, since: float) -> bool:
        """networkd was busy (a link configuring, a restart) at some point since `since`."""
        st = self.svc.state
        return not decide.settled(st, anyio.current_time()) or st.active_at >= since

    def release_unattributed(self, now: float) -> decide.Lost | None:
        """What an overrun's gap lost is unattributed because networkd looked idle at the re-read;
        but networkd's D-Bus signal that it is busy travels on another socket and can be read
        just after that re-read (seen in the fault drill: a reconfigure starting as the daemon
        started). Seen busy within NEAR of the overrun, that is the evidence after all: what was
        unattributed goes back (the loss returned). Later, it stays unattributed."""
        at = self.unattributed_overrun_at
        if at is None:
            return None
        if not self.unattributed or now > at + NEAR:
            self.unattributed_overrun_at = None
            return None
        if not self._networkd_active_since(at - NEAR):
            return None
        self.unattributed_overrun_at = None
        n = len(self.unattributed)
        self.unattributed.clear()
        log.warning("networkd was busy around the monitor overrun after all: putting back the %d "
                    "unattributed entries", n)
        self.svc.publisher.outage_starts()
        return decide.Lost(n, "networkd")

    def retry_set_aside(self, now: float) -> decide.Lost | None:
        """What the kernel refused is a loss like any other once its retry time has come."""
        at = self.set_aside_retry_at
        if at is None or now < at:
            return None
        self.set_aside_retry_at = None
        n = len(self.set_aside)
        if not n:
            return None
        self.set_aside.clear()
        log.info("trying the %d entries set aside again", n)
        return decide.Lost(n, "retry")

    # replaying ------------------------------------------------------------------------------

    async def replay(self, trigger: str) -> None:
        svc = self.svc
        started = time.perf_counter()
        svc.catch_up()
        # After networkd reconfigured a link, the kernel has flushed that link's table routes
        # without a word (networkd re-adds its address): send every protected route along in
        # this first batch. They are few, and EEXIST counts as present.
        p = self.plan(trust_routes=not svc.state.verify)
        dead = [s.entry for s in p.held_back if s.dead]
        for s in p.held_back:
            log.info("not restoring %s: %s", s.entry.describe(), s.reason)
        svc.tracker.unprotect(dead)
        if not len(p):
            if p.held_back:
                self._record(trigger, started, p, None)
            return
        cfg = svc.cfg.replay
        await self._lock_replays()
        try:
            out = await execute(
                p, self.add_request, self.delete_request, self.writer,
                timeout=cfg.ack_timeout_ms / 1000, max_attempts=cfg.max_attempts, replan=self.resync,
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
        svc.tracker.mark_present(out.existed)
        if out.rollbacks and out.set_aside:
            entry, err = out.set_aside[0]
            svc.audit.emit(rollback_audit(trigger, entry.describe(), err, out.rolled_back, failed=len(out.set_aside)))
        c = svc.counters
        c.rules_restored += out.rules_restored
        c.routes_restored += out.routes_restored
        c.set_aside += len(out.set_aside)
        c.rollbacks += out.rollbacks
        if out.rules_restored + out.routes_restored + len(out.set_aside) + len(p.held_back) == 0:
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
            log.info("a one-shot `netd-hook replay` holds %s; waiting for it", self.svc.state_dir / ops.REPLAY_LOCK)
            await anyio.to_thread.run_sync(fcntl.flock, self.replay_lock, fcntl.LOCK_EX, abandon_on_cancel=True)

    def _record(self, trigger: str, started: float, p: Plan, out: Outcome | None) -> None:
        svc = self.svc
        dead = sum(1 for s in p.held_back if s.dead)
        svc.counters.skipped_dead += dead
        rec = RepairRecord(
            trigger=trigger,
            rules_restored=out.rules_restored if out else 0,
            routes_restored=out.routes_restored if out else 0,
            already_present=out.already_present if out else 0,
            skipped_dead=dead,
            skipped_other=len(p.held_back) - dead,
            set_aside=len(out.set_aside) if out else 0,
            rollbacks=out.rollbacks if out else 0,
            batches=out.batches if out else 0,
            duration_ms=(time.perf_counter() - started) * 1000,
            networkd_owner=svc.state.owner or "-",
        )
        self.last_repair = rec
        self.last_repair_at = time.time()
        svc.counters.repairs += 1
        kind = trigger.partition(":")[0]
        svc.counters.repairs_by_trigger[kind] = svc.counters.repairs_by_trigger.get(kind, 0) + 1
        svc.audit.emit(repair_audit(rec))
        svc.notifier.send(status=svc.publisher.status())

    async def remove_orphans(self) -> None:
        svc = self.svc
        orphans, svc.tracker.orphans = svc.tracker.orphans, []
        result = await self.writer.send([self.delete_request(r) for r in orphans],
                                        svc.cfg.replay.ack_timeout_ms / 1000)
        svc.counters.orphans_removed += len(result.acked)
        for rule in orphans:
            log.warning("removed %s: netd-hook had restored it, and its pod is gone", rule.describe())
        if result.failed or result.unknown:
            log.error("removing restored rules of gone pods: %s", result.unknown or result.failed)

    def add_request(self, entry: Entry) -> bytes | None:
        return self.encoder.add_request(entry, self.svc.tracker.ifindex)

    def delete_request(self, entry: Entry) -> bytes:
        return netlink.delete_request(entry, self.svc.tracker.ifindex)

    def warm(self) -> None:
        t = self.svc.tracker
        fresh, t.fresh = t.fresh, []
        self.encoder.warm(fresh, t.ifindex)
        if len(self.encoder) > 2 * (len(t.rules) + len(t.routes)) + 64:
            self.encoder.retain(t.rules | t.routes)


def open_replay_lock(path: Path) -> int:
    """The lock one-shot `netd-hook replay`s take. When it cannot be opened (a read-only or
    missing state directory), no one-shot can create it either: a private stand-in keeps
    the batches' locking as it is."""
    try:
        return ops.open_lock(path)
    except OSError as exc:
        log.warning("cannot open %s (%s): batches are not serialised with one-shot `netd-hook replay`s "
                    "(which cannot take it either)", path, exc.strerror)
        return os.memfd_create("netd-hook-replay-lock", os.MFD_CLOEXEC)
