"""Is netd-hook guarding this node? Findings about its installation and its running daemon (pure).

From the unit files under the tree (`UnitFacts`), the daemon's lock and published status
(`status.Probe`, status.json) and the age of its snapshot. `need` is the severity of a gap: a
warning where networkd's wipe is on, information only on a cured node (`why` says so).
"""

from __future__ import annotations

import os

from ...adapters import status as statusmod
from ...core.status_doc import Degraded, Forgotten, Status
from ..render import age, when
from .facts import ENABLED_LINK, NETWORKD_DROPIN, UNIT_DIRS, Finding, Severity, UnitFacts

DEFAULT_STALE_AFTER = 120.0  # 2 x a 60 s heartbeat; the daemon re-publishes at least every 30 s


def guard_fix(unit: UnitFacts) -> str:
    if unit.unit_file is None:
        return "install netd-hook, then: systemctl enable --now netd-hook"
    if unit.masked:
        return "systemctl unmask netd-hook && systemctl enable --now netd-hook"
    return "systemctl enable --now netd-hook   # if it does not stay up: journalctl -u netd-hook -n 50"


def guard_findings(unit: UnitFacts, probe: statusmod.Probe | None, snapshot_mtime: float | None, now: float,
                   stale_after: float, need: Severity, why: str) -> list[Finding]:
    """netd-hook installed, enabled, its networkd drop-in, then the daemon: in this order."""
    out: list[Finding] = []
    status = probe.status if probe is not None else None
    if unit.unit_file is None:
        out.append(Finding("netd-hook.installed", need, f"netd-hook is not installed{why}",
                           "No netd-hook.service in " + ", ".join(UNIT_DIRS) + ".", guard_fix(unit)))
    elif unit.masked:
        out.append(Finding("netd-hook.installed", need, f"netd-hook.service is masked ({unit.unit_file}){why}",
                           "A masked unit cannot start, at boot or by hand.", guard_fix(unit)))
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


def _daemon_findings(probe: statusmod.Probe | None, status: Status | None, snapshot_mtime: float | None,
                     now: float, stale_after: float, need: Severity, why: str, unit: UnitFacts) -> list[Finding]:
    out: list[Finding] = []
    running = probe is not None and probe.running
    snap = f"netd-hook's snapshot was written {age(now - snapshot_mtime)} ago" if snapshot_mtime is not None else ""
    if not running and unit.unit_file is None:
        return out  # "not installed" says it all
    if not running:
        last = ""
        last_at = status.updated_at if status is not None else 0.0
        if last_at:
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
        started, updated = status.started_at, status.updated_at
        up = f", up {age(now - started)}" if started else ""
        out.append(Finding("netd-hook.running", Severity.OK, f"netd-hook is running (pid {status.pid}{up})"))
        if not updated:
            out.append(Finding("netd-hook.status", Severity.WARNING, "netd-hook's status has no updated_at",
                               "Cannot tell whether the daemon is alive.", "journalctl -u netd-hook -n 50 --no-pager"))
        elif now - updated > stale_after:
            out.append(Finding("netd-hook.status", Severity.WARNING,
                               f"netd-hook's status is stale: last published {age(now - updated)} ago "
                               f"(more than {int(stale_after)}s)",
                               "The daemon holds its lock but has stopped publishing: it may be stuck.",
                               "journalctl -u netd-hook -n 50 --no-pager\nsystemctl restart netd-hook"))
        else:
            prot = status.protected
            out.append(Finding("netd-hook.status", Severity.OK,
                               f"netd-hook's status is fresh (published {age(now - updated)} ago): "
                               f"protecting {prot.rules} rules, {prot.routes} routes"))
            missing = status.missing
            if missing > 0:
                out.append(Finding("netd-hook.missing", Severity.WARNING,
                                   f"{missing} protected entr{'ies are' if missing != 1 else 'y is'} missing from "
                                   f"the kernel right now",
                                   "netd-hook puts them back once networkd has settled; if this persists, the "
                                   "liveness gate holds them back or the kernel rejects them.",
                                   "netd-hook diff\njournalctl -u netd-hook -n 50 --no-pager"))
            out.extend(_forgotten_findings(status.forgotten))
            out.extend(_stuck_findings(status, now))
            out.extend(_degraded_findings(status.degraded, now))
            if unit.networkd_socket_enabled and not status.networkd_sockets:
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


def _forgotten_findings(forgotten: Forgotten) -> list[Finding]:
    """Entries forgotten as deliberate deletions: in bulk while networkd was busy, a red flag."""
    doubt = forgotten.doubt
    if doubt:
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
    total = forgotten.total
    if total > 0:
        return [Finding("netd-hook.forgotten", Severity.OK,
                        f"{total} entries deleted by others (the CNI) were forgotten, none in bulk while "
                        f"networkd was busy")]
    return []


def _stuck_findings(status: Status, now: float) -> list[Finding]:
    """Managed links busy for longer than [replay] stuck_ms (status.json `networkd.stuck`: link
    name -> seconds busy when the status was published), each named with since when."""
    stuck, states = status.networkd.stuck, status.networkd.links
    if not stuck:
        return []
    published = status.updated_at or now
    named = []
    for name, secs in stuck.items():
        since = published - secs
        state = states.get(name)
        named.append(f"{name}{f' ({state})' if state is not None else ''} busy since {when(since)} "
                     f"({age(now - since)})")
    return [Finding("netd-hook.stuck", Severity.WARNING,
                    f"networkd link{'s' if len(stuck) != 1 else ''} stuck: {', '.join(named)}",
                    "Busy for longer than [replay] stuck_ms: no carrier, a DHCP server that never answers, a link "
                    "udev never initialized. netd-hook no longer waits for such a link to repair what networkd's "
                    "other links deleted, and checks the kernel again when it settles.",
                    f"networkctl status {' '.join(stuck)}\njournalctl -u systemd-networkd -n 50 --no-pager")]


def _degraded_findings(degraded: Degraded | None, now: float) -> list[Finding]:
    """status.json `degraded` (since, reason): writes failing, the daemon protecting from memory."""
    if degraded is None:
        return []
    since = degraded.since
    why = degraded.reason or "a state or runtime file cannot be written"
    spell = f" since {when(since)} ({age(now - since)})" if since else ""
    dirs = sorted({os.path.dirname(w.path) for w in degraded.writes if w.path.startswith("/")})
    look = (f"df -h {' '.join(dirs)}   # full?\n" if dirs else "") + "".join(
        f"findmnt -T {d}   # mounted read-only?\n" for d in dirs)
    return [Finding("netd-hook.degraded", Severity.WARNING, f"netd-hook is degraded{spell}: {why}",
                    "A full or read-only directory (state, runtime or metrics). netd-hook keeps protecting from "
                    "memory and retries (backing off from 1 s to 60 s) until the write works again; meanwhile a "
                    "restarted netd-hook starts from an older snapshot, and `status`, `wait` and the metrics may "
                    "read an older status.",
                    look + "journalctl -u netd-hook -g degraded --no-pager")]
