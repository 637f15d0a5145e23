"""Human output of the CLI (pure: documents in, text out). `--json` prints the documents as they are."""

from __future__ import annotations

import time
from typing import Any

from ..core.links import managed
from ..core.model import RT_TABLE_MAIN, Route, Rule
from ..core.status_doc import Status
from .ops import Check, Groups, ReplayResult


def age(seconds: float) -> str:
    """A duration as people read it: 42s, 5m 3s, 2h 7m, 3d 4h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _ago(then: float | None, now: float) -> str:
    return f"{age(now - then)} ago" if then else "never"


def when(t: float) -> str:
    """A wall-clock time as people read it, in local time: 2026-12-01 09:11:24 UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


# What the daemon does not replay after a netlink monitor overrun (status.json `unattributed`),
# as `status` and `diff` say it: why it does not put them back, and the command that does.
UNATTRIBUTED_WHAT = "deleted unseen in a netlink monitor overrun while networkd was idle"
UNATTRIBUTED_WHY = "who deleted them is unknown"
REPLAY_BY_HAND = "netd-hook replay"


def unattributed_heading(n: int | None = None) -> str:
    """The line above the list of unattributed entries (`n`: how many)."""
    counted = f"{n}; " if n is not None else ""
    return f"unattributed ({counted}{UNATTRIBUTED_WHAT}; {UNATTRIBUTED_WHY}; `{REPLAY_BY_HAND}` puts them back):"


def status_text(s: Status, running: bool, now: float) -> str:
    """The status document as `netd-hook status` shows it."""
    nd, c, prot, forgotten, degraded = s.networkd, s.counters, s.protected, s.forgotten, s.degraded
    doubt = forgotten.doubt
    if not running:
        head = "inactive (not running)"
    elif s.missing:
        head = f"active, {s.missing} protected entries MISSING"
    elif not s.whole:
        head = "active, but NOT VOUCHED WHOLE (entries forgotten in bulk while networkd was busy)"
    else:
        head = "active, protecting"
    if running and degraded:
        head += ", DEGRADED (protecting from memory)"
    lines = [f"netd-hook: {head}"]
    if running:
        lines.append(f"     pid: {s.pid}, since {when(s.started_at)} "
                     f"({_ago(s.started_at, now)}); status updated {_ago(s.updated_at, now)}")
    else:
        lines.append(f"    last: status written {_ago(s.updated_at, now)} by pid {s.pid}")
    nd_state = "settled" if nd.settled else "busy (configuring)"
    if nd.owner is None:
        nd_state = "not on the bus"
    how = (f"its socket from systemd has port {', '.join(str(p) for p in s.networkd_sockets)}" if s.networkd_sockets
           else "no socket from systemd: recognised by its pid")
    lines.append(f"networkd: {nd_state}; owner {nd.owner or '-'} pid {nd.pid or '-'}, "
                 f"generation {nd.generation}; {how}")
    if nd.links:
        ours = managed(nd.links)
        shown = [f"{name} {state}" for name, state in nd.links.items() if name in ours]
        unmanaged = len(nd.links) - len(ours)
        lines.append("   links: " + ", ".join(shown or ["none managed"])
                     + (f"; {unmanaged} unmanaged (pod veths, lo)" if unmanaged else ""))
    if nd.stuck:
        lines.append("   stuck: " + ", ".join(f"{name} busy for {age(secs)}" for name, secs in nd.stuck.items())
                     + " (delaying no repair; checked again when it settles)")
    lines.append(f"protects: {prot.rules} rules, {prot.routes} routes; missing now: {s.missing}"
                 + (f" (+{s.held_back} held back by the liveness gate)" if s.held_back else ""))
    last = s.last_repair
    if last:
        lines.append(f"  repair: {_ago(last.at, now)} ({when(last.at)}), trigger {last.trigger}: "
                     f"+{last.rules_restored} rules, +{last.routes_restored} routes, "
                     f"{last.skipped_dead} skipped (dead), {last.duration_ms:.1f} ms")
    else:
        lines.append("  repair: none yet")
    lines.append(f"  totals: {c.repairs} repairs, {c.rules_restored} rules and "
                 f"{c.routes_restored} routes restored, {c.skipped_dead} skipped by the gate, "
                 f"{c.rollbacks} rollbacks, {c.rejected_signals} rejected bus signals; "
                 f"outage {s.outage_seconds:.3f}s")
    if forgotten.total:
        by = ", ".join(f"port {p.port} ({p.process or '?'}): {p.count}" for p in forgotten.by_port[:4])
        lines.append(f"  forgot: {forgotten.total} entries deleted by others, never replayed "
                     f"({forgotten.generation} in this networkd generation, "
                     f"{forgotten.while_busy} while networkd was busy); by {by}")
    if doubt:
        lines.append(f"   DOUBT: {doubt}")
    if degraded:
        lines.append(f"DEGRADED since {when(degraded.since)}: {degraded.reason}")
    if s.unattributed:
        lines.append(unattributed_heading())
        lines += [f"    {e}" for e in s.unattributed]
    if s.set_aside:
        lines.append("set aside (the kernel refused them; retried after networkd's next restart or reconfigure):")
        lines += [f"    {e}" for e in s.set_aside]
    if not running:
        lines.append("hint: systemctl status netd-hook; journalctl -u netd-hook -n 50")
    elif s.missing:
        lines.append("hint: netd-hook diff (what and why); journalctl -u netd-hook -n 50")
    elif doubt:
        lines.append("hint: journalctl -u netd-hook -g forgot; compare with the CNI's pod deletions")
    return "\n".join(lines)


def snapshot_text(g: Groups) -> str:
    npods = sum(len(p) for p in g.pods.values())
    lines = [f"pod rules: {npods} pods"]
    for table, pods in g.pods.items():
        where = "main (primary ENI)" if table == RT_TABLE_MAIN else f"table {table}" + (
            f" ({g.devices[table]})" if table in g.devices else "")
        lines.append(f"  {where}: {len(pods)} pods")
        for pod in pods:
            lines.append(f"    {pod.address:<15} " + "; ".join(r.describe() for r in pod.rules))
    lines.append(f"node-wide rules: {len(g.node_rules)}")
    lines += [f"  {r.describe()}" for r in g.node_rules]
    lines.append(f"routes: {sum(len(r) for r in g.routes.values())} in {len(g.routes)} tables")
    for table, routes in g.routes.items():
        lines.append(f"  table {table}:")
        lines += [f"    {r.describe()}" for r in routes]
    return "\n".join(lines)


def snapshot_json(g: Groups) -> dict[str, Any]:
    return {
        "pods": {str(t): [{"address": p.address, "rules": [r.describe() for r in p.rules]} for p in pods]
                 for t, pods in g.pods.items()},
        "node_rules": [r.describe() for r in g.node_rules],
        "routes": {str(t): [r.describe() for r in routes] for t, routes in g.routes.items()},
        "devices": {str(t): d for t, d in g.devices.items()},
    }



def _kind(e: Rule | Route) -> str:
    return "rule" if isinstance(e, Rule) else "route"


def _split(chk: Check) -> tuple[list[Rule | Route], list[Rule | Route]]:
    """The plan's entries: (what the daemon would restore, what it calls unattributed). What the
    daemon lists but the kernel has again, or the gate holds back, is neither."""
    restore: list[Rule | Route] = []
    unattributed: list[Rule | Route] = []
    for e in chk.plan.entries():
        (unattributed if e.describe() in chk.unattributed else restore).append(e)
    return restore, unattributed


def diff_json(chk: Check) -> dict[str, Any]:
    p = chk.plan
    restore, unattributed = _split(chk)
    return {
        "protected": {"rules": chk.protected_rules, "routes": chk.protected_routes},
        "missing": [{"kind": _kind(e), "entry": e.describe()} for e in restore],
        "unattributed": [{"kind": _kind(e), "entry": e.describe(), "reason": f"{UNATTRIBUTED_WHAT}: {UNATTRIBUTED_WHY}"}
                         for e in unattributed],
        "held_back": [{"kind": _kind(s.entry), "entry": s.entry.describe(), "reason": s.reason, "dead": s.dead}
                      for s in p.held_back],
        "managed_links": sorted(chk.managed),
    }


def diff_text(chk: Check) -> str:
    p = chk.plan
    lines = [f"protected: {chk.protected_rules} rules, {chk.protected_routes} routes"]
    if not len(p) and not p.held_back:
        lines.append("nothing missing: the kernel has every protected entry")
        return "\n".join(lines)
    restore, unattributed = _split(chk)
    if restore:
        lines.append(f"missing, would be restored ({len(restore)}):")
        lines += [f"  + {_kind(e):<5} {e.describe()}" for e in restore]
    if unattributed:
        lines.append("missing, " + unattributed_heading(len(unattributed)))
        lines += [f"  ? {_kind(e):<5} {e.describe()}" for e in unattributed]
    if p.held_back:
        lines.append(f"missing, held back by the liveness gate ({len(p.held_back)}):")
        lines += [f"  - {_kind(s.entry):<5} {s.entry.describe()}: {s.reason}" for s in p.held_back]
    return "\n".join(lines)


def replay_text(res: ReplayResult, dry_run: bool) -> str:
    p = res.check.plan
    lines: list[str] = []
    if dry_run:
        if not len(p):
            lines.append("dry run: nothing to restore")
        else:
            lines.append(f"dry run: would restore {len(p.rules)} rules and {len(p.routes)} routes:")
            lines += [f"  + {e.describe()}" for e in p.entries()]
    elif res.outcome is None:
        lines.append("nothing to restore: the kernel has every protected entry")
    else:
        o = res.outcome
        lines.append(f"restored {o.rules_restored} rules and {o.routes_restored} routes in {o.batches} batch(es), "
                     f"{res.duration_ms:.1f} ms ({o.already_present} were already back)")
        for entry, err in o.set_aside:
            lines.append(f"  ! could not restore {entry.describe()}: errno {err}")
        if o.rollbacks:
            lines.append(f"  {o.rollbacks} batch(es) rolled back and retried without the failing entries")
        if o.unknown or o.gave_up:
            lines.append("  the outcome of some entries is unknown: run `netd-hook diff` to see what is missing")
    for s in p.held_back:
        lines.append(f"  - not restoring {s.entry.describe()}: {s.reason}")
    return "\n".join(lines)
