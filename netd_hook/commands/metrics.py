"""Prometheus text exposition, rendered from the published status document.

Written atomically (temp file + rename in the same directory) so node_exporter's textfile
collector never reads half a file. One source of truth: the numbers are those of status.json.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from ..adapters.store import atomic_write
from ..core.status_doc import Status

DEFAULT_FILE = "metrics.prom"

# name, help; the counter is the status document's counters.<name without _total>
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
    ("chases_total", "batches sent while networkd was still busy (the chase)"),
    ("chase_rewiped_total", "entries a chase put back that networkd deleted again in the same busy spell"),
    ("chase_capped_total", "entries chased [replay] chase_max times in a busy spell, left for the re-read"),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(name: str, kind: str, help_: str, samples: Mapping[str, float]) -> Iterator[str]:
    yield f"# HELP netd_hook_{name} {help_}"
    yield f"# TYPE netd_hook_{name} {kind}"
    for labels, value in samples.items():
        yield f"netd_hook_{name}{labels} {value!r}"


def render(s: Status) -> str:
    """The exposition of a status document."""
    c, nd, last, forgotten = s.counters, s.networkd, s.last_repair, s.forgotten
    lines: list[str] = []
    lines += _family("repairs_total", "counter", "repairs, by what triggered them",
                     {f'{{trigger="{_escape(k)}"}}': v for k, v in sorted(c.repairs_by_trigger.items())} or {"": 0})
    for name, help_ in _COUNTERS:
        lines += _family(name, "counter", help_, {"": getattr(c, name.removesuffix("_total"))})
    lines += _family("protected_entries", "gauge", "rules and routes in the snapshot",
                     {'{kind="rule"}': s.protected.rules, '{kind="route"}': s.protected.routes})
    lines += _family("missing_entries", "gauge", "protected entries missing from the kernel now",
                     {"": s.missing})
    lines += _family("held_back_entries", "gauge", "missing entries the liveness gate holds back",
                     {"": s.held_back})
    lines += _family("forgotten_while_networkd_busy_entries", "gauge",
                     "entries forgotten as deliberate while networkd was busy, this networkd generation "
                     "(many: the node may not be whole)", {"": forgotten.while_busy})
    lines += _family("forgotten_doubt", "gauge",
                     "1 when so many entries were forgotten while networkd was busy that netd-hook cannot vouch "
                     "for the node", {"": int(bool(forgotten.doubt))})
    lines += _family("degraded", "gauge", "1 while a state or runtime file cannot be written (protecting from memory)",
                     {"": int(s.degraded is not None)})
    lines += _family("unattributed_entries", "gauge",
                     "entries missing after a monitor overrun while networkd was idle: unattributed, not replayed "
                     "(who deleted them is unknown)", {"": len(s.unattributed)})
    lines += _family("stuck_links", "gauge", "managed links busy for longer than stuck_ms (delaying no repair)",
                     {"": len(nd.stuck)})
    lines += _family("outage_seconds_total", "counter",
                     "seconds during which protected entries were missing (the node's actual outage)",
                     {"": s.outage_seconds})
    lines += _family("last_repair_duration_seconds", "gauge", "duration of the last repair",
                     {"": last.duration_ms / 1000 if last else 0.0})
    lines += _family("last_repair_timestamp_seconds", "gauge", "when the last repair finished (0: none yet)",
                     {"": last.at if last else 0.0})
    lines += _family("networkd_settled", "gauge", "1 when networkd owns its name and every link is settled",
                     {"": int(nd.settled)})
    lines += _family("networkd_generation", "gauge", "networkd bus owners seen (restarts + 1)",
                     {"": nd.generation})
    lines += _family("start_time_seconds", "gauge", "when the daemon started",
                     {"": s.started_at})
    return "\n".join(lines) + "\n"


def write(path: Path, s: Status) -> None:
    atomic_write(path, render(s).encode())
