"""The TOML configuration: every key optional, every bad key or value named with its file."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.model import PROTOCOLS, show
from ..core.scope import PRIORITY_MAX, Range, Scope
from .files import read_regular

if sys.version_info >= (3, 11):
    import tomllib
else:  # Ubuntu 22.04 ships 3.10
    import tomli as tomllib

DEFAULT_CONFIG = Path("/etc/netd-hook/netd-hook.toml")
# A configuration is a few hundred bytes; what is larger than this is not one (and /dev/zero
# must not be read until memory runs out).
CONFIG_MAX_BYTES = 1 << 20
DEFAULT_STATE_DIR = Path("/var/lib/netd-hook")
LOG_LEVELS = ("debug", "info", "warning", "error")
TABLE_NAMES = {"default": 253, "main": 254, "local": 255}


class ConfigError(Exception):
    """Exit status 2: the message names file, key and value."""


@dataclass(frozen=True, slots=True)
class Replay:
    # Wait this long after the last loss before replaying, so that one burst of deletions
    # costs one batch. 0 replays on the very event that completes the loss.
    quiet_ms: int = 0
    # networkd gone from the bus (stopped, or the bus itself is down) this long: replay anyway,
    # guarded by netlink alone.
    absent_grace_ms: int = 5000
    # A managed link busy (pending, initialized, configuring) this long, e.g. no carrier or a
    # DHCP server that never answers, no longer delays repairs; when it settles at last the
    # kernel is checked again.
    stuck_ms: int = 5000
    ack_timeout_ms: int = 2000
    max_attempts: int = 5
    # Put back what networkd deletes while it is still configuring (rules: its pass is over
    # for each one it deleted; routes wait for the re-read once it settles); one entry at most
    # chase_max times per busy spell (a pass that keeps deleting it: then it waits for settled).
    # false: wait until every managed link has settled, then repair.
    chase: bool = True
    chase_max: int = 8


@dataclass(frozen=True, slots=True)
class Config:
    scope: Scope = field(default_factory=Scope)
    replay: Replay = field(default_factory=Replay)
    log_level: str = "info"
    state_dir: Path = DEFAULT_STATE_DIR
    # Prometheus text file (node_exporter's textfile collector); None: <runtime-dir>/metrics.prom
    metrics_textfile: Path | None = None
    source: str = "<defaults>"


def _key(key: str) -> str:
    """A key as TOML lets it be spelled (quoted, with newlines), shown on one line."""
    return key if key.isprintable() and len(key) <= 60 else show(key)


def _err(path: str, key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {show(value)} {why}")


def _int(path: str, key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _err(path, key, value, f"is not an integer in {lo}..{hi}")
    return value


def _ranges(path: str, key: str, value: Any) -> tuple[Range, ...]:
    if not isinstance(value, list):
        raise _err(path, key, value, 'is not a list of priorities or "lo-hi" ranges')
    out = []
    for item in value:
        if isinstance(item, str) and "-" in item:
            lo_s, _, hi_s = item.partition("-")
            try:
                lo, hi = int(lo_s), int(hi_s)
            except ValueError:
                raise _err(path, key, item, 'is not a "lo-hi" range of integers') from None
        elif isinstance(item, int) and not isinstance(item, bool):
            lo = hi = item
        else:
            raise _err(path, key, item, 'is not a priority or a "lo-hi" range')
        if not 0 <= lo <= hi <= PRIORITY_MAX:
            raise _err(path, key, item, f"is not a range within 0..{PRIORITY_MAX}")
        out.append((lo, hi))
    return tuple(out)


def _tables(path: str, key: str, value: Any) -> frozenset[int]:
    if not isinstance(value, list):
        raise _err(path, key, value, "is not a list of table numbers or names")
    out = set()
    for item in value:
        if isinstance(item, str) and item in TABLE_NAMES:
            out.add(TABLE_NAMES[item])
        else:
            out.add(_int(path, key, item, 1, 0xFFFFFFFF))
    return frozenset(out)


def _protocols(path: str, key: str, value: Any) -> frozenset[int]:
    if not isinstance(value, list):
        raise _err(path, key, value, "is not a list of protocol names or numbers")
    out = set()
    for item in value:
        if isinstance(item, str):
            if item not in PROTOCOLS:
                raise _err(path, key, item, f"is not one of {sorted(PROTOCOLS)} or 0..255")
            out.add(PROTOCOLS[item])
        else:
            out.add(_int(path, key, item, 0, 255))
    return frozenset(out)


def _bool(path: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _err(path, key, value, "is not true or false")
    return value


def _section(path: str, doc: dict[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
    sec = doc.get(name, {})
    if not isinstance(sec, dict):
        raise _err(path, name, sec, "is not a table")
    for key in sec:
        if key not in allowed:
            raise _err(path, f"[{name}] {_key(key)}", sec[key], f"is not a known key (known: {sorted(allowed)})")
    return sec


def parse(doc: dict[str, Any], path: str) -> Config:
    top = {"log_level", "state_dir", "scope", "replay", "metrics"}
    for key in doc:
        if key not in top:
            raise _err(path, _key(key), doc[key], f"is not a known key (known: {sorted(top)})")
    scope_keys = {"include_priorities", "exclude_priorities", "include_tables", "exclude_tables", "exclude_protocols"}
    sec = _section(path, doc, "scope", scope_keys)
    scope = Scope()
    kw: dict[str, Any] = {}
    if "include_priorities" in sec:
        kw["include_priorities"] = _ranges(path, "[scope] include_priorities", sec["include_priorities"])
    if "exclude_priorities" in sec:
        kw["exclude_priorities"] = _ranges(path, "[scope] exclude_priorities", sec["exclude_priorities"])
    if "include_tables" in sec:
        # [] reads as "no restriction" (as documented), not "no table at all"
        kw["include_tables"] = _tables(path, "[scope] include_tables", sec["include_tables"]) or None
    if "exclude_tables" in sec:
        kw["exclude_tables"] = _tables(path, "[scope] exclude_tables", sec["exclude_tables"])
    if "exclude_protocols" in sec:
        kw["exclude_protocols"] = _protocols(path, "[scope] exclude_protocols", sec["exclude_protocols"])
    scope = dataclasses.replace(scope, **kw)

    rsec = _section(path, doc, "replay", {"quiet_ms", "absent_grace_ms", "stuck_ms", "ack_timeout_ms",
                                          "max_attempts", "chase", "chase_max"})
    limits = {
        "quiet_ms": (0, 60_000),
        "absent_grace_ms": (0, 600_000),
        "stuck_ms": (100, 600_000),
        "ack_timeout_ms": (10, 60_000),
        "max_attempts": (1, 100),
        "chase_max": (1, 1000),
    }
    values: dict[str, Any] = {k: _bool(path, f"[replay] {k}", v) if k == "chase"
                              else _int(path, f"[replay] {k}", v, *limits[k]) for k, v in rsec.items()}
    replay = Replay(**values)

    log_level = doc.get("log_level", "info")
    if log_level not in LOG_LEVELS:
        raise _err(path, "log_level", log_level, f"is not one of {list(LOG_LEVELS)}")
    state_dir = doc.get("state_dir", str(DEFAULT_STATE_DIR))
    if not isinstance(state_dir, str) or not state_dir.startswith("/") or "\0" in state_dir:
        raise _err(path, "state_dir", state_dir, "is not an absolute path")
    msec = _section(path, doc, "metrics", {"textfile"})
    textfile = msec.get("textfile")
    if textfile is not None and (not isinstance(textfile, str) or not textfile.startswith("/")
                                 or not textfile.endswith(".prom") or "\0" in textfile):
        raise _err(path, "[metrics] textfile", textfile, 'is not an absolute path ending in ".prom"')
    return Config(scope=scope, replay=replay, log_level=log_level, state_dir=Path(state_dir),
                  metrics_textfile=Path(textfile) if textfile else None, source=path)


def load(path: Path | None) -> Config:
    """Read `path`; with None, the default file when it exists, else the defaults.

    Every problem is a ConfigError of one line naming the file: unreadable, not a regular file
    (a FIFO is refused, never waited on), larger than CONFIG_MAX_BYTES, not UTF-8, not TOML
    (nested too deeply for the parser included), or a bad key or value."""
    if path is None:
        try:
            DEFAULT_CONFIG.stat()
        except (FileNotFoundError, NotADirectoryError):
            return Config()
        except OSError as exc:
            raise ConfigError(f"{DEFAULT_CONFIG}: cannot read: {exc.strerror}") from exc
        path = DEFAULT_CONFIG
    try:
        raw = read_regular(path, CONFIG_MAX_BYTES)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError, an integer of over 4,300 digits
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
    except MemoryError:
        raise ConfigError(f"{path}: not valid TOML: too large to parse") from None
    return parse(doc, str(path))
