"""Repairs: plan what is missing, send it in one batch under the replay lock, record it; re-read
the kernel to verify; remove the rules restored for pods gone since. What no plan restores for
now (set aside: the kernel refused it; unattributed: missing after an overrun) is holds.py's;
the chase while networkd is still busy is chaser.py's."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from ..adapters import netlink
from ..adapters.journal import RepairRecord, repair_audit, rollback_audit
from ..adapters.netlink import Encoder
from ..commands import ops
from ..core.apply import Outcome, Writer, execute
from ..core.links import managed_names
from ..core.model import Entry
from ..core.plan import HeldBack, Plan, gate_route, gate_rule, plan
from .chaser import Chaser
from .holds import Holds

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("netd_hook.daemon.service")  # the daemon's one logger, as before the split


class Repairer:
    """Puts back what is missing (one batch, under the lock one-shot replays take), verifies
    against a fresh dump, and removes the restored rules of gone pods."""

    writer: Writer  # the batch socket's, the dump socket and the lock's fd: set as lifecycle opens them
    dump_sock: socket.socket
    replay_lock: int

    def __init__(self, svc: Service) -> None:
        self.svc = svc  # its state, tracker, counters, configuration and catch-up
        self.encoder = Encoder()
        self.holds = Holds(svc)
        self.last_repair: RepairRecord | None = None
        self.last_repair_at = 0.0
        self.chaser = Chaser(self)

    # what is missing ------------------------------------------------------------------------

    def managed(self) -> frozenset[str]:
        return managed_names(self.svc.state.links, self.svc.tracker.links)

    def plan(self, trust_routes: bool = True) -> Plan:
        t = self.svc.tracker
        routes = t.present_routes if trust_routes else ()
        return plan(t.snapshot(), t.present_rules, routes, t.liveness(self.managed()), self.holds.excluded())

    def missing(self) -> tuple[int, int]:
        """`len(p)` and `len(p.held_back)` of `p = self.plan()`, for status.json (up to twice a
        second). Neither copies the snapshot nor hashes each of its 10,000 entries again in Python
        (plan() looks every protected entry up in the kernel's view): the set differences use the
        hashes the sets keep, so only what is missing costs a Python step and a gate."""
        t = self.svc.tracker
        excluded = self.holds.excluded()
        live = t.liveness(self.managed())
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
        self.holds.set_aside.clear()  # a new networkd generation: retry what failed before
        self.svc.inbox.catch_up()  # whatever deleted what (attribution) before the dump says what is gone
        p = await self.resync()
        return 0 if self.holds.unattributed_after_overrun(p) else len(p)

    # replaying ------------------------------------------------------------------------------

    async def replay(self, trigger: str, chase: bool = False) -> None:
        svc = self.svc
        started = time.perf_counter()
        if chase:  # networkd is still configuring: the rules its pass deleted, nothing else
            await self.chaser.run(trigger, started)
            return
        svc.inbox.catch_up()
        # After networkd reconfigured a link, the kernel has flushed that link's table routes
        # without a word (networkd re-adds its address): send every protected route along in
        # this first batch. They are few, and EEXIST counts as present.
        p = self.plan(trust_routes=not svc.state.verify)
        self.drop_dead(p.held_back)
        if not len(p):
            if p.held_back:
                self.record(trigger, started, p, None)
            return
        await self.lock_replays()
        try:
            out = await self.send(p, trigger)
        finally:
            fcntl.flock(self.replay_lock, fcntl.LOCK_UN)
        if out.rules_restored + out.routes_restored + len(out.set_aside) + len(p.held_back) == 0:
            # A late notification of something already repaired: nothing happened, nothing to audit.
            log.debug("replay (%s): all %d entries were already present", trigger, out.already_present)
            return
        self.record(trigger, started, p, out)

    def drop_dead(self, held_back: Collection[HeldBack]) -> None:
        """What the gate holds back is logged; the rules of pods gone for good are forgotten."""
        for s in held_back:
            log.info("not restoring %s: %s", s.entry.describe(), s.reason)
        self.svc.tracker.unprotect(s.entry for s in held_back if s.dead)

    async def send(self, p: Plan, trigger: str) -> Outcome:
        """One plan as one batch (and its rollbacks), under the replay lock the caller holds."""
        svc, cfg = self.svc, self.svc.cfg.replay
        out = await execute(
            p, self.add_request, self.delete_request, self.writer,
            timeout=cfg.ack_timeout_ms / 1000, max_attempts=cfg.max_attempts, replan=self.resync,
        )
        self.holds.refused(e for e, _ in out.set_aside)
        # The kernel has what it answered EEXIST for, whatever our view said (an add of ours or of
        # networkd's whose notification we read before the dump that missed it, say): without
        # this, status would call it missing for good, with nothing left to trigger a repair.
        # What it acked is there too: its echo is not read back (a deletion read after this takes
        # it away again).
        svc.tracker.mark_present(out.existed)
        svc.tracker.added_by_us(out.restored)
        if out.rollbacks and out.set_aside:
            entry, err = out.set_aside[0]
            svc.audit.emit(rollback_audit(trigger, entry.describe(), err, out.rolled_back, failed=len(out.set_aside)))
        c = svc.counters
        c.rules_restored += out.rules_restored
        c.routes_restored += out.routes_restored
        c.set_aside += len(out.set_aside)
        c.rollbacks += out.rollbacks
        return out

    async def lock_replays(self) -> None:
        """The lock `netd-hook replay` takes: uncontended it costs one syscall; held by a one-shot
        replay (milliseconds), the batch waits for it rather than interleave."""
        try:
            fcntl.flock(self.replay_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("a one-shot `netd-hook replay` holds %s; waiting for it", self.svc.state_dir / ops.REPLAY_LOCK)
            await anyio.to_thread.run_sync(fcntl.flock, self.replay_lock, fcntl.LOCK_EX, abandon_on_cancel=True)

    def record(self, trigger: str, started: float, p: Plan, out: Outcome | None) -> None:
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
        orphans, svc.tracker.restored.orphans = svc.tracker.restored.orphans, []
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
