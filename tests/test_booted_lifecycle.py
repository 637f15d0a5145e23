"""Lifecycle on booted nodes (issue 11, items 6 and 7): a real reboot, then the package upgraded,
removed and purged while pods run. Debian 12, Debian 13 and Debian 12 with networkd 249, as in
tests/test_booted.py; each verdict reads the kernel inside the node with `ip -j`.

Per node, in this order (one node per module parameter: pytest runs a node's tests together):
reboot, upgrade to a second package version built here, remove, purge.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netd_hook import __version__
from netd_hook.adapters.journal import MESSAGE_ID_REPAIR, MESSAGE_ID_SNAPSHOT_REBUILT
from tests import node as nodemod
from tests.node import Node, Observer, wait_until
from tests.test_booted import IN_CI, MISSING, NODES, foreign_rules, status, vpc_node, wait_protecting

pytestmark = [pytest.mark.booted]
if MISSING and not IN_CI:
    pytestmark.append(pytest.mark.skip(reason=f"booted nodes need {', '.join(MISSING)}"))

NEXT = f"{__version__}+upgrade1"  # the second version, built here from the same tree
NEW_BOOT_PODS = {1: 4}  # what the CNI creates after the reboot: not the earlier boot's layout
DROP_IN = "/lib/systemd/system/systemd-networkd.service.d/netd-hook.conf"


@pytest.fixture(scope="session")
def next_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tree as version NEXT: a changelog entry and __version__ bumped in a copy."""
    src = Path(tempfile.mkdtemp(prefix="ndh-next-"))
    try:
        for name in ("pyproject.toml", "README.md", "netd_hook", "units", "packaging"):
            (shutil.copytree if (nodemod.ROOT / name).is_dir() else shutil.copy)(nodemod.ROOT / name, src / name)
        init = src / "netd_hook/__init__.py"
        init.write_text(init.read_text().replace(f'__version__ = "{__version__}"', f'__version__ = "{NEXT}"'))
        log = src / "packaging/debian/changelog"
        log.write_text(f"netd-hook ({NEXT}) unstable; urgency=medium\n\n  * Upgrade test build.\n\n"
                       " -- netd-hook developers <netd-hook@users.noreply.github.com>  "
                       "Tue, 01 Dec 2026 12:00:00 +0000\n\n" + log.read_text())
        out = tmp_path_factory.mktemp("next-deb")
        r = subprocess.run([str(src / "packaging/build-deb.sh"), str(out)], capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        deb = Path(r.stdout.strip().splitlines()[-1])
        assert deb.name == f"netd-hook_{NEXT}_all.deb", deb
        return deb
    finally:
        shutil.rmtree(src, ignore_errors=True)


@pytest.fixture(scope="module", params=list(NODES), ids=list(NODES))
def node(request: pytest.FixtureRequest, deb: Path) -> Iterator[Node]:
    with vpc_node(request.param, deb) as n:
        yield n


def journal_since(n: Node, message_id: str, since_us: int) -> list[dict[str, Any]]:
    return [e for e in n.journal("-b", "-u", "netd-hook", f"MESSAGE_ID={message_id}")
            if int(e["__REALTIME_TIMESTAMP"]) >= since_us]


def realtime_us(n: Node) -> int:
    return int(n.run("date", "+%s%6N").stdout.strip())


def rule_changes(events: list[list[Any]]) -> list[list[Any]]:
    return [e for e in events if e[1] in ("new", "del")]


def test_after_a_reboot_nothing_of_the_earlier_boot_is_replayed(node: Node) -> None:
    n = node
    kernel_boot = n.boot_id()
    before = n.read_file("/run/netd-hook/boot-id").strip()

    def saved() -> dict[str, Any] | None:  # saves are debounced: the layout's, once written
        doc = json.loads(n.read_file("/var/lib/netd-hook/snapshot.json"))
        return doc if len(doc["rules"]) == foreign_rules(n) else None
    snapshot = wait_until(saved, 10, "the layout in the saved snapshot", 0.2)
    assert snapshot["boot_id"] == before
    n.reboot()
    assert n.boot_id() != kernel_boot
    wait_until(lambda: n.show("netd-hook", "ActiveState")["ActiveState"] == "active", 30, "netd-hook up again", 0.2)
    # the new boot: a fresh kernel, and nothing of the earlier boot's snapshot put into it
    rebuilt = n.journal("-b", "-u", "netd-hook", f"MESSAGE_ID={MESSAGE_ID_SNAPSHOT_REBUILT}")
    assert len(rebuilt) == 1 and "of an earlier boot" in rebuilt[0]["MESSAGE"], rebuilt
    assert f"boot id {before}" in rebuilt[0]["MESSAGE"]
    kept = json.loads(n.read_file("/var/lib/netd-hook/snapshot.json.earlier-boot"))
    assert kept["boot_id"] == before and kept["rules"] == snapshot["rules"]
    time.sleep(1)
    assert foreign_rules(n) == 0, n.rules()
    assert n.journal("-b", "-u", "netd-hook", f"MESSAGE_ID={MESSAGE_ID_REPAIR}") == []

    # what the CNI creates in this boot is protected as usual, and only that
    n.setup_layout((0, 1), NEW_BOOT_PODS)
    n.baseline = n.protected()
    wait_protecting(n)
    now = n.read_file("/run/netd-hook/boot-id").strip()
    assert now != before and json.loads(n.read_file("/var/lib/netd-hook/snapshot.json"))["boot_id"] == now
    n.run("networkctl", "reconfigure", "eth1")
    n.wait_settled()
    wait_until(lambda: n.missing() == (frozenset(), frozenset()), 15, "the new boot's layout repaired", 0.1)
    time.sleep(0.5)
    assert n.protected() == n.baseline  # whole, and not one rule of the earlier boot's pods
    st = status(n)
    assert st is not None and st.protected.rules == foreign_rules(n)


def test_an_upgrade_touches_no_rule_and_the_new_daemon_carries_the_snapshot_on(node: Node, next_deb: Path) -> None:
    n = node
    wait_protecting(n)
    old_pid = n.main_pid("netd-hook")
    since = realtime_us(n)
    with Observer(n) as obs:
        n.install_deb(next_deb)
        wait_until(lambda: getattr(status(n), "pid", None) not in (None, old_pid), 20, "the new daemon's status", 0.2)
        time.sleep(0.5)
        changes = rule_changes(obs.close())
    assert changes == [], f"the upgrade changed the kernel: {changes[:5]}"
    new_pid = n.main_pid("netd-hook")
    assert new_pid != old_pid and n.show("netd-hook", "ActiveState")["ActiveState"] == "active"
    assert n.run("netd-hook", "--version").stdout.split()[-1] == NEXT
    assert journal_since(n, MESSAGE_ID_SNAPSHOT_REBUILT, since) == []  # the snapshot carried over
    logged = n.run("journalctl", "-b", "-u", "netd-hook", "-o", "cat", f"_PID={new_pid}").stdout
    assert re.search(r"loaded snapshot: \d+ rules", logged), logged

    # and it repairs: a networkd restart right after (the incident; with udev it wipes)
    n.systemctl("restart", "systemd-networkd")
    wait_until(lambda: n.missing() == (frozenset(), frozenset()), 15, "repair after the upgrade", 0.1)
    assert journal_since(n, MESSAGE_ID_REPAIR, since)


def test_remove_stops_the_daemon_touches_no_rule_and_takes_networkds_drop_in_along(node: Node) -> None:
    n = node
    wait_protecting(n)
    with Observer(n) as obs:
        n.run("dpkg", "-r", "netd-hook", timeout=120)
        time.sleep(0.5)
        changes = rule_changes(obs.close())
    assert changes == [], f"removing the package changed the kernel: {changes[:5]}"
    assert n.show("netd-hook", "ActiveState")["ActiveState"] in ("inactive", "failed")
    assert n.run("test", "-e", DROP_IN, check=False).returncode != 0
    assert "netd-hook" not in n.show("systemd-networkd", "DropInPaths")["DropInPaths"]
    assert n.run("test", "-s", "/var/lib/netd-hook/snapshot.json", check=False).returncode == 0  # kept
    # networkd keeps working without it (and its restart wipes, with nothing to repair it now)
    n.systemctl("restart", "systemd-networkd")
    assert n.show("systemd-networkd", "ActiveState")["ActiveState"] == "active"
    n.wait_settled()
    assert "netd-hook" not in n.systemctl("cat", "systemd-networkd").stdout


def test_purge_deletes_the_state(node: Node) -> None:
    n = node
    n.run("dpkg", "--purge", "netd-hook", timeout=120)
    for path in ("/var/lib/netd-hook", "/etc/netd-hook"):
        assert n.run("test", "-e", path, check=False).returncode != 0, f"{path} survived the purge"
    assert n.run("dpkg-query", "-W", "netd-hook", check=False).returncode != 0
