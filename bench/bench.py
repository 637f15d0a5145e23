"""netd-hook benchmark: replay throughput, end-to-end repair latency, idle RSS.

    cd /work/main && .venv/bin/python -m bench.bench [--quick] [--json FILE]

A benchmark, not a test: it prints medians over repeated runs and ratios against baselines
measured in the same run. Needs root, iproute2 and (part 2) systemd-networkd + dbus-daemon.
It never touches the host's network: every rule goes into a network namespace this script
creates (``ndhb-<pid>-<n>``, deleted afterwards) or into a ``tests.lab.Lab``.

Part 1, replay throughput of N IPv4 rules (N/2 pods: ``from IP lookup 2 pref 1536`` and
``to IP lookup main pref 512``), each trial in a fresh namespace with only lo up:
  (a) netd-hook's ``BatchWriter.send`` (requests pre-encoded by ``Encoder``; the socket is
      open before the clock starts, as in the daemon), acks included;
  (b) ``ip -batch -`` with the same rules on stdin (whole process timed);
  (c) one ``ip rule add`` process per rule (whole shell loop timed);
  (d) the kernel floor: the same bytes in one prebuilt buffer, one ``send``, a bare
      ``recv_into`` loop until the last ack.
(a) and (d) run in a worker process started with ``ip netns exec`` (``--worker``), which
refuses to send unless it really is in the trial's namespace. Every trial is checked
afterwards with ``ip -j rule show``; a trial that did not apply every rule is an error.

Part 2, repair latency: the real daemon in the lab (real networkd, private D-Bus), 300 and
1,000 pods over eth1/eth2; ``networkctl reconfigure eth1`` repeatedly. An independent
observer process in the lab (``--observer``) timestamps every IPv4 rule notification (raw
netlink monitor socket) and every link AdministrativeState change (D-Bus): the outage runs
from the first deletion of a protected rule to the moment every deleted rule is back.

Part 3, the daemon's idle VmRSS after part 2.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IP = shutil.which("ip") or "/usr/sbin/ip"
NS_PREFIX = f"ndhb-{os.getpid()}-"

# Kernel constants (linux/netlink.h, linux/rtnetlink.h, linux/fib_rules.h). Duplicated here so
# that the floor worker and the observer import nothing of netd-hook.
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
NLMSG_ERROR = 2
RTM_NEWRULE, RTM_DELRULE = 32, 33
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV4_RULE = 8
RTA_TABLE = 15
FRA_PRIORITY = 6
FRA_PROTOCOL = 21
RTPROT_KERNEL, RTPROT_STATIC = 2, 4
HDR = struct.Struct("=IHHII")
ACK = struct.Struct("=IHHIIi")  # nlmsghdr + nlmsgerr.error
ACK_ROOM = 1024  # receive buffer per ack, as netd_hook.netlink.ACK_ROOM

PRIO_TO, PRIO_FROM = 512, 1536
POD_TABLE = 2
TARGET_RATIO = 1.15
LATENCY_TARGET_MS = {300: 60.0, 1000: 150.0}
RSS_TARGET_MB = 50.0


def log(msg: str) -> None:
    """Progress goes to stderr; stdout carries only the report."""
    print(msg, file=sys.stderr, flush=True)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# Part 1: replay throughput ----------------------------------------------------------------


def pod_addresses(n_rules: int) -> list[str]:
    from tests.lab import pod_ips

    return pod_ips(1, n_rules // 2)


def ip_rule_args(n_rules: int) -> list[list[str]]:
    """`ip rule add` arguments, two per pod (the CNI's order: from-rule, then to-rule)."""
    out = []
    for ip in pod_addresses(n_rules):
        out.append(["from", f"{ip}/32", "lookup", str(POD_TABLE), "priority", str(PRIO_FROM)])
        out.append(["to", f"{ip}/32", "lookup", "main", "priority", str(PRIO_TO)])
    return out


def encode_requests(n_rules: int) -> tuple[list[bytes], float]:
    """The same rules as netd-hook's Encoder keeps them; returns (messages, seconds it took)."""
    from netd_hook.model import AF_INET, RT_TABLE_MAIN, Rule
    from netd_hook.netlink import Encoder

    rules = []
    for ip in pod_addresses(n_rules):
        rules.append(Rule(family=AF_INET, priority=PRIO_FROM, table=POD_TABLE, src=f"{ip}/32"))
        rules.append(Rule(family=AF_INET, priority=PRIO_TO, table=RT_TABLE_MAIN, dst=f"{ip}/32"))
    encoder = Encoder()
    started = time.perf_counter()
    messages = [encoder.add_request(r, lambda _name: None) for r in rules]
    elapsed = time.perf_counter() - started
    assert all(m is not None for m in messages)
    return [m for m in messages if m is not None], elapsed


def split_messages(data: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset + HDR.size <= len(data):
        length = HDR.unpack_from(data, offset)[0]
        out.append(data[offset : offset + length])
        offset += (length + 3) & ~3
    return out


class Netns:
    """A fresh, empty network namespace with lo up; deleted on close (and at exit)."""

    _count = 0
    _live: set[str] = set()

    def __init__(self) -> None:
        Netns._count += 1
        self.name = f"{NS_PREFIX}{Netns._count}"
        subprocess.run([IP, "netns", "add", self.name], check=True, capture_output=True)
        Netns._live.add(self.name)
        subprocess.run([IP, "-n", self.name, "link", "set", "lo", "up"], check=True, capture_output=True)

    def count_rules(self) -> int:
        """Pod rules present (priorities 512/1536), read with `ip -j rule show`."""
        out = subprocess.run([IP, "-n", self.name, "-j", "rule", "show"], check=True, capture_output=True,
                             text=True).stdout
        return sum(1 for r in json.loads(out or "[]") if r.get("priority") in (PRIO_TO, PRIO_FROM))

    def close(self) -> None:
        if self.name in Netns._live:
            Netns._live.discard(self.name)
            subprocess.run([IP, "netns", "del", self.name], capture_output=True)
            # The kernel tears the namespace down in a worker thread; let that finish before
            # the next trial instead of competing with it for the CPU.
            time.sleep(0.2)

    @classmethod
    def close_all(cls) -> None:
        for name in list(cls._live):
            cls._live.discard(name)
            subprocess.run([IP, "netns", "del", name], capture_output=True)


class TrialError(RuntimeError):
    pass


def run_worker(ns: Netns, method: str, msgs_file: str) -> dict[str, Any]:
    r = subprocess.run(
        [IP, "netns", "exec", ns.name, sys.executable, "-m", "bench.bench", "--worker", method,
         "--netns", ns.name, "--parent-netns", str(os.stat("/proc/self/ns/net").st_ino), "--msgs", msgs_file],
        capture_output=True, text=True, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120,
    )
    if r.returncode != 0:
        raise TrialError(f"worker {method} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def trial(method: str, n: int, msgs_file: str, rule_args: list[list[str]], sample: int | None) -> float:
    """One timed trial in a fresh namespace; returns milliseconds (extrapolated when sampled)."""
    ns = Netns()
    try:
        expect = n
        if method in ("a", "d"):
            res = run_worker(ns, method, msgs_file)
            if res["errors"]:
                raise TrialError(f"({method}) {res['errors']} of {n} requests failed: {res}")
            ms = float(res["ms"])
        elif method == "b":
            text = "".join("rule add " + " ".join(a) + "\n" for a in rule_args).encode()
            started = time.perf_counter()
            r = subprocess.run([IP, "-n", ns.name, "-batch", "-"], input=text, capture_output=True)
            ms = (time.perf_counter() - started) * 1000
            if r.returncode != 0:
                raise TrialError(f"ip -batch failed: {r.stderr.decode().strip()[-500:]}")
        else:
            args = rule_args[:sample] if sample else rule_args
            expect = len(args)
            script = "set -e\n" + "".join(f"{IP} rule add " + " ".join(a) + "\n" for a in args)
            started = time.perf_counter()
            r = subprocess.run([IP, "netns", "exec", ns.name, "sh", "-s"], input=script.encode(), capture_output=True)
            ms = (time.perf_counter() - started) * 1000
            if r.returncode != 0:
                raise TrialError(f"ip rule add loop failed: {r.stderr.decode().strip()[-500:]}")
            ms *= n / expect
        got = ns.count_rules()
        if got != expect:
            raise TrialError(f"({method}) N={n}: {got} rules present after the trial, expected {expect}")
        return ms
    finally:
        ns.close()


def part1(sizes: Sequence[int], repeats: dict[int, int], c_sample: dict[int, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tmp = tempfile.mkdtemp(prefix="ndhb-msgs-")
    try:
        for n in sizes:
            messages, enc_s = encode_requests(n)
            msgs_file = os.path.join(tmp, f"rules-{n}.bin")
            with open(msgs_file, "wb") as f:
                f.write(b"".join(messages))
            rule_args = ip_rule_args(n)
            methods = ["a", "b", "c", "d"] if n <= 2000 else ["a", "b", "d"]
            sample = c_sample.get(n)
            times: dict[str, list[float]] = {m: [] for m in methods}
            for rep in range(repeats[n]):
                for m in methods:  # interleaved, so machine noise hits every method alike
                    times[m].append(trial(m, n, msgs_file, rule_args, sample if m == "c" else None))
                log(f"  N={n} repeat {rep + 1}/{repeats[n]}: "
                    + "  ".join(f"({m}) {times[m][-1]:.1f} ms" for m in methods))
            med = {m: median(v) for m, v in times.items()}
            out[str(n)] = {
                "rules": n,
                "encode_ms": enc_s * 1000,
                "encode_ms_per_1000": enc_s * 1000 / n * 1000,
                "runs_ms": times,
                "median_ms": med,
                "c_sampled": sample,
                "ratio_a_d": med["a"] / med["d"],
                "ratio_a_b": med["a"] / med["b"],
                "target_pass": med["a"] <= TARGET_RATIO * med["d"],
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


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


# Workers (run inside the trial's namespace) ----------------------------------------------------


def check_netns(name: str, parent_ino: int) -> None:
    """Refuse to send a single rule unless this process really sits in the trial namespace
    (and not in the namespace of the script that started it)."""
    if not name.startswith("ndhb-") or "/" in name:
        raise SystemExit(f"refusing: {name!r} is not a benchmark namespace")
    mine = os.stat("/proc/self/ns/net").st_ino
    if mine != os.stat(f"/run/netns/{name}").st_ino or mine == parent_ino:
        raise SystemExit(f"refusing: not inside network namespace {name}")


def worker_writer(messages: list[bytes]) -> dict[str, Any]:
    import anyio

    from netd_hook.netlink import BatchWriter, open_socket

    sock = open_socket()  # the daemon keeps its batch socket open: not part of the repair

    async def go() -> tuple[int, Any]:
        writer = BatchWriter(sock)
        started = time.perf_counter_ns()
        result = await writer.send(messages, timeout=10)
        return time.perf_counter_ns() - started, result

    ns, result = anyio.run(go)
    sock.close()
    errors = len(result.failed) + len(result.existed) + (len(messages) if result.unknown else 0)
    return {"ms": ns / 1e6, "acked": len(result.acked), "errors": errors, "unknown": result.unknown}


def worker_floor(messages: list[bytes]) -> dict[str, Any]:
    n = len(messages)
    base = 1
    buf = bytearray(b"".join(messages))
    offset = 0
    for i, m in enumerate(messages):
        struct.pack_into("=I", buf, offset + 8, base + i)
        offset += len(m)
    last = base + n - 1
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, n * ACK_ROOM + (1 << 16))
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, len(buf) + (1 << 16))
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    sock.bind((0, 0))
    sock.settimeout(10)
    rbuf = bytearray(1 << 16)
    recv_into, unpack = sock.recv_into, ACK.unpack_from
    errors = 0
    started = time.perf_counter_ns()
    sock.send(buf)
    while True:
        recv_into(rbuf)
        _len, _type, _flags, seq, _port, code = unpack(rbuf)
        if code:
            errors += 1
        if seq == last:
            break
    elapsed = time.perf_counter_ns() - started
    sock.close()
    return {"ms": elapsed / 1e6, "acked": n - errors, "errors": errors}


def worker_main(method: str, netns: str, parent_ino: int, msgs_file: str) -> None:
    check_netns(netns, parent_ino)
    messages = split_messages(Path(msgs_file).read_bytes())
    result = worker_writer(messages) if method == "a" else worker_floor(messages)
    print(json.dumps(result))


# Observer (runs inside the lab) -----------------------------------------------------------------


def route_table(payload: bytes) -> int:
    """The table of an rtmsg payload (RTA_TABLE overrides rtm_table)."""
    table = payload[4]
    offset = 12  # sizeof(struct rtmsg)
    while offset + 4 <= len(payload):
        alen, atype = struct.unpack_from("=HH", payload, offset)
        if alen < 4:
            break
        if atype & 0x3FFF == RTA_TABLE:
            return int(struct.unpack_from("=I", payload, offset + 4)[0])
        offset += (alen + 3) & ~3
    return table


def rule_attrs(payload: bytes) -> tuple[int, int]:
    """(priority, protocol) of a fib_rule_hdr + attributes payload."""
    prio = proto = 0
    offset = 12  # sizeof(struct fib_rule_hdr)
    while offset + 4 <= len(payload):
        alen, atype = struct.unpack_from("=HH", payload, offset)
        if alen < 4:
            break
        atype &= 0x3FFF
        if atype == FRA_PRIORITY:
            prio = struct.unpack_from("=I", payload, offset + 4)[0]
        elif atype == FRA_PROTOCOL:
            proto = payload[offset + 4]
        offset += (alen + 3) & ~3
    return prio, proto


def observer_main() -> None:
    import asyncio

    asyncio.run(_observer())


async def _observer() -> None:
    """Timestamps (time.monotonic) every IPv4 rule notification and every networkd link
    AdministrativeState change. Keeps raw bytes while measuring; parses only on "dump"."""
    import asyncio

    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    loop = asyncio.get_running_loop()
    now = time.monotonic
    raw: list[tuple[float, bytes]] = []
    states: list[tuple[float, int, str]] = []
    overruns = 0
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    sock.bind((0, (1 << (RTNLGRP_IPV4_RULE - 1)) | (1 << (RTNLGRP_IPV4_ROUTE - 1))))
    sock.setblocking(False)
    recv, append = sock.recv, raw.append

    def readable() -> None:
        nonlocal overruns
        while True:
            try:
                data = recv(8192)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                overruns += 1
                continue
            append((now(), data))

    loop.add_reader(sock.fileno(), readable)

    def on_message(msg: Message) -> None:
        if (msg.message_type == MessageType.SIGNAL and msg.member == "PropertiesChanged"
                and msg.body and msg.body[0] == "org.freedesktop.network1.Link"
                and "AdministrativeState" in msg.body[1]):
            t = now()
            label = (msg.path or "").rsplit("/", 1)[-1]  # "_33" -> ifindex 3 (first char escaped)
            try:
                index = int(chr(int(label[1:3], 16)) + label[3:])
            except ValueError:
                return
            states.append((t, index, str(msg.body[1]["AdministrativeState"].value)))

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    bus.add_message_handler(on_message)
    await bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
        member="AddMatch", signature="s",
        body=["type='signal',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',"
              "path_namespace='/org/freedesktop/network1'"],
    ))
    print(json.dumps({"ready": True}), flush=True)
    keys: dict[bytes, int] = {}
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "dump":
            break
        readable()
        batch, raw[:] = list(raw), []
        rules, routes = [], []
        for t, data in batch:
            offset = 0
            while offset + HDR.size <= len(data):
                length, mtype, _flags, _seq, port = HDR.unpack_from(data, offset)
                if length < HDR.size:
                    break
                if mtype in (RTM_NEWRULE, RTM_DELRULE):
                    payload = bytes(data[offset + HDR.size : offset + length])
                    prio, proto = rule_attrs(payload)
                    key = keys.setdefault(payload, len(keys))
                    rules.append((round(t, 6), "N" if mtype == RTM_NEWRULE else "D", key, prio, proto, port))
                elif mtype in (RTM_NEWROUTE, RTM_DELROUTE):
                    table = route_table(data[offset + HDR.size : offset + length])
                    if table not in (253, 254, 255):  # per-ENI tables only
                        routes.append((round(t, 6), "N" if mtype == RTM_NEWROUTE else "D", table))
                offset += (length + 3) & ~3
        out = {"rules": rules, "routes": routes, "states": [(round(t, 6), i, s) for t, i, s in states],
               "overruns": overruns}
        states.clear()
        overruns = 0
        print(json.dumps(out), flush=True)
    bus.disconnect()


class Observer:
    def __init__(self, lab: Any) -> None:
        self.proc = lab.popen([sys.executable, "-m", "bench.bench", "--observer"], env={"PYTHONPATH": str(ROOT)},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
        if not json.loads(self._line(20.0)).get("ready"):
            raise RuntimeError("observer did not start")

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise RuntimeError("observer: no answer")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"observer exited ({self.proc.poll()})")
        return line

    def dump(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("dump\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self._line(20.0))
        return result

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)


# Part 2: repair latency in the lab ------------------------------------------------------------------


def analyse(events: dict[str, Any], eth1: int, table: int, t_cmd: float) -> dict[str, Any]:
    """One reconfigure, from the observer's events: outage of protected rules and networkd's timing."""
    missing: set[int] = set()
    deleted: set[int] = set()
    t_loss = t_back = t_last_del = None
    whole_again = 0
    for t, kind, key, _prio, proto, _port in events["rules"]:
        if proto in (RTPROT_KERNEL, RTPROT_STATIC):  # outside the daemon's scope: not protected
            continue
        if kind == "D":
            if t_loss is None:
                t_loss = t
            t_last_del = t
            missing.add(key)
            deleted.add(key)
        elif key in missing:
            missing.discard(key)
            if not missing:
                t_back = t
                whole_again += 1
    if t_loss is None:
        raise TrialError("reconfigure eth1 deleted no protected rule")
    if missing or t_back is None:
        raise TrialError(f"{len(missing)} deleted rules never came back")
    eth1_states = [(t, s) for t, i, s in events["states"] if i == eth1 and t >= t_cmd]
    t_configuring = next((t for t, s in eth1_states if s == "configuring"), None)
    t_configured = next((t for t, s in eth1_states if s == "configured" and t_configuring and t > t_configuring),
                        None)
    # eth1's table routes go with its address, mostly without a notification: all we can see is
    # when they are added back (the daemon restores them after its post-settle re-read).
    route_adds = [t for t, kind, tbl in events["routes"] if kind == "N" and tbl == table and t >= t_loss]
    return {
        "deleted": len(deleted),
        "t_last_del": t_last_del,
        "routes_back_ms": (max(route_adds) - t_loss) * 1000 if route_adds else None,
        "route_dels_seen": sum(1 for _t, kind, tbl in events["routes"] if kind == "D" and tbl == table),
        "outage_ms": (t_back - t_loss) * 1000,
        "cmd_to_loss_ms": (t_loss - t_cmd) * 1000,
        "whole_again": whole_again,  # >1: the node was whole, then lost rules again (re-wipe)
        "configuring_to_configured_ms": (t_configured - t_configuring) * 1000 if t_configured and t_configuring
        else None,
        "loss_to_configured_ms": (t_configured - t_loss) * 1000 if t_configured else None,
        "configured_to_back_ms": (t_back - t_configured) * 1000 if t_configured else None,
        "overruns": events["overruns"],
        "t_configured": t_configured,
    }


def daemon_pid(proc: subprocess.Popen[str]) -> int:
    """The python process behind the Daemon's nsenter wrapper (nsenter execs, or forks one child)."""
    pid = proc.pid
    for _ in range(3):
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() != "nsenter":
                return pid
        children = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
        if len(children) != 1:
            raise RuntimeError(f"cannot find the daemon under pid {pid}: children {children}")
        pid = children[0]
    return pid


def rss(pid: int) -> dict[str, float]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = float(value.split()[0])  # kB
    return fields


def timed_daemon_class() -> Any:
    from tests.daemon import Daemon

    class TimedDaemon(Daemon):  # type: ignore[misc]
        """tests.daemon.Daemon that also notes when each log line arrived (time.monotonic)."""

        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.stamps: list[float] = []

        def _read_log(self, proc: subprocess.Popen[str]) -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                t = time.monotonic()
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self.stamps.append(t)
                    self._cond.notify_all()

        def stamps_of(self, needle: str, start: int, until: float | None) -> list[float]:
            with self._cond:
                pairs = list(zip(self.stamps[start:], self.lines[start:], strict=True))
            return [t for t, line in pairs if needle in line and (until is None or t <= until)]

        def repair_stamps(self, start: int) -> list[tuple[float, dict[str, str]]]:
            with self._cond:
                pairs = list(zip(self.stamps[start:], self.lines[start:], strict=True))
            return [(t, dict(kv.split("=", 1) for kv in line.split(" repair ", 1)[1].split()))
                    for t, line in pairs if " repair trigger=" in line]

    return TimedDaemon


def part2(pod_counts: Sequence[int], iterations: dict[int, int],
          lab_kwargs: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    from tests.daemon import route_set, rule_set, wait_until
    from tests.lab import Lab, pod_ips

    out: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    for pods in pod_counts:
        log(f"lab: {pods} pods")
        with Lab(**(lab_kwargs or {})) as lab, tempfile.TemporaryDirectory(prefix="ndhb-state-") as tmp:
            enis = [lab.add_eni(1), lab.add_eni(2)]
            # eth2 appearing wiped eth1's 32765 rule (networkd); put both back like ipamd does
            lab.ip_batch([f"rule add from {e.ip} lookup {e.table} priority 32765" for e in enis], force=True)
            lab.node_rules()
            lab.add_pods_bulk(pod_ips(1, pods // 2), 1)
            lab.add_pods_bulk(pod_ips(2, pods - pods // 2), 2)
            lab.wait_settled()

            def whole() -> tuple[frozenset[Any], frozenset[Any]]:
                return rule_set(lab, (4,)), route_set(lab, (2, 3))

            want = whole()
            daemon = timed_daemon_class()(lab, Path(tmp) / "state", log_level="info").start()
            observer = Observer(lab)
            samples: list[dict[str, Any]] = []
            try:
                time.sleep(1.5)  # the daemon's first snapshot save (SAVE_DELAY) is behind us
                for it in range(iterations[pods]):
                    observer.dump()  # discard anything before this iteration
                    mark = daemon.mark()
                    t_cmd = time.monotonic()
                    lab.reconfigure("eth1")
                    # Block on the daemon's log (no polling subprocesses while the outage runs).
                    daemon.wait_log(r" repair trigger=", 15, start=mark)
                    wait_until(lambda want=want: whole() == want, 15, "the node to be whole again", interval=0.05)
                    lab.wait_settled()
                    time.sleep(1.2)  # a second repair (routes) and the delayed snapshot save land here
                    s = analyse(observer.dump(), enis[0].ifindex, enis[0].table, t_cmd)
                    stamped = daemon.repair_stamps(mark)
                    repairs = [r for _t, r in stamped]
                    rule_repairs = [(t, r) for t, r in stamped if int(r["rules_restored"]) > 0]
                    s["repairs"] = repairs
                    s["duration_ms"] = float(rule_repairs[0][1]["duration_ms"]) if rule_repairs else None
                    # The repair line is logged when the batch is done: its arrival minus duration_ms
                    # is (about) when the replay started.
                    s["configured_to_replay_ms"] = None
                    if rule_repairs and s["t_configured"] is not None:
                        t_line, r = rule_repairs[0]
                        s["configured_to_replay_ms"] = (t_line - float(r["duration_ms"]) / 1000
                                                        - s["t_configured"]) * 1000
                    # How far behind the kernel the daemon's monitor was: its last "lost N protected
                    # entries" line before the replay vs the last deletion the observer saw.
                    lost_lines = daemon.stamps_of(" lost ", mark, rule_repairs[0][0] if rule_repairs else None)
                    s["monitor_lag_ms"] = (lost_lines[-1] - s["t_last_del"]) * 1000 if lost_lines else None
                    s["rules_restored"] = sum(int(r["rules_restored"]) for r in repairs)
                    s["routes_restored"] = sum(int(r["routes_restored"]) for r in repairs)
                    samples.append(s)
                    log(f"  {pods} pods #{it + 1}: outage {s['outage_ms']:.1f} ms, daemon {s['duration_ms']} ms, "
                        f"deleted {s['deleted']}, configured->back {s['configured_to_back_ms']}")
                if pods == pod_counts[-1]:
                    time.sleep(2.0)
                    pid = daemon_pid(daemon.proc) if daemon.proc else 0
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = f.read().replace(b"\0", b" ").decode().strip()
                    memory = {"pods": pods, "pid": pid, "cmdline": cmdline, **rss(pid)}
            finally:
                observer.close()
                daemon.close()
        out[str(pods)] = summarize(pods, samples)
    return out, memory


def _stat(xs: list[float | None]) -> dict[str, float | None]:
    vals = [x for x in xs if x is not None]
    if not vals:
        return {"p50": None, "max": None, "min": None, "n": 0}
    return {"p50": median(vals), "max": max(vals), "min": min(vals), "n": len(vals)}


def summarize(pods: int, samples: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("outage_ms", "duration_ms", "configured_to_back_ms", "configuring_to_configured_ms",
            "loss_to_configured_ms", "cmd_to_loss_ms", "configured_to_replay_ms", "monitor_lag_ms",
            "routes_back_ms")
    stats = {k: _stat([s[k] for s in samples]) for k in keys}
    target = LATENCY_TARGET_MS.get(pods)
    p50 = stats["outage_ms"]["p50"]
    return {
        "pods": pods,
        "iterations": len(samples),
        "rules_deleted": sorted({s["deleted"] for s in samples}),
        "rewipes": sum(1 for s in samples if s["whole_again"] > 1),
        "routes_restored": sorted({s["routes_restored"] for s in samples}),
        "overruns": sum(s["overruns"] for s in samples),
        "stats": stats,
        "target_ms": target,
        "target_pass": None if target is None or p50 is None else p50 <= target,
        "samples": samples,
    }


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


def report_part2(res: dict[str, Any], memory: dict[str, Any]) -> None:
    print("\n## Part 2: end-to-end repair after `networkctl reconfigure eth1` (real networkd in the lab), ms")
    hdr = f"{'pods':>5} {'iter':>4} {'lost':>5} " + " ".join(f"{h:>{w}}" for h, _k, _q, w in PART2_COLUMNS)
    print(hdr + "  target")
    print("-" * (len(hdr) + 24))
    for r in res.values():
        st = r["stats"]
        verdict = "n/a" if r["target_pass"] is None else ("PASS" if r["target_pass"] else "MISS")
        lost = ",".join(str(x) for x in r["rules_deleted"])
        cells = " ".join(_cell(st, k, q, w) for _h, k, q, w in PART2_COLUMNS)
        print(f"{r['pods']:>5} {r['iterations']:>4} {lost:>5} {cells}  outage p50<={r['target_ms']:.0f} {verdict}")
    print("""\
outage     first RTM_DELRULE of a protected rule -> every deleted rule re-added (RTM_NEWRULE seen for each),
           timed by an independent observer in the lab netns (raw netlink monitor + D-Bus signals)
nd cfg     networkd's own configuring -> configured for eth1 (AdministrativeState on D-Bus)
loss->cfg  first rule lost -> eth1 configured: the part of the outage networkd itself takes
cfg->back  eth1 configured -> all rules back: the repair once networkd has settled (the daemon waits
           for that by design, so it is not wiped again half-way)
react      eth1 configured -> the daemon's replay starts (its repair log line's arrival - duration_ms)
daemon     the daemon's own duration_ms (plan + batch + acks) from its `repair` log line""")
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
    if memory:
        print("\n## Part 3: daemon idle memory")
        mb = memory["VmRSS"] * 1024 / 1e6
        print(f"pid {memory['pid']}: {memory['cmdline'][:100]}")
        print(f"after the {memory['pods']}-pod runs, idle: VmRSS {memory['VmRSS']:.0f} kB = {mb:.1f} MB "
              f"({memory['VmRSS'] / 1024:.1f} MiB), VmHWM {memory['VmHWM'] / 1024:.1f} MiB, "
              f"RssAnon {memory.get('RssAnon', 0) / 1024:.1f} MiB; "
              f"target <= {RSS_TARGET_MB:.0f} MB: {'PASS' if mb <= RSS_TARGET_MB else 'MISS'}")


# Main ------------------------------------------------------------------------------------------------


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__.split("\n")[0])
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
    ap.add_argument("--worker", choices=("a", "d"), help=argparse.SUPPRESS)
    ap.add_argument("--netns", help=argparse.SUPPRESS)
    ap.add_argument("--parent-netns", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--msgs", help=argparse.SUPPRESS)
    ap.add_argument("--observer", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.netns, args.parent_netns, args.msgs)
        return 0
    if args.observer:
        observer_main()
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2

    atexit.register(Netns.close_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    m = machine()
    print("# netd-hook benchmark" + (" (--quick)" if args.quick else ""))
    print(f"machine: nproc={m['nproc']} ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}, "
          f"{m['iproute2']}, {m['networkd']}")
    if args.quick:
        sizes, repeats, c_sample = [500, 2000], {500: 3, 2000: 3}, {2000: 500}
        pod_counts, iterations = [300], {300: 8}
    else:
        sizes, repeats, c_sample = [500, 2000, 10000], {500: 5, 2000: 5, 10000: 3}, {}
        pod_counts, iterations = [300, 1000], {300: 15, 1000: 10}
    if args.pods:
        pod_counts = args.pods
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
            result["replay"] = part1(sizes, repeats, c_sample)
            report_part1(result["replay"], repeats)
            sys.stdout.flush()
        if not args.skip_lab:
            log(f"part 2: repair latency in the lab (networkd {args.networkd}, "
                f"{'socket-activated' if args.activation == 'socket' else 'self-started'}, udev)")
            result["latency"], result["memory"] = part2(pod_counts, iterations, lab_kwargs)
            report_part2(result["latency"], result["memory"])
    finally:
        Netns.close_all()
        result["elapsed_s"] = time.monotonic() - started
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    print(f"\ntotal {result['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
