"""Part 2's independent observer: a process in the lab (``python -m bench.observer``, started by
``Observer``) that timestamps (time.monotonic) every IPv4 rule and route notification (a raw
netlink monitor socket) and every networkd link AdministrativeState change (D-Bus signals).
It keeps raw bytes while the outage runs and decodes only when asked:

    stdin  "dump"   -> one JSON line {"rules": [...], "routes": [...], "states": [...], "overruns": N}
                       with everything seen since the previous dump; any other line ends it
    rules  [t, "N"|"D", key, priority, protocol, port, seq]   key: one number per distinct rule (its
                                                 bytes); port, seq: the nlmsg_pid and nlmsg_seq of
                                                 the request behind the notification
    routes [t, "N"|"D", table]                           per-ENI tables only
    states [t, ifindex, AdministrativeState]
"""

from __future__ import annotations

import asyncio
import errno
import json
import select
import socket
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT
from bench.rtnl import (
    HDR,
    NETLINK_ROUTE,
    RESERVED_TABLES,
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    RTNLGRP_IPV4_ROUTE,
    RTNLGRP_IPV4_RULE,
    SO_RCVBUFFORCE,
    messages,
    route_table,
    rule_attrs,
)

Rules = list[tuple[float, str, int, int, int, int, int]]
Routes = list[tuple[float, str, int]]


def decode(batch: list[tuple[float, bytes]], keys: dict[bytes, int]) -> tuple[Rules, Routes]:
    """The rule and route events in received datagrams. ``keys`` numbers each distinct rule
    payload, across dumps, so that a deletion and the re-add of the same rule share a key."""
    rules: Rules = []
    routes: Routes = []
    for t, data in batch:
        for offset, length, mtype, port in messages(data):
            seq = HDR.unpack_from(data, offset)[3]
            payload = bytes(data[offset + HDR.size : offset + length])
            if mtype in (RTM_NEWRULE, RTM_DELRULE):
                prio, proto = rule_attrs(payload)
                key = keys.setdefault(payload, len(keys))
                rules.append((round(t, 6), "N" if mtype == RTM_NEWRULE else "D", key, prio, proto, port, seq))
            elif mtype in (RTM_NEWROUTE, RTM_DELROUTE):
                table = route_table(payload)
                if table not in RESERVED_TABLES:  # per-ENI tables only
                    routes.append((round(t, 6), "N" if mtype == RTM_NEWROUTE else "D", table))
    return rules, routes


def link_index(path: str) -> int | None:
    """The ifindex in a networkd link object path: ".../link/_33" -> 3 (the first digit escaped)."""
    label = path.rsplit("/", 1)[-1]
    try:
        return int(chr(int(label[1:3], 16)) + label[3:])
    except ValueError:
        return None


async def observe() -> None:
    """The observer process's whole life: subscribe, say ready, answer dumps until told to stop."""
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
            index = link_index(msg.path or "")
            if index is not None:
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
        rules, routes = decode(batch, keys)
        out = {"rules": rules, "routes": routes, "states": [(round(t, 6), i, s) for t, i, s in states],
               "overruns": overruns}
        states.clear()
        overruns = 0
        print(json.dumps(out), flush=True)
    bus.disconnect()


class Observer:
    """The observer process in ``lab`` and its dump protocol, from the benchmark's side."""

    def __init__(self, lab: Any) -> None:
        self.proc = lab.popen([sys.executable, "-m", "bench.observer"], env={"PYTHONPATH": str(ROOT)},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
        if not json.loads(self._line(20.0)).get("ready"):
            raise RuntimeError("observer did not start")

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise RuntimeError("observer: no answer")
        line: str = self.proc.stdout.readline()
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


if __name__ == "__main__":
    asyncio.run(observe())
