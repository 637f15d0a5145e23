"""The loop's inbox: what the producers sent (the netlink monitor, the bus watch, the signal
handler), in the order it arrived, and the one rule about order that decisions need: every
netlink change received so far is older than the decision being made (`catch_up`)."""

from __future__ import annotations

import math
import select
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..adapters import netlink
from ..adapters.netlink import Change, Link
from ..core import decide
from .events import Event, Incoming, flatten

if TYPE_CHECKING:
    from .service import Service


class Inbox:
    """The stream the producers send to, the batch of events being handled, and the backlog
    handled first in the next round (events catch_up or a publish had to take out of order)."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc  # its monitor socket, tracker (link names) and attribution
        tx, rx = anyio.create_memory_object_stream[Incoming](math.inf)
        self.tx: MemoryObjectSendStream[Incoming] = tx
        self.rx: MemoryObjectReceiveStream[Incoming] = rx
        self.backlog: list[Event] = []  # events set aside by catch_up, handled first
        self.batch: deque[Event] = deque()  # the rest of the events being handled

    def put(self, ev: Incoming) -> None:
        """For the producers (callbacks included): never blocks, the stream is unbounded."""
        self.tx.send_nowait(ev)

    async def take(self, deadline: float) -> list[Event]:
        """The next round's events: the backlog, else the first to arrive before `deadline` (the
        loop clock; none by then: an empty round for the timers), and all queued behind them."""
        events, self.backlog = self.backlog, []
        incoming: list[Incoming] = []
        if not events:
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                incoming.append(await self.rx.receive())
        incoming += self._queued()
        return events + flatten(incoming)

    def handling(self, events: list[Event]) -> Iterator[Event]:
        """`events` one by one; catch_up takes the netlink changes among those not handed out yet
        (they are older than what it is called for)."""
        self.batch = deque(events)
        while self.batch:
            yield self.batch.popleft()

    def _queued(self) -> list[Incoming]:
        held: list[Incoming] = []
        while True:
            try:
                held.append(self.rx.receive_nowait())
            except anyio.WouldBlock:
                return held

    def unread(self) -> bool:
        """Something is queued for the loop, or waits in the monitor socket (not read here)."""
        if self.rx.statistics().current_buffer_used:
            return True
        return bool(select.select([self.svc.mon], [], [], 0)[0])

    def pending(self, read: float = math.inf) -> tuple[list[Event], bool]:
        """Everything queued for the loop, then what the monitor socket holds (up to `read`
        datagrams), in that order (queued events are older); and whether that drained it."""
        held = self._queued()
        changes, drained = netlink.read_some(self.svc.mon, self.svc.tracker.links, read, self.svc.echo_port)
        held.extend(changes)
        return flatten(held), drained

    def catch_up(self, read: float = math.inf) -> bool:
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

        A chase (chaser.py) reads the socket `read` datagrams at a time, a batch between two: it
        puts back only deletions it has seen networkd make, which nothing unread can make
        deliberate (a rule gone cannot be deleted again); a pod that went meanwhile gets its
        rules removed again once its host route's deletion is read (orphans). Returns whether
        the socket is drained.
        """
        attribution = self.svc.attribution
        lost: dict[str, int] = {}
        rest: deque[Event] = deque()
        self._absorb(self.batch, lost, rest.append)
        self.batch = rest
        events, drained = self.pending(read)
        self._absorb(events, lost, self.backlog.append)
        attribution.count_losses(lost)  # what they lost is in the plan or dump about to be made
        attribution.log_forgets()
        return drained

    def _absorb(self, events: Iterable[Event], lost: dict[str, int], keep: Callable[[Event], None]) -> None:
        """Apply the netlink changes among `events` (what they lost is in the plan about to be
        made); `keep` the rest, in order, a link's removal as the LinkRemoved the loop steps."""
        for ev in events:
            if isinstance(ev, Change):
                self.svc.attribution.apply(ev, lost)
                if isinstance(ev.item, Link) and not ev.new:
                    keep(decide.LinkRemoved(ev.item.index))
            else:
                keep(ev)
