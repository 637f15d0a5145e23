"""What the service's loop receives, typed: netlink changes (None marks a monitor overrun), the
verified D-Bus events of networkd, and the daemon's own (reload, start-up, a count that moved)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..adapters.networkd import Counted, OwnerPid
from ..core import decide
from ..core.kernel import Change


@dataclass(frozen=True, slots=True)
class Reload:
    """SIGHUP: read the configuration again."""


@dataclass(frozen=True, slots=True)
class Startup:
    """The loop's first round: what is missing at start-up is a loss like any other."""


Overrun = None  # the monitor's marker that the kernel dropped notifications (ENOBUFS)

BusEvent = decide.OwnerChanged | decide.LinksListed | decide.LinkChanged | decide.LinkRemoved | OwnerPid | Counted
Event = Change | None | BusEvent | Reload | Startup
# The monitor sends one list per wake-up (a wipe is thousands of messages); the rest one by one.
Incoming = list[Change | None] | Event


def flatten(events: Iterable[Incoming]) -> list[Event]:
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, list):
            out.extend(ev)
        else:
            out.append(ev)
    return out
