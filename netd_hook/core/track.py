"""The live picture: what is protected (the snapshot), what the kernel has now, and who removed
what. Fed with decoded netlink changes and dumps; no I/O.

Attribution uses the kernel's own word: a notification's `nlmsg_pid` is the netlink port id of
the socket whose request caused it (net/core/fib_rules.c notify_rule_change, fib_table_delete's
rtmsg_fib). So a deletion by networkd is told apart from one by the CNI whatever the timing of
the D-Bus signals, and a stranger on the bus cannot make a CNI deletion look like networkd's.
  - networkd's port  -> lost: keep it, repair it once networkd settles;
  - port 0 (kernel)  -> lost the same way (a flush, e.g. when its device went away);
  - our own port     -> our rollback: nothing changes in the snapshot;
  - anyone else      -> deliberate (the CNI deleting a pod): forget it, never replay it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from enum import Enum

from .kernel import Change, Dump, HostRoute, Link, LocalAddress, Unsupported
from .model import Entry, Route, Rule, Snapshot
from .plan import Liveness
from .scope import Scope, route_in_scope, rule_in_scope


class Cause(str, Enum):
    NETWORKD = "networkd"
    KERNEL = "kernel"
    SELF = "self"
    OTHER = "other"


def classify(port: int, own_ports: Collection[int], is_networkd: Callable[[int], bool]) -> Cause:
    if port == 0:
        return Cause.KERNEL
    if port in own_ports:
        return Cause.SELF
    if is_networkd(port):
        return Cause.NETWORKD
    return Cause.OTHER


class Restored:
    """The pod rules in the kernel because netd-hook itself put them back, by pod address, until
    anyone else touches them; and, of those, the orphans: their pod has gone since (networkd
    wiped them, the CNI's own deletes then found nothing, and the pod went away before or
    during the replay), so netd-hook takes them out again: the CNI will not."""

    def __init__(self) -> None:
        self.by_address: dict[str, set[Rule]] = {}
        self.orphans: list[Rule] = []  # to delete

    def touched(self, rule: Rule, ours: bool, node_address: Callable[[str], bool]) -> None:
        """A rule keyed on one of the node's own addresses (the ENI-primary 32765 rule) is never
        a pod's: it is not remembered, so it can never be taken for an orphan."""
        addr = rule.host_address()
        if addr is None:
            return
        if ours and not node_address(addr):
            self.by_address.setdefault(addr, set()).add(rule)
        elif addr in self.by_address:
            self.by_address[addr].discard(rule)
            if not self.by_address[addr]:
                del self.by_address[addr]

    def pod_gone(self, addr: str, present: Collection[Rule]) -> set[Rule]:
        """The rules netd-hook put back for the pod behind `addr`; those in the kernel are orphans."""
        rules = self.by_address.pop(addr, set())
        self.orphans.extend(r for r in rules if r in present)
        return rules


class Tracker:
    """Mutable by design (10,000 entries, thousands of events per burst), deterministic, I/O-free."""

    def __init__(self, scope: Scope, snapshot: Snapshot | None = None) -> None:
        snapshot = snapshot or Snapshot()
        self.scope = scope
        self.rules: set[Rule] = {r for r in snapshot.rules if rule_in_scope(scope, r)}
        self.routes: set[Route] = {r for r in snapshot.routes if route_in_scope(scope, r)}
        self._tables: Counter[int] = Counter(r.table for r in self.rules)
        self.present_rules: set[Rule] = set()
        self.present_routes: set[Route] = set()
        self.links: dict[int, str] = {}
        self.host_routes: dict[str, set[str]] = {}
        self.local_addresses: dict[str, set[str]] = {}
        self.node_addresses: dict[str, set[str]] = {}  # ever configured, on devices that still exist
        self.restored = Restored()
        self.unsupported = 0
        # Protected rules seen deleted (repairably) and not back yet, oldest deletion first: the
        # order a chase puts them back in, so that the first one gone is the first one back.
        self.gone: dict[Rule, None] = {}
        self.version = 0  # bumped whenever the snapshot changes (persist)
        self.fresh: list[Entry] = [*self.rules, *self.routes]  # newly protected: encode their requests

    # snapshot membership ---------------------------------------------------------------------

    def _protect_rule(self, rule: Rule) -> None:
        if rule not in self.rules and rule_in_scope(self.scope, rule):
            self.rules.add(rule)
            self._tables[rule.table] += 1
            self.fresh.append(rule)
            self.version += 1

    def _protect_route(self, route: Route) -> None:
        if route not in self.routes and route_in_scope(self.scope, route):
            self.routes.add(route)
            self.fresh.append(route)
            self.version += 1

    def unprotect(self, entries: Iterable[Entry]) -> None:
        """Stop protecting `entries`: forgotten, a gone pod's (dead), out of scope, or orphans."""
        for entry in entries:
            if isinstance(entry, Rule):
                if entry in self.rules:
                    self.rules.discard(entry)
                    self._tables[entry.table] -= 1
                    if not self._tables[entry.table]:
                        del self._tables[entry.table]
                    self.version += 1
            elif entry in self.routes:
                self.routes.discard(entry)
                self.version += 1

    def rescope(self, scope: Scope) -> None:
        self.scope = scope
        self.unprotect([r for r in self.rules if not rule_in_scope(scope, r)])
        self.unprotect([r for r in self.routes if not route_in_scope(scope, r)])

    def protects(self, entry: Entry) -> bool:
        if isinstance(entry, Rule):
            return entry in self.rules
        return entry in self.routes and entry.table in self._tables

    def guards_routes_via(self, device: str) -> bool:
        """A protected route goes through `device`: the kernel drops it, without a word, when the
        device's last address goes (networkd taking an ENI's address away)."""
        return any(r.oif == device and r.table in self._tables for r in self.routes)

    def protected_route_count(self) -> int:
        """`len(snapshot().protected_routes())` without copying the snapshot (status, 2/s)."""
        return sum(1 for r in self.routes if r.table in self._tables)

    def snapshot(self) -> Snapshot:
        return Snapshot(frozenset(self.rules), frozenset(self.routes))

    # kernel view -----------------------------------------------------------------------------

    def load(self, dump: Dump) -> None:
        """Replace the kernel view with a full dump and merge what it shows into the snapshot."""
        # In place: the monitor's decoder resolves route devices through this same dict.
        self.links.clear()
        self.links.update((link.index, link.name) for link in dump.links)
        self.present_rules = set(dump.rules)
        self.present_routes = set(dump.routes)
        self.host_routes = {}
        for h in dump.host_routes:
            _update(self.host_routes, h.addr, h.oif, True)
        self.local_addresses = {}
        for a in dump.local_addresses:
            _update(self.local_addresses, a.addr, a.oif, True)
            _update(self.node_addresses, a.addr, a.oif, True)
        devices = set(self.links.values())
        for addr in [a for a, devs in self.node_addresses.items() if not devs & devices]:
            del self.node_addresses[addr]
        self.unsupported = dump.unsupported
        queued = set(self.restored.orphans)  # forgotten, their removal not sent yet: not the CNI's rules
        for rule in dump.rules:
            if rule not in queued:
                self._protect_rule(rule)
        for route in dump.routes:
            self._protect_route(route)
        # After merging: an orphan's rules are in the dump, and must end up forgotten, not re-protected.
        for addr in list(self.restored.by_address):  # pods that went away between two views
            self._orphan(addr)

    def chase_order(self) -> Iterator[Rule]:
        """The protected rules seen deleted and still missing, oldest deletion first. What is back
        or no longer protected is dropped from `gone` as it is met: a chase takes 200 at a time,
        and walking all 2,000 of a wipe for each batch cost it ~1 ms a batch."""
        stale: list[Rule] = []
        try:
            for rule in self.gone:
                if rule in self.present_rules or rule not in self.rules:
                    stale.append(rule)
                else:
                    yield rule
        finally:  # when the caller stops (or drops the iterator): `gone` is not changed while iterated
            for rule in stale:
                self.gone.pop(rule, None)

    def mark_present(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if isinstance(entry, Rule):
                self.present_rules.add(entry)
            else:
                self.present_routes.add(entry)

    def added_by_us(self, entries: Collection[Entry]) -> None:
        """What a batch of ours added, as its acks say: what the echoes would tell (they are not
        read back). A deletion read after this takes an entry away again."""
        for entry in entries:
            if isinstance(entry, Rule):
                self._mark_restored(entry, True)
                self.gone.pop(entry, None)
        self.mark_present(entries)

    def apply(self, change: Change, cause: Cause) -> bool:
        """Apply one notification; True when it is a repairable loss of a protected entry."""
        item = change.item
        if isinstance(item, Rule):
            self._mark_restored(item, change.new and cause is Cause.SELF)
            if change.new:
                self.present_rules.add(item)
                self._protect_rule(item)
                self.gone.pop(item, None)
                return False
            self.present_rules.discard(item)
            if self._lost(item, cause):
                self.gone.pop(item, None)  # deleted again: its place is at the end
                self.gone[item] = None
                return True
            return False
        if isinstance(item, Route):
            if change.new:
                self.present_routes.add(item)
                self._protect_route(item)
                return False
            self.present_routes.discard(item)
            return self._lost(item, cause)
        if isinstance(item, HostRoute):
            _update(self.host_routes, item.addr, item.oif, change.new)
            if not change.new:
                self._orphan(item.addr)
        elif isinstance(item, LocalAddress):
            _update(self.local_addresses, item.addr, item.oif, change.new)
            if change.new:
                _update(self.node_addresses, item.addr, item.oif, True)
        elif isinstance(item, Link):
            self._link(item, change.new)
        elif isinstance(item, Unsupported):
            self.unsupported += 1
        return False

    def _mark_restored(self, rule: Rule, ours: bool) -> None:
        self.restored.touched(rule, ours, lambda a: a in self.node_addresses or a in self.local_addresses)

    def _orphan(self, addr: str) -> None:
        """The pod behind `addr` may be gone (Restored)."""
        if addr in self.host_routes or addr in self.local_addresses or addr in self.node_addresses:
            return  # a pod still there, or the node's own address (away for a moment at most)
        self.unprotect(self.restored.pod_gone(addr, self.present_rules))

    def _lost(self, entry: Entry, cause: Cause) -> bool:
        if not self.protects(entry):
            return False
        if cause is Cause.OTHER:
            self.unprotect([entry])
            return False
        return cause is not Cause.SELF

    def _link(self, link: Link, new: bool) -> None:
        if new:
            self.links[link.index] = link.name
            return
        self.links.pop(link.index, None)
        # The kernel flushes routes of a deleted device without telling anyone (IPv4).
        self.present_routes = {r for r in self.present_routes if r.oif != link.name}
        for table in (self.host_routes, self.local_addresses, self.node_addresses):
            for addr in [a for a, devs in table.items() if link.name in devs]:
                _update(table, addr, link.name, False)
                self._orphan(addr)

    def ifindex(self, name: str) -> int | None:
        for index, n in self.links.items():
            if n == name:
                return index
        return None

    def liveness(self, managed: Collection[str]) -> Liveness:
        return Liveness(
            links=frozenset(self.links.values()),
            host_routes=self.host_routes,
            local_addresses=self.local_addresses,
            managed=managed,
            node_addresses=self.node_addresses,
        )


def _update(table: dict[str, set[str]], addr: str, dev: str, add: bool) -> None:
    if add:
        table.setdefault(addr, set()).add(dev)
        return
    devs = table.get(addr)
    if devs is not None:
        devs.discard(dev)
        if not devs:
            del table[addr]
