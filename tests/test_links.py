"""netd_hook.core.links: the one definition of a link networkd manages, and doctor using it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from netd_hook.adapters import status
from netd_hook.commands import doctor
from netd_hook.core import decide, links
from tests.test_doctor import NOW, cured, fresh_status, one


def test_every_state_networkd_reports_is_classified() -> None:
    states = {s: s for s in decide.KNOWN_STATES}
    assert links.managed(states) == {"pending", "initialized", "configuring", "configured", "failed"}
    # a busy link is always one networkd configures; of the settled ones, two are not managed
    assert links.managed(states).issuperset(decide.BUSY_STATES)
    assert decide.SETTLED_STATES - links.managed(states) == {"unmanaged", "linger"}


def test_no_state_is_not_managed_and_an_unknown_one_is() -> None:
    # "": a state file without ADMIN_STATE= (ops reads /run/systemd/netif/links)
    assert not links.is_managed("")
    # a state some later networkd may add counts as managed, as every earlier definition had it
    assert links.is_managed("reconfiguring")


def test_keys_are_the_callers() -> None:
    by_index = {1: "unmanaged", 2: "configured", 3: "linger", 7: "configuring"}
    assert links.managed(by_index) == frozenset({2, 7})
    by_text = {"1": "unmanaged", "2": "configured", "4": ""}  # as ops reads the state files
    assert links.managed(by_text) == frozenset({"2"})
    assert links.managed({}) == frozenset()


def test_managed_names_are_the_kernels_names_of_managed_links() -> None:
    # the daemon's (ifindex -> state, tracker's ifindex -> name) and ops' (state files, a dump)
    states = {2: "configured", 3: "unmanaged", 7: "configuring", 9: "configured"}
    assert links.managed_names(states, {2: "eth1", 3: "eni3", 7: "eth2"}) == frozenset({"eth1", "eth2"})  # 9: gone


def test_doctors_links_and_cured_findings_name_the_same_managed_links(tmp_path: Path) -> None:
    """lo under a .network of its own is managed (both findings say so); a lingering link and
    one without a state are in neither list, nor counted as unmanaged."""
    cured(tmp_path)
    nd = replace(fresh_status().networkd,
                 links={"eth0": "configured", "lo": "configured", "eth9": "linger", "eth4": "", "eth3": "failed",
                        "veth1": "unmanaged"})
    findings = doctor.assess(doctor.read_tree(tmp_path, 252), status.Probe(True, fresh_status(networkd=nd)),
                             NOW - 30, NOW)
    assert one(findings, "networkd.links").summary == (
        "networkd manages 3 links: eth0 (configured), eth3 (failed), lo (configured); 1 unmanaged")
    assert "Links networkd manages now (from netd-hook's status): eth0, eth3, lo." in one(
        findings, "networkd.cured").detail
