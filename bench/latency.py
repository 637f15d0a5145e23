"""Part 2, the workload: the real daemon in the lab (real networkd, private D-Bus), N pods over
eth1/eth2, ``networkctl reconfigure eth1`` repeatedly; each outage read from bench.observer's
events (``analyse``) and from the daemon's own log lines. Part 3, the daemon's idle VmRSS, is
taken at the end of the last pod count."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import LATENCY_TARGET_MS, TrialError, log, median
from bench.observer import Observer
from bench.rtnl import RTPROT_KERNEL, RTPROT_STATIC


def analyse(events: dict[str, Any], eth1: int, table: int | None, t_cmd: float) -> dict[str, Any]:
    """One reconfigure, from the observer's events: outage of protected rules and networkd's timing."""
    missing: set[int] = set()
    deleted: set[int] = set()
    t_loss = t_back = t_last_del = None
    whole_again = 0
    for t, kind, key, _prio, proto, _port in events["rules"]:
        if proto in (RTPROT_KERNEL, RTPROT_STATIC):  # outside the daemon's scope: not protected
            continue
        if kind == "D":
            if t_loss is None:
                t_loss = t
            t_last_del = t
            missing.add(key)
            deleted.add(key)
        elif key in missing:
            missing.discard(key)
            if not missing:
                t_back = t
                whole_again += 1
    if t_loss is None:
        raise TrialError("reconfigure eth1 deleted no protected rule")
    if missing or t_back is None:
        raise TrialError(f"{len(missing)} deleted rules never came back")
    eth1_states = [(t, s) for t, i, s in events["states"] if i == eth1 and t >= t_cmd]
    t_configuring = next((t for t, s in eth1_states if s == "configuring"), None)
    t_configured = next((t for t, s in eth1_states if s == "configured" and t_configuring and t > t_configuring),
                        None)
    # eth1's table routes go with its address, mostly without a notification: all we can see is
    # when they are added back (the daemon restores them after its post-settle re-read).
    route_adds = [t for t, kind, tbl in events["routes"] if kind == "N" and tbl == table and t >= t_loss]
    return {
        "deleted": len(deleted),
        "t_last_del": t_last_del,
        "routes_back_ms": (max(route_adds) - t_loss) * 1000 if route_adds else None,
        "route_dels_seen": sum(1 for _t, kind, tbl in events["routes"] if kind == "D" and tbl == table),
        "outage_ms": (t_back - t_loss) * 1000,
        "cmd_to_loss_ms": (t_loss - t_cmd) * 1000,
        "whole_again": whole_again,  # >1: the node was whole, then lost rules again (re-wipe)
        "configuring_to_configured_ms": (t_configured - t_configuring) * 1000 if t_configured and t_configuring
        else None,
        "loss_to_configured_ms": (t_configured - t_loss) * 1000 if t_configured else None,
        "configured_to_back_ms": (t_back - t_configured) * 1000 if t_configured else None,
        "overruns": events["overruns"],
        "t_configured": t_configured,
    }


def daemon_pid(proc: subprocess.Popen[str]) -> int:
    """The python process behind the Daemon's nsenter wrapper (nsenter execs, or forks one child)."""
    pid = proc.pid
    for _ in range(3):
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() != "nsenter":
                return pid
        children = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
        if len(children) != 1:
            raise RuntimeError(f"cannot find the daemon under pid {pid}: children {children}")
        pid = children[0]
    return pid


def rss(pid: int) -> dict[str, float]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = float(value.split()[0])  # kB
    return fields


def timed_daemon_class() -> Any:
    from tests.daemon import Daemon

    class TimedDaemon(Daemon):
        """tests.daemon.Daemon that also notes when each log line arrived (time.monotonic)."""

        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.stamps: list[float] = []

        def _read_log(self, proc: subprocess.Popen[str]) -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                t = time.monotonic()
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self.stamps.append(t)
                    self._cond.notify_all()

        def stamps_of(self, needle: str, start: int, until: float | None) -> list[float]:
            with self._cond:
                pairs = list(zip(self.stamps[start:], self.lines[start:], strict=True))
            return [t for t, line in pairs if needle in line and (until is None or t <= until)]

        def repair_stamps(self, start: int) -> list[tuple[float, dict[str, str]]]:
            """Daemon.repairs(start), each with its line's arrival. The condition's lock is
            re-entrant: no line arrives between the two reads; strict zip: a Daemon.repairs()
            that picked other lines than " repair trigger=" would raise, not mismatch."""
            with self._cond:
                pairs = list(zip(self.stamps[start:], self.lines[start:], strict=True))
                times = [t for t, line in pairs if " repair trigger=" in line]
                return list(zip(times, self.repairs(start), strict=True))

    return TimedDaemon


def reconfigure_once(lab: Any, daemon: Any, observer: Observer, eth1: Any,
                     is_whole: Callable[[], bool]) -> dict[str, Any]:
    """One ``networkctl reconfigure eth1``, until the node is whole and settled again: the
    observer's figures (``analyse``) and the daemon's, from its log."""
    from tests.daemon import wait_until

    observer.dump()  # discard anything before this iteration
    mark = daemon.mark()
    t_cmd = time.monotonic()
    lab.reconfigure("eth1")
    # Block on the daemon's log (no polling subprocesses while the outage runs).
    daemon.wait_log(r" repair trigger=", 15, start=mark)
    wait_until(is_whole, 15, "the node to be whole again", interval=0.05)
    lab.wait_settled()
    time.sleep(1.2)  # a second repair (routes) and the delayed snapshot save land here
    s = analyse(observer.dump(), eth1.ifindex, eth1.table, t_cmd)
    stamped = daemon.repair_stamps(mark)
    repairs = [r for _t, r in stamped]
    rule_repairs = [(t, r) for t, r in stamped if int(r["rules_restored"]) > 0]
    s["repairs"] = repairs
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


def idle_memory(daemon: Any, pods: int) -> dict[str, Any]:
    time.sleep(2.0)
    pid = daemon_pid(daemon.proc) if daemon.proc else 0
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read().replace(b"\0", b" ").decode().strip()
    return {"pods": pods, "pid": pid, "cmdline": cmdline, **rss(pid)}


def part2(pod_counts: Sequence[int], iterations: dict[int, int],
          lab_kwargs: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every pod count in its own lab; the memory of the daemon of the last one."""
    out: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    for pods in pod_counts:
        samples, mem = pod_count(pods, iterations[pods], lab_kwargs or {}, measure_memory=pods == pod_counts[-1])
        memory = mem or memory
        out[str(pods)] = summarize(pods, samples)
    return out, memory


def pod_count(pods: int, iterations: int, lab_kwargs: dict[str, Any],
              measure_memory: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A fresh lab with ``pods`` pods, the daemon and the observer; ``iterations`` reconfigures."""
    from tests.daemon import route_set, rule_set
    from tests.lab import Lab, pod_ips

    log(f"lab: {pods} pods")
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
        daemon = timed_daemon_class()(lab, Path(tmp) / "state", log_level="info").start()
        observer = Observer(lab)
        samples: list[dict[str, Any]] = []
        try:
            time.sleep(1.5)  # the daemon's first snapshot save (SAVE_DELAY) is behind us
            for it in range(iterations):
                s = reconfigure_once(lab, daemon, observer, enis[0], lambda: whole() == want)
                samples.append(s)
                log(f"  {pods} pods #{it + 1}: outage {s['outage_ms']:.1f} ms, daemon {s['duration_ms']} ms, "
                    f"deleted {s['deleted']}, configured->back {s['configured_to_back_ms']}")
            if measure_memory:
                memory = idle_memory(daemon, pods)
        finally:
            observer.close()
            daemon.close()
    return samples, memory


def _stat(xs: list[float | None]) -> dict[str, float | None]:
    vals = [x for x in xs if x is not None]
    if not vals:
        return {"p50": None, "max": None, "min": None, "n": 0}
    return {"p50": median(vals), "max": max(vals), "min": min(vals), "n": len(vals)}


def summarize(pods: int, samples: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("outage_ms", "duration_ms", "configured_to_back_ms", "configuring_to_configured_ms",
            "loss_to_configured_ms", "cmd_to_loss_ms", "configured_to_replay_ms", "monitor_lag_ms",
            "routes_back_ms")
    stats = {k: _stat([s[k] for s in samples]) for k in keys}
    target = LATENCY_TARGET_MS.get(pods)
    p50 = stats["outage_ms"]["p50"]
    return {
        "pods": pods,
        "iterations": len(samples),
        "rules_deleted": sorted({s["deleted"] for s in samples}),
        "rewipes": sum(1 for s in samples if s["whole_again"] > 1),
        "routes_restored": sorted({s["routes_restored"] for s in samples}),
        "overruns": sum(s["overruns"] for s in samples),
        "stats": stats,
        "target_ms": target,
        "target_pass": None if target is None or p50 is None else p50 <= target,
        "samples": samples,
    }
