"""Part 2, the workload: the real daemon in the lab (real networkd, private D-Bus), N pods over
eth1/eth2, ``networkctl reconfigure eth1`` repeatedly; each trial read from bench.observer's
events (bench.outage: per rule, node, networkd's pass, batches) and from the daemon's own log
lines. Then, the daemon stopped, the reference: one ``ip -batch`` re-adding what networkd
deleted (bench.labtools). Each mode (today: the daemon waits until every link is configured;
chase: it puts rules back while networkd is still configuring) in a fresh lab per pod count.
Part 3, the daemon's idle VmRSS, is taken at the end of each mode's last pod count."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import labtools
from bench.common import TrialError, log, median
from bench.observer import Observer
from bench.outage import NoOutage, first_vs_later, guess_networkd_ports, spread, trial

# The daemon's [replay] chase (issue 13) picks the mode; chase is its default. "today" is the
# way before the chase: repair once networkd has settled.
CHASE_OFF = "[replay]\nchase = false\n"
MODES: dict[str, str | None] = {"today": CHASE_OFF, "chase": None}  # mode -> the daemon's config


def analyse(events: dict[str, Any], eth1: int, table: int | None, t_cmd: float,
            nd_ports: set[int], daemon_ports: set[int]) -> dict[str, Any]:
    """One reconfigure, from the observer's events: bench.outage's figures of the protected rules,
    and networkd's timing (eth1's AdministrativeState) and the per-ENI table routes."""
    # Two ways to know networkd's port: the sockets it holds, and who deleted the most. They
    # must agree; a disagreement would make every figure below about someone else's deletions.
    guess = guess_networkd_ports(events["rules"])
    if not guess <= nd_ports:
        raise TrialError(f"the port that deleted the most rules, {guess}, is not networkd's {nd_ports}")
    try:
        s = trial(events["rules"], nd_ports, daemon_ports)
    except NoOutage as e:
        raise TrialError(f"reconfigure eth1: {e}") from None
    t_loss, t_back = s["t_loss"], s["t_back"]
    eth1_states = [(t, st) for t, i, st in events["states"] if i == eth1 and t >= t_cmd]
    t_configuring = next((t for t, st in eth1_states if st == "configuring"), None)
    t_configured = next((t for t, st in eth1_states if st == "configured" and t_configuring and t > t_configuring),
                        None)
    # eth1's table routes go with its address, mostly without a notification: all we can see is
    # when they are added back (the daemon restores them after its post-settle re-read).
    route_adds = [t for t, kind, tbl in events["routes"] if kind == "N" and tbl == table and t >= t_loss]
    s["timeline"]["configuring_ms"] = round((t_configuring - t_loss) * 1000, 3) if t_configuring else None
    s["timeline"]["configured_ms"] = round((t_configured - t_loss) * 1000, 3) if t_configured else None
    s.update({
        "routes_back_ms": (max(route_adds) - t_loss) * 1000 if route_adds else None,
        "route_dels_seen": sum(1 for _t, kind, tbl in events["routes"] if kind == "D" and tbl == table),
        "cmd_to_loss_ms": (t_loss - t_cmd) * 1000,
        "configuring_to_configured_ms": (t_configured - t_configuring) * 1000 if t_configured and t_configuring
        else None,
        "loss_to_configured_ms": (t_configured - t_loss) * 1000 if t_configured else None,
        "configured_to_back_ms": (t_back - t_configured) * 1000 if t_configured else None,
        "overruns": events["overruns"],
        "t_configured": t_configured,
    })
    return s


def reconfigure_once(lab: Any, daemon: Any, observer: Observer, eth1: Any, is_whole: Callable[[], bool],
                     nd_ports: set[int], daemon_ports: set[int], links: Sequence[str] = ("eth1",)) -> dict[str, Any]:
    """One ``networkctl reconfigure eth1`` (or of ``links``), until the node is whole and settled again: the
    observer's figures (``analyse``) and the daemon's, from its log. ``daemon_ports`` gains the
    sockets the daemon holds once the trial is over (one it opened for this repair, too)."""
    from tests.daemon import wait_until

    observer.dump()  # discard anything before this iteration
    mark = daemon.mark()
    t_cmd = time.monotonic()
    lab.reconfigure(*links)
    # Block on the daemon's log (no polling subprocesses while the outage runs).
    daemon.wait_log(r" repair trigger=", 15, start=mark)
    wait_until(is_whole, 15, "the node to be whole again", interval=0.05)
    lab.wait_settled()
    time.sleep(1.2)  # a second repair (routes) and the delayed snapshot save land here
    # Its sockets but networkd's: a socket-activated daemon holds networkd's socket too.
    daemon_ports |= labtools.netlink_ports(labtools.inner_pid(daemon.proc.pid)) - nd_ports
    s = analyse(observer.dump(), eth1.ifindex, eth1.table, t_cmd, nd_ports, daemon_ports)
    stamped = daemon.repair_stamps(mark)
    repairs = [r for _t, r in stamped]
    rule_repairs = [(t, r) for t, r in stamped if int(r["rules_restored"]) > 0]
    s["repairs"] = repairs
    s["rule_repairs"] = len(rule_repairs)
    # What the daemon says it sent for the rules (a record without the field counts as one batch).
    s["logged_batches"] = sum(int(r.get("batches", 1)) for _t, r in rule_repairs)
    s["duration_ms"] = float(rule_repairs[0][1]["duration_ms"]) if rule_repairs else None
    # The repair line is logged when the batch is done: its arrival minus duration_ms
    # is (about) when the replay started.
    s["configured_to_replay_ms"] = None
    if rule_repairs and s["t_configured"] is not None:
        t_line, r = rule_repairs[0]
        s["configured_to_replay_ms"] = (t_line - float(r["duration_ms"]) / 1000 - s["t_configured"]) * 1000
    # How far behind the kernel the daemon's monitor was: its last "lost N protected
    # entries" line before the replay vs the last deletion the observer saw.
    lost_lines = daemon.stamps_of(" lost ", mark, rule_repairs[0][0] if rule_repairs else None)
    s["monitor_lag_ms"] = (lost_lines[-1] - s["t_last_del"]) * 1000 if lost_lines else None
    s["rules_restored"] = sum(int(r["rules_restored"]) for r in repairs)
    s["routes_restored"] = sum(int(r["routes_restored"]) for r in repairs)
    return s


def part2(pod_counts: Sequence[int], iterations: dict[int, int], lab_kwargs: dict[str, Any] | None = None,
          modes: Sequence[str] = ("today",), links: Sequence[str] = ("eth1",)) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per mode, every pod count in its own lab (the modes alternate per pod count, so that the
    machine's noise hits both alike); per mode, the memory of the daemon of the last pod count."""
    out: dict[str, Any] = {m: {} for m in modes}
    memory: dict[str, Any] = {}
    for pods in pod_counts:
        for mode in modes:
            samples, ref, mem = pod_count(pods, iterations[pods], lab_kwargs or {}, mode,
                                          measure_memory=pods == pod_counts[-1], links=links)
            if mem:
                memory[mode] = mem
            out[mode][str(pods)] = summarize(pods, samples, ref)
    return out, memory


def pod_count(pods: int, iterations: int, lab_kwargs: dict[str, Any], mode: str,
              measure_memory: bool, links: Sequence[str] = ("eth1",),
              ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """A fresh lab with ``pods`` pods, the daemon in ``mode`` and the observer; ``iterations``
    reconfigures, then the daemon's memory and the ip -batch reference."""
    from tests.daemon import route_set, rule_set
    from tests.lab import Lab, pod_ips

    log(f"lab: {pods} pods, mode {mode}")
    memory: dict[str, Any] = {}
    with Lab(**lab_kwargs) as lab, tempfile.TemporaryDirectory(prefix="ndhb-state-") as tmp:
        enis = [lab.add_eni(1), lab.add_eni(2)]
        # eth2 appearing wiped eth1's 32765 rule (networkd); put both back like ipamd does
        lab.ip_batch([f"rule add from {e.ip} lookup {e.table} priority 32765" for e in enis], force=True)
        lab.node_rules()
        lab.add_pods_bulk(pod_ips(1, pods // 2), 1)
        lab.add_pods_bulk(pod_ips(2, pods - pods // 2), 2)
        lab.wait_settled()

        def whole() -> tuple[frozenset[Any], frozenset[Any]]:
            return rule_set(lab, (4,)), route_set(lab, (2, 3))

        want = whole()
        nd_ports = labtools.networkd_ports(lab)
        daemon = labtools.timed_daemon_class()(lab, Path(tmp) / "state", log_level="info",
                                               config=MODES[mode]).start()
        observer = Observer(lab)
        samples: list[dict[str, Any]] = []
        try:
            daemon_ports: set[int] = set()
            time.sleep(1.5)  # the daemon's first snapshot save (SAVE_DELAY) is behind us
            for it in range(iterations):
                s = reconfigure_once(lab, daemon, observer, enis[0], lambda: whole() == want, nd_ports,
                                     daemon_ports, links)
                s["nd_ports"], s["daemon_ports"] = sorted(nd_ports), sorted(daemon_ports)
                samples.append(s)
                pr = s["per_rule"]
                log(f"  {pods} pods {mode} #{it + 1}: per rule p50 {pr['p50']:.1f} max {pr['max']:.1f} ms, "
                    f"node {s['outage_ms']:.1f} ms, networkd's pass {s['nd_span_ms'] or 0:.1f} ms, "
                    f"batches {s['batches']}, deleted {s['deleted']}, re-wiped {s['rewiped']}")
            if measure_memory:
                memory = labtools.idle_memory(daemon, pods)
            daemon.close()
            ref = labtools.reference(lab, observer, max(s["deleted"] for s in samples), lambda: whole() == want)
            log(f"  {pods} pods: one ip -batch re-adding {ref['rules']} rules: p50 {ref['p50']:.1f} ms "
                f"(runs {', '.join(f'{x:.1f}' for x in ref['runs_ms'])})")
        finally:
            observer.close()
            daemon.close()
    return samples, ref, memory


def _stat(xs: list[float | None]) -> dict[str, float | None]:
    vals = [x for x in xs if x is not None]
    if not vals:
        return {"p50": None, "max": None, "min": None, "n": 0}
    return {"p50": median(vals), "max": max(vals), "min": min(vals), "n": len(vals)}


def summarize(pods: int, samples: list[dict[str, Any]], ref: dict[str, Any]) -> dict[str, Any]:
    keys = ("outage_ms", "nd_span_ms", "duration_ms", "configured_to_back_ms", "configuring_to_configured_ms",
            "loss_to_configured_ms", "cmd_to_loss_ms", "configured_to_replay_ms", "monitor_lag_ms",
            "routes_back_ms", "batches", "logged_batches", "rewiped")
    stats = {k: _stat([s[k] for s in samples]) for k in keys}
    stats["per_rule_p50"] = _stat([s["per_rule"]["p50"] for s in samples])
    first_rule, later_rule = first_vs_later(samples, "per_rule")
    first_node, later_node = first_vs_later(samples, "outage_ms")
    return {
        "pods": pods,
        "iterations": len(samples),
        "rules_deleted": sorted({s["deleted"] for s in samples}),
        # Every rule of every trial: the headline figure.
        "per_rule": spread([x for s in samples for x in s["per_rule_ms"]]),
        "per_trial": [{"per_rule": s["per_rule"], "outage_ms": s["outage_ms"], "nd_span_ms": s["nd_span_ms"],
                       "batches": s["batches"], "rewiped": s["rewiped"]} for s in samples],
        "rewiped": sum(s["rewiped"] for s in samples),  # rules deleted again after coming back
        "rewipes": sum(1 for s in samples if s["whole_again"] > 1),  # trials: node whole, then not
        "other_deletions": sum(s["other_deletions"] for s in samples),
        "routes_restored": sorted({s["routes_restored"] for s in samples}),
        "overruns": sum(s["overruns"] for s in samples),
        "first": {"per_rule_p50": first_rule, "later_per_rule_p50": later_rule,
                  "outage_ms": first_node, "later_outage_ms": later_node},
        "ip_batch": ref,
        "stats": stats,
        "samples": samples,
    }
