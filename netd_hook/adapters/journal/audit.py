"""The audit records: one place holds an event's data; the human line and the structured fields
are rendered from it (pure)."""

from __future__ import annotations

import errno
import math
import os
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from .native import (
    _STANDARD_FIELDS,
    ERR,
    IDENTIFIER,
    NOTICE,
    WARNING,
    FieldValue,
    JournalFieldError,
    check_field_name,
    check_message_id,
    check_priority,
    entry_items,
)
from .notify import RepairRecord

# Stable MESSAGE_IDs (generated once with uuid4). They are an interface: saved searches and
# alerts match on them (`journalctl MESSAGE_ID=...`). Never change or reuse one.
MESSAGE_ID_REPAIR = "a7e6caf34a5a4925b54a82f6a6014e44"
MESSAGE_ID_ROLLBACK = "42ca24a307504d3fb8e4b59f2acb432b"
MESSAGE_ID_REJECTED_SIGNALS = "16c9e29f67304724b2609ad397d0c0b7"
MESSAGE_ID_SNAPSHOT_REBUILT = "86102935c4624c3aac843f766b9b588d"
MESSAGE_ID_NETWORKD_GENERATION = "673ebf16c5574f6faf247b96df0ae5a9"
MESSAGE_ID_FORGOTTEN_BULK = "208c2ee2ebe949c4bf2d850a94e6374f"

MESSAGE_IDS = {
    "repair": MESSAGE_ID_REPAIR,
    "rollback": MESSAGE_ID_ROLLBACK,
    "rejected-signals": MESSAGE_ID_REJECTED_SIGNALS,
    "snapshot-rebuilt": MESSAGE_ID_SNAPSHOT_REBUILT,
    "networkd-generation": MESSAGE_ID_NETWORKD_GENERATION,
    "forgotten-bulk": MESSAGE_ID_FORGOTTEN_BULK,
}

MAX_SENDERS = 8  # distinct bus senders named in one REJECTED_SIGNALS entry


@dataclass(frozen=True, slots=True)
class Audit:
    """One audit event: the human line (MESSAGE, also the stderr fallback) and its fields.

    Validated at construction, so that sending can never fail on a bad name. Priorities
    (syslog levels, what `journalctl -p` filters on):

    | event               | PRIORITY                                  | because                          |
    | ------------------- | ----------------------------------------- | -------------------------------- |
    | REPAIR              | 4 warning                                 | networkd destroyed what the node |
    |                     | 5 notice when nothing was restored, set   | needed; notice: only dead pods'  |
    |                     | aside or rolled back                      | entries were involved            |
    | ROLLBACK            | 3 error                                   | the kernel refused an entry      |
    | REJECTED_SIGNALS    | 4 warning                                 | someone on the bus sends signals |
    |                     |                                           | networkd did not send            |
    | SNAPSHOT_REBUILT    | 3 error when the file was corrupt         | state on disk was lost           |
    |                     | 5 notice otherwise (missing: first start) |                                  |
    | NETWORKD_GENERATION | 5 notice                                  | expected on restarts; context    |
    |                     |                                           | for the repairs that follow      |
    | FORGOTTEN_BULK      | 4 warning                                 | many entries forgotten as        |
    |                     |                                           | deliberate while networkd was    |
    |                     |                                           | busy: "whole" is in doubt        |
    """

    message_id: str
    priority: int
    message: str
    fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_message_id(self.message_id)
        check_priority(self.priority)
        for name in self.fields:
            if check_field_name(name) in _STANDARD_FIELDS:
                raise JournalFieldError(f"journal field {name!r} is set by the sender itself")
        object.__setattr__(self, "fields", types.MappingProxyType(dict(self.fields)))

    def items(self, identifier: str = IDENTIFIER) -> list[tuple[str, FieldValue]]:
        """Every field journald receives for this event."""
        return entry_items(self.message, priority=self.priority, message_id=self.message_id, fields=self.fields,
                           identifier=identifier)


def _word(value: str) -> str:
    """A value in a `key=value` line: quoted when it has blanks (or is empty)."""
    return f'"{value}"' if not value or any(c.isspace() for c in value) else value


def _line(event: str, items: Iterable[tuple[str, str]]) -> str:
    return event + " " + " ".join(f"{k}={_word(v)}" for k, v in items)


def _fields(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {f"NETD_HOOK_{k.upper()}": v for k, v in items}


def repair_audit(rec: RepairRecord) -> Audit:
    """Every repair. MESSAGE is `rec.line()`, the line the service has always logged."""
    changed = rec.rules_restored + rec.routes_restored + rec.set_aside + rec.rollbacks
    return Audit(MESSAGE_ID_REPAIR, WARNING if changed else NOTICE, rec.line(), rec.fields())


def rollback_audit(trigger: str, failed_entry: str, err: int, rolled_back: int, *, failed: int = 1) -> Audit:
    """A batch rolled back: the kernel refused `failed` entries (the first is `failed_entry`,
    with errno `err`), and the `rolled_back` entries that batch had added were deleted again."""
    name = errno.errorcode.get(err, str(err))
    items = [("trigger", trigger), ("rolled_back", str(rolled_back)), ("failed", str(failed)), ("errno", name),
             ("failed_entry", failed_entry)]
    # ERRNO= is journald's standard numeric field (systemd.journal-fields(7)).
    return Audit(MESSAGE_ID_ROLLBACK, ERR, _line("rollback", items), {**_fields(items), "ERRNO": str(err)})


@dataclass(frozen=True, slots=True)
class RejectedBurst:
    """What one REJECTED_SIGNALS entry summarises."""

    count: int
    senders: tuple[str, ...]  # distinct, first seen first, at most MAX_SENDERS
    window_s: float  # from the first to the last rejection counted
    more_senders: bool = False  # senders beyond MAX_SENDERS were left out


def rejected_signals_audit(burst: RejectedBurst) -> Audit:
    senders = ",".join(burst.senders) + (",..." if burst.more_senders else "")
    items = [("rejected", str(burst.count)), ("sender", senders or "-"), ("window_s", f"{burst.window_s:.1f}")]
    return Audit(MESSAGE_ID_REJECTED_SIGNALS, WARNING, _line("rejected-signals", items), _fields(items))


@dataclass(frozen=True, slots=True)
class RejectedSignals:
    """Burst limiter for REJECTED_SIGNALS: at most one entry per `window_s` (pure: the caller
    passes the time, and keeps the returned state).

    The first rejection after a quiet window is reported at once (count 1); the ones that follow
    within `window_s` of that report are counted and summarised in one entry as soon as the
    window is over: by the next `reject()` after it, or by `tick(now)` once `now >= deadline`
    (the service arms a timer for `deadline`). `flush(now)` reports what is pending regardless
    (at shutdown)::

        limiter = RejectedSignals()
        limiter, burst = limiter.reject(sender, now)
        if burst:
            sink.emit(rejected_signals_audit(burst))
    """

    window_s: float = 10.0
    count: int = 0  # rejected since the last report
    senders: tuple[str, ...] = ()
    more_senders: bool = False
    first: float = 0.0  # times of the first and last unreported rejections
    last: float = 0.0
    last_report: float = -math.inf

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise ValueError(f"window_s {self.window_s!r}: want > 0")

    @property
    def deadline(self) -> float | None:
        """When `tick` will have a summary to report; None when nothing is pending."""
        return self.last_report + self.window_s if self.count else None

    def reject(self, sender: str | None, now: float) -> tuple[RejectedSignals, RejectedBurst | None]:
        sender = sender or "-"
        senders, more = self.senders, self.more_senders
        if sender not in senders:
            if len(senders) < MAX_SENDERS:
                senders += (sender,)
            else:
                more = True
        state = replace(self, count=self.count + 1, senders=senders, more_senders=more,
                        first=self.first if self.count else now, last=now)
        return state.tick(now)

    def tick(self, now: float) -> tuple[RejectedSignals, RejectedBurst | None]:
        if not self.count or now < self.last_report + self.window_s:
            return self, None
        return self.flush(now)

    def flush(self, now: float) -> tuple[RejectedSignals, RejectedBurst | None]:
        if not self.count:
            return self, None
        burst = RejectedBurst(self.count, self.senders, max(0.0, self.last - self.first), self.more_senders)
        return RejectedSignals(self.window_s, last_report=now), burst


def snapshot_rebuilt_audit(
    reason: str, rules: int, routes: int, *, corrupt: bool, moved_to: str | os.PathLike[str] | None = None
) -> Audit:
    """The snapshot was rebuilt from the kernel: the file was corrupt (moved aside to `moved_to`
    when that worked) or missing; `rules`/`routes` are what the rebuilt snapshot protects."""
    items = [("reason", reason), ("moved_to", "-" if moved_to is None else os.fspath(moved_to)),
             ("rules", str(rules)), ("routes", str(routes))]
    return Audit(MESSAGE_ID_SNAPSHOT_REBUILT, ERR if corrupt else NOTICE, _line("snapshot-rebuilt", items),
                 _fields(items))


def networkd_generation_audit(owner: str | None, pid: int | None, generation: int, previous_owner: str | None) -> Audit:
    """networkd's bus owner changed (None: it left the bus). `generation` counts the owners seen."""
    items = [("networkd_owner", owner or "-"), ("networkd_pid", "-" if pid is None else str(pid)),
             ("generation", str(generation)), ("previous_owner", previous_owner or "-")]
    return Audit(MESSAGE_ID_NETWORKD_GENERATION, NOTICE, _line("networkd-generation", items), _fields(items))


def forgotten_bulk_audit(doubt: str, while_busy: int, generation: int,
                         ports: Iterable[tuple[int, str | None]]) -> Audit:
    """Once per networkd generation: many protected entries deleted by others while networkd was
    busy, and forgotten (ledger in forgotten.py)."""
    names: dict[int, str | None] = {}
    for port, name in ports:  # a port's process may be known for one deletion and not another
        names[port] = names.get(port) or name
    seen = sorted(names.items())
    items = [("forgotten", str(while_busy)), ("generation", str(generation)),
             ("ports", ",".join(str(p) for p, _ in seen)), ("processes", ",".join(n or "?" for _, n in seen))]
    return Audit(MESSAGE_ID_FORGOTTEN_BULK, WARNING, _line("forgotten-bulk", items) + f": {doubt}",
                 {**_fields(items), "NETD_HOOK_DOUBT": doubt})
