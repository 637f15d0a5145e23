"""Part 1, the workload: replaying N IPv4 rules (N/2 pods) into a fresh namespace four ways,
(a) netd-hook's writer and (d) the kernel floor in bench.worker, (b) `ip -batch -` and (c) one
`ip rule add` per rule from here; every trial checked afterwards with `ip -j rule show`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from bench.common import IP, NS_PREFIX, ROOT, TARGET_RATIO, TrialError, log, median

PRIO_TO, PRIO_FROM = 512, 1536
POD_TABLE = 2


def pod_addresses(n_rules: int) -> list[str]:
    from tests.lab import pod_ips

    return pod_ips(1, n_rules // 2)


def ip_rule_args(n_rules: int) -> list[list[str]]:
    """`ip rule add` arguments, two per pod (the CNI's order: from-rule, then to-rule)."""
    out = []
    for ip in pod_addresses(n_rules):
        out.append(["from", f"{ip}/32", "lookup", str(POD_TABLE), "priority", str(PRIO_FROM)])
        out.append(["to", f"{ip}/32", "lookup", "main", "priority", str(PRIO_TO)])
    return out


def encode_requests(n_rules: int) -> tuple[list[bytes], float]:
    """The same rules as netd-hook's Encoder keeps them; returns (messages, seconds it took)."""
    from netd_hook.adapters.netlink import Encoder
    from netd_hook.core.model import AF_INET, RT_TABLE_MAIN, Rule

    rules = []
    for ip in pod_addresses(n_rules):
        rules.append(Rule(family=AF_INET, priority=PRIO_FROM, table=POD_TABLE, src=f"{ip}/32"))
        rules.append(Rule(family=AF_INET, priority=PRIO_TO, table=RT_TABLE_MAIN, dst=f"{ip}/32"))
    encoder = Encoder()
    started = time.perf_counter()
    messages = [encoder.add_request(r, lambda _name: None) for r in rules]
    elapsed = time.perf_counter() - started
    assert all(m is not None for m in messages)
    return [m for m in messages if m is not None], elapsed


class Netns:
    """A fresh, empty network namespace with lo up; deleted on close (and at exit)."""

    _count = 0
    _live: set[str] = set()

    def __init__(self) -> None:
        Netns._count += 1
        self.name = f"{NS_PREFIX}{Netns._count}"
        subprocess.run([IP, "netns", "add", self.name], check=True, capture_output=True)
        Netns._live.add(self.name)
        subprocess.run([IP, "-n", self.name, "link", "set", "lo", "up"], check=True, capture_output=True)

    def count_rules(self) -> int:
        """Pod rules present (priorities 512/1536), read with `ip -j rule show`."""
        out = subprocess.run([IP, "-n", self.name, "-j", "rule", "show"], check=True, capture_output=True,
                             text=True).stdout
        return sum(1 for r in json.loads(out or "[]") if r.get("priority") in (PRIO_TO, PRIO_FROM))

    def close(self) -> None:
        if self.name in Netns._live:
            Netns._live.discard(self.name)
            subprocess.run([IP, "netns", "del", self.name], capture_output=True)
            # The kernel tears the namespace down in a worker thread; let that finish before
            # the next trial instead of competing with it for the CPU.
            time.sleep(0.2)

    @classmethod
    def close_all(cls) -> None:
        for name in list(cls._live):
            cls._live.discard(name)
            subprocess.run([IP, "netns", "del", name], capture_output=True)


def run_worker(ns: Netns, method: str, msgs_file: str) -> dict[str, Any]:
    r = subprocess.run(
        [IP, "netns", "exec", ns.name, sys.executable, "-m", "bench.worker", method,
         "--netns", ns.name, "--parent-netns", str(os.stat("/proc/self/ns/net").st_ino), "--msgs", msgs_file],
        capture_output=True, text=True, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120,
    )
    if r.returncode != 0:
        raise TrialError(f"worker {method} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def _run_ip(ns: Netns, method: str, rule_args: list[list[str]]) -> float:
    """(b) `ip -batch -`, or (c) one `ip rule add` per rule in a shell loop: whole process timed, ms."""
    if method == "b":
        argv = [IP, "-n", ns.name, "-batch", "-"]
        text = "".join("rule add " + " ".join(a) + "\n" for a in rule_args)
        what = "ip -batch"
    else:
        argv = [IP, "netns", "exec", ns.name, "sh", "-s"]
        text = "set -e\n" + "".join(f"{IP} rule add " + " ".join(a) + "\n" for a in rule_args)
        what = "ip rule add loop"
    data = text.encode()
    started = time.perf_counter()
    r = subprocess.run(argv, input=data, capture_output=True)
    ms = (time.perf_counter() - started) * 1000
    if r.returncode != 0:
        raise TrialError(f"{what} failed: {r.stderr.decode().strip()[-500:]}")
    return ms


def trial(method: str, n: int, msgs_file: str, rule_args: list[list[str]], sample: int | None) -> float:
    """One timed trial in a fresh namespace; returns milliseconds (extrapolated when sampled)."""
    ns = Netns()
    try:
        expect = n
        if method in ("a", "d"):
            res = run_worker(ns, method, msgs_file)
            if res["errors"]:
                raise TrialError(f"({method}) {res['errors']} of {n} requests failed: {res}")
            ms = float(res["ms"])
        elif method == "b":
            ms = _run_ip(ns, method, rule_args)
        else:
            args = rule_args[:sample] if sample else rule_args
            expect = len(args)
            ms = _run_ip(ns, method, args) * n / expect
        got = ns.count_rules()
        if got != expect:
            raise TrialError(f"({method}) N={n}: {got} rules present after the trial, expected {expect}")
        return ms
    finally:
        ns.close()


def part1(sizes: Sequence[int], repeats: dict[int, int], c_sample: dict[int, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tmp = tempfile.mkdtemp(prefix="ndhb-msgs-")
    try:
        for n in sizes:
            messages, enc_s = encode_requests(n)
            msgs_file = os.path.join(tmp, f"rules-{n}.bin")
            with open(msgs_file, "wb") as f:
                f.write(b"".join(messages))
            rule_args = ip_rule_args(n)
            methods = ["a", "b", "c", "d"] if n <= 2000 else ["a", "b", "d"]
            sample = c_sample.get(n)
            times: dict[str, list[float]] = {m: [] for m in methods}
            for rep in range(repeats[n]):
                for m in methods:  # interleaved, so machine noise hits every method alike
                    times[m].append(trial(m, n, msgs_file, rule_args, sample if m == "c" else None))
                log(f"  N={n} repeat {rep + 1}/{repeats[n]}: "
                    + "  ".join(f"({m}) {times[m][-1]:.1f} ms" for m in methods))
            med = {m: median(v) for m, v in times.items()}
            out[str(n)] = {
                "rules": n,
                "encode_ms": enc_s * 1000,
                "encode_ms_per_1000": enc_s * 1000 / n * 1000,
                "runs_ms": times,
                "median_ms": med,
                "c_sampled": sample,
                "ratio_a_d": med["a"] / med["d"],
                "ratio_a_b": med["a"] / med["b"],
                "target_pass": med["a"] <= TARGET_RATIO * med["d"],
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
