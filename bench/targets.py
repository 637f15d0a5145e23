"""Issue 13's targets, each a bound computed from figures of the same run (machines here are
noisy), checked against the figure measured: pure, over the result dicts of bench.replay and
bench.latency. A target whose figures were not measured in this run (part 1 skipped, no 300-pod
lab, a single trial) is left out, not passed."""

from __future__ import annotations

from typing import Any

from bench.common import RSS_TARGET_MB, TARGET_RATIO

RULE_P50_MS_300 = 10.0  # each rule's outage p50 at 300 pods
RULE_VS_BATCH_1000 = 0.6  # at 1,000 pods: each rule's outage p50 <= 0.6 x one ip -batch
NODE_SLACK, NODE_PLUS_MS = 1.1, 10.0  # node p50 <= 1.1 x (networkd's pass + ip -batch) + 10 ms
FIRST_SLACK, FIRST_PLUS_MS = 1.2, 5.0  # the first repair after start <= 1.2 x the later p50 + 5 ms


def _target(name: str, measured: float | None, limit: float | None, how: str,
            mode: str | None = None, pods: int | None = None) -> dict[str, Any] | None:
    if measured is None or limit is None:
        return None
    return {"target": name, "mode": mode, "pods": pods, "measured": measured, "limit": limit,
            "ratio": measured / limit if limit else float("inf"), "pass": measured <= limit, "how": how}


def latency_targets(mode: str, r: dict[str, Any]) -> list[dict[str, Any]]:
    """The part 2 targets of one pod count in one mode (``r``: bench.latency.summarize's dict)."""
    pods = r["pods"]
    rule_p50 = r["per_rule"]["p50"]
    batch = r["ip_batch"]["p50"]
    span = r["stats"]["nd_span_ms"]["p50"]
    first = r["first"]
    out = []
    if pods == 300:
        out.append(_target("per-rule outage p50", rule_p50, RULE_P50_MS_300, f"<= {RULE_P50_MS_300:g} ms",
                           mode, pods))
    if pods == 1000:
        out.append(_target("per-rule outage p50", rule_p50, RULE_VS_BATCH_1000 * batch,
                           f"<= {RULE_VS_BATCH_1000:g} x ip -batch ({batch:.1f})", mode, pods))
    if span is not None:
        out.append(_target("node outage p50", r["stats"]["outage_ms"]["p50"],
                           NODE_SLACK * (span + batch) + NODE_PLUS_MS,
                           f"<= {NODE_SLACK:g} x (networkd's pass {span:.1f} + ip -batch {batch:.1f}) "
                           f"+ {NODE_PLUS_MS:g}", mode, pods))
    for what, key in (("per-rule p50", "per_rule_p50"), ("node outage", "outage_ms")):
        later = first[f"later_{key}"]
        if later is not None:
            out.append(_target(f"first repair: {what}", first[key], FIRST_SLACK * later + FIRST_PLUS_MS,
                               f"<= {FIRST_SLACK:g} x later trials' p50 ({later:.1f}) + {FIRST_PLUS_MS:g}",
                               mode, pods))
    return [t for t in out if t is not None]


def all_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target this run measured: per pod count, each target with the modes side by side;
    then part 1's and the memory's."""
    lat: list[tuple[int, int, int, dict[str, Any]]] = []
    for m, (mode, by_pods) in enumerate(result.get("latency", {}).items()):
        for r in by_pods.values():
            lat += [(r["pods"], k, m, t) for k, t in enumerate(latency_targets(mode, r))]
    out = [t for *_key, t in sorted(lat, key=lambda e: e[:3])]
    for r in result.get("replay", {}).values():
        t = _target("replay throughput (a) writer", r["median_ms"]["a"], TARGET_RATIO * r["median_ms"]["d"],
                    f"<= {TARGET_RATIO:g} x kernel floor ({r['median_ms']['d']:.2f}), N={r['rules']}")
        if t is not None:
            out.append(t)
    for mode, m in result.get("memory", {}).items():
        t = _target("idle RSS (MB)", m["VmRSS"] * 1024 / 1e6, RSS_TARGET_MB, f"<= {RSS_TARGET_MB:g} MB",
                    mode, m["pods"])
        if t is not None:
            out.append(t)
    return out
