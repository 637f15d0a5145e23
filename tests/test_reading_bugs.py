"""Issue 12, item 4: bugs found by reading the code, each with the test that failed before its fix.

- networkd's link states that cannot be read made every link count as unmanaged, so `diff` and
  `replay` took every pod for alive: now they say they cannot tell (unit, and the real CLI in a
  private network and mount namespace against the real kernel);
- a NetlinkError from the kernel dump of `snapshot`, `diff` or `replay` was a traceback: now one
  line naming what failed, exit 1;
- `replay`'s re-plan (a batch whose outcome is unknown) read the kernel again but encoded the
  requests with the first dump's device indexes;
- the daemon's status publish (up to twice a second) copied the snapshot and planned over every
  protected entry to count what is missing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from netd_hook.adapters import config as configmod
from netd_hook.adapters import netlink, status, store
from netd_hook.adapters.netlink import BatchResult, Dump, HostRoute, Link, LocalAddress
from netd_hook.commands import cli, ops
from netd_hook.core.model import AF_INET, Route, Snapshot
from netd_hook.core.status_doc import Networkd, Status, from_json
from tests.fixtures import NODE_RULES, eni_routes, pod_rules

ROOT = Path(__file__).resolve().parent.parent
CANNOT = "cannot tell which links systemd-networkd manages, so cannot tell which pods are alive"


# networkd's link states ------------------------------------------------------------------------


def test_link_states_that_cannot_be_read_say_they_cannot_tell(tmp_path: Path) -> None:
    with pytest.raises(ops.OpsError, match=rf"cannot read networkd's link states in {tmp_path / 'absent'}: "
                                           rf"No such file or directory: {CANNOT}; is systemd-networkd running"):
        ops.networkd_link_states(tmp_path / "absent")
    (tmp_path / "file").write_text("")
    with pytest.raises(ops.OpsError, match=rf"{tmp_path / 'file'}: Not a directory: {CANNOT}$"):
        ops.networkd_link_states(tmp_path / "file")

    links = tmp_path / "links"
    links.mkdir()
    (links / "2").write_text("ADMIN_STATE=configured\n")
    (links / "3").mkdir()  # one link's state that cannot be read: that link could be managed
    with pytest.raises(ops.OpsError, match=rf"cannot read networkd's link state {links / '3'}: .*: {CANNOT}$"):
        ops.networkd_link_states(links)
    (links / "3").rmdir()
    os.mkfifo(links / "3")  # never blocks (the reader refuses what is not a regular file)
    with pytest.raises(ops.OpsError, match=rf"{links / '3'}: not a regular file \(a FIFO\): {CANNOT}$"):
        ops.networkd_link_states(links)
    (links / "3").unlink()
    (links / "3").write_text("OPER_STATE=routable\n")  # networkd always writes ADMIN_STATE
    with pytest.raises(ops.OpsError, match=rf"link state {links / '3'} has no ADMIN_STATE: {CANNOT}$"):
        ops.networkd_link_states(links)
    (links / "3").unlink()
    (links / "4").symlink_to(links / "gone")  # a link that went away while the files were listed
    assert ops.networkd_link_states(links) == {"2": "configured"}


def _pod_on_eth1() -> tuple[Snapshot, Dump]:
    """A pod whose host route is on eth1, a link networkd manages: the gate must call it gone."""
    snap = Snapshot(frozenset(pod_rules("10.1.1.5", 2)))
    return snap, Dump(links=[Link(3, "eth1")], host_routes=[HostRoute("10.1.1.5", "eth1")])


def test_what_the_gate_decides_depends_on_the_link_states() -> None:
    """Why reading them matters: the same kernel, with eth1 known managed and with nothing known
    (what an unreadable directory used to give)."""
    snap, dump = _pod_on_eth1()
    scope = configmod.Config().scope
    chk = ops.check(snap, dump, scope, ops.managed_links(dump, {"3": "configured"}))
    assert len(chk.plan) == 0 and {s.dead for s in chk.plan.held_back} == {True}  # gone: never replayed
    chk = ops.check(snap, dump, scope, ops.managed_links(dump, {}))
    assert len(chk.plan) == 2 and not chk.plan.held_back  # taken for alive: both rules would be replayed


def _netns_available() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("ip") is not None


CLI_IN_NAMESPACES = r"""
set -e
mount -t tmpfs tmpfs /run   # this mount namespace's own /run: the host's stays untouched
mkdir -p /run/systemd/netif/links
ip link set lo up
ip link add eth1 type veth peer name vpc1   # no dummy module here; the lab's ENIs are veths too
ip link set vpc1 up
ip link set eth1 up
ip route add 10.1.1.5/32 dev eth1 scope link      # the pod's host route, on a link networkd manages
echo ADMIN_STATE=configured > /run/systemd/netif/links/$(ip -o link show eth1 | cut -d: -f1)  # /sys is the host's
cli() { PYTHONPATH="$ROOT" "$PY" -m netd_hook "$@" --state-dir "$STATE" --runtime-dir "$RUN"; }
cli diff --json > "$OUT/readable.json" && echo 0 > "$OUT/readable.rc" || echo $? > "$OUT/readable.rc"
rm -r /run/systemd/netif/links
for cmd in diff replay; do
  cli $cmd > "$OUT/$cmd.out" 2> "$OUT/$cmd.err" && echo 0 > "$OUT/$cmd.rc" || echo $? > "$OUT/$cmd.rc"
done
ip -j rule show > "$OUT/rules.json"
"""


@pytest.mark.skipif(not _netns_available(), reason="needs root, unshare and ip")
def test_diff_and_replay_in_a_namespace_say_they_cannot_tell_and_change_nothing(tmp_path: Path) -> None:
    """The real CLI against the real kernel, in its own network namespace, with networkd's state
    directory on a tmpfs of its own mount namespace: readable, the pod on a managed link is held
    back as gone; once unreadable, diff and replay say they cannot tell and the kernel is unchanged
    (before the fix: every link unmanaged, the pod alive, its rules put back)."""
    state, run, out = tmp_path / "state", tmp_path / "run", tmp_path / "out"
    out.mkdir()
    run.mkdir()
    snap, _ = _pod_on_eth1()
    store.save(state, snap, store.Boot.current(run, create=True).id)
    env = {**os.environ, "ROOT": str(ROOT), "PY": sys.executable, "STATE": str(state), "RUN": str(run),
           "OUT": str(out)}
    r = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", CLI_IN_NAMESPACES],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    readable = json.loads((out / "readable.json").read_text())
    assert (out / "readable.rc").read_text().strip() == "0"  # nothing would be replayed
    assert readable["missing"] == [] and len(readable["held_back"]) == 2 and readable["managed_links"] == ["eth1"]
    # the oracle: the namespace's kernel has its three default rules and nothing of the pod's
    rules = json.loads((out / "rules.json").read_text())
    assert sorted(r["priority"] for r in rules) == [0, 32766, 32767], rules
    for cmd in ("diff", "replay"):
        err = (out / f"{cmd}.err").read_text()
        assert err.splitlines()[-1:] == [
            "netd-hook: cannot read networkd's link states in /run/systemd/netif/links: No such file or directory: "
            f"{CANNOT}; is systemd-networkd running on this node, and is /run/systemd visible here?"], \
            (cmd, err, (out / f"{cmd}.out").read_text())
        assert (out / f"{cmd}.rc").read_text().strip() == "1" and (out / f"{cmd}.out").read_text() == ""


# A NetlinkError from the kernel dump -----------------------------------------------------------


class FailingKernel:
    """A socket-like rtnetlink peer whose every dump is interrupted (NLM_F_DUMP_INTR), or refused
    with `error` (an errno, answered as NLMSG_ERROR)."""

    def __init__(self, error: int = 0) -> None:
        self.error = error
        self.queue: list[bytes] = []

    def setblocking(self, flag: bool) -> None:
        pass

    def settimeout(self, value: float | None) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, data: bytes) -> int:
        seq = netlink.HDR.unpack_from(data)[3]
        if self.error:
            body = struct.pack("=i", -self.error) + data[:netlink.HDR.size]
            self.queue.append(netlink.HDR.pack(netlink.HDR.size + len(body), netlink.NLMSG_ERROR, 0, seq, 0) + body)
        else:
            flags = netlink.NLM_F_MULTI | netlink.NLM_F_DUMP_INTR
            self.queue.append(netlink.HDR.pack(netlink.HDR.size + 4, netlink.NLMSG_DONE, flags, seq, 0)
                              + struct.pack("=i", 0))
        return len(data)

    def recv(self, size: int) -> bytes:
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "nothing queued")  # what _drain reads until
        return self.queue.pop(0)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, Path]:
    state, run = tmp_path / "state", tmp_path / "run"
    run.mkdir()
    store.save(state, Snapshot(frozenset(pod_rules("10.1.1.5", 2))), store.Boot.current(run, create=True).id)
    return state, run


@pytest.mark.parametrize(("command", "error", "what"), [
    ("diff", 0, "link dump interrupted by concurrent changes (NLM_F_DUMP_INTR) 5 times in a row"),
    ("snapshot", errno.EBUSY, "dump failed: Device or resource busy"),
    ("replay", errno.EBUSY, "dump failed: Device or resource busy"),
])
def test_a_kernel_dump_that_fails_is_one_line_and_exit_1(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], saved: tuple[Path, Path], command: str,
        error: int, what: str) -> None:
    # the adapter's socket is the fake kernel; everything above it (dump_sync, ops, cli) is the real code
    monkeypatch.setattr(netlink, "open_socket", lambda *a, **kw: FailingKernel(error))
    monkeypatch.setattr(ops, "networkd_link_states", lambda *a: {})  # replay reads them before the kernel
    state, run = saved
    code = cli.main([command, "--state-dir", str(state), "--runtime-dir", str(run)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_PROBLEM, err
    assert err.splitlines()[-1] == f"netd-hook: cannot read the kernel's rules and routes: {what}", err


def test_wait_says_the_kernel_was_not_checked_when_the_dump_fails(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  saved: tuple[Path, Path]) -> None:
    monkeypatch.setattr(netlink, "open_socket", lambda *a, **kw: FailingKernel(errno.EBUSY))
    state, run = saved
    lock = status.DaemonLock(run)
    try:
        status.publish(run, Status(pid=1, networkd=Networkd(pid=7, generation=1), complete=True))
        assert cli.main(["wait", "--state-dir", str(state), "--runtime-dir", str(run), "--timeout", "1"]) == 0
    finally:
        lock.close()
    err = capsys.readouterr().err
    assert ("the daemon reports nothing missing; the kernel itself was NOT checked (cannot read the kernel's "
            "rules and routes: dump failed: Device or resource busy)") in err, err


# replay's re-plan ------------------------------------------------------------------------------


class KernelThatMovesEth1:
    """The first batch's acks are lost (ENOBUFS: outcome unknown); meanwhile eth1 was deleted and
    created again (the ENI detached and re-attached), now with ifindex 9. Dumps and batches see
    the same kernel."""

    def __init__(self) -> None:
        self.eth1 = 3
        self.batches: list[list[bytes]] = []

    def dump(self) -> Dump:
        return Dump(links=[Link(self.eth1, "eth1"), Link(20, "enia1")], host_routes=[HostRoute("10.1.1.5", "enia1")],
                    local_addresses=[LocalAddress("10.0.1.10", "eth1")])

    async def send(self, messages: Sequence[bytes], timeout: float) -> BatchResult:
        self.batches.append(list(messages))
        if len(self.batches) == 1:
            self.eth1 = 9
            return BatchResult(unknown="ENOBUFS: acks were dropped")
        return BatchResult(acked=list(range(len(messages))))


def _oifs(batch: list[bytes]) -> list[int]:
    """The devices the batch's route requests name, as pyroute2 decodes them (not our decoder)."""
    out = []
    for data in batch:
        if netlink.HDR.unpack_from(data)[1] == netlink.RTM_NEWROUTE:
            msg = rtmsg(data)
            msg.decode()
            out.append(msg.get_attr("RTA_OIF"))
    return out


def test_replay_replans_with_the_device_indexes_of_the_dump_it_replans_from(tmp_path: Path) -> None:
    state, run = tmp_path / "state", tmp_path / "run"
    run.mkdir()
    snap = Snapshot(frozenset([*pod_rules("10.1.1.5", 2), NODE_RULES[2]]), frozenset(eni_routes(1)))
    store.save(state, snap, store.Boot.current(run, create=True).id)
    kernel = KernelThatMovesEth1()

    async def go() -> ops.ReplayResult:
        return await ops.replay(state, run, configmod.Config().scope, {"3": "configured", "9": "configured"},
                                dry_run=False, timeout=1.0, max_attempts=3, progress=lambda line: None,
                                dump=kernel.dump, writer=kernel)

    res = anyio.run(go)
    assert res.outcome is not None and res.outcome.unknown == ["ENOBUFS: acks were dropped"]
    assert len(kernel.batches) == 2
    assert _oifs(kernel.batches[0]) == [3, 3]
    assert _oifs(kernel.batches[1]) == [9, 9]  # before the fix: [3, 3], a device that is gone
    assert res.outcome.routes_restored == 2 and res.outcome.rules_restored == 3


# the daemon's status publish -------------------------------------------------------------------


@pytest.fixture
def publishing(tmp_path: Path) -> Iterator[Any]:
    """A daemon's Service with a tracker, as its loop has it, and an idle monitor socket."""
    from netd_hook.adapters.journal import Notifier
    from netd_hook.core import decide
    from netd_hook.core.track import Tracker
    from netd_hook.daemon.service import Service

    svc = Service(configmod.Config(state_dir=tmp_path), None, Notifier(""), runtime_dir=tmp_path)
    alive = pod_rules("10.1.1.5", 2) + pod_rules("10.1.1.7", 2) + pod_rules("10.1.2.5", 3)
    dead = pod_rules("10.1.1.6", 2)
    stray = Route(AF_INET, 7, "0.0.0.0/0", oif="eth1", gateway="10.0.1.1")  # no rule looks up table 7
    eth2 = Route(AF_INET, 3, "0.0.0.0/0", oif="eth2", gateway="10.0.2.1")  # eth2 is gone
    snap = Snapshot(frozenset([*alive, *dead, *NODE_RULES]), frozenset([*eni_routes(1), stray, eth2]))
    svc.tracker = Tracker(configmod.Config().scope, snap)
    svc.tracker.load(Dump(
        rules=[*pod_rules("10.1.1.7", 2)[:1], *pod_rules("10.1.2.5", 3), *NODE_RULES],
        routes=[eni_routes(1)[0]],
        links=[Link(3, "eth1"), Link(20, "enia1")],
        host_routes=[HostRoute(a, "enia1") for a in ("10.1.1.5", "10.1.1.7", "10.1.2.5")],
        local_addresses=[LocalAddress("10.0.1.10", "eth1")]))
    svc.repairer.holds.set_aside = {pod_rules("10.1.1.7", 2)[1]}  # refused by the kernel: not planned
    svc.repairer.holds.unattributed = {NODE_RULES[0]}  # unattributed after an overrun, and back in the kernel since
    svc.state = decide.State(owner=":1.7", listed=True, links={3: "configured"})
    svc.mon = netlink.open_socket()
    try:
        yield svc
    finally:
        svc.mon.close()


def test_publishing_the_status_never_copies_the_snapshot(publishing: Any, tmp_path: Path) -> None:
    svc = publishing
    copies: list[int] = []
    real = svc.tracker.snapshot

    def counted() -> Snapshot:
        copies.append(1)
        return real()

    svc.tracker.snapshot = counted

    async def publish() -> None:
        svc.publisher.publish(anyio.current_time())  # the loop clock, as the outage clock

    anyio.run(publish)
    assert copies == []  # before: one whole copy per publish, twice a second during pod churn
    doc = from_json(json.loads((tmp_path / status.STATUS_FILE).read_text()))
    # by construction: missing and put back are 10.1.1.5's two rules and table 2's default route;
    # held back are 10.1.1.6's two rules (pod gone) and the route through eth2 (device gone). Not
    # counted: 10.1.1.7's rule set aside, table 7's route (unprotected), the rule unattributed
    # after an overrun that is back (and so no longer unattributed).
    assert (doc.missing, doc.held_back) == (3, 3)
    assert svc.repairer.holds.unattributed == set()
    p = svc.repairer.plan()  # the daemon's planner agrees
    assert (len(p), len(p.held_back)) == (3, 3)
    assert "netd_hook_missing_entries 3\n" in (tmp_path / "metrics.prom").read_text()


def test_an_outage_that_starts_as_the_status_is_published_reads_back(publishing: Any, tmp_path: Path) -> None:
    """The loop passes publish() its clock as read when the iteration began; the outage clock
    starts when publish finds entries missing, reading the clock afresh. Before the fix the
    status said a negative outage_seconds, which every reader refuses ("unreadable status
    file"): `status` exited 4 and `wait` could not tell, until the next publish. An outage
    started and ended within one iteration made the total negative for good."""
    svc = publishing

    async def publish() -> None:
        svc.publisher.publish(anyio.current_time() - 0.5)  # an iteration that began half a second ago

    anyio.run(publish)
    pr = status.probe(tmp_path)
    assert pr.error == "" and pr.status is not None and pr.status.missing == 3
    assert pr.status.outage_seconds == 0.0 and pr.status.missing_since is not None

    async def outage_within_one_iteration() -> None:
        now = anyio.current_time() - 0.5
        svc.publisher.missing_since = None
        svc.publisher.outage_starts()  # a loss seen, then repaired, within the iteration
        svc.tracker.present_rules.update(svc.tracker.rules)
        svc.tracker.present_routes.update(svc.tracker.routes)
        svc.publisher.publish(now)

    anyio.run(outage_within_one_iteration)
    pr = status.probe(tmp_path)
    assert pr.error == "" and pr.status is not None and pr.status.missing == 0
    assert svc.publisher.outage_total >= 0.0 and pr.status.outage_seconds >= 0.0


@pytest.mark.parametrize("change", ["nothing", "all gone", "every other", "devices gone", "all set aside"])
def test_the_published_counts_are_the_planners(publishing: Any, change: str) -> None:
    svc = publishing
    t = svc.tracker
    entries = sorted([*t.rules, *t.routes], key=lambda e: e.describe())
    if change == "all gone":
        t.present_rules.clear()
        t.present_routes.clear()
    elif change == "every other":
        t.present_rules.difference_update(entries[::2])
        t.present_routes.difference_update(entries[::2])
    elif change == "devices gone":
        t.links.clear()
    elif change == "all set aside":
        svc.repairer.holds.set_aside.update(entries)
    p = svc.repairer.plan()
    assert svc.repairer.missing() == (len(p), len(p.held_back))
