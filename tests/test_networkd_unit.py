"""Pure tests of the D-Bus edge: object paths, signal translation, and one session against a
scripted fake bus (ordering of listings and signals, owner changes, vanished links)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from dbus_fast import Message, MessageType, Variant

from netd_hook.adapters.networkd import (
    LINK_IFACE,
    NETWORKD,
    BadValue,
    BusCounters,
    Counted,
    OwnerPid,
    Rejected,
    link_index,
    link_path,
    translate,
    watch,
)
from netd_hook.adapters.networkd.session import _Session
from netd_hook.core import decide

PROPS = "org.freedesktop.DBus.Properties"
DBUS = "org.freedesktop.DBus"
OWNER = ":1.5"
P2 = "/org/freedesktop/network1/link/_32"


# link_index ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "index"),
    [
        (P2, 2),
        ("/org/freedesktop/network1/link/_31", 1),
        ("/org/freedesktop/network1/link/_310", 10),
        ("/org/freedesktop/network1/link/_3123", 123),
        ("/org/freedesktop/network1/link/_32147483647", 2**31 - 1),
    ],
)
def test_link_index_valid(path: str, index: int) -> None:
    assert link_index(path) == index
    assert link_path(index) == path


@pytest.mark.parametrize(
    "path",
    [
        "/org/freedesktop/network1/link/_30",  # ifindex 0 does not exist
        "/org/freedesktop/network1/link/_305",  # leading zero: not what sd-bus would build
        "/org/freedesktop/network1/link/_3-1",
        "/org/freedesktop/network1/link/_2d1",  # "-1" escaped
        "/org/freedesktop/network1/link/_32147483648",  # > INT32_MAX
        "/org/freedesktop/network1/link/_312345678901",  # too long
        "/org/freedesktop/network1/link/_3",
        "/org/freedesktop/network1/link/_3a",
        "/org/freedesktop/network1/link/_3\u0663",  # ARABIC-INDIC DIGIT THREE: str.isdigit() says yes
        "/org/freedesktop/network1/link/_32 ",
        "/org/freedesktop/network1/link/_32\n",
        "/org/freedesktop/network1/link/_32/x",
        "/org/freedesktop/network1/link/_32_",
        "/org/freedesktop/network1/link/32",
        "/org/freedesktop/network1/link/_",
        "/org/freedesktop/network1/link",
        "/org/freedesktop/network1/_32",
        "/org/freedesktop/network1",
        "/org/freedesktop/network2/link/_32",
        "/org/freedesktop/network1/link/_32/../_33",
        "",
    ],
)
def test_link_index_invalid(path: str) -> None:
    assert link_index(path) is None


@pytest.mark.parametrize("value", [None, b"/org/freedesktop/network1/link/_32", 2])
def test_link_index_not_a_string(value: object) -> None:
    assert link_index(value) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("index", [0, -1, 2**31, True, "2", 2.0])
def test_link_path_rejects(index: object) -> None:
    with pytest.raises(ValueError, match="ifindex"):
        link_path(index)  # type: ignore[arg-type]


# translate -------------------------------------------------------------------------------


def props(path: str = P2, sender: str | None = OWNER, owner: str | None = OWNER, **changed: object) -> object:
    body = [LINK_IFACE, {k: v for k, v in changed.items()}, []]
    return translate(sender, path, PROPS, "PropertiesChanged", body, owner)


def noc(*body: object, sender: str = DBUS) -> object:
    return translate(sender, "/org/freedesktop/DBus", DBUS, "NameOwnerChanged", list(body), OWNER)


@pytest.mark.parametrize("state", sorted(decide.KNOWN_STATES))
def test_translate_known_states(state: str) -> None:
    assert props(AdministrativeState=Variant("s", state)) == decide.LinkChanged(OWNER, 2, state)


def test_translate_link_changed_with_other_properties() -> None:
    ev = props(
        "/org/freedesktop/network1/link/_310",
        AdministrativeState=Variant("s", "configuring"),
        OperationalState=Variant("s", "routable"),
    )
    assert ev == decide.LinkChanged(OWNER, 10, "configuring")


def test_translate_rejects_foreign_sender() -> None:
    ev = props(sender=":1.99", AdministrativeState=Variant("s", "configuring"))
    assert isinstance(ev, Rejected)
    assert ":1.99" in ev.reason


def test_translate_rejects_everything_without_owner() -> None:
    assert isinstance(props(owner=None, AdministrativeState=Variant("s", "configured")), Rejected)


def test_translate_rejects_sender_none() -> None:
    assert isinstance(props(sender=None, AdministrativeState=Variant("s", "configured")), Rejected)


def test_translate_rejects_before_looking_at_the_body() -> None:
    # A stranger's garbage is a rejected signal, not a bad value from networkd.
    ev = translate(":1.99", P2, PROPS, "PropertiesChanged", ["x"], OWNER)
    assert isinstance(ev, Rejected)


def test_translate_ignores_other_properties() -> None:
    assert props(OperationalState=Variant("s", "routable")) is None
    assert props() is None


def test_translate_ignores_manager_properties() -> None:
    body = ["org.freedesktop.network1.Manager", {"OperationalState": Variant("s", "routable")}, []]
    assert translate(OWNER, "/org/freedesktop/network1", PROPS, "PropertiesChanged", body, OWNER) is None


def test_translate_ignores_paths_outside_network1() -> None:
    body = [LINK_IFACE, {"AdministrativeState": Variant("s", "configuring")}, []]
    for path in ("/org/freedesktop/login1", "/org/freedesktop/network10/link/_32", None):
        assert translate(":1.99", path, PROPS, "PropertiesChanged", body, OWNER) is None


@pytest.mark.parametrize(
    "path", ["/org/freedesktop/network1/link/_30", "/org/freedesktop/network1", "/org/freedesktop/network1/link/x"]
)
def test_translate_link_signal_on_bad_path(path: str) -> None:
    assert isinstance(props(path, AdministrativeState=Variant("s", "configured")), BadValue)


@pytest.mark.parametrize(
    "value",
    [
        Variant("s", "bogus"),
        Variant("s", ""),
        Variant("s", "Configured"),
        Variant("i", 3),
        Variant("as", ["configured"]),
        Variant("o", "/configured"),
        "configured",  # not a Variant
        None,
    ],
)
def test_translate_bad_state(value: object) -> None:
    ev = props(AdministrativeState=value)
    assert isinstance(ev, BadValue)
    assert "AdministrativeState" in ev.reason


@pytest.mark.parametrize("body", [[], [LINK_IFACE], [LINK_IFACE, {}], [LINK_IFACE, [], []], [1, {}, []]])
def test_translate_malformed_properties_body(body: list[object]) -> None:
    assert isinstance(translate(OWNER, P2, PROPS, "PropertiesChanged", body, OWNER), BadValue)


def test_translate_bad_value_reason_is_bounded_and_one_line() -> None:
    ev = props(AdministrativeState=Variant("s", "x\n" * 500))
    assert isinstance(ev, BadValue)
    assert "\n" not in ev.reason and len(ev.reason) < 200


def test_translate_name_owner_changed() -> None:
    assert noc(NETWORKD, "", ":1.6") == decide.OwnerChanged(":1.6")
    assert noc(NETWORKD, ":1.5", "") == decide.OwnerChanged(None)
    assert noc(NETWORKD, ":1.5", ":1.6") == decide.OwnerChanged(":1.6")


def test_translate_forged_name_owner_changed() -> None:
    ev = noc(NETWORKD, ":1.0", ":1.99", sender=":1.99")
    assert isinstance(ev, Rejected)


@pytest.mark.parametrize(
    "body",
    [
        [NETWORKD, "", "org.freedesktop.network1"],  # a well-known name is never an owner
        [NETWORKD, "", "1.6"],
        [NETWORKD, "", ":1.6\n"],
        [NETWORKD, "", 6],
        [NETWORKD, ""],
    ],
)
def test_translate_malformed_name_owner_changed(body: list[object]) -> None:
    assert isinstance(noc(*body), BadValue)


def test_translate_ignores_unrelated_signals() -> None:
    assert noc("org.freedesktop.login1", "", ":1.6") is None
    assert noc() is None
    assert translate(DBUS, "/org/freedesktop/DBus", DBUS, "NameAcquired", [":1.7"], OWNER) is None
    assert translate(OWNER, P2, LINK_IFACE, "Foo", [], OWNER) is None


# One session against a scripted fake bus --------------------------------------------------

Responder = Callable[[Message], Awaitable[Message]]


class FakeBus:
    """Just enough of dbus_fast.aio.MessageBus for _Session: replies come from `respond`."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.handlers: list[Callable[[Message], object]] = []
        self.calls: list[Message] = []
        self.connected = True
        self._serial = 0
        self._gone = anyio.Event()

    def add_message_handler(self, handler: Callable[[Message], object]) -> None:
        self.handlers.append(handler)

    async def call(self, msg: Message) -> Message:
        self._serial += 1
        msg.serial = self._serial
        self.calls.append(msg)
        return await self.respond(msg)

    async def wait_for_disconnect(self) -> None:
        await self._gone.wait()
        raise EOFError

    def lose(self) -> None:
        self.connected = False
        self._gone.set()

    def signal(self, sender: str, path: str, interface: str, member: str, signature: str, body: list[Any]) -> None:
        msg = Message(
            message_type=MessageType.SIGNAL,
            sender=sender,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body,
        )
        for handler in self.handlers:
            assert handler(msg) is None  # a truthy value would stop dbus-fast's dispatch

    def link_state(self, index: int, state: str, sender: str = OWNER) -> None:
        body = [LINK_IFACE, {"AdministrativeState": Variant("s", state)}, []]
        self.signal(sender, link_path(index), PROPS, "PropertiesChanged", "sa{sv}as", body)

    def owner_changed(self, old: str, new: str, sender: str = DBUS) -> None:
        self.signal(sender, "/org/freedesktop/DBus", DBUS, "NameOwnerChanged", "sss", [NETWORKD, old, new])


def ret(msg: Message, signature: str, *body: object) -> Message:
    return Message.new_method_return(msg, signature, list(body))


def err(msg: Message, name: str, text: str = "") -> Message:
    return Message.new_error(msg, name, text)


def links(*entries: tuple[int, str]) -> list[list[object]]:
    return [[i, name, link_path(i) if i > 0 else "/x"] for i, name in entries]


class Networkd:
    """Scripted networkd + bus daemon: owners, pids, links; `hold` pauses a reply."""

    def __init__(self, owner: str | None, links: dict[str, dict[int, tuple[str, str]]]) -> None:
        self.owner = owner
        self.links = links  # owner -> {ifindex: (name, state)}
        self.holds: dict[tuple[str, str], anyio.Event] = {}
        self.entered: dict[tuple[str, str], anyio.Event] = {}
        self.errors: dict[tuple[str, str], list[str]] = {}  # queued error names per call

    def hold(self, dest: str, what: str) -> tuple[anyio.Event, anyio.Event]:
        self.holds[(dest, what)] = anyio.Event()
        self.entered[(dest, what)] = anyio.Event()
        return self.entered[(dest, what)], self.holds[(dest, what)]

    async def respond(self, msg: Message) -> Message:
        dest = msg.destination or ""
        what = msg.member or ""
        if msg.member == "Get":
            what = f"Get {link_index(msg.path or '')}"
        key = (dest, what)
        if key in self.entered:
            self.entered[key].set()
            await self.holds[key].wait()
        if self.errors.get(key):
            return err(msg, self.errors[key].pop(0), "scripted")
        if dest == DBUS:
            if msg.member == "AddMatch":
                return ret(msg, "")
            if msg.member == "GetNameOwner":
                if self.owner is None:
                    return err(msg, "org.freedesktop.DBus.Error.NameHasNoOwner")
                return ret(msg, "s", self.owner)
            if msg.member == "GetConnectionUnixProcessID":
                if msg.body[0] not in self.links:
                    return err(msg, "org.freedesktop.DBus.Error.NameHasNoOwner")
                return ret(msg, "u", 1000 + int(msg.body[0].split(".")[1]))
        owned = self.links.get(dest)
        if owned is None:
            return err(msg, "org.freedesktop.DBus.Error.ServiceUnknown")
        if msg.member == "ListLinks":
            return ret(msg, "a(iso)", links(*((i, n) for i, (n, _) in owned.items())))
        index = link_index(msg.path or "")
        if msg.member == "Get" and msg.body == [LINK_IFACE, "AdministrativeState"] and index in owned:
            return ret(msg, "v", Variant("s", owned[index][1]))
        return err(msg, "org.freedesktop.DBus.Error.UnknownObject")


WAKEUPS: list[object] = []  # the Counted nudges, kept apart from the events the tests compare


def _keep(events: list[object]) -> Callable[[object], None]:
    def emit(ev: object) -> None:
        (WAKEUPS if isinstance(ev, Counted) else events).append(ev)
    return emit


async def run_session(nd: Networkd, scenario: Callable[[FakeBus, list[object]], Awaitable[None]]) -> BusCounters:
    """Run one _Session on a FakeBus; `scenario` drives it, then the connection is lost."""
    bus = FakeBus(nd.respond)
    events: list[object] = []
    counters = BusCounters()
    synced: list[int] = []
    session = _Session(bus, _keep(events), counters)  # type: ignore[arg-type]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(session.run, lambda: synced.append(len(events))))
            await scenario(bus, events)
            while not synced:
                await anyio.sleep(0.001)
            await anyio.sleep(0.01)
            assert len(synced) == 1, "on_synced is called exactly once"
            bus.lose()
    return counters


async def until(events: list[object], pred: Callable[[object], bool]) -> None:
    while not any(pred(e) for e in events):
        await anyio.sleep(0.001)


def listed(events: list[object]) -> list[decide.LinksListed]:
    return [e for e in events if isinstance(e, decide.LinksListed)]


def test_session_initial_listing() -> None:
    nd = Networkd(OWNER, {OWNER: {1: ("lo", "unmanaged"), 2: ("eth0", "configured")}})

    async def scenario(bus: FakeBus, events: list[object]) -> None:
        await until(events, lambda e: isinstance(e, decide.LinksListed))
        bus.link_state(2, "configuring")
        assert events == [
            decide.OwnerChanged(OWNER),
            OwnerPid(1005),
            decide.LinksListed(OWNER, {1: "unmanaged", 2: "configured"}),
            decide.LinkChanged(OWNER, 2, "configuring", name="eth0"),
        ]

    counters = anyio.run(run_session, nd, scenario, backend="asyncio")
    assert counters == BusCounters()


def test_session_subscribes_before_asking_for_the_owner() -> None:
    nd = Networkd(OWNER, {OWNER: {}})
    calls: list[str] = []

    async def scenario(bus: FakeBus, events: list[object]) -> None:
        await until(events, lambda e: isinstance(e, decide.LinksListed))
        calls.extend(f"{m.destination} {m.member}" for m in bus.calls)
        rules = [m.body[0] for m in bus.calls if m.member == "AddMatch"]
        assert "sender=" not in rules[0] and "path_namespace='/org/freedesktop/network1'" in rules[0]
        assert "sender='org.freedesktop.DBus'" in rules[1] and "arg0='org.freedesktop.network1'" in rules[1]

    anyio.run(run_session, nd, scenario, backend="asyncio")
    assert calls == [
        f"{DBUS} AddMatch",
        f"{DBUS} AddMatch",
        f"{DBUS} GetNameOwner",
        f"{DBUS} GetConnectionUnixProcessID",
        f"{OWNER} ListLinks",  # the unique name, never the well-known one
    ]


def test_session_signals_during_listing_win_over_older_replies() -> None:
    nd = Networkd(OWNER, {OWNER: {1: ("lo", "unmanaged"), 2: ("eth0", "configured"), 3: ("eth1", "configuring")}})
    entered, release = nd.hold(OWNER, "Get 3")

    async def scenario(bus: FakeBus, events: list[object]) -> None:
        await entered.wait()
        # networkd answered Get(3) = configuring before these; they arrive first here, but
        # what they say is newer than the reply still on its way.
        bus.link_state(3, "configured")
        bus.link_state(7, "configuring")  # a link added after ListLinks
        release.set()
        await until(events, lambda e: isinstance(e, decide.LinksListed))
        want = {1: "unmanaged", 2: "configured", 3: "configured", 7: "configuring"}
        assert listed(events) == [decide.LinksListed(OWNER, want)]
        # ... and they were passed on at once, too (decide needs the busy state to verify).
        assert decide.LinkChanged(OWNER, 3, "configured", name="eth1") in events
        assert decide.LinkChanged(OWNER, 7, "configuring") in events

    anyio.run(run_session, nd, scenario, backend="asyncio")


def test_session_link_vanishing_during_listing_is_skipped() -> None:
    nd = Networkd(OWNER, {OWNER: {1: ("lo", "unmanaged"), 2: ("eth0", "configured"), 9: ("veth", "unmanaged")}})
    nd.errors[(OWNER, "Get 9")] = ["org.freedesktop.DBus.Error.UnknownObject"]

    async def scenario(bus: FakeBus, events: list[object]) -> None:
        await until(events, lambda e: isinstance(e, decide.LinksListed))
        assert listed(events) == [decide.LinksListed(OWNER, {1: "unmanaged", 2: "configured"})]

    counters = anyio.run(run_session, nd, scenario, backend="asyncio")
    assert counters.bad_values == 0


def test_session_listing_failure_is_retried() -> None:
    nd = Networkd(OWNER, {OWNER: {2: ("eth0", "configured")}})
    nd.errors[(OWNER, "ListLinks")] = ["org.freedesktop.DBus.Error.Failed"]
    nd.errors[(OWNER, "Get 2")] = ["org.freedesktop.DBus.Error.LimitsExceeded"]

    async def scenario(bus: FakeBus, events: list[object]) -> None:
        await until(events, lambda e: isinstance(e, decide.LinksListed))
        assert listed(events) == [decide.LinksListed(OWNER, {2: "configured"})]
        assert [m.member for m in bus.calls].count("ListLinks") == 3
        assert events.count(OwnerPid(1005)) == 1

    anyio.run(run_session, nd, scenario, backend="asyncio")


def test_session_bad_values_in_listing() -> None:
    nd = Networkd(OWNER, {OWNER: {0: ("zero", "configured"), 2: ("eth0", "bogus"), 3: ("eth1\n", "configured")}})

    async def scenario(bus: FakeBus, events: list[object]) -> None:
        await until(events, lambda e: isinstance(e, decide.LinksListed))
        assert listed(events) == [decide.LinksListed(OWNER, {3: "configured"})]
        bus.link_state(3, "configuring")
        assert events[-1] == decide.LinkChanged(OWNER, 3, "configuring", name="")  # odd name not shown

    counters = anyio.run(run_session, nd, scenario, backend="asyncio")
    assert counters.bad_values == 2  # ifindex 0, state "bogus"


def test_session_owner_change_during_listing() -> None:
    old, new = ":1.5", ":1.6"
    nd = Networkd(old, {old: {2: ("eth0", "configured")}, new: {2: ("eth0", "configuring")}})
    entered, release = nd.hold(old, "ListLinks")

    async def scenario(bus: FakeBus, events: list[object]) -> None:
        await entered.wait()
        bus.link_state(2, "configured", sender=new)  # not yet the owner: rejected
        bus.owner_changed(old, "")
        bus.owner_changed("", new)
        release.set()  # the old listing must not come through
        await until(events, lambda e: isinstance(e, decide.LinksListed))
        await anyio.sleep(0.05)
        assert events == [
            decide.OwnerChanged(old),
            OwnerPid(1005),
            decide.OwnerChanged(None),
            OwnerPid(None),
            decide.OwnerChanged(new),
            OwnerPid(1006),
            decide.LinksListed(new, {2: "configuring"}),
        ]
        bus.link_state(2, "configured", sender=old)  # the previous generation: rejected
        bus.link_state(2, "configured", sender=new)
        assert events[-1] == decide.LinkChanged(new, 2, "configured", name="eth0")

    counters = anyio.run(run_session, nd, scenario, backend="asyncio")
    assert counters.rejected_signals == 2


def test_session_owner_change_while_asking_for_the_owner() -> None:
    # The daemon sends NameOwnerChanged before it answers GetNameOwner; the signal is handled
    # first and the (older) "no owner" reply must not undo it.
    nd = Networkd(None, {":1.6": {2: ("eth0", "configured")}})
    entered, release = nd.hold(DBUS, "GetNameOwner")

    async def scenario(bus: FakeBus, events: list[object]) -> None:
        await entered.wait()
        bus.owner_changed("", ":1.6")
        release.set()
        await until(events, lambda e: isinstance(e, decide.LinksListed))
        assert events == [
            decide.OwnerChanged(":1.6"),
            OwnerPid(1006),
            decide.LinksListed(":1.6", {2: "configured"}),
        ]

    anyio.run(run_session, nd, scenario, backend="asyncio")


def test_session_without_owner_is_synced_at_once() -> None:
    nd = Networkd(None, {":1.6": {2: ("eth0", "configured")}})

    async def scenario(bus: FakeBus, events: list[object]) -> None:
        await until(events, lambda e: isinstance(e, OwnerPid))
        bus.link_state(2, "configuring", sender=":1.6")
        bus.owner_changed("", ":1.6")
        await until(events, lambda e: isinstance(e, decide.LinksListed))
        assert events == [
            decide.OwnerChanged(None),
            OwnerPid(None),
            decide.OwnerChanged(":1.6"),
            OwnerPid(1006),
            decide.LinksListed(":1.6", {2: "configured"}),
        ]

    counters = anyio.run(run_session, nd, scenario, backend="asyncio")
    assert counters.rejected_signals == 1


def test_session_forged_signals_are_counted_not_emitted() -> None:
    nd = Networkd(OWNER, {OWNER: {2: ("eth0", "configured")}})

    async def scenario(bus: FakeBus, events: list[object]) -> None:
        await until(events, lambda e: isinstance(e, decide.LinksListed))
        n, woke = len(events), len(WAKEUPS)
        bus.link_state(2, "configuring", sender=":1.99")
        bus.owner_changed(OWNER, ":1.99", sender=":1.99")
        bus.owner_changed(OWNER, "", sender=":1.99")
        assert len(events) == n
        assert len(WAKEUPS) == woke + 3  # each one wakes the daemon's loop to publish the count

    counters = anyio.run(run_session, nd, scenario, backend="asyncio")
    assert counters == BusCounters(rejected_signals=3, rejected_senders=[":1.99", ":1.99", ":1.99"])


def test_session_subscription_failure_ends_the_session() -> None:
    nd = Networkd(OWNER, {OWNER: {}})
    nd.errors[(DBUS, "AddMatch")] = ["org.freedesktop.DBus.Error.AccessDenied"]

    async def main() -> list[object]:
        bus = FakeBus(nd.respond)
        events: list[object] = []
        with anyio.fail_after(5):
            await _Session(bus, _keep(events), BusCounters()).run(lambda: None)  # type: ignore[arg-type]
        return events

    assert anyio.run(main, backend="asyncio") == []


def test_session_ends_when_the_connection_is_lost() -> None:
    nd = Networkd(OWNER, {OWNER: {2: ("eth0", "configured")}})
    entered, _ = nd.hold(OWNER, "Get 2")  # never released

    async def main() -> list[object]:
        bus = FakeBus(nd.respond)
        events: list[object] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_Session(bus, _keep(events), BusCounters()).run, lambda: None)  # type: ignore[arg-type]
                await entered.wait()
                bus.lose()
        return events

    assert anyio.run(main, backend="asyncio") == [decide.OwnerChanged(OWNER), OwnerPid(1005)]


# watch() against a bus that is not a bus ---------------------------------------------------


@pytest.mark.parametrize("via", ["env", "address"])
def test_watch_finds_the_bus_and_keeps_retrying(via: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dbus-fast reads DBUS_SYSTEM_BUS_ADDRESS for BusType.SYSTEM (both 5.0.26 and 5.2.x);
    a peer that hangs up during authentication is retried with backoff, nothing is raised."""
    path = f"{tmp_path}/bus"
    address = f"unix:path={path}"
    if via == "env":
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
    else:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/socket")
    events: list[object] = []
    counters = BusCounters()

    async def main() -> list[float]:
        accepted: list[float] = []
        listener = await anyio.create_unix_listener(path)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(watch, _keep(events), counters, address=None if via == "env" else address))
            with anyio.fail_after(5):
                while len(accepted) < 3:
                    conn = await listener.accept()
                    accepted.append(anyio.current_time())
                    await conn.aclose()  # hang up before authentication
            tg.cancel_scope.cancel()
        return accepted

    accepted = anyio.run(main, backend="asyncio")
    assert accepted[2] - accepted[1] > accepted[1] - accepted[0] >= 0.09  # 0.1 s, then 0.2 s
    assert events == []
    assert counters == BusCounters()
