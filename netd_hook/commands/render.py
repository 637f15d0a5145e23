"""Human output of the CLI (pure: documents in, text out). `--json` prints the documents as they are."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..adapters.status import count, items, number, section, timestamp
from ..core.links import is_managed
from ..core.model import RT_TABLE_MAIN, Route, Rule
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


def _ago(then: Any, now: float) -> str:
    t = timestamp(then)
    return f"{age(now - t)} ago" if t else "never"


def when(t: Any) -> str:
    """A wall-clock time as people read it, in local time: 2026-12-01 09:11:24 UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(timestamp(t) or 0))


# What the daemon holds back after a netlink monitor overrun (status.json `unattributed`), as
# `status` and `diff` say it: why it does not put them back, and the command that does.
OVERRUN_HELD = "held back after a netlink monitor overrun"
OVERRUN_WHY = "who deleted them is unknown"
REPLAY_BY_HAND = "netd-hook replay"


def unattributed_heading(n: int | None = None) -> str:
    """The line above the list of entries held back after a monitor overrun (`n`: how many)."""
    counted = f"{n}; " if n is not None else ""
    return f"{OVERRUN_HELD} ({counted}{OVERRUN_WHY}; `{REPLAY_BY_HAND}` puts them back):"


def status_text(doc: Mapping[str, Any], running: bool, now: float) -> str:
    """The status document as `netd-hook status` shows it. Any document: what has the wrong type
    shows as its default (status.probe has already refused a document that does not check out)."""
    nd = section(doc, "networkd")
    c = section(doc, "counters")
    prot = section(doc, "protected")
    missing = count(doc.get("missing"))
    forgotten = section(doc, "forgotten")
    doubt = forgotten.get("doubt")
    degraded = section(doc, "degraded")
    if not running:
        head = "inactive (not running)"
    elif missing:
        head = f"active, {missing} protected entries MISSING"
    elif doubt:
        head = "active, but NOT VOUCHED WHOLE (entries forgotten in bulk while networkd was busy)"
    else:
        head = "active, protecting"
    if running and degraded:
        head += ", DEGRADED (protecting from memory)"
    lines = [f"netd-hook: {head}"]
    if running:
        lines.append(f"     pid: {doc.get('pid')}, since {when(doc.get('started_at', 0))} "
                     f"({_ago(doc.get('started_at'), now)}); status updated {_ago(doc.get('updated_at'), now)}")
    else:
        lines.append(f"    last: status written {_ago(doc.get('updated_at'), now)} by pid {doc.get('pid')}")
    owner = nd.get("owner")
    nd_state = "settled" if nd.get("settled") else "busy (configuring)"
    if owner is None:
        nd_state = "not on the bus"
    sockets = items(doc.get("networkd_sockets"))
    how = (f"its socket from systemd has port {', '.join(str(p) for p in sockets)}" if sockets
           else "no socket from systemd: recognised by its pid")
    lines.append(f"networkd: {nd_state}; owner {owner or '-'} pid {nd.get('pid') or '-'}, "
                 f"generation {nd.get('generation', 0)}; {how}")
    links = section(nd, "links")
    if links:
        managed = [f"{name} {state}" for name, state in links.items() if is_managed(state)]
        unmanaged = len(links) - len(managed)
        lines.append("   links: " + ", ".join(managed or ["none managed"])
                     + (f"; {unmanaged} unmanaged (pod veths, lo)" if unmanaged else ""))
    stuck = section(nd, "stuck")
    if stuck:
        lines.append("   stuck: " + ", ".join(f"{name} busy for {age(number(secs))}" for name, secs in stuck.items())
                     + " (holding back no repair; checked again when it settles)")
    lines.append(f"protects: {prot.get('rules', 0)} rules, {prot.get('routes', 0)} routes; missing now: {missing}"
                 + (f" (+{doc.get('held_back')} held back by the liveness gate)" if doc.get("held_back") else ""))
    last = section(doc, "last_repair")
    if last:
        lines.append(f"  repair: {_ago(last.get('at'), now)} ({when(last.get('at', 0))}), "
                     f"trigger {last.get('trigger')}: "
                     f"+{last.get('rules_restored')} rules, +{last.get('routes_restored')} routes, "
                     f"{last.get('skipped_dead')} skipped (dead), {number(last.get('duration_ms')):.1f} ms")
    else:
        lines.append("  repair: none yet")
    lines.append(f"  totals: {c.get('repairs', 0)} repairs, {c.get('rules_restored', 0)} rules and "
                 f"{c.get('routes_restored', 0)} routes restored, {c.get('skipped_dead', 0)} skipped by the gate, "
                 f"{c.get('rollbacks', 0)} rollbacks, {c.get('rejected_signals', 0)} rejected bus signals; "
                 f"outage {number(doc.get('outage_seconds')):.3f}s")
    if forgotten.get("total"):
        by = ", ".join(f"port {p.get('port')} ({p.get('process') or '?'}): {p.get('count')}"
                       for p in items(forgotten.get("by_port"))[:4] if isinstance(p, Mapping))
        lines.append(f"  forgot: {forgotten.get('total')} entries deleted by others, never replayed "
                     f"({forgotten.get('generation', 0)} in this networkd generation, "
                     f"{forgotten.get('while_busy', 0)} while networkd was busy); by {by}")
    if doubt:
        lines.append(f"   DOUBT: {doubt}")
    if degraded:
        lines.append(f"DEGRADED since {when(number(degraded.get('since')))}: {degraded.get('reason')}")
    if items(doc.get("unattributed")):
        lines.append(unattributed_heading())
        lines += [f"    {e}" for e in items(doc.get("unattributed"))]
    if items(doc.get("set_aside")):
        lines.append("set aside (the kernel refused them; retried after networkd's next restart or reconfigure):")
        lines += [f"    {e}" for e in items(doc.get("set_aside"))]
    if not running:
        lines.append("hint: systemctl status netd-hook; journalctl -u netd-hook -n 50")
    elif missing:
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
    """The plan's entries: (what the daemon would restore, what it holds back after a monitor
    overrun). What the daemon lists but the kernel has again, or the gate holds back, is neither."""
    restore: list[Rule | Route] = []
    held: list[Rule | Route] = []
    for e in chk.plan.entries():
        (held if e.describe() in chk.unattributed else restore).append(e)
    return restore, held


def diff_json(chk: Check) -> dict[str, Any]:
    p = chk.plan
    restore, held = _split(chk)
    return {
        "protected": {"rules": chk.protected_rules, "routes": chk.protected_routes},
        "missing": [{"kind": _kind(e), "entry": e.describe()} for e in restore],
        "unattributed": [{"kind": _kind(e), "entry": e.describe(), "reason": f"{OVERRUN_HELD}: {OVERRUN_WHY}"}
                         for e in held],
        "held_back": [{"kind": _kind(s.entry), "entry": s.entry.describe(), "reason": s.reason, "dead": s.dead}
                      for s in p.skipped],
        "managed_links": sorted(chk.managed),
    }


def diff_text(chk: Check) -> str:
    p = chk.plan
    lines = [f"protected: {chk.protected_rules} rules, {chk.protected_routes} routes"]
    if not len(p) and not p.skipped:
        lines.append("nothing missing: the kernel has every protected entry")
        return "\n".join(lines)
    restore, held = _split(chk)
    if restore:
        lines.append(f"missing, would be restored ({len(restore)}):")
        lines += [f"  + {_kind(e):<5} {e.describe()}" for e in restore]
    if held:
        lines.append("missing, " + unattributed_heading(len(held)))
        lines += [f"  ? {_kind(e):<5} {e.describe()}" for e in held]
    if p.skipped:
        lines.append(f"missing, held back by the liveness gate ({len(p.skipped)}):")
        lines += [f"  - {_kind(s.entry):<5} {s.entry.describe()}: {s.reason}" for s in p.skipped]
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
    for s in p.skipped:
        lines.append(f"  - not restoring {s.entry.describe()}: {s.reason}")
    return "\n".join(lines)
