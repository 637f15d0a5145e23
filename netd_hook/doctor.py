"""`netd-hook doctor`: is this node at risk, and is netd-hook guarding it?

networkd v249+ deletes every policy rule it did not create, manager-wide, whenever it configures
any link (`ManageForeignRoutingPolicyRules=yes`, the default); `ManageForeignRoutes=yes` (v246+,
the default) drops the configured link's foreign routes, i.e. an ENI's table. Setting both to
`no` is the cure; netd-hook is the guard for nodes whose networkd configuration cannot be changed.

Three layers, so that the decisions are testable on plain data:

* `parse_ini` and `parse_boolean` (pure) read systemd's INI dialect the way networkd does;
* `read_tree(root, version)` (file I/O only) finds and parses the files under `root`;
* `assess(facts, probe, snapshot_mtime, now)` (pure) turns facts into `Finding`s.

How networkd finds its configuration, checked against systemd's source and, for the
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
* `config_parse()` (src/shared/conf-parser.c): a line whose first non-blank is `#` or `;` is a
  comment; a trailing `\\` continues the line; `[Section]` names are case-sensitive and taken
  verbatim (`[ Network ]` is an unknown section, lab); keys are case-sensitive (lab); later
  assignments win. A value that is not a boolean (`1/yes/y/true/t/on`, `0/no/n/false/f/off`,
  any case) is ignored with a warning and the value before it stays, be it the default or an
  earlier file's (lab, also for an empty value).
* Fatal errors: an unterminated section header, a line that is not UTF-8, a file networkd
  cannot open or read (a directory named *.conf; a file user systemd-network may not read:
  networkd drops privileges before parsing) make `config_parse()` fail. networkd then logs
  "Failed to parse configuration file" and goes on with what it had parsed so far: every
  later file is never read (lab).
* `networkctl reload` does not re-read networkd.conf: only a restart does (lab).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from . import status as statusmod
from .model import file_kind, read_regular
from .render import age, when
from .store import SNAPSHOT_FILE

FORMAT = "netd-hook/doctor"
VERSION = 1

RULES_KEY = "ManageForeignRoutingPolicyRules"
ROUTES_KEY = "ManageForeignRoutes"
KEYS = (RULES_KEY, ROUTES_KEY)
RULES_SINCE = 249  # NEWS for 249: ManageForeignRoutingPolicyRules=
ROUTES_SINCE = 246  # NEWS for 246: networkd.conf gained ManageForeignRoutes=
MAIN_SEARCH_SINCE = 256  # systemd PR #30480: main config files also in /run, /usr/local/lib, /usr/lib

# The most doctor reads of one file: networkd's own files are a few hundred bytes, /etc/passwd
# and /etc/group rarely more than a few hundred KiB. A FIFO or a device among them is refused,
# never opened (a FIFO would block doctor, /dev/zero would exhaust its memory).
READ_MAX_BYTES = 16 << 20

NETWORKD_USER = "systemd-network"  # User= of systemd-networkd.service; networkd parses as this user
CURE_DIR = "/etc/systemd/networkd.conf.d"
CURE_BODY = f"[Network]\n{RULES_KEY}=no\n{ROUTES_KEY}=no\n"
CURE_NAMES = ("80-netd-hook.conf", "90-netd-hook.conf", "99-netd-hook.conf", "zz-netd-hook.conf")

# A cured node (both keys no) loses no rule, but networkd still takes a managed link's address
# away and re-adds it at some moments, and the kernel flushes every route through a link when its
# last address goes (fib_disable_ip in net/ipv4/fib_frontend.c, no RTM_DELROUTE): the ENI's own
# table with it, whatever ManageForeignRoutes= says. Which moments, measured on booted nodes with
# the kops/AL2023 drop-in (tests/test_booted_cured.py); in 249's source link_reconfigure_impl()
# and link_carrier_lost() both call link_drop_config(), which removes the link's addresses.
ADDRESS_DROPS: Mapping[int, tuple[str, ...]] = {
    249: ("networkctl reconfigure", "carrier loss"),
    252: ("networkctl reconfigure", "networkd restart", "carrier loss"),
    257: ("carrier loss",),  # reconfigure and restart update the address in place
}
ADDRESS_DROPS_UNKNOWN = ("networkctl reconfigure", "networkd restart", "carrier loss")

UNIT = "netd-hook.service"
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")
NETWORKD_DROPIN = "systemd-networkd.service.d/netd-hook.conf"
NETWORKD_SOCKET = "systemd-networkd.socket"
ENABLED_LINK = "/etc/systemd/system/multi-user.target.wants/netd-hook.service"
DEFAULT_STALE_AFTER = 120.0  # 2 x a 60 s heartbeat; the daemon re-publishes at least every 30 s

_BOOL_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})
_BOOL_FALSE = frozenset({"0", "no", "n", "false", "f", "off"})
_WHITESPACE = b" \t\n\r"
_BOM = b"\xef\xbb\xbf"
_EOL = re.compile(rb"\r\n|\r|\n|\x00")  # read_line(): \n, \r, \r\n and NUL end a line
_VERSION_RE = re.compile(r"^systemd (\d+)\b")


class Severity(str, Enum):
    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Severity.OK: 0, Severity.INFO: 1, Severity.WARNING: 2, Severity.CRITICAL: 3}


@dataclass(frozen=True, slots=True)
class Finding:
    check: str  # stable id, e.g. "networkd.ManageForeignRoutingPolicyRules"
    severity: Severity
    summary: str  # one line
    detail: str = ""
    fix: str | None = None  # the exact commands or edit; None for ok findings


# ---------------------------------------------------------------------------- INI, the systemd way


@dataclass(frozen=True, slots=True)
class Assignment:
    section: str
    key: str
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class Parsed:
    assignments: tuple[Assignment, ...]
    error: str = ""  # fatal: config_parse() fails here and networkd reads no further
    error_line: int = 0


def parse_boolean(value: str) -> bool | None:
    """systemd's parse_boolean(); None for anything else (networkd ignores such a line)."""
    v = value.lower()
    if v in _BOOL_TRUE:
        return True
    if v in _BOOL_FALSE:
        return False
    return None


def parse_ini(data: bytes) -> Parsed:
    """config_parse() of systemd 249..252: every assignment in order, or where it fails."""
    out: list[Assignment] = []
    section: str | None = None
    continuation: bytes | None = None
    bom_seen = False
    lines = _EOL.split(data)
    if lines and lines[-1] == b"":
        lines.pop()
    n = 0
    for raw in lines:
        n += 1
        stripped = raw.lstrip(_WHITESPACE)
        if stripped and stripped[:1] in (b"#", b";"):
            continue  # comments are dropped before continuation handling, even inside one
        buf = raw
        if not bom_seen and buf.startswith(_BOM):
            buf, bom_seen = buf[len(_BOM):], True
        p = buf if continuation is None else continuation + buf
        trailing = len(p) - len(p.rstrip(b"\\"))
        if trailing % 2 == 1:
            continuation = p[:-1] + b" "
            continue
        continuation = None
        err, section = _parse_line(p, section, n, out)
        if err:
            return Parsed(tuple(out), err, n)
    if continuation is not None:
        n += 1
        err, section = _parse_line(continuation, section, n, out)
        if err:
            return Parsed(tuple(out), err, n)
    return Parsed(tuple(out))


def _parse_line(raw: bytes, section: str | None, n: int, out: list[Assignment]) -> tuple[str, str | None]:
    b = raw.strip(_WHITESPACE)
    if not b:
        return "", section
    try:
        line = b.decode("utf-8")
    except UnicodeDecodeError:
        return "line is not valid UTF-8", section
    if line.startswith("["):
        if not line.endswith("]"):
            return f"invalid section header {line!r}", section
        return "", line[1:-1]  # verbatim: "[ Network ]" is the section " Network "
    if section is None:
        return "", section  # assignment outside of a section: ignored
    key, eq, value = line.partition("=")
    if not eq or not key:
        return "", section  # missing '=' or key: ignored with a warning
    out.append(Assignment(section, key.strip(" \t\n\r"), value.strip(" \t\n\r"), n))
    return "", section


# ---------------------------------------------------------------------------- facts


@dataclass(frozen=True, slots=True)
class ConfFile:
    """One networkd.conf file, in the order networkd reads them."""

    path: str  # as networkd sees it (inside root)
    role: str  # "main" or "drop-in"
    state: str  # "read", "empty", "masked" (-> /dev/null), "dangling", "error", "not-read"
    assignments: tuple[Assignment, ...] = ()  # [Network] ManageForeign* only, up to any error
    error: str = ""  # why networkd stops reading here ("error" state)
    error_line: int = 0
    shadows: tuple[str, ...] = ()  # same-named files in lower-priority directories it hides


@dataclass(frozen=True, slots=True)
class NetworkFile:
    path: str
    state: str  # "read", "empty", "masked", "dangling", "error"
    match: tuple[str, ...] = ()  # "Key=value" from [Match], file first, then drop-ins
    unmanaged: bool = False  # [Link] Unmanaged=yes
    dropins: tuple[str, ...] = ()
    shadows: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class UnitFacts:
    unit_file: str | None = None  # highest-priority netd-hook.service found
    masked: bool = False
    enabled: tuple[str, ...] = ()  # *.wants symlinks in /etc/systemd/system
    networkd_dropin: str | None = None
    networkd_socket_enabled: bool = False  # systemd-networkd.socket in some *.wants: networkd is socket-activated


@dataclass(frozen=True, slots=True)
class Facts:
    root: str
    version: int | None  # systemd's, as given
    main_candidates: tuple[str, ...]  # where this version looks for networkd.conf
    dropin_dirs: tuple[str, ...]
    conf_files: tuple[ConfFile, ...]
    unused_main: tuple[str, ...] = ()  # main files this version does not read (e.g. /usr/lib before 256)
    network_dirs: tuple[str, ...] = ()
    network_files: tuple[NetworkFile, ...] = ()
    unit: UnitFacts = field(default_factory=UnitFacts)
    errors: tuple[str, ...] = ()  # directories that could not be listed


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    value: bool
    source: str | None  # "path:line", None for the built-in default
    invalid: tuple[tuple[str, str], ...] = ()  # ("path:line", raw value) ignored by networkd


def conf_dirs(version: int | None, leaf: str) -> tuple[str, ...]:
    """CONF_PATHS for `systemd/<leaf>`; /lib only for split-usr builds (Debian up to 12, < 256)."""
    dirs = [f"{p}/systemd/{leaf}" for p in ("/etc", "/run", "/usr/local/lib", "/usr/lib")]
    if version is None or version < MAIN_SEARCH_SINCE:
        dirs.append(f"/lib/systemd/{leaf}")
    return tuple(dirs)


def main_candidates(version: int | None) -> tuple[str, ...]:
    if version is not None and version >= MAIN_SEARCH_SINCE:
        return tuple(f"{p}/systemd/networkd.conf" for p in ("/etc", "/run", "/usr/local/lib", "/usr/lib"))
    return ("/etc/systemd/networkd.conf",)


def effective(conf_files: Sequence[ConfFile], key: str) -> Setting:
    """The value networkd ends up with: default yes, later valid assignments win."""
    value, source = True, None
    invalid: list[tuple[str, str]] = []
    for f in conf_files:
        for a in f.assignments:
            if a.section != "Network" or a.key != key:
                continue
            b = parse_boolean(a.value)
            if b is None:
                invalid.append((f"{f.path}:{a.line}", a.value))
            else:
                value, source = b, f"{f.path}:{a.line}"
    return Setting(key, value, source, tuple(invalid))


# ---------------------------------------------------------------------------- reading (thin I/O)


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


# ---------------------------------------------------------------------------- systemd's version


def parse_systemd_version(text: str) -> int | None:
    """`networkctl --version` prints `systemd 252 (252.38-1~deb12u1)` on its first line."""
    m = _VERSION_RE.match(text.lstrip())
    return int(m.group(1)) if m else None


def systemd_version(networkctl: str = "networkctl", timeout: float = 5.0) -> int | None:
    """systemd's version from `networkctl --version`; None when networkctl is absent or fails."""
    exe = shutil.which(networkctl)
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=timeout, check=False,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_systemd_version(r.stdout) if r.returncode == 0 else None


# ---------------------------------------------------------------------------- assessment (pure)


def _cure_name(conf_files: Sequence[ConfFile]) -> str:
    """A drop-in name that sorts after every drop-in that sets one of the keys (later wins)."""
    setters = [os.path.basename(f.path) for f in conf_files
               if f.role == "drop-in" and f.assignments and os.path.basename(f.path) not in CURE_NAMES]
    last = max(setters, key=os.fsencode, default="")
    for name in CURE_NAMES:
        if os.fsencode(name) > os.fsencode(last):
            return name
    return CURE_NAMES[-1]


def cure_fix(conf_files: Sequence[ConfFile]) -> str:
    """The drop-in that turns both wipes off, named to sort after every drop-in that sets them."""
    name = _cure_name(conf_files)
    body = CURE_BODY.replace("\n", "\\n")
    broken = [f.path for f in conf_files if f.state == "error"]
    first = (f"  first fix {broken[0]}: networkd stops reading there and would never see the drop-in\n"
             if broken else "")
    return (f"{first}"
            f"  mkdir -p {CURE_DIR}\n"
            f"  printf '{body}' > {CURE_DIR}/{name}\n"
            f"  systemctl restart systemd-networkd   # networkctl reload does not re-read networkd.conf\n"
            f"  (restart networkd while netd-hook runs: it puts back anything lost in the restart)")


def _guard_fix(unit: UnitFacts) -> str:
    if unit.unit_file is None:
        return "install netd-hook, then: systemctl enable --now netd-hook"
    if unit.masked:
        return "systemctl unmask netd-hook && systemctl enable --now netd-hook"
    return "systemctl enable --now netd-hook   # if it does not stay up: journalctl -u netd-hook -n 50"


_SKIP_CURE = ("Where the image owns networkd's configuration (netplan/cloud-init images, read-only /etc),\n"
              "skip the cure: netd-hook is the guard there, keep it enabled.")


def _risk_finding(key: str, setting: Setting, version: int | None, since: int, guard_running: bool,
                  unit: UnitFacts, conf_files: Sequence[ConfFile], fixed_above: bool = False) -> Finding:
    check = f"networkd.{key}"
    where = f"set in {setting.source}" if setting.source else "networkd's default"
    lost = "policy rules" if key == RULES_KEY else "ENI table routes"
    what = ("deletes every policy rule it did not create (the VPC CNI's pod, fwmark and ENI rules) on all links "
            "whenever it configures any link: restart, netplan apply, networkctl reconfigure, ENI hot-plug"
            if key == RULES_KEY else
            "deletes the routes it did not create on every link it configures, such as an ENI's own "
            "route table (default via the ENI's gateway)")
    if version is not None and version < since:
        return Finding(check, Severity.INFO,
                       f"systemd {version} predates {key}= (systemd {since}): not assessed",
                       f"networkd ignores {key}= before systemd {since}; the manager-wide wipe netd-hook guards "
                       f"against is the behaviour of systemd 249 and later.")
    assumed = "" if version is not None else " (systemd's version unknown: assuming 249 or later)"
    if not setting.value:
        return Finding(check, Severity.OK, f"{key}=no ({where}): networkd leaves foreign "
                       f"{'policy rules' if key == RULES_KEY else 'routes'} alone{assumed}")
    detail = f"With {key}=yes ({where}), systemd-networkd {what}.{assumed}"
    if key == ROUTES_KEY:
        detail += (" Even with ManageForeignRoutes=no, an ENI whose address networkd takes away and re-adds loses "
                   f"its table routes (the kernel flushes them: {_address_drops(version)}), which netd-hook "
                   "repairs.")
    cure = (f"the drop-in above (for {RULES_KEY}) sets {key}=no too" if fixed_above
            else "Cure, turn the wipe off:\n" + cure_fix(conf_files) + "\n" + _SKIP_CURE)
    if guard_running:
        return Finding(check, Severity.WARNING,
                       f"{key}=yes ({where}): networkd deletes the CNI's {lost}; netd-hook is running and puts "
                       f"them back", detail, cure)
    if not fixed_above:
        cure = ("Guard now: " + _guard_fix(unit) + "\n" + cure
                + "\nPods that already lost their network need a restart (kubectl delete pod ...).")
    return Finding(check, Severity.CRITICAL,
                   f"{key}=yes ({where}) and netd-hook is not running: the next networkd reconfigure deletes "
                   f"the CNI's {lost} and nothing puts them back",
                   detail + " Pods on secondary ENIs lose their network until they are restarted.", cure)


def _conf_findings(facts: Facts) -> list[Finding]:
    out: list[Finding] = []
    read = [f for f in facts.conf_files if f.state in ("read", "empty", "error")]
    main = next((f for f in facts.conf_files if f.role == "main"), None)
    n_drop = sum(1 for f in facts.conf_files if f.role == "drop-in")
    lines = []
    for f in facts.conf_files:
        note = {"read": "", "empty": " (empty: masks its namesakes)", "masked": " (-> /dev/null: masks its namesakes)",
                "dangling": " (dangling symlink: skipped, masks its namesakes)",
                "error": f" (networkd stops here: {f.error})",
                "not-read": " (never read: networkd stopped before it)"}[f.state]
        sets = ", ".join(f"{a.key}={a.value} (line {a.line})" for a in f.assignments)
        lines.append(f"{f.role:7} {f.path}{note}{': ' + sets if sets else ''}")
        lines.extend(f"        hides {s}" for s in f.shadows)
    for u in facts.unused_main:
        lines.append(f"unused  {u} (read only by systemd {MAIN_SEARCH_SINCE} and later)")
    if not facts.conf_files:
        lines.append("no networkd.conf and no drop-ins: networkd runs with its defaults")
    mains = facts.main_candidates
    first = mains[0] if len(mains) == 1 else "the first of " + ", ".join(mains)
    detail = (f"Read order (later files win): {first}, then the drop-ins of " + ", ".join(facts.dropin_dirs)
              + " sorted by file name.\n" + "\n".join(lines))
    summary = (f"networkd.conf: {main.path if main else 'no main file'} and {n_drop} drop-in"
               f"{'s' if n_drop != 1 else ''} ({len(read)} read)")
    out.append(Finding("networkd.conf", Severity.OK, summary, detail))
    for f in facts.conf_files:
        if f.state != "error":
            continue
        later = [g.path for g in facts.conf_files if g.state == "not-read"]
        at = f"{f.path}:{f.error_line}" if f.error_line else f.path
        if f.error_line:
            fix = f"Fix or remove line {f.error_line} of {f.path}, then: systemctl restart systemd-networkd"
        elif f.error.startswith("not readable"):
            fix = f"chmod 0644 {f.path}\nsystemctl restart systemd-networkd"
        elif f.error == "is a directory":
            fix = (f"Move the directory {f.path} out of the way (drop-ins must be files), then:\n"
                   "systemctl restart systemd-networkd")
        else:
            fix = (f"Run netd-hook doctor as root. If root cannot read {f.path} either, neither can networkd:\n"
                   f"check the file, then: systemctl restart systemd-networkd")
        out.append(Finding(
            "networkd.conf.error", Severity.WARNING,
            f"networkd stops reading its configuration at {at} ({f.error})"
            + (f": {len(later)} later file{'s are' if len(later) != 1 else ' is'} ignored" if later else ""),
            "networkd logs \"Failed to parse configuration file\" and keeps only what it read before this point."
            + (" Ignored: " + ", ".join(later) if later else ""),
            fix))
    for key in KEYS:
        for where, raw in effective(facts.conf_files, key).invalid:
            out.append(Finding(
                "networkd.conf.invalid-boolean", Severity.WARNING,
                f"{where}: {key}={raw} is not a boolean: networkd ignores this line",
                "networkd keeps the value it had before this line (the default, or an earlier file's).",
                f"Edit {where.rsplit(':', 1)[0]}: {key}=no (booleans: 1/yes/y/true/t/on, 0/no/n/false/f/off)"))
    for e in facts.errors:
        out.append(Finding("networkd.conf.listing", Severity.WARNING, e,
                           "networkd skips a directory it cannot list; so does doctor.",
                           "Run netd-hook doctor as root."))
    return out


def _network_finding(facts: Facts) -> Finding:
    live = [f for f in facts.network_files if f.state in ("read", "error")]
    if not live:
        return Finding("networkd.network-files", Severity.INFO,
                       "no .network files: networkd manages no link",
                       "Nothing triggers the wipe until a .network file appears (netplan apply writes them to "
                       "/run/systemd/network). Looked in " + ", ".join(facts.network_dirs) + ".")
    lines = []
    for f in facts.network_files:
        if f.state in ("masked", "empty", "dangling"):
            lines.append(f"{f.path}: {f.state} (networkd skips it)")
            continue
        match = " ".join(f.match) if f.match else "no [Match]: networkd ignores this file"
        extra = (" Unmanaged=yes" if f.unmanaged else "") + (" (netplan)" if "netplan" in f.path else "")
        lines.append(f"{f.path}: {match}{extra}")
        lines.extend(f"  drop-in {d}" for d in f.dropins)
        lines.extend(f"  hides {s}" for s in f.shadows)
        if f.error:
            lines.append(f"  networkd ignores this file: {f.error}")
    names = ", ".join(os.path.basename(f.path) for f in live)
    return Finding("networkd.network-files", Severity.INFO,
                   f"networkd has {len(live)} .network file{'s' if len(live) != 1 else ''}: {names}",
                   "A link matching any of these is configured by networkd; configuring one link wipes foreign "
                   "rules for all.\n" + "\n".join(lines))


def _links_finding(links: Mapping[str, str]) -> Finding:
    managed = sorted((n, s) for n, s in links.items() if s not in ("unmanaged", "linger"))
    unmanaged = sorted(n for n, s in links.items() if s == "unmanaged")
    m = ", ".join(f"{n} ({s})" for n, s in managed) or "none"
    shown = ", ".join(unmanaged[:8]) + (f", … ({len(unmanaged)} in all)" if len(unmanaged) > 8 else "")
    return Finding("networkd.links", Severity.INFO,
                   f"networkd manages {len(managed)} link{'s' if len(managed) != 1 else ''}: {m}; "
                   f"{len(unmanaged)} unmanaged",
                   f"From netd-hook's status. Unmanaged: {shown or 'none'}.")


def _address_drops(version: int | None) -> str:
    """The moments networkd takes a managed ENI's address away, for this systemd."""
    known = ADDRESS_DROPS.get(version) if version is not None else None
    if known is not None:
        return f"systemd {version}: {', '.join(known)}"
    return f"{', '.join(ADDRESS_DROPS_UNKNOWN[:-1])} or {ADDRESS_DROPS_UNKNOWN[-1]}, depending on the systemd version"


def _managed_links(links: Mapping[str, str] | None) -> list[str]:
    return sorted(n for n, s in (links or {}).items() if s not in ("unmanaged", "linger") and n != "lo")


def _cured_finding(facts: Facts, rules: Setting, routes: Setting, running: bool,
                   links: Mapping[str, str] | None) -> Finding | None:
    """Both wipes off (the kops/AL2023 drop-in, or doctor's own cure): say so, and what is still
    lost and who puts it back. None when either wipe is on, or systemd predates the rule wipe."""
    version = facts.version
    if rules.value or routes.value or (version is not None and version < RULES_SINCE):
        return None
    drops = _address_drops(version)
    flushed = f"the ENI table routes the kernel flushes when networkd re-adds an ENI's address ({drops})"
    sources = "; ".join(f"{s.key}=no in {s.source}" for s in (rules, routes) if s.source)
    managed = _managed_links(links)
    which = (f"Links networkd manages now (from netd-hook's status): {', '.join(managed) or 'none'}. "
             if links is not None else "")
    detail = (f"{sources}. networkd deletes none of the CNI's policy rules or routes. But when a link's last "
              "address goes, the kernel flushes every route through it, the ENI's own table (default via its "
              f"gateway) included, and networkd takes a managed ENI's address away and re-adds it ({drops}); it "
              "re-adds the address, never the CNI's routes, and the pods on that ENI lose their egress. "
              f"{which}An ENI whose link networkd does not manage (Unmanaged=yes) keeps its address and its table.")
    if running:
        return Finding("networkd.cured", Severity.OK,
                       f"cured: networkd deletes none of the CNI's rules or routes; netd-hook still guards {flushed}",
                       detail + " netd-hook re-reads the kernel once networkd settles and puts them back.")
    return Finding("networkd.cured", Severity.INFO,
                   f"cured: networkd deletes none of the CNI's rules or routes, but nothing puts back {flushed}: "
                   "netd-hook is not running",
                   detail + " Without netd-hook they stay gone until the CNI re-creates them (aws-node restarted).")


def _unmanaged_finding(facts: Facts, rules: Setting) -> Finding | None:
    """`[Link] Unmanaged=yes` on the secondary ENIs (Ubuntu's common layout) keeps networkd off their
    addresses and routes, never off the rules: the rule wipe is manager-wide (amazon-vpc-cni-k8s #1600)."""
    files = [f for f in facts.network_files if f.state in ("read", "error") and f.unmanaged]
    if not files or not rules.value or (facts.version is not None and facts.version < RULES_SINCE):
        return None
    names = ", ".join(f"{os.path.basename(f.path)} ({' '.join(f.match) or 'no [Match]'})" for f in files)
    routes_note = (" networkd neither configures the addresses of these links nor drops their routes, so an ENI table "
                   "on them survives whatever networkd does, ManageForeignRoutes=yes or not.")
    return Finding("networkd.unmanaged", Severity.INFO,
                   f"Unmanaged=yes in {names}: networkd leaves those links' addresses and routes alone, but not the "
                   "rules: the rule wipe is manager-wide",
                   "networkd deletes every foreign policy rule whenever it configures any link it manages (the "
                   "primary ENI: networkctl reconfigure, netplan apply, a networkd restart; on 249 also a carrier "
                   "loss), whichever link the rule is about. Unmanaged=yes does not change that (amazon-vpc-cni-k8s "
                   "#1600); ManageForeignRoutingPolicyRules=no does." + routes_note)


def assess(facts: Facts, probe: statusmod.Probe | None, snapshot_mtime: float | None, now: float,
           stale_after: float = DEFAULT_STALE_AFTER, links: Mapping[str, str] | None = None) -> list[Finding]:
    """Findings, in a stable order (render_text sorts by severity). Pure."""
    out: list[Finding] = []
    version = facts.version
    if version is None:
        out.append(Finding("systemd.version", Severity.INFO, "systemd's version unknown (networkctl not found)",
                           "Assuming 249 or later: the version where networkd's rule wipe began."))
    elif version < RULES_SINCE:
        out.append(Finding("systemd.version", Severity.INFO, f"systemd {version}: older than 249"))
    else:
        out.append(Finding("systemd.version", Severity.OK, f"systemd {version}"))
    status = probe.status if probe is not None else None
    running = probe is not None and probe.running
    rules = effective(facts.conf_files, RULES_KEY)
    routes = effective(facts.conf_files, ROUTES_KEY)
    rf = _risk_finding(RULES_KEY, rules, version, RULES_SINCE, running, facts.unit, facts.conf_files)
    out.append(rf)
    out.append(_risk_finding(ROUTES_KEY, routes, version, ROUTES_SINCE, running, facts.unit, facts.conf_files,
                             fixed_above=rf.severity.rank >= Severity.WARNING.rank))
    out.extend(_conf_findings(facts))
    at_risk = ((rules.value and (version is None or version >= RULES_SINCE))
               or (routes.value and (version is None or version >= ROUTES_SINCE)))
    need = Severity.WARNING if at_risk else Severity.INFO
    why = "" if at_risk else (" (networkd's wipe is off here; netd-hook still puts back the ENI table routes"
                              " the kernel flushes when networkd takes an ENI's address away)")

    out.append(_network_finding(facts))
    if links is None and status is not None and running:  # a dead daemon's links are history
        nd = status.get("networkd")
        raw = nd.get("links") if isinstance(nd, dict) else None
        if isinstance(raw, dict):
            links = {str(k): str(v) for k, v in raw.items()}
    if links is not None:
        out.append(_links_finding(links))
    unmanaged = _unmanaged_finding(facts, rules)
    if unmanaged is not None:
        out.append(unmanaged)
    cured = _cured_finding(facts, rules, routes, running, links)
    if cured is not None:
        out.append(cured)

    unit = facts.unit
    if unit.unit_file is None:
        out.append(Finding("netd-hook.installed", need, f"netd-hook is not installed{why}",
                           "No netd-hook.service in " + ", ".join(UNIT_DIRS) + ".", _guard_fix(unit)))
    elif unit.masked:
        out.append(Finding("netd-hook.installed", need, f"netd-hook.service is masked ({unit.unit_file}){why}",
                           "A masked unit cannot start, at boot or by hand.", _guard_fix(unit)))
    else:
        out.append(Finding("netd-hook.installed", Severity.OK, f"netd-hook is installed ({unit.unit_file})"))
        if unit.enabled:
            out.append(Finding("netd-hook.enabled", Severity.OK, "netd-hook is enabled (starts at boot)",
                               "\n".join(unit.enabled)))
        else:
            out.append(Finding("netd-hook.enabled", need, f"netd-hook is not enabled: it will not start at boot{why}",
                               f"No {ENABLED_LINK}.", "systemctl enable --now netd-hook"))
        if unit.networkd_dropin is not None:
            out.append(Finding("netd-hook.networkd-dropin", Severity.OK,
                               f"systemd-networkd.service drop-in present ({unit.networkd_dropin})"))
        else:
            out.append(Finding("netd-hook.networkd-dropin", need,
                               f"netd-hook's drop-in for systemd-networkd.service is missing{why}",
                               f"The package ships /lib/systemd/system/{NETWORKD_DROPIN}.",
                               "Reinstall the netd-hook package, then: systemctl daemon-reload"))
    out.extend(_daemon_findings(probe, status, snapshot_mtime, now, stale_after, need, why, unit))
    return out


def _daemon_findings(probe: statusmod.Probe | None, status: dict[str, Any] | None, snapshot_mtime: float | None,
                     now: float, stale_after: float, need: Severity, why: str, unit: UnitFacts) -> list[Finding]:
    out: list[Finding] = []
    running = probe is not None and probe.running
    snap = f"netd-hook's snapshot was written {age(now - snapshot_mtime)} ago" if snapshot_mtime is not None else ""
    if not running and unit.unit_file is None:
        return out  # "not installed" says it all
    if not running:
        last = ""
        last_at = statusmod.timestamp(status.get("updated_at")) if status is not None else None
        if last_at is not None:
            last = f" Its last status was published {age(now - last_at)} ago."
        out.append(Finding("netd-hook.running", need, f"netd-hook is not running{why}",
                           "Nothing puts back what networkd deletes." + last,
                           ("systemctl start netd-hook\n" if unit.unit_file and not unit.masked else "")
                           + "systemctl status netd-hook\njournalctl -u netd-hook -n 50 --no-pager"))
        if snapshot_mtime is not None:
            out.append(Finding("netd-hook.snapshot", Severity.INFO,
                               f"{snap}: netd-hook replays it when it starts"))
        return out
    if status is None:
        out.append(Finding("netd-hook.running", Severity.WARNING,
                           f"netd-hook holds its lock but publishes no status ({probe.error if probe else ''})",
                           "A daemon that started but cannot write its status file, or an old version.",
                           "journalctl -u netd-hook -n 50 --no-pager\nsystemctl restart netd-hook"))
    else:
        pid = status.get("pid")
        started = statusmod.timestamp(status.get("started_at"))
        up = f", up {age(now - started)}" if started is not None else ""
        out.append(Finding("netd-hook.running", Severity.OK, f"netd-hook is running (pid {pid}{up})"))
        updated = statusmod.timestamp(status.get("updated_at"))
        if updated is None:
            out.append(Finding("netd-hook.status", Severity.WARNING, "netd-hook's status has no updated_at",
                               "Cannot tell whether the daemon is alive.", "journalctl -u netd-hook -n 50 --no-pager"))
        elif now - updated > stale_after:
            out.append(Finding("netd-hook.status", Severity.WARNING,
                               f"netd-hook's status is stale: last published {age(now - updated)} ago "
                               f"(more than {int(stale_after)}s)",
                               "The daemon holds its lock but has stopped publishing: it may be stuck.",
                               "journalctl -u netd-hook -n 50 --no-pager\nsystemctl restart netd-hook"))
        else:
            prot = status.get("protected")
            what = ""
            if isinstance(prot, dict):
                what = f": protecting {prot.get('rules', '?')} rules, {prot.get('routes', '?')} routes"
            out.append(Finding("netd-hook.status", Severity.OK,
                               f"netd-hook's status is fresh (published {age(now - updated)} ago){what}"))
            missing = status.get("missing")
            if isinstance(missing, int) and missing > 0:
                out.append(Finding("netd-hook.missing", Severity.WARNING,
                                   f"{missing} protected entr{'ies are' if missing != 1 else 'y is'} missing from "
                                   f"the kernel right now",
                                   "netd-hook puts them back once networkd has settled; if this persists, the "
                                   "liveness gate holds them back or the kernel rejects them.",
                                   "netd-hook diff\njournalctl -u netd-hook -n 50 --no-pager"))
            out.extend(_forgotten_findings(status.get("forgotten")))
            out.extend(_stuck_findings(status, now))
            out.extend(_degraded_findings(status.get("degraded"), now))
            if unit.networkd_socket_enabled and status.get("networkd_sockets") == []:
                out.append(Finding("netd-hook.networkd-socket", Severity.CRITICAL,
                                   "networkd is socket-activated, but netd-hook was not given its socket: "
                                   "networkd's deletions look like the CNI's and are never put back",
                                   "systemd binds networkd's rtnetlink socket and hands it over, so networkd's "
                                   "requests carry the socket's port, not networkd's PID. netd-hook learns that "
                                   "port from the same socket, through Sockets=systemd-networkd.socket in its "
                                   "unit (the packaged unit has it; an override or an own unit may have lost it).",
                                   "systemctl show netd-hook -p Sockets   # must list systemd-networkd.socket\n"
                                   "systemctl revert netd-hook   # drop local overrides of the packaged unit\n"
                                   "systemctl restart netd-hook"))
    if snapshot_mtime is None:
        out.append(Finding("netd-hook.snapshot", Severity.WARNING,
                           "netd-hook is running but has no snapshot file",
                           "Without it, a restarted netd-hook cannot put back rules lost while it was down.",
                           "journalctl -u netd-hook -n 50 --no-pager   # look for snapshot write errors\n"
                           "Check that netd-hook's state directory (/var/lib/netd-hook) is writable."))
    else:
        out.append(Finding("netd-hook.snapshot", Severity.OK, snap))
    return out


def _forgotten_findings(forgotten: object) -> list[Finding]:
    """Entries forgotten as deliberate deletions: in bulk while networkd was busy, a red flag."""
    if not isinstance(forgotten, dict):
        return []
    doubt = forgotten.get("doubt")
    if isinstance(doubt, str) and doubt:
        return [Finding("netd-hook.forgotten", Severity.WARNING,
                        f"netd-hook forgot entries in bulk while networkd was busy: {doubt}",
                        "netd-hook never replays what someone else deleted (the CNI deleting a pod). Many "
                        "such deletions at the moment networkd configures a link usually mean that networkd "
                        "deleted them through a socket netd-hook did not recognise as networkd's: check that "
                        "netd-hook.service has Sockets=systemd-networkd.socket and that `netd-hook status` "
                        "names the socket's port.",
                        "journalctl -u netd-hook -g forgot --no-pager\n"
                        "systemctl show netd-hook -p Sockets\n"
                        "restart the affected pods if their rules are gone (kubectl delete pod ...)")]
    total = forgotten.get("total")
    if isinstance(total, int) and total > 0:
        return [Finding("netd-hook.forgotten", Severity.OK,
                        f"{total} entries deleted by others (the CNI) were forgotten, none in bulk while "
                        f"networkd was busy")]
    return []


def _stuck_findings(status: Mapping[str, Any], now: float) -> list[Finding]:
    """Managed links busy for longer than [replay] stuck_ms (status.json `networkd.stuck`: link
    name -> seconds busy when the status was published), each named with since when."""
    nd = statusmod.section(status, "networkd")
    stuck = statusmod.section(nd, "stuck")
    if not stuck:
        return []
    states = statusmod.section(nd, "links")
    published = statusmod.timestamp(status.get("updated_at")) or now
    named = []
    for name, secs in stuck.items():
        since = published - statusmod.number(secs)
        state = states.get(name)
        named.append(f"{name}{f' ({state})' if isinstance(state, str) else ''} busy since {when(since)} "
                     f"({age(now - since)})")
    return [Finding("netd-hook.stuck", Severity.WARNING,
                    f"networkd link{'s' if len(stuck) != 1 else ''} stuck: {', '.join(named)}",
                    "Busy for longer than [replay] stuck_ms: no carrier, a DHCP server that never answers, a link "
                    "udev never initialized. netd-hook no longer waits for such a link to repair what networkd's "
                    "other links deleted, and checks the kernel again when it settles.",
                    f"networkctl status {' '.join(stuck)}\njournalctl -u systemd-networkd -n 50 --no-pager")]


def _degraded_findings(degraded: object, now: float) -> list[Finding]:
    """status.json `degraded` (since, reason): writes failing, the daemon protecting from memory."""
    if not isinstance(degraded, Mapping) or not degraded:
        return []
    since = statusmod.timestamp(degraded.get("since"))
    reason = degraded.get("reason")
    why = reason if isinstance(reason, str) and reason else "a state or runtime file cannot be written"
    spell = f" since {when(since)} ({age(now - since)})" if since is not None else ""
    dirs = sorted({os.path.dirname(w["path"]) for w in statusmod.items(degraded.get("writes"))
                   if isinstance(w, Mapping) and isinstance(w.get("path"), str) and w["path"].startswith("/")})
    look = (f"df -h {' '.join(dirs)}   # full?\n" if dirs else "") + "".join(
        f"findmnt -T {d}   # mounted read-only?\n" for d in dirs)
    return [Finding("netd-hook.degraded", Severity.WARNING, f"netd-hook is degraded{spell}: {why}",
                    "A full or read-only directory (state, runtime or metrics). netd-hook keeps protecting from "
                    "memory and retries (backing off from 1 s to 60 s) until the write works again; meanwhile a "
                    "restarted netd-hook starts from an older snapshot, and `status`, `wait` and the metrics may "
                    "read an older status.",
                    look + "journalctl -u netd-hook -g degraded --no-pager")]


# ---------------------------------------------------------------------------- output


_MARK = {Severity.OK: "  ok  ", Severity.INFO: " info ", Severity.WARNING: " WARN ", Severity.CRITICAL: " CRIT "}


def exit_code(findings: Iterable[Finding]) -> int:
    return 1 if any(f.severity.rank >= Severity.WARNING.rank for f in findings) else 0


def render_text(findings: Sequence[Finding], verbose: bool = False) -> str:
    """One line per finding, worst first; fixes indented under non-ok ones; a summary line."""
    lines: list[str] = []
    for f in sorted(findings, key=lambda f: -f.severity.rank):
        lines.append(f"[{_MARK[f.severity]}] {f.summary}")
        if verbose and f.detail:
            lines.extend(f"         {ln}" for ln in f.detail.splitlines())
        if f.fix and f.severity is not Severity.OK:
            lines.append("         fix:")
            lines.extend(f"           {ln}" for ln in f.fix.splitlines())
    counts = {s: sum(1 for f in findings if f.severity is s) for s in Severity}
    parts = [f"{counts[s]} {s.value}{'s' if s is Severity.WARNING and counts[s] != 1 else ''}"
             for s in (Severity.CRITICAL, Severity.WARNING, Severity.INFO, Severity.OK) if counts[s]]
    if counts[Severity.CRITICAL]:
        verdict = "AT RISK: networkd can delete the CNI's rules or routes and nothing puts them back"
    elif counts[Severity.WARNING]:
        verdict = "needs attention"
    elif any(f.check == "networkd.cured" for f in findings):
        guarded = any(f.check == "networkd.cured" and f.severity is Severity.OK for f in findings)
        verdict = ("cured: networkd deletes none of the CNI's rules or routes; "
                   + ("netd-hook guards the ENI table routes the kernel flushes" if guarded else
                      "nothing guards the ENI table routes the kernel flushes (netd-hook is not running)"))
    else:
        verdict = "no problems found"
    lines.append(f"{', '.join(parts)}: {verdict}")
    return "\n".join(lines) + "\n"


def to_json(findings: Sequence[Finding], facts: Facts) -> dict[str, Any]:
    rules = effective(facts.conf_files, RULES_KEY)
    routes = effective(facts.conf_files, ROUTES_KEY)
    return {
        "format": FORMAT,
        "version": VERSION,
        "exit_code": exit_code(findings),
        "cured": any(f.check == "networkd.cured" for f in findings),
        "systemd_version": facts.version,
        "settings": {s.key: {"value": s.value, "source": s.source,
                             "invalid": [{"where": w, "value": v} for w, v in s.invalid]}
                     for s in (rules, routes)},
        "findings": [{"check": f.check, "severity": f.severity.value, "summary": f.summary,
                      "detail": f.detail, "fix": f.fix} for f in findings],
        "facts": json.loads(json.dumps(asdict(facts))),
    }


# ---------------------------------------------------------------------------- the whole check


def run(root: Path, runtime_dir: Path, state_dir: Path, now: float, version: int | None,
        progress: Callable[[str], None], stale_after: float = DEFAULT_STALE_AFTER) -> tuple[Facts, list[Finding]]:
    """What `netd-hook doctor` does; `runtime_dir` and `state_dir` are not under `root`."""
    facts = read_tree(root, version, progress)
    progress(f"asking for netd-hook's status in {runtime_dir}…")
    try:
        probe: statusmod.Probe | None = statusmod.probe(runtime_dir)
    except OSError as exc:
        probe = statusmod.Probe(False, None, f"cannot probe {runtime_dir}: {exc.strerror}")
    try:
        st = os.stat(state_dir / SNAPSHOT_FILE)
        # what is not a regular file there (a directory, a FIFO) is no snapshot the daemon could load
        snapshot_mtime: float | None = st.st_mtime if stat.S_ISREG(st.st_mode) else None
    except (OSError, ValueError):  # ValueError: a NUL in the path
        snapshot_mtime = None
    return facts, assess(facts, probe, snapshot_mtime, now, stale_after)
