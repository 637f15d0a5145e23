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
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..core.status_doc import FORMAT, Status, StatusError, from_json, to_json
from ..core.status_doc import VERSION as VERSION  # the document's own module: core/status_doc.py
from .files import file_kind, read_regular
from .store import atomic_write

DEFAULT_RUNTIME_DIR = Path("/run/netd-hook")
STATUS_FILE = "status.json"
LOCK_FILE = "daemon.lock"
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
    status: Status | None  # the last published status (may be stale when not running)
    error: str = ""  # why the status file could not be read


def probe(runtime_dir: Path) -> Probe:
    """What `status`, `wait`, `diff` and `doctor` know: whether the daemon runs and, when its
    status file can be read and checks out (status_doc.from_json), the Status; otherwise `error`
    says why, as "unreadable status file PATH: why". Never blocks (a FIFO is not opened); raises
    only what running() raises."""
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
    try:
        return Probe(alive, from_json(doc))
    except StatusError as exc:
        return Probe(alive, None, f"unreadable status file {path}: {exc}")


def publish(runtime_dir: Path, status: Status) -> None:
    body = json.dumps(to_json(status), indent=1, sort_keys=True).encode() + b"\n"
    atomic_write(runtime_dir / STATUS_FILE, body)
