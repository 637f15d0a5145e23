"""The one-minute demo: a throwaway Kubernetes node in a namespace (real systemd-networkd, a
private D-Bus, ENIs and pods in the VPC CNI layout), netd-hook guarding it, and networkd doing
what it does on Ubuntu 22.04. Run as root: scripts/dev.sh demo"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from tests.daemon import Daemon, rule_set
from tests.lab import Lab, pod_ips

BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() \
    else ("",) * 5


class RuleWatch:
    """`ip -ts monitor rule route` inside the lab: an observer independent of netd-hook."""

    LINE = re.compile(r"^\[(?P<ts>[^\]]+)\]\s*(?P<del>Deleted )?(?P<what>.*)$")

    def __init__(self, lab: Lab) -> None:
        self.events: list[tuple[float, bool, str]] = []
        self.proc = lab.popen(["ip", "-ts", "monitor", "rule", "route"], stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.2)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = self.LINE.match(line.strip())
            if m:
                ts = datetime.fromisoformat(m["ts"]).timestamp()
                self.events.append((ts, bool(m["del"]), " ".join(m["what"].split())))

    def mark(self) -> int:
        return len(self.events)

    def outage(self, start: int, exclude: str = "\0") -> tuple[list[str], list[str], float]:
        """(lost, restored, seconds from the first deletion to the last re-add)."""
        evs = self.events[start:]
        lost = [w for _, d, w in evs
                if d and (" lookup " in w or " table " in w) and "proto kernel" not in w and exclude not in w]
        dels = [t for t, d, w in evs if d and w in lost]
        back = [t for t, d, w in evs if not d and w in lost]
        restored = [w for _, d, w in evs if not d and w in lost]
        return lost, restored, (max(back) - min(dels)) if dels and back else 0.0


def step(title: str) -> None:
    print(f"\n{BOLD}== {title}{RESET}")


def show(watch: RuleWatch, mark: int, daemon: Daemon, dmark: int, exclude: str = "\0") -> None:
    time.sleep(0.3)
    lost, restored, secs = watch.outage(mark, exclude)
    print(f"   networkd removed {RED}{len(lost)}{RESET} rules/routes, e.g.:")
    for w in lost[:4]:
        print(f"     {DIM}- {w}{RESET}")
    print(f"   netd-hook put back {GREEN}{len(set(restored))}{RESET}; outage {BOLD}{secs * 1000:.0f} ms{RESET} "
          "(first deletion to last re-add, as `ip monitor` saw it)")
    for r in daemon.repairs(dmark):
        print(f"   {DIM}journal: repair trigger={r['trigger']} rules={r['rules_restored']} "
              f"routes={r['routes_restored']} skipped_dead={r['skipped_dead']} in {r['duration_ms']} ms{RESET}")


def main() -> int:
    print(f"{BOLD}netd-hook demo{RESET}: building a throwaway node (network + mount namespace)...")
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="netd-hook-demo-") as tmp:
        enis = [lab.add_eni(1), lab.add_eni(2)]
        lab.ip_batch([f"rule add from {e.ip} lookup {e.table} priority 32765" for e in enis], force=True)
        lab.node_rules(strict=True)
        pods = {1: pod_ips(1, 6), 2: pod_ips(2, 6)}
        for eni, ips in pods.items():
            for ip in ips:
                lab.add_pod(ip, eni)
        print(f"   eth0 + ENIs eth1, eth2 managed by systemd-networkd; {sum(map(len, pods.values()))} pods; "
              f"{len(rule_set(lab, (4,)))} policy rules (`ip rule`)")
        print(f"   as on a node: udev runs, and networkd is socket-activated (its rtnetlink socket, port "
              f"{lab.networkd_socket_port}, bound by a stand-in for PID 1 and handed to networkd and netd-hook)")
        watch = RuleWatch(lab)

        step("Without netd-hook: `networkctl reconfigure eth1` (what netplan apply does)")
        before = rule_set(lab, (4,))
        lab.reconfigure("eth1", wait=True)
        time.sleep(0.3)
        after = rule_set(lab, (4,))
        print(f"   {RED}{len(before - after)} rules gone and they stay gone{RESET}: every pod on a secondary ENI "
              "is cut off until someone restarts it")
        lab.ip_batch(lab.eni_routes(1) + [f"rule add from {e.ip} lookup {e.table} priority 32765" for e in enis]
                     + lab.pod_rule_lines() + ["rule add fwmark 0x80/0x80 lookup main priority 1024",
                                               "rule add priority 20 lookup local"], force=True)

        step("Start netd-hook (Type=notify: READY=1 once the bus is watched and the snapshot taken)")
        daemon = Daemon(lab, Path(tmp) / "state", log_level="info").start()
        print(f"   {GREEN}ready{RESET}: {daemon.wait_note(r'STATUS=(.*)').group(1)}")
        try:
            step("networkctl reconfigure eth1")
            m, dm = watch.mark(), daemon.mark()
            lab.reconfigure("eth1", wait=True)
            daemon.wait_log(r" repair trigger=", start=dm)
            show(watch, m, daemon, dm)

            step("systemctl restart systemd-networkd (an unattended systemd upgrade does this)")
            m, dm = watch.mark(), daemon.mark()
            lab.restart_networkd()  # with udev the restart alone wipes every foreign rule
            daemon.wait_log(r" repair trigger=", start=dm)
            show(watch, m, daemon, dm)

            step("netplan apply (networkd reconfigures every link)")
            m, dm = watch.mark(), daemon.mark()
            lab.reconfigure("eth0", "eth1", "eth2", wait=True)
            daemon.wait_log(r" repair trigger=", start=dm)
            show(watch, m, daemon, dm)

            step("An ENI is hot-plugged: networkd configures eth3 and wipes every foreign rule")
            m, dm = watch.mark(), daemon.mark()
            lab.add_eni(3)
            daemon.wait_log(r" repair trigger=", start=dm)
            show(watch, m, daemon, dm)

            step("The CNI deletes a pod, networkd reconfigures at the same moment")
            gone = pods[2][0]
            m, dm = watch.mark(), daemon.mark()
            lab.del_pod(gone)
            lab.reconfigure("eth2", wait=True)
            daemon.wait_log(r" repair trigger=", start=dm)
            time.sleep(0.3)
            back = [r for r in rule_set(lab, (4,)) if gone in str(r)]
            print(f"   pod {gone}: {'rules came back: BUG' if back else GREEN + 'stays deleted' + RESET} "
                  "(netd-hook tells the CNI's deletions from networkd's by the netlink port that made them)")
            show(watch, m, daemon, dm, exclude=f" {gone} ")
        finally:
            daemon.stop(check=False)
            watch.proc.terminate()
        step("Cleaned up: namespace, networkd, dbus-daemon and netd-hook are gone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
