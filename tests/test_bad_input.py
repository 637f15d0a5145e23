"""Issue 10, findings 4 and 5: state files that parse but lie, and config and path abuse.

Whatever a snapshot, status or config file holds, and whatever kind of file sits at its path,
the loaders raise only their own error type, with one line naming the file, the field and the
bad value; the commands exit with their documented status; nothing blocks on a FIFO or reads
/dev/zero until memory runs out.

Tests that could block on the code they guard (a reader stuck in open(2) on a FIFO) run the
call in a thread and, after a few seconds, open the FIFO's other end to release it, so that a
regression fails here instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netd_hook.adapters import config, files, status, store
from netd_hook.commands import cli, doctor, metrics, ops, render
from netd_hook.core import model, status_doc
from netd_hook.core.model import FormatError, Snapshot, snapshot_from_json, snapshot_to_json
from tests.fixtures import NODE_RULES, eni_routes, pod_rules

NOW = 1_700_000_000.0


def finishes(call: Callable[[], Any], fifos: list[Path], within: float = 3.0) -> Any:
    """call(), which must return (or raise) within `within` seconds without anyone writing to
    `fifos`; if it blocks, its FIFOs are opened for writing to let it go, and the test fails."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = call()
        except BaseException as exc:  # re-raised in the test's thread below
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(within)
    blocked = t.is_alive()
    while t.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):  # ENXIO: nobody waits on it right now
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(0.1)
    assert not blocked, f"blocked on {[str(f) for f in fifos]} for more than {within}s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def good_snapshot_doc() -> dict[str, Any]:
    snap = Snapshot(frozenset([*NODE_RULES, *pod_rules("10.1.1.5", 2)]), frozenset(eni_routes(1)))
    return json.loads(json.dumps(snapshot_to_json(snap)))


def good_status_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": status.FORMAT, "version": status.VERSION,
        "pid": 4242, "started_at": NOW - 3600, "updated_at": NOW - 1,
        "networkd": {"owner": ":1.7", "pid": 99, "generation": 2, "settled": True,
                     "links": {"eth0": "configured", "eni1": "unmanaged"}},
        "complete": True, "protected": {"rules": 11, "routes": 4}, "missing": 0, "held_back": 0,
        "set_aside": [], "missing_since": None, "outage_seconds": 0.25,
        "forgotten": {"total": 2, "generation": 2, "while_busy": 0, "doubt": None,
                      "by_port": [{"port": 7537, "process": "ip", "count": 2, "last_at": NOW - 5}], "last": None},
        "last_repair": {"at": NOW - 50, "trigger": "reconfigure:eth1", "rules_restored": 9,
                        "routes_restored": 2, "skipped_dead": 1, "duration_ms": 1.5},
        "counters": {"repairs": 3, "rules_restored": 20, "routes_restored": 4, "losses": {"networkd": 3},
                     "repairs_by_trigger": {"reconfigure": 2, "networkd-restart": 1}},
        "networkd_sockets": [7481], "config": "<defaults>", "state_dir": "/var/lib/netd-hook",
    }
    doc.update(over)
    return doc


@pytest.fixture
def empty_config(tmp_path: Path) -> Path:
    p = tmp_path / "empty.toml"
    p.write_text("")
    return p


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[Path]:
    """A runtime directory whose daemon lock is held, as by a running daemon."""
    run = tmp_path / "run"
    lock = status.DaemonLock(run)
    try:
        yield run
    finally:
        lock.close()


# ------------------------------------------------------------------ finding 4: the snapshot


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation: set doc[...] at a dotted path ("rules.0.priority") to value."""
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        del target[last]
    return mutate


# (mutation, what the message must name)
SNAPSHOT_LIES = {
    "string priority": (_set("rules.0.priority", "512"), ["priority", "'512'"]),
    "table by name": (_set("rules.0.table", "main"), ["table", "'main'"]),
    "list for an entry": (_set("rules.0", [2, 20, 255]), ["rules[0]", "[2, 20, 255]"]),
    "priority over u32": (_set("rules.0.priority", 2**32), ["priority", "4294967296"]),
    "negative table": (_set("rules.0.table", -1), ["table", "-1"]),
    "huge fwmark": (_set("rules.0.fwmark", 10**30), ["fwmark", "1000000000000000000000000000000"]),
    "tos over u8": (_set("rules.0.tos", 256), ["tos", "256"]),
    "ipv6 prefix in an ipv4 rule": (_set("rules.0.src", "2001:db8::5/128"), ["src", "2001:db8::5/128"]),
    "ipv4 prefix in an ipv6 route": (_set("routes.0.family", 10), ["routes[0]", "IPv6"]),
    "ipv6 gateway on an ipv4 route": (_set("routes.1.gateway", "fe80::1"), ["gateway", "fe80::1"]),
    "overlong interface name": (_set("routes.0.oif", "e" * 100), ["oif", "eeee"]),
    "empty interface name": (_set("rules.0.iifname", ""), ["iifname", "''"]),
    "interface name not utf-8": (_set("rules.0.iifname", "eth\udc800"), ["iifname"]),
    "number for a device": (_set("routes.0.oif", 5), ["oif", "5"]),
    "route without dst": (_drop("routes.0.dst"), ["routes[0]", "dst"]),
    "nan priority": (_set("rules.0.priority", float("nan")), ["priority", "nan"]),
    "infinite table": (_set("rules.0.table", float("inf")), ["table", "inf"]),
    "boolean version": (_set("version", True), ["version", "True"]),
    "unknown top-level key": (_set("saved_by", "someone"), ["saved_by"]),
    "unknown entry key": (_set("rules.0.realm", 3), ["realm"]),
    "version 2": (_set("version", 2), ["version 2"]),
    "object for the rules": (_set("rules", {"0": {}}), ["rules"]),
}


@pytest.mark.parametrize("name", SNAPSHOT_LIES)
def test_a_snapshot_that_parses_but_lies_is_set_aside_naming_the_field(tmp_path: Path, name: str) -> None:
    mutate, named = SNAPSHOT_LIES[name]
    doc = good_snapshot_doc()
    mutate(doc)
    raw = json.dumps(doc).encode()
    (tmp_path / store.SNAPSHOT_FILE).write_bytes(raw)
    loaded = store.load(tmp_path, now=0)  # the daemon then rebuilds from the kernel
    assert loaded.status == "corrupt", loaded
    assert loaded.snapshot == Snapshot()
    assert loaded.moved_to is not None and loaded.moved_to.read_bytes() == raw
    for fragment in named:
        assert fragment in loaded.detail, (fragment, loaded.detail)
    assert "\n" not in loaded.detail
    # `snapshot`, `diff`, `replay` and `wait` read the same file through ops: a clear OpsError
    (tmp_path / store.SNAPSHOT_FILE).write_bytes(raw)
    with pytest.raises(ops.OpsError, match="is corrupt"):
        ops.read_snapshot(tmp_path, tmp_path)


def test_the_codec_raises_only_its_own_error_which_store_load_sets_aside() -> None:
    assert issubclass(FormatError, ValueError)  # store.load and ops.read_snapshot catch ValueError
    for name, (mutate, _) in SNAPSHOT_LIES.items():
        doc = good_snapshot_doc()
        mutate(doc)
        with pytest.raises(FormatError):
            snapshot_from_json(doc)
            pytest.fail(name)


def test_the_codec_still_takes_every_field_at_its_limits() -> None:
    doc = good_snapshot_doc()
    doc["rules"].append({"family": 10, "priority": 2**32 - 1, "table": 2**32 - 1, "action": 255,
                         "src": "2001:db8::/32", "fwmark": 2**32 - 1, "fwmask": 0, "iifname": "e" * 15,
                         "oifname": "eni0123456789a", "tos": 255, "flags": 2**32 - 1, "goto": 0,
                         "suppress_prefixlen": 128, "suppress_ifgroup": 2**32 - 1, "l3mdev": 1, "protocol": 255})
    doc["routes"].append({"family": 10, "table": 0, "dst": "::/0", "oif": "eth1", "gateway": "fe80::1",
                          "prefsrc": "2001:db8::5", "priority": 2**32 - 1, "tos": 255, "scope": 255,
                          "type": 255, "protocol": 255})
    snap = snapshot_from_json(doc)
    assert len(snap.rules) == len(doc["rules"]) and len(snap.routes) == len(doc["routes"])
    assert snapshot_from_json(json.loads(json.dumps(snapshot_to_json(snap)))) == snap


def test_the_snapshot_decoder_turns_deep_nesting_nan_and_huge_numbers_into_its_error() -> None:
    for raw in (b"[" * 200_000, b'{"rules":' * 100_000, b"NaN", b'{"version": 1' + b"0" * 5000 + b"}",
                b"\xff\xfe\x00", "{}".encode("utf-16")):
        with pytest.raises(FormatError):
            model.decode_snapshot(raw)


def test_the_snapshot_file_reader_refuses_fifos_devices_and_oversized_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        finishes(lambda: files.load_snapshot_file(fifo), [fifo])
    with pytest.raises(OSError, match="not a regular file"):
        files.load_snapshot_file(Path("/dev/zero"))
    big = tmp_path / "big.json"
    doc = json.dumps(good_snapshot_doc()).encode()
    big.write_bytes(doc + b" " * model.SNAPSHOT_MAX_BYTES)  # valid JSON, just too large
    with pytest.raises(OSError, match="larger than"):
        files.load_snapshot_file(big)
    (tmp_path / "ok.json").write_bytes(doc)
    assert files.load_snapshot_file(tmp_path / "ok.json") == snapshot_from_json(good_snapshot_doc())


def test_a_10000_rule_snapshot_is_far_below_the_cap(tmp_path: Path) -> None:
    rules = [r for i in range(5000) for r in pod_rules(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 2 + i % 15)]
    routes = [r for i in range(1, 16) for r in eni_routes(i)]
    path = store.save(tmp_path, Snapshot(frozenset(rules), frozenset(routes)))
    assert len(rules) == 10_000
    assert path.stat().st_size * 10 < model.SNAPSHOT_MAX_BYTES
    assert len(files.load_snapshot_file(path).rules) == 10_000


# store.load and ops.read_snapshot read through files.load_snapshot_file: a FIFO does not block
# them, /dev/zero does not exhaust memory, deep nesting is a corrupt file, not a RecursionError.


def test_store_load_sets_aside_a_deeply_nested_snapshot(tmp_path: Path) -> None:
    (tmp_path / store.SNAPSHOT_FILE).write_bytes(b"[" * 200_000)
    assert store.load(tmp_path, now=0).status == "corrupt"


def test_store_load_does_not_block_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / store.SNAPSHOT_FILE
    os.mkfifo(fifo)
    assert finishes(lambda: store.load(tmp_path, now=0), [fifo], within=1.0).status == "corrupt"


def test_store_load_sets_aside_an_oversized_snapshot(tmp_path: Path) -> None:
    doc = json.dumps(good_snapshot_doc()).encode()
    (tmp_path / store.SNAPSHOT_FILE).write_bytes(doc + b" " * model.SNAPSHOT_MAX_BYTES)
    assert store.load(tmp_path, now=0).status == "corrupt"


def test_ops_read_snapshot_does_not_block_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / store.SNAPSHOT_FILE
    os.mkfifo(fifo)
    with pytest.raises(ops.OpsError):
        finishes(lambda: ops.read_snapshot(tmp_path, tmp_path), [fifo], within=1.0)


# ------------------------------------------------------------------ finding 4: the status file


STATUS_LIES: dict[str, Any] = {
    "networkd is a string": good_status_doc(networkd="settled"),
    "networkd is null": good_status_doc(networkd=None),
    "links is a list": good_status_doc(networkd={"owner": ":1.7", "settled": True, "links": ["eth0"]}),
    "counters is a list": good_status_doc(counters=[1, 2]),
    "repairs by trigger is a list": good_status_doc(counters={"repairs_by_trigger": [["x", 1]]}),
    "a counter is a string": good_status_doc(counters={"rules_restored": "20"}),
    "forgotten is a string": good_status_doc(forgotten="2"),
    "by_port holds strings": good_status_doc(forgotten={"total": 1, "by_port": ["7537"]}),
    "last_repair is a number": good_status_doc(last_repair=5),
    "duration is a string": good_status_doc(last_repair={"at": NOW, "trigger": "x", "duration_ms": "fast"}),
    "started_at is text": good_status_doc(started_at="yesterday"),
    "updated_at is infinite": good_status_doc(updated_at=float("inf")),
    "updated_at is nan": good_status_doc(updated_at=float("nan")),
    "updated_at is huge": good_status_doc(updated_at=1e300),
    "started_at is a huge int": good_status_doc(started_at=10**30),
    "missing is text": good_status_doc(missing="3"),
    "outage is text": good_status_doc(outage_seconds="long"),
    "sockets is a number": good_status_doc(networkd_sockets=7481),
    "set_aside is an object": good_status_doc(set_aside={"a": 1}),
    "protected is a list": good_status_doc(protected=[11, 4]),
    "boolean version": good_status_doc(version=True),
}
STATUS_SHAPES: dict[str, bytes] = {
    "a list": b"[1, 2, 3]",
    "a string": b'"netd-hook"',
    "null": b"null",
    "deeply nested": b"[" * 200_000,
    "not utf-8": b"\xff\xfe\xfd",
    "a huge integer": b'{"format": "netd-hook/status", "version": 1, "pid": 1' + b"0" * 5000 + b"}",
}


def _status_files() -> dict[str, bytes]:
    files = {name: json.dumps(doc).encode() for name, doc in STATUS_LIES.items()}
    files.update(STATUS_SHAPES)
    return files


@pytest.mark.parametrize("name", list(_status_files()))
def test_probe_calls_a_lying_status_file_unreadable_naming_file_and_field(tmp_path: Path, name: str) -> None:
    path = tmp_path / status.STATUS_FILE
    path.write_bytes(_status_files()[name])
    pr = status.probe(tmp_path)
    assert pr.status is None, pr.status
    assert pr.error.startswith(f"unreadable status file {path}") or pr.error == "status file of an unknown format"
    assert "\n" not in pr.error and len(pr.error) < 400
    if name in STATUS_LIES and name != "boolean version":
        field = next(k for k in STATUS_LIES[name] if STATUS_LIES[name][k] != good_status_doc().get(k))
        assert field in pr.error, (field, pr.error)


@pytest.mark.parametrize("name", list(_status_files()))
def test_status_exits_4_when_running_and_3_when_not_whatever_the_status_file_holds(
        tmp_path: Path, held_lock: Path, empty_config: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    (held_lock / status.STATUS_FILE).write_bytes(_status_files()[name])
    code = cli.main(["status", "--runtime-dir", str(held_lock), "--config", str(empty_config)])
    out = capsys.readouterr().out
    assert code == cli.EXIT_UNKNOWN and "status cannot be read" in out and str(held_lock) in out
    assert cli.main(["status", "--json", "--runtime-dir", str(held_lock), "--config", str(empty_config)]) == 4
    assert json.loads(capsys.readouterr().out)["status"] is None
    idle = tmp_path / "idle"
    idle.mkdir()
    (idle / status.STATUS_FILE).write_bytes(_status_files()[name])
    assert cli.main(["status", "--runtime-dir", str(idle), "--config", str(empty_config)]) == cli.EXIT_NOT_RUNNING
    assert "inactive" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["networkd is a string", "networkd is null", "forgotten is a string",
                                  "last_repair is a number", "deeply nested"])
def test_wait_says_why_and_exits_0_whatever_the_status_file_holds(
        held_lock: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.delenv("MAINPID", raising=False)
    (held_lock / status.STATUS_FILE).write_bytes(_status_files()[name])
    assert cli.main(["wait", "--timeout", "0.2", "--runtime-dir", str(held_lock)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("netd-hook wait: gave up after 0.2s") and "Error(" not in err, err


@pytest.mark.parametrize("name", list(_status_files()))
def test_doctor_reports_an_unreadable_status_instead_of_crashing(tmp_path: Path, held_lock: Path, name: str) -> None:
    (held_lock / status.STATUS_FILE).write_bytes(_status_files()[name])
    root = tmp_path / "root"
    root.mkdir()
    _, findings = doctor.run(root, held_lock, tmp_path / "state", NOW, 252, lambda _line: None)
    running = [f for f in findings if f.check == "netd-hook.running"]
    assert running and "publishes no status" in running[0].summary, running


# What each lie is called: the field, its value, why (as check_document said it before from_json).
STATUS_LIE_MESSAGES = {
    "networkd is a string": "networkd: 'settled' is not an object",
    "networkd is null": 'networkd: None is not an object',
    "links is a list": "networkd.links: ['eth0'] is not an object",
    "counters is a list": 'counters: [1, 2] is not an object',
    "repairs by trigger is a list": "counters.repairs_by_trigger: [['x', 1]] is not an object",
    "a counter is a string": "counters.rules_restored: '20' is not a count",
    "forgotten is a string": "forgotten: '2' is not an object",
    "by_port holds strings": "forgotten.by_port[0]: '7537' is not an object",
    "last_repair is a number": 'last_repair: 5 is not an object',
    "duration is a string": "last_repair.duration_ms: 'fast' is not a duration",
    "started_at is text": "started_at: 'yesterday' is not a time",
    "updated_at is infinite": 'updated_at: inf is not a time',
    "updated_at is nan": 'updated_at: nan is not a time',
    "updated_at is huge": 'updated_at: 1e+300 is not a time',
    "started_at is a huge int": 'started_at: 1000000000000000000000000000000 is not a time',
    "missing is text": "missing: '3' is not a count",
    "outage is text": "outage_seconds: 'long' is not a duration",
    "sockets is a number": 'networkd_sockets: 7481 is not a list',
    "set_aside is an object": "set_aside: {'a': 1} is not a list",
    "protected is a list": 'protected: [11, 4] is not an object',
    "boolean version": 'version: True is not 1',
}


@pytest.mark.parametrize("name", list(STATUS_LIES))
def test_from_json_refuses_a_lying_document_naming_the_field_and_value(name: str) -> None:
    # what reaches the readers is a Status: a lie stops here
    with pytest.raises(status_doc.StatusError) as err:
        status_doc.from_json(STATUS_LIES[name])
    assert str(err.value) == STATUS_LIE_MESSAGES[name]


def _extremes() -> status_doc.Status:
    """The largest values from_json accepts, everywhere: what every reader must still show."""
    big, t, secs, text = status_doc.COUNT_MAX, status_doc.TIME_MAX, status_doc.SECONDS_MAX, "x" * 10_000
    doc = good_status_doc(
        pid=big, started_at=t, updated_at=t, missing=big, held_back=big, outage_seconds=secs, missing_since=t,
        networkd={"owner": text, "pid": big, "generation": big, "settled": False, "stuck": {"eth3": secs},
                  "links": {"eth3": "configuring", text: text}},
        protected={"rules": big, "routes": big}, set_aside=[text], unattributed=[text],
        forgotten={"total": big, "generation": big, "while_busy": big, "doubt": text,
                   "by_port": [{"port": big, "process": text, "count": big, "last_at": t}],
                   "last": {"at": t, "port": big, "process": None, "count": big, "example": text, "while_busy": True}},
        last_repair={"at": t, "trigger": text, "rules_restored": big, "duration_ms": secs},
        counters={"repairs": big, "losses": {text: big}, "repairs_by_trigger": {'we"ird\\': big, text: big}},
        degraded={"since": t, "reason": text, "writes": [{"what": text, "path": "/" + text, "since": t,
                                                          "next_attempt_at": t, "failures": big}]},
        snapshot_saved_at=t, networkd_sockets=[big])
    return status_doc.from_json(doc)


@pytest.mark.parametrize("now", [0.0, NOW, status_doc.TIME_MAX])
def test_every_reader_shows_whatever_from_json_accepts(tmp_path: Path, now: float) -> None:
    s = _extremes()
    assert status_doc.from_json(json.loads(json.dumps(status_doc.to_json(s)))) == s
    for running in (True, False):
        text = render.status_text(s, running, now)
        assert text.startswith("netd-hook: ")
    prom = metrics.render(s)
    assert prom.endswith("\n")
    for line in prom.splitlines():  # every sample stays a number Prometheus can parse
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
    assert doctor.assess(doctor.read_tree(tmp_path, 252), status.Probe(True, s), now, now)


def test_a_good_status_file_still_reads_and_renders(held_lock: Path, empty_config: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (held_lock / status.STATUS_FILE).write_text(json.dumps(good_status_doc()))
    pr = status.probe(held_lock)
    assert pr.status is not None and pr.error == "" and pr.status == status_doc.from_json(good_status_doc())
    assert cli.main(["status", "--runtime-dir", str(held_lock), "--config", str(empty_config)]) == 0
    assert "active, protecting" in capsys.readouterr().out


# ------------------------------------------------------------------ finding 5: config


def _config_error(path: Path) -> str:
    with pytest.raises(config.ConfigError) as err:
        finishes(lambda: config.load(path), [path] if path.is_fifo() else [])
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg and len(msg) < 400, msg
    return msg


def test_deeply_nested_toml_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i, text in enumerate(["a = " + "[" * 100_000, "a = " + "{b = " * 100_000, "x = [" * 5000]):
        path = tmp_path / f"deep{i}.toml"
        path.write_text(text)
        assert "not valid TOML" in _config_error(path)
        assert cli.main(["status", "--config", str(path), "--runtime-dir", str(tmp_path)]) == cli.EXIT_CONFIG
        assert str(path) in capsys.readouterr().err


def test_dev_zero_as_the_config_is_a_config_error_not_memory_exhaustion(capsys: pytest.CaptureFixture[str]) -> None:
    assert "not a regular file (a character device)" in _config_error(Path("/dev/zero"))
    assert cli.main(["run", "--config", "/dev/zero"]) == cli.EXIT_CONFIG
    assert "/dev/zero: cannot read: not a regular file" in capsys.readouterr().err


def test_a_fifo_as_the_config_is_a_config_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "netd-hook.toml"
    os.mkfifo(fifo)
    assert "not a regular file (a FIFO)" in _config_error(fifo)


def test_an_oversized_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_bytes(b"# padding\n" * (config.CONFIG_MAX_BYTES // 10 + 1))  # valid TOML, 1 MiB + 10 bytes
    assert "larger than 1 MiB" in _config_error(path)


def test_huge_and_multiline_values_and_keys_stay_on_one_short_line(tmp_path: Path) -> None:
    for i, text in enumerate([f'log_level = "{"x" * 100_000}"', '"bad\\nkey" = 1',
                              f'[scope]\ninclude_priorities = "{"1" * 100_000}"',
                              'state_dir = "/var/lib/\\u0000x"', '[metrics]\ntextfile = "/a\\u0000.prom"',
                              "log_level = " + "[" * 200 + "]" * 200]):
        path = tmp_path / f"c{i}.toml"
        path.write_text(text)
        _config_error(path)


def test_a_directory_or_missing_config_keeps_its_clear_error(tmp_path: Path) -> None:
    assert "cannot read" in _config_error(tmp_path)
    assert "cannot read" in _config_error(tmp_path / "absent.toml")


def test_the_default_config_path_that_cannot_be_checked_is_an_error_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "a-file" / "netd-hook.toml")
    (tmp_path / "a-file").write_text("")
    assert config.load(None) == config.Config()  # nothing there: the defaults
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    monkeypatch.setattr(config, "DEFAULT_CONFIG", fifo)
    assert "not a regular file" in _config_error_default()


def _config_error_default() -> str:
    with pytest.raises(config.ConfigError) as err:
        finishes(lambda: config.load(None), [config.DEFAULT_CONFIG])
    return str(err.value)


# ------------------------------------------------------------------ finding 5: status, lock, doctor paths


def test_a_fifo_as_the_status_file_does_not_block_status_or_wait(
        held_lock: Path, empty_config: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAINPID", raising=False)
    fifo = held_lock / status.STATUS_FILE
    os.mkfifo(fifo)
    pr = finishes(lambda: status.probe(held_lock), [fifo])
    assert pr.status is None and pr.error == f"unreadable status file {fifo}: not a regular file (a FIFO)"
    code = finishes(lambda: cli.main(["status", "--runtime-dir", str(held_lock), "--config", str(empty_config)]),
                    [fifo])
    assert code == cli.EXIT_UNKNOWN and "not a regular file (a FIFO)" in capsys.readouterr().out
    started = time.monotonic()
    assert finishes(lambda: cli.main(["wait", "--timeout", "0.3", "--runtime-dir", str(held_lock)]), [fifo]) == 0
    assert time.monotonic() - started < 2.5
    assert "netd-hook wait: gave up after 0.3s" in capsys.readouterr().err


def test_an_oversized_status_file_is_unreadable(tmp_path: Path) -> None:
    body = json.dumps(good_status_doc()).encode()
    (tmp_path / status.STATUS_FILE).write_bytes(body + b" " * status.STATUS_MAX_BYTES)
    pr = status.probe(tmp_path)
    assert pr.status is None and "larger than" in pr.error


def test_a_fifo_or_directory_as_the_lock_is_not_a_running_daemon_and_not_a_hang(
        tmp_path: Path, empty_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    lock = run / status.LOCK_FILE
    os.mkfifo(lock)
    assert finishes(lambda: status.running(run), [lock]) is False
    assert finishes(lambda: cli.main(["status", "--runtime-dir", str(run), "--config", str(empty_config)]),
                    [lock]) == cli.EXIT_NOT_RUNNING
    with pytest.raises(status.AlreadyRunning, match=f"{lock}: not a regular file \\(a FIFO\\)"):
        finishes(lambda: status.DaemonLock(run), [lock])
    lock.unlink()
    lock.mkdir()
    assert status.running(run) is False
    with pytest.raises(status.AlreadyRunning, match="not a regular file \\(a directory\\)"):
        status.DaemonLock(run)


def test_a_runtime_dir_that_is_a_file_is_not_a_running_daemon(tmp_path: Path, empty_config: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    not_dir = tmp_path / "file"
    not_dir.write_text("")
    assert cli.main(["status", "--runtime-dir", str(not_dir), "--config", str(empty_config)]) == cli.EXIT_NOT_RUNNING
    assert cli.main(["wait", "--timeout", "0", "--runtime-dir", str(not_dir)]) == 0
    assert "not running" in capsys.readouterr().err


def test_doctor_does_not_block_on_a_fifo_among_networkds_files(tmp_path: Path) -> None:
    fifo = tmp_path / "etc/systemd/networkd.conf.d/80-fifo.conf"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    passwd = tmp_path / "etc/passwd"
    os.mkfifo(passwd)
    facts = finishes(lambda: doctor.read_tree(tmp_path, 252), [fifo, passwd])
    assert [(f.state, f.error) for f in facts.conf_files] == [("error", "not a regular file (a FIFO)")]


def test_doctor_treats_a_snapshot_that_is_not_a_file_as_missing(tmp_path: Path, held_lock: Path) -> None:
    status.publish(held_lock, status_doc.from_json(good_status_doc(updated_at=NOW)))
    state = tmp_path / "state"
    (state / store.SNAPSHOT_FILE).mkdir(parents=True)
    root = tmp_path / "root"
    root.mkdir()
    _, findings = doctor.run(root, held_lock, state, NOW, 252, lambda _line: None)
    snap = [f for f in findings if f.check == "netd-hook.snapshot"]
    assert snap and snap[0].summary == "netd-hook is running but has no snapshot file"


def test_every_read_path_says_its_error_on_stderr_without_a_traceback(tmp_path: Path) -> None:
    # the whole CLI, as an operator runs it: one line on stderr, exit 2, no "Traceback"
    import subprocess
    import sys

    fifo = tmp_path / "cfg.toml"
    os.mkfifo(fifo)
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 100_000)
    root = Path(__file__).resolve().parent.parent
    for cfg in (fifo, deep, Path("/dev/zero")):
        p = subprocess.run([sys.executable, "-m", "netd_hook", "status", "--config", str(cfg),
                            "--runtime-dir", str(tmp_path)], capture_output=True, text=True, timeout=10, cwd=root)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1 and p.stderr.startswith(f"netd-hook: {cfg}: "), p.stderr


def test_every_field_of_rule_and_route_has_a_check() -> None:
    from dataclasses import fields

    assert list(model.RULE_FIELDS) == [f.name for f in fields(model.Rule)]
    assert list(model.ROUTE_FIELDS) == [f.name for f in fields(model.Route)]


def test_the_daemons_own_status_document_checks_out(tmp_path: Path) -> None:
    # what the readers accept (status_doc.from_json) must be what the daemon publishes
    from netd_hook.adapters import config as configmod
    from netd_hook.adapters.journal import Notifier, RepairRecord
    from netd_hook.adapters.netlink import Dump, HostRoute, Link
    from netd_hook.core.track import Tracker
    from netd_hook.daemon.service import Service

    svc = Service(configmod.Config(state_dir=tmp_path), None, Notifier(""), runtime_dir=tmp_path)
    rules = pod_rules("10.1.1.5", 2)
    svc.tracker = Tracker(configmod.Config().scope, Snapshot(frozenset(rules)))
    svc.tracker.load(Dump(rules=rules, links=[Link(3, "eth1")], host_routes=[HostRoute("10.1.1.5", "eth1")]))
    for last in (None, RepairRecord("reconfigure:eth1", 1, 0, 0, 0, 0, 0, 0, 1, 0.5, ":1.7")):
        svc.repairer.last_repair = last
        published = svc.publisher.status_doc(0.0, 0, 0)
        status.publish(tmp_path, published)
        pr = status.probe(tmp_path)
        assert pr.error == "" and pr.status == published
