"""What the running daemon publishes for the CLI, and how the CLI finds out whether it runs.

The daemon holds an exclusive `flock` on `<runtime-dir>/daemon.lock` for as long as it lives
and replaces `<runtime-dir>/status.json` atomically whenever its picture changes. The CLI never
asks the daemon anything: a lock nobody holds means "not running" (a crashed daemon's lock is
released by the kernel, so there is no stale pid file to trust), and the status file is read as
it is. Nothing here needs the daemon to answer.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.model import show
from .files import file_kind, read_regular
from .store import atomic_write

DEFAULT_RUNTIME_DIR = Path("/run/netd-hook")
STATUS_FILE = "status.json"
LOCK_FILE = "daemon.lock"
FORMAT = "netd-hook/status"
VERSION = 1
# The daemon's document is a few KiB (links, at most 50 set-aside entries, the forgetters by
# port); a 10,000-entry list in it would be about 2 MiB. Larger than this is not a status.
STATUS_MAX_BYTES = 8 << 20


class AlreadyRunning(Exception):
    """Another daemon holds the lock in this runtime directory."""


class LockUnusable(AlreadyRunning):
    """The lock's path is not a regular file (a FIFO, a directory): no daemon can hold it.

    A subclass of AlreadyRunning only so that the CLI, which catches that, says it in one line
    and exits 1 like it (instead of a traceback)."""


class DaemonLock:
    """Held by `netd-hook run` for its whole life; the kernel drops it when the process dies."""

    def __init__(self, runtime_dir: Path) -> None:
        runtime_dir.mkdir(parents=True, exist_ok=True)
        self.path = runtime_dir / LOCK_FILE
        try:
            _refuse_odd(self.path, os.stat(self.path).st_mode)  # before open(2): a FIFO's would block
        except FileNotFoundError:
            pass  # created below
        flags = os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | flags, 0o644)
        except OSError as exc:
            try:  # a read-only runtime directory: an existing lock file still takes a flock read-only
                self._fd = os.open(self.path, os.O_RDONLY | flags)
            except OSError:
                raise LockUnusable(f"{self.path}: cannot create the daemon lock: {exc.strerror or exc}") from None
        try:
            _refuse_odd(self.path, os.fstat(self._fd).st_mode)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except LockUnusable:
            os.close(self._fd)
            raise
        except OSError as exc:
            os.close(self._fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AlreadyRunning(f"another netd-hook daemon holds {self.path}") from None
            raise
        try:  # the pid is for people reading the file; the flock is what counts
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # opened read-only (a read-only runtime directory)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _refuse_odd(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise LockUnusable(f"{path}: not a regular file ({file_kind(mode)}): it cannot be the daemon lock")


def running(runtime_dir: Path) -> bool:
    """True while some process holds the daemon lock.

    A lock path that is missing, under something that is not a directory, not a regular file
    (DaemonLock refuses those; a FIFO is never opened) or otherwise unusable (ELOOP,
    ENAMETOOLONG, ...: no daemon could have taken it either) is no running daemon. Raises
    PermissionError (the CLI says to run it as root) and what flock(2) raises but EWOULDBLOCK."""
    path = runtime_dir / LOCK_FILE
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except PermissionError:
        raise
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


@dataclass(frozen=True, slots=True)
class Probe:
    running: bool
    status: dict[str, Any] | None  # the last published status (may be stale when not running)
    error: str = ""  # why the status file could not be read


def probe(runtime_dir: Path) -> Probe:
    """What `status`, `wait` and `doctor` know: whether the daemon runs and, when its status file
    can be read and checks out (check_document), the document; otherwise `error` says why, as
    "unreadable status file PATH: why". Never blocks (a FIFO is not opened); raises only what
    running() raises."""
    alive = running(runtime_dir)
    path = runtime_dir / STATUS_FILE
    try:
        raw = read_regular(path, STATUS_MAX_BYTES)
    except FileNotFoundError:
        return Probe(alive, None, "no status file")
    except OSError as exc:
        return Probe(alive, None, f"unreadable status file {path}: {exc.strerror}")
    try:
        doc = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4,300 digits
        return Probe(alive, None, f"unreadable status file {path}: not JSON: {exc}")
    except RecursionError:
        return Probe(alive, None, f"unreadable status file {path}: JSON nested too deeply")
    except MemoryError:
        return Probe(alive, None, f"unreadable status file {path}: too large to decode")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return Probe(alive, None, "status file of an unknown format")
    why = check_document(doc)
    if why:
        return Probe(alive, None, f"unreadable status file {path}: {why}")
    return Probe(alive, doc)


def publish(runtime_dir: Path, doc: dict[str, Any]) -> None:
    body = {"format": FORMAT, "version": VERSION, **doc}
    atomic_write(runtime_dir / STATUS_FILE, json.dumps(body, indent=1, sort_keys=True).encode() + b"\n")


# The status document's shape -----------------------------------------------------------------
#
# What the CLI reads of it (render.status_text, metrics.render, cli's status and wait, doctor),
# checked once at the edge so that none of them meets a value it cannot format: a string where a
# count is, an object where a list is, NaN or 1e300 as a time. Absent keys are fine (the readers
# have defaults), and so are keys not listed here (a newer daemon's): a key the CLI starts to
# read belongs here too. A check returns "" or "where: value why".

Check = Callable[[Any, str], str]
COUNT_MAX = (1 << 63) - 1
TIME_MAX = 1e11  # seconds since 1970: the year 5138; time.localtime() takes it
SECONDS_MAX = 1e15


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any, where: str) -> str:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= COUNT_MAX
    return "" if ok else f"{where}: {show(value)} is not a count"


def _time(value: Any, where: str) -> str:
    return "" if _is_number(value) and 0 <= value <= TIME_MAX else f"{where}: {show(value)} is not a time"


def _seconds(value: Any, where: str) -> str:
    return "" if _is_number(value) and 0 <= value <= SECONDS_MAX else f"{where}: {show(value)} is not a duration"


def _flag(value: Any, where: str) -> str:
    return "" if isinstance(value, bool) else f"{where}: {show(value)} is not true or false"


def _text(value: Any, where: str) -> str:
    return "" if isinstance(value, str) else f"{where}: {show(value)} is not a string"


def _opt(check: Check) -> Check:
    return lambda value, where: "" if value is None else check(value, where)


def _list(check: Check) -> Check:
    def list_of(value: Any, where: str) -> str:
        if not isinstance(value, list):
            return f"{where}: {show(value)} is not a list"
        return next((why for i, v in enumerate(value) if (why := check(v, f"{where}[{i}]"))), "")
    return list_of


def _name(key: str) -> str:
    return key if key.isprintable() and len(key) <= 60 else show(key)


def _map(check: Check) -> Check:
    def map_of(value: Any, where: str) -> str:
        if not isinstance(value, dict):
            return f"{where}: {show(value)} is not an object"
        return next((why for k, v in value.items() if (why := check(v, f"{where}.{_name(k)}"))), "")
    return map_of


def _obj(fields: Mapping[str, Check]) -> Check:
    def obj(value: Any, where: str) -> str:
        if not isinstance(value, dict):
            return f"{where}: {show(value)} is not an object"
        return next((why for k, check in fields.items()
                     if k in value and (why := check(value[k], f"{where}.{k}" if where else k))), "")
    return obj


def _version(value: Any, where: str) -> str:
    ok = isinstance(value, int) and not isinstance(value, bool) and value == VERSION
    return "" if ok else f"{where}: {show(value)} is not {VERSION}"


_COUNTERS = ("repairs", "rules_restored", "routes_restored", "skipped_dead", "set_aside", "rollbacks",
             "forgotten_deliberate", "orphans_removed", "monitor_overruns", "rejected_signals", "bad_bus_values",
             "bus_reconnects")
DOCUMENT: Check = _obj({
    "format": _text,
    "version": _version,
    "pid": _opt(_count),
    "started_at": _time,
    "updated_at": _time,
    "networkd": _obj({"owner": _opt(_text), "pid": _opt(_count), "generation": _count, "settled": _flag,
                      "links": _map(_text)}),
    "complete": _flag,
    "protected": _obj({"rules": _count, "routes": _count}),
    "missing": _count,
    "held_back": _count,
    "set_aside": _list(_text),
    "forgotten": _opt(_obj({
        "total": _count, "generation": _count, "while_busy": _count, "doubt": _opt(_text),
        "by_port": _list(_obj({"port": _count, "process": _opt(_text), "count": _count, "last_at": _opt(_time)})),
        "last": _opt(_obj({"at": _time, "port": _count, "process": _opt(_text), "count": _count,
                           "example": _opt(_text), "while_busy": _flag})),
    })),
    "missing_since": _opt(_time),
    "outage_seconds": _seconds,
    "last_repair": _opt(_obj({"at": _time, "trigger": _text, "rules_restored": _count, "routes_restored": _count,
                              "skipped_dead": _count, "duration_ms": _seconds})),
    "counters": _obj({**{k: _count for k in _COUNTERS}, "losses": _map(_count), "repairs_by_trigger": _map(_count)}),
    "networkd_sockets": _list(_count),
    "config": _text,
    "state_dir": _text,
})


def check_document(doc: Any) -> str:
    """"" when `doc` is a status document every reader can show, else the first field that is
    wrong, with its value: "networkd.links: ['eth0'] is not an object"."""
    return DOCUMENT(doc, "")


# Reading a document defensively (the renderers also take documents that were never checked) ---


def section(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """doc[key] when it is an object, else an empty one."""
    value = doc.get(key)
    return value if isinstance(value, Mapping) else {}


def number(value: Any, default: float = 0.0) -> float:
    """A finite number of reasonable size as float, else `default`."""
    return float(value) if _is_number(value) and abs(value) <= SECONDS_MAX else default


def count(value: Any) -> int:
    """A count as int (0 when it is not one)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= COUNT_MAX else 0


def timestamp(value: Any) -> float | None:
    """A wall-clock time time.localtime() can take, else None."""
    return float(value) if _is_number(value) and 0 <= value <= TIME_MAX else None


def items(value: Any) -> list[Any]:
    """value when it is a list, else an empty one."""
    return value if isinstance(value, list) else []
