"""What no plan restores for now: entries the kernel refused (set aside, tried again with
backoff) and entries a monitor overrun's gap lost while networkd was idle (unattributed: who deleted
them cannot be told). Each comes back as a loss (`decide.Lost`) once its time has come."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import anyio

from ..core import decide
from ..core.forgotten import NEAR
from ..core.model import Entry
from ..core.plan import Plan

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("netd_hook.daemon.service")  # the daemon's one logger, as before the split

# Entries the kernel refused are tried again after 1 s, then twice as long each time, at most a
# minute apart (and at networkd's next reconfigure): an error can pass (a device or address that
# was not there yet), and one that does not costs one attempt a minute.
SET_ASIDE_RETRY_FIRST = 1.0
SET_ASIDE_RETRY_MAX = 60.0


class Holds:
    """The set-aside entries and their retry backoff; the overrun hold and its release."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc  # its state (is networkd busy?), tracker and publisher (the outage clock)
        self.set_aside: set[Entry] = set()
        self.set_aside_retry_at: float | None = None  # loop clock of the next try of what is set aside
        self.set_aside_delay = SET_ASIDE_RETRY_FIRST
        # Found missing after a monitor overrun with networkd idle all the while: who deleted them
        # cannot be told, so they are unattributed: not replayed (shown, `netd-hook replay` puts them back).
        self.unattributed: set[Entry] = set()
        self.overrun_at: float | None = None  # loop clock of the last overrun not yet verified
        # the overrun whose gap `unattributed` holds, until NEAR after it
        self.unattributed_overrun_at: float | None = None

    def excluded(self) -> set[Entry]:
        """What no plan restores: set aside (the kernel refused it), unattributed (after an overrun)."""
        t = self.svc.tracker
        if self.unattributed:  # back (someone re-added them, or a one-shot replay), or no longer protected
            self.unattributed = {e for e in self.unattributed if t.protects(e) and e not in t.present_rules
                                 and e not in t.present_routes}
        return self.set_aside | self.unattributed if self.unattributed else self.set_aside

    # set aside ------------------------------------------------------------------------------

    def refused(self, entries: Iterable[Entry]) -> None:
        """A batch is done: what the kernel refused in it is tried again later, backing off
        while something stays refused; once nothing is, the next refusal waits 1 s again."""
        new = set(entries)
        self.set_aside.update(new)
        if new:
            self.set_aside_retry_at = anyio.current_time() + self.set_aside_delay
            log.info("trying the %d entries set aside again in %gs", len(self.set_aside), self.set_aside_delay)
            self.set_aside_delay = min(2 * self.set_aside_delay, SET_ASIDE_RETRY_MAX)
        elif not self.set_aside:
            self.set_aside_delay = SET_ASIDE_RETRY_FIRST

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

    # the overrun hold -----------------------------------------------------------------------

    def overrun(self, now: float) -> None:
        """The monitor overran: the next verification decides about what its gap lost."""
        self.overrun_at = self.overrun_at or now

    def unattributed_after_overrun(self, p: Plan) -> bool:
        """At a verification: True (and `p`'s entries unattributed) when an overrun came before it,
        something is missing, and networkd was idle all the while."""
        overrun, self.overrun_at = self.overrun_at, None
        if overrun is None or not len(p) or self._networkd_active_since(overrun - NEAR):
            return False
        # The deletions in the gap were lost with the notifications, and networkd did nothing
        # then: replaying would be a guess (an operator's `ip rule del`, say). Hold them back.
        entries = p.entries()
        self.unattributed.update(entries)
        self.unattributed_overrun_at = overrun
        log.warning("after a netlink monitor overrun %d protected entries are missing (e.g. %s) and networkd "
                    "was idle: who deleted them cannot be told, so they are not put back; "
                    "`netd-hook replay` puts them back", len(entries), entries[0].describe())
        return True

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
        log.warning("networkd was busy around the monitor overrun after all: putting back the %d entries "
                    "unattributed", n)
        self.svc.publisher.outage_starts()
        return decide.Lost(n, "networkd")
