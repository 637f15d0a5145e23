"""What networkd says on the bus, verified: names, paths, the plain events and counters, and
`translate()` from a bus message to them (pure: no bus connection here)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from dbus_fast import Variant

from ...core import decide

NETWORKD = "org.freedesktop.network1"
LINK_IFACE = "org.freedesktop.network1.Link"
MANAGER_IFACE = "org.freedesktop.network1.Manager"
MANAGER_PATH = "/org/freedesktop/network1"
# sd-bus escapes the first character of a label that starts with a digit: ifindex 2 -> "_32".
LINK_PATH_PREFIX = "/org/freedesktop/network1/link/_3"
DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"

# No sender= on purpose: forged signals must reach us so that they can be counted.
MATCH_PROPERTIES = (
    "type='signal',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',"
    "path_namespace='/org/freedesktop/network1'"
)
MATCH_OWNER = (
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
    "member='NameOwnerChanged',arg0='org.freedesktop.network1'"
)

CALL_TIMEOUT = 10.0  # seconds; dbus-fast's call() has no timeout of its own
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
# dbus-daemon refuses more than max_replies_per_connection (128 on the system bus) pending
# calls per connection; a node with many pod veths has hundreds of links.
MAX_CONCURRENT_GETS = 16
IFINDEX_MAX = 2**31 - 1  # ifindex is a positive int32 (struct ifinfomsg.ifi_index)
MAX_PENDING_SENDERS = 64  # rejected senders kept for the next audit entry
LOG_EVERY = 100  # rejected/bad signals: log the first and every LOG_EVERY-th at info/warning

_LINK_LABEL = re.compile(r"[1-9][0-9]{0,9}")
# D-Bus unique connection name, e.g. ":1.42" (dbus-specification, "Valid Names").
_UNIQUE_NAME = re.compile(r":[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")
# Interface names only end up in log text; anything unusual is simply not shown.
_IFNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")
# Errors that mean "this link or this networkd is gone", expected during restarts and hot-unplug.
_GONE_ERRORS = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.Disconnected",
    }
)
_UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"


@dataclass(slots=True)
class BusCounters:
    """Mutable counters the daemon reports (shared across reconnects)."""

    rejected_signals: int = 0  # not from the current owner of the name / forged NameOwnerChanged
    bad_values: int = 0  # unknown AdministrativeState values, malformed paths or bodies
    reconnects: int = 0  # successful connections to the bus after a lost one
    # senders of rejections not yet audited (the service drains it; bounded against floods)
    rejected_senders: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Counted:
    """A rejected or bad bus message was counted (BusCounters): nothing to decide, but the loop
    wakes up to publish and audit it now rather than at its next unrelated event."""


COUNTED = Counted()


@dataclass(frozen=True, slots=True)
class OwnerPid:
    """PID of the current owner of org.freedesktop.network1; None when there is no owner."""

    pid: int | None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A signal that claims to be about networkd but does not come from it."""

    reason: str
    sender: str = ""


@dataclass(frozen=True, slots=True)
class BadValue:
    """A signal from a trusted sender whose contents do not make sense."""

    reason: str


Translated: TypeAlias = decide.LinkChanged | decide.OwnerChanged | Rejected | BadValue | None


class BusError(Exception):
    """A D-Bus call failed: error reply, unexpected reply, timeout or lost connection."""

    def __init__(self, what: str, name: str | None, text: str) -> None:
        super().__init__(f"{what}: {name + ': ' if name else ''}{text}")
        self.what = what
        self.name = name  # D-Bus error name, None when the failure was not an error reply
        self.text = text


def link_index(path: str) -> int | None:
    """ifindex of a networkd link object path ("/org/freedesktop/network1/link/_32" -> 2).

    Strict: the label must be the decimal ifindex (1..2**31-1, no leading zero) with its
    first digit escaped as `_3X`; anything else is None.
    """
    if not isinstance(path, str) or not path.startswith(LINK_PATH_PREFIX):
        return None
    digits = path[len(LINK_PATH_PREFIX) :]
    if _LINK_LABEL.fullmatch(digits) is None:
        return None
    index = int(digits)
    return index if index <= IFINDEX_MAX else None


def link_path(index: int) -> str:
    """The object path of link `index`, built from the integer only."""
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= IFINDEX_MAX:
        raise ValueError(f"ifindex {index!r} is not 1..{IFINDEX_MAX}")
    return f"{LINK_PATH_PREFIX}{index:d}"


def _sender(sender: object) -> str:
    """A bus sender for the audit record: printable, bounded."""
    text = sender if isinstance(sender, str) else repr(sender)
    return "".join(c if c.isprintable() else "?" for c in text[:64]) or "-"


def _short(value: object) -> str:
    """Bus-supplied value for a log line: one line, printable, bounded."""
    if isinstance(value, Variant):
        value = (value.signature, value.value)
    # repr() of containers uses Variant.__repr__, which does not escape: escape once more.
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in repr(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _in_namespace(path: str | None) -> bool:
    return path is not None and (path == MANAGER_PATH or path.startswith(MANAGER_PATH + "/"))


def translate(
    sender: str | None,
    path: str | None,
    interface: str | None,
    member: str | None,
    body: Sequence[Any],
    owner: str | None,
) -> Translated:
    """Turn one received signal into an event, a Rejected, a BadValue or None (not ours).

    `owner` is the unique name currently owning org.freedesktop.network1 (None: nobody).
    """
    if interface == PROPERTIES_IFACE and member == "PropertiesChanged":
        if not _in_namespace(path):
            return None
        if owner is None or sender != owner:
            return Rejected(f"PropertiesChanged for {_short(path)} from {_short(sender)}, owner is {owner!r}",
                            _sender(sender))
        if len(body) != 3 or not isinstance(body[0], str) or not isinstance(body[1], dict):
            return BadValue(f"PropertiesChanged for {_short(path)} with body {_short(body)}")
        if body[0] != LINK_IFACE:
            return None  # Manager properties and the like: not ours
        index = link_index(path) if path is not None else None
        if index is None:
            return BadValue(f"{LINK_IFACE} PropertiesChanged on a non-link path {_short(path)}")
        if "AdministrativeState" not in body[1]:
            return None  # OperationalState, CarrierState, ...: normal noise
        value = body[1]["AdministrativeState"]
        state = value.value if isinstance(value, Variant) and value.signature == "s" else None
        if not isinstance(state, str) or state not in decide.KNOWN_STATES:
            return BadValue(f"link {index} AdministrativeState {_short(value)}")
        return decide.LinkChanged(owner, index, state)
    if interface == DBUS_NAME and member == "NameOwnerChanged":
        if not body or body[0] != NETWORKD:
            return None
        if sender != DBUS_NAME:
            return Rejected(f"NameOwnerChanged for {NETWORKD} from {_short(sender)}", _sender(sender))
        if len(body) != 3 or not all(isinstance(x, str) for x in body):
            return BadValue(f"NameOwnerChanged with body {_short(body)}")
        new = body[2]
        if new == "":
            return decide.OwnerChanged(None)
        if _UNIQUE_NAME.fullmatch(new) is None:
            return BadValue(f"NameOwnerChanged to {_short(new)}")
        return decide.OwnerChanged(new)
    return None
