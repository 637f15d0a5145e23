"""What netd-hook forgot as deliberate, and whether that casts doubt on "the node is whole".

A deletion by anyone but networkd, the kernel or netd-hook itself (the CNI deleting a pod, an
operator's `ip rule del`) is forgotten: never replayed. That is right when the CNI did it, and a
disaster when attribution is wrong (netd-hook 0.1.0 on a socket-activated networkd forgot every
rule networkd wiped, then said the node was whole). So every forgetting is kept in a ledger:
who (port, process), how many, and whether it happened while networkd was busy. Many entries
forgotten around networkd's own activity is a *doubt*: published in status.json, said by `wait`,
`status` and `doctor`, never hidden behind "nothing missing". Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from .status_doc import Forgotten, LastForget, PortTally

BULK = 10  # entries forgotten around networkd's activity in one generation: a doubt
NEAR = 2.0  # seconds: a deletion this close to networkd being busy counts as "while busy"
MAX_PORTS = 16  # distinct ports kept in the tally


@dataclass(frozen=True, slots=True)
class Forget:
    """One run of deletions by one port, as the loop saw them together."""

    at: float  # loop clock
    wall: float  # time.time(), for humans
    port: int
    process: str | None
    count: int
    example: str  # one entry, described
    busy: bool = False  # networkd was busy (or became busy within NEAR)


@dataclass(slots=True)
class Ledger:
    total: int = 0
    generation: int = 0  # forgotten in the current networkd generation
    while_busy: int = 0  # of those, while networkd was busy
    busy_at: float = -math.inf  # last time networkd was seen busy (loop clock)
    by_port: dict[int, list[Any]] = field(default_factory=dict)  # port -> [process, count, last wall]
    recent: list[Forget] = field(default_factory=list)  # this generation, newest last, bounded
    last: Forget | None = None

    def forgot(self, f: Forget) -> Forget:
        """Record `f`; returns it marked busy when networkd was busy around it."""
        if f.at - self.busy_at <= NEAR:
            f = replace(f, busy=True)
        self.total += f.count
        self.generation += f.count
        if f.busy:
            self.while_busy += f.count
        tally = self.by_port.get(f.port)
        if tally is None:
            if len(self.by_port) >= MAX_PORTS:
                del self.by_port[min(self.by_port, key=lambda p: self.by_port[p][2])]
            tally = self.by_port[f.port] = [f.process, 0, 0.0]
        tally[0] = f.process or tally[0]
        tally[1] += f.count
        tally[2] = f.wall
        self.recent = [*self.recent[-31:], f]
        self.last = f
        return f

    def networkd_busy(self, now: float) -> int:
        """networkd is busy now: deletions forgotten just before (the netlink messages of a wipe
        can arrive before the D-Bus signal that says the link is configuring) count as while
        busy. Returns how many entries that reclassified."""
        moved = 0
        if now - self.busy_at > NEAR:
            for i, f in enumerate(self.recent):
                if not f.busy and now - f.at <= NEAR:
                    self.recent[i] = replace(f, busy=True)
                    moved += f.count
            self.while_busy += moved
        self.busy_at = now
        return moved

    def new_generation(self) -> None:
        self.generation = 0
        self.while_busy = 0
        self.recent = []

    def doubt(self) -> str | None:
        """Why "nothing missing" may not mean "whole", or None."""
        if self.while_busy < BULK:
            return None
        busy = [f for f in self.recent if f.busy]
        ports = sorted({(f.port, f.process or "?") for f in busy})
        who = ", ".join(f"port {p} ({name})" for p, name in ports[:4])
        return (f"{self.while_busy} protected entries were deleted by {who} while networkd was busy and were "
                f"forgotten as deliberate: if that was not the CNI, they are missing and netd-hook does not know it")

    def status(self) -> Forgotten:
        """The status document's `forgotten`."""
        last = self.last
        return Forgotten(
            total=self.total,
            generation=self.generation,
            while_busy=self.while_busy,
            doubt=self.doubt(),
            by_port=tuple(PortTally(port=p, process=t[0], count=t[1], last_at=t[2])
                          for p, t in sorted(self.by_port.items(), key=lambda kv: -kv[1][1])),
            last=None if last is None else LastForget(
                at=last.wall, port=last.port, process=last.process, count=last.count, example=last.example,
                while_busy=last.busy),
        )
