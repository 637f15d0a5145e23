"""Carry out a plan as one all-or-nothing netlink batch, with our own rollback.

The kernel applies each message of a batch independently (it does not stop at a failed one),
so atomicity is ours: when any message fails, delete what this batch added, set the offending
entries aside with their errno, and send the rest as a new batch. An ENOBUFS or a missing ack
means "state unknown": re-read the kernel and plan again; never count it as success.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .kernel import BatchResult
from .model import Entry, Route, Rule
from .plan import Plan

log = logging.getLogger(__name__)


class Writer(Protocol):
    async def send(self, messages: Sequence[bytes], timeout: float) -> BatchResult: ...


@dataclass(slots=True)
class Outcome:
    rules_restored: int = 0
    routes_restored: int = 0
    already_present: int = 0
    existed: list[Entry] = field(default_factory=list)  # the kernel said EEXIST: it has them
    restored: list[Entry] = field(default_factory=list)  # added, and acked: in the kernel now
    set_aside: list[tuple[Entry, int]] = field(default_factory=list)
    rollbacks: int = 0
    rolled_back: int = 0  # entries deleted again by those rollbacks
    batches: int = 0
    unknown: list[str] = field(default_factory=list)
    gave_up: bool = False

    def add(self, other: Outcome) -> None:
        """Count `other` (a later batch of the same repair) in."""
        self.rules_restored += other.rules_restored
        self.routes_restored += other.routes_restored
        self.already_present += other.already_present
        self.existed += other.existed
        self.restored += other.restored
        self.set_aside += other.set_aside
        self.rollbacks += other.rollbacks
        self.rolled_back += other.rolled_back
        self.batches += other.batches
        self.unknown += other.unknown
        self.gave_up = self.gave_up or other.gave_up


async def execute(
    first: Plan,
    add_request: Callable[[Entry], bytes | None],
    delete_request: Callable[[Entry], bytes],
    writer: Writer,
    *,
    timeout: float,
    max_attempts: int,
    replan: Callable[[], Awaitable[Plan]],
) -> Outcome:
    out = Outcome()
    entries = first.entries()
    for _attempt in range(max_attempts):
        batch: list[Entry] = []
        messages: list[bytes] = []
        for entry in entries:
            request = add_request(entry)
            if request is not None:  # None: its device vanished since the plan
                batch.append(entry)
                messages.append(request)
        if not messages:
            return out
        result = await writer.send(messages, timeout)
        out.batches += 1
        if result.unknown is not None:
            # Some of it may be in the kernel, some not: only a fresh dump can tell.
            log.warning("batch of %d: outcome unknown (%s); re-reading the kernel", len(messages), result.unknown)
            out.unknown.append(result.unknown)
            entries = (await replan()).entries()
            continue
        out.already_present += len(result.existed)
        out.existed.extend(batch[i] for i in result.existed)
        if not result.failed:
            out.restored.extend(batch[i] for i in result.acked)
            for i in result.acked:
                if isinstance(batch[i], Rule):
                    out.rules_restored += 1
                else:
                    out.routes_restored += 1
            return out
        failed = {i for i, _ in result.failed}
        for i, code in result.failed:
            log.error("cannot restore %s: %s (errno %d); set aside", batch[i].describe(), os.strerror(code), code)
            out.set_aside.append((batch[i], code))
        await _rollback([batch[i] for i in result.acked], delete_request, writer, timeout, out)
        entries = [e for i, e in enumerate(batch) if i not in failed]
    out.gave_up = True
    log.error("gave up after %d attempts; %d entries not restored", max_attempts, len(entries))
    return out


async def _rollback(
    added: list[Entry],
    delete_request: Callable[[Entry], bytes],
    writer: Writer,
    timeout: float,
    out: Outcome,
) -> None:
    if not added:
        return
    out.rollbacks += 1
    out.rolled_back += len(added)
    # Rules first: they point at routes' tables, so undo in reverse order of the batch.
    ordered = [e for e in reversed(added) if isinstance(e, Rule)] + [e for e in reversed(added) if isinstance(e, Route)]
    result = await writer.send([delete_request(e) for e in ordered], timeout)
    out.batches += 1
    bad = [(ordered[i], c) for i, c in result.failed if c != errno.ENOENT]
    if result.unknown or bad:
        log.error("rollback of %d entries incomplete: %s", len(added), result.unknown or bad)
    else:
        log.warning("rolled back %d entries added by the failed batch", len(added))

