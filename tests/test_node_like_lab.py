"""The daemon against networkd run the way nodes run it: socket-activated (a holder stands in for
PID 1 and hands the same socket to networkd and to netd-hook, as `Sockets=` does), with udev, on
the machine's networkd 252 and on Ubuntu 22.04's 249; a few key cases also in the lab's other
modes (networkd binding its own socket; no udev, as in a container).

Every check reads the kernel with `ip -j` (tests/daemon.py's oracle), never the daemon's view.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netd_hook.core.status_doc import Status, from_json
from tests import test_daemon_lab as daemon_lab
from tests.daemon import ROOT, Daemon, prefs, rule_set, wait_until
from tests.lab import NETWORKD, Lab, require_networkd_249
from tests.test_carrier_lab import LabObserver, rule_deletions
from tests.test_daemon_lab import healthy, vpc_node, wait_back

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(NETWORKD), reason="needs root and systemd-networkd"),
]

# name -> Lab keyword arguments (networkd 249's path is filled in when the flavour is used)
FLAVOURS: dict[str, dict[str, Any]] = {
    "252": {},
    "249": {"networkd": "249"},
    "252-self-no-udev": {"activation": "self", "udev": False},  # the lab of netd-hook 0.1.0
    "252-socket-no-udev": {"udev": False},  # a container without udev
    "252-self-udev": {"activation": "self"},  # networkd started by hand on a node with udev
}


def _lab_kwargs(flavour: str) -> dict[str, Any]:
    kw = dict(FLAVOURS[flavour])
    if kw.get("networkd") == "249":
        kw["networkd"] = require_networkd_249()  # fails loudly in CI when it cannot be built
    return kw


@pytest.fixture
def node(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with vpc_node(**_lab_kwargs(request.param)) as lab:
        yield lab


@pytest.fixture
def daemon(node: Lab, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(node, tmp_path / "state").start()
    yield d
    d.close()


def flavours(*names: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("node", names, indirect=True)


def status_json(d: Daemon) -> tuple[int, Status]:
    """`netd-hook status --json`: its exit status and the Status it printed."""
    r = d.cli("status", "--json")
    assert r.stdout, r.stderr
    return r.returncode, from_json(json.loads(r.stdout)["status"])


def assert_nothing_forgotten(d: Daemon) -> None:
    _, st = status_json(d)
    assert st.forgotten.total == 0, (st.forgotten, d.log())
    assert st.forgotten.doubt is None


@flavours("252", "249", "252-self-no-udev", "252-socket-no-udev", "252-self-udev")
def test_reconfigure_of_a_secondary_is_repaired(node: Lab, daemon: Daemon) -> None:
    want = healthy(node)
    mark = daemon.mark()
    node.reconfigure("eth1")
    wait_back(node, want, daemon, "repair after reconfigure eth1", mark=mark)
    daemon.wait_log(r"lost \d+ protected entries \(removed by networkd\)", start=mark)
    assert_nothing_forgotten(daemon)
    _, st = status_json(daemon)
    assert st.networkd_sockets == ((node.networkd_socket_port,) if node.networkd_socket_port else ())


@flavours("249")
def test_reconfigure_of_the_primary_alone_is_repaired(node: Lab, daemon: Daemon) -> None:
    daemon_lab.test_reconfigure_of_the_primary_alone_is_repaired(node, daemon)
    assert_nothing_forgotten(daemon)


@flavours("252", "249", "252-self-udev")
def test_a_plain_networkd_restart_wipes_and_is_repaired(node: Lab, daemon: Daemon) -> None:
    """The incident itself (an unattended systemd upgrade restarting networkd): with udev the
    new networkd configures every link after start-up and drops every foreign rule."""
    want = healthy(node)
    mark = daemon.mark()
    with LabObserver(node) as obs:
        node.stop_networkd()
        lost_at = time.monotonic()
        t0 = time.monotonic_ns()
        node.start_networkd(wait=False)
        # the wipe is real: an observer sees rules deleted (only the restart did it: nothing else
        # ran); polling `ip rule` can miss it, since the chase puts them back within a few ms
        wait_until(lambda: rule_deletions(obs.events(t0)), 10, "the restart's wipe", interval=0.01)
        wait_back(node, want, daemon, "repair after a plain restart", mark=mark)
    took = time.monotonic() - lost_at
    assert_nothing_forgotten(daemon)
    assert took < 10


@flavours("249")
def test_restart_then_reconfigure_is_repaired(node: Lab, daemon: Daemon) -> None:
    daemon_lab.test_restart_then_reconfigure_is_repaired(node, daemon)
    assert_nothing_forgotten(daemon)


@flavours("249")
def test_new_managed_link_appearing_is_repaired(node: Lab, daemon: Daemon) -> None:
    daemon_lab.test_new_managed_link_appearing_is_repaired(node, daemon)
    assert_nothing_forgotten(daemon)


@flavours("252", "249", "252-self-no-udev")
def test_a_pod_the_cni_deletes_while_networkd_reconfigures_stays_deleted(node: Lab, daemon: Daemon) -> None:
    """Both at the same moment: networkd's pass and CNI DEL of one pod. networkd's deletions are
    put back; the CNI's never, whichever of the two got to a rule first."""
    gone = '"10.1.1.6"'  # as it appears in `ip -j rule` rows
    before = healthy(node)
    want = (frozenset(r for r in before[0] if gone not in str(r)), before[1])
    assert want[0] != before[0]
    mark = daemon.mark()
    node.run("networkctl", "reconfigure", "eth1")  # returns as networkd starts its pass
    node.del_pod("10.1.1.6")  # rules first, then the veth, as CNI DEL does
    node.wait_settled()
    wait_back(node, want, daemon, "repair of everyone but the deleted pod", mark=mark)
    time.sleep(0.5)  # a late replay of the CNI's deletions would show up here
    assert healthy(node) == want, daemon.log()


@flavours("252", "249")
def test_wait_returns_only_once_the_restarts_wipe_is_repaired(node: Lab, daemon: Daemon) -> None:
    """networkd's ExecStartPost= (the package's drop-in): `systemctl restart systemd-networkd`
    returns when it does, and then the kernel must already have every protected entry, although
    with udev the restart alone wipes every rule."""
    want = healthy(node)
    for _ in range(2):
        node.stop_networkd()
        node.start_networkd(wait=False)
        pid = node.networkd_pid
        r = daemon.cli("wait", "--timeout", "20", env={"MAINPID": str(pid)})
        now = healthy(node)  # read right after it returns, as an operator's next command would
        assert r.returncode == 0 and f"(pid {pid}) is settled" in r.stderr, r.stderr
        assert now == want, f"wait returned before the repair: {r.stderr}\n{daemon.log()}"
        assert "NOT VOUCHED WHOLE" not in r.stderr, r.stderr


@flavours("252")
def test_without_networkds_socket_the_wipe_is_forgotten_but_never_called_whole(node: Lab, tmp_path: Path) -> None:
    """netd-hook 0.1.0 on a socket-activated networkd: the unit gave it no socket, so networkd's
    deletions looked deliberate. That must never again pass for a whole node."""
    want = healthy(node)
    with Daemon(node, tmp_path / "state", networkd_socket=False) as d:
        d.wait_log(r"no socket from systemd")
        node.reconfigure("eth1")
        node.wait_settled()
        d.wait_log(rf"forgot \d+ protected entries deleted by port {node.networkd_socket_port} "
                   r".* while networkd was busy")
        assert not rule_set(node) >= want[0]  # nothing came back: the old failure, reproduced
        wait_until(lambda: status_json(d)[1].forgotten.doubt, 5, "the doubt to be published")
        rc, st = status_json(d)
        assert rc == 1 and st.missing == 0  # nothing missing by its own account, and yet exit 1
        assert f"port {node.networkd_socket_port}" in st.forgotten.doubt
        text = d.cli("status").stdout
        assert "NOT VOUCHED WHOLE" in text and "DOUBT:" in text, text
        r = d.cli("wait", "--timeout", "5")
        assert "NOT VOUCHED WHOLE" in r.stderr, r.stderr
        metrics = (d.runtime_dir / "metrics.prom").read_text()
        assert "netd_hook_forgotten_doubt 1" in metrics
        assert sorted(prefs(rule_set(node))) != sorted(prefs(want[0]))


@flavours("252")
def test_a_new_networkd_socket_with_another_port_restarts_the_daemon_and_nothing_is_forgotten(
        node: Lab, tmp_path: Path) -> None:
    """systemd-networkd.socket restarted while networkd still holds the old socket: PID 1's new
    socket gets another port, and the next networkd deletes through it. netd-hook was never told
    that port: it must not take the wipe for the CNI's, but exit for systemd to restart it (which
    hands it the new socket), and the restarted daemon repairs at start."""
    want = healthy(node)
    state = tmp_path / "state"
    old_port = node.networkd_socket_port
    d = Daemon(node, state).start()
    try:
        node.restart_networkd_socket()
        assert node.networkd_socket_port != old_port  # the running networkd holds the old one
        node.restart_networkd()  # the new networkd gets the new socket, and wipes (udev)
        assert d.proc is not None
        assert d.proc.wait(10) == 75, d.log()
        assert f"networkd's rtnetlink socket (port {old_port}) is gone" in d.log()
        assert "forgot " not in d.log()
    finally:
        d.close()
    with Daemon(node, state) as again:  # what Restart=on-failure does
        _, st = status_json(again)
        assert st.networkd_sockets == (node.networkd_socket_port,)
        wait_back(node, want, again, "repair at start with the new socket")


@flavours("252", "249")
def test_the_eni_primary_rule_survives_a_re_dump_while_its_address_is_away(node: Lab, daemon: Daemon) -> None:
    """Issue 10, finding 1: after a wipe netd-hook has put back the 32765 rule keyed on eth1's
    address; networkd then removes and re-adds that address (it does so while reconfiguring), and
    a re-dump of the kernel (a reload forces one) falls in between. The rule is the node's, not a
    gone pod's: never forgotten, never deleted by netd-hook."""
    e = node.enis[1]
    rule = f"pref 32765 from {e.ip}/32 lookup {e.table}"
    want = healthy(node)
    mark = daemon.mark()
    node.reconfigure("eth1")
    node.wait_settled()
    wait_back(node, want, daemon, "the wipe repaired", mark=mark)
    _, status_before = status_json(daemon)
    node.run("ip", "addr", "del", f"{e.ip}/{e.prefixlen}", "dev", e.name)  # the window networkd opens
    mark = daemon.mark()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log(r"reloaded configuration", start=mark)
    time.sleep(0.5)  # the re-dump and anything it would lead to
    node.run("ip", "addr", "add", f"{e.ip}/{e.prefixlen}", "dev", e.name)
    assert any(dict(r).get("priority") == "32765" and e.ip in str(r) for r in rule_set(node)), daemon.log()
    assert f"removed {rule}" not in daemon.log() and "netd-hook had restored it" not in daemon.log()
    wait_until(lambda: status_json(daemon)[1].missing == 0, 10, "nothing missing", interval=0.2)
    _, st = status_json(daemon)
    assert st.protected.rules == status_before.protected.rules, (st.protected, daemon.log())



@flavours("252", "249")
def test_a_link_without_carrier_holds_back_repairs_only_for_stuck_ms(node: Lab, tmp_path: Path) -> None:
    """Issue 10, finding 2: eth3 appears, managed, without carrier: networkd starts configuring
    it (and wipes every foreign rule), then leaves it `configuring` for good. The wipe is repaired
    once eth3 has been busy for stuck_ms, and so is a later one by eth1's reconfigure; `status`
    names eth3; when eth3 gets its carrier at last the kernel is checked again (networkd 249 wipes
    again on carrier gain, 252 does not): whole at the end."""
    want = healthy(node)
    with Daemon(node, tmp_path / "state", config="[replay]\nstuck_ms = 1500\n") as d:
        mark = d.mark()
        node.write_file("/etc/systemd/network/10-eth3.network", "[Match]\nName=eth3\n\n[Network]\n"
                        "Address=10.0.3.10/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n")
        node.reload()
        node.ip_batch(["link add eth3 type veth peer name vpc3"])  # vpc3 stays down: no carrier
        node.wait_state("eth3", "configuring")
        wait_back(node, want, d, "repair despite a link stuck configuring", timeout=15, mark=mark)
        assert node.link_states()["eth3"] == "configuring"
        wait_until(lambda: "eth3" in status_json(d)[1].networkd.stuck, 5, "eth3 named as stuck")
        assert "eth3" in d.cli("status").stdout
        mark = d.mark()
        started = time.monotonic()
        node.reconfigure("eth1")
        wait_back(node, want, d, "eth1's wipe repaired while eth3 is stuck", timeout=15, mark=mark)
        assert time.monotonic() - started < 10
        node.run("ip", "link", "set", "vpc3", "up")  # the carrier comes: eth3 configures at last
        node.wait_state("eth3", "configured")
        wait_back(node, want, d, "whole after the stuck link settled (249 wipes again on carrier)")
        wait_until(lambda: status_json(d)[1].networkd.stuck == {}, 5, "eth3 no longer stuck")


@flavours("252")
def test_wait_says_what_it_could_not_check(node: Lab, daemon: Daemon, tmp_path: Path) -> None:
    """Issue 10, finding 8: without a readable snapshot `wait` cannot read the kernel against
    it, and must say so instead of claiming the kernel was checked."""
    elsewhere = tmp_path / "no-snapshot-here"
    elsewhere.mkdir()
    argv = [*daemon.argv, "wait", "--timeout", "5", "--runtime-dir", str(daemon.runtime_dir),
            "--state-dir", str(elsewhere)]
    r = node.run("env", f"PYTHONPATH={ROOT}", *argv, check=False)
    assert r.returncode == 0, r.stderr
    assert "the kernel itself was NOT checked (cannot read the snapshot" in r.stderr, r.stderr
    assert "the kernel has every entry" not in r.stderr
    r = daemon.cli("wait", "--timeout", "5")  # with it: checked, and said so
    assert "the kernel has every entry netd-hook still protects" in r.stderr, r.stderr


@flavours("252")
def test_rejected_signals_are_published_at_once(node: Lab, daemon: Daemon) -> None:
    """Issue 10, finding 8: a forged signal's count reaches status.json promptly, not at the next
    unrelated event or the 30 s heartbeat."""
    eth1 = node.enis[1].ifindex
    time.sleep(1.0)  # past the start-up publishes
    node.busctl("emit", f"/org/freedesktop/network1/link/_3{eth1}", "org.freedesktop.DBus.Properties",
                "PropertiesChanged", "sa{sv}as", "org.freedesktop.network1.Link", "1",
                "AdministrativeState", "s", "configuring", "0")
    started = time.monotonic()
    wait_until(lambda: status_json(daemon)[1].counters.rejected_signals >= 1, 5, "the count published",
               interval=0.05)
    assert time.monotonic() - started < 2.0
