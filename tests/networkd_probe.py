"""Run `netd_hook.adapters.networkd.watch` and print every event as one JSON line (for test_networkd_lab).

    python -m tests.networkd_probe [--address ADDRESS]

Each line carries the counters as they were right after the event. A line
{"event": "Started"} follows task_status.started(); SIGUSR1 prints {"event": "Counters"};
SIGTERM ends the probe cleanly. Logs (debug) go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import signal
import sys
from typing import Any

import anyio

from netd_hook.adapters.networkd import BusCounters, OwnerPid, watch
from netd_hook.core import decide


def event_json(event: object) -> dict[str, Any]:
    d: dict[str, Any] = {"event": type(event).__name__}
    if isinstance(event, (decide.OwnerChanged, decide.LinkChanged)):
        d["owner"] = event.owner
    if isinstance(event, decide.LinksListed):
        d["owner"] = event.owner
        d["states"] = {str(i): s for i, s in sorted(event.states.items())}
    if isinstance(event, decide.LinkChanged):
        d.update(index=event.index, state=event.state, name=event.name)
    if isinstance(event, OwnerPid):
        d["pid"] = event.pid
    return d


async def main(address: str | None) -> None:
    counters = BusCounters()

    def write(d: dict[str, Any]) -> None:
        d["counters"] = dataclasses.asdict(counters)
        sys.stdout.write(json.dumps(d) + "\n")
        sys.stdout.flush()

    def emit(event: object) -> None:
        write(event_json(event))

    # The receiver is open before anything else so that an early SIGUSR1 cannot kill us.
    with anyio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            await tg.start(functools.partial(watch, emit, counters, address=address))
            write({"event": "Started"})
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    write({"event": "Counters"})
                else:
                    tg.cancel_scope.cancel()
                    break


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--address")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(relativeCreated)d %(name)s %(message)s")
    anyio.run(main, args.address, backend="asyncio")
