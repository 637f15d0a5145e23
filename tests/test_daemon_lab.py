"""The daemon against real systemd-networkd and a private dbus-daemon, in a throwaway namespace.

Every check reads the kernel with an independent oracle (`ip -j -d rule show`, `ip -j route
show table N`), never the daemon's own view.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import DRILL, Daemon, prefs, route_set, rule_set, wait_until
from tests.lab import Lab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/lib/systemd/systemd-networkd"),
                       reason="needs root and systemd-networkd"),
]

TABLES = (2, 3)


# `node` (a lab node of vpc_node's layout) is tests/conftest.py's.


@contextlib.contextmanager
def vpc_node(**lab_kwargs: Any) -> Iterator[Lab]:
    """eth0 (primary), two secondary ENIs, strict-mode node rules, pods on every ENI. The lab runs
    networkd the way a node does (socket-activated, udev) unless `lab_kwargs` say otherwise."""
    with Lab(**lab_kwargs) as lab:
        enis = [lab.add_eni(1), lab.add_eni(2)]
        # eth2 appearing wiped eth1's 32765 rule already (the outage itself); put it back like ipamd
        lab.ip_batch([f"rule add from {e.ip} lookup {e.table} priority 32765" for e in enis], force=True)
        lab.node_rules(strict=True)
        veths = {ip: lab.add_pod(ip, eni) for ip, eni in (("10.1.0.5", 0), ("10.1.1.5", 1), ("10.1.1.6", 1),
                                                           ("10.1.2.5", 2))}
        # a dual-stack pod: IPv6 rules and table routes are protected the same way
        for cmd in (f"route add 2001:db8:1::5/128 dev {veths['10.1.1.5']}",
                    "rule add to 2001:db8:1::5 lookup main priority 512",
                    "rule add from 2001:db8:1::5 lookup 2 priority 1536",
                    "route add default via fe80:ec2::1 dev eth1 table 2"):
            lab.run("ip", "-6", *cmd.split())
        yield lab


@pytest.fixture
def daemon(node, tmp_path: Path):
    d = Daemon(node, tmp_path / "state").start()
    yield d
    d.close()


def healthy(lab):
    return rule_set(lab), route_set(lab, TABLES) | route_set(lab, (2,), family=6)


def wait_back(lab, want, daemon, what, timeout=10.0, mark=None):
    """Wait for a repair logged after `mark` (when given), then for the kernel to match `want`."""
    if mark is not None:
        daemon.wait_log(r" repair trigger=", timeout, start=mark)
    try:
        wait_until(lambda: healthy(lab) == want, timeout, what)
    except AssertionError:
        rules, routes = healthy(lab)
        raise AssertionError(
            f"{what}: rules missing {sorted(prefs(want[0] - rules))}, extra {sorted(prefs(rules - want[0]))}; "
            f"routes missing {sorted(want[1] - routes)}\nlog:\n{daemon.log()}"
        ) from None


def assert_repairs_of(reps: list[dict], *triggers: str) -> None:
    """The repairs logged are of what the test did: each names one of `triggers`, or is a repair
    of deletions networkd made while it still looked settled (trigger `networkd`: its pass began
    before its signal was read, which can take the whole wipe; or an ENI's 32765 rule returned
    with the address networkd re-adds), never anything else."""
    assert reps, "no repair logged"
    for i, r in enumerate(reps):
        assert r["trigger"] in triggers or r["trigger"] == "networkd", f"repair {i} is not of {triggers}: {reps}"


def test_reconfigure_of_a_secondary_is_repaired(node, daemon):
    want = healthy(node)
    assert {512, 1024, 1536, 20, 32765} <= set(prefs(want[0]))
    mark = daemon.mark()
    node.reconfigure("eth1")
    wait_back(node, want, daemon, "repair after reconfigure eth1", mark=mark)
    # IPv4: 20, 512x4, 1024, 1536x3, 32765x2; IPv6: 512, 1536: chased in one or more batches
    # while networkd is busy, eth1's 32765 rule with them even while its address is away.
    wait_until(lambda: sum(int(r["rules_restored"]) for r in daemon.repairs(mark)) == 13, 5,
               "repair lines accounting for 13 rules")
    rep = daemon.repairs(mark)
    assert_repairs_of(rep, "reconfigure:eth1")
    # table 2: the IPv6 default (deleted by networkd), the IPv4 pair (flushed without a notification)
    assert sum(int(r["routes_restored"]) for r in rep) == 3
    node.wait_settled()  # raises unless networkd settles
    assert healthy(node) == want  # and, settled, it took nothing away again


def test_reconfigure_of_the_primary_alone_is_repaired(node, daemon):
    want = healthy(node)
    mark = daemon.mark()
    node.reconfigure("eth0")
    wait_back(node, want, daemon, "repair after reconfigure eth0", mark=mark)
    # networkd drops every foreign rule whichever link it configures: the repairs are this
    # reconfigure's, and they account for all 13 rules (11 IPv4, 2 IPv6)
    wait_until(lambda: sum(int(r["rules_restored"]) for r in daemon.repairs(mark)) == 13, 5,
               f"repair lines accounting for 13 rules: {daemon.repairs(mark)}")
    assert_repairs_of(daemon.repairs(mark), "reconfigure:eth0")


def test_restart_then_reconfigure_is_repaired(node, daemon):
    want = healthy(node)
    mark = daemon.mark()
    node.restart_networkd()
    daemon.wait_log(r"networkd owner: :1\.", start=mark)
    node.reconfigure("eth1", "eth2")
    wait_back(node, want, daemon, "repair after restart + reconfigure", mark=mark)
    # The restart is seen first; the reconfigure's wipe is repaired with it when it came before
    # that repair (usual here), else by a repair of its own.
    reps = daemon.repairs(mark)
    assert reps[0]["trigger"] == "networkd-restart", reps
    assert_repairs_of(reps, "networkd-restart", "reconfigure:eth1", "reconfigure:eth2")


def test_new_managed_link_appearing_is_repaired(node, daemon):
    want = healthy(node)
    mark = daemon.mark()
    eth3 = node.add_eni(3, wait=False)  # ENI hot-plug: networkd configures it, dropping every foreign rule
    node.wait_settled()
    want = (want[0] | {r for r in rule_set(node) if dict(r)["priority"] == "32765"}, want[1])  # the CNI's new rule
    wait_back(node, want, daemon, "repair after a new ENI", mark=mark)
    # The trigger names the first link of the new veth pair networkd reported (by index when its
    # name was not known yet); every foreign rule of before came back (11 IPv4, 2 IPv6)
    vpc3 = int(node.read_file(f"/sys/class/net/{eth3.peer}/ifindex"))
    assert_repairs_of(daemon.repairs(mark), *(f"link-added:{x}" for x in (eth3.name, eth3.peer, eth3.ifindex, vpc3)))
    assert sum(int(r["rules_restored"]) for r in daemon.repairs(mark)) >= 13, daemon.repairs(mark)


def test_pod_deleted_by_the_cni_just_before_a_reconfigure_stays_deleted(node, daemon):
    node.del_pod("10.1.1.6")  # rules first, then the veth, as CNI DEL does
    want = healthy(node)
    mark = daemon.mark()
    node.reconfigure("eth1")
    wait_back(node, want, daemon, "repair without the deleted pod", mark=mark)
    daemon.wait_log(r"lost \d+ protected entries \(removed by networkd\)")
    time.sleep(0.3)  # a late replay would show up here
    assert not [r for r in rule_set(node) if "10.1.1.6" in str(r)]
    assert healthy(node) == want


def test_pod_added_just_before_a_reconfigure_is_kept(node, daemon):
    node.add_pod("10.1.2.9", 2)
    want = healthy(node)
    mark = daemon.mark()
    node.reconfigure("eth2")
    wait_back(node, want, daemon, "repair including the new pod", mark=mark)
    assert any('"10.1.2.9"' in str(r) for r in rule_set(node))


def test_injected_failure_mid_batch_is_rolled_back_then_the_rest_applied(node, tmp_path: Path):
    want = healthy(node)
    with Daemon(node, tmp_path / "state", argv=DRILL, env={"NETD_HOOK_DRILL_FAIL_RULE": "3"}) as d:
        node.reconfigure("eth1")
        d.wait_log(r"cannot restore .*Address family not supported.*set aside")
        d.wait_log(r"rolled back \d+ entries added by the failed batch")
        wait_back(node, want, d, "repair after the injected failure")  # the set-aside entry on the next pass
        # the repair whose batch had a 3rd rule (the first, unless the wipe was seen in two parts)
        [failed] = [r for r in d.repairs() if r["rollbacks"] != "0"]
        assert failed["rollbacks"] == "1" and failed["set_aside"] == "1" and int(failed["batches"]) == 3


def test_hook_restarted_while_rules_are_missing_repairs_at_start(node, tmp_path: Path):
    want = healthy(node)
    state = tmp_path / "state"
    with Daemon(node, state):
        pass  # leaves a snapshot behind
    node.reconfigure("eth1", wait=True)
    assert rule_set(node) != want[0]
    with Daemon(node, state) as d:
        wait_back(node, want, d, "startup reconciliation")
        assert d.repairs()[0]["trigger"] == "startup"


def test_corrupt_snapshot_is_set_aside_and_rebuilt_from_the_kernel(node, tmp_path: Path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "snapshot.json").write_text("{garbage")
    with Daemon(node, state) as d:
        d.wait_log(r"snapshot-rebuilt reason=\"snapshot file is corrupt .* moved_to=\S+snapshot\.json\.corrupt-")
        assert [p.name.split("-")[0] for p in state.iterdir() if "corrupt" in p.name] == ["snapshot.json.corrupt"]
        want = healthy(node)
        mark = d.mark()
        node.reconfigure("eth2")
        wait_back(node, want, d, "repair with a rebuilt snapshot", mark=mark)
    assert (state / "snapshot.json").exists()


def test_signals_from_a_stranger_are_ignored(node, daemon):
    want = healthy(node)
    eth1 = node.enis[1].ifindex
    # A stranger claims eth1 is configuring forever: were it believed, networkd would never look
    # settled and nothing would be repaired.
    node.busctl("emit", f"/org/freedesktop/network1/link/_3{eth1}",
                "org.freedesktop.DBus.Properties", "PropertiesChanged", "sa{sv}as",
                "org.freedesktop.network1.Link", "1", "AdministrativeState", "s", "configuring", "0")
    node.busctl("emit", "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameOwnerChanged", "sss",
                "org.freedesktop.network1", node.name_owner(), "")
    mark = daemon.mark()
    node.reconfigure("eth1")
    wait_back(node, want, daemon, "repair despite forged signals", mark=mark)
    assert_repairs_of(daemon.repairs(mark), "reconfigure:eth1")  # networkd's own signals, not the forged ones
    # The forged PropertiesChanged reached the daemon and was counted as rejected; the forged
    # NameOwnerChanged never reaches it (its match names the bus daemon as the sender).
    wait_until(lambda: daemon.status().counters.rejected_signals == 1, 3, "the forged signal counted")
    assert daemon.status().networkd.owner == node.name_owner()  # the forged owner change had no effect
    # and a deliberate CNI deletion while the stranger shouts "busy" is still never replayed
    mark = daemon.mark()
    node.del_pod("10.1.2.5")
    time.sleep(0.3)
    assert not [r for r in rule_set(node) if '"10.1.2.5"' in str(r)]
    assert daemon.repairs(mark) == []  # a deletion on purpose is no loss: nothing to repair


def test_sigterm_flushes_the_snapshot_and_exits_0_within_2s(node, tmp_path: Path):
    state = tmp_path / "state"
    d = Daemon(node, state).start()
    node.add_pod("10.1.1.77", 1)
    time.sleep(0.3)  # well inside the 1 s save delay: only the flush at exit can have written it
    d.stop()  # asserts exit 0 within 2 s
    assert d.notes.count("STOPPING=1") == 1
    assert "10.1.1.77/32" in (state / "snapshot.json").read_text()
    d.close()


def test_watchdog_pings_and_sighup_reloads_or_keeps_the_running_config(node, tmp_path: Path):
    config = tmp_path / "live.toml"
    config.write_text('[scope]\nexclude_priorities = [1024]\n')
    d = Daemon(node, tmp_path / "state", env={"WATCHDOG_USEC": "200000"}, extra_args=["--config", str(config)])
    d.start()
    try:
        d.wait_note("WATCHDOG=1", timeout=2)
        mark = d.mark()
        node.reconfigure("eth1")
        d.wait_log(r" repair trigger=", start=mark)
        time.sleep(0.3)
        assert 1024 not in prefs(rule_set(node))  # out of scope: not protected, not restored
        config.write_text("[scope]\nexclude_priorities = ['oops']\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log(r"reload failed, keeping the running configuration: "
                   r".*live.toml: \[scope\] exclude_priorities: 'oops'")
        node.run("ip", "rule", "add", "fwmark", "0x80/0x80", "lookup", "main", "priority", "1024")
        config.write_text("")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log(r"reloaded configuration from .*live.toml")
        mark = d.mark()
        node.reconfigure("eth1")
        d.wait_log(r" repair trigger=", start=mark)
        wait_until(lambda: 1024 in prefs(rule_set(node)), 5, "the 1024 rule to be protected after the reload")
    finally:
        d.close()


def test_a_pod_gone_right_after_we_restored_its_rules_does_not_keep_them(node, daemon):
    """The race the liveness gate alone cannot close: networkd wipes, the CNI's DEL finds the
    rules already gone (no notification names the CNI), the replay puts them back, then the
    pod's veth goes. netd-hook takes out what it restored; rules it did not restore stay."""
    mark = daemon.mark()
    node.reconfigure("eth1")
    daemon.wait_log(r" repair trigger=", start=mark)
    node.add_pod("10.1.2.7", 2)  # added by "the CNI" after the repair: not netd-hook's
    node.run("ip", "link", "del", node.pods.pop("10.1.1.6").veth)
    node.run("ip", "link", "del", node.pods.pop("10.1.2.7").veth)
    try:
        wait_until(lambda: not [r for r in rule_set(node) if "10.1.1.6" in str(r)], 5, "10.1.1.6's rules to go")
    except AssertionError:
        raise AssertionError(daemon.log()) from None
    daemon.wait_log(r"removed pref 1536 from 10\.1\.1\.6/32 lookup 2: netd-hook had restored it")
    assert len([r for r in rule_set(node) if "10.1.2.7" in str(r)]) == 2  # not ours to remove
