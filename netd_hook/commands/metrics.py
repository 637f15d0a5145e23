"""Prometheus text exposition, rendered from the published status document.

Written atomically (temp file + rename in the same directory) so node_exporter's textfile
collector never reads half a file. One source of truth: the numbers are those of status.json.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..adapters.status import count, number, section
from ..adapters.store import atomic_write

DEFAULT_FILE = "metrics.prom"

# name, type, help, key in the status document's "counters"
_COUNTERS = (
    ("rules_restored_total", "rules put back"),
    ("routes_restored_total", "routes put back"),
    ("skipped_dead_total", "entries the liveness gate dropped (their pod or address is gone)"),
    ("rollbacks_total", "batches rolled back after a failed entry"),
    ("set_aside_total", "entries the kernel refused (set aside until networkd's next generation)"),
    ("rejected_signals_total", "D-Bus signals dropped: not from networkd's current owner"),
    ("bad_bus_values_total", "D-Bus messages with unexpected values (logged and ignored)"),
    ("forgotten_deliberate_total", "deletions by others (the CNI): forgotten, never replayed"),
    ("orphans_removed_total", "restored rules removed again because their pod went away"),
    ("monitor_overruns_total", "netlink monitor overruns (followed by a re-read of the kernel)"),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: Any) -> str:
    """A sample's value; what is not a finite number (a document that lies) is exposed as 0."""
    if isinstance(value, float):
        return repr(number(value))
    return str(count(value)) if isinstance(value, int) else "0"


def _family(name: str, kind: str, help_: str, samples: Mapping[str, Any]) -> Iterator[str]:
    yield f"# HELP netd_hook_{name} {help_}"
    yield f"# TYPE netd_hook_{name} {kind}"
    for labels, value in samples.items():
        yield f"netd_hook_{name}{labels} {_fmt(value)}"


def render(doc: Mapping[str, Any]) -> str:
    """The exposition of a status document; any document (a value of the wrong type is 0)."""
    c = section(doc, "counters")
    nd = section(doc, "networkd")
    last = section(doc, "last_repair")
    lines: list[str] = []
    by_trigger = sorted(((str(k), v) for k, v in section(c, "repairs_by_trigger").items()), key=lambda kv: kv[0])
    lines += _family("repairs_total", "counter", "repairs, by what triggered them",
                     {f'{{trigger="{_escape(k)}"}}': v for k, v in by_trigger} or {"": 0})
    for name, help_ in _COUNTERS:
        lines += _family(name, "counter", help_, {"": c.get(name.removesuffix("_total"), 0)})
    protected = section(doc, "protected")
    lines += _family("protected_entries", "gauge", "rules and routes in the snapshot",
                     {'{kind="rule"}': protected.get("rules", 0), '{kind="route"}': protected.get("routes", 0)})
    lines += _family("missing_entries", "gauge", "protected entries missing from the kernel now",
                     {"": doc.get("missing", 0)})
    lines += _family("held_back_entries", "gauge", "missing entries the liveness gate holds back",
                     {"": doc.get("held_back", 0)})
    forgotten = section(doc, "forgotten")
    lines += _family("forgotten_while_networkd_busy_entries", "gauge",
                     "entries forgotten as deliberate while networkd was busy, this networkd generation "
                     "(many: the node may not be whole)", {"": forgotten.get("while_busy", 0)})
    lines += _family("forgotten_doubt", "gauge",
                     "1 when so many entries were forgotten while networkd was busy that netd-hook cannot vouch "
                     "for the node", {"": int(bool(forgotten.get("doubt")))})
    lines += _family("degraded", "gauge", "1 while a state or runtime file cannot be written (protecting from memory)",
                     {"": int(bool(doc.get("degraded")))})
    lines += _family("unattributed_entries", "gauge",
                     "entries missing after a monitor overrun, held back (who deleted them is unknown)",
                     {"": len(doc.get("unattributed") or []) if isinstance(doc.get("unattributed"), list) else 0})
    lines += _family("stuck_links", "gauge", "managed links busy for longer than stuck_ms (holding back no repair)",
                     {"": len(nd.get("stuck") or {}) if isinstance(nd.get("stuck"), dict) else 0})
    lines += _family("outage_seconds_total", "counter",
                     "seconds during which protected entries were missing (the node's actual outage)",
                     {"": number(doc.get("outage_seconds"))})
    lines += _family("last_repair_duration_seconds", "gauge", "duration of the last repair",
                     {"": number(last.get("duration_ms")) / 1000})
    lines += _family("last_repair_timestamp_seconds", "gauge", "when the last repair finished (0: none yet)",
                     {"": number(last.get("at"))})
    lines += _family("networkd_settled", "gauge", "1 when networkd owns its name and every link is settled",
                     {"": int(bool(nd.get("settled")))})
    lines += _family("networkd_generation", "gauge", "networkd bus owners seen (restarts + 1)",
                     {"": nd.get("generation", 0)})
    lines += _family("start_time_seconds", "gauge", "when the daemon started",
                     {"": number(doc.get("started_at"))})
    return "\n".join(lines) + "\n"


def write(path: Path, doc: Mapping[str, Any]) -> None:
    atomic_write(path, render(doc).encode())
