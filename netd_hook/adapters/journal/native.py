"""The journal's native protocol (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/): fields, entries, and
the socket (one datagram per entry, or a sealed memfd for a big one)."""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import re
import socket
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__package__)  # one logger for the package, as before the split


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
