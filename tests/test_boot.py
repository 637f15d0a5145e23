"""A snapshot describes one boot's kernel (issue 11, item 6): after a reboot nothing in an
earlier boot's snapshot is replayed, whatever is on disk. Unit tests of the decision and the
store, and one lab run; the real reboot is in tests/test_booted_lifecycle.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from netd_hook.adapters import store
from netd_hook.adapters.files import load_saved_file
from netd_hook.adapters.store import Boot, earlier_boot
from netd_hook.commands import ops
from netd_hook.core.model import BOOT_ID, FormatError, Saved, Snapshot
from tests.fixtures import NODE_RULES, eni_routes, pod_rules

A = "0b5d4e9c-54f4-4b8e-a1f9-2c3d4e5f6a7b"
B = "9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f"
SNAP = Snapshot(frozenset([*NODE_RULES, *pod_rules("10.1.1.5", 2)]), frozenset(eni_routes(1)))


@pytest.mark.parametrize("saved_id, mtime, boot, same", [
    (A, 50.0, Boot(A, 100.0), True),     # the boot id decides, not the clock (stepped back, say)
    (A, 200.0, Boot(B, 100.0), False),   # another boot's, even if written "after" this one began
    (None, 200.0, Boot(A, 100.0), True),  # a 0.2.0 file written in this boot (an upgrade)
    (None, 50.0, Boot(A, 100.0), False),  # a 0.2.0 file from before this boot
    (A, 200.0, Boot(None, 100.0), True),  # the boot id cannot be read: the clock decides
    (A, 50.0, Boot(None, 100.0), False),
])
def test_which_boot_a_snapshot_describes(saved_id: str | None, mtime: float, boot: Boot, same: bool) -> None:
    why = earlier_boot(Saved(SNAP, saved_id), mtime, boot)
    assert (why == "") is same, why
    if not same:
        assert ("another boot" in why) if saved_id and boot.id else ("before this boot began" in why)


def test_a_boots_id_is_made_once_and_kept_in_the_runtime_directory(tmp_path: Path) -> None:
    """/run is a tmpfs that starts empty at every boot: the first start makes the id, every later
    start (a restart, an upgrade) reads the same one; a reader never makes one."""
    assert Boot.current(tmp_path).id is None and not (tmp_path / store.BOOT_ID_FILE).exists()
    first = Boot.current(tmp_path, create=True)
    assert first.id is not None and BOOT_ID.fullmatch(first.id)
    assert Boot.current(tmp_path, create=True).id == Boot.current(tmp_path).id == first.id
    assert abs(first.started_at - (time.time() - time.clock_gettime(time.CLOCK_BOOTTIME))) < 1
    assert [p.name for p in tmp_path.iterdir()] == [store.BOOT_ID_FILE]  # nothing staged is left
    (tmp_path / store.BOOT_ID_FILE).write_text("garbage\n")
    assert Boot.current(tmp_path, create=True).id is None  # the clock decides then


def test_the_snapshot_records_its_boot_and_loads_only_in_it(tmp_path: Path) -> None:
    store.save(tmp_path, SNAP, A)
    assert json.loads((tmp_path / store.SNAPSHOT_FILE).read_text())["boot_id"] == A
    assert store.load(tmp_path, boot=Boot(A, 0.0)) == store.Loaded(SNAP, "loaded")

    loaded = store.load(tmp_path, boot=Boot(B, 0.0))
    assert loaded.status == "earlier-boot" and loaded.snapshot == Snapshot()
    assert f"boot id {A}; this boot is {B}" in loaded.detail
    assert loaded.moved_to == tmp_path / store.EARLIER_BOOT_FILE
    assert not (tmp_path / store.SNAPSHOT_FILE).exists()  # the next save starts this boot's
    assert load_saved_file(tmp_path / store.EARLIER_BOOT_FILE) == Saved(SNAP, A)  # kept for people


def test_a_snapshot_without_boot_id_counts_by_when_it_was_written(tmp_path: Path) -> None:
    store.save(tmp_path, SNAP)  # as 0.2.0 wrote it
    path = tmp_path / store.SNAPSHOT_FILE
    assert "boot_id" not in json.loads(path.read_text())
    began = time.time() - 60
    assert store.load(tmp_path, boot=Boot(A, began)).status == "loaded"
    os.utime(path, (began - 3600, began - 3600))
    loaded = store.load(tmp_path, boot=Boot(A, began))
    assert loaded.status == "earlier-boot" and "before this boot began" in loaded.detail


@pytest.mark.parametrize("value", ["", "not-a-boot-id", A.upper(), 7, None])
def test_a_malformed_boot_id_makes_the_file_corrupt(tmp_path: Path, value: object) -> None:
    store.save(tmp_path, SNAP, A)
    path = tmp_path / store.SNAPSHOT_FILE
    doc = json.loads(path.read_text())
    doc["boot_id"] = value
    path.write_text(json.dumps(doc))
    if value is None:  # null: as if absent
        assert store.load(tmp_path, boot=Boot(A, 0.0)).status == "loaded"
        return
    with pytest.raises(FormatError, match="boot_id: bad value"):
        load_saved_file(path)
    assert store.load(tmp_path, boot=Boot(A, 0.0)).status == "corrupt"


def test_replay_and_diff_refuse_an_earlier_boots_snapshot(tmp_path: Path) -> None:
    store.save(tmp_path, SNAP, A)
    assert ops.read_snapshot(tmp_path, tmp_path, Boot(A, 0.0)) == SNAP
    with pytest.raises(ops.OpsError, match=r"is of an earlier boot \(written in another boot .*nothing in it is used"):
        ops.read_snapshot(tmp_path, tmp_path, Boot(B, 0.0))
    assert (tmp_path / store.SNAPSHOT_FILE).exists()  # a command moves nothing: the daemon does


@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/lib/systemd/systemd-networkd"),
                    reason="needs root and systemd-networkd")
def test_the_daemon_replays_nothing_of_an_earlier_boots_snapshot(tmp_path: Path) -> None:
    """A snapshot on disk that says another boot: a node rule and a pod's rules it holds are
    missing from the kernel (and the pod's host route exists: the liveness gate would let them
    through); none comes back, and the snapshot is rebuilt from the kernel."""
    from tests.daemon import Daemon, rule_set
    from tests.test_daemon_lab import vpc_node

    with vpc_node() as lab:
        state = tmp_path / "state"
        with Daemon(lab, state) as d:
            pass  # this boot's snapshot
        path = state / store.SNAPSHOT_FILE
        doc = json.loads(path.read_text())
        boot = Boot.current(d.runtime_dir)
        assert boot.id is not None and doc["boot_id"] == boot.id
        doc["boot_id"] = A
        path.write_text(json.dumps(doc))
        lab.ip_batch(["rule del fwmark 0x80/0x80 lookup main priority 1024",
                      "rule del to 10.1.1.5 lookup main priority 512", "rule del from 10.1.1.5 lookup 2 priority 1536"])
        without = rule_set(lab)
        with Daemon(lab, state) as d:
            d.wait_log(r"snapshot-rebuilt reason=\"the snapshot is of an earlier boot \(written in another boot "
                       rf"\(boot id {A}; .*moved_to=\S+snapshot\.json\.earlier-boot")
            time.sleep(0.5)
            assert rule_set(lab) == without, d.log()
            assert d.repairs() == []
            assert (state / store.EARLIER_BOOT_FILE).exists()
            saved = json.loads(path.read_text())
            assert saved["boot_id"] == boot.id and len(saved["rules"]) == len(doc["rules"]) - 3
