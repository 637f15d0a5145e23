"""The picture (``--plot FILE.png``, and FILE.svg beside it): one representative trial per mode
and pod count, drawn from the observer's events (bench.outage's timeline). Per deleted rule a
horizontal line from its deletion to its return, rules in order of deletion; networkd's pass
(its first to last deletion) shaded; the daemon's batches marked; the moment the node is whole
again marked. Today's way on the left, the chase on the right, one row per pod count, the same
time scale across a row. matplotlib (the optional ``bench`` extra), Agg only: no display."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.outage import representative

COLOURS = {"rule": "#1f77b4", "rewipe": "#d62728", "pass": "#bbbbbb", "batch": "#2ca02c",
           "whole": "#000000", "configured": "#9467bd"}


def _title(mode: str, r: dict[str, Any], i: int, label: str) -> str:
    s = r["samples"][i]
    pr, tr = r["per_rule"], s["per_rule"]
    span = s["nd_span_ms"]
    return (f"{mode}: {r['pods']} pods, {label}: each rule out {pr['p50']:.1f} ms p50, {pr['p99']:.1f} p99 "
            f"(all {r['iterations']} trials); node {r['stats']['outage_ms']['p50']:.0f} ms p50; "
            f"ip -batch {r['ip_batch']['p50']:.0f} ms\n"
            f"trial #{i + 1} drawn: rule p50 {tr['p50']:.1f} / max {tr['max']:.1f} ms, node {s['outage_ms']:.1f} ms, "
            f"networkd's pass {span if span is None else f'{span:.1f}'} ms, {s['batches']} batch"
            f"{'es' if s['batches'] != 1 else ''}, {s['rewiped']} re-wiped")


def _panel(ax: Any, tl: dict[str, Any]) -> float:
    """One trial on ``ax``; returns the last moment drawn (ms)."""
    from matplotlib.collections import LineCollection

    first: list[list[tuple[float, int]]] = []  # one [(start, y), (end, y)] segment per outage
    again: list[list[tuple[float, int]]] = []
    for y, spans in enumerate(tl["rules"]):
        for k, (a, b) in enumerate(spans):
            (first if k == 0 else again).append([(a, y), (b, y)])
    if tl["nd_pass"]:
        a, b = tl["nd_pass"]
        ax.axvspan(a, max(b, a + 0.2), color=COLOURS["pass"], alpha=0.45, lw=0, label="networkd's pass (its deletions)")
    lw = 0.6 if len(tl["rules"]) > 800 else 1.0
    ax.add_collection(LineCollection(first, colors=COLOURS["rule"], linewidths=lw, label="a rule's outage"))
    if again:
        ax.add_collection(LineCollection(again, colors=COLOURS["rewipe"], linewidths=lw,
                                         label="deleted again after its return"))
    for k, (a, b, _n) in enumerate(tl["batches"]):
        ax.axvspan(a, max(b, a + 0.2), color=COLOURS["batch"], alpha=0.3, lw=0, zorder=3)
        ax.axvline(a, color=COLOURS["batch"], lw=1.2, ls="--", zorder=4,
                   label="the daemon's batches" if k == 0 else None)
    if tl.get("configured_ms") is not None:
        ax.axvline(tl["configured_ms"], color=COLOURS["configured"], lw=1.8, ls=":", zorder=4,
                   label="eth1 configured (networkd)")
    ax.axvline(tl["whole_ms"], color=COLOURS["whole"], lw=1.5, zorder=4, label="node whole again")
    ax.set_ylim(len(tl["rules"]), -1)  # the first deleted on top
    ax.set_xlabel("ms since the first rule was lost")
    ax.grid(axis="x", alpha=0.3)
    ends = [tl["whole_ms"], *(b for _a, b, _n in tl["batches"]), *(tl["nd_pass"] or ())]
    return float(max(ends))


def draw(latency: dict[str, Any], png: str, label: str) -> list[str]:
    """FILE.png and FILE.svg of ``latency`` (bench.latency.part2's first result); their paths."""
    from matplotlib.figure import Figure

    modes = [m for m in ("today", "chase") if m in latency] + [m for m in latency if m not in ("today", "chase")]
    pods = sorted({int(p) for m in modes for p in latency[m]})
    fig = Figure(figsize=(9 * len(modes), 5.2 * len(pods)), layout="constrained")
    axes = fig.subplots(len(pods), len(modes), squeeze=False)
    for row, n in enumerate(pods):
        drawn, right = [], 1.0
        for col, mode in enumerate(modes):
            ax = axes[row][col]
            r = latency[mode].get(str(n))
            if r is None or not r["samples"]:
                ax.set_axis_off()
                continue
            i = representative(r["samples"])
            right = max(right, _panel(ax, r["samples"][i]["timeline"]))
            ax.set_title(_title(mode, r, i, label), fontsize=9, loc="left")
            if col == 0:
                ax.set_ylabel("deleted rules, in order of deletion")
            drawn.append(ax)
        # One time scale across the row: today against the chase at a glance.
        for ax in drawn:
            ax.set_xlim(-0.02 * right, 1.04 * right)
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle("netd-hook: each rule's outage after `networkctl reconfigure eth1` (independent netlink observer)",
                 fontsize=11)
    svg = str(Path(png).with_suffix(".svg"))
    fig.savefig(png, dpi=110)
    fig.savefig(svg)
    return [png, svg]
