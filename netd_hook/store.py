"""Snapshot persistence: atomic writes (temp file, fsync, rename, fsync dir), tolerant loading.

A snapshot file that cannot be read or decoded is moved aside as `*.corrupt-<time>` and the
daemon rebuilds from the kernel: losing the file must never stop the service.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .model import FormatError, Snapshot, snapshot_from_json, snapshot_to_json

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "snapshot.json"


@dataclass(frozen=True, slots=True)
class Loaded:
    snapshot: Snapshot
    status: str  # "loaded", "missing" or "corrupt"
    detail: str = ""
    moved_to: Path | None = None


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save(state_dir: Path, snapshot: Snapshot) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / SNAPSHOT_FILE
    body = json.dumps(snapshot_to_json(snapshot), separators=(",", ":"), sort_keys=True).encode()
    atomic_write(path, body + b"\n")
    return path


def load(state_dir: Path, now: float | None = None) -> Loaded:
    path = state_dir / SNAPSHOT_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Loaded(Snapshot(), "missing")
    except OSError as exc:
        return _aside(path, f"unreadable: {exc.strerror}", now)
    try:
        return Loaded(snapshot_from_json(json.loads(raw)), "loaded")
    except (ValueError, FormatError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _aside(path, str(exc), now)


def _aside(path: Path, why: str, now: float | None) -> Loaded:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, target)
    except OSError as exc:
        log.error("snapshot %s is corrupt (%s) and cannot be moved aside: %s", path, why, exc.strerror)
        return Loaded(Snapshot(), "corrupt", why)
    return Loaded(Snapshot(), "corrupt", why, target)
