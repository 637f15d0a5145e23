"""Part 1's senders (a) and (d), run inside the trial's namespace by bench.replay:

    ip netns exec NS python -m bench.worker a|d --netns NS --parent-netns INODE --msgs FILE

FILE holds the requests, pre-encoded and laid end to end. Prints one JSON line: ms, acked,
errors. Refuses to send a single rule unless it really sits in the trial namespace."""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from bench.rtnl import (
    ACK,
    ACK_ROOM,
    NETLINK_CAP_ACK,
    NETLINK_ROUTE,
    NLM_F_ACK,
    SO_RCVBUFFORCE,
    SO_SNDBUFFORCE,
    SOL_NETLINK,
    messages,
)


def split_messages(data: bytes) -> list[bytes]:
    return [data[offset : offset + length] for offset, length, _type, _port in messages(data)]


def check_netns(name: str, parent_ino: int) -> None:
    """Refuse to send a single rule unless this process really sits in the trial namespace
    (and not in the namespace of the script that started it)."""
    if not name.startswith("ndhb-") or "/" in name:
        raise SystemExit(f"refusing: {name!r} is not a benchmark namespace")
    mine = os.stat("/proc/self/ns/net").st_ino
    if mine != os.stat(f"/run/netns/{name}").st_ino or mine == parent_ino:
        raise SystemExit(f"refusing: not inside network namespace {name}")


def worker_writer(msgs: list[bytes]) -> dict[str, Any]:
    """(a) netd-hook's BatchWriter.send, its ack and any errors included."""
    import anyio

    from netd_hook.adapters.netlink import DEL_FLAGS, RTM_DELRULE, BatchWriter, encode_rule, open_socket
    from netd_hook.core.model import Rule

    sock = open_socket()  # the daemon keeps its batch socket open: not part of the repair

    async def go() -> tuple[int, Any]:
        writer = BatchWriter(sock)
        # Warm, as the daemon's writer is when a wipe comes (a fresh process's first send costs
        # ~0.5 ms more, most of a 500-rule batch's Python): one delete of a rule nobody has,
        # answered ENOENT, changing nothing.
        stray = Rule(socket.AF_INET, 32000, 250, src="192.0.2.1/32")
        await writer.send([encode_rule(stray, RTM_DELRULE, DEL_FLAGS)], timeout=10)
        started = time.perf_counter_ns()
        result = await writer.send(msgs, timeout=10)
        return time.perf_counter_ns() - started, result

    ns, result = anyio.run(go)
    sock.close()
    errors = len(result.failed) + len(result.existed) + (len(msgs) if result.unknown else 0)
    return {"ms": ns / 1e6, "acked": len(result.acked), "errors": errors, "unknown": result.unknown}


def worker_floor(msgs: list[bytes]) -> dict[str, Any]:
    """(d) the kernel floor: the same bytes in one prebuilt buffer, one send, a bare recv_into loop.
    Only the last message asks for an ack, as netd-hook's writer does since 0.5.0 (its encoder
    leaves NLM_F_ACK out): the kernel's own work, without 2,000 acks to build."""
    n = len(msgs)
    base = 1
    buf = bytearray(b"".join(msgs))
    offset = 0
    for i, m in enumerate(msgs):
        struct.pack_into("=I", buf, offset + 8, base + i)
        offset += len(m)
    last_at = offset - len(msgs[-1])
    struct.pack_into("=H", buf, last_at + 6, struct.unpack_from("=H", buf, last_at + 6)[0] | NLM_F_ACK)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.split("\n")[0])
    ap.add_argument("method", choices=("a", "d"))
    ap.add_argument("--netns", required=True)
    ap.add_argument("--parent-netns", type=int, default=0)
    ap.add_argument("--msgs", required=True)
    args = ap.parse_args(argv)
    check_netns(args.netns, args.parent_netns)
    msgs = split_messages(Path(args.msgs).read_bytes())
    result = worker_writer(msgs) if args.method == "a" else worker_floor(msgs)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
