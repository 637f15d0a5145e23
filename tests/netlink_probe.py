"""Run inside a lab namespace: dump with netd-hook's netlink adapter and print JSON (tests only)."""

from __future__ import annotations

import dataclasses
import json
import sys

import anyio

from netd_hook.adapters import netlink
from netd_hook.core.apply import Writer
from netd_hook.core.model import Rule
from tests.drill import FaultyWriter


def dump() -> None:
    d = netlink.dump_sync(netlink.open_socket())
    print(json.dumps({
        "rules": [dataclasses.asdict(r) for r in d.rules],
        "routes": [dataclasses.asdict(r) for r in d.routes],
        "host_routes": [dataclasses.asdict(h) for h in d.host_routes],
        "local_addresses": [dataclasses.asdict(a) for a in d.local_addresses],
        "links": [dataclasses.asdict(lk) for lk in d.links],
    }))


async def batch(n: int, bad: int) -> None:
    """Add n rules in one batch; with bad > 0, the bad-th one is malformed (EAFNOSUPPORT)."""
    rules = [Rule(2, 3000, 7, src=f"10.77.{i // 250}.{i % 250}/32") for i in range(n)]
    writer: Writer = netlink.BatchWriter(netlink.open_socket())
    if bad:
        writer = FaultyWriter(writer, bad)
    msgs = [netlink.encode_rule(r, netlink.RTM_NEWRULE, netlink.ADD_FLAGS) for r in rules]
    res = await writer.send(msgs, timeout=5)
    print(json.dumps({"acked": len(res.acked), "existed": len(res.existed), "failed": res.failed,
                      "unknown": res.unknown}))


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        dump()
    else:
        anyio.run(batch, int(sys.argv[2]), int(sys.argv[3]))
