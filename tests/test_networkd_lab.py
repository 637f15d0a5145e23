"""`networkd.watch` against real systemd-networkd and dbus-daemon (tests/lab.py).

The watcher runs in tests/networkd_probe.py inside the lab's namespaces and prints one JSON line
per event; results are checked against independent oracles: sysfs ifindexes, networkctl's
view of the links, the lab's own PIDs and `GetNameOwner` via busctl.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab import NETWORKD, SETTLED_STATES, Lab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root (netns, mounts)"),
    pytest.mark.skipif(not os.path.exists(NETWORKD), reason=f"{NETWORKD} not installed"),
]

ROOT = Path(__file__).resolve().parents[1]
Event = dict[str, Any]


class Probe:
    """tests/networkd_probe.py running inside the lab; events arrive on a queue."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the probe, see close()
        self.proc = lab.popen(
            [sys.executable, "-m", "tests.networkd_probe"],
            env={"PYTHONPATH": str(ROOT)},  # nsenter -m does not keep our working directory
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.events: queue.Queue[Event | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.startup = self.until(lambda e: e["event"] == "Started", 10)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put(None)

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-3000:]

    def until(self, pred: Callable[[Event], bool], timeout: float = 5.0) -> list[Event]:
        """Events up to and including the first one matching `pred`."""
        seen: list[Event] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                ev = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timeout; events: {seen}\nprobe log:\n{self.log()}") from None
            if ev is None:
                raise AssertionError(f"probe exited ({self.proc.poll()}); events: {seen}\nlog:\n{self.log()}")
            seen.append(ev)
            if pred(ev):
                return seen

    def drain(self) -> list[Event]:
        seen: list[Event] = []
        while True:
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                return seen
            assert ev is not None, self.log()
            seen.append(ev)

    def counters(self) -> tuple[list[Event], dict[str, int]]:
        """Ask for the counters (SIGUSR1); also returns the events that came before them."""
        self.proc.send_signal(signal.SIGUSR1)
        seen = self.until(lambda e: e["event"] == "Counters")
        return seen[:-1], seen[-1]["counters"]

    def counters_until(self, pred: Callable[[dict[str, int]], bool], timeout: float = 3.0) -> list[Event]:
        """Poll the counters until `pred` holds (a signal goes through the daemon to the probe)."""
        seen: list[Event] = []
        deadline = time.monotonic() + timeout
        while True:
            events, counters = self.counters()
            seen += events
            if pred(counters):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"counters {counters}; events {seen}\nlog:\n{self.log()}")
            time.sleep(0.02)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.stderr.close()

    def unique_name(self) -> str:
        """The probe's own connection name, found through the bus daemon by PID."""
        out = self.lab.busctl(
            "--json=short", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "ListNames"
        ).stdout
        for name in json.loads(out)["data"][0]:
            if not name.startswith(":"):
                continue
            r = self.lab.busctl(
                "--json=short",
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "GetConnectionUnixProcessID",
                "s",
                name,
                check=False,
            )
            if r.returncode == 0 and json.loads(r.stdout)["data"][0] == self.proc.pid:
                return str(name)
        raise AssertionError("probe's connection not found on the bus")


def ifindexes(lab: Lab) -> dict[str, int]:
    """name -> ifindex from the lab's sysfs (independent of networkd and the bus)."""
    return {name: int(lab.read_file(f"/sys/class/net/{name}/ifindex")) for name in lab.links()}


def oracle(lab: Lab) -> dict[int, str]:
    """ifindex -> AdministrativeState as networkctl reports it."""
    idx = ifindexes(lab)
    return {idx[name]: state for name, state in lab.link_states().items()}


def view_after(events: list[Event]) -> dict[int, str] | None:
    """The link states a consumer would hold after `events` (last LinksListed + LinkChanged)."""
    view: dict[int, str] | None = None
    for ev in events:
        if ev["event"] == "LinksListed":
            view = {int(i): s for i, s in ev["states"].items()}
        elif ev["event"] == "LinkChanged" and view is not None:
            view[ev["index"]] = ev["state"]
    return view


def wait_view(probe: Probe, lab: Lab, events: list[Event], timeout: float = 5.0) -> list[Event]:
    """Read events until the consumer's view equals networkctl's, all links settled."""
    deadline = time.monotonic() + timeout
    while True:
        truth = oracle(lab)
        if view_after(events) == truth and set(truth.values()) <= SETTLED_STATES:
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"view {view_after(events)} != networkctl {truth}")
        events += probe.counters()[0]
        time.sleep(0.02)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        lab.add_eni(1)
        yield lab


@pytest.fixture(scope="module")
def probe(lab: Lab) -> Iterator[Probe]:
    p = Probe(lab)
    try:
        yield p
    finally:
        p.close()


def test_initial_owner_and_listing(lab: Lab, probe: Probe) -> None:
    kinds = [e["event"] for e in probe.startup]
    assert kinds == ["OwnerChanged", "OwnerPid", "LinksListed", "Started"]
    owner = lab.name_owner()
    assert owner is not None
    assert probe.startup[0]["owner"] == owner
    assert probe.startup[1]["pid"] == lab.networkd_pid
    listed = probe.startup[2]
    assert listed["owner"] == owner
    states = {int(i): s for i, s in listed["states"].items()}
    idx = ifindexes(lab)
    assert set(states) == set(idx.values())  # every link, including lo and the veth peers
    assert states == oracle(lab)
    assert set(states.values()) <= SETTLED_STATES
    assert states[idx["eth0"]] == states[idx["eth1"]] == "configured"
    assert states[idx["lo"]] == "unmanaged"
    assert probe.startup[-1]["counters"] == {"rejected_signals": 0, "bad_values": 0, "reconnects": 0,
                                                "rejected_senders": []}


def test_reconfigure_goes_through_busy_to_configured(lab: Lab, probe: Probe) -> None:
    probe.drain()
    eth1 = ifindexes(lab)["eth1"]
    owner = lab.name_owner()
    lab.reconfigure("eth1")
    events = probe.until(lambda e: e["event"] == "LinkChanged" and e["index"] == eth1 and e["state"] == "configured")
    changes = [e for e in events if e["event"] == "LinkChanged"]
    assert all(e["owner"] == owner for e in changes)
    mine = [e["state"] for e in changes if e["index"] == eth1]
    assert {"initialized", "configuring"} & set(mine[:-1]), mine
    assert all(e["name"] == "eth1" for e in changes if e["index"] == eth1)
    assert events[-1]["counters"]["rejected_signals"] == 0


def test_restart_gives_new_owner_pid_and_listing(lab: Lab, probe: Probe) -> None:
    probe.drain()
    old = lab.name_owner()
    lab.restart_networkd()  # returns once the new networkd owns the name and links are settled
    new = lab.name_owner()
    assert new is not None and new != old
    events = probe.until(lambda e: e["event"] == "LinksListed")
    owners = [e["owner"] for e in events if e["event"] == "OwnerChanged"]
    assert owners == [None, new]
    pids = [e["pid"] for e in events if e["event"] == "OwnerPid"]
    assert pids == [None, lab.networkd_pid]
    assert events[-1]["owner"] == new
    assert [e["event"] for e in events if e["event"] != "LinkChanged"] == [
        "OwnerChanged",
        "OwnerPid",
        "OwnerChanged",
        "OwnerPid",
        "LinksListed",
    ]
    events = wait_view(probe, lab, events)
    assert all(e["owner"] == new for e in events if e["event"] == "LinkChanged")
    # networkd's own signals around its start are not mistaken for forgeries
    assert probe.counters()[1]["rejected_signals"] == 0


def test_forged_properties_changed_is_rejected(lab: Lab, probe: Probe) -> None:
    probe.drain()
    before = probe.counters()[1]
    eth1 = ifindexes(lab)["eth1"]
    # busctl has its own connection: a stranger, though root, to the bus and to us.
    lab.busctl(
        "emit",
        f"/org/freedesktop/network1/link/_3{eth1}",
        "org.freedesktop.DBus.Properties",
        "PropertiesChanged",
        "sa{sv}as",
        "org.freedesktop.network1.Link",
        "1",
        "AdministrativeState",
        "s",
        "configuring",
        "0",
    )
    events = probe.counters_until(lambda c: c["rejected_signals"] == before["rejected_signals"] + 1)
    assert [e for e in events if e["event"] == "LinkChanged"] == []
    after = probe.counters()[1]
    assert after["bad_values"] == before["bad_values"]
    # the forger's unique name, for the audit record (the service drains this list)
    new = after["rejected_senders"][len(before["rejected_senders"]):]
    assert len(new) == 1 and new[0].startswith(":1.") and new[0] != lab.name_owner()


def test_forged_name_owner_changed_is_ignored(lab: Lab, probe: Probe) -> None:
    probe.drain()
    owner = lab.name_owner()
    assert owner is not None
    before = probe.counters()[1]
    forged = (
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "NameOwnerChanged",
        "sss",
        "org.freedesktop.network1",
        owner,
        ":1.99",
    )
    # Broadcast: the daemon itself drops it, our match rule says sender='org.freedesktop.DBus'.
    lab.busctl("emit", *forged)
    # Unicast to the probe's connection bypasses match rules: now only our check stands.
    lab.busctl("emit", f"--destination={probe.unique_name()}", *forged)
    events = probe.counters_until(lambda c: c["rejected_signals"] == before["rejected_signals"] + 1)
    assert [e for e in events if e["event"] in ("OwnerChanged", "OwnerPid", "LinksListed")] == []
    # ... and the real owner is still trusted.
    eth1 = ifindexes(lab)["eth1"]
    lab.reconfigure("eth1")
    events = probe.until(lambda e: e["event"] == "LinkChanged" and e["index"] == eth1 and e["state"] == "configured")
    assert all(e["owner"] == owner for e in events if e["event"] == "LinkChanged")
    assert probe.counters()[1]["rejected_signals"] == before["rejected_signals"] + 1


def test_bus_daemon_restart_reconnects() -> None:
    """dbus-daemon dies and comes back. networkd 252 does not reconnect to a new bus by itself,
    so a new networkd is started on the new bus, as a reboot of the bus would require anyway.
    Uses its own lab: this one's dbus-daemon and networkd are replaced behind its back."""
    with Lab() as lab:
        probe = Probe(lab)
        try:
            old_pid = lab.networkd_pid
            assert lab.dbus_pid is not None and old_pid is not None
            os.kill(lab.dbus_pid, signal.SIGTERM)
            events = probe.until(lambda e: e["event"] == "OwnerPid")
            assert [(e["event"], e.get("owner", e.get("pid"))) for e in events] == [
                ("OwnerChanged", None),
                ("OwnerPid", None),
            ]
            dbus = lab.popen(
                ["dbus-daemon", "--system", "--nofork", "--nopidfile", "--print-pid"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert dbus.stdout is not None and dbus.stdout.readline().strip().isdigit()
            # The probe reconnects (backoff 0.1 s doubling) and finds nobody owning the name.
            events = probe.until(lambda e: e["counters"]["reconnects"] == 1 and e["event"] == "OwnerPid")
            assert events[-1]["pid"] is None
            # the reconnect itself wakes the daemon's loop, which publishes the new count
            assert [e["counters"]["reconnects"] for e in events if e["event"] == "Counted"] == [1]
            os.kill(old_pid, signal.SIGTERM)
            networkd = lab.popen(
                [NETWORKD],
                env={"SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_LOG_TARGET": "console"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            events = probe.until(lambda e: e["event"] == "LinksListed", 10)
            owner = lab.name_owner()
            assert owner is not None
            assert [e.get("owner") for e in events if e["event"] == "OwnerChanged"] == [owner]
            assert [e["pid"] for e in events if e["event"] == "OwnerPid"] == [networkd.pid]
            assert events[-1]["owner"] == owner
            wait_view(probe, lab, events)
            assert probe.counters()[1] == {"rejected_signals": 0, "bad_values": 0, "reconnects": 1,
                                              "rejected_senders": []}
        finally:
            probe.close()
