"""Which links networkd manages: one definition for the daemon, the CLI and doctor (pure).

From networkd's AdministrativeState of each link (`org.freedesktop.network1.Link`, or
`ADMIN_STATE=` in /run/systemd/netif/links/<ifindex>; the names are link_state_table[] in
src/network/networkd-link.c):

* `unmanaged`: no .network file matches the link, or the one that does says `[Link] Unmanaged=yes`
  (link_configure(): link_get_network() -ENOENT). Pod veths and, usually, lo. Not managed.
* `linger`: the link is gone from the kernel and networkd still holds a reference to it
  (link_drop()). Not managed: there is nothing left to configure.
* "" (no state known: a state file without ADMIN_STATE=). Not managed.
* everything else is managed: `configuring`, `configured`, `failed` (a .network matched),
  and `pending` / `initialized`, a link udev or networkd has not finished looking at, which
  networkd may be about to configure.

Keys are whatever the caller has (an ifindex from the bus or a state file, a link name from
status.json): the answer is the subset of those keys (managed), or their names (managed_names).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

UNMANAGED = "unmanaged"
LINGER = "linger"
NOT_MANAGED = frozenset({UNMANAGED, LINGER, ""})

K = TypeVar("K", bound=Hashable)


def is_managed(state: str) -> bool:
    """Whether networkd manages a link in this AdministrativeState (anything but a known
    unmanaged state counts as managed: a state some later networkd may add)."""
    return state not in NOT_MANAGED


def managed(states: Mapping[K, str]) -> frozenset[K]:
    """The keys of `states` (link -> AdministrativeState) whose links networkd manages."""
    return frozenset(k for k, s in states.items() if is_managed(s))


def managed_names(states: Mapping[K, str], names: Mapping[K, str]) -> frozenset[str]:
    """The names of the links networkd manages: `states` by some key (an ifindex), `names` the
    kernel's name of each; a link the kernel no longer has is left out."""
    return frozenset(names[k] for k in managed(states) if k in names)
