"""The chase: while networkd is still configuring, put back the rules its pass deleted, the first
one gone first back, in batches of at most CHUNK, taking in what arrived between two batches
(the batch's own echoes, networkd's next deletions) so that the next batch takes the oldest
still missing. One entry is chased at most `[replay] chase_max` times in a busy spell; beyond
that it waits for networkd to settle and the re-read that follows (decide.py)."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Hashable
from dataclasses import replace
from typing import TYPE_CHECKING

from ..core.apply import Outcome
from ..core.model import Entry, Rule
from ..core.plan import HeldBack, Plan, plan_rules

if TYPE_CHECKING:
    from .repairer import Repairer

log = logging.getLogger("netd_hook.daemon.service")  # the daemon's one logger, as before the split

# Rules per batch while chasing. The kernel inserts a rule in time linear in the rules there are
# (NLM_F_EXCL walks the list), ~30 us each at 2,000: a batch of 200 is back in ~6 ms, and the
# rules networkd deletes meanwhile go in the next one, instead of all waiting for one batch of
# thousands sorted by priority.
CHUNK = 200


class Chaser:
    """Runs a decide.Replay(chase=True) to the end; knows what this busy spell has chased."""

    def __init__(self, repairer: Repairer) -> None:
        self.repairer = repairer
        self.chased: dict[Entry, int] = {}  # put back while networkd was busy, this busy spell: how often
        self.tired: set[Entry] = set()  # chased chase_max times this spell: left for the re-read once settled
        self.rewiped = 0  # entries chased back this spell that networkd deleted again

    async def run(self, trigger: str, started: float) -> None:
        r = self.repairer
        svc = r.svc
        total = Outcome()
        rules: list[Rule] = []
        held_back: dict[Entry, HeldBack] = {}
        drained = False
        await r.lock_replays()
        try:
            while True:
                t = svc.tracker
                # What the gate holds back is tried again each time (a pod whose host route the
                # dump had not shown yet comes back with the next batch).
                p = plan_rules(t.chase_order(), t.liveness(r.managed()), r.holds.excluded() | self.tired, CHUNK)
                # Nothing is forgotten while networkd is busy: the links it has not decided about
                # yet (a pod's veth `pending` while a new networkd starts) count as managed, so
                # the gate can call a live pod gone. Held back for now; the repair once networkd
                # has settled decides (and forgets what is dead then).
                for h in p.held_back:
                    if h.entry not in held_back:
                        log.info("not restoring %s while networkd is busy: %s", h.entry.describe(), h.reason)
                        held_back[h.entry] = replace(h, dead=False)
                for rule in p.rules:
                    held_back.pop(rule, None)
                if p.rules:
                    out = await r.send(p, trigger)
                    total.add(out)
                    rules += p.rules
                    self._chased(p.rules)
                elif drained:
                    break
                # networkd's next deletions join, CHUNK at a time (the first batch went with what
                # was known): reading all 2,000 before the next batch would hold it up 30-50 ms
                drained = svc.inbox.catch_up(CHUNK)
        finally:
            fcntl.flock(r.replay_lock, fcntl.LOCK_UN)
        svc.counters.chases += 1
        if rules or held_back:
            r.record(trigger, started, Plan((), tuple(rules), tuple(held_back.values())), total if rules else None)

    def _chased(self, rules: tuple[Rule, ...]) -> None:
        limit, tired = self.repairer.svc.cfg.replay.chase_max, []
        for rule in rules:
            n = self.chased[rule] = self.chased.get(rule, 0) + 1
            if n >= limit:
                tired.append(rule)
        if tired:
            self.tired.update(tired)
            self.repairer.svc.counters.chase_capped += len(tired)
            log.warning("%d entries (e.g. %s) were put back %d times while networkd was busy ([replay] chase_max): "
                        "if deleted again, they wait for it to settle", len(tired), tired[0].describe(), limit)

    def deleted(self, item: Hashable) -> None:
        """A repairable loss of `item`: a re-wipe when this spell's chase had put it back."""
        if item in self.chased:
            self.rewiped += 1
            self.repairer.svc.counters.chase_rewiped += 1

    def spell_over(self) -> None:
        self.chased.clear()
        self.tired.clear()
        self.rewiped = 0

