"""Snapshot persistence: atomic writes (temp file, fsync, rename, fsync dir), tolerant loading.

A snapshot file that cannot be read or decoded is moved aside as `*.corrupt-<time>` and the
daemon rebuilds from the kernel: losing the file must never stop the service. Nor must failing
to write it (a full or read-only state directory): the daemon protects from memory and retries
with the backoff below, which is pure (`failed`, `degraded`) so that it is tested as such.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import json
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..core.model import BOOT_ID, FormatError, Saved, Snapshot, snapshot_to_json
from ..core.status_doc import Degraded, FailingWrite
from .files import load_saved_file, read_regular

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "snapshot.json"
EARLIER_BOOT_FILE = SNAPSHOT_FILE + ".earlier-boot"  # the last snapshot of another boot, kept for people
BOOT_ID_FILE = "boot-id"  # in the runtime directory

# A failed write is tried again after RETRY_FIRST seconds, then after twice as long each time, at
# most RETRY_MAX apart: a full disk costs one attempt a minute, not one per change.
RETRY_FIRST = 1.0
RETRY_MAX = 60.0


@dataclass(frozen=True, slots=True)
class Loaded:
    snapshot: Snapshot
    status: str  # "loaded", "missing", "corrupt" or "earlier-boot"
    detail: str = ""
    moved_to: Path | None = None


# Which boot a snapshot describes ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Boot:
    """This boot: its id (None if there is none) and when it began (wall clock).

    The id is a random UUID the daemon keeps in its runtime directory (`/run/netd-hook`, kept
    across the daemon's restarts by RuntimeDirectoryPreserve=yes): /run is a tmpfs that starts
    empty at every boot, which is why the VPC CNI keeps its own checkpoint there. Not the
    kernel's boot id: a node whose network namespace is new while the kernel is not (a
    container's boot) would keep it, and the unit's ProcSubset=pid hides it anyway."""

    id: str | None
    started_at: float

    @classmethod
    def current(cls, runtime_dir: Path, create: bool = False) -> Boot:
        """This boot as `runtime_dir` says; with `create`, a first start in this boot makes its id.
        An id that cannot be read or made is None (the clock decides then, see earlier_boot)."""
        path = runtime_dir / BOOT_ID_FILE
        if create:
            _make_boot_id(path)
        try:
            text = read_regular(path, 64).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        return cls(text if BOOT_ID.fullmatch(text) else None, _booted_at())


def _make_boot_id(path: Path) -> None:
    """Write a new boot id to `path` unless it has one: complete or not at all (staged, then
    linked into place, which fails if another start was first; that one's id stands)."""
    if path.exists():
        return
    tmp = temp_path(path)
    try:
        atomic_write(tmp, f"{uuid.uuid4()}\n".encode())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    except OSError as exc:
        log.warning("cannot record this boot's id in %s: %s", path, exc.strerror or exc)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def earlier_boot(saved: Saved, mtime: float, boot: Boot) -> str:
    """Why `saved` (a file last written at `mtime`) describes another boot's kernel, or "".

    A reboot empties the kernel's tables: replaying an earlier boot's snapshot would bring back
    the rules of pods that no longer exist, with addresses the next pods may get. The boot id
    decides; a file without one (written before 0.3.0), or a boot id that cannot be read, falls
    back to whether the file was written after this boot began."""
    if saved.boot_id is not None and boot.id is not None:
        if saved.boot_id == boot.id:
            return ""
        return f"written in another boot (boot id {saved.boot_id}; this boot is {boot.id})"
    if mtime >= boot.started_at:
        return ""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(mtime))
    began = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(boot.started_at))
    return f"written at {when}, before this boot began at {began}"


# Writing ----------------------------------------------------------------------------------


def temp_path(path: Path, pid: int | None = None) -> Path:
    """Where `atomic_write` stages `path`: `.NAME.PID.tmp` beside it (the same file system, so
    the rename is atomic; hidden, and not `*.prom`, so node_exporter's textfile collector skips it)."""
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.tmp")


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` by `data`: readers see the old file or the new one, never a part.

    On any error (ENOSPC, EROFS, EIO, ...) the temporary file is removed before the error is
    raised, and `path` is left as it was: nothing partial or temporary stays behind. Only a
    writer killed between creating and renaming it leaves one (see `remove_stale_temps`)."""
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save(state_dir: Path, snapshot: Snapshot, boot_id: str | None = None) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / SNAPSHOT_FILE
    body = json.dumps(snapshot_to_json(snapshot, boot_id), separators=(",", ":"), sort_keys=True).encode()
    atomic_write(path, body + b"\n")
    return path


def _temp_name(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.([1-9][0-9]{{0,9}})\.tmp")


def _booted_at() -> float:
    """Wall-clock time of this boot (CLOCK_BOOTTIME counts from it, suspend included)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    except OverflowError:
        return False
    return True


def remove_stale_temps(directory: Path, name: str) -> list[Path]:
    """Remove what `atomic_write` left of `directory/name` when its writer was killed between
    creating the temporary file and renaming it (`kill -9`, a power cut): regular files named
    exactly `.NAME.PID.tmp` whose PID is this process's (it has written nothing yet), is not
    running, or whose file predates this boot (the PID of another life). Nothing else is ever
    touched: not other names, not directories or symlinks, not a live writer's file.
    Returns what was removed; never raises (a file that cannot be removed is logged)."""
    pattern = _temp_name(name)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed  # no directory yet (first start), or unreadable: nothing to clean
    booted = _booted_at()
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _running(pid) and st.st_mtime >= booted:
            continue  # perhaps a write in progress by another netd-hook on this directory
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove the stale temporary file %s: %s", entry.path, exc.strerror)
            continue
        removed.append(Path(entry.path))
    return removed


# Failed writes: backoff and what the status document says -----------------------------------


class Write(str, Enum):
    """The files the daemon writes: each has its own spell of failures, and its own backoff."""

    SNAPSHOT = "snapshot"  # in the state directory
    STATUS = "status"  # status.json, in the runtime directory
    METRICS = "metrics"  # the metrics textfile (the runtime directory, or [metrics] textfile)

    def __str__(self) -> str:
        return self.value  # what logs and status.json say, on 3.10 and 3.11 alike


@dataclass(frozen=True, slots=True)
class Failing:
    """A spell of failed writes of one file.

    `since` is wall-clock time (for people), `retry_at` the loop's clock (for the timer)."""

    what: Write
    path: str
    since: float
    error: str  # the last failure's strerror: "No space left on device"
    errno: str  # its name: "ENOSPC" ("" when the error had none)
    failures: int
    delay: float  # from the last failure to the next attempt
    retry_at: float


def failed(prev: Failing | None, what: Write, path: Path | str, exc: OSError, now: float, wall: float) -> Failing:
    """The spell after one more failure: the first waits RETRY_FIRST, each next one twice as
    long as the one before, at most RETRY_MAX."""
    code = exc.errno or 0
    name = errnos.errorcode.get(code, str(code) if code else "")
    error = exc.strerror or str(exc) or type(exc).__name__
    if prev is None:
        return Failing(what, str(path), wall, error, name, 1, RETRY_FIRST, now + RETRY_FIRST)
    delay = min(prev.delay * 2, RETRY_MAX)
    return Failing(what, str(path), prev.since, error, name, prev.failures + 1, delay, now + delay)


_VERB = {Write.SNAPSHOT: "cannot save the snapshot to", Write.STATUS: "cannot publish the status to",
         Write.METRICS: "cannot write the metrics to"}


def describe(f: Failing) -> str:
    """One line: what cannot be written where, and why."""
    why = f"{f.error} ({f.errno})" if f.errno else f.error
    return f"{_VERB[f.what]} {f.path}: {why}"


def degraded(failing: Mapping[Write, Failing], now: float, wall: float) -> Degraded | None:
    """The status document's `degraded`: None while every write works."""
    if not failing:
        return None
    spells = sorted(failing.values(), key=lambda f: (f.since, f.what))
    return Degraded(
        since=spells[0].since,
        reason="; ".join(describe(f) for f in spells),
        writes=tuple(FailingWrite(what=f.what.value, path=f.path, since=f.since, error=f.error, errno=f.errno,
                                  failures=f.failures, next_attempt_at=round(wall + max(0.0, f.retry_at - now), 3))
                     for f in spells),
    )


# Loading ----------------------------------------------------------------------------------


def load(state_dir: Path, now: float | None = None, boot: Boot | None = None) -> Loaded:
    """The snapshot to start from: what the file holds if it describes `boot`'s kernel (None:
    any boot's). A corrupt file is moved aside as `*.corrupt-<time>`, one of an earlier boot to
    EARLIER_BOOT_FILE; either way the daemon starts from the kernel alone."""
    path = state_dir / SNAPSHOT_FILE
    try:
        # Never blocks (a FIFO), never reads without bound (/dev/zero), never lets a decoder's
        # RecursionError or MemoryError out: everything wrong with it is a FormatError or OSError.
        saved = load_saved_file(path)
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return Loaded(Snapshot(), "missing")
    except OSError as exc:
        return _aside(path, f"unreadable: {exc.strerror or exc}", now)
    except FormatError as exc:
        return _aside(path, str(exc), now)
    why = earlier_boot(saved, mtime, boot) if boot is not None else ""
    if not why:
        return Loaded(saved.snapshot, "loaded")
    return _move_aside(path, path.with_name(EARLIER_BOOT_FILE), "earlier-boot", why)


def _aside(path: Path, why: str, now: float | None) -> Loaded:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    return _move_aside(path, path.with_name(f"{path.name}.corrupt-{stamp}"), "corrupt", why)


def _move_aside(path: Path, target: Path, status: str, why: str) -> Loaded:
    """Start from nothing, keeping the file where people can read it (when it can be moved)."""
    try:
        os.replace(path, target)
    except OSError as exc:
        log.error("snapshot %s (%s: %s) cannot be moved aside: %s", path, status, why, exc.strerror)
        return Loaded(Snapshot(), status, why)
    return Loaded(Snapshot(), status, why, target)
