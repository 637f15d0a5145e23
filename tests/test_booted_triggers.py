"""The two triggers operators hit most, on booted nodes (issue 11, items 1 and 2).

1. A systemd package upgrade, the kops #17433 incident: unattended-upgrades installed a systemd
   update whose maintainer script ran ``systemctl daemon-reexec``, ``try-restart
   systemd-networkd`` and ``try-restart systemd-journald``. Reproduced through the package manager:
   ``dpkg -i`` of the node's own systemd .deb (a reinstall of the same version, from the root's
   /var/cache/apt/archives/), so that Debian's real postinst runs.
2. ``netplan apply`` with Debian's netplan.io generating networkd's configuration from an Ubuntu
   EC2-like /etc/netplan/50-cloud-init.yaml; and ``networkctl reload`` after a ``.network`` change.

The same three nodes as tests/test_booted.py (Debian 12, Debian 13, Debian 12 with networkd 249),
the package built from the working tree, 30 pods. Per node and trigger: a pod the CNI deletes
just before the trigger and one it deletes while networkd wipes stay deleted, every other
protected entry is back, netd-hook is the same process before and after, and its published
view matches the kernel (what it protects, nothing missing or held back). An independent
netlink observer in the node (tests/node.py ``Observer``) measures each trigger's outage, first
protected entry lost to all back; every verdict reads the kernel inside the node (``ip -j``).
Each test prints one ``TRIGGER`` line with its figures (``pytest -s``) and records them as
properties (``--junitxml``). ``NETD_HOOK_TRIGGER_RUNS=N`` repeats each trigger N times (p50/max).

netplan.io is not in the roots tests/node.py builds; ``ensure_netplan`` installs it into the
cached root once (on the host, ``apt-get`` in a chroot, under the root's build lock), before the
node boots on it. Without the Debian archive that fails: the netplan test then fails in CI and is
skipped elsewhere, as the other cached tools are.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netd_hook.core.status_doc import Protected, Status
from tests import node as nodemod
from tests.node import Node, NodeError, Observer, wait_until
from tests.test_booted import (
    NODES,
    PODS,
    REPAIR_TIMEOUT,
    explain,
    foreign_rules,
    networkd_port,
    repairs,
    restore,
    rule_deletions,
    status,
    vpc_node,
    wait_protecting,
    wipe_and_wait,
)

MISSING = nodemod.tools_missing()
IN_CI = bool(os.environ.get("CI"))
pytestmark = [pytest.mark.booted]
if MISSING and not IN_CI:
    pytestmark.append(pytest.mark.skip(reason=f"booted nodes need {', '.join(MISSING)} "
                                              "(root; apt-get install systemd-container)"))

RUNS = max(1, int(os.environ.get("NETD_HOOK_TRIGGER_RUNS") or 1))
WIPE_TIMEOUT = 5.0    # after the trigger command returns, networkd's wipe has begun within this
LATE_PASS = 1.0       # and once repaired and settled, a late second pass or replay shows up within this
NETPLAN_YAML = "/etc/netplan/50-cloud-init.yaml"
# networkd's line when it (re)applies a .network file to a link: 252/257 "eth1: Reconfiguring
# with /etc/systemd/network/10-eth1.network.", 249 "eth1: Re-configuring with ... " (no dot)
RECONFIGURING = re.compile(r"^(\S+): Re-?configuring with (\S+?)\.?$")
NETPLAN_ERRORS: dict[str, str] = {}  # suite -> why netplan.io could not be put into its root


# ---------------------------------------------------------------------------------- netplan in the root

NETPLAN_INSTALL = ('mount -t proc proc "$1/proc"\n'
                   'chroot "$1" apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends netplan.io '
                   '|| { chroot "$1" apt-get update -q && '
                   'chroot "$1" apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends netplan.io; }\n')


def ensure_netplan(suite: str) -> Path:
    """The cached root of `suite` with Debian's netplan.io in it (installed once, idempotent:
    nothing to do when ``usr/sbin/netplan`` exists). On the host, under the root's build lock
    (tests/node.py ``_locked``, the same file ``ensure_root`` takes): ``apt-get install
    --no-install-recommends netplan.io`` in a chroot, ``/proc`` mounted inside a private mount
    namespace of its own (so it disappears with it; nothing stays mounted on the cached tree),
    ``apt-get update`` first only when the root's package lists are too old to fetch from. Log:
    ``roots/<suite>.netplan.log``. Never ``apt-get clean``: the systemd upgrade test reinstalls
    the systemd .deb the root keeps in /var/cache/apt/archives/."""
    root = nodemod.ensure_root(suite)
    if (root / "usr/sbin/netplan").exists():
        return root
    with nodemod._locked(root.parent / f"{suite}.lock"):
        if (root / "usr/sbin/netplan").exists():  # installed meanwhile by someone else
            return root
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        log_path = root.parent / f"{suite}.netplan.log"
        with open(log_path, "w") as log:
            r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", NETPLAN_INSTALL,
                                "sh", str(root)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               env=env, timeout=900)
        if r.returncode != 0 or not (root / "usr/sbin/netplan").exists():
            raise NodeError(f"apt-get install netplan.io in {root} failed (exit {r.returncode}); see {log_path}")
    return root


# ---------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", params=list(NODES), ids=list(NODES))
def node(request: pytest.FixtureRequest, deb: Path) -> Iterator[Node]:
    suite = NODES[request.param][0]
    # before the node boots: the cached root is the read-only lower layer of its overlay
    try:
        ensure_netplan(suite)
        NETPLAN_ERRORS.pop(suite, None)
    except (NodeError, OSError, subprocess.SubprocessError) as e:
        NETPLAN_ERRORS[suite] = str(e)
    with vpc_node(request.param, deb) as n:
        yield n


@pytest.fixture()
def booted(node: Node) -> Node:
    """The module's node, its layout complete again (an earlier failure may have left holes)."""
    restore(node)
    return node


# ---------------------------------------------------------------------------------- helpers

def since(n: Node, t0_ns: int, *args: str) -> list[dict[str, Any]]:
    """This boot's journal entries (``journalctl ARGS``) journald received at or after t0_ns
    (CLOCK_MONOTONIC, the node's and ours: nspawn gives it no time namespace)."""
    return [e for e in n.journal("-b", *args) if int(e["__MONOTONIC_TIMESTAMP"]) >= t0_ns // 1000]


def reconfigured_links(n: Node, t0_ns: int) -> list[str]:
    """The links networkd (re)applied a .network file to since t0_ns, in order, from its journal."""
    out = []
    for e in since(n, t0_ns, "-u", "systemd-networkd"):
        m = RECONFIGURING.match(str(e.get("MESSAGE", "")))
        if m:
            out.append(m.group(1))
    return out


def pod_rules(n: Node, ip: str) -> list[dict[str, Any]]:
    return [r for fam in (4, 6) for r in n.rules(fam) if ip in (r.get("src"), r.get("dst"))]


def host_routes(n: Node, ip: str) -> list[dict[str, Any]]:
    return [r for r in n.ip_json("route", "show", "table", "main") if r.get("dst") == ip]


def network_file_of(n: Node, link: str) -> str:
    """The .network file networkd applies to `link` (``networkctl status``'s text: 249 has no --json)."""
    out = n.run("networkctl", "status", "--no-pager", "-n", "0", link).stdout
    m = re.search(r"Network File: (\S+)", out)
    return m.group(1) if m else ""


def daemon_agrees(n: Node, what: str, timeout: float = 5.0) -> None:
    """The daemon's published view matches the kernel: it protects exactly the foreign rules and
    table routes there are, misses nothing and holds nothing back. A rule of a pod the CNI deleted
    that the daemon still protects shows here (``held_back``, one rule too many), not in the
    kernel: it would be replayed if the pod's IP came back on another pod."""
    want = Protected(rules=foreign_rules(n), routes=len(n.baseline[1]))
    st: Status | None = None

    def ok() -> bool:
        nonlocal st
        st = status(n)
        return st is not None and st.protected == want and st.missing == 0 and not st.held_back
    try:
        wait_until(ok, timeout, "the daemon's view to match the kernel", 0.1)
    except AssertionError:
        diff = n.run("netd-hook", "diff", check=False).stdout
        raise AssertionError(f"{what}: the kernel has {want}, netd-hook protects {getattr(st, 'protected', None)}, "
                             f"missing {getattr(st, 'missing', None)}, held back {getattr(st, 'held_back', None)}; "
                             f"netd-hook diff:\n{diff[-2000:]}") from None


@dataclasses.dataclass
class Run:
    """One trigger, as measured: what the observer saw, the trigger command's result, the repair
    records it caused, and the CNI's two victims (deleted before / while networkd wiped)."""
    events: list[list[Any]]
    t0: int
    took: float
    result: subprocess.CompletedProcess[str]
    entries: list[dict[str, Any]]
    before: str
    during: str
    figures: dict[str, Any]
    during_path: str  # how the second victim stayed deleted (see Trigger.path)


class Trigger:
    """Runs a trigger command in the node the way an operator (or a package manager) does, with
    the CNI deleting one pod just before and one while networkd wipes, and checks the outcome
    against the kernel. ``victims`` picks pod ``index`` on eth1 and eth2 each run, so repeated
    runs take other pods; ``finish()`` gives them back (CNI ADD, same IPs)."""

    def __init__(self, n: Node) -> None:
        self.n = n
        self.full = n.baseline
        self.gone: dict[str, nodemod.Pod] = {}
        self.port = networkd_port(n)

    def victims(self, index: int) -> tuple[str, str]:
        return nodemod.pod_ips(1, PODS[1])[index], nodemod.pod_ips(2, PODS[2])[index]

    def _delete(self, ip: str) -> None:
        self.gone[ip] = self.n.pods[ip]
        self.n.del_pod(ip)

    def run(self, argv: list[str], index: int, timeout: float = 300) -> Run:
        n = self.n
        before, during = self.victims(index)
        self._delete(before)  # CNI DEL just before the trigger
        n.baseline = n.protected()
        wait_protecting(n)  # the daemon has seen the CNI's deletion, and protects the rest
        pid = n.main_pid("netd-hook")
        first_repair = len(repairs(n))
        result: list[Any] = []
        took: list[float] = []

        def trigger() -> None:
            t = time.monotonic()
            try:
                result.append(n.run(*argv, check=False, timeout=timeout))
            except BaseException as e:  # reported by the main thread
                result.append(e)
            took.append(time.monotonic() - t)
        with Observer(n) as obs:
            t0 = time.monotonic_ns()
            th = threading.Thread(target=trigger, name="trigger", daemon=True)
            th.start()
            # the CNI deletes the second pod as soon as networkd's wipe has begun
            ended: list[float] = []

            def wiping() -> bool:
                if rule_deletions([e for e in obs.events() if e[0] >= t0], self.port):
                    return True
                if not th.is_alive():
                    if not ended:
                        ended.append(time.monotonic())
                    if time.monotonic() - ended[0] > WIPE_TIMEOUT:
                        raise AssertionError(f"no rule deleted by networkd (port {self.port}) within "
                                             f"{WIPE_TIMEOUT}s of `{' '.join(argv)}` returning: {result}")
                return False
            wait_until(wiping, timeout + WIPE_TIMEOUT, f"networkd's wipe after {' '.join(argv)}", 0.005)
            self._delete(during)
            th.join(timeout)
            assert result, f"`{' '.join(argv)}` did not return within {timeout}s"
            if isinstance(result[0], BaseException):
                raise result[0]
            res: subprocess.CompletedProcess[str] = result[0]
            assert res.returncode == 0, f"`{' '.join(argv)}` exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
            n.baseline = self._without(during)
            try:
                wait_until(lambda: not any(n.missing()), REPAIR_TIMEOUT, "every protected entry back", 0.02)
            except AssertionError:
                raise AssertionError(explain(n, f"after `{' '.join(argv)}`")) from None
            n.wait_settled()
            time.sleep(LATE_PASS)  # a second pass (networkd 249 wipes twice) or a late replay shows up here
            events = obs.events()
        assert not any(n.missing()), explain(n, f"after `{' '.join(argv)}`, once settled")
        for ip in (before, during):
            assert not pod_rules(n, ip), f"the CNI deleted pod {ip}, its rules came back: {pod_rules(n, ip)}"
            assert not host_routes(n, ip), f"pod {ip}'s host route is back: {host_routes(n, ip)}"
        assert n.main_pid("netd-hook") == pid, f"netd-hook's MainPID {pid} became {n.main_pid('netd-hook')}"
        # networkd's wipe is manager-wide: every foreign rule there is now was deleted through its socket
        wiped = {json.dumps(e[4]) for e in rule_deletions([e for e in events if e[0] >= t0], self.port)}
        assert len(wiped) >= foreign_rules(n), f"networkd deleted {len(wiped)} rules, {foreign_rules(n)} there"
        entries = repairs(n)[first_repair:]
        figures = nodemod.outage(events, t0, key=nodemod.protected_key(set(n.eni_tables()), {before, during}),
                                 silent_routes=True)
        assert figures["missing"] == 0 and figures["outage_ms"] is not None, figures
        self._check_records(events, t0, entries, {before, during})
        daemon_agrees(n, f"after `{' '.join(argv)}`")
        return Run(events, t0, took[0], res, entries, before, during, figures, self.path(events, t0, during))

    def path(self, events: list[list[Any]], t0: int, ip: str) -> str:
        """How pod `ip`, deleted by the CNI once networkd's wipe had begun, stayed deleted: from the
        observer's events for its rules and netd-hook's journal."""
        mine = [e for e in events if e[0] >= t0 and e[2] == "rule" and ip in (e[4][2], e[4][4])]
        if not any(e[1] == "del" and e[3] == self.port for e in mine):
            return "the CNI deleted its rules before networkd got to them: never replayed"
        added = {e[3] for e in mine if e[1] == "new"}
        if not added:
            return "networkd deleted its rules first; the pod was gone by the repair: held back (dead)"
        pattern = re.compile(rf"(^|[\s=]){re.escape(ip)}(/|\s|$)")
        said = [str(e.get("MESSAGE", "")) for e in since(self.n, t0, "-u", "netd-hook")]
        removed = [e for e in mine if e[1] == "del" and e[3] in added]
        if removed or any("had restored it" in m and pattern.search(m) for m in said):
            return ("networkd deleted its rules first, netd-hook restored them before the pod was gone, "
                    "then removed them (pod gone)")
        return "networkd deleted its rules first, netd-hook restored them, then the CNI's delete removed them"

    def _without(self, ip: str) -> nodemod.Baseline:
        """The current baseline without pod `ip`'s rules (what the CNI just deleted)."""
        rules = frozenset(row for row in self.n.baseline[0]
                          if not any(k in ("src", "dst") and json.loads(v) == ip for k, v in row))
        return rules, self.n.baseline[1]

    def _check_records(self, events: list[list[Any]], t0: int, entries: list[dict[str, Any]],
                       victims: set[str]) -> None:
        """The journal's repair records add up: every rule networkd deleted that is not a victim's
        was restored, and nothing more than networkd deleted (a victim's rules networkd deleted
        first may be restored, then taken out again once its pod is gone)."""
        assert entries, "no repair record in the journal"
        dels = rule_deletions([e for e in events if e[0] >= t0], self.port)
        lost_all = len(dels)
        lost_pods = sum(1 for e in dels if e[4][2] in victims or e[4][4] in victims)
        restored = sum(int(e["NETD_HOOK_RULES_RESTORED"]) for e in entries)
        assert lost_all - lost_pods <= restored <= lost_all, (
            f"networkd deleted {lost_all} rules ({lost_pods} of the CNI's victims), "
            f"the journal says {restored} restored: {[e['MESSAGE'] for e in entries]}")
        for e in entries:
            assert e["_SYSTEMD_UNIT"] == "netd-hook.service", e
            assert e["NETD_HOOK_SET_ASIDE"] == "0" and e["NETD_HOOK_ROLLBACKS"] == "0", e["MESSAGE"]

    def finish(self) -> None:
        """The victims come back (CNI ADD, same IPs), and the layout is whole again."""
        n = self.n
        lines = []
        for ip, pod in self.gone.items():
            lines += [f"route add {ip} dev {pod.veth} scope link", *n.pod_rule_lines(ip, pod.eni)]
            n.pods[ip] = pod
        n.ip_batch(lines, force=True)
        self.gone.clear()
        n.baseline = self.full


def report(trig: Trigger, trigger: str, runs: list[Run], record: Any, **extra: Any) -> dict[str, Any]:
    """One line per test for the lead's table (pytest -s), the same figures as properties."""
    ms = [r.figures["outage_ms"] for r in runs]
    fig: dict[str, Any] = {
        "node": trig.n.label, "trigger": trigger, "runs": len(runs),
        "outage_ms_p50": round(statistics.median(ms), 1), "outage_ms_max": round(max(ms), 1),
        "outage_ms": [round(x, 1) for x in ms],
        "rules_deleted_by_networkd": [len(rule_deletions([e for e in r.events if e[0] >= r.t0], trig.port))
                                      for r in runs],
        "repairs": [[f"{e['NETD_HOOK_TRIGGER']}: +{e['NETD_HOOK_RULES_RESTORED']} rules "
                     f"+{e['NETD_HOOK_ROUTES_RESTORED']} routes, {e['NETD_HOOK_SKIPPED_DEAD']} dead, "
                     f"{e['NETD_HOOK_SKIPPED_OTHER']} other" for e in r.entries] for r in runs],
        "cni_deleted_during": [r.during_path for r in runs],
        "daemon_batch_ms": [float(e["NETD_HOOK_DURATION_MS"]) for r in runs for e in r.entries],
        "trigger_to_first_loss_ms": [round((r.figures["first_loss_ns"] - r.t0) / 1e6, 1) for r in runs],
        "command_s": [round(r.took, 2) for r in runs],
        **extra,
    }
    for k, v in fig.items():
        record(k, v)
    print(f"\nTRIGGER {json.dumps(fig)}")
    return fig


# ---------------------------------------------------------------------------------- 1. systemd upgrade

SERVICE = ("MainPID", "ExecMainStartTimestampMonotonic")


def cached_debs(n: Node, *names: str) -> list[str]:
    """The root's cached .debs of these packages, each of the version installed (checked): what
    a reinstall with dpkg takes. unattended-upgrades would bring the next version; its maintainer
    scripts do the same, as the postinst is the same script for both (``$2`` is set either way)."""
    out = []
    for name in names:
        debs = n.run("sh", "-c", f"ls /var/cache/apt/archives/{name}_*.deb").stdout.split()
        installed = n.run("dpkg-query", "-W", "-f", "${Version}", name).stdout.strip()
        assert len(debs) == 1 and f"_{installed.replace(':', '%3a')}_" in debs[0], (name, debs, installed)
        out.append(debs[0])
    return out


def upgrade(trig: Trigger, debs: list[str], restarted: tuple[str, ...]) -> list[Run]:
    """``dpkg -i DEBS`` (RUNS times) through Trigger.run, then what the maintainer scripts did, as
    PID 1 and the journal tell it: PID 1 re-executed, the `restarted` units have new MainPIDs
    (journald last), netd-hook repaired networkd's restart and is the same process, on the 249
    node networkd is still 249 (its drop-in survived), networkd's socket still port 1."""
    n = trig.n
    _, _, version = NODES[n.label]
    version_of = {Path(d).name.split("_")[0]: Path(d).name.split("_")[1].replace("%3a", ":") for d in debs}
    runs = []
    for i in range(RUNS):
        units = {u: n.show(u, *SERVICE) for u in restarted}
        run = trig.run(["dpkg", "-i", *debs], i)
        runs.append(run)
        for pkg, ver in version_of.items():
            assert f"Setting up {pkg}" in run.result.stdout and f"({ver})" in run.result.stdout, run.result.stdout
        pid1 = [str(e.get("MESSAGE")) for e in since(n, run.t0, "_PID=1")]
        assert any(m.startswith("Reexecuting") for m in pid1), pid1[-20:]
        after = {u: n.show(u, *SERVICE) for u in restarted}
        for u in restarted:
            assert after[u]["MainPID"] != units[u]["MainPID"], f"the upgrade did not restart {u}: {after[u]}"
        nd, jd = after["systemd-networkd"], after["systemd-journald"]
        assert int(jd["ExecMainStartTimestampMonotonic"]) > int(nd["ExecMainStartTimestampMonotonic"]), after
        triggers = [e["NETD_HOOK_TRIGGER"] for e in run.entries]
        assert "networkd-restart" in triggers, triggers
        assert n.networkctl_version() == version
        if n.networkd249:
            assert "/opt/networkd/systemd-networkd" in n.read_file(
                "/etc/systemd/system/systemd-networkd.service.d/00-249.conf")
            assert os.readlink(n.path(f"/proc/{nd['MainPID']}/exe")) == "/opt/networkd/systemd-networkd"
        assert networkd_port(n) == 1 and getattr(status(n), "networkd_sockets", None) == (1,), status(n)
    return runs


def test_systemd_package_upgrade_is_repaired(booted: Node, record_property: Any) -> None:
    """``dpkg -i`` of the node's own systemd .deb: its postinst re-executes PID 1, try-restarts
    networkd (which, with udev, wipes every foreign rule) and journald. Everything comes back,
    the CNI's deletions stay deleted, netd-hook is the same process, its audit records and log
    lines reach the restarted journald, and PID 1 still takes its notifications and watchdog."""
    n = booted
    postinst = n.read_file("/var/lib/dpkg/info/systemd.postinst")
    for step in ("daemon-reexec", "try-restart systemd-networkd.service", "try-restart systemd-journald.service"):
        assert step in postinst, f"{step!r} not in this systemd's postinst:\n{postinst[-1500:]}"
    debs = cached_debs(n, "systemd")
    pid = n.main_pid("netd-hook")
    trig = Trigger(n)
    try:
        runs = upgrade(trig, debs, ("systemd-networkd", "systemd-journald"))
        # journald was restarted last: what netd-hook writes now reaches the new journald, both
        # its audit records (native protocol) and its log lines (stdout stream, which journald
        # keeps in PID 1's fd store across its restart)
        jd = int(n.show("systemd-journald", *SERVICE)["ExecMainStartTimestampMonotonic"])
        events, entries = wipe_and_wait(n, "networkctl", "reconfigure", "eth1")
        assert len(rule_deletions(events, 1)) >= foreign_rules(n)
        assert entries, "no repair record after journald's restart"
        for e in entries:
            assert int(e["__MONOTONIC_TIMESTAMP"]) > jd, e
            assert e["_PID"] == str(pid) and e["_SYSTEMD_UNIT"] == "netd-hook.service", e
            assert e["_TRANSPORT"] == "journal" and e["NETD_HOOK_TRIGGER"] == "reconfigure:eth1", e
        lines = [e for e in n.journal("-u", "netd-hook", "_TRANSPORT=stdout") if int(e["__MONOTONIC_TIMESTAMP"]) > jd]
        assert lines, "no log line of netd-hook reached the restarted journald through its stream"
        # the re-executed PID 1 takes netd-hook's sd_notify messages (NotifyAccess=main: it knows
        # the MainPID still): STATUS= after that repair, and WATCHDOG=1 (every WatchdogSec/2 = 15 s;
        # without them it would kill netd-hook 30 s after the upgrade)
        hook = n.show("netd-hook", "NRestarts", "ActiveState", "SubState", "MainPID", "StatusText")
        assert hook["MainPID"] == str(pid) and hook["NRestarts"] == "0", hook
        assert (hook["ActiveState"], hook["SubState"]) == ("active", "running"), hook
        assert f"repairs {len(repairs(n))}; last: reconfigure:eth1 +" in hook["StatusText"], hook
        reexec = max(int(e["__MONOTONIC_TIMESTAMP"]) for e in since(n, runs[-1].t0, "_PID=1")
                     if str(e.get("MESSAGE")).startswith("Reexecuting"))
        wait_until(lambda: int(n.show("netd-hook", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
                   > reexec, 20, "netd-hook's first WATCHDOG=1 after PID 1's re-exec", 0.5)
    finally:
        trig.finish()
    report(trig, "systemd upgrade (dpkg -i systemd)", runs, record_property,
           packages=[Path(d).name for d in debs], netd_hook_pid=pid)


def test_the_whole_systemd_upgrade_is_repaired(booted: Node, record_property: Any) -> None:
    """What unattended-upgrades installs for one systemd update: every binary package of the
    source that the node has (systemd, systemd-sysv, libsystemd0, libsystemd-shared, udev,
    libudev1) in one dpkg run. udev's postinst restarts systemd-udevd as well."""
    n = booted
    debs = cached_debs(n, "systemd", "systemd-sysv", "libsystemd0", "libsystemd-shared", "udev", "libudev1")
    pid = n.main_pid("netd-hook")
    trig = Trigger(n)
    try:
        runs = upgrade(trig, debs, ("systemd-networkd", "systemd-journald", "systemd-udevd"))
        assert n.main_pid("netd-hook") == pid
    finally:
        trig.finish()
    report(trig, "systemd upgrade, whole source (dpkg -i of 6 packages)", runs, record_property,
           packages=[Path(d).name for d in debs], netd_hook_pid=pid)


# ---------------------------------------------------------------------------------- 2b. networkctl reload

def test_networkctl_reload_after_a_network_change_is_repaired(booted: Node, record_property: Any) -> None:
    """``networkctl reload`` with no file changed reconfigures nothing and deletes nothing; after a
    change to eth2's .network (a second address, as for a secondary IP), networkd reconfigures
    eth2 only, which still wipes every foreign rule (manager-wide) and eth2's table; repaired."""
    n = booted
    path = "/etc/systemd/network/10-eth2.network"
    original = n.read_file(path)
    port = networkd_port(n)
    with Observer(n) as obs:
        t0 = time.monotonic_ns()
        n.run("networkctl", "reload")
        time.sleep(1.5)
        quiet = [e for e in obs.events() if e[1] == "del" and e[0] >= t0]
    assert not rule_deletions(quiet, port) and not reconfigured_links(n, t0), (quiet[:5], reconfigured_links(n, t0))
    trig = Trigger(n)
    runs = []
    links: list[list[str]] = []
    try:
        for i in range(RUNS):
            extra = f"10.0.2.{11 + i}/24"
            n.write_file(path, original + f"\n[Address]\nAddress={extra}\n")
            run = trig.run(["networkctl", "reload"], i)
            runs.append(run)
            links.append(reconfigured_links(n, run.t0))
            assert set(links[-1]) == {"eth2"}, links[-1]
            addrs = [a["local"] for x in n.ip_json("-4", "addr", "show", "dev", "eth2") for a in x["addr_info"]]
            assert extra.split("/")[0] in addrs and "10.0.2.10" in addrs, addrs
        # the change undone (the pods back first): one more reconfigure of eth2, repaired as well
        trig.finish()
        wait_protecting(n)
        n.write_file(path, original)
        wipe_and_wait(n, "networkctl", "reload")
    finally:
        trig.finish()
        if n.read_file(path) != original:
            n.write_file(path, original)
            n.run("networkctl", "reload", check=False)
    report(trig, "networkctl reload (eth2's .network changed)", runs, record_property,
           reconfigured=links, unchanged_reload="nothing reconfigured, nothing deleted")


# ---------------------------------------------------------------------------------- 2a. netplan apply

def cloud_init_yaml() -> str:
    """An Ubuntu EC2 node's /etc/netplan/50-cloud-init.yaml, with static addresses instead of
    DHCP (no DHCP server here) in tests/node.py's layout: ENI i is eth<i>, 10.0.<i>.10/24, the
    gateway 10.0.0.1 on the primary only (``Node.network_file``). EC2 matches the primary by
    ``macaddress:``, which netplan (0.106 and 1.1) writes as ``PermanentMACAddress=``; a veth has
    no permanent address (``ethtool -P``: not set), so eth0 would stay unmanaged: it is matched by
    name here, keeping ``set-name`` (and with it netplan's .link file and udev's part)."""
    eths = []
    for i in (0, 1, 2):
        routes = ("            routes:\n            -   to: default\n                via: 10.0.0.1\n" if i == 0 else "")
        match = "            match:\n                name: eth0\n            set-name: eth0\n" if i == 0 else ""
        eths.append(f"        eth{i}:\n{match}            addresses: [10.0.{i}.10/24]\n{routes}"
                    "            link-local: []\n            accept-ra: false\n")
    return ("# This file is generated from information provided by the datasource.  Changes\n"
            "# to it will not persist across an instance reboot.  To disable cloud-init's\n"
            "# network configuration capabilities, write a file\n"
            "# /etc/cloud/cloud.cfg.d/99-disable-network-config.cfg with the following:\n"
            "# network: {config: disabled}\n"
            "network:\n    version: 2\n    ethernets:\n" + "".join(eths))


def test_netplan_apply_is_repaired(booted: Node, record_property: Any) -> None:
    """netplan takes over the layout's configuration (its YAML, the layout's .network files
    removed, ``netplan generate``), then ``netplan apply``: daemon-reload, udev's .link rules
    triggered, ``networkctl reload`` and ``networkctl reconfigure`` of every managed link.
    Repaired; the CNI's deletions stay deleted."""
    n = booted
    err = NETPLAN_ERRORS.get(n.suite)
    if err:
        if IN_CI:
            pytest.fail(f"netplan.io could not be installed into the root: {err}")
        pytest.skip(f"netplan.io could not be installed into the root: {err}")
    netplan_version = n.run("dpkg-query", "-W", "-f", "${Version}", "netplan.io").stdout.strip()
    n.write_file(NETPLAN_YAML, cloud_init_yaml(), 0o600)
    for i in (0, 1, 2):
        n.remove_file(f"/etc/systemd/network/10-eth{i}.network")
    n.run("netplan", "generate")
    generated = sorted(os.listdir(n.path("/run/systemd/network")))
    assert {f"10-netplan-eth{i}.network" for i in (0, 1, 2)} <= set(generated), generated
    nd_pid = n.networkd_pid()
    trig = Trigger(n)
    runs = []
    links: list[list[str]] = []
    reloads: list[int] = []
    try:
        for i in range(RUNS):
            run = trig.run(["netplan", "apply"], i)
            runs.append(run)
            links.append(reconfigured_links(n, run.t0))
            reloads.append(sum(1 for e in since(n, run.t0, "_PID=1")
                               if str(e.get("MESSAGE", "")).startswith("Reloading")))
            for k in (0, 1, 2):
                assert network_file_of(n, f"eth{k}") == f"/run/systemd/network/10-netplan-eth{k}.network"
            # every managed link reconfigured, networkd not restarted (netplan's fallback)
            assert {"eth0", "eth1", "eth2"} <= set(links[-1]), links[-1]
            assert n.networkd_pid() == nd_pid, "netplan apply restarted networkd"
            assert reloads[-1] >= 1, "netplan apply did not run systemctl daemon-reload"
    finally:
        trig.finish()
    report(trig, "netplan apply", runs, record_property, netplan=netplan_version, reconfigured=links,
           daemon_reloads=reloads, networkd_restarted=False)
