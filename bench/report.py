"""The report on stdout: the header, one table per part with its ratios and verdicts, the total.
Everything here reads the result dicts of bench.replay and bench.latency and prints; nothing
measures."""

from __future__ import annotations

from typing import Any

from bench.common import RSS_TARGET_MB, TARGET_RATIO


def report_header(m: dict[str, Any], quick: bool) -> None:
    print("# netd-hook benchmark" + (" (--quick)" if quick else ""))
    print(f"machine: nproc={m['nproc']} ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}, "
          f"{m['iproute2']}, {m['networkd']}")


def report_part1(res: dict[str, Any], repeats: dict[int, int]) -> None:
    print("\n## Part 1: replay throughput, N IPv4 rules into a fresh netns (median ms)")
    print("(a) netd-hook BatchWriter.send, pre-encoded, all acks   (b) ip -batch -   "
          "(c) one `ip rule add` per rule   (d) kernel floor: one send + bare recv loop")
    hdr = (f"{'N':>6} {'runs':>4} {'(a) writer':>11} {'(b) batch':>10} {'(c) per-rule':>13} {'(d) floor':>10}"
           f" {'(a)/(d)':>8} {'(a)/(b)':>8}  target (a)<={TARGET_RATIO:.2f}x(d)")
    print(hdr)
    print("-" * len(hdr))
    notes = []
    for key, r in res.items():
        n, med = r["rules"], r["median_ms"]
        c = f"{med['c']:.0f}" if "c" in med else "skipped"
        if r["c_sampled"] and "c" in med:
            c += "*"
            notes.append(f"* (c) at N={n}: {r['c_sampled']} rules timed, extrapolated x{n / r['c_sampled']:.0f}")
        print(f"{n:>6} {repeats[int(key)]:>4} {med['a']:>11.2f} {med['b']:>10.1f} {c:>13} {med['d']:>10.2f}"
              f" {r['ratio_a_d']:>8.2f} {r['ratio_a_b']:>8.3f}  {'PASS' if r['target_pass'] else 'MISS'}")
    for note in notes:
        print(note)
    print("Encoding (netd-hook Encoder via pyroute2, done when the snapshot changes, not timed in (a)):")
    for r in res.values():
        print(f"  N={r['rules']:>6}: {r['encode_ms']:.0f} ms total, {r['encode_ms_per_1000']:.1f} ms per 1000 rules"
              f" = {r['encode_ms'] / r['median_ms']['a']:.0f}x the whole confirmed batch (a)")
    print("Per rule (median): " + "; ".join(
        f"N={r['rules']}: (a) {r['median_ms']['a'] / r['rules'] * 1000:.2f} us, "
        f"(d) {r['median_ms']['d'] / r['rules'] * 1000:.2f} us" for r in res.values()))


def _cell(st: dict[str, Any], k: str, q: str, width: int) -> str:
    v = st[k][q]
    return f"{v:.1f}".rjust(width) if v is not None else "-".rjust(width)


PART2_COLUMNS = (  # header, key, quantile, width
    ("outage p50", "outage_ms", "p50", 10),
    ("max", "outage_ms", "max", 6),
    ("nd cfg p50", "configuring_to_configured_ms", "p50", 10),
    ("loss->cfg p50", "loss_to_configured_ms", "p50", 13),
    ("cfg->back p50", "configured_to_back_ms", "p50", 13),
    ("max", "configured_to_back_ms", "max", 6),
    ("react p50", "configured_to_replay_ms", "p50", 9),
    ("daemon p50", "duration_ms", "p50", 10),
    ("max", "duration_ms", "max", 6),
)

PART2_LEGEND = """\
outage     first RTM_DELRULE of a protected rule -> every deleted rule re-added (RTM_NEWRULE seen for each),
           timed by an independent observer in the lab netns (raw netlink monitor + D-Bus signals)
nd cfg     networkd's own configuring -> configured for eth1 (AdministrativeState on D-Bus)
loss->cfg  first rule lost -> eth1 configured: the part of the outage networkd itself takes
cfg->back  eth1 configured -> all rules back: the repair once networkd has settled (the daemon waits
           for that by design, so it is not wiped again half-way)
react      eth1 configured -> the daemon's replay starts (its repair log line's arrival - duration_ms)
daemon     the daemon's own duration_ms (plan + batch + acks) from its `repair` log line"""


def report_part2(res: dict[str, Any]) -> None:
    print("\n## Part 2: end-to-end repair after `networkctl reconfigure eth1` (real networkd in the lab), ms")
    hdr = f"{'pods':>5} {'iter':>4} {'lost':>5} " + " ".join(f"{h:>{w}}" for h, _k, _q, w in PART2_COLUMNS)
    print(hdr + "  target")
    print("-" * (len(hdr) + 24))
    for r in res.values():
        st = r["stats"]
        verdict = "n/a" if r["target_pass"] is None else ("PASS" if r["target_pass"] else "MISS")
        # A pod count without a target (--pods 100) has no bound to print: "n/a" alone.
        target = "n/a" if r["target_ms"] is None else f"outage p50<={r['target_ms']:.0f} {verdict}"
        lost = ",".join(str(x) for x in r["rules_deleted"])
        cells = " ".join(_cell(st, k, q, w) for _h, k, q, w in PART2_COLUMNS)
        print(f"{r['pods']:>5} {r['iterations']:>4} {lost:>5} {cells}  {target}")
    print(PART2_LEGEND)
    print("Also measured (ms, p50 / max):")
    for r in res.values():
        st = r["stats"]

        def pm(k: str, st: dict[str, Any] = st) -> str:
            return f"{_cell(st, k, 'p50', 0)} / {_cell(st, k, 'max', 0)}"

        print(f"  {r['pods']} pods: daemon monitor lag behind the last deletion {pm('monitor_lag_ms')}; "
              f"eth1's table routes back {pm('routes_back_ms')} after the first rule loss "
              f"(restored per reconfigure: {r['routes_restored']}); reconfigure command -> first loss "
              f"{pm('cmd_to_loss_ms')}")
        print(f"  {r['pods']} pods: protected rules lost per reconfigure {r['rules_deleted']}, "
              f"re-wipes after a repair: {r['rewipes']}, observer overruns: {r['overruns']}")


def report_memory(memory: dict[str, Any]) -> None:
    """Part 3, when part 2 measured it."""
    if not memory:
        return
    print("\n## Part 3: daemon idle memory")
    mb = memory["VmRSS"] * 1024 / 1e6
    print(f"pid {memory['pid']}: {memory['cmdline'][:100]}")
    print(f"after the {memory['pods']}-pod runs, idle: VmRSS {memory['VmRSS']:.0f} kB = {mb:.1f} MB "
          f"({memory['VmRSS'] / 1024:.1f} MiB), VmHWM {memory['VmHWM'] / 1024:.1f} MiB, "
          f"RssAnon {memory.get('RssAnon', 0) / 1024:.1f} MiB; "
          f"target <= {RSS_TARGET_MB:.0f} MB: {'PASS' if mb <= RSS_TARGET_MB else 'MISS'}")


def report_total(elapsed_s: float) -> None:
    print(f"\ntotal {elapsed_s:.0f} s")
