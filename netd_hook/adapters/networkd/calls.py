"""The method calls a session makes on the bus, each reply checked (message type, signature,
values) and turned into plain values or a `BusError`: the match rules, the owner of networkd's
name and its PID, networkd's links and each link's AdministrativeState."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from ...core import decide
from .signals import (
    _IFNAME,
    _UNIQUE_NAME,
    _UNKNOWN_OBJECT,
    CALL_TIMEOUT,
    DBUS_NAME,
    DBUS_PATH,
    IFINDEX_MAX,
    LINK_IFACE,
    MANAGER_IFACE,
    MANAGER_PATH,
    MATCH_OWNER,
    MATCH_PROPERTIES,
    MAX_CONCURRENT_GETS,
    NETWORKD,
    PROPERTIES_IFACE,
    BusError,
    _short,
    link_path,
)

log = logging.getLogger(__package__)  # one logger for the package, as before the split


class Calls:
    """Method calls over one connection. A malformed value in a reply is passed to `bad_value`
    (counted and logged by the session) and left out; a failed call raises BusError."""

    def __init__(self, bus: MessageBus, bad_value: Callable[[str], None]) -> None:
        self._bus = bus
        self._bad_value = bad_value

    async def subscribe(self) -> None:
        """The match rules, added before anything is asked (subscribe, then list)."""
        await self.call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "AddMatch", "s", [MATCH_PROPERTIES], "")
        await self.call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "AddMatch", "s", [MATCH_OWNER], "")

    async def name_owner(self) -> str | None:
        """The unique name that owns networkd's name; None when no one does."""
        try:
            body = await self.call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "GetNameOwner", "s", [NETWORKD], "s")
        except BusError as e:
            if e.name == "org.freedesktop.DBus.Error.NameHasNoOwner":
                return None
            raise
        if _UNIQUE_NAME.fullmatch(body[0]) is None:
            raise BusError("GetNameOwner", None, f"malformed unique name {_short(body[0])}")
        return str(body[0])

    async def owner_pid(self, owner: str) -> int | None:
        body = await self.call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "GetConnectionUnixProcessID", "s", [owner], "u")
        pid = body[0]
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            self._bad_value(f"GetConnectionUnixProcessID({owner}) = {_short(pid)}")
            return None
        return pid

    async def list_links(self, owner: str) -> tuple[list[int], dict[int, str]]:
        """networkd's links: their ifindexes, and the names of those with a sane one (for log
        text only)."""
        # Sent to the unique name, not the well-known one: a reply from a networkd that
        # replaced `owner` in the meantime is impossible.
        body = await self.call(owner, MANAGER_PATH, MANAGER_IFACE, "ListLinks", "", [], "a(iso)")
        indexes: list[int] = []
        names: dict[int, str] = {}
        for entry in body[0]:
            index, name = entry[0], entry[1]  # entry[2] (the path) is never used
            if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= IFINDEX_MAX:
                self._bad_value(f"ListLinks ifindex {_short(index)}")
                continue
            indexes.append(index)
            if isinstance(name, str) and _IFNAME.fullmatch(name):
                names[index] = name
        return indexes, names

    async def states(self, owner: str, indexes: list[int]) -> dict[int, str]:
        """The AdministrativeState of each link, MAX_CONCURRENT_GETS at a time; a link gone
        meanwhile is left out, any other failure raises (the caller retries the listing)."""
        states: dict[int, str] = {}
        errors: list[BusError] = []
        limiter = anyio.CapacityLimiter(MAX_CONCURRENT_GETS)
        async with anyio.create_task_group() as tg:
            for index in indexes:
                tg.start_soon(self._get_state, owner, index, limiter, states, errors)
        if errors:
            raise errors[0]
        return states

    async def _get_state(
        self, owner: str, index: int, limiter: anyio.CapacityLimiter, states: dict[int, str], errors: list[BusError]
    ) -> None:
        # Failures are collected instead of raised so that one bad link does not turn into an
        # ExceptionGroup; the caller retries the whole listing.
        async with limiter:
            try:
                body = await self.call(
                    owner, link_path(index), PROPERTIES_IFACE, "Get", "ss", [LINK_IFACE, "AdministrativeState"], "v"
                )
            except BusError as e:
                if e.name == _UNKNOWN_OBJECT:
                    log.debug("link %d vanished while listing", index)
                else:
                    errors.append(e)
                return
        value = body[0]
        state = value.value if isinstance(value, Variant) and value.signature == "s" else None
        if not isinstance(state, str) or state not in decide.KNOWN_STATES:
            self._bad_value(f"link {index} AdministrativeState {_short(value)}")
            return
        states[index] = state

    async def call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str,
        body: list[Any],
        reply_signature: str,
    ) -> list[Any]:
        what = f"{interface}.{member}"
        msg = Message(
            destination=destination, path=path, interface=interface, member=member, signature=signature, body=body
        )
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                reply = await self._bus.call(msg)
        except TimeoutError as e:
            raise BusError(what, None, f"no reply within {CALL_TIMEOUT:g}s") from e
        except Exception as e:  # dbus-fast documents only "Exception: if a connection error occurred"
            raise BusError(what, None, f"connection error: {e!r}") from e
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise BusError(what, reply.error_name, _short(text))
        if reply.message_type is not MessageType.METHOD_RETURN or reply.signature != reply_signature:
            raise BusError(what, None, f"unexpected reply with signature {reply.signature!r}")
        return list(reply.body)
