"""What doctor knows, as plain values: the facts it reads from a tree, and the findings it makes.

Pure: `conf_dirs` and `main_candidates` say where a systemd version looks; `effective` folds the
files networkd read, in its order, into the value it ends up with (the default is yes; a later
valid assignment wins; an invalid one is ignored and reported).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from .ini import Assignment, parse_boolean

RULES_KEY = "ManageForeignRoutingPolicyRules"
ROUTES_KEY = "ManageForeignRoutes"
KEYS = (RULES_KEY, ROUTES_KEY)
RULES_SINCE = 249  # NEWS for 249: ManageForeignRoutingPolicyRules=
ROUTES_SINCE = 246  # NEWS for 246: networkd.conf gained ManageForeignRoutes=
MAIN_SEARCH_SINCE = 256  # systemd PR #30480: main config files also in /run, /usr/local/lib, /usr/lib

# netd-hook's own units, in systemd's unit search path (systemd.unit(5)): read_unit() and the guard findings
UNIT = "netd-hook.service"
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")
NETWORKD_DROPIN = "systemd-networkd.service.d/netd-hook.conf"
NETWORKD_SOCKET = "systemd-networkd.socket"
ENABLED_LINK = "/etc/systemd/system/multi-user.target.wants/netd-hook.service"


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
