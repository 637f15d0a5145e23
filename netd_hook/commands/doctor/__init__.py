"""`netd-hook doctor`: is this node at risk, and is netd-hook guarding it?

networkd v249+ deletes every policy rule it did not create, manager-wide, whenever it configures
any link (`ManageForeignRoutingPolicyRules=yes`, the default); `ManageForeignRoutes=yes` (v246+,
the default) drops the configured link's foreign routes, i.e. an ENI's table. Setting both to
`no` is the cure; netd-hook is the guard for nodes whose networkd configuration cannot be changed.

Split by what it does, so that the decisions are testable on plain data:

* `ini` (pure): systemd's INI dialect, `parse_ini` and `parse_boolean`, the way networkd parses;
* `facts` (pure): the values read (`Facts`) and said (`Finding`), search paths, `effective`;
* `networkd_config` (file I/O only): `read_tree(root, version)` finds and reads the files under
  `root` in networkd's order; `version`: systemd's version from `networkctl --version`;
* `assess` and `guard` (pure): `assess(facts, probe, snapshot_mtime, now)` turns facts into
  findings, networkd's risks first, then whether netd-hook guards the node;
* `output` (pure): `render_text`, `to_json`, `exit_code`.

`run` below is the whole check as the CLI runs it: read the tree, probe the daemon, assess.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from ...adapters import status as statusmod
from ...adapters.store import SNAPSHOT_FILE
from .assess import ADDRESS_DROPS, ADDRESS_DROPS_UNKNOWN, CURE_BODY, CURE_DIR, CURE_NAMES, assess, cure_fix
from .facts import (
    ENABLED_LINK,
    KEYS,
    MAIN_SEARCH_SINCE,
    NETWORKD_DROPIN,
    NETWORKD_SOCKET,
    ROUTES_KEY,
    ROUTES_SINCE,
    RULES_KEY,
    RULES_SINCE,
    UNIT,
    UNIT_DIRS,
    ConfFile,
    Facts,
    Finding,
    NetworkFile,
    Setting,
    Severity,
    UnitFacts,
    conf_dirs,
    effective,
    main_candidates,
)
from .guard import DEFAULT_STALE_AFTER
from .ini import Assignment, Parsed, parse_boolean, parse_ini
from .networkd_config import (
    NETWORKD_USER,
    READ_MAX_BYTES,
    read_network_files,
    read_networkd_conf,
    read_tree,
    read_unit,
)
from .output import FORMAT, VERSION, exit_code, render_text, to_json
from .version import parse_systemd_version, systemd_version

__all__ = [
    "ADDRESS_DROPS", "ADDRESS_DROPS_UNKNOWN", "CURE_BODY", "CURE_DIR", "CURE_NAMES", "DEFAULT_STALE_AFTER",
    "ENABLED_LINK", "FORMAT", "KEYS", "MAIN_SEARCH_SINCE", "NETWORKD_DROPIN", "NETWORKD_SOCKET", "NETWORKD_USER",
    "READ_MAX_BYTES", "ROUTES_KEY", "ROUTES_SINCE", "RULES_KEY", "RULES_SINCE", "UNIT", "UNIT_DIRS", "VERSION",
    "Assignment", "ConfFile", "Facts", "Finding", "NetworkFile", "Parsed", "Setting", "Severity", "UnitFacts",
    "assess", "conf_dirs", "cure_fix", "effective", "exit_code", "main_candidates", "parse_boolean", "parse_ini",
    "parse_systemd_version", "read_network_files", "read_networkd_conf", "read_tree", "read_unit", "render_text",
    "run", "systemd_version", "to_json",
]


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
