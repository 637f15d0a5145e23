"""Operator tooling without a lab: the status file and lock, metrics, grouping, rendering, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from netd_hook.adapters import config, status
from netd_hook.adapters.netlink import Dump, HostRoute, Link
from netd_hook.commands import cli, metrics, ops, render
from netd_hook.core.model import Snapshot
from netd_hook.core.status_doc import Counters, LastRepair, Networkd, Protected, Status
from tests.fixtures import NODE_RULES, eni_routes, pod_rules

ROOT = Path(__file__).resolve().parent.parent


STATUS = Status(
    pid=4242, started_at=1_700_000_000.0, updated_at=1_700_000_100.0,
    networkd=Networkd(owner=":1.7", pid=99, generation=2, settled=True,
                      links={"eth0": "configured", "eth1": "configuring", "eni1": "unmanaged"}),
    complete=True, protected=Protected(rules=11, routes=4), outage_seconds=0.25,
    last_repair=LastRepair(at=1_700_000_050.0, trigger="reconfigure:eth1", rules_restored=9, routes_restored=2,
                           skipped_dead=1, duration_ms=1.5),
    counters=Counters(repairs=3, rules_restored=20, routes_restored=4, skipped_dead=1, rejected_signals=5,
                      forgotten_deliberate=2, repairs_by_trigger={"reconfigure": 2, "networkd-restart": 1}),
)


def doc(**over: Any) -> Status:
    return replace(STATUS, **over)


def by_trigger(counts: dict[str, int]) -> Status:
    return replace(STATUS, counters=replace(STATUS.counters, repairs_by_trigger=counts))


# status file and lock ------------------------------------------------------------------------


def test_probe_without_anything_is_not_running(tmp_path: Path):
    pr = status.probe(tmp_path / "run")
    assert pr == status.Probe(False, None, "no status file")


def test_lock_marks_running_and_is_released_when_closed(tmp_path: Path):
    lock = status.DaemonLock(tmp_path)
    status.publish(tmp_path, doc())
    pr = status.probe(tmp_path)
    assert pr.running and pr.status == doc()
    written = json.loads((tmp_path / status.STATUS_FILE).read_text())
    assert written["format"] == "netd-hook/status" and written["version"] == 1 and written["pid"] == 4242
    with pytest.raises(status.AlreadyRunning):
        status.DaemonLock(tmp_path)
    assert (tmp_path / "daemon.lock").read_text() == f"{os.getpid()}\n"
    lock.close()
    assert not status.probe(tmp_path).running
    assert status.probe(tmp_path).status is not None  # the last status stays readable


def test_lock_of_a_killed_process_is_released(tmp_path: Path):
    code = ("from netd_hook.adapters import status; import pathlib, time; "
            f"status.DaemonLock(pathlib.Path({str(tmp_path)!r})); print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "locked"
        assert status.running(tmp_path)
    finally:
        p.kill()
        p.wait()
    assert not status.running(tmp_path)  # no stale pid file to believe


def test_probe_reports_a_garbled_status_file(tmp_path: Path):
    (tmp_path / status.STATUS_FILE).write_text("{not json")
    pr = status.probe(tmp_path)
    assert pr.status is None and pr.error.startswith("unreadable status file")
    (tmp_path / status.STATUS_FILE).write_text(json.dumps({"format": "other", "version": 1}))
    assert status.probe(tmp_path).error == "status file of an unknown format"


# metrics -------------------------------------------------------------------------------------


def test_metrics_render_every_family_from_the_status_document():
    text = metrics.render(doc(missing=3, held_back=1, outage_seconds=12.5))
    lines = text.splitlines()
    samples = {ln.rsplit(" ", 1)[0]: ln.rsplit(" ", 1)[1] for ln in lines if not ln.startswith("#")}
    assert samples['netd_hook_repairs_total{trigger="reconfigure"}'] == "2"
    assert samples['netd_hook_repairs_total{trigger="networkd-restart"}'] == "1"
    assert samples["netd_hook_rules_restored_total"] == "20"
    assert samples["netd_hook_routes_restored_total"] == "4"
    assert samples["netd_hook_skipped_dead_total"] == "1"
    assert samples["netd_hook_rejected_signals_total"] == "5"
    assert samples["netd_hook_rollbacks_total"] == "0"
    assert samples['netd_hook_protected_entries{kind="rule"}'] == "11"
    assert samples['netd_hook_protected_entries{kind="route"}'] == "4"
    assert samples["netd_hook_missing_entries"] == "3"
    assert samples["netd_hook_held_back_entries"] == "1"
    assert samples["netd_hook_outage_seconds_total"] == "12.5"
    assert samples["netd_hook_last_repair_duration_seconds"] == "0.0015"
    assert samples["netd_hook_networkd_settled"] == "1"
    # every sample has its HELP and TYPE, once
    families = {ln.split()[2] for ln in lines if ln.startswith("# TYPE")}
    assert len(families) == len([ln for ln in lines if ln.startswith("# HELP")])
    for name in samples:
        assert name.split("{")[0] in families
    assert text.endswith("\n")


def test_metrics_without_repairs_still_expose_the_counter():
    text = metrics.render(replace(by_trigger({}), last_repair=None))
    assert "\nnetd_hook_repairs_total 0\n" in text
    assert "\nnetd_hook_last_repair_timestamp_seconds 0.0\n" in text


def test_metrics_label_values_are_escaped():
    assert 'netd_hook_repairs_total{trigger="we\\"ird\\\\"} 1' in metrics.render(by_trigger({'we"ird\\': 1}))


def test_metrics_write_is_atomic_and_complete(tmp_path: Path):
    path = tmp_path / "netd_hook.prom"
    metrics.write(path, doc())
    assert path.read_text() == metrics.render(doc())
    assert [p.name for p in tmp_path.iterdir()] == ["netd_hook.prom"]  # no temp file left behind


def test_metrics_textfile_config(tmp_path: Path):
    cfg = config.parse({"metrics": {"textfile": "/var/lib/prometheus/node-exporter/netd_hook.prom"}}, "f.toml")
    assert cfg.metrics_textfile == Path("/var/lib/prometheus/node-exporter/netd_hook.prom")
    for bad in ("relative.prom", "/no/suffix.txt", 5):
        with pytest.raises(config.ConfigError, match=r"f\.toml: \[metrics\] textfile: "):
            config.parse({"metrics": {"textfile": bad}}, "f.toml")
    with pytest.raises(config.ConfigError, match=r"\[metrics\] port"):
        config.parse({"metrics": {"port": 9100}}, "f.toml")


# grouping and rendering ------------------------------------------------------------------------


def test_group_puts_pods_under_their_eni_table_and_node_rules_apart():
    snap = Snapshot(
        frozenset([*pod_rules("10.1.1.5", 2), *pod_rules("10.1.1.6", 2), *pod_rules("10.1.2.5", 3),
                   *pod_rules("10.1.0.5", None), *NODE_RULES]),
        frozenset([*eni_routes(1), *eni_routes(2)]),
    )
    g = ops.group(snap, node_addresses=frozenset({"10.0.1.10"}))
    assert {t: [p.address for p in pods] for t, pods in g.pods.items()} == {
        2: ["10.1.1.5", "10.1.1.6"], 3: ["10.1.2.5"], 254: ["10.1.0.5"]}
    assert [len(p.rules) for p in g.pods[2]] == [2, 2]
    assert [r.priority for r in g.node_rules] == [20, 1024, 32765]
    assert g.devices == {2: "eth1", 3: "eth2"}
    assert [r.dst for r in g.routes[2]] == ["0.0.0.0/0", "10.0.1.1/32"]
    text = render.snapshot_text(g)
    assert "table 2 (eth1): 2 pods" in text and "main (primary ENI): 1 pods" in text
    assert "node-wide rules: 3" in text and "routes: 4 in 2 tables" in text
    # without the node's addresses the 32765 rule looks like a pod's: say so by grouping it there
    assert 32765 not in [r.priority for r in ops.group(snap).node_rules]


def test_check_plans_like_the_daemon_with_the_liveness_gate():
    rules = [*pod_rules("10.1.1.5", 2), *pod_rules("10.1.1.6", 2)]
    snap = Snapshot(frozenset(rules), frozenset(eni_routes(1)))
    links = [Link(1, "eth1"), Link(2, "eni5"), Link(3, "eni6")]
    # kernel: 10.1.1.5's pod is alive (host route on its veth) but its rules are gone; 10.1.1.6 is gone
    dump = Dump(rules=[], routes=list(eni_routes(1)), host_routes=[HostRoute("10.1.1.5", "eni5")], links=links)
    chk = ops.check(snap, dump, config.Config().scope, frozenset({"eth1"}))
    assert sorted(r.describe() for r in chk.plan.rules) == sorted(r.describe() for r in pod_rules("10.1.1.5", 2))
    assert {s.entry.host_address() for s in chk.plan.held_back} == {"10.1.1.6"}
    assert all(s.dead for s in chk.plan.held_back)
    j = render.diff_json(chk)
    assert len(j["missing"]) == 2 and len(j["held_back"]) == 2 and j["managed_links"] == ["eth1"]
    assert "held back by the liveness gate (2)" in render.diff_text(chk)


def test_diff_lists_what_the_daemon_calls_unattributed_apart_and_still_exits_1(tmp_path: Path):
    """Entries the daemon calls unattributed (after a monitor overrun) are missing like any other (they
    stay in the plan, so `diff` exits 1 as for any entry a replay would restore) but are listed
    apart, with why the daemon does not put them back and the command that does."""
    rules = [*NODE_RULES[:2], *pod_rules("10.1.1.5", 2)]
    snap = Snapshot(frozenset(rules), frozenset(eni_routes(1)))
    dump = Dump(rules=[], routes=list(eni_routes(1)), host_routes=[HostRoute("10.1.1.5", "eni5")],
                links=[Link(1, "eth1"), Link(2, "eni5")])
    chk = ops.check(snap, dump, config.Config().scope, frozenset({"eth1"}))
    fwmark = "pref 1024 from all fwmark 0x80/0x80 lookup 254"
    back = eni_routes(1)[0].describe()  # the daemon still lists it, but the kernel has it again
    lock = status.DaemonLock(tmp_path)
    try:
        status.publish(tmp_path, doc(unattributed=(fwmark, back)))
        viewed = ops.with_daemon_view(chk, tmp_path)
    finally:
        lock.close()
    assert viewed.unattributed == frozenset({fwmark, back})
    assert ops.with_daemon_view(chk, tmp_path).unattributed == frozenset()  # stopped: none are unattributed
    assert len(viewed.plan) == len(chk.plan) == 4  # cli's exit code: 1, as without the daemon's view
    text = render.diff_text(viewed)
    assert "missing, would be restored (3):" in text and f"  + rule  {fwmark}" not in text
    assert ("missing, unattributed (1; deleted unseen in a netlink monitor overrun while networkd was idle; "
            "who deleted them is unknown; `netd-hook replay` puts them back):\n"
            f"  ? rule  {fwmark}") in text
    assert back not in text
    j = render.diff_json(viewed)
    assert fwmark not in [m["entry"] for m in j["missing"]] and len(j["missing"]) == 3
    assert j["unattributed"] == [{"kind": "rule", "entry": fwmark,
                                  "reason": "deleted unseen in a netlink monitor overrun while networkd was idle: "
                                            "who deleted them is unknown"}]
    # without the daemon's view (or with nothing unattributed) diff says what it always said
    assert "overrun" not in render.diff_text(chk) and render.diff_json(chk)["unattributed"] == []


def test_managed_links_come_from_networkd_state_files(tmp_path: Path):
    (tmp_path / "2").write_text("ADMIN_STATE=configured\nOPER_STATE=routable\n")
    (tmp_path / "7").write_text("ADMIN_STATE=unmanaged\n")
    (tmp_path / "not-a-link").write_text("ADMIN_STATE=configured\n")
    states = ops.networkd_link_states(tmp_path)
    assert states == {"2": "configured", "7": "unmanaged"}
    dump = Dump(links=[Link(2, "eth1"), Link(7, "eni7")])
    assert ops.managed_links(dump, states) == frozenset({"eth1"})
    with pytest.raises(ops.OpsError, match="cannot tell which links systemd-networkd manages"):
        ops.networkd_link_states(tmp_path / "absent")  # not "none": tests/test_reading_bugs.py


def test_read_snapshot_never_moves_a_corrupt_file(tmp_path: Path):
    with pytest.raises(ops.OpsError, match="no snapshot at"):
        ops.read_snapshot(tmp_path, tmp_path)
    (tmp_path / "snapshot.json").write_text("{broken")
    with pytest.raises(ops.OpsError, match=r"is corrupt .* `systemctl restart netd-hook`"):
        ops.read_snapshot(tmp_path, tmp_path)
    assert (tmp_path / "snapshot.json").read_text() == "{broken"


def test_status_text_says_what_matters_first():
    t = render.status_text(doc(), True, 1_700_000_110.0)
    first = t.splitlines()[0]
    assert first == "netd-hook: active, protecting"
    assert "networkd: settled; owner :1.7 pid 99, generation 2" in t
    assert "links: eth0 configured, eth1 configuring; 1 unmanaged" in t
    assert "trigger reconfigure:eth1: +9 rules, +2 routes, 1 skipped (dead), 1.5 ms" in t
    t = render.status_text(doc(missing=4), True, 1_700_000_110.0)
    assert t.splitlines()[0] == "netd-hook: active, 4 protected entries MISSING" and "hint: netd-hook diff" in t
    t = render.status_text(doc(), False, 1_700_000_110.0)
    assert t.splitlines()[0] == "netd-hook: inactive (not running)" and "journalctl -u netd-hook" in t


# exit codes of the commands that need no lab ----------------------------------------------------


def test_status_exit_codes(tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert cli.main(["status", "--runtime-dir", str(run)]) == cli.EXIT_NOT_RUNNING
    assert "inactive" in capsys.readouterr().out
    lock = status.DaemonLock(run)
    try:
        assert cli.main(["status", "--runtime-dir", str(run)]) == cli.EXIT_UNKNOWN  # running, nothing published
        status.publish(run, doc())
        assert cli.main(["status", "--runtime-dir", str(run)]) == cli.EXIT_OK
        status.publish(run, doc(missing=2))
        assert cli.main(["status", "--runtime-dir", str(run)]) == cli.EXIT_PROBLEM
    finally:
        lock.close()
    assert cli.main(["status", "--runtime-dir", str(run)]) == cli.EXIT_NOT_RUNNING  # stale status, no daemon


def test_status_json_is_the_published_document(tmp_path: Path, capsys):
    lock = status.DaemonLock(tmp_path)
    try:
        status.publish(tmp_path, doc(missing=2))
        capsys.readouterr()
        assert cli.main(["status", "--runtime-dir", str(tmp_path), "--json"]) == cli.EXIT_PROBLEM
        out = json.loads(capsys.readouterr().out)
        assert out["running"] is True and out["status"]["missing"] == 2 and out["status"]["pid"] == 4242
    finally:
        lock.close()


def test_wait_never_fails(tmp_path: Path, capsys):
    assert cli.main(["wait", "--runtime-dir", str(tmp_path), "--timeout", "5"]) == 0
    assert "not running; not waiting" in capsys.readouterr().err
    lock = status.DaemonLock(tmp_path)
    try:
        status.publish(tmp_path, doc(complete=False))
        assert cli.main(["wait", "--runtime-dir", str(tmp_path), "--timeout", "0.2"]) == 0
        assert "gave up after 0.2s: networkd settled: True" in capsys.readouterr().err
        # a bad configuration does not make it fail either
        bad = tmp_path / "bad.toml"
        bad.write_text("nonsense = 1\n")
        assert cli.main(["wait", "--runtime-dir", str(tmp_path), "--timeout", "0", "--config", str(bad)]) == 0
        assert "checking with the default scope" in capsys.readouterr().err
    finally:
        lock.close()


def test_bad_config_is_exit_2_for_every_command(tmp_path: Path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[replay]\nquiet_ms = -1\n")
    for command in ("status", "snapshot", "diff", "replay", "doctor"):
        assert cli.main([command, "--config", str(bad), "--runtime-dir", str(tmp_path)]) == cli.EXIT_CONFIG
        assert f"{bad}: [replay] quiet_ms: -1" in capsys.readouterr().err


def test_help_lists_every_command_and_the_exit_codes():
    r = subprocess.run([sys.executable, "-m", "netd_hook", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
    for command in ("run", "status", "snapshot", "diff", "replay", "doctor", "wait"):
        assert f"    {command} " in r.stdout
    assert "3 the daemon is not running" in r.stdout
    r = subprocess.run([sys.executable, "-m", "netd_hook", "replay", "--help"], capture_output=True, text=True,
                       cwd=ROOT)
    assert "--dry-run" in r.stdout and "--runtime-dir" in r.stdout and "--state-dir" in r.stdout


def test_snapshot_and_diff_without_a_snapshot_say_what_to_do(tmp_path: Path, capsys):
    assert cli.main(["snapshot", "--state-dir", str(tmp_path)]) == cli.EXIT_PROBLEM
    assert "has the daemon ever run with --state-dir" in capsys.readouterr().err



@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_replay_lock_created_by_root_is_usable_by_the_daemons_user():
    """An operator's `netd-hook replay` (root) may create the lock before the daemon (user
    netd-hook, no CAP_DAC_OVERRIDE) ever opens it: the daemon must still be able to take it."""
    state = Path(tempfile.mkdtemp(prefix="ndh-lock-"))  # not under pytest's root-only tmp
    try:
        os.chmod(state, 0o755)
        with ops.replay_lock(state, lambda line: None):
            pass
        # everything imported first: the interpreter may live under root's 0700 home
        code = ("import fcntl, os, pathlib, sys; from netd_hook.commands import ops; "
                "os.setgid(65534); os.setuid(65534); "
                "fd = ops.open_lock(pathlib.Path(sys.argv[1]) / ops.REPLAY_LOCK); "
                "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)")
        r = subprocess.run([sys.executable, "-c", code, str(state)], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr
    finally:
        shutil.rmtree(state)


def test_replay_lock_waits_for_a_holder_and_says_so(tmp_path: Path):
    held = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)")
    p = subprocess.Popen([sys.executable, "-c", held, str(tmp_path / ops.REPLAY_LOCK)], stdout=subprocess.PIPE,
                         text=True)
    lines: list[str] = []
    entered = threading.Event()

    def take() -> None:
        with ops.replay_lock(tmp_path, lines.append):
            entered.set()

    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        t = threading.Thread(target=take, daemon=True)
        t.start()
        assert not entered.wait(0.5)
        assert lines and lines[0].startswith("waiting for") and "a repair is in progress" in lines[0]
    finally:
        p.kill()
        p.wait()
    assert entered.wait(5)  # released when the holder died
