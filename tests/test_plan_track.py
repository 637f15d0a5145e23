from __future__ import annotations

from netd_hook.adapters.netlink import Change, Dump, HostRoute, Link, LocalAddress
from netd_hook.core.model import AF_INET, Route, Snapshot
from netd_hook.core.plan import Liveness, plan
from netd_hook.core.scope import Scope
from netd_hook.core.track import Cause, Tracker, classify
from tests.fixtures import KERNEL_RULES, NETWORKD_RULE, NODE_RULES, eni_routes, pod_rules

NETWORKD_PORT, CNI_PORT, OUR_PORT = 700, 4242, 99


def live(**kw):
    base = dict(
        links={"eth0", "eth1", "eni1"},
        host_routes={"10.1.1.5": {"eni1"}},
        local_addresses={"10.0.1.10"},
        managed={"eth0", "eth1"},
    )
    base.update(kw)
    return Liveness(**base)


def test_plan_adds_missing_routes_first_then_rules_by_priority_and_skips_present():
    rules = [*NODE_RULES, *pod_rules("10.1.1.5", 2)]
    snap = Snapshot(frozenset(rules), frozenset(eni_routes(1)))
    p = plan(snap, present_rules={NODE_RULES[0]}, present_routes=set(), live=live())
    assert [r.priority for r in p.rules] == [512, 1024, 1536, 32765]
    assert [r.dst for r in p.routes] == ["10.0.1.1/32", "0.0.0.0/0"]  # the gateway's /32 before "via" it
    assert not p.held_back and len(p) == 6


def test_liveness_gate_holds_back_dead_pods_and_missing_devices_but_not_node_addresses():
    snap = Snapshot(
        frozenset([*pod_rules("10.1.1.5", 2), *pod_rules("10.1.1.6", 2), NODE_RULES[2], NODE_RULES[1]]),
        frozenset([*eni_routes(1), Route(AF_INET, 2, "10.9.0.0/16", oif="eth9")]),
    )
    p = plan(snap, set(), set(), live())
    reasons = {s.entry: s for s in p.held_back}
    for rule in pod_rules("10.1.1.6", 2):  # no host route: the CNI deleted this pod
        assert reasons[rule].dead and "10.1.1.6" in reasons[rule].reason
    assert not reasons[Route(AF_INET, 2, "10.9.0.0/16", oif="eth9")].dead
    assert NODE_RULES[2] in p.rules  # 32765 `from <ENI primary>`: alive while the address is configured
    assert set(pod_rules("10.1.1.5", 2)) <= set(p.rules)


def test_host_route_on_a_managed_link_does_not_keep_a_pod_alive():
    snap = Snapshot(frozenset(pod_rules("10.1.1.5", 2)), frozenset())
    p = plan(snap, set(), set(), live(host_routes={"10.1.1.5": {"eth1"}}))
    assert not p.rules and len(p.held_back) == 2


def test_set_aside_entries_are_not_planned():
    snap = Snapshot(frozenset(NODE_RULES[1:2]), frozenset())
    assert not plan(snap, set(), set(), live(), excluded={NODE_RULES[1]}).rules


def test_classify_by_netlink_port():
    nd = {NETWORKD_PORT}.__contains__
    assert classify(0, {OUR_PORT}, nd) is Cause.KERNEL
    assert classify(OUR_PORT, {OUR_PORT}, nd) is Cause.SELF
    assert classify(NETWORKD_PORT, {OUR_PORT}, nd) is Cause.NETWORKD
    assert classify(CNI_PORT, {OUR_PORT}, nd) is Cause.OTHER


def _tracker(snapshot=None):
    snapshot = snapshot or Snapshot()
    t = Tracker(Scope(), snapshot)
    rules = [*NODE_RULES, *pod_rules("10.1.1.5", 2), *KERNEL_RULES, NETWORKD_RULE]
    t.load(Dump(rules=rules, routes=eni_routes(1), host_routes=[HostRoute("10.1.1.5", "eni1")],
                local_addresses=[LocalAddress("10.0.1.10", "eth1")],
                links=[Link(2, "eth0"), Link(3, "eth1"), Link(4, "eni1")]))
    return t


def test_dump_merges_in_scope_entries_into_the_snapshot():
    t = _tracker(Snapshot(frozenset(pod_rules("10.1.1.9", 3))))
    assert t.rules == {*NODE_RULES, *pod_rules("10.1.1.5", 2), *pod_rules("10.1.1.9", 3)}
    assert t.routes == set(eni_routes(1))


def test_networkd_deletion_is_a_loss_cni_deletion_is_forgotten_our_rollback_is_neither():
    t = _tracker()
    nd = {NETWORKD_PORT}.__contains__
    rule512, rule1536 = pod_rules("10.1.1.5", 2)

    def apply(item, port, new=False):
        return t.apply(Change(new, item, port), classify(port, {OUR_PORT}, nd))

    assert apply(NODE_RULES[1], NETWORKD_PORT) is True
    assert NODE_RULES[1] in t.rules and NODE_RULES[1] not in t.present_rules
    assert apply(rule512, CNI_PORT) is False
    assert rule512 not in t.rules  # never replayed
    assert apply(rule1536, OUR_PORT) is False and rule1536 in t.rules
    assert apply(eni_routes(1)[1], 0) is True  # kernel flush: lost, repairable
    assert apply(KERNEL_RULES[0], NETWORKD_PORT) is False  # not protected
    assert apply(NODE_RULES[1], NETWORKD_PORT, new=True) is False and NODE_RULES[1] in t.present_rules


def test_cni_adding_a_pod_extends_the_snapshot_and_reports_it_fresh():
    t = _tracker()
    t.fresh.clear()
    new = pod_rules("10.1.1.7", 2)
    for r in new:
        t.apply(Change(True, r, CNI_PORT), Cause.OTHER)
    assert set(new) <= t.rules and t.fresh == new


def test_device_deletion_flushes_its_routes_and_host_routes_from_the_view():
    t = _tracker()
    t.apply(Change(False, Link(4, "eni1"), 0), Cause.KERNEL)
    t.apply(Change(False, Link(3, "eth1"), 0), Cause.KERNEL)
    assert not t.present_routes and "10.1.1.5" not in t.host_routes and "10.0.1.10" not in t.local_addresses
    assert t.ifindex("eth1") is None and t.ifindex("eth0") == 2


def test_rescope_forgets_what_left_the_scope():
    t = _tracker()
    t.rescope(Scope(exclude_priorities=((512, 512),)))
    assert not any(r.priority == 512 for r in t.rules)


def test_a_node_address_briefly_gone_lets_its_rule_back_at_once():
    """networkd takes a reconfigured link's address away and re-adds it ~60 ms later on 249: the
    ENI's 32765 rule comes back with the rest of the wipe, not after its address (issue 13)."""
    snap = Snapshot(frozenset([NODE_RULES[2]]), frozenset())
    p = plan(snap, set(), set(), live(local_addresses=set(), node_addresses={"10.0.1.10"}))
    assert p.rules == (NODE_RULES[2],) and not p.held_back


def test_a_node_address_coming_back_is_no_loss_and_its_device_going_away_ends_its_rule():
    t = _tracker()
    t.apply(Change(False, NODE_RULES[2], NETWORKD_PORT), Cause.NETWORKD)
    t.apply(Change(False, LocalAddress("10.0.1.10", "eth1"), NETWORKD_PORT), Cause.NETWORKD)
    assert "10.0.1.10" in t.node_addresses and "10.0.1.10" not in t.local_addresses
    p = plan(t.snapshot(), t.present_rules, t.present_routes, t.liveness(frozenset({"eth0", "eth1"})))
    assert NODE_RULES[2] in p.rules  # while the address is away
    assert t.apply(Change(True, LocalAddress("10.0.1.10", "eth1"), NETWORKD_PORT), Cause.NETWORKD) is False
    t.apply(Change(False, LocalAddress("10.0.1.10", "eth1"), NETWORKD_PORT), Cause.NETWORKD)
    t.apply(Change(False, Link(3, "eth1"), 0), Cause.KERNEL)  # the ENI is detached
    assert "10.0.1.10" not in t.node_addresses
    p = plan(t.snapshot(), t.present_rules, t.present_routes, t.liveness(frozenset()))
    assert [s.dead for s in p.held_back if s.entry == NODE_RULES[2]] == [True]


def test_the_chase_order_is_oldest_deletion_first_and_drops_what_came_back_as_it_goes():
    t = _tracker()
    first, second = pod_rules("10.1.1.5", 2)
    for r in (second, NODE_RULES[0], first):
        t.apply(Change(False, r, NETWORKD_PORT), Cause.NETWORKD)
    t.apply(Change(True, NODE_RULES[0], NETWORKD_PORT), Cause.NETWORKD)  # back (networkd's own add)
    t.mark_present([second])  # the kernel said EEXIST: back, though `gone` still lists it
    assert list(t.chase_order()) == [first]
    assert list(t.gone) == [first]  # the stale one was dropped on the way
    t.apply(Change(False, second, NETWORKD_PORT), Cause.NETWORKD)
    it = t.chase_order()
    assert next(it) == first  # a caller that stops early: the rest is left as it was
    del it
    assert list(t.gone) == [first, second]


def test_rules_we_restored_for_a_pod_that_then_goes_away_are_taken_out_again():
    t = _tracker()
    rule512, rule1536 = pod_rules("10.1.1.5", 2)
    for r in (rule512, rule1536):  # networkd wipes, we replay
        t.apply(Change(False, r, NETWORKD_PORT), Cause.NETWORKD)
        t.apply(Change(True, r, OUR_PORT), Cause.SELF)
    t.apply(Change(False, HostRoute("10.1.1.5", "eni1"), 0), Cause.KERNEL)  # the pod's veth is gone
    assert sorted(t.restored.orphans, key=lambda r: r.priority) == [rule512, rule1536]
    assert rule512 not in t.rules and rule1536 not in t.rules


def test_rules_someone_else_added_are_never_ours_to_remove():
    t = _tracker()
    rule512, rule1536 = pod_rules("10.1.1.5", 2)
    t.apply(Change(False, rule512, NETWORKD_PORT), Cause.NETWORKD)
    t.apply(Change(True, rule512, OUR_PORT), Cause.SELF)
    t.apply(Change(True, rule512, CNI_PORT), Cause.OTHER)  # the CNI re-asserted it (EEXIST or a new pod)
    t.apply(Change(False, Link(4, "eni1"), 0), Cause.KERNEL)
    assert t.restored.orphans == []


def test_a_pod_that_vanished_between_two_dumps_is_an_orphan_too():
    t = _tracker()
    rule512, _ = pod_rules("10.1.1.5", 2)
    t.apply(Change(False, rule512, NETWORKD_PORT), Cause.NETWORKD)
    t.apply(Change(True, rule512, OUR_PORT), Cause.SELF)
    t.load(Dump(rules=[rule512], links=[Link(2, "eth0")]))  # no host route for 10.1.1.5 any more
    assert t.restored.orphans == [rule512]
    assert rule512 not in t.rules  # forgotten, not protected again by the merge of the same dump


def test_protected_route_count_is_the_snapshots_without_copying_it():
    stray = Route(AF_INET, 7, "0.0.0.0/0", oif="eth1", gateway="10.0.1.1")  # no rule looks up table 7
    t = Tracker(Scope(), Snapshot(frozenset(pod_rules("10.1.1.5", 2)), frozenset([*eni_routes(1), stray])))
    assert t.protected_route_count() == len(t.snapshot().protected_routes()) == 2
    t.unprotect(pod_rules("10.1.1.5", 2))  # the last rule looking up table 2 goes: so do its routes' protection
    assert t.protected_route_count() == len(t.snapshot().protected_routes()) == 0


def test_what_the_kernel_says_it_has_is_present_in_the_view():
    t = Tracker(Scope())
    rule = pod_rules("10.1.1.5", 2)[0]
    t.load(Dump(rules=[rule]))
    t.present_rules.discard(rule)  # a view that missed its return
    t.mark_present([rule])
    assert rule in t.present_rules


def test_the_eni_primary_rule_is_never_an_orphan_while_its_address_is_briefly_away():
    """Issue 10, finding 1: networkd removes and re-adds the ENI's address while reconfiguring;
    a re-dump in between must not take the 32765 rule (keyed on that address) for a gone pod's:
    neither forgotten nor deleted by netd-hook."""
    t = _tracker()
    eni_rule = NODE_RULES[2]  # pref 32765 from 10.0.1.10 lookup 2
    t.apply(Change(False, eni_rule, NETWORKD_PORT), Cause.NETWORKD)  # the wipe
    t.apply(Change(True, eni_rule, OUR_PORT), Cause.SELF)  # our replay
    # a re-dump while eth1 has no address (networkd re-adding it); eth1 itself still exists
    t.load(Dump(rules=[*NODE_RULES, *pod_rules("10.1.1.5", 2)], routes=eni_routes(1),
                host_routes=[HostRoute("10.1.1.5", "eni1")],
                links=[Link(2, "eth0"), Link(3, "eth1"), Link(4, "eni1")]))
    assert t.restored.orphans == [] and eni_rule in t.rules
    t.apply(Change(False, LocalAddress("10.0.1.10", "eth1"), NETWORKD_PORT), Cause.NETWORKD)
    assert t.restored.orphans == [] and eni_rule in t.rules
    # only its ENI going away for good ends it (and even then netd-hook deletes nothing)
    t.apply(Change(False, Link(3, "eth1"), 0), Cause.KERNEL)
    assert t.restored.orphans == []


def test_a_re_dump_does_not_protect_again_an_orphan_queued_for_removal() -> None:
    """Found on the booted 249 node (networkctl reload): netd-hook restored a pod's rule after
    networkd's wipe, the CNI then deleted the pod (its host route); the rule was forgotten and
    queued for removal, but a kernel re-read in the same wake-up protected it again, so a later
    wipe could replay a rule the CNI deleted on purpose (for an address it may give to the next pod)."""
    from netd_hook.adapters.netlink import Change, Dump, HostRoute, Link
    from netd_hook.core.model import Rule
    from netd_hook.core.scope import Scope
    from netd_hook.core.track import Cause

    x = "10.1.2.1"
    r512 = Rule(2, 512, 254, dst=f"{x}/32")
    t = Tracker(Scope())
    t.load(Dump(rules=[r512], host_routes=[HostRoute(x, "enia")], links=[Link(9, "enia")]))
    t.apply(Change(False, r512, 1), Cause.NETWORKD)  # networkd's wipe
    t.apply(Change(True, r512, 77), Cause.SELF)  # netd-hook's replay
    t.apply(Change(False, HostRoute(x, "enia"), 55), Cause.OTHER)  # CNI DEL: the host route
    assert t.restored.orphans == [r512] and not t.protects(r512)
    t.load(Dump(rules=[r512], links=[Link(9, "enia")]))  # the verification, before the removal is sent
    t.apply(Change(False, r512, 77), Cause.SELF)  # the removal's echo
    assert not t.protects(r512) and r512 not in t.snapshot().rules
