"""The report on stdout: the header, one table per part with its ratios and verdicts, the total.
Everything here reads the result dicts of bench.replay and bench.latency and prints; nothing
measures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.common import RSS_TARGET_MB, TARGET_RATIO


def report_header(m: dict[str, Any], quick: bool) -> None:
    print("# netd-hook benchmark" + (" (--quick)" if quick else ""))
    print(f"machine: nproc={m['nproc']} ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}, "
          f"{m['iproute2']}, {m['networkd']}")


def report_part1(res: dict[str, Any], repeats: dict[int, int]) -> None:
    print("\n## Part 1: replay throughput, N IPv4 rules into a fresh netns (median ms)")
    print("(a) netd-hook BatchWriter.send, pre-encoded, one ack   (b) ip -batch -   "
          "(c) one `ip rule add` per rule   (d) kernel floor: one send (one ack) + bare recv loop")
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


def _num(v: float | None, width: int = 0, nd: int = 1) -> str:
    return (f"{v:.{nd}f}" if v is not None else "-").rjust(width)


def _cell(st: dict[str, Any], k: str, q: str, width: int) -> str:
    return _num(st[k][q], width)


HEADLINE_LEGEND = """\
per rule   each protected rule deleted: deletion -> back, summed over its outages when it was deleted
           again after coming back (re-wiped: rules so deleted), over every rule of every trial
node       first rule lost -> every deleted rule back (the node whole again)
nd pass    networkd's own deletions, first -> last (rule deletions from networkd's netlink port)
ip -batch  one `ip -batch` re-adding the same rules in the same lab, daemon stopped (process timed)
batches    rule batches the daemon sent per trial, as the observer saw them (additions with one port
           and consecutive seqs); its log's repair records' own batch count beside them
first      the first trial after the daemon started: per-rule p50 / node outage
All times by an independent observer in the lab netns (raw netlink monitor + D-Bus signals), ms."""


def report_headline(lat: dict[str, Any], configs: dict[str, str | None], lab: str,
                    links: Sequence[str] = ("eth1",)) -> None:
    print(f"\n## Part 2: each rule's outage after `networkctl reconfigure {' '.join(links)}` "
          "(real networkd in the lab), ms")
    print(f"lab: {lab}")
    for mode in lat:
        cfg = configs.get(mode)
        print(f"{mode}: daemon config " + (repr(cfg) if cfg is not None else "default (none passed)"))
    hdr = (f"{'pods':>5} {'mode':>6} {'iter':>4} {'lost':>5} {'per rule p50':>12} {'p99':>6} {'max':>6}"
           f" {'re-wiped':>8} {'node p50':>8} {'max':>6} {'nd pass':>7} {'ip -batch':>9}"
           f" {'batches':>9} {'logged':>7} {'first rule/node':>16}")
    print(hdr)
    print("-" * len(hdr))
    pods_all = sorted({int(p) for by_pods in lat.values() for p in by_pods})
    for pods in pods_all:
        for mode, by_pods in lat.items():
            r = by_pods.get(str(pods))
            if r is None:
                continue
            st, pr, f = r["stats"], r["per_rule"], r["first"]
            lost = ",".join(str(x) for x in r["rules_deleted"])
            batches = f"{_num(st['batches']['p50'], 0, 0)}/{_num(st['batches']['max'], 0, 0)}"
            logged = _num(st["logged_batches"]["p50"], 0, 0)
            first = f"{_num(f['per_rule_p50'])}/{_num(f['outage_ms'])}"
            print(f"{pods:>5} {mode:>6} {r['iterations']:>4} {lost:>5} {_num(pr['p50'], 12)} {_num(pr['p99'], 6)}"
                  f" {_num(pr['max'], 6)} {r['rewiped']:>8} {_cell(st, 'outage_ms', 'p50', 8)}"
                  f" {_cell(st, 'outage_ms', 'max', 6)} {_cell(st, 'nd_span_ms', 'p50', 7)}"
                  f" {_num(r['ip_batch']['p50'], 9)} {batches:>9} {logged:>7} {first:>16}")
    print(HEADLINE_LEGEND)
    print("batches: p50/max per trial; nd pass, ip -batch: p50. Per trial, per rule p50 / max (node):")
    for mode, by_pods in lat.items():
        for r in by_pods.values():
            trials = "  ".join(f"{t['per_rule']['p50']:.1f}/{t['per_rule']['max']:.1f} ({t['outage_ms']:.0f})"
                               for t in r["per_trial"])
            print(f"  {r['pods']} {mode}: {trials}")


PART2_COLUMNS = (  # header, key, quantile, width
    ("node p50", "outage_ms", "p50", 8),
    ("nd cfg p50", "configuring_to_configured_ms", "p50", 10),
    ("loss->cfg p50", "loss_to_configured_ms", "p50", 13),
    ("cfg->back p50", "configured_to_back_ms", "p50", 13),
    ("max", "configured_to_back_ms", "max", 6),
    ("react p50", "configured_to_replay_ms", "p50", 9),
    ("daemon p50", "duration_ms", "p50", 10),
    ("max", "duration_ms", "max", 6),
)

PART2_LEGEND = """\
nd cfg     networkd's own configuring -> configured for eth1 (AdministrativeState on D-Bus)
loss->cfg  first rule lost -> eth1 configured: the part of the outage networkd itself takes
cfg->back  eth1 configured -> all rules back (negative: back before networkd was done)
react      eth1 configured -> the daemon's first rule replay starts (its repair log line's
           arrival - duration_ms)
daemon     the daemon's own duration_ms (plan + batch + acks) of its first rule repair"""


def report_part2(lat: dict[str, Any]) -> None:
    print("\nThe node outage against networkd's own timing, ms:")
    hdr = f"{'pods':>5} {'mode':>6} " + " ".join(f"{h:>{w}}" for h, _k, _q, w in PART2_COLUMNS)
    print(hdr)
    print("-" * len(hdr))
    for mode, by_pods in lat.items():
        for r in by_pods.values():
            cells = " ".join(_cell(r["stats"], k, q, w) for _h, k, q, w in PART2_COLUMNS)
            print(f"{r['pods']:>5} {mode:>6} {cells}")
    print(PART2_LEGEND)
    print("Also measured (ms, p50 / max):")
    for mode, by_pods in lat.items():
        for r in by_pods.values():
            st = r["stats"]

            def pm(k: str, st: dict[str, Any] = st) -> str:
                return f"{_cell(st, k, 'p50', 0)} / {_cell(st, k, 'max', 0)}"

            ks = r["ip_batch"]["kernel_span_ms"]
            print(f"  {r['pods']} {mode}: daemon monitor lag behind the last deletion {pm('monitor_lag_ms')}; "
                  f"eth1's table routes back {pm('routes_back_ms')} after the first rule loss "
                  f"(restored per reconfigure: {r['routes_restored']}); reconfigure command -> first loss "
                  f"{pm('cmd_to_loss_ms')}")
            print(f"  {r['pods']} {mode}: protected rules lost per reconfigure {r['rules_deleted']}, "
                  f"re-wiped rules {r['rewiped']}, trials whole then not {r['rewipes']}, deleted by others than "
                  f"networkd {r['other_deletions']}, observer overruns {r['overruns']}; ip -batch of "
                  f"{r['ip_batch']['rules']} rules: kernel's part {_num(ks['p50'])} / {_num(ks['max'])}")


def report_memory(memory: dict[str, Any]) -> None:
    """Part 3, when part 2 measured it: per mode."""
    if not memory:
        return
    print("\n## Part 3: daemon idle memory")
    for mode, m in memory.items():
        mb = m["VmRSS"] * 1024 / 1e6
        print(f"{mode}: pid {m['pid']}: {m['cmdline'][:100]}")
        print(f"  after the {m['pods']}-pod runs, idle: VmRSS {m['VmRSS']:.0f} kB = {mb:.1f} MB "
              f"({m['VmRSS'] / 1024:.1f} MiB), VmHWM {m['VmHWM'] / 1024:.1f} MiB, "
              f"RssAnon {m.get('RssAnon', 0) / 1024:.1f} MiB; "
              f"target <= {RSS_TARGET_MB:.0f} MB: {'PASS' if mb <= RSS_TARGET_MB else 'FAIL'}")


def report_targets(targets: list[dict[str, Any]]) -> None:
    """Issue 13's targets, each a bound from this run's own figures (bench.targets)."""
    if not targets:
        return
    print("\n## Targets (issue 13), bounds from this run's own figures")
    hdr = f"{'target':<30} {'mode':>6} {'pods':>5} {'measured':>9} {'bound':>9} {'ratio':>6}  verdict  bound is"
    print(hdr)
    print("-" * (len(hdr) + 30))
    for t in targets:
        print(f"{t['target']:<30} {t['mode'] or '':>6} {t['pods'] or '':>5} {t['measured']:>9.2f} "
              f"{t['limit']:>9.2f} {t['ratio']:>6.2f}  {'PASS' if t['pass'] else 'FAIL':<7}  {t['how']}")


def report_total(elapsed_s: float) -> None:
    print(f"\ntotal {elapsed_s:.0f} s")
