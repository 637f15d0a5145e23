"""Part 2's helpers in the lab, beside the trials themselves (bench.latency): the daemon with a
time on each log line, who holds which netlink port (networkd's deletions and the daemon's
batches are told apart by it), VmRSS, and the reference the targets are ratios of: the time
one ``ip -batch`` takes to re-add the rules networkd deleted, in the same lab."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from bench.common import IP, TrialError, median
from bench.observer import Observer
from bench.outage import batches, spread

REFERENCE_REPEATS = 5


def inner_pid(pid: int) -> int:
    """The process behind a Lab's nsenter wrapper (nsenter execs, or forks one child)."""
    for _ in range(3):
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() != "nsenter":
                return pid
        children = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
        if len(children) != 1:
            raise RuntimeError(f"cannot find the process under pid {pid}: children {children}")
        pid = children[0]
    return pid


def netlink_ports(pid: int) -> set[int]:
    """The rtnetlink ports of the sockets ``pid`` holds: its fds' socket inodes, looked up in its
    network namespace's /proc/net/netlink (columns: sk Eth Pid ... Inode; Eth 0 is NETLINK_ROUTE,
    Pid the port). A process that has gone holds none."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        with open(f"/proc/{pid}/net/netlink") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        return set()
    return {int(r[2]) for r in rows if len(r) >= 10 and r[1] == "0" and r[9] in inodes and r[2] != "0"}


def networkd_ports(lab: Any) -> set[int]:
    """networkd's ports: the socket the lab hands it (socket activation) and whatever it holds."""
    ports = {lab.networkd_socket_port} if lab.networkd_socket_port else set()
    if lab.networkd_pid:
        ports |= netlink_ports(inner_pid(lab.networkd_pid))
    return ports


def rss(pid: int) -> dict[str, float]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = float(value.split()[0])  # kB
    return fields


def idle_memory(daemon: Any, pods: int) -> dict[str, Any]:
    time.sleep(2.0)
    pid = inner_pid(daemon.proc.pid) if daemon.proc else 0
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read().replace(b"\0", b" ").decode().strip()
    return {"pods": pods, "pid": pid, "cmdline": cmdline, **rss(pid)}


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


RULE_KEYS = {"priority", "src", "srclen", "dst", "dstlen", "fwmark", "fwmask", "table", "protocol"}


def rule_line(r: dict[str, Any]) -> str:
    """An ``ip -j rule show`` row as the ``rule add`` line that makes it again. Only what the
    lab's rules use; any other selector is refused rather than silently dropped."""
    extra = set(r) - RULE_KEYS
    if extra:
        raise TrialError(f"cannot re-add {r}: {sorted(extra)}")
    words = ["rule", "add"]
    if r.get("src", "all") != "all":
        words += ["from", r["src"] + (f"/{r['srclen']}" if "srclen" in r else "")]
    if "dst" in r:
        words += ["to", r["dst"] + (f"/{r['dstlen']}" if "dstlen" in r else "")]
    if "fwmark" in r:
        words += ["fwmark", r["fwmark"] + (f"/{r['fwmask']}" if "fwmask" in r else "")]
    return " ".join([*words, "lookup", str(r["table"]), "priority", str(r["priority"])])


def ip_batch(netns: str, lines: list[str]) -> float:
    """One ``ip -n NETNS -batch -`` (as part 1's (b)): the whole process timed, ms."""
    data = "".join(ln + "\n" for ln in lines).encode()
    started = time.perf_counter()
    r = subprocess.run([IP, "-n", netns, "-batch", "-"], input=data, capture_output=True)
    ms = (time.perf_counter() - started) * 1000
    if r.returncode != 0:
        raise TrialError(f"ip -batch failed: {r.stderr.decode().strip()[-500:]}")
    return ms


def reference(lab: Any, observer: Observer, expect: int, is_whole: Callable[[], bool],
              repeats: int = REFERENCE_REPEATS) -> dict[str, Any]:
    """With the daemon stopped: the protected rules (every rule but the kernel's and networkd's
    own; as many as the trials saw deleted) deleted with one ``ip -batch``, then re-added with
    one, timed; ``repeats`` times. Also the kernel's part as the observer saw it (first -> last
    addition of that batch)."""
    rows = [r for r in lab.rules(4) if r.get("protocol") not in ("kernel", "static")]
    adds = [rule_line(r) for r in rows]
    if len(adds) != expect:
        raise TrialError(f"{len(adds)} protected rules in the lab, but the trials saw {expect} deleted")
    dels = ["rule del" + ln[len("rule add"):] for ln in adds]
    runs, spans = [], []
    for _ in range(repeats):
        ip_batch(lab.name, dels)
        time.sleep(0.05)
        observer.dump()
        runs.append(ip_batch(lab.name, adds))
        time.sleep(0.05)
        sent = batches(observer.dump()["rules"])
        if sum(b["n"] for b in sent) != len(adds):
            raise TrialError(f"the observer saw {sum(b['n'] for b in sent)} of {len(adds)} rules re-added")
        spans.append((max(b["t1"] for b in sent) - min(b["t0"] for b in sent)) * 1000)
        if not is_whole():
            raise TrialError("the node is not whole after the ip -batch re-add")
    return {"rules": len(adds), "runs_ms": runs, "p50": median(runs), "kernel_span_ms": spread(spans)}
