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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import atomic_write

DEFAULT_RUNTIME_DIR = Path("/run/netd-hook")
STATUS_FILE = "status.json"
LOCK_FILE = "daemon.lock"
FORMAT = "netd-hook/status"
VERSION = 1


class AlreadyRunning(Exception):
    """Another daemon holds the lock in this runtime directory."""


class DaemonLock:
    """Held by `netd-hook run` for its whole life; the kernel drops it when the process dies."""

    def __init__(self, runtime_dir: Path) -> None:
        runtime_dir.mkdir(parents=True, exist_ok=True)
        self.path = runtime_dir / LOCK_FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AlreadyRunning(f"another netd-hook daemon holds {self.path}") from None
            raise
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def running(runtime_dir: Path) -> bool:
    """True while some process holds the daemon lock."""
    try:
        fd = os.open(runtime_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
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
    alive = running(runtime_dir)
    try:
        doc = json.loads((runtime_dir / STATUS_FILE).read_bytes())
    except FileNotFoundError:
        return Probe(alive, None, "no status file")
    except (OSError, ValueError) as exc:
        return Probe(alive, None, f"unreadable status file: {exc}")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        return Probe(alive, None, "status file of an unknown format")
    return Probe(alive, doc)


def publish(runtime_dir: Path, doc: dict[str, Any]) -> None:
    body = {"format": FORMAT, "version": VERSION, **doc}
    atomic_write(runtime_dir / STATUS_FILE, json.dumps(body, indent=1, sort_keys=True).encode() + b"\n")
