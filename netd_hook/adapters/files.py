"""Reading the files the daemon and the commands read: bounded, never blocking, one clear error
(a FIFO, /dev/zero, a directory or a huge file where a config, snapshot or status should be)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..core.model import SNAPSHOT_MAX_BYTES, Saved, Snapshot, decode_saved


def file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return kind
    return f"file type {stat.S_IFMT(mode):#o}"


def not_regular(path: Path | str, mode: int) -> OSError:
    """The error for a path that is not a regular file; a directory keeps the C library's wording."""
    if stat.S_ISDIR(mode):
        return IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    return OSError(errno.EINVAL, f"not a regular file ({file_kind(mode)})", str(path))


def size_text(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} bytes"


def read_regular(path: Path, limit: int) -> bytes:
    """All of `path`, which must be a regular file of at most `limit` bytes.

    Never blocks and never reads without end: what is not a regular file (a FIFO, whose open(2)
    waits for a writer; /dev/zero; a device, whose open may act on it) is refused after stat(2),
    before it is opened; the regular file is opened O_NONBLOCK and checked again with fstat(2)
    (it may have been replaced in between), and reading stops at `limit` + 1 bytes. Raises
    OSError: open(2)'s own (FileNotFoundError, PermissionError, ...), EISDIR, EINVAL "not a
    regular file (a FIFO)", EFBIG "larger than 1 MiB"; the strerror is a message for people."""
    try:
        st = os.stat(path)
    except ValueError:  # an embedded NUL
        raise OSError(errno.EINVAL, "not a valid path (it contains a NUL)", str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        raise not_regular(path, st.st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(path, st.st_mode)
        too_large = OSError(errno.EFBIG, f"larger than {size_text(limit)}", str(path))
        if st.st_size > limit:
            raise too_large
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(limit + 1 - total, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # it grew while being read
                raise too_large
    finally:
        os.close(fd)
    return b"".join(chunks)


def load_snapshot_file(path: Path) -> Snapshot:
    """The snapshot in a file (see load_saved_file)."""
    return load_saved_file(path).snapshot


def load_saved_file(path: Path) -> Saved:
    """Read and decode a snapshot file, never blocking and reading at most SNAPSHOT_MAX_BYTES.
    Raises OSError (FileNotFoundError: there is none; anything else: it is unusable, the
    strerror says why) or FormatError (its content)."""
    return decode_saved(read_regular(path, SNAPSHOT_MAX_BYTES))
