"""What the kernel says, as plain data: the items a dump or a notification carries besides the
model's rules and routes, a dump, a change, and a batch's outcome. No I/O and no third-party
import: the core (track, replay) reads these; netlink.py makes them from the wire."""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import Route, Rule


@dataclass(frozen=True, slots=True)
class HostRoute:
    """`<addr> dev <oif> scope link` in main: a pod's host route (or any host route)."""

    addr: str
    oif: str


@dataclass(frozen=True, slots=True)
class LocalAddress:
    """`local <addr> dev <oif> table local`: an address configured on this node."""

    addr: str
    oif: str


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str


@dataclass(frozen=True, slots=True)
class Unsupported:
    what: str


Item = Rule | Route | HostRoute | LocalAddress | Link | Unsupported


@dataclass(frozen=True, slots=True)
class Change:
    new: bool
    item: Item
    port: int  # nlmsg_pid: the port id of the socket whose request caused it (0: the kernel)


@dataclass(slots=True)
class Dump:
    rules: list[Rule] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    host_routes: list[HostRoute] = field(default_factory=list)
    local_addresses: list[LocalAddress] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    unsupported: int = 0

    def add(self, item: Item) -> None:
        if isinstance(item, Rule):
            self.rules.append(item)
        elif isinstance(item, Route):
            self.routes.append(item)
        elif isinstance(item, HostRoute):
            self.host_routes.append(item)
        elif isinstance(item, LocalAddress):
            self.local_addresses.append(item)
        elif isinstance(item, Link):
            self.links.append(item)
        else:
            self.unsupported += 1


@dataclass(slots=True)
class BatchResult:
    acked: list[int] = field(default_factory=list)  # indexes the kernel applied (error 0)
    existed: list[int] = field(default_factory=list)  # EEXIST: already there, counts as present
    failed: list[tuple[int, int]] = field(default_factory=list)  # (index, errno)
    unknown: str | None = None  # why the outcome is unknown (ENOBUFS, timeout): re-dump
