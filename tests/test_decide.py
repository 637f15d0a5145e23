"""The when-to-replay state machine, table-style: (events with times) -> actions."""

from __future__ import annotations

import pytest

from netd_hook.core.decide import (
    Done,
    Failed,
    LinkChanged,
    LinkRemoved,
    LinksListed,
    Lost,
    OwnerChanged,
    Params,
    Reconfigured,
    Replay,
    State,
    Suspect,
    Tick,
    Verify,
    Wake,
    settled,
    step,
)

A, B = ":1.7", ":1.9"
SETTLED = {1: "configured", 2: "configured", 5: "unmanaged"}


def up(owner=A, links=SETTLED, **params):
    state = State(params=Params(**params))
    for ev in (OwnerChanged(owner), LinksListed(owner, links)):
        state, actions = step(state, ev, 0.0)
        assert actions == []
    return state


def run(state, script):
    """script: list of (time, event); returns the final state and [(time, action)]."""
    out = []
    for t, ev in script:
        state, actions = step(state, ev, t)
        out += [(t, a) for a in actions]
    return state, out


CASES = {
    "loss while settled replays at once": (
        [(1.0, Lost(3, "networkd"))],
        [(1.0, Replay("networkd"))],
    ),
    "loss during reconfigure waits for configured, then replays, then verifies": (
        [(1.0, LinkChanged(A, 2, "initialized", "eth1")), (1.01, Lost(4, "networkd")),
         (1.02, LinkChanged(A, 2, "configuring")), (1.05, LinkChanged(A, 2, "configured"))],
        [(1.05, Replay("reconfigure:eth1"))],
    ),
    "deletion before the D-Bus signal is still repaired once settled": (
        [(1.0, Lost(2, "networkd")), (1.0, Done()), (1.001, LinkChanged(A, 1, "configuring")),
         (1.01, Lost(1, "networkd")), (1.03, LinkChanged(A, 1, "configured"))],
        [(1.0, Replay("networkd")), (1.03, Replay("reconfigure:1"))],
    ),
    "primary reconfigure alone counts (manager-wide wipe)": (
        [(1.0, LinkChanged(A, 1, "configuring")), (1.01, Lost(5, "networkd")), (1.2, LinkChanged(A, 1, "configured"))],
        [(1.2, Replay("reconfigure:1"))],
    ),
    "restart: owner gone, new owner lists busy links, settles, replay": (
        [(1.0, OwnerChanged(None)), (1.01, Lost(7, "networkd")), (1.1, OwnerChanged(B)),
         (1.12, LinksListed(B, {1: "configuring", 2: "configured"})), (1.2, LinkChanged(B, 1, "configured"))],
        [(1.0, Wake(6.0)), (1.01, Wake(6.0)), (1.2, Replay("networkd-restart"))],
    ),
    "restart with nothing seen lost still verifies after settle": (
        [(1.0, OwnerChanged(None)), (1.1, OwnerChanged(B)), (1.12, LinksListed(B, SETTLED))],
        [(1.0, Wake(6.0)), (1.12, Verify("networkd-restart"))],
    ),
    "signals from the previous owner are ignored": (
        [(1.0, OwnerChanged(B)), (1.01, LinksListed(B, SETTLED)), (1.02, LinkChanged(A, 1, "configuring")),
         (1.025, Done()), (1.03, Lost(1, "networkd"))],
        [(1.01, Verify("networkd-restart")), (1.03, Replay("networkd"))],
    ),
    "unknown state values are ignored": (
        [(1.0, LinkChanged(A, 1, "exploding")), (1.01, Lost(1, "kernel"))],
        [(1.01, Replay("kernel"))],
    ),
    "a new link appearing holds the replay until it is configured": (
        [(1.0, LinkChanged(A, 9, "pending", "eth3")), (1.01, Lost(9, "networkd")),
         (1.3, LinkChanged(A, 9, "configured"))],
        [(1.3, Replay("link-added:eth3"))],
    ),
    "a link removed mid-configure no longer blocks settling": (
        [(1.0, LinkChanged(A, 9, "configuring")), (1.01, Lost(1, "networkd")), (1.02, LinkRemoved(9))],
        [(1.02, Replay("link-added:9"))],
    ),
    "networkd absent for the grace period: replay guarded by netlink alone": (
        [(1.0, OwnerChanged(None)), (2.0, Lost(1, "kernel")), (3.0, Tick()), (6.0, Tick())],
        [(1.0, Wake(6.0)), (2.0, Wake(6.0)), (3.0, Wake(6.0)), (6.0, Replay("networkd-restart"))],
    ),
    "overrun is repaired by a verification": (
        [(1.0, Suspect("monitor-overrun"))],
        [(1.0, Verify("monitor-overrun"))],
    ),
    "a replay whose batch failed outright is followed by a re-read of the kernel": (
        [(1.0, Lost(3, "networkd")), (1.01, Failed("netlink-error"))],
        [(1.0, Replay("networkd")), (1.01, Verify("netlink-error"))],
    ),
    "failing again in a row: the re-read waits for the retry time, then happens": (
        [(1.0, Lost(3, "networkd")), (1.01, Failed("netlink-error")), (1.02, Failed("netlink-error", 2.02)),
         (2.02, Tick())],
        [(1.0, Replay("networkd")), (1.01, Verify("netlink-error")), (1.02, Wake(2.02)), (2.02, Verify("unknown"))],
    ),
    "a failure while networkd is busy re-reads the kernel once it settles": (
        [(1.0, Lost(1, "kernel")), (1.01, LinkChanged(A, 1, "configuring")), (1.02, Failed("netlink-error")),
         (1.1, LinkChanged(A, 1, "configured"))],
        [(1.0, Replay("kernel")), (1.1, Verify("reconfigure:1"))],
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_table(name):
    script, expected = CASES[name]
    _, actions = run(up(), script)
    assert actions == expected


def test_failed_clears_busy_and_asks_for_a_verification():
    state, _ = step(up(), Lost(2, "networkd"), 1.0)
    assert state.busy
    state, actions = step(state, Failed("netlink-error", retry_at=3.0), 1.5)
    assert (state.busy, state.verify, actions) == (False, True, [Wake(3.0)])


def test_losses_during_a_replay_are_replayed_right_after_it_no_lost_last_replay():
    state, out = run(up(), [(1.0, Lost(3, "networkd")), (1.01, Lost(2, "networkd")), (1.02, Lost(1, "networkd"))])
    assert out == [(1.0, Replay("networkd"))] and state.busy and state.lost == 3
    state, out = run(state, [(1.05, Done())])
    assert out == [(1.05, Replay("networkd"))] and state.lost == 0
    state, out = run(state, [(1.06, Done())])
    assert out == [] and not state.busy


def test_burst_of_reconfigures_ends_with_a_replay_after_the_last_settle():
    script = []
    t = 1.0
    for _ in range(5):
        script += [(t, LinkChanged(A, 1, "configuring")), (t + 0.001, Lost(10, "networkd")),
                   (t + 0.002, LinkChanged(A, 1, "configured"))]
        t += 0.003
    state, out = run(up(), script)
    assert out[0] == (1.002, Replay("reconfigure:1"))
    while state.busy:  # the service answers every action with Done
        state, more = step(state, Done(), t)
        out += [(t, a) for a in more]
        t += 0.001
    kinds = [type(a).__name__ for _, a in out]
    assert kinds[-2:] == ["Replay", "Verify"] and state.lost == 0 and not state.verify


def test_quiet_period_coalesces_a_trickle_of_losses():
    state = up(quiet=0.05)
    state, out = run(state, [(1.0, Lost(1, "networkd")), (1.02, Lost(1, "networkd")), (1.07, Tick())])
    assert out == [(1.0, Wake(1.05)), (1.02, Wake(1.07)), (1.07, Replay("networkd"))]


def test_settled_requires_listing_for_the_current_owner():
    state = State()
    assert not settled(state, 0.0)
    state, _ = step(state, OwnerChanged(A), 0.0)
    assert not settled(state, 0.0)
    state, _ = step(state, LinksListed(B, SETTLED), 0.0)
    assert not settled(state, 0.0)
    state, _ = step(state, LinksListed(A, SETTLED), 0.0)
    assert settled(state, 0.0)
    for busy in ("pending", "initialized", "configuring"):
        assert not settled(step(state, LinkChanged(A, 1, busy), 0.0)[0], 0.0)
    for final in ("configured", "unmanaged", "failed", "linger"):
        assert settled(step(state, LinkChanged(A, 1, final), 0.0)[0], 0.0)


def test_a_pod_veth_appearing_costs_no_verification_and_leaves_no_stale_trigger():
    state, out = run(up(), [(1.0, LinkChanged(A, 40, "pending", "eni0a1b2c3d4e5")),
                            (1.01, LinkChanged(A, 40, "unmanaged")), (9.0, Lost(1, "kernel"))])
    assert out == [(9.0, Replay("kernel"))]


def test_configuring_asks_for_a_verification_once_settled():
    _, out = run(up(), [(1.0, LinkChanged(A, 1, "initialized", "eth1")), (1.01, LinkChanged(A, 1, "configuring")),
                        (1.05, LinkChanged(A, 1, "configured"))])
    assert out == [(1.05, Verify("reconfigure:eth1"))]


def test_a_link_that_never_settles_holds_back_repairs_only_for_the_bound():
    """Issue 10, finding 2: eth3 has no carrier and stays configuring; eth1's reconfigure wipes
    the rules: they are repaired once eth3 has been busy for stuck_after, not never."""
    s = up(stuck_after=3.0)
    s, out = run(s, [(10.0, LinkChanged(A, 9, "configuring", "eth3")),
                     (11.0, LinkChanged(A, 1, "configuring", "eth1")), (11.01, Lost(40, "networkd")),
                     (11.2, LinkChanged(A, 1, "configured"))])
    assert {a for _, a in out} == {Wake(13.0)}  # delayed by eth3 until 13.0, then no longer
    assert not settled(s, 12.9) and settled(s, 13.0)
    s, out = run(s, [(13.0, Tick())])
    assert out == [(13.0, Replay("link-added:eth3"))]
    s, out = run(s, [(13.001, Done())])
    assert out == [(13.001, Verify("link-added:eth3"))]  # eth1's configuring asked for one
    s, _ = run(s, [(13.002, Done())])
    from netd_hook.core.decide import stuck_links
    assert stuck_links(s, 20.0) == {9: 10.0}
    # when eth3 does settle at last, the kernel is checked again (its configure wiped too)
    s, out = run(s, [(30.0, LinkChanged(A, 9, "configured"))])
    assert out == [(30.0, Verify("link-settled:9"))]
    assert stuck_links(s, 31.0) == {}


def test_a_link_udev_never_initialized_is_stuck_too_and_a_busy_link_does_not_count_forever():
    s = State(params=Params(stuck_after=2.0))
    s, out = run(s, [(0.0, OwnerChanged(A)), (0.0, LinksListed(A, {1: "pending", 2: "configured"})),
                     (0.5, Lost(3, "networkd"))])
    assert out == [(0.0, Wake(2.0)), (0.5, Wake(2.0))]  # networkd-start asked for a verification
    s, out = run(s, [(2.0, Tick())])
    assert [type(a) for _, a in out] == [Replay]
    # without a bound (the pure default) it waits, as before
    s2 = State()
    s2, out = run(s2, [(0.0, OwnerChanged(A)), (0.0, LinksListed(A, {1: "pending"})), (0.5, Lost(3, "networkd")),
                       (99.0, Tick())])
    assert out == [] and not settled(s2, 1e9)


def test_a_reload_takes_the_new_parameters_and_re_reads_the_kernel():
    """SIGHUP: the new parameters apply from this event on, and the kernel is re-read once
    networkd settles (what newly enters the scope is found by that re-read)."""
    s = up(quiet=0.0)
    s, out = run(s, [(1.0, Reconfigured(Params(quiet=0.5, stuck_after=7.0)))])
    assert s.params == Params(quiet=0.5, stuck_after=7.0)
    assert out == [(1.0, Verify("reload"))]
    s, _ = run(s, [(1.001, Done())])
    s, out = run(s, [(2.0, Lost(1, "networkd"))])  # the new quiet period holds the replay back
    assert out == [(2.0, Wake(2.5))]


def test_a_reload_while_networkd_is_busy_waits_for_it_and_keeps_the_first_cause():
    s, _ = run(up(), [(1.0, LinkChanged(A, 1, "configuring", "eth1")), (1.01, Lost(2, "networkd"))])
    s, out = run(s, [(1.02, Reconfigured(Params(absent_grace=1.0)))])
    assert out == [] and s.params.absent_grace == 1.0 and s.verify
    s, out = run(s, [(1.1, LinkChanged(A, 1, "configured")), (1.11, Done())])
    assert out == [(1.1, Replay("reconfigure:eth1")), (1.11, Verify("reconfigure:eth1"))]


# The chase: losses while networkd is busy are put back at once (issue 13) ----------------

def test_a_loss_while_networkd_configures_is_chased_at_once_then_verified_once_settled():
    state = up(chase=True)
    state, out = run(state, [(1.0, LinkChanged(A, 2, "configuring", "eth1")), (1.001, Lost(40, "networkd"))])
    assert out == [(1.001, Replay("reconfigure:eth1", chase=True))]
    assert state.busy and state.lost == 0 and state.verify and state.chases == 1
    # More of the same pass, read while the chase was in flight: chased right after it.
    state, out = run(state, [(1.002, Lost(30, "networkd")), (1.003, Done())])
    assert out == [(1.003, Replay("reconfigure:eth1", chase=True))] and state.chases == 2
    state, out = run(state, [(1.004, Done())])
    assert out == []  # nothing more lost: nothing until networkd settles
    # Settled: the kernel is re-read (routes flushed with the address, a late pass), cause kept.
    state, out = run(state, [(1.05, LinkChanged(A, 2, "configured"))])
    assert out == [(1.05, Verify("reconfigure:eth1"))] and state.chases == 0


def test_a_pass_that_deletes_again_is_chased_again_and_the_next_spell_starts_afresh():
    state = up(chase=True)
    script = [(1.0, LinkChanged(A, 2, "configuring", "eth1"))]
    for i in range(3):  # 249's second pass, netplan apply's pass per link
        script += [(1.01 + i / 100, Lost(5, "networkd")), (1.015 + i / 100, Done())]
    state, out = run(state, script)
    assert [a for _, a in out] == [Replay("reconfigure:eth1", chase=True)] * 3 and state.chases == 3
    state, out = run(state, [(1.1, LinkChanged(A, 2, "configured"))])
    assert out == [(1.1, Verify("reconfigure:eth1"))] and state.chases == 0
    state, out = run(state, [(1.11, Done()), (2.0, LinkChanged(A, 1, "configuring", "eth0")),
                             (2.01, Lost(1, "networkd"))])
    assert out[-1] == (2.01, Replay("reconfigure:eth0", chase=True)) and state.chases == 1


def test_without_chase_a_loss_while_busy_waits_for_settled():
    state = up()  # as with [replay] chase = false
    state, out = run(state, [(1.0, LinkChanged(A, 2, "configuring", "eth1")), (1.001, Lost(40, "networkd"))])
    assert out == [] and state.lost == 40


def test_a_chase_keeps_the_quiet_period_and_networkd_off_the_bus_is_not_chased():
    state = up(chase=True, quiet=0.5)
    state, out = run(state, [(1.0, LinkChanged(A, 2, "configuring", "eth1")), (1.1, Lost(4, "networkd"))])
    assert out == [(1.1, Wake(1.6))]
    state, out = run(state, [(1.6, Tick())])
    assert out == [(1.6, Replay("reconfigure:eth1", chase=True))]
    gone = up(chase=True)
    gone, out = run(gone, [(1.0, OwnerChanged(None)), (1.1, Lost(4, "networkd"))])
    assert out[-1] == (1.1, Wake(6.0))  # absent_grace, as before: nobody is configuring anything


def test_a_suspect_with_a_delay_re_reads_no_sooner_and_a_loss_meanwhile_is_replayed_at_once():
    """An address going (networkd starting a link's configure) is re-read for silently flushed
    routes only after a grace: the wipe that follows is not held up by a dump."""
    state = up()
    state, out = run(state, [(1.0, Suspect("address-removed:eth1", 0.05))])
    assert out == [(1.0, Wake(1.05))]
    state, out = run(state, [(1.01, Lost(3, "networkd"))])
    assert out == [(1.01, Replay("address-removed:eth1"))]
    state, out = run(state, [(1.02, Done())])
    assert out == [(1.02, Wake(1.05))]
    state, out = run(state, [(1.05, Tick())])
    assert out == [(1.05, Verify("address-removed:eth1"))]


def test_networkd_configuring_after_a_suspect_re_reads_once_settled_without_the_grace():
    state = up()
    state, out = run(state, [(1.0, Suspect("address-removed:eth1", 0.05)),
                             (1.001, LinkChanged(A, 2, "configuring", "eth1")),
                             (1.01, LinkChanged(A, 2, "configured"))])
    assert out[-1] == (1.01, Verify("address-removed:eth1"))
