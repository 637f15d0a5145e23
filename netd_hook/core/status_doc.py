"""The status document: what the daemon publishes in status.json and what every reader reads (pure).

One frozen dataclass per object of the document, its fields named as the JSON keys. The daemon
builds a `Status` and writes `to_json(status)`; the CLI (`status`, `wait`, `diff`, `doctor`, the
metrics) reads `from_json(obj)`, which checks once, at the edge, that no reader meets a value it
cannot show (a string where a count is, an object where a list is, NaN or 1e300 as a time, true
as a count) and raises StatusError naming the first wrong field and its value:
"networkd.links: ['eth0'] is not an object".

Compatible both ways within one VERSION: a key the document lacks (an older daemon's) takes the
field's default, a key this module does not know (a newer daemon's) is ignored. A key whose
meaning changes needs a new VERSION. Each field says how it is read (`_at(reader, default)`):
the readers below are the whole of the checking.

The words for protected entries that are missing and not put back, the same here, in the CLI,
the metrics, the journal and the README:
  held back     the liveness gate: the pod (or device) is not alive now
  set aside     the kernel refused it; retried with backoff, and at networkd's next generation
  forgotten     deleted deliberately by someone else (the CNI); never replayed
  unattributed  missing after a netlink monitor overrun while networkd was idle: who deleted it
                is unknown, so it is not replayed until `netd-hook replay`
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

from .model import show

FORMAT = "netd-hook/status"
VERSION = 1
LISTED_MAX = 50  # entries named in set_aside and unattributed (the counts are elsewhere)

COUNT_MAX = (1 << 63) - 1
TIME_MAX = 1e11  # seconds since 1970: the year 5138; time.localtime() takes it
SECONDS_MAX = 1e15


class StatusError(ValueError):
    """A status document some reader could not show: "where: value why"."""


# Reading one value: the value as the dataclass holds it, or StatusError -----------------------

Reader = Callable[[Any, str], Any]
T = TypeVar("T")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bad(value: Any, where: str, what: str) -> StatusError:
    return StatusError(f"{where}: {show(value)} is not {what}")


def _count(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= COUNT_MAX:
        return value
    raise _bad(value, where, "a count")


def _time(value: Any, where: str) -> float:
    """A wall-clock time time.localtime() takes."""
    if _is_number(value) and 0 <= value <= TIME_MAX:
        return float(value)
    raise _bad(value, where, "a time")


def _seconds(value: Any, where: str) -> float:
    if _is_number(value) and 0 <= value <= SECONDS_MAX:
        return float(value)
    raise _bad(value, where, "a duration")


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise _bad(value, where, "true or false")


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    raise _bad(value, where, "a string")


def _opt(read: Reader) -> Reader:
    return lambda value, where: None if value is None else read(value, where)


def _list(read: Reader) -> Reader:
    def list_of(value: Any, where: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _bad(value, where, "a list")
        return tuple(read(v, f"{where}[{i}]") for i, v in enumerate(value))
    return list_of


def _name(key: str) -> str:
    return key if key.isprintable() and len(key) <= 60 else show(key)


def _map(read: Reader) -> Reader:
    def map_of(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _bad(value, where, "an object")
        return {k: read(v, f"{where}.{_name(k)}") for k, v in value.items()}
    return map_of


def _decode(cls: type[T], value: Any, where: str) -> T:
    """An object of the document as `cls`: each field read from its key by the field's reader,
    its default when the key is absent; keys that are no field of `cls` are ignored."""
    if not isinstance(value, dict):
        raise _bad(value, where or "the status document", "an object")
    given = {f.name: f.metadata["read"](value[f.name], f"{where}.{f.name}" if where else f.name)
             for f in fields(cls)  # type: ignore[arg-type]  # a dataclass, as every caller's
             if f.name in value}
    return cls(**given)


def _obj(cls: type[Any]) -> Reader:
    return lambda value, where: _decode(cls, value, where)


def _at(read: Reader, default: Any = MISSING, factory: Callable[[], Any] | None = None) -> Any:
    """A field read from its key by `read`; absent, `default` (or `factory()`)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"read": read})
    return field(default=default, metadata={"read": read})


# The document ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Networkd:
    owner: str | None = _at(_opt(_text), None)  # its unique bus name; None: not on the bus
    pid: int | None = _at(_opt(_count), None)
    generation: int = _at(_count, 0)  # bus owners seen (restarts + 1)
    settled: bool = _at(_flag, False)
    # managed links busy longer than [replay] stuck_ms (they delay no repair): name -> seconds busy
    stuck: Mapping[str, float] = _at(_map(_seconds), factory=dict)
    links: Mapping[str, str] = _at(_map(_text), factory=dict)  # name -> AdministrativeState


@dataclass(frozen=True, slots=True)
class Protected:
    """What a crash of the daemon would not lose: what is written to the snapshot file."""

    rules: int = _at(_count, 0)
    routes: int = _at(_count, 0)


@dataclass(frozen=True, slots=True)
class PortTally:
    """Entries forgotten as deleted by one netlink port (MAX_PORTS of them, the busiest first)."""

    port: int = _at(_count, 0)
    process: str | None = _at(_opt(_text), None)
    count: int = _at(_count, 0)
    last_at: float | None = _at(_opt(_time), None)


@dataclass(frozen=True, slots=True)
class LastForget:
    at: float = _at(_time, 0.0)
    port: int = _at(_count, 0)
    process: str | None = _at(_opt(_text), None)
    count: int = _at(_count, 0)
    example: str | None = _at(_opt(_text), None)  # one entry, described
    while_busy: bool = _at(_flag, False)


@dataclass(frozen=True, slots=True)
class Forgotten:
    """The ledger of entries forgotten (core/forgotten.py): deleted by someone else, never replayed."""

    total: int = _at(_count, 0)
    generation: int = _at(_count, 0)  # in the current networkd generation
    while_busy: int = _at(_count, 0)  # of those, while networkd was busy
    doubt: str | None = _at(_opt(_text), None)  # why "nothing missing" may not mean whole
    by_port: tuple[PortTally, ...] = _at(_list(_obj(PortTally)), ())
    last: LastForget | None = _at(_opt(_obj(LastForget)), None)


def _forgotten(value: Any, where: str) -> Forgotten:
    return Forgotten() if value is None else _decode(Forgotten, value, where)  # null: as absent


@dataclass(frozen=True, slots=True)
class LastRepair:
    """The last repair: the journal's repair record (journal.RepairRecord), and when it finished."""

    at: float = _at(_time, 0.0)
    trigger: str = _at(_text, "")  # "reconfigure:eth1": its kind, a colon, the link
    rules_restored: int = _at(_count, 0)
    routes_restored: int = _at(_count, 0)
    already_present: int = _at(_count, 0)
    skipped_dead: int = _at(_count, 0)  # held back and dead (pod gone): no longer protected
    skipped_other: int = _at(_count, 0)  # held back for now
    set_aside: int = _at(_count, 0)
    rollbacks: int = _at(_count, 0)
    batches: int = _at(_count, 0)
    duration_ms: float = _at(_seconds, 0.0)
    networkd_owner: str = _at(_text, "")


@dataclass(frozen=True, slots=True)
class Counters:
    """Totals since the daemon started; the metrics' `*_total` counters are these."""

    repairs: int = _at(_count, 0)
    rules_restored: int = _at(_count, 0)
    routes_restored: int = _at(_count, 0)
    skipped_dead: int = _at(_count, 0)  # held back and dead: no longer protected
    set_aside: int = _at(_count, 0)
    rollbacks: int = _at(_count, 0)
    forgotten_deliberate: int = _at(_count, 0)
    orphans_removed: int = _at(_count, 0)
    monitor_overruns: int = _at(_count, 0)
    save_failures: int = _at(_count, 0)
    publish_failures: int = _at(_count, 0)
    rejected_signals: int = _at(_count, 0)
    bad_bus_values: int = _at(_count, 0)
    bus_reconnects: int = _at(_count, 0)
    chases: int = _at(_count, 0)  # batches sent while networkd was still busy (the chase)
    chase_rewiped: int = _at(_count, 0)  # entries a chase put back that networkd deleted again in that spell
    chase_capped: int = _at(_count, 0)  # entries chased [replay] chase_max times in a spell: left for the re-read
    losses: Mapping[str, int] = _at(_map(_count), factory=dict)  # repairable losses by who removed them
    repairs_by_trigger: Mapping[str, int] = _at(_map(_count), factory=dict)  # by the trigger's kind


@dataclass(frozen=True, slots=True)
class FailingWrite:
    """One file that cannot be written now (store.Failing, as people read it)."""

    what: str = _at(_text, "")  # "snapshot", "status", "metrics"
    path: str = _at(_text, "")
    since: float = _at(_time, 0.0)
    error: str = _at(_text, "")  # the last failure's strerror
    errno: str = _at(_text, "")  # its name: "ENOSPC" ("" when it had none)
    failures: int = _at(_count, 0)
    next_attempt_at: float = _at(_time, 0.0)


@dataclass(frozen=True, slots=True)
class Degraded:
    """Writes failing now (a full or read-only directory): the daemon protects from memory."""

    since: float = _at(_time, 0.0)  # the oldest spell's start
    reason: str = _at(_text, "")  # every spell, described
    writes: tuple[FailingWrite, ...] = _at(_list(_obj(FailingWrite)), ())


@dataclass(frozen=True, slots=True)
class Status:
    pid: int | None = _at(_opt(_count), None)
    started_at: float = _at(_time, 0.0)  # 0: not known
    updated_at: float = _at(_time, 0.0)  # 0: not known
    networkd: Networkd = _at(_obj(Networkd), factory=Networkd)
    # networkd settled with nothing pending and nothing missing: what `netd-hook wait` waits for
    complete: bool = _at(_flag, False)
    protected: Protected = _at(_obj(Protected), factory=Protected)
    missing: int = _at(_count, 0)  # protected, missing from the kernel, and to be restored
    held_back: int = _at(_count, 0)  # missing, held back by the liveness gate
    set_aside: tuple[str, ...] = _at(_list(_text), ())  # described, at most LISTED_MAX
    unattributed: tuple[str, ...] = _at(_list(_text), ())  # described, at most LISTED_MAX
    forgotten: Forgotten = _at(_forgotten, factory=Forgotten)
    missing_since: float | None = _at(_opt(_time), None)  # the outage going on now, since when
    outage_seconds: float = _at(_seconds, 0.0)  # with protected entries missing, in all
    last_repair: LastRepair | None = _at(_opt(_obj(LastRepair)), None)
    counters: Counters = _at(_obj(Counters), factory=Counters)
    networkd_sockets: tuple[int, ...] = _at(_list(_count), ())  # ports of the sockets systemd passed
    config: str = _at(_text, "")  # the configuration file read, or "<defaults>"
    state_dir: str = _at(_text, "")
    degraded: Degraded | None = _at(_opt(_obj(Degraded)), None)  # None while every write works
    snapshot_saved_at: float | None = _at(_opt(_time), None)  # None: not written by this daemon yet
    snapshot_unsaved: bool = _at(_flag, False)  # the snapshot file lags the daemon's view

    @property
    def whole(self) -> bool:
        """Nothing missing, and no doubt on what was forgotten (core/forgotten.py): what `status`
        exits 0 for and `wait` vouches for. `complete` is about networkd and the repairs: settled,
        nothing pending, nothing missing (decide.complete)."""
        return self.missing == 0 and not self.forgotten.doubt


# The round trip -------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def to_json(status: Status) -> dict[str, Any]:
    """The document as the daemon writes it (json.dumps takes it as it is)."""
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    doc.update(_plain(status))
    return doc


def _version(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value == VERSION:
        return value
    raise _bad(value, where, str(VERSION))


def from_json(obj: Any) -> Status:
    """The Status in `obj` (parsed JSON); StatusError naming the first wrong field and its value."""
    if not isinstance(obj, dict):
        raise _bad(obj, "the status document", "an object")
    fmt = obj.get("format")
    if fmt != FORMAT:
        raise _bad(fmt, "format", repr(FORMAT))
    if "version" in obj:  # absent: as the other keys, this version's
        _version(obj["version"], "version")
    return _decode(Status, obj, "")
