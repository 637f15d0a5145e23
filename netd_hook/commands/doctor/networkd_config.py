"""Reading a tree's networkd configuration the way networkd finds and reads it (file I/O only).

`read_tree(root, version)` lists and reads the files under `root` and returns `Facts` (networkd.conf
and its drop-ins, the .network files, and netd-hook's own units, `read_unit`); what they mean is
decided elsewhere (`effective`, `assess`). Checked against systemd's source and, for the
behaviours marked (lab), against the real systemd-networkd 252 in tests/lab.py:

* Main file. Up to v255 networkd reads only `/etc/systemd/networkd.conf`
  (`config_parse_many_nulstr(PKGSYSCONFDIR "/networkd.conf", ...)`, src/network/networkd-conf.c).
  Since v256 (systemd PR #30480, `config_parse_standard_file_with_dropins`) it reads the first
  of `/etc`, `/run`, `/usr/local/lib`, `/usr/lib` + `/systemd/networkd.conf`. The main file
  is read first.
* Drop-ins: `*.conf` in `{/etc,/run,/usr/local/lib,/usr/lib}/systemd/networkd.conf.d`, plus
  `/lib/systemd/networkd.conf.d` on split-usr builds (Debian 12's 252: `strings` on the binary
  lists it; on merged-/usr systems it is /usr/lib again). `conf_files_list_nulstr(..., flags=0)`
  (src/basic/conf-files.c): directories in that priority order, a name already found in a
  higher-priority directory hides the lower one, hidden files skipped (`FOREACH_DIRENT`), then
  all sorted by file name (`strcmp`) whatever their directory, read in that order: later wins.
  A symlink to /dev/null or an empty file reads as nothing, so it masks its namesakes; a
  dangling symlink is skipped silently (ENOENT) but masks too (lab).
* Each file is parsed by `config_parse()` (doctor/ini.py). Fatal errors: an unterminated section
  header, a line that is not UTF-8, a file networkd cannot open or read (a directory named
  *.conf; a file user systemd-network may not read: networkd drops privileges before parsing)
  make `config_parse()` fail. networkd then logs "Failed to parse configuration file" and goes
  on with what it had parsed so far: every later file is never read (lab).
* `networkctl reload` does not re-read networkd.conf: only a restart does (lab).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...adapters.files import file_kind, read_regular
from .facts import (
    KEYS,
    MAIN_SEARCH_SINCE,
    NETWORKD_DROPIN,
    NETWORKD_SOCKET,
    UNIT,
    UNIT_DIRS,
    ConfFile,
    Facts,
    NetworkFile,
    UnitFacts,
    conf_dirs,
    main_candidates,
)
from .ini import parse_boolean, parse_ini

# The most doctor reads of one file: networkd's own files are a few hundred bytes, /etc/passwd
# and /etc/group rarely more than a few hundred KiB. A FIFO or a device among them is refused,
# never opened (a FIFO would block doctor, /dev/zero would exhaust its memory).
READ_MAX_BYTES = 16 << 20

NETWORKD_USER = "systemd-network"  # User= of systemd-networkd.service; networkd parses as this user


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    path: str  # inside root
    shadows: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Read:
    state: str  # "read", "empty", "masked", "dangling", "error"
    data: bytes = b""
    error: str = ""
    st: os.stat_result | None = None


def _chase(root: Path, path: str, max_links: int = 40) -> str:
    """Resolve `path` inside `root` like chase_symlinks(CHASE_PREFIX_ROOT): absolute link targets
    stay under root. Returns the resolved path as seen inside root (it may not exist)."""
    todo = [c for c in path.split("/") if c]
    done: list[str] = []
    links = 0
    while todo:
        c = todo.pop(0)
        if c == ".":
            continue
        if c == "..":
            if done:
                done.pop()
            continue
        host = root.joinpath(*done, c)
        try:
            target = os.readlink(host)
        except OSError:  # not a symlink, or missing: take it as it is
            done.append(c)
            continue
        links += 1
        if links > max_links:
            done.append(c)
            break
        if target.startswith("/"):
            done = []
        todo = [t for t in target.split("/") if t] + todo
    return "/" + "/".join(done)


def _host(root: Path, inside: str) -> Path:
    return root / inside.lstrip("/")


def _list(root: Path, dirs: Iterable[str], suffix: str, errors: list[str]) -> list[_Entry]:
    """conf_files_list(): first directory wins per name, hidden files skipped, sorted by name."""
    found: dict[str, str] = {}
    shadows: dict[str, list[str]] = {}
    seen: set[str] = set()
    for d in dirs:
        real = _chase(root, d)
        if real in seen:  # path_strv_resolve_uniq(): /lib/systemd/... is /usr/lib/... on merged /usr
            continue
        seen.add(real)
        host = _host(root, real)
        try:
            names = sorted(os.listdir(host))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            errors.append(f"cannot list {d}: {exc.strerror}")
            continue
        for name in names:
            if name.startswith(".") or not name.endswith(suffix):
                continue
            if name in found:
                shadows[name].append(f"{d}/{name}")
            else:
                found[name] = f"{d}/{name}"
                shadows[name] = []
    return [_Entry(n, found[n], tuple(shadows[n])) for n in sorted(found, key=os.fsencode)]


def _read(root: Path, inside: str) -> _Read:
    real = _chase(root, inside)
    if real == "/dev/null":
        return _Read("masked")
    host = _host(root, real)
    try:
        st = os.stat(host)
    except FileNotFoundError:
        return _Read("dangling")
    except OSError as exc:
        return _Read("error", error=f"cannot stat: {exc.strerror}")
    if stat.S_ISDIR(st.st_mode):
        return _Read("error", error="is a directory", st=st)
    if stat.S_ISCHR(st.st_mode):  # null_or_empty(): any character device masks, like /dev/null
        return _Read("masked", st=st)
    if not stat.S_ISREG(st.st_mode):
        return _Read("error", error=f"not a regular file ({file_kind(st.st_mode)})", st=st)
    try:
        data = read_regular(host, READ_MAX_BYTES)
    except OSError as exc:
        return _Read("error", error=f"cannot read: {exc.strerror}", st=st)
    return _Read("read" if data else "empty", data, st=st)


@dataclass(frozen=True, slots=True)
class _Ids:
    uid: int | None
    gids: frozenset[int]


def _text(path: Path) -> str:
    return read_regular(path, READ_MAX_BYTES).decode(errors="replace")


def _networkd_ids(root: Path) -> _Ids:
    """uid and groups of systemd-network from <root>/etc/passwd and /etc/group (best effort)."""
    uid: int | None = None
    gids: set[int] = set()
    try:
        for line in _text(_host(root, "/etc/passwd")).splitlines():
            f = line.split(":")
            if len(f) >= 4 and f[0] == NETWORKD_USER and f[2].isdigit() and f[3].isdigit():
                uid = int(f[2])
                gids.add(int(f[3]))
        for line in _text(_host(root, "/etc/group")).splitlines():
            f = line.split(":")
            if len(f) >= 4 and f[2].isdigit() and NETWORKD_USER in f[3].split(","):
                gids.add(int(f[2]))
    except (OSError, ValueError):  # ValueError: a uid of over 4,300 digits
        pass
    return _Ids(uid, frozenset(gids))


def _denied(st: os.stat_result, ids: _Ids) -> str:
    """Why user systemd-network cannot read a file with this stat, or ""."""
    mode = st.st_mode
    if ids.uid is not None and st.st_uid == ids.uid:
        ok = bool(mode & stat.S_IRUSR)
    elif st.st_gid in ids.gids:
        ok = bool(mode & stat.S_IRGRP)
    else:
        ok = bool(mode & stat.S_IROTH)
    if ok:
        return ""
    return f"not readable by user {NETWORKD_USER} (mode {stat.S_IMODE(mode):04o}, uid {st.st_uid}, gid {st.st_gid})"


def _conf_file(root: Path, inside: str, role: str, shadows: tuple[str, ...], ids: _Ids) -> ConfFile:
    r = _read(root, inside)
    if r.state == "error":
        return ConfFile(inside, role, "error", error=r.error, shadows=shadows)
    if r.state != "read":
        return ConfFile(inside, role, r.state, shadows=shadows)
    assert r.st is not None
    denied = _denied(r.st, ids)
    if denied:
        return ConfFile(inside, role, "error", error=denied, shadows=shadows)
    parsed = parse_ini(r.data)
    keep = tuple(a for a in parsed.assignments if a.section == "Network" and a.key in KEYS)
    if parsed.error:
        return ConfFile(inside, role, "error", keep, parsed.error, parsed.error_line, shadows)
    return ConfFile(inside, role, "read", keep, shadows=shadows)


def read_networkd_conf(root: Path, version: int | None, progress: Callable[[str], None] | None = None
                       ) -> tuple[tuple[ConfFile, ...], tuple[str, ...], tuple[str, ...]]:
    """(files in reading order, main files this version ignores, listing errors)."""
    errors: list[str] = []
    candidates = main_candidates(version)
    dropins = _list(root, conf_dirs(version, "networkd.conf.d"), ".conf", errors)
    # The first one that opens (a dangling symlink is ENOENT: the next one is tried).
    main = next((c for c in candidates if _read(root, c).state != "dangling"), None)
    unused = tuple(c for c in main_candidates(MAIN_SEARCH_SINCE)
                   if c != main and os.path.lexists(_host(root, c)) and c not in candidates)
    if progress is not None:
        n = f"{len(dropins)} drop-in{'s' if len(dropins) != 1 else ''}"
        progress(f"reading {main} and {n}…" if main else f"reading {n} (no networkd.conf)…")
    ids = _networkd_ids(root)
    files: list[ConfFile] = []
    # v256+: a main file that is (or is linked as) one of the drop-ins is read later, as that drop-in.
    if main is not None and not (version is not None and version >= MAIN_SEARCH_SINCE
                                 and _same_as_dropin(root, main, dropins)):
        files.append(_conf_file(root, main, "main", (), ids))
    for e in dropins:
        files.append(_conf_file(root, e.path, "drop-in", e.shadows, ids))
    out: list[ConfFile] = []
    stopped = False
    for f in files:
        if stopped:
            out.append(ConfFile(f.path, f.role, "not-read", shadows=f.shadows))
            continue
        out.append(f)
        stopped = f.state == "error"
    return tuple(out), unused, tuple(errors)


def _same_as_dropin(root: Path, main: str, dropins: Sequence[_Entry]) -> bool:
    try:
        ms = os.stat(_host(root, _chase(root, main)))
    except OSError:
        return False
    for e in dropins:
        try:
            ds = os.stat(_host(root, _chase(root, e.path)))
        except OSError:
            continue
        if (ds.st_dev, ds.st_ino) == (ms.st_dev, ms.st_ino):
            return True
    return False


def read_network_files(root: Path, version: int | None, progress: Callable[[str], None] | None = None
                       ) -> tuple[tuple[NetworkFile, ...], tuple[str, ...]]:
    errors: list[str] = []
    dirs = conf_dirs(version, "network")
    entries = _list(root, dirs, ".network", errors)
    if progress is not None:
        progress(f"reading {len(entries)} .network file{'s' if len(entries) != 1 else ''}…")
    out: list[NetworkFile] = []
    for e in entries:
        r = _read(root, e.path)
        if r.state != "read":
            out.append(NetworkFile(e.path, r.state, shadows=e.shadows, error=r.error))
            continue
        dropins = _list(root, [f"{d}/{e.name}.d" for d in dirs], ".conf", errors)
        match: list[str] = []
        unmanaged = False
        error = ""
        for path, data in [(e.path, r.data)] + [(d.path, _read(root, d.path).data) for d in dropins]:
            parsed = parse_ini(data)
            for a in parsed.assignments:
                if a.section == "Match":
                    match.append(f"{a.key}={a.value}")
                elif a.section == "Link" and a.key == "Unmanaged":
                    unmanaged = parse_boolean(a.value) is True
            if parsed.error and not error:
                error = f"{path}:{parsed.error_line}: {parsed.error}"
        out.append(NetworkFile(e.path, "error" if error else "read", tuple(match), unmanaged,
                               tuple(d.path for d in dropins), e.shadows, error))
    return tuple(out), tuple(errors)


def read_unit(root: Path) -> UnitFacts:
    unit_file: str | None = None
    masked = False
    for d in UNIT_DIRS:
        p = f"{d}/{UNIT}"
        if os.path.lexists(_host(root, p)):
            r = _read(root, p)
            if r.state == "dangling":
                continue
            unit_file, masked = p, r.state in ("masked", "empty")
            break
    enabled: list[str] = []
    wants_root = _host(root, "/etc/systemd/system")
    try:
        targets = sorted(n for n in os.listdir(wants_root) if n.endswith(".wants"))
    except OSError:
        targets = []
    for t in targets:
        p = f"/etc/systemd/system/{t}/{UNIT}"
        if os.path.lexists(_host(root, p)):
            enabled.append(p)
    dropin = next((f"{d}/{NETWORKD_DROPIN}" for d in UNIT_DIRS
                   if os.path.lexists(_host(root, f"{d}/{NETWORKD_DROPIN}"))), None)
    socket_enabled = any(os.path.lexists(_host(root, f"/etc/systemd/system/{t}/{NETWORKD_SOCKET}"))
                         or os.path.lexists(_host(root, f"/usr/lib/systemd/system/{t}/{NETWORKD_SOCKET}"))
                         for t in targets + ["sockets.target.wants"])
    return UnitFacts(unit_file, masked, tuple(enabled), dropin, socket_enabled)


def read_tree(root: Path, version: int | None = None, progress: Callable[[str], None] | None = None) -> Facts:
    """Everything doctor needs from the files under `root` (default layout: `/`)."""
    conf, unused, errs1 = read_networkd_conf(root, version, progress)
    networks, errs2 = read_network_files(root, version, progress)
    if progress is not None:
        progress("looking for netd-hook's units…")
    return Facts(str(root), version, main_candidates(version), conf_dirs(version, "networkd.conf.d"), conf,
                 unused, conf_dirs(version, "network"), networks, read_unit(root), errs1 + errs2)
