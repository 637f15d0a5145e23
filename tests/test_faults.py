"""Faults of the machine the daemon runs on (issue 10, findings 3 and 6).

A full or read-only state directory, a read-only runtime directory: the daemon keeps protecting
from memory, says it is degraded (status document, STATUS=, one journal warning per spell),
retries with backoff and comes back by itself. Temporary files a killed daemon left behind are
removed at start (exactly those, nothing else). A kernel dump interrupted by concurrent changes
(NLM_F_DUMP_INTR) is asked again, bounded, and never used half-done.

Real mechanisms: a tmpfs of 64 KiB filled up (ENOSPC), read-only bind mounts (EROFS), the real
daemon against real networkd in the lab; the kernel side of the dump retry is a fake socket that
speaks rtnetlink's framing (the kernel sets NLM_F_DUMP_INTR only under churn it cannot be made to
produce on cue).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netd_hook.adapters import netlink, store
from netd_hook.core.model import Route, Rule, Snapshot
from netd_hook.core.status_doc import Status, from_json, to_json
from tests.daemon import Daemon, wait_until
from tests.lab import Lab

ROOT_AND_NETWORKD = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/lib/systemd/systemd-networkd"), reason="needs root and systemd-networkd")
ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount)")


# The backoff (pure) ---------------------------------------------------------------------------


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_backoff_starts_at_one_second_doubles_and_stops_at_a_minute():
    f = None
    delays, retry_ats = [], []
    for i in range(10):
        now = 100.0 + 10 * i
        f = store.failed(f, store.Write.SNAPSHOT, "/s/snapshot.json", _enospc(), now, 5000.0 + i)
        delays.append(f.delay)
        retry_ats.append(f.retry_at - now)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert retry_ats == delays
    assert f is not None and f.failures == 10 and f.since == 5000.0  # the spell's start is kept
    assert (f.errno, f.error) == ("ENOSPC", "No space left on device")


def test_a_write_is_named_as_the_logs_and_status_json_say_it():
    # "recovered: snapshot written to ..."; on 3.11 an Enum's format() would say "Write.SNAPSHOT"
    assert [f"{w}" for w in store.Write] == ["snapshot", "status", "metrics"]
    assert [str(w) for w in store.Write] == [w.value for w in store.Write]  # what logging's %s gives


def test_degraded_document_names_every_failing_write_and_the_earliest_start():
    assert store.degraded({}, 0.0, 0.0) is None
    snap = store.failed(None, store.Write.SNAPSHOT, "/var/lib/netd-hook/snapshot.json", _enospc(), 10.0, 1000.0)
    st = store.failed(None, store.Write.STATUS, "/run/netd-hook/status.json",
                      OSError(errno.EROFS, "Read-only file system"), 11.0, 999.0)
    doc = store.degraded({store.Write.SNAPSHOT: snap, store.Write.STATUS: st}, 10.5, 1000.5)
    assert doc is not None
    assert doc.since == 999.0
    assert [w.what for w in doc.writes] == ["status", "snapshot"]  # oldest spell first
    assert doc.reason == ("cannot publish the status to /run/netd-hook/status.json: Read-only file system (EROFS); "
                          "cannot save the snapshot to /var/lib/netd-hook/snapshot.json: "
                          "No space left on device (ENOSPC)")
    w = doc.writes[1]
    assert (w.errno, w.failures, w.path) == ("ENOSPC", 1, "/var/lib/netd-hook/snapshot.json")
    assert w.next_attempt_at == pytest.approx(1001.0)  # wall clock: 0.5 s from now
    assert from_json(to_json(Status(degraded=doc))).degraded == doc  # it goes into status.json as it is


# Stale temporary files (finding 6) -----------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_only_stale_temporary_files_of_exactly_that_name_are_removed(tmp_path: Path):
    live, live2 = subprocess.Popen(["sleep", "30"]), subprocess.Popen(["sleep", "30"])
    try:
        dead, dead2, dead3, me = _dead_pid(), _dead_pid(), _dead_pid(), os.getpid()
        stale = [
            f".snapshot.json.{dead}.tmp",  # its writer no longer runs
            f".snapshot.json.{me}.tmp",  # our own PID: we have written nothing yet
            f".snapshot.json.{live2.pid}.tmp",  # a running PID, but the file predates this boot
        ]
        kept = [
            f".snapshot.json.{live.pid}.tmp",  # perhaps a write in progress
            "snapshot.json", ".snapshot.json.tmp", f"snapshot.json.{dead}.tmp", f".snapshot.json.{dead}.tmp.bak",
            f".snapshot.json.{dead}.tmp~", ".snapshot.json.0.tmp", ".snapshot.json.12ab.tmp",
            f".status.json.{dead}.tmp", f"..snapshot.json.{dead}.tmp", "replay.lock",
            "snapshot.json.corrupt-20261201T000000",
        ]
        for name in stale + kept:
            (tmp_path / name).write_text('{"half a snaps')
        os.utime(tmp_path / f".snapshot.json.{live2.pid}.tmp", (0, 0))
        os.mkdir(tmp_path / f".snapshot.json.{dead2}.tmp")  # a directory: never touched
        target = tmp_path / "target"
        target.write_text("keep me")
        os.symlink(target, tmp_path / f".snapshot.json.{dead3}.tmp")  # a symlink: neither followed nor removed

        removed = store.remove_stale_temps(tmp_path, "snapshot.json")
        assert sorted(p.name for p in removed) == sorted(stale)
        assert {p.name for p in tmp_path.iterdir()} == {
            *kept, f".snapshot.json.{dead2}.tmp", f".snapshot.json.{dead3}.tmp", "target"}
        assert target.read_text() == "keep me"
        # the names atomic_write uses are the names looked for
        assert store.temp_path(tmp_path / "metrics.prom", 4711).name == ".metrics.prom.4711.tmp"
        assert store.remove_stale_temps(tmp_path / "missing", "snapshot.json") == []
    finally:
        for p in (live, live2):
            p.kill()
            p.wait()


# A full file system, for real ------------------------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)
    return filler


def _snapshot(n: int) -> Snapshot:
    rules = frozenset(Rule(family=2, priority=1536, table=2, src=f"10.1.{i // 250}.{i % 250}/32") for i in range(n))
    return Snapshot(rules, frozenset({Route(family=2, table=2, dst="0.0.0.0/0", oif="eth1", gateway="10.0.1.1")}))


@ROOT
def test_saving_on_a_full_file_system_fails_cleanly_and_works_once_space_returns(tmp_path: Path):
    with tiny_tmpfs(tmp_path / "state") as state:
        store.save(state, _snapshot(3))
        before = (state / "snapshot.json").read_bytes()
        filler = _fill(state)
        with pytest.raises(OSError) as err:
            store.save(state, _snapshot(2000))  # ~100 KiB: more than the whole file system
        assert err.value.errno == errno.ENOSPC
        assert sorted(p.name for p in state.iterdir()) == ["filler", "snapshot.json"]  # no temporary file
        assert (state / "snapshot.json").read_bytes() == before  # the old snapshot, whole
        assert store.load(state).snapshot == _snapshot(3)
        filler.unlink()
        store.save(state, _snapshot(500))
        assert sorted(p.name for p in state.iterdir()) == ["snapshot.json"]
        assert store.load(state).snapshot == _snapshot(500)


# The dump retry (finding 6), against a fake kernel ----------------------------------------------


class FakeKernel:
    """A socket-like rtnetlink peer: answers each dump request with the items below, in datagrams
    of `per_datagram` messages, setting NLM_F_DUMP_INTR on a dump when `interrupt(what, n)` says
    so (`what`: "link", "rule4", "rule6", "route4", "route6"; `n`: how many times it was asked)."""

    LINKS = ((1, "lo"), (2, "eth0"), (3, "eth1"))
    RULES = (Rule(family=2, priority=512, table=254, dst="10.1.1.5/32"),
             Rule(family=2, priority=1536, table=2, src="10.1.1.5/32"),
             Rule(family=10, priority=1536, table=2, src="2001:db8:1::5/128"))
    ROUTES = (Route(family=2, table=2, dst="0.0.0.0/0", oif="eth1", gateway="10.0.1.1"),)

    def __init__(self, interrupt: Callable[[str, int], bool] = lambda what, n: False, per_datagram: int = 1) -> None:
        self.interrupt = interrupt
        self.per_datagram = per_datagram
        self.queue: list[bytes] = []
        self.asked: dict[str, int] = {}
        self.requests: list[str] = []
        self.blocking = True

    # the socket API dump_sync uses
    def setblocking(self, flag: bool) -> None:
        self.blocking = flag

    def settimeout(self, value: float | None) -> None:
        self.blocking = value is None or value > 0

    def send(self, data: bytes) -> int:
        _len, mtype, _flags, seq, _pid = netlink.HDR.unpack_from(data)
        family = data[netlink.HDR.size]
        what = {netlink.RTM_GETLINK: "link", netlink.RTM_GETRULE: "rule", netlink.RTM_GETROUTE: "route"}[mtype]
        if what != "link":
            what += "4" if family == socket.AF_INET else "6"
        self.requests.append(what)
        self.asked[what] = n = self.asked.get(what, 0) + 1
        flags = netlink.NLM_F_MULTI | (netlink.NLM_F_DUMP_INTR if self.interrupt(what, n) else 0)
        self.queue.extend(self.reply(what, seq, flags))
        return len(data)

    def recv(self, size: int) -> bytes:
        if not self.queue:
            if not self.blocking:
                raise BlockingIOError(errno.EAGAIN, "nothing queued")
            raise TimeoutError("dump_sync waited for a reply that never comes")
        return self.queue.pop(0)

    # rtnetlink framing
    def reply(self, what: str, seq: int, flags: int) -> list[bytes]:
        msgs = self.messages(what, seq, flags)
        msgs.append(netlink.HDR.pack(netlink.HDR.size + 4, netlink.NLMSG_DONE, flags, seq, 0) + struct.pack("=i", 0))
        return [b"".join(msgs[i:i + self.per_datagram]) for i in range(0, len(msgs), self.per_datagram)]

    def messages(self, what: str, seq: int, flags: int) -> list[bytes]:
        if what == "link":
            return [link_message(index, name, seq, flags) for index, name in self.LINKS]
        if what.startswith("rule"):
            fam = socket.AF_INET if what == "rule4" else socket.AF_INET6
            return [netlink.encode_rule(r, netlink.RTM_NEWRULE, flags, seq) for r in self.RULES if r.family == fam]
        fam = socket.AF_INET if what == "route4" else socket.AF_INET6
        index = {name: i for i, name in self.LINKS}
        return [netlink.encode_route(r, index[r.oif or ""], netlink.RTM_NEWROUTE, flags, seq)
                for r in self.ROUTES if r.family == fam]


def link_message(index: int, name: str, seq: int, flags: int) -> bytes:
    raw = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(raw), netlink.IFLA_IFNAME) + raw
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("=BxHiII", 0, 1, index, 0, 0) + attr
    return netlink.HDR.pack(netlink.HDR.size + len(body), netlink.RTM_NEWLINK, flags, seq, 0) + body


def _clean() -> netlink.Dump:
    return netlink.dump_sync(FakeKernel())  # type: ignore[arg-type]


def _same(a: netlink.Dump, b: netlink.Dump) -> bool:
    return (sorted(a.links, key=lambda lk: lk.index), sorted(map(repr, a.rules)), sorted(map(repr, a.routes))) == (
        sorted(b.links, key=lambda lk: lk.index), sorted(map(repr, b.rules)), sorted(map(repr, b.routes)))


def test_the_fake_kernel_speaks_rtnetlink():
    d = _clean()
    assert [lk.name for lk in d.links] == ["lo", "eth0", "eth1"]
    assert set(d.rules) == set(FakeKernel.RULES) and set(d.routes) == set(FakeKernel.ROUTES)


def test_a_dump_interrupted_once_is_asked_again_and_says_so(caplog: pytest.LogCaptureFixture):
    kernel = FakeKernel(lambda what, n: what == "rule4" and n == 1, per_datagram=1)
    with caplog.at_level(logging.INFO, logger="netd_hook.adapters.netlink"):
        d = netlink.dump_sync(kernel)  # type: ignore[arg-type]
    assert _same(d, _clean())  # nothing twice, nothing of the interrupted attempt
    assert len(d.rules) == 3
    assert kernel.asked["rule4"] == 2
    retried = [r for r in caplog.records if r.levelno >= logging.INFO and "NLM_F_DUMP_INTR" in r.getMessage()]
    assert retried and "IPv4 rule" in retried[0].getMessage() and "attempt 1 of 5" in retried[0].getMessage()


def test_a_burst_of_changes_is_outlasted_by_the_retries_backoff():
    # Every dump started within 200 ms of the first is interrupted (a burst of pod churn): asking
    # again at once, five times over, fails; waiting 50, 100, 200 ms between attempts does not.
    started: list[float] = []

    def interrupt(what: str, n: int) -> bool:
        started.append(time.monotonic())
        return started[-1] < started[0] + 0.2

    t0 = time.monotonic()
    kernel = FakeKernel(interrupt)
    d = netlink.dump_sync(kernel)  # type: ignore[arg-type]
    assert _same(d, _clean())
    assert kernel.asked["link"] in (3, 4) and time.monotonic() - t0 < 2.0  # 0, 50, 150 ms: within the burst


def test_a_dump_interrupted_every_time_gives_up_bounded_and_says_so(caplog: pytest.LogCaptureFixture):
    kernel = FakeKernel(lambda what, n: what == "link")
    with caplog.at_level(logging.INFO, logger="netd_hook.adapters.netlink"), pytest.raises(netlink.NetlinkError) as err:
        netlink.dump_sync(kernel)  # type: ignore[arg-type]
    assert err.value.errno == errno.EINTR
    assert "NLM_F_DUMP_INTR" in str(err.value) and "5 times" in str(err.value)
    assert kernel.requests == ["link"] * 5  # bounded; nothing else asked for an inconsistent picture
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "giving up" in warnings[0]


def test_replies_left_over_from_an_aborted_dump_are_never_taken_for_the_next_one():
    # A dump that failed half-way (a timeout, say) leaves its replies in the socket; the daemon
    # dumps again on the same socket. Those stale replies (a link since deleted) must not be read
    # as the new dump's, nor end it early.
    kernel = FakeKernel()
    kernel.queue = [link_message(9, "gone0", 1, netlink.NLM_F_MULTI),
                    netlink.HDR.pack(netlink.HDR.size + 4, netlink.NLMSG_DONE, netlink.NLM_F_MULTI, 1, 0)
                    + struct.pack("=i", 0)]
    d = netlink.dump_sync(kernel)  # type: ignore[arg-type]
    assert _same(d, _clean())
    assert not kernel.queue


# The daemon in the lab -------------------------------------------------------------------------


def _written(run: Path) -> Status:
    """status.json as the daemon wrote it."""
    return from_json(json.loads((run / "status.json").read_text()))


def _ls(lab: Lab, directory: Path) -> list[str]:
    return sorted(lab.run("ls", "-A", str(directory)).stdout.split())


def _degraded_warnings(d: Daemon) -> list[str]:
    return [line for line in d.lines if line.startswith("WARNING") and " degraded: " in line]


@contextlib.contextmanager
def _node() -> Iterator[Lab]:
    from tests.test_daemon_lab import vpc_node
    with vpc_node() as lab:
        yield lab


@pytest.fixture
def node():
    with _node() as lab:
        yield lab


FAULTS = {
    # name: (what the directory is, how it is broken (inside the lab), mended, errno)
    "full": ("a 64 KiB tmpfs, filled up",
             lambda lab, d: (lab.run("mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", d),
                             lab.run("sh", "-c", f"cat /dev/zero > {d}/filler", check=False)),
             lambda lab, d: lab.run("rm", f"{d}/filler"), "ENOSPC"),
    "read-only": ("a read-only bind mount of a directory with the snapshot of an earlier run",
                  lambda lab, d: (lab.run("mount", "--bind", d, d), lab.run("mount", "-o", "remount,bind,ro", d)),
                  lambda lab, d: lab.run("mount", "-o", "remount,bind,rw", d), "EROFS"),
    "read-only-empty": ("a read-only bind mount of an empty directory (no replay.lock either)",
                        lambda lab, d: (lab.run("mount", "--bind", d, d),
                                        lab.run("mount", "-o", "remount,bind,ro", d)),
                        lambda lab, d: lab.run("mount", "-o", "remount,bind,rw", d), "EROFS"),
}


@ROOT_AND_NETWORKD
@pytest.mark.lab
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_state_directory_that_cannot_be_written_degrades_and_recovers(node: Lab, tmp_path: Path, fault: str):
    from tests.test_daemon_lab import healthy, wait_back

    _what, break_it, mend, code = FAULTS[fault]
    state = tmp_path / "state"
    state.mkdir()
    if fault == "read-only":
        with Daemon(node, state):
            pass  # leaves snapshot.json and replay.lock
    before = _ls(node, state)
    break_it(node, str(state))
    want = healthy(node)

    d = Daemon(node, state)
    try:
        d.start(timeout=15)  # READY=1 although the first snapshot cannot be written
        note = d.wait_note(rf"^STATUS=DEGRADED since .*cannot save the snapshot to {state}/snapshot\.json: "
                           rf".*\({code}\)")
        assert "protecting" in note.string
        deg = d.status().degraded
        assert deg is not None and [w.what for w in deg.writes] == ["snapshot"]
        assert deg.writes[0].errno == code and deg.since <= time.time()

        # it protects from memory
        mark = d.mark()
        node.reconfigure("eth1")
        wait_back(node, want, d, f"repair with the state directory {fault}", mark=mark)

        # retried with backoff (1 s, then 2 s), said once
        d.wait_log(r"cannot save the snapshot .*\(failure 3\); retrying in 4s", timeout=8)
        assert len(_degraded_warnings(d)) == 1, "\n".join(_degraded_warnings(d))
        assert wait_until(lambda: d.status().counters.save_failures >= 3, 5, "save failures counted")
        listing = _ls(node, state)
        assert not [n for n in listing if n.endswith(".tmp")], listing  # nothing partial, nothing temporary
        assert listing == sorted(set(before) | ({"filler", "replay.lock"} if fault == "full" else set()))

        # space (or write access) returns: saved at the next attempt, degraded no more
        mark = d.mark()
        mend(node, str(state))
        d.wait_log(r"recovered: snapshot written to .* again, after \d+ failed attempts.*; no longer degraded",
                   timeout=12, start=mark)
        wait_until(lambda: d.status().degraded is None, 5, "degraded cleared in status.json")
        assert node.run("test", "-s", str(state / "snapshot.json"), check=False).returncode == 0
        assert "DEGRADED" not in [n for n in d.notes if n.startswith("STATUS=")][-1]
        assert d.status().snapshot_saved_at is not None
        assert not [n for n in _ls(node, state) if n.endswith(".tmp")]
        assert len(_degraded_warnings(d)) == 1
        assert d.stop() == 0
    finally:
        d.close()


@ROOT_AND_NETWORKD
@pytest.mark.lab
def test_a_runtime_directory_turning_read_only_degrades_and_recovers(node: Lab, tmp_path: Path):
    from tests.test_daemon_lab import healthy, wait_back

    run = tmp_path / "run"
    want = healthy(node)
    d = Daemon(node, tmp_path / "state", runtime_dir=run)
    try:
        d.start()
        # A read-only mount over the runtime directory: the daemon's lock stays held (opened before).
        node.run("mount", "--bind", str(run), str(run))
        node.run("mount", "-o", "remount,bind,ro", str(run))
        mark = d.mark()
        node.reconfigure("eth1")  # a repair: something to publish
        wait_back(node, want, d, "repair with a read-only runtime directory", mark=mark)
        # the status and the metrics file both fail, whichever is written first
        d.wait_note(rf"^STATUS=DEGRADED since .*cannot (publish the status to {run}/status\.json|write the "
                    rf"metrics to {run}/metrics\.prom): .*\(EROFS\)")
        d.wait_log(r"degraded: also cannot (write the metrics to .*metrics\.prom|publish the status to "
                   r".*status\.json)", start=mark)
        d.wait_log(r"cannot publish the status .*\(failure 2\)", timeout=5)
        assert len(_degraded_warnings(d)) == 1, "\n".join(_degraded_warnings(d))
        listing = node.run("ls", "-A", str(run)).stdout.split()
        assert listing == sorted(["boot-id", "daemon.lock", "metrics.prom", "status.json"])
        assert d.proc is not None and d.proc.poll() is None

        mark = d.mark()
        node.run("umount", str(run))
        d.wait_log(r"recovered: status written to .*; no longer degraded|recovered: metrics written to .*; no longer "
                   r"degraded", timeout=10, start=mark)
        wait_until(lambda: _written(run).degraded is None, 5, "degraded cleared in status.json")
        doc = _written(run)
        assert doc.counters.publish_failures >= 2
        assert doc.last_repair is not None  # the repair made while it was read-only is published now
        assert "DEGRADED" not in [n for n in d.notes if n.startswith("STATUS=")][-1]
        assert d.stop() == 0
    finally:
        d.close()


@ROOT_AND_NETWORKD
@pytest.mark.lab
def test_temporary_files_of_a_daemon_killed_while_saving_are_removed_at_start(node: Lab, tmp_path: Path):
    state, run = tmp_path / "state", tmp_path / "run"
    d = Daemon(node, state, runtime_dir=run)
    try:
        d.start()
        wait_until(lambda: (run / "status.json").exists(), 5, "status.json")
        pid = _written(run).pid
        # What a kill -9 in the middle of atomic_write leaves: its temporary files, named by its pid.
        debris = [state / f".snapshot.json.{pid}.tmp", run / f".status.json.{pid}.tmp",
                  run / f".metrics.prom.{pid}.tmp"]
        for p in debris:
            p.write_text('{"format": "netd-hook/snap')
        os.kill(pid, signal.SIGKILL)
        assert d.proc is not None
        d.proc.wait(5)
    finally:
        d.close()
    others = [state / ".snapshot.json.tmp", state / f"snapshot.json.{pid}.tmp",
              state / f".snapshot.json.{pid}.tmp.keep", state / "notes.txt", run / f".status.json.{pid}.tmp.bak"]
    for p in others:
        p.write_text("not netd-hook's temporary file")
    assert all(p.exists() for p in debris)

    d = Daemon(node, state, runtime_dir=run)
    try:
        d.start()  # removed before READY=1
        assert not [p for p in debris if p.exists()]
        for p in debris:
            d.wait_log(rf"removed {p}: left by a netd-hook killed while writing")
        assert all(p.read_text() == "not netd-hook's temporary file" for p in others)
        assert d.stop() == 0
    finally:
        d.close()


_RO_LOCK = """
import sys
from pathlib import Path
from netd_hook.adapters import status
lock = status.DaemonLock(Path(sys.argv[1]))
print("locked", status.running(Path(sys.argv[1])))
lock.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a read-only bind mount in a private mount namespace)")
@pytest.mark.parametrize("lock_exists", [False, True])
def test_a_read_only_runtime_directory_at_start(tmp_path: Path, lock_exists: bool) -> None:
    """No lock file and a read-only runtime directory: one line naming it, exit 1, no traceback.
    With the lock file there already (left by an earlier run), the lock still works read-only."""
    rundir = tmp_path / "run"
    rundir.mkdir()
    if lock_exists:
        (rundir / "daemon.lock").touch()
    root = Path(__file__).resolve().parent.parent
    ro = f"mount --bind {rundir} {rundir} && mount -o remount,bind,ro {rundir} && exec \"$@\""
    if lock_exists:
        argv = ["python3", "-c", _RO_LOCK, str(rundir)]
    else:
        argv = ["python3", "-m", "netd_hook", "run", "--runtime-dir", str(rundir), "--state-dir",
                str(tmp_path / "state")]
    import sys
    argv[0] = sys.executable
    r = subprocess.run(["unshare", "-m", "sh", "-c", ro, "sh", *argv], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert "Traceback" not in r.stderr, r.stderr
    if lock_exists:
        assert r.returncode == 0 and r.stdout.strip() == "locked True", (r.stdout, r.stderr)
    else:
        assert r.returncode == 1, r.stderr
        assert f"{rundir}/daemon.lock: cannot create the daemon lock: Read-only file system" in r.stderr


def test_a_batch_socket_broken_for_good_raises_instead_of_spinning() -> None:
    """Found by reading (issue 12): draining stale acks went `except OSError: continue`, so an
    error that never goes away (EBADF) spun the loop forever at 100 % CPU."""
    import threading

    from netd_hook.adapters.netlink import BatchWriter, NetlinkError

    sock = netlink.open_socket()
    writer = BatchWriter(sock)
    os.close(sock.fileno())  # the fd is gone under the socket object: every recv is EBADF
    raised: list[BaseException] = []

    def drain() -> None:
        try:
            writer._drain()
        except BaseException as exc:
            raised.append(exc)
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    t.join(2)
    sock.detach()
    assert not t.is_alive(), "still spinning after 2 s"
    assert len(raised) == 1 and isinstance(raised[0], NetlinkError) and raised[0].errno == errno.EBADF
