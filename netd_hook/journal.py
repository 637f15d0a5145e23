"""sd_notify, the journal's native protocol, and the audit records.

One place holds an event's data; the human line and journald's structured fields are rendered
from it (`RepairRecord`, `Audit`). Rendering is pure (`repair_audit`, `rollback_audit`, ...,
`encode_entry`); sending is `Journal` (one datagram per entry, or a sealed memfd for a big one)
and `AuditSink` (the journal when there is one, the module logger otherwise).

No python-systemd: the package vendors only pure-Python dependencies, and the native protocol
is small and documented (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/).
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import math
import os
import re
import socket
import stat
import types
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace

log = logging.getLogger(__name__)


class Notifier:
    """sd_notify(3) over $NOTIFY_SOCKET; a no-op when the service manager did not set one."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            # '@' marks Linux's abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> None:
        if self._sock is None or self._address is None:
            return
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            self._sock.sendto(payload.encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC, when the watchdog is ours (WATCHDOG_PID unset or our pid)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RepairRecord:
    trigger: str
    rules_restored: int
    routes_restored: int
    already_present: int
    skipped_dead: int
    skipped_other: int
    set_aside: int
    rollbacks: int
    batches: int
    duration_ms: float
    networkd_owner: str

    def _items(self) -> list[tuple[str, str]]:
        return [(k, f"{v:.1f}" if isinstance(v, float) else str(v)) for k, v in asdict(self).items()]

    def fields(self) -> dict[str, str]:
        """NETD_HOOK_* journald fields."""
        return {f"NETD_HOOK_{k.upper()}": v for k, v in self._items()}

    def line(self) -> str:
        return "repair " + " ".join(f"{k}={v}" for k, v in self._items())


# ------------------------------------------------------------------------------------------
# The journal's native protocol (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/)

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "netd-hook"

# syslog(3) levels: journald's PRIORITY= field.
EMERG, ALERT, CRIT, ERR, WARNING, NOTICE, INFO, DEBUG = range(8)

FieldValue = str | bytes | int

# Set by the sender itself; an Audit's own fields must not repeat them.
_STANDARD_FIELDS = frozenset({"MESSAGE", "PRIORITY", "MESSAGE_ID", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE",
                              "CODE_FUNC"})
_NAME = re.compile(r"[A-Z0-9_]{1,64}")
_ID128 = re.compile(r"[0-9a-f]{32}")
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


class JournalFieldError(ValueError):
    """A field name journald would drop, or a bad PRIORITY / MESSAGE_ID: a programming error,
    raised when the entry is built, never by a send."""


def check_field_name(name: str) -> str:
    """journald's rule (journal_field_valid() in systemd): 1..64 of A-Z, 0-9 and _, not starting
    with a digit; a leading _ marks the trusted fields journald adds itself, which it ignores from
    clients."""
    if not _NAME.fullmatch(name) or name[0] == "_" or name[0].isdigit():
        raise JournalFieldError(
            f"journal field name {name!r}: want 1..64 of A-Z 0-9 _, not starting with _ or a digit")
    return name


def check_message_id(message_id: str) -> str:
    """A 128-bit id as journalctl prints and matches it: 32 lowercase hex digits."""
    if not _ID128.fullmatch(message_id):
        raise JournalFieldError(f"MESSAGE_ID {message_id!r}: want 32 lowercase hex digits")
    return message_id


def check_priority(priority: int) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not EMERG <= priority <= DEBUG:
        raise JournalFieldError(f"PRIORITY {priority!r}: want a syslog level 0..7")
    return priority


def _data(value: FieldValue) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):  # bool included: True -> "1"
        return str(int(value)).encode()
    try:
        return value.encode("utf-8", "surrogateescape")  # interface names and paths round-trip
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace")


def encode_entry(items: Iterable[tuple[str, FieldValue]]) -> bytes:
    """One entry in the native format: `KEY=value\\n` per field, or, for a value that holds a
    newline, `KEY\\n` + its length as a little-endian u64 + the value + `\\n`."""
    out = bytearray()
    for name, value in items:
        key = check_field_name(name).encode("ascii")
        data = _data(value)
        if b"\n" in data:
            out += key + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key + b"=" + data + b"\n"
    return bytes(out)


@dataclass(frozen=True, slots=True)
class CodeLocation:
    """CODE_FILE / CODE_LINE / CODE_FUNC (systemd.journal-fields(7))."""

    file: str
    line: int
    func: str


def entry_items(
    message: str,
    *,
    priority: int = INFO,
    message_id: str | None = None,
    fields: Mapping[str, FieldValue] | Iterable[tuple[str, FieldValue]] = (),
    identifier: str = IDENTIFIER,
    code: CodeLocation | None = None,
) -> list[tuple[str, FieldValue]]:
    """The fields of one entry, standard ones first; validates everything (JournalFieldError)."""
    items: list[tuple[str, FieldValue]] = [("MESSAGE", message), ("PRIORITY", check_priority(priority))]
    if message_id is not None:
        items.append(("MESSAGE_ID", check_message_id(message_id)))
    items.append(("SYSLOG_IDENTIFIER", identifier))
    if code is not None:
        items += [("CODE_FILE", code.file), ("CODE_LINE", code.line), ("CODE_FUNC", code.func)]
    extra = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
    for name, value in extra:
        if check_field_name(name) in _STANDARD_FIELDS:
            raise JournalFieldError(f"journal field {name!r} is set by the sender itself")
        items.append((name, value))
    return items


class Journal:
    """Sends entries to journald over its native socket (AF_UNIX, SOCK_DGRAM), one datagram each.

    An entry too big for one datagram (EMSGSIZE/ENOBUFS) goes as a sealed memfd passed with
    SCM_RIGHTS, the way sd_journal_sendv() does it. Sends never block (MSG_DONTWAIT) and never
    raise: an OSError (ENOENT or ECONNREFUSED while journald restarts, EAGAIN when its queue is
    full) is counted in `failed`, logged at warning once per outage, and reported as False so
    that the caller can fall back to stderr. The address is resolved on every send, so a
    restarted journald (a new socket at the same path) is picked up by itself."""

    def __init__(self, address: str = JOURNAL_SOCKET, *, identifier: str = IDENTIFIER) -> None:
        self.address = address
        self.identifier = identifier
        self.sent = 0
        self.failed = 0
        self._failing = False
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *, identifier: str = IDENTIFIER) -> Journal | None:
        """A sender for the socket at `path` (default: journald's), or None when there is no
        socket there (no journald on this machine / in this container)."""
        address = JOURNAL_SOCKET if path is None else os.fspath(path)
        try:
            if not stat.S_ISSOCK(os.stat(address).st_mode):
                return None
        except OSError:
            return None
        return cls(address, identifier=identifier)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(
        self,
        message: str,
        *,
        priority: int = INFO,
        message_id: str | None = None,
        fields: Mapping[str, FieldValue] | Iterable[tuple[str, FieldValue]] = (),
        code: CodeLocation | None = None,
    ) -> bool:
        """One entry; True when the kernel took it for journald. Bad field names, PRIORITY or
        MESSAGE_ID raise JournalFieldError (a bug in the caller); I/O errors never raise."""
        items = entry_items(message, priority=priority, message_id=message_id, fields=fields,
                            identifier=self.identifier, code=code)
        return self.send_entry(encode_entry(items))

    def send_entry(self, payload: bytes) -> bool:
        """An already encoded entry (see encode_entry)."""
        try:
            self._transmit(payload)
        except OSError as exc:
            self.failed += 1
            if not self._failing:
                self._failing = True
                log.warning("cannot send to the journal at %s: %s; logging to stderr until it is back",
                            self.address, exc.strerror or exc)
            else:
                log.debug("journal send failed again (%d so far): %s", self.failed, exc.strerror or exc)
            return False
        self.sent += 1
        if self._failing:
            self._failing = False
            log.info("the journal at %s takes entries again (%d sends failed so far)", self.address, self.failed)
        return True

    def _transmit(self, payload: bytes) -> None:
        if self._sock is None:
            raise OSError(errno.EBADF, "journal sender closed")
        try:
            self._sock.sendto(payload, socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(self._sock, payload)

    def _send_memfd(self, sock: socket.socket, payload: bytes) -> None:
        # An empty datagram carrying exactly one fd; journald maps a fully sealed memfd as is
        # (journald-native.c: manager_process_native_file()).
        fd = os.memfd_create("netd-hook-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            rights = array.array("i", [fd]).tobytes()
            sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], socket.MSG_DONTWAIT, self.address)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------
# Audit records

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


def log_level(priority: int) -> int:
    """The `logging` level for a syslog priority (notice has none of its own: info)."""
    if priority <= CRIT:
        return logging.CRITICAL
    return {ERR: logging.ERROR, WARNING: logging.WARNING, NOTICE: logging.INFO, INFO: logging.INFO}.get(
        priority, logging.DEBUG)


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when `fd` is the stream systemd connected to the journal ($JOURNAL_STREAM is its
    `device:inode`, systemd.exec(5)): a line logged there would repeat the native entry."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


class AuditSink:
    """Where audit events go: a native journal entry when there is a journal, else one line
    through `logger` at the level matching the priority.

    `echo`: also log the line when the entry went to the journal. Default: only when stderr is
    not the journal already (run by hand in a terminal), so that under systemd every event is in
    the journal exactly once. `emit()` tells whether the journal took it."""

    def __init__(self, journal: Journal | None, *, logger: logging.Logger | None = None,
                 echo: bool | None = None) -> None:
        self.journal = journal
        self.logger = log if logger is None else logger
        self.echo = (not stderr_is_journal()) if echo is None else echo

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *, logger: logging.Logger | None = None,
             echo: bool | None = None) -> AuditSink:
        return cls(Journal.open(path), logger=logger, echo=echo)

    @property
    def native(self) -> bool:
        return self.journal is not None

    def emit(self, audit: Audit) -> bool:
        sent = self.journal is not None and self.journal.send_entry(encode_entry(audit.items(self.journal.identifier)))
        if not sent or self.echo:
            self.logger.log(log_level(audit.priority), "%s", audit.message)
        return sent

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
