"""netd-hook benchmark: replay throughput, end-to-end repair latency, idle RSS.

    cd /work/main && .venv/bin/python -m bench.bench [--quick] [--json FILE] [--mode today|chase|both]
                                                     [--plot FILE.png]

A benchmark, not a test: it prints medians over repeated runs and ratios against baselines
measured in the same run. Needs root, iproute2 and (part 2) systemd-networkd + dbus-daemon.
It never touches the host's network: every rule goes into a network namespace this script
creates (``ndhb-<pid>-<n>``, deleted afterwards) or into a ``tests.lab.Lab``.

Part 1, replay throughput of N IPv4 rules (N/2 pods: ``from IP lookup 2 pref 1536`` and
``to IP lookup main pref 512``), each trial in a fresh namespace with only lo up:
  (a) netd-hook's ``BatchWriter.send`` (requests pre-encoded by ``Encoder``; the socket is
      open before the clock starts, as in the daemon), its one ack (the last message's) and
      any error included;
  (b) ``ip -batch -`` with the same rules on stdin (whole process timed);
  (c) one ``ip rule add`` process per rule (whole shell loop timed);
  (d) the kernel floor: the same bytes in one prebuilt buffer, only the last message asking
      for an ack, one ``send``, a bare ``recv_into`` loop until that ack.
(a) and (d) run in a worker process started with ``ip netns exec`` (``bench.worker``), which
refuses to send unless it really is in the trial's namespace. Every trial is checked
afterwards with ``ip -j rule show``; a trial that did not apply every rule is an error.

Part 2, repair latency: the real daemon in the lab (real networkd, private D-Bus), 300 and
1,000 pods over eth1/eth2; ``networkctl reconfigure eth1`` repeatedly. An independent
observer process in the lab (``bench.observer``) timestamps every IPv4 rule notification (raw
netlink monitor socket, with the port and seq of the request behind it) and every link
AdministrativeState change (D-Bus). The headline: each deleted rule's outage (deletion -> back,
summed over re-wipes; p50, p99, max), beside the node outage (first loss -> all back),
networkd's own deletion span and the time one ``ip -batch`` takes to re-add the same rules in
the same lab (measured after the trials, the daemon stopped). ``--mode``: the daemon as today
(it waits until every link is configured) or chasing the wipe (issue 13), or both, each in a
fresh lab per pod count; ``--plot FILE.png`` draws one trial per mode (and FILE.svg).

Part 3, the daemon's idle VmRSS after part 2.

The modules: this one is the command line; ``bench.replay`` (part 1) with ``bench.worker``
(its senders in the trial namespace), ``bench.latency`` (parts 2 and 3) with
``bench.observer``, ``bench.outage`` (the pure analysis of its events) and ``bench.labtools``
(ports, memory, the ip -batch reference), ``bench.targets`` (issue 13's targets, as ratios of
figures of the same run), ``bench.report`` (everything printed on stdout), ``bench.plot`` (the
picture; matplotlib, the optional ``bench`` extra); ``bench.rtnl`` (the kernel constants and
message walk of the floor and the observer, none of netd_hook's) and ``bench.common`` (paths,
limits, progress on stderr).
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Any

from bench import latency, replay, report, targets
from bench.common import IP, log


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    iproute = subprocess.run([IP, "-V"], capture_output=True, text=True).stdout.strip()
    nd = subprocess.run(["/lib/systemd/systemd-networkd", "--version"], capture_output=True, text=True)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "iproute2": iproute,
        "networkd": (nd.stdout.splitlines() or [""])[0],
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.bench", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, N=500/2000, 300 pods only")
    ap.add_argument("--json", metavar="FILE", help="write every figure as JSON to FILE")
    ap.add_argument("--skip-lab", action="store_true", help="part 1 only")
    ap.add_argument("--lab-only", action="store_true", help="part 2 only")
    ap.add_argument("--networkd", default="252", metavar="252|249|PATH",
                    help="the lab's networkd: the machine's (252), Ubuntu 22.04's 249 (from ../shared), or a path")
    ap.add_argument("--activation", choices=("socket", "self"), default="socket",
                    help="how the lab starts networkd (socket: as systemd does on a node)")
    ap.add_argument("--pods", type=int, nargs="+", metavar="N", help="pod counts for part 2")
    ap.add_argument("--iterations", type=int, metavar="N", help="reconfigures per pod count in part 2")
    ap.add_argument("--mode", choices=("today", "chase", "both"), default="both",
                    help="part 2's daemon: today's (waits for networkd to settle), chasing the wipe, or both")
    ap.add_argument("--plot", metavar="FILE.png", help="draw one trial per mode to FILE.png and FILE.svg")
    ap.add_argument("--links", default="eth1", metavar="eth1[,eth2]",
                    help="part 2's trigger: `networkctl reconfigure` of these links in one call (eth1,eth2: "
                         "networkd's pass runs once per link, and the second deletes what the chase put back)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2

    atexit.register(replay.Netns.close_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    m = machine()
    report.report_header(m, args.quick)
    if args.quick:
        sizes, repeats, c_sample = [500, 2000], {500: 3, 2000: 3}, {2000: 500}
        pod_counts, iterations = [300], {300: 8}
    else:
        sizes, repeats, c_sample = [500, 2000, 10000], {500: 5, 2000: 5, 10000: 3}, {}
        pod_counts, iterations = [300, 1000], {300: 15, 1000: 10}
    if args.pods:
        pod_counts = args.pods
    modes = ("today", "chase") if args.mode == "both" else (args.mode,)
    if args.plot and not args.plot.endswith(".png"):
        print("--plot: FILE.png (FILE.svg is drawn beside it)", file=sys.stderr)
        return 2
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # before the runs, not after
        print("--plot needs matplotlib: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    if args.iterations or args.pods:
        iterations = {n: args.iterations or iterations.get(n, 10) for n in pod_counts}
    lab_kwargs: dict[str, Any] = {"activation": args.activation}
    if args.networkd != "252":
        from tests.lab import networkd_249
        lab_kwargs["networkd"] = networkd_249() if args.networkd == "249" else args.networkd
    result: dict[str, Any] = {"machine": m, "quick": args.quick, "lab": {k: str(v) for k, v in lab_kwargs.items()}}
    try:
        if not args.lab_only:
            log("part 1: replay throughput")
            result["replay"] = replay.part1(sizes, repeats, c_sample)
            report.report_part1(result["replay"], repeats)
            sys.stdout.flush()
        if not args.skip_lab:
            log(f"part 2: repair latency in the lab (networkd {args.networkd}, "
                f"{'socket-activated' if args.activation == 'socket' else 'self-started'}, udev)")
            links = tuple(args.links.split(","))
            result["links"] = list(links)
            result["latency"], result["memory"] = latency.part2(pod_counts, iterations, lab_kwargs, modes, links)
            result["configs"] = {m: latency.MODES[m] for m in modes}
            lab_label = (f"networkd {args.networkd} ({lab_kwargs.get('networkd', '/lib/systemd/systemd-networkd')}), "
                         f"{'socket-activated' if args.activation == 'socket' else 'self-started'}, udev")
            report.report_headline(result["latency"], result["configs"], lab_label, links)
            report.report_part2(result["latency"])
            report.report_memory(result["memory"])
            if args.plot:
                from bench import plot

                for path in plot.draw(result["latency"], args.plot, f"networkd {args.networkd}"):
                    log(f"picture: {path}")
        result["targets"] = targets.all_targets(result)
        report.report_targets(result["targets"])
    finally:
        replay.Netns.close_all()
        result["elapsed_s"] = time.monotonic() - started
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    report.report_total(result["elapsed_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
