"""The status document's contract (netd_hook/core/status_doc.py): what the daemon writes is
to_json of a Status, from_json reads it back into the same Status, a document of an older or
newer daemon of the same VERSION reads with defaults for what it lacks and without what it
adds, and `netd-hook status --json` prints what the daemon wrote, key for key.

The refusals, field by field, are in tests/test_bad_input.py (STATUS_LIES) and
tests/test_properties.py (generated documents)."""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from netd_hook.adapters import config as configmod
from netd_hook.adapters import status, store
from netd_hook.adapters.journal import Notifier, RepairRecord
from netd_hook.adapters.netlink import Dump, HostRoute, Link
from netd_hook.commands import cli
from netd_hook.core import decide, status_doc
from netd_hook.core.forgotten import Forget
from netd_hook.core.model import Snapshot, show
from netd_hook.core.status_doc import (
    FORMAT,
    VERSION,
    Counters,
    Forgotten,
    LastRepair,
    Networkd,
    Protected,
    Status,
    StatusError,
    from_json,
    to_json,
)
from netd_hook.core.track import Tracker
from netd_hook.daemon.service import Service
from tests.fixtures import NODE_RULES, pod_rules

# The keys the daemon wrote before the document was typed (netd-hook's status.json, VERSION 1):
# a key dropped or renamed here breaks every reader of an older netd-hook, and the metrics.
KEYS = {
    "": {"complete", "config", "counters", "degraded", "forgotten", "format", "held_back", "last_repair",
         "missing", "missing_since", "networkd", "networkd_sockets", "outage_seconds", "pid", "protected",
         "set_aside", "snapshot_saved_at", "snapshot_unsaved", "started_at", "state_dir", "unattributed",
         "updated_at", "version"},
    "networkd": {"generation", "links", "owner", "pid", "settled", "stuck"},
    "protected": {"routes", "rules"},
    "forgotten": {"by_port", "doubt", "generation", "last", "total", "while_busy"},
    "forgotten.by_port[]": {"count", "last_at", "port", "process"},
    "forgotten.last": {"at", "count", "example", "port", "process", "while_busy"},
    "last_repair": {"already_present", "at", "batches", "duration_ms", "networkd_owner", "rollbacks",
                    "routes_restored", "rules_restored", "set_aside", "skipped_dead", "skipped_other", "trigger"},
    "counters": {"bad_bus_values", "bus_reconnects", "chase_capped", "chase_rewiped", "chases",
                 "forgotten_deliberate", "losses", "monitor_overruns",
                 "orphans_removed", "publish_failures", "rejected_signals", "repairs", "repairs_by_trigger",
                 "rollbacks", "routes_restored", "rules_restored", "save_failures", "set_aside", "skipped_dead"},
    "degraded": {"reason", "since", "writes"},
    "degraded.writes[]": {"errno", "error", "failures", "next_attempt_at", "path", "since", "what"},
}


def _objects(doc: dict[str, Any], where: str = "") -> dict[str, set[str]]:
    """The key set of every object in `doc` (the first element of lists), by where it is; maps
    keyed by link names and causes (links, stuck, losses, repairs_by_trigger) are values."""
    out = {where: set(doc)}
    for k, v in doc.items():
        at = f"{where}.{k}" if where else k
        if isinstance(v, list) and v and isinstance(v[0], dict):
            out.update(_objects(v[0], at + "[]"))
        elif isinstance(v, dict) and k not in ("links", "stuck", "losses", "repairs_by_trigger"):
            out.update(_objects(v, at))
    return out


def _busy_daemon(tmp_path: Path) -> Service:
    """A Service whose every section has something to say: a repair, a write failing, a stuck
    link, an entry set aside and one unattributed, a forgetting."""
    svc = Service(configmod.Config(state_dir=tmp_path), None, Notifier(""), runtime_dir=tmp_path)
    rules = pod_rules("10.1.1.5", 2)
    svc.tracker = Tracker(configmod.Config().scope, Snapshot(frozenset(rules)))
    svc.tracker.load(Dump(rules=rules, links=[Link(3, "eth1")], host_routes=[HostRoute("10.1.1.5", "eth1")]))
    svc.repairer.last_repair = RepairRecord("reconfigure:eth1", 1, 0, 0, 0, 0, 0, 0, 1, 0.5, ":1.7")
    svc.repairer.last_repair_at = 1_699_999_000.0
    svc.repairer.holds.set_aside = {NODE_RULES[0]}
    svc.repairer.holds.unattributed = {NODE_RULES[1]}
    svc.counters.losses["networkd"] = 3
    svc.counters.repairs_by_trigger["reconfigure"] = 2
    svc.attribution.forgotten.forgot(Forget(1.0, 1_699_999_999.0, 7537, "ip", 2, "x"))
    svc.writes.failing[store.Write.SNAPSHOT] = store.failed(
        None, store.Write.SNAPSHOT, tmp_path / "snapshot.json", OSError(28, "No space left on device"), 0.0,
        1_699_999_990.0)
    svc.state = decide.State(params=decide.Params(stuck_after=1.0), owner=":1.7", listed=True,
                             links={3: "configuring"}, busy_since={3: 0.0})
    return svc


def test_the_daemon_writes_every_key_it_wrote_before_and_no_other(tmp_path: Path) -> None:
    published = _busy_daemon(tmp_path).publisher.status_doc(5.0, 1, 2)
    doc = to_json(published)
    assert _objects(doc) == KEYS
    assert doc["networkd"]["stuck"] == {"eth1": 5.0} and doc["counters"]["losses"] == {"networkd": 3}


def test_what_the_daemon_writes_reads_back_as_the_same_status(tmp_path: Path) -> None:
    svc = _busy_daemon(tmp_path)
    published = svc.publisher.status_doc(5.0, 1, 2)
    status.publish(tmp_path, published)
    written = json.loads((tmp_path / status.STATUS_FILE).read_text())
    assert written == to_json(published)  # no key added on the way: the file is to_json's
    pr = status.probe(tmp_path)
    assert pr.error == "" and pr.status == published


def test_status_json_prints_what_the_daemon_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    svc = _busy_daemon(tmp_path)
    lock = status.DaemonLock(tmp_path)
    try:
        status.publish(tmp_path, svc.publisher.status_doc(5.0, 1, 2))
        capsys.readouterr()
        assert cli.main(["status", "--json", "--runtime-dir", str(tmp_path)]) == cli.EXIT_PROBLEM  # 1 missing
    finally:
        lock.close()
    out = json.loads(capsys.readouterr().out)
    assert out == {"running": True, "status": json.loads((tmp_path / status.STATUS_FILE).read_text())}


T = 1_700_000_000.5

# No field at its default, so that a field to_json or from_json forgot would show.
EVERY_FIELD_SET = Status(
    pid=4242, started_at=T, updated_at=T + 1,
    networkd=Networkd(owner=":1.7", pid=99, generation=2, settled=True, stuck={"eth3": 12.5},
                      links={"eth0": "configured"}),
    complete=True, protected=Protected(rules=11, routes=4), missing=2, held_back=1,
    set_aside=("pref 512 from all to 10.1.1.5/32 lookup 254",), unattributed=("pref 1024 from all lookup 254",),
    forgotten=Forgotten(total=3, generation=2, while_busy=1, doubt="d",
                        by_port=(status_doc.PortTally(port=7537, process="ip", count=3, last_at=T),),
                        last=status_doc.LastForget(at=T, port=7537, process="ip", count=1, example="e",
                                                   while_busy=True)),
    missing_since=T + 2, outage_seconds=0.25,
    last_repair=LastRepair(at=T, trigger="reconfigure:eth1", rules_restored=1, routes_restored=2, already_present=3,
                           skipped_dead=4, skipped_other=5, set_aside=6, rollbacks=7, batches=8, duration_ms=0.5,
                           networkd_owner=":1.7"),
    counters=Counters(repairs=1, rules_restored=2, routes_restored=3, skipped_dead=4, set_aside=5, rollbacks=6,
                      forgotten_deliberate=7, orphans_removed=8, monitor_overruns=9, save_failures=10,
                      publish_failures=11, rejected_signals=12, bad_bus_values=13, bus_reconnects=14,
                      chases=15, chase_rewiped=16, chase_capped=17, losses={"networkd": 3},
                      repairs_by_trigger={"reconfigure": 2}),
    networkd_sockets=(1,), config="/etc/netd-hook/netd-hook.toml", state_dir="/var/lib/netd-hook",
    degraded=status_doc.Degraded(since=T, reason="r", writes=(status_doc.FailingWrite(
        what="snapshot", path="/var/lib/netd-hook/snapshot.json", since=T, error="No space left on device",
        errno="ENOSPC", failures=2, next_attempt_at=T + 4),)),
    snapshot_saved_at=T, snapshot_unsaved=True,
)


def _defaults_left(value: Any, where: str = "") -> list[str]:
    if not is_dataclass(value):
        return []
    out = []
    for f in fields(value):
        v, at = getattr(value, f.name), f"{where}.{f.name}" if where else f.name
        if v == getattr(type(value)(), f.name):
            out.append(at)
        out += _defaults_left(v, at)
    return out


def test_a_status_with_every_field_set_round_trips_through_json() -> None:
    s = EVERY_FIELD_SET
    assert _defaults_left(s) == []
    assert from_json(json.loads(json.dumps(to_json(s)))) == s


def test_every_field_says_how_it_is_read() -> None:
    def check(cls: type[Any]) -> None:
        for f in fields(cls):
            assert callable(f.metadata.get("read")), f"{cls.__name__}.{f.name} has no reader"
            value = getattr(cls(), f.name)
            if is_dataclass(value):
                check(type(value))

    check(Status)
    check(status_doc.LastRepair)
    check(status_doc.LastForget)
    check(status_doc.PortTally)
    check(status_doc.Degraded)
    check(status_doc.FailingWrite)


def test_an_older_daemons_document_takes_the_defaults_and_a_newer_ones_extra_keys_are_ignored() -> None:
    older = {"format": FORMAT, "version": VERSION, "pid": 7, "missing": 2}
    assert from_json(older) == Status(pid=7, missing=2)
    assert from_json({"format": FORMAT, "pid": 7}) == Status(pid=7)  # no version: this one's
    newer = {**to_json(Status(pid=7)), "future": {"x": [1]}, "networkd": {"settled": True, "future": 1},
             "counters": {"repairs": 3, "future_total": "many"}}
    assert from_json(newer) == Status(pid=7, networkd=Networkd(settled=True), counters=Counters(repairs=3))
    assert from_json({"format": FORMAT, "forgotten": None}).forgotten == Forgotten()  # null: as absent


@pytest.mark.parametrize(("doc", "why"), [
    ({"format": FORMAT, "version": 2}, "version: 2 is not 1"),
    ({"format": FORMAT, "version": "1"}, "version: '1' is not 1"),
    ({"format": "netd-hook/snapshot"}, "format: 'netd-hook/snapshot' is not 'netd-hook/status'"),
    ({"version": 1}, "format: None is not 'netd-hook/status'"),
    ([1, 2], "the status document: [1, 2] is not an object"),
    ({"format": FORMAT, "pid": -1}, "pid: -1 is not a count"),
    ({"format": FORMAT, "missing": True}, "missing: True is not a count"),
    ({"format": FORMAT, "outage_seconds": -0.5}, "outage_seconds: -0.5 is not a duration"),
    ({"format": FORMAT, "networkd": {"stuck": {"eth1": "long"}}}, "networkd.stuck.eth1: 'long' is not a duration"),
    ({"format": FORMAT, "unattributed": [1]}, "unattributed[0]: 1 is not a string"),
    ({"format": FORMAT, "degraded": {"writes": [{"path": 5}]}}, "degraded.writes[0].path: 5 is not a string"),
    ({"format": FORMAT, "snapshot_unsaved": 1}, "snapshot_unsaved: 1 is not true or false"),
    ({"format": FORMAT, "snapshot_saved_at": float("nan")}, "snapshot_saved_at: nan is not a time"),
    ({"format": FORMAT, "counters": {"losses": {"x" * 100: "3"}}},  # a long key is shortened
     f"counters.losses.{show('x' * 100)}: '3' is not a count"),
])
def test_from_json_names_the_field_and_the_value(doc: Any, why: str) -> None:
    with pytest.raises(StatusError) as err:
        from_json(doc)
    assert str(err.value) == why


def test_whole_is_nothing_missing_and_no_doubt() -> None:
    assert Status().whole
    assert not Status(missing=1).whole
    assert not Status(forgotten=Forgotten(doubt="12 protected entries were deleted ...")).whole
    assert Status(held_back=3, set_aside=("a",), unattributed=("b",)).whole  # none of those is missing
    assert Protected(rules=1, routes=2) == from_json(to_json(Status(protected=Protected(1, 2)))).protected


def test_complete_is_settled_idle_and_nothing_missing() -> None:
    idle = decide.State(owner=":1.7", listed=True, links={2: "configured"})
    assert decide.complete(idle, 10.0, 0)
    assert not decide.complete(idle, 10.0, 1)
    assert not decide.complete(replace(idle, links={2: "configuring"}), 10.0, 0)
    assert not decide.complete(replace(idle, busy=True), 10.0, 0)
    assert not decide.complete(replace(idle, lost=2), 10.0, 0)
    assert not decide.complete(replace(idle, verify=True), 10.0, 0)
    assert not decide.complete(decide.State(owner=None), 100.0, 0)  # off the bus: settled after the grace, not complete
