"""One-shot operations behind `netd-hook snapshot`, `diff` and `replay`.

They read the saved snapshot (never moving a corrupt file aside: that is the daemon's job),
dump the kernel, and decide with the same tracker, planner and liveness gate as the daemon;
`replay` then sends through the same batch writer and rollback. Grouping for display is pure.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ..adapters import netlink, status, store
from ..adapters.files import load_saved_file, read_regular
from ..adapters.store import SNAPSHOT_FILE
from ..core import links
from ..core.apply import Outcome, Writer, execute
from ..core.model import RT_TABLE_MAIN, FormatError, Route, Rule, Snapshot
from ..core.plan import Plan, plan
from ..core.scope import Scope
from ..core.track import Tracker

REPLAY_LOCK = "replay.lock"
NETIF_LINKS = Path("/run/systemd/netif/links")  # networkd's own per-link state files
LINK_STATE_LIMIT = 1 << 20  # a few hundred bytes each (DNS, NTP and addresses lists included)

Progress = Callable[[str], None]


class OpsError(Exception):
    """A one-shot operation cannot proceed; the message says what to do next."""


def read_snapshot(state_dir: Path, runtime_dir: Path, boot: store.Boot | None = None) -> Snapshot:
    """The daemon's snapshot, if it describes this boot's kernel (never one of an earlier boot:
    replaying it would bring back the rules of pods that are gone)."""
    path = state_dir / SNAPSHOT_FILE
    try:
        saved = load_saved_file(path)  # bounded, never blocking (wait runs inside networkd's start)
        why = store.earlier_boot(saved, path.stat().st_mtime, boot or store.Boot.current(runtime_dir))
    except FileNotFoundError:
        raise OpsError(f"no snapshot at {path}: has the daemon ever run with --state-dir {state_dir}?") from None
    except OSError as exc:
        raise OpsError(f"cannot read {path}: {exc.strerror or exc}") from None
    except FormatError as exc:
        raise OpsError(f"{path} is corrupt ({exc}); the daemon moves it aside and rebuilds from the kernel "
                       "when it starts: `systemctl restart netd-hook`") from None
    if why:
        raise OpsError(f"{path} is of an earlier boot ({why}): it describes a kernel that is gone, so nothing "
                       "in it is used; the daemon moves it aside and snapshots this boot's kernel when it "
                       "starts: `systemctl restart netd-hook`")
    return saved.snapshot


def networkd_link_states(root: Path = NETIF_LINKS) -> dict[str, str]:
    """Link index (as text) -> networkd's ADMIN_STATE, from networkd's state files (no bus needed).

    The liveness gate calls a pod alive while its host route is on a link networkd does not
    manage: a link whose state cannot be read would count as unmanaged, and every pod as alive.
    So a directory or a file that cannot be read, or a file without ADMIN_STATE (networkd writes
    each one whole: link_save, networkd-state-file.c, temporary file then rename), raises OpsError
    saying that it cannot tell. Only a file that vanished (its link went away) is skipped."""
    cannot = "cannot tell which links systemd-networkd manages, so cannot tell which pods are alive"
    try:
        files = [f for f in root.iterdir() if f.name.isdigit()]
    except OSError as exc:
        hint = ("; is systemd-networkd running on this node, and is /run/systemd visible here?"
                if isinstance(exc, FileNotFoundError) else "")
        raise OpsError(f"cannot read networkd's link states in {root}: {exc.strerror or exc}: {cannot}{hint}") from None
    states: dict[str, str] = {}
    for f in files:
        try:
            # bounded and never blocking, like every file this package reads (a FIFO, /dev/zero)
            lines = read_regular(f, LINK_STATE_LIMIT).decode(errors="replace").splitlines()
        except FileNotFoundError:
            continue  # the link went away meanwhile
        except OSError as exc:
            raise OpsError(f"cannot read networkd's link state {f}: {exc.strerror or exc}: {cannot}") from None
        values = dict(line.split("=", 1) for line in lines if "=" in line)
        if not values.get("ADMIN_STATE"):
            raise OpsError(f"networkd's link state {f} has no ADMIN_STATE: {cannot}")
        states[f.name] = values["ADMIN_STATE"]
    return states


@dataclass(frozen=True, slots=True)
class Check:
    """What the daemon would do right now."""

    plan: Plan
    protected_rules: int
    protected_routes: int
    managed: frozenset[str]
    # What the running daemon calls unattributed (missing after a netlink monitor overrun; its
    # status.json `unattributed`, as describe() gives them): still in the plan (`netd-hook replay`
    # puts them back), but the daemon will not. Empty unless with_daemon_view() filled it in.
    unattributed: frozenset[str] = frozenset()


def check(snapshot: Snapshot, dump: netlink.Dump, scope: Scope, managed: frozenset[str]) -> Check:
    return _check(_tracker(snapshot, dump, scope), managed)


def check_now(snapshot: Snapshot, scope: Scope, link_states: Mapping[str, str] | None = None) -> Check:
    """`check` against a fresh dump of the kernel and networkd's current link states."""
    dump = dump_kernel()
    states = networkd_link_states() if link_states is None else link_states
    return check(snapshot, dump, scope, managed_links(dump, states))


def daemon_unattributed(runtime_dir: Path) -> frozenset[str]:
    """The entries the running daemon calls unattributed (status.json `unattributed`, at most
    50). Empty when it is not running (none are unattributed then: it replays the snapshot when
    it starts) or its status cannot be read."""
    try:
        pr = status.probe(runtime_dir)
    except OSError:  # PermissionError on the lock: diff still works, without the daemon's view
        return frozenset()
    if not pr.running or pr.status is None:
        return frozenset()
    return frozenset(pr.status.unattributed)


def with_daemon_view(chk: Check, runtime_dir: Path) -> Check:
    """`chk` marking what the daemon in `runtime_dir` calls unattributed."""
    return replace(chk, unattributed=daemon_unattributed(runtime_dir))


def _tracker(snapshot: Snapshot, dump: netlink.Dump, scope: Scope) -> Tracker:
    t = Tracker(scope, snapshot)
    t.load(dump)
    return t


def _check(t: Tracker, managed: frozenset[str]) -> Check:
    snap = t.snapshot()
    p = plan(snap, t.present_rules, t.present_routes, t.liveness(managed), ())
    return Check(p, len(snap.rules), len(snap.protected_routes()), managed)


def managed_links(dump: netlink.Dump, states_by_index: Mapping[str, str]) -> frozenset[str]:
    """Links networkd manages, by name; indexes resolved by the dump."""
    return links.managed_names(states_by_index, {str(link.index): link.name for link in dump.links})


def dump_kernel() -> netlink.Dump:
    sock = netlink.open_socket()
    try:
        return netlink.dump_sync(sock)
    finally:
        sock.close()


def open_lock(path: Path) -> int:
    """Read-only is enough for flock, and keeps the lock usable by the daemon's own user when
    root (an operator's `netd-hook replay`) created the file first."""
    return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)


@contextmanager
def replay_lock(state_dir: Path, progress: Progress) -> Iterator[None]:
    """Serialises one-shot replays with each other and with the daemon's batches."""
    fd = open_lock(state_dir / REPLAY_LOCK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for {state_dir / REPLAY_LOCK} (a repair is in progress)…")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass(slots=True)
class ReplayResult:
    check: Check
    outcome: Outcome | None = None  # None: dry run, or nothing to do
    duration_ms: float = 0.0


async def replay(state_dir: Path, runtime_dir: Path, scope: Scope, states: Mapping[str, str], *, dry_run: bool,
                 timeout: float, max_attempts: int, progress: Progress,
                 dump: Callable[[], netlink.Dump] = dump_kernel, writer: Writer | None = None) -> ReplayResult:
    """`dump` reads the kernel; `writer` sends the batches (by default a netlink socket of its own)."""
    snap = read_snapshot(state_dir, runtime_dir)
    progress(f"snapshot: {len(snap.rules)} rules, {len(snap.routes)} routes")
    with replay_lock(state_dir, progress):
        started = time.perf_counter()
        progress("reading the kernel's rules and routes…")
        first = dump()
        t = _tracker(snap, first, scope)
        chk = _check(t, managed_links(first, states))
        res = ReplayResult(chk)
        n = len(chk.plan)
        progress(f"{n} entries to restore, {len(chk.plan.held_back)} held back by the liveness gate")
        if dry_run or not n:
            return res
        progress(f"sending {n} entries in one netlink batch…")
        encoder = netlink.Encoder()
        # Every request is encoded with the devices' indexes as the latest dump has them: after a
        # re-plan (a batch's outcome unknown) a device may have come back with a new index.
        latest = [t]

        async def replan() -> Plan:
            fresh = dump()
            latest[0] = _tracker(snap, fresh, scope)
            return _check(latest[0], managed_links(fresh, states)).plan

        def ifindex(name: str) -> int | None:
            return latest[0].ifindex(name)

        async def run(w: Writer) -> Outcome:
            return await execute(chk.plan, lambda e: encoder.add_request(e, ifindex),
                                 lambda e: netlink.delete_request(e, ifindex),
                                 w, timeout=timeout, max_attempts=max_attempts, replan=replan)

        if writer is not None:
            res.outcome = await run(writer)
        else:
            sock = netlink.open_socket()
            try:
                res.outcome = await run(netlink.BatchWriter(sock))
            finally:
                sock.close()
        res.duration_ms = (time.perf_counter() - started) * 1000
        return res


# Display grouping (pure) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pod:
    address: str
    table: int  # the ENI table its `from POD` rule looks up; RT_TABLE_MAIN for pods on the primary ENI
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Groups:
    pods: Mapping[int, tuple[Pod, ...]]  # by ENI table
    node_rules: tuple[Rule, ...]
    routes: Mapping[int, tuple[Route, ...]]  # protected routes by table
    devices: Mapping[int, str]  # table -> the device its routes leave by


def group(snapshot: Snapshot, node_addresses: frozenset[str] = frozenset()) -> Groups:
    """Pod rules are those keyed on one host address that is not the node's own (the ENI
    primary address of a 32765 rule is node-wide); the rest are node-wide."""
    by_addr: dict[str, list[Rule]] = {}
    node: list[Rule] = []
    for rule in snapshot.rules:
        addr = rule.host_address()
        if addr is None or addr in node_addresses:
            node.append(rule)
        else:
            by_addr.setdefault(addr, []).append(rule)
    pods: dict[int, list[Pod]] = {}
    for addr, rules in by_addr.items():
        tables = sorted({r.table for r in rules if r.table != RT_TABLE_MAIN})
        table = tables[0] if tables else RT_TABLE_MAIN
        pods.setdefault(table, []).append(Pod(addr, table, tuple(sorted(rules, key=_rule_key))))
    routes: dict[int, list[Route]] = {}
    devices: dict[int, str] = {}
    for route in snapshot.protected_routes():
        routes.setdefault(route.table, []).append(route)
        if route.oif and (route.table not in devices or route.dst in ("0.0.0.0/0", "::/0")):
            devices[route.table] = route.oif
    return Groups(
        pods={t: tuple(sorted(p, key=lambda pod: _addr_key(pod.address))) for t, p in sorted(pods.items())},
        node_rules=tuple(sorted(node, key=_rule_key)),
        routes={t: tuple(sorted(r, key=lambda x: (x.family, x.dst, x.describe()))) for t, r in sorted(routes.items())},
        devices=devices,
    )


def _rule_key(rule: Rule) -> tuple[int, int, str]:
    return (rule.priority, rule.family, rule.describe())


def _addr_key(addr: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(addr)
    return (ip.version, int(ip))
