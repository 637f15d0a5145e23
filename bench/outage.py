"""Part 2's analysis, pure: one reconfigure's observer events in, its figures out. No I/O and
nothing of the lab, so that tests/test_bench_outage.py can check it on hand-made events.

An event of ``bench.observer``'s rule list is ``(t, "N"|"D", key, priority, protocol, port,
seq)``: ``key`` names one rule (its bytes), ``port`` and ``seq`` are the ``nlmsg_pid`` and
``nlmsg_seq`` of the request that caused the notification (the kernel copies both), so the
port tells whose deletion or addition it was and consecutive seqs from one port are one batch.

The figures of one trial (``trial``), times in ms:
  per rule   for every protected rule deleted: the sum of its outages, deletion -> its return
             (a rule deleted again after coming back, a re-wipe, has two or more)
  node       first loss of a protected rule -> the moment every deleted rule is back
  nd span    networkd's deletions, first -> last (rule deletions made from networkd's ports)
  batches    additions grouped by (port, consecutive seq): one group per batch the sender sent
             (an addition refused in mid-batch, EEXIST, leaves a gap and splits it in two)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from bench.rtnl import RTPROT_KERNEL, RTPROT_STATIC

RuleEvent = Sequence[Any]  # (t, "N"|"D", key, priority, protocol, port, seq); JSON gives lists
UNPROTECTED = (RTPROT_KERNEL, RTPROT_STATIC)  # the kernel's own rules, networkd's RoutingPolicyRule=s


class NoOutage(ValueError):
    """The events show no protected rule deleted, or one that never came back."""


def quantile(xs: Sequence[float], q: float) -> float:
    """The q-quantile (0..1), linear between the closest ranks (numpy's default); nan if empty."""
    if not xs:
        return math.nan
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def spread(xs: Sequence[float]) -> dict[str, float | int | None]:
    """p50, p99, max and n of ``xs``; None for each figure when there are none."""
    if not xs:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    return {"p50": quantile(xs, 0.5), "p99": quantile(xs, 0.99), "max": max(xs), "n": len(xs)}


def is_protected(ev: RuleEvent) -> bool:
    return int(ev[4]) not in UNPROTECTED


def intervals(rules: Iterable[RuleEvent]) -> dict[int, list[tuple[float, float | None]]]:
    """Per protected rule deleted, its outages (deleted, back) in order; back None: still gone.
    An addition of a rule that was not missing (a new rule, a duplicate notification) is no return."""
    out: dict[int, list[tuple[float, float | None]]] = {}
    for ev in rules:
        if not is_protected(ev):
            continue
        t, kind, key = float(ev[0]), ev[1], int(ev[2])
        spans = out.get(key)
        gone = spans is not None and spans[-1][1] is None
        if kind == "D" and not gone:
            out.setdefault(key, []).append((t, None))
        elif kind == "N" and gone:
            assert spans is not None
            spans[-1] = (spans[-1][0], t)
    return out


def batches(rules: Iterable[RuleEvent], ports: set[int] | None = None) -> list[dict[str, Any]]:
    """Rule additions grouped into the batches that sent them: one port, consecutive seqs (the
    kernel numbers each notification with its request's seq; a sender numbers a batch's requests
    one after the other). ``ports``: only those senders (None: all). In order of first addition."""
    open_: dict[int, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for ev in rules:
        if ev[1] != "N":
            continue
        t, port, seq = float(ev[0]), int(ev[5]), int(ev[6])
        if ports is not None and port not in ports:
            continue
        b = open_.get(port)
        if b is not None and seq == b["last_seq"] + 1:
            b["t1"], b["last_seq"], b["n"] = t, seq, b["n"] + 1
            continue
        b = {"port": port, "t0": t, "t1": t, "n": 1, "last_seq": seq}
        open_[port] = b
        out.append(b)
    return out


def guess_networkd_ports(rules: Iterable[RuleEvent]) -> set[int]:
    """The port that deleted the most protected rules: networkd's, when nothing better is known
    (in the lab nothing else deletes rules while a reconfigure runs)."""
    count: dict[int, int] = {}
    for ev in rules:
        if ev[1] == "D" and is_protected(ev):
            count[int(ev[5])] = count.get(int(ev[5]), 0) + 1
    return {max(count, key=lambda p: count[p])} if count else set()


def _ms(t: float | None, t0: float) -> float | None:
    return None if t is None else round((t - t0) * 1000, 3)


def trial(rules: Sequence[RuleEvent], networkd_ports: set[int], daemon_ports: set[int]) -> dict[str, Any]:
    """One reconfigure's rule figures (see the module docstring) and its timeline, in ms since the
    first loss. ``daemon_ports``: the sockets the daemon was seen to hold."""
    spans = intervals(rules)
    if not spans:
        raise NoOutage("no protected rule was deleted")
    still = sum(1 for s in spans.values() if s[-1][1] is None)
    if still:
        raise NoOutage(f"{still} deleted rules never came back")
    t_loss = min(s[0][0] for s in spans.values())
    # The node is whole again when the last outage ends (every rule's last interval is closed).
    t_back = max(float(s[-1][1]) for s in spans.values() if s[-1][1] is not None)
    per_rule = [sum(float(b) - a for a, b in s if b is not None) * 1000 for s in spans.values()]
    nd_dels = [float(ev[0]) for ev in rules if ev[1] == "D" and int(ev[5]) in networkd_ports]
    other_dels = sum(1 for ev in rules if ev[1] == "D" and is_protected(ev) and int(ev[5]) not in networkd_ports)
    # In the lab nothing but the daemon adds rules while a trial runs: every other sender's
    # additions are its batches; a sender not among ``daemon_ports`` is named, not dropped.
    senders = {int(ev[5]) for ev in rules if ev[1] == "N"} - networkd_ports
    sent = [b for b in batches(rules, senders) if b["t1"] >= t_loss]
    order = sorted(spans, key=lambda k: spans[k][0][0])
    missing: set[int] = set()
    whole_again = 0  # >1: the node was whole, then lost rules again (a re-wipe of the whole node)
    for ev in rules:
        if not is_protected(ev):
            continue
        if ev[1] == "D":
            missing.add(int(ev[2]))
        elif int(ev[2]) in missing:
            missing.discard(int(ev[2]))
            whole_again += not missing
    return {
        "deleted": len(spans),
        "rewiped": sum(1 for s in spans.values() if len(s) > 1),
        "per_rule": spread(per_rule),
        "per_rule_ms": [round(x, 3) for x in per_rule],
        "outage_ms": (t_back - t_loss) * 1000,
        "t_loss": t_loss,
        "t_back": t_back,
        "t_last_del": max(a for s in spans.values() for a, _b in s),
        "nd_deletions": len(nd_dels),
        "nd_span_ms": (max(nd_dels) - min(nd_dels)) * 1000 if nd_dels else None,
        "other_deletions": other_dels,  # protected rules deleted by anyone but networkd
        "whole_again": whole_again,
        "batches": len(sent),
        "unknown_senders": sorted(senders - daemon_ports),
        "timeline": {
            "rules": [[[_ms(a, t_loss), _ms(b, t_loss)] for a, b in spans[k]] for k in order],
            "nd_pass": [_ms(min(nd_dels), t_loss), _ms(max(nd_dels), t_loss)] if nd_dels else None,
            "batches": [[_ms(b["t0"], t_loss), _ms(b["t1"], t_loss), b["n"]] for b in sent],
            "whole_ms": _ms(t_back, t_loss),
        },
    }


def first_vs_later(samples: Sequence[dict[str, Any]], key: str) -> tuple[float | None, float | None]:
    """(the first trial's figure, the later trials' p50) of ``key`` (a float, or a dict with p50)."""
    def value(s: dict[str, Any]) -> float | None:
        v = s[key]
        return v.get("p50") if isinstance(v, dict) else v

    if len(samples) < 2:
        return (value(samples[0]) if samples else None), None
    later = [v for v in (value(s) for s in samples[1:]) if v is not None]
    return value(samples[0]), (quantile(later, 0.5) if later else None)


def representative(samples: Sequence[dict[str, Any]]) -> int:
    """The index of the trial to draw: the median node outage among the trials after the first
    (the first repair after start is its own target); the lower median when even."""
    pool = list(range(1, len(samples))) if len(samples) > 2 else list(range(len(samples)))
    pool.sort(key=lambda i: samples[i]["outage_ms"])
    return pool[(len(pool) - 1) // 2]
