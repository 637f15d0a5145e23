"""One connection to the system bus and the watch loop over it: subscribe, then list; reconnect
with backoff. The session keeps the owner and the listing current; its method calls and their
replies' checks are calls.py's."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import anyio
import anyio.abc
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from ...core import decide
from .calls import Calls
from .signals import (
    _GONE_ERRORS,
    BACKOFF_MAX,
    BACKOFF_MIN,
    CALL_TIMEOUT,
    COUNTED,
    LOG_EVERY,
    MAX_PENDING_SENDERS,
    NETWORKD,
    BusCounters,
    BusError,
    OwnerPid,
    Rejected,
    translate,
)

log = logging.getLogger(__package__)  # one logger for the package, as before the split


class _Session:
    """One bus connection: subscriptions, the current owner, listings. Ends when the bus does."""

    def __init__(self, bus: MessageBus, emit: Callable[[object], None], counters: BusCounters) -> None:
        self._bus = bus
        self._calls = Calls(bus, self._bad_value)
        self._emit = emit
        self._counters = counters
        self._owner: str | None = None
        self._owner_known = False  # False until GetNameOwner answered or a NameOwnerChanged came
        self._generation = 0  # bumped on every owner change; stale listings compare against it
        # States seen in signals since the current owner became known; merged over the listing
        # because a signal received after a Get reply is newer than that reply.
        self._overlay: dict[int, str] | None = None
        self._names: dict[int, str] = {}  # ifindex -> name from ListLinks, for log text only
        self._wake = anyio.Event()  # the owner changed: (re)sync
        self._synced = anyio.Event()  # the first owner was synced (listed, or there is none)
        self._listing: anyio.CancelScope | None = None

    @property
    def owner(self) -> str | None:
        """The owner last emitted in an OwnerChanged of this session."""
        return self._owner

    # -------------------------------------------------------------- callback side (no awaits)
    def on_message(self, msg: Message) -> None:
        """dbus-fast message handler: translate and emit only; returns None so that dbus-fast
        goes on dispatching the message (a truthy value would mark it handled)."""
        if msg.message_type is not MessageType.SIGNAL:
            return
        result = translate(msg.sender, msg.path, msg.interface, msg.member, msg.body, self._owner)
        if result is None:
            return
        if isinstance(result, decide.LinkChanged):
            if self._overlay is not None:
                self._overlay[result.index] = result.state
            name = self._names.get(result.index)
            self._emit(replace(result, name=name) if name else result)
        elif isinstance(result, decide.OwnerChanged):
            if not self._owner_known or result.owner != self._owner:
                self._set_owner(result.owner)
        elif isinstance(result, Rejected):
            if not self._owner_known:
                # Between AddMatch and the GetNameOwner reply every signal looks foreign; the
                # listing that follows covers whatever networkd said in that window.
                log.debug("signal before the owner is known, dropped: %s", result.reason)
                return
            self._counters.rejected_signals += 1
            if len(self._counters.rejected_senders) < MAX_PENDING_SENDERS:
                self._counters.rejected_senders.append(result.sender)
            self._emit(COUNTED)  # wake the loop: the count is published and audited promptly
            n = self._counters.rejected_signals
            log.log(
                logging.INFO if n == 1 or n % LOG_EVERY == 0 else logging.DEBUG,
                "ignored a signal not sent by networkd or the bus daemon (%d so far): %s",
                n,
                result.reason,
            )
        else:
            self._bad_value(result.reason)

    def _bad_value(self, reason: str) -> None:
        self._counters.bad_values += 1
        self._emit(COUNTED)
        n = self._counters.bad_values
        log.log(
            logging.WARNING if n == 1 or n % LOG_EVERY == 0 else logging.DEBUG,
            "ignored a malformed value from networkd or the bus daemon (%d so far): %s",
            n,
            reason,
        )

    def _set_owner(self, owner: str | None) -> None:
        self._generation += 1
        self._owner = owner
        self._owner_known = True
        self._overlay = {} if owner is not None else None
        self._names = {}
        if self._listing is not None:
            self._listing.cancel()  # a listing of the previous owner is worthless now
        if owner is None:
            log.info("%s has no owner: networkd is not on the bus", NETWORKD)
        else:
            log.info("%s is owned by %s", NETWORKD, owner)
        self._emit(decide.OwnerChanged(owner))
        if owner is None:
            self._emit(OwnerPid(None))
        self._wake.set()

    # -------------------------------------------------------------- task side
    async def run(self, on_synced: Callable[[], None]) -> None:
        """Subscribe, learn the owner, list; returns when the connection is gone."""
        self._bus.add_message_handler(self.on_message)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._until_disconnected, tg.cancel_scope)
            try:
                await self._calls.subscribe()
                owner = await self._calls.name_owner()
            except BusError as e:
                log.warning("D-Bus subscription failed (%s), reconnecting", e)
                tg.cancel_scope.cancel()
                return
            # A NameOwnerChanged handled while GetNameOwner was in flight is at least as new
            # as its reply (the daemon sends both in order, and more may follow the reply).
            if not self._owner_known:
                self._set_owner(owner)
            tg.start_soon(self._syncer)
            await self._synced.wait()
            on_synced()
            await anyio.sleep_forever()  # until _until_disconnected cancels the group

    async def _until_disconnected(self, scope: anyio.CancelScope) -> None:
        try:
            await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
            log.warning("D-Bus connection closed")
        except Exception as e:  # dbus-fast hands over whatever ended the reader (EOFError, OSError)
            log.warning("D-Bus connection lost: %r", e)
        scope.cancel()

    async def _syncer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            with anyio.CancelScope() as scope:
                self._listing = scope
                await self._sync(self._owner, self._generation)
            self._listing = None

    def _current(self, generation: int) -> bool:
        return generation == self._generation

    async def _sync(self, owner: str | None, generation: int) -> None:
        """OwnerPid + LinksListed for `owner`, retried until done or the owner changes."""
        if owner is None:
            self._synced.set()
            return
        delay = BACKOFF_MIN
        pid_sent = False
        while True:
            try:
                if not pid_sent:
                    pid = await self._calls.owner_pid(owner)
                    if not self._current(generation):
                        return
                    self._emit(OwnerPid(pid))
                    pid_sent = True
                states = await self._list_links(owner)
            except BusError as e:
                if not self._bus.connected:
                    return  # _until_disconnected ends the session
                gone = e.name in _GONE_ERRORS
                log.log(
                    logging.DEBUG if gone else logging.WARNING,
                    "listing links of %s failed (%s), retrying in %.1fs",
                    owner,
                    e,
                    delay,
                )
                # If networkd left, its NameOwnerChanged cancels this loop.
                await anyio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if not self._current(generation):
                return
            if self._overlay:
                states.update(self._overlay)
            self._overlay = None
            log.debug("links of %s: %s", owner, states)
            self._emit(decide.LinksListed(owner, states))
            self._synced.set()
            return

    async def _list_links(self, owner: str) -> dict[int, str]:
        indexes, names = await self._calls.list_links(owner)
        if owner == self._owner:
            self._names = names  # before the states are asked for: signals meanwhile name their link
        return await self._calls.states(owner, indexes)


async def watch(
    emit: Callable[[object], None],
    counters: BusCounters,
    *,
    address: str | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Watch networkd on the system bus until cancelled; never raises for bus trouble.

    `emit` is called from the event loop for each event (`decide.OwnerChanged`,
    `decide.LinksListed`, `decide.LinkChanged`, `OwnerPid`, `Counted`); it must not block or raise.
    `address` overrides the bus address (default: $DBUS_SYSTEM_BUS_ADDRESS, which dbus-fast
    reads, else /var/run/dbus/system_bus_socket). `task_status.started()` is called once, after
    the first connection is subscribed and the links of the current owner (if any) are listed.
    A lost connection emits OwnerChanged(None) and OwnerPid(None), then reconnects with
    exponential backoff.
    """
    started = False
    connected_before = False
    delay = BACKOFF_MIN

    def synced() -> None:
        nonlocal started, delay
        delay = BACKOFF_MIN
        if not started:
            started = True
            task_status.started()

    while True:
        try:
            bus = MessageBus(bus_address=address, bus_type=BusType.SYSTEM)
            with anyio.fail_after(CALL_TIMEOUT):
                await bus.connect()
        except Exception as e:  # OSError, AuthError, InvalidAddressError, EOFError during Hello, timeout
            log.warning("cannot connect to the D-Bus system bus (%r), retrying in %.1fs", e, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            continue
        if connected_before:
            counters.reconnects += 1
            emit(COUNTED)  # published promptly, even if the new bus brings no owner to report
        connected_before = True
        log.info("connected to the D-Bus system bus as %s", bus.unique_name)
        session = _Session(bus, emit, counters)
        try:
            await session.run(synced)
        except Exception:  # the top of the reconnect loop: log it, never take the daemon down
            log.exception("D-Bus watcher failed, reconnecting")
        finally:
            bus.remove_message_handler(session.on_message)
            bus.disconnect()
            # Let dbus-fast close the socket even when we are being cancelled.
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                try:
                    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
                except Exception as e:  # the cause was logged already; this is only cleanup
                    log.debug("while disconnecting: %r", e)
        if session.owner is not None:  # else None was emitted already (or nothing was ever owned)
            emit(decide.OwnerChanged(None))
            emit(OwnerPid(None))
        log.info("reconnecting to the D-Bus system bus in %.1fs", delay)
        await anyio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX)
