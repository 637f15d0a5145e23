"""Audit records in a real systemd-journald (private, in the lab's mount namespace), read back
with `journalctl`, their numbers checked against the kernel."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from netd_hook.adapters import journal
from tests.daemon import DRILL, Daemon, rule_set, wait_until
from tests.lab import Lab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/lib/systemd/systemd-journald"),
                       reason="needs root, systemd-networkd and systemd-journald"),
]

ME = "SYSLOG_IDENTIFIER=netd-hook"


@pytest.fixture
def node():
    with Lab(journald=True) as lab:
        enis = [lab.add_eni(1), lab.add_eni(2)]
        lab.ip_batch([f"rule add from {e.ip} lookup {e.table} priority 32765" for e in enis], force=True)
        lab.node_rules(strict=True)
        for ip, eni in (("10.1.1.5", 1), ("10.1.1.6", 1), ("10.1.2.5", 2)):
            lab.add_pod(ip, eni)
        yield lab


def entries(lab: Lab, kind: str, count: int = 1) -> list[dict]:
    return lab.wait_journal(ME, f"MESSAGE_ID={journal.MESSAGE_IDS[kind]}", count=count)


def test_repair_and_generation_entries_carry_the_numbers(node, tmp_path: Path):
    want = rule_set(node), None
    with Daemon(node, tmp_path / "state") as d:
        first = entries(node, "snapshot-rebuilt")[0]  # first start: built from the kernel
        assert first["PRIORITY"] == "5" and first["NETD_HOOK_MOVED_TO"] == "-"
        assert int(first["NETD_HOOK_RULES"]) == sum(1 for r in node.rules(4) if r.get("protocol") != "kernel") == 10
        pid = int((d.runtime_dir / "daemon.lock").read_text())
        assert int(first["_PID"]) == pid

        mark = d.mark()
        node.reconfigure("eth1")
        node.wait_settled()
        wait_until(lambda: rule_set(node) == want[0], 10, "repair")
        time.sleep(0.3)  # the audit entry follows the batch's acks
        # The wipe may be repaired in several batches (a chase, then the re-read once networkd
        # settles): every logged repair has its journal entry, with the same numbers.
        logged = d.repairs(mark)
        reps = entries(node, "repair", count=len(logged))
        assert len(reps) == len(logged) >= 1
        for rep, line in zip(reps, logged, strict=True):
            assert rep["MESSAGE"].startswith("repair trigger=")
            assert rep["PRIORITY"] == "4" and rep["_TRANSPORT"] == "journal" and int(rep["_PID"]) == pid
            for field in ("trigger", "rules_restored", "routes_restored", "skipped_dead", "duration_ms",
                          "networkd_owner"):
                assert rep[f"NETD_HOOK_{field.upper()}"] == line[field]
        assert reps[0]["NETD_HOOK_TRIGGER"] == "reconfigure:eth1"
        # networkd drops every foreign rule manager-wide: all of them came back
        restored = sum(int(r["NETD_HOOK_RULES_RESTORED"]) for r in reps)
        assert restored == sum(1 for r in node.rules(4) if r.get("protocol") != "kernel")

        node.restart_networkd()
        new_pid = node.networkd_pid
        gens = entries(node, "networkd-generation", count=3)  # start, left the bus, the new one
        assert [g["NETD_HOOK_GENERATION"] for g in gens] == ["1", "1", "2"]
        assert gens[1]["NETD_HOOK_NETWORKD_OWNER"] == "-"
        assert gens[2]["NETD_HOOK_NETWORKD_PID"] == str(new_pid)
        assert gens[2]["NETD_HOOK_PREVIOUS_OWNER"] == gens[0]["NETD_HOOK_NETWORKD_OWNER"] != "-"
        assert gens[2]["PRIORITY"] == "5"


def test_rollback_and_corrupt_snapshot_entries(node, tmp_path: Path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "snapshot.json").write_text("{garbage")
    with Daemon(node, state, argv=DRILL, env={"NETD_HOOK_DRILL_FAIL_RULE": "3"}) as d:
        rebuilt = entries(node, "snapshot-rebuilt")[0]
        assert rebuilt["PRIORITY"] == "3" and "corrupt" in rebuilt["NETD_HOOK_REASON"]
        assert Path(rebuilt["NETD_HOOK_MOVED_TO"]).read_text() == "{garbage"
        node.reconfigure("eth1")
        rb = entries(node, "rollback")[0]
        assert rb["PRIORITY"] == "3" and rb["NETD_HOOK_ERRNO"] == "EAFNOSUPPORT" and rb["ERRNO"] == "97"
        assert int(rb["NETD_HOOK_ROLLED_BACK"]) >= 1 and rb["NETD_HOOK_FAILED_ENTRY"].startswith("pref ")
        d.wait_log(r"rolled back \d+ entries added by the failed batch")


def test_forged_signals_make_one_rejected_entry_per_burst(node, tmp_path: Path):
    with Daemon(node, tmp_path / "state"):
        eth1 = node.enis[1].ifindex
        path = f"/org/freedesktop/network1/link/_3{eth1}"
        for _ in range(5):
            node.busctl("emit", path, "org.freedesktop.DBus.Properties", "PropertiesChanged", "sa{sv}as",
                        "org.freedesktop.network1.Link", "1", "AdministrativeState", "s", "configuring", "0")
        got = entries(node, "rejected-signals")
        assert got[0]["NETD_HOOK_REJECTED"] == "1" and got[0]["NETD_HOOK_SENDER"].startswith(":1.")
    # the other four were summarised in one entry, at the latest when the daemon stopped
    got = entries(node, "rejected-signals", count=2)
    assert len(got) == 2 and got[1]["NETD_HOOK_REJECTED"] == "4"
