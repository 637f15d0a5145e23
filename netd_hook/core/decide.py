"""When to replay: a pure state machine over networkd's bus state and observed losses.

`step(state, event, now) -> (state, actions)` reads no clock and does no I/O; the service
feeds it events (already verified at the adapter edge) and carries out the actions.

networkd is *settled* when it owns its bus name and every link it reports is in a final
AdministrativeState. networkd drops foreign rules manager-wide whenever it configures any link
(systemd networkd-routing-policy-rule.c, `ManageForeignRoutingPolicyRules=`), so all links
count, not only the secondary ENIs.

A loss while networkd is busy is chased: the rules it deleted are put back at once (`Replay`
with `chase`), while the link is still configuring. networkd deletes every foreign rule in one
pass at the start of a link's configure and takes a rule added after its pass for a new foreign
one, left alone until its next pass; 249 makes a second pass on reconfigure, and `netplan apply`
one per link, so what a pass deletes again is chased again (the repairer bounds how often one
entry is, per busy spell). Routes are not chased (the kernel flushes a reconfigured link's table
routes with its address, which networkd re-adds later): every busy spell ends with a re-read of
the kernel once networkd has settled, and a replay of whatever is still missing. A loss seen
while a replay is in flight is remembered and replayed right after it, so a burst always ends
with everything back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

SETTLED_STATES = frozenset({"configured", "unmanaged", "failed", "linger"})
BUSY_STATES = frozenset({"pending", "initialized", "configuring"})
KNOWN_STATES = SETTLED_STATES | BUSY_STATES


@dataclass(frozen=True, slots=True)
class Params:
    quiet: float = 0.0  # seconds without new losses before replaying
    absent_grace: float = 5.0  # networkd off the bus this long: replay without waiting for it
    # A link busy this long (no carrier, a DHCP server that never answers, never initialized by
    # udev) no longer delays repairs of what the other links' passes deleted.
    stuck_after: float = math.inf
    chase: bool = False  # replay while networkd is busy (rules); False: wait for settled


@dataclass(frozen=True, slots=True)
class State:
    params: Params = field(default_factory=Params)
    owner: str | None = None
    owner_since: float = 0.0
    listed: bool = False  # link states are known for the current owner
    links: Mapping[int, str] = field(default_factory=dict)
    busy_since: Mapping[int, float] = field(default_factory=dict)  # links in a busy state, since when
    active_at: float = -math.inf  # last time networkd was seen at work (a link busy, a new owner)
    lost: int = 0  # repairable losses not yet handed to a replay
    last_loss: float = -math.inf
    verify: bool = False  # networkd was busy: re-read the kernel once it settles
    verify_after: float = -math.inf  # and not before this (a Suspect's delay)
    busy: bool = False  # a replay or verification is running
    trigger: str | None = None  # why the next replay happens (first cause since the last one)
    chases: int = 0  # replays while networkd was busy, in this busy spell


# Events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OwnerChanged:
    owner: str | None  # None: networkd left the bus, or our bus connection is gone


@dataclass(frozen=True, slots=True)
class LinksListed:
    owner: str
    states: Mapping[int, str]


@dataclass(frozen=True, slots=True)
class LinkChanged:
    owner: str
    index: int
    state: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class LinkRemoved:
    index: int


@dataclass(frozen=True, slots=True)
class Lost:
    count: int
    cause: str  # "networkd", "kernel", "startup", "verify"


@dataclass(frozen=True, slots=True)
class Suspect:
    """The kernel view may be stale (monitor overrun, config reload): re-read it once settled,
    and not before `delay` seconds from now."""

    reason: str
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Reconfigured:
    """The configuration was reloaded (SIGHUP): these parameters from now on, and the kernel is
    re-read once settled (what newly enters the scope comes with that re-read)."""

    params: Params


@dataclass(frozen=True, slots=True)
class Done:
    """The replay or verification asked for has finished."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The replay or verification asked for did not finish (a netlink batch or dump failed
    outright): the kernel is re-read, at once (named by `reason`) or, after a second failure in
    a row, not before `retry_at`."""

    reason: str
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    """A Wake deadline has passed."""


Event = (OwnerChanged | LinksListed | LinkChanged | LinkRemoved | Lost | Suspect | Reconfigured | Done | Failed
         | Tick)


# Actions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replay:
    trigger: str
    chase: bool = False  # networkd is still busy: the rules only (routes come with the re-read once it settles)


@dataclass(frozen=True, slots=True)
class Verify:
    trigger: str


@dataclass(frozen=True, slots=True)
class Wake:
    at: float


Action = Replay | Verify | Wake


def settled(state: State, now: float) -> bool:
    if state.owner is None:
        return now - state.owner_since >= state.params.absent_grace
    return state.listed and not any(
        st not in SETTLED_STATES and not _stuck(state, i, now) for i, st in state.links.items())


def complete(state: State, now: float, missing: int) -> bool:
    """networkd on the bus and settled, no repair or re-read pending or running, and nothing
    missing (`missing`: what a repair would restore, not what is held back, set aside or
    unattributed): what `netd-hook wait` waits for, status.json `complete`."""
    return (bool(state.owner) and settled(state, now) and not (state.busy or state.lost or state.verify)
            and missing == 0)


def _stuck(state: State, index: int, now: float) -> bool:
    since = state.busy_since.get(index)
    return since is not None and now - since >= state.params.stuck_after


def stuck_links(state: State, now: float) -> dict[int, float]:
    """Links busy for longer than the bound (they delay no repair): index -> seconds busy."""
    return {i: now - t for i, t in state.busy_since.items() if _stuck(state, i, now)}


def _busy_since(state: State, index: int, st: str, now: float) -> dict[int, float]:
    since = dict(state.busy_since)
    if st in BUSY_STATES:
        since.setdefault(index, now)
    else:
        since.pop(index, None)
    return since


def _cause(state: State, trigger: str) -> State:
    return state if state.trigger else replace(state, trigger=trigger)


def _apply(state: State, event: Event, now: float) -> State:
    if isinstance(event, OwnerChanged):
        if event.owner == state.owner:
            return state
        s = replace(state, owner=event.owner, owner_since=now, listed=False, links={}, busy_since={},
                    active_at=now)
        if state.owner is not None:
            # A restart (or networkd gone): whatever it dropped may have left no trace we saw.
            s = _cause(replace(s, verify=True), "networkd-restart")
        return s
    if isinstance(event, LinksListed):
        if event.owner != state.owner:
            return state
        states = {i: st for i, st in event.states.items() if st in KNOWN_STATES}
        s = replace(state, listed=True, links=states,
                    busy_since={i: now for i, st in states.items() if st in BUSY_STATES})
        if any(st in BUSY_STATES for st in states.values()):
            s = _cause(replace(s, verify=True), "networkd-start")
        return s
    if isinstance(event, LinkChanged):
        if event.owner != state.owner or event.state not in KNOWN_STATES:
            return state
        s = replace(state, links={**state.links, event.index: event.state},
                    busy_since=_busy_since(state, event.index, event.state, now))
        if event.state in BUSY_STATES or state.links.get(event.index) in BUSY_STATES:
            s = replace(s, active_at=now)
        if event.state in SETTLED_STATES and _stuck(state, event.index, now):
            # It held nothing back while stuck; whatever its late configure deleted is found now.
            s = _cause(replace(s, verify=True), f"link-settled:{event.name or event.index}")
        if event.state in BUSY_STATES:
            what = "link-added" if event.index not in state.links else "reconfigure"
            s = _cause(s, f"{what}:{event.name or event.index}")
        if event.state == "configuring":
            # The wipe happens while a link is configured. A new pod veth only passes through
            # pending on its way to unmanaged: no reason to re-read the kernel for that. The
            # re-read comes once it settles, whatever grace a Suspect asked for before.
            s = replace(s, verify=True, verify_after=-math.inf)
        return s
    if isinstance(event, LinkRemoved):
        if event.index not in state.links:
            return state
        links = dict(state.links)
        del links[event.index]
        since = dict(state.busy_since)
        since.pop(event.index, None)
        return replace(state, links=links, busy_since=since)
    if isinstance(event, Lost):
        if event.count <= 0:
            return state
        return _cause(replace(state, lost=state.lost + event.count, last_loss=now), event.cause)
    if isinstance(event, Suspect):
        after = max(state.verify_after, now + event.delay)
        return _cause(replace(state, verify=True, verify_after=after), event.reason)
    if isinstance(event, Reconfigured):
        return _cause(replace(state, params=event.params, verify=True), "reload")
    if isinstance(event, Done):
        return replace(state, busy=False)
    if isinstance(event, Failed):
        s = replace(state, busy=False, verify=True)
        return s if event.retry_at is not None else _cause(s, event.reason)
    return state  # Tick: only re-evaluates


def _drive(state: State, now: float) -> tuple[State, list[Action]]:
    if state.busy:
        return state, []
    if state.chases and settled(state, now):
        state = replace(state, chases=0)  # the busy spell is over
    if not (state.lost or state.verify):
        if state.trigger and settled(state, now):
            return replace(state, trigger=None), []  # the busy spell passed without a loss
        return state, []
    if not settled(state, now):
        if state.owner is None:
            return state, [Wake(state.owner_since + state.params.absent_grace)]
        if state.lost and state.params.chase:
            ready_at = state.last_loss + state.params.quiet
            if now < ready_at:
                return state, [Wake(ready_at)]
            # The trigger stays for the re-read once settled, which a chase always leads to.
            return (replace(state, lost=0, busy=True, verify=True, chases=state.chases + 1),
                    [Replay(state.trigger or "unknown", chase=True)])
        # Wake when the longest-busy link that is not stuck yet would count as stuck.
        ends = [t + state.params.stuck_after for i, t in state.busy_since.items()
                if state.links.get(i) in BUSY_STATES and not _stuck(state, i, now)]
        wake = min(ends, default=math.inf)
        return state, [Wake(wake)] if wake < math.inf else []
    trigger = state.trigger or "unknown"
    if state.lost:
        ready_at = state.last_loss + state.params.quiet
        if now < ready_at:
            return state, [Wake(ready_at)]
        return replace(state, lost=0, busy=True, trigger=None if not state.verify else trigger), [Replay(trigger)]
    if now < state.verify_after:
        return state, [Wake(state.verify_after)]
    return replace(state, verify=False, busy=True, trigger=None), [Verify(trigger)]


def step(state: State, event: Event, now: float) -> tuple[State, list[Action]]:
    if isinstance(event, Failed) and event.retry_at is not None:
        # Failed twice in a row: nothing is tried before retry_at (a re-read at once would spin).
        return _apply(state, event, now), [Wake(event.retry_at)]
    return _drive(_apply(state, event, now), now)
