"""Property-based tests (Hypothesis) of the three readers of untrusted files (issue 10, "Also").

The config loader, the snapshot loader and the status reader each get at least EXAMPLES
generated inputs: arbitrary bytes and text, arbitrary JSON or TOML trees, near-valid documents
(a valid one with fields given the wrong type, dropped, added or nested), deep nesting, huge
numbers, NaN, and paths that are not regular files. The property: nothing escapes but the
module's own error type (ConfigError; FormatError, which store.load turns into a set-aside
file; an "unreadable status file" Probe), what is accepted is usable downstream (the netlink
encoder, the renderers, the CLI's exit codes), and nothing is written outside the test's own
temporary directory (checked with an audit hook, sys.addaudithook, on every write-like call).
"""

from __future__ import annotations

import contextlib
import functools
import io
import ipaddress
import json
import math
import os
import random
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netd_hook.adapters import config, files, netlink, status, store
from netd_hook.commands import cli, doctor, metrics, render
from netd_hook.core import model, status_doc
from netd_hook.core.model import AF_INET, AF_INET6, FormatError, Route, Rule, Snapshot
from netd_hook.core.scope import Scope, route_in_scope, rule_in_scope

EXAMPLES = 2000
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NOW = 1_700_000_000.0


# ------------------------------------------------------------------ nothing written outside

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.chown", "os.utime",
                "os.chflags", "os.lchown", "shutil.rmtree", "os.mkfifo", "os.mknod"}
_TWO_PATH_EVENTS = {"os.rename", "os.link", "os.symlink", "shutil.move", "shutil.copyfile", "shutil.copytree"}


class _Guard:
    root: str | None = None
    outside: list[tuple[str, str]] = []
    installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    root = _Guard.root
    if root is None:
        return
    if event == "open":
        paths = [args[0]] if isinstance(args[2], int) and args[2] & _WRITE_FLAGS else []
    elif event in _PATH_EVENTS:
        paths = [args[0]]
    elif event in _TWO_PATH_EVENTS:
        paths = [args[0], args[1]]
    else:
        return
    for p in paths:
        if isinstance(p, int) or p is None:
            continue
        full = os.path.realpath(os.path.abspath(os.fsdecode(os.fspath(p))))
        if full != root and not full.startswith(root + os.sep):
            _Guard.outside.append((event, full))


@contextlib.contextmanager
def writes_only_under(root: Path) -> Iterator[None]:
    if not _Guard.installed:
        sys.addaudithook(_audit)  # cannot be removed: inert while _Guard.root is None
        _Guard.installed = True
    _Guard.root, _Guard.outside = os.path.realpath(root), []
    try:
        yield
    finally:
        _Guard.root = None
    assert not _Guard.outside, f"written outside {root}: {_Guard.outside[:5]}"


def test_the_write_guard_sees_writes_outside(tmp_path: Path) -> None:
    inside, elsewhere = tmp_path / "inside", tmp_path / "elsewhere"
    inside.mkdir()
    elsewhere.mkdir()
    with writes_only_under(inside):
        (inside / "ok").write_text("x")
        os.replace(inside / "ok", inside / "ok2")
    with pytest.raises(AssertionError, match="written outside"), writes_only_under(inside):
        (elsewhere / "bad").write_text("x")
    with pytest.raises(AssertionError, match="written outside"), writes_only_under(inside):
        os.replace(inside / "ok2", elsewhere / "moved")


class Hung(Exception):
    pass


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail, instead of hanging the suite, when the body blocks (a reader stuck in open(2) on a
    FIFO): SIGALRM interrupts the blocked call and its handler raises."""
    def ring(signum: int, frame: Any) -> None:
        raise Hung(f"blocked for more than {seconds}s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------ shared strategies

_TEXT = st.text(max_size=20)
_JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), _TEXT,
    st.sampled_from(["main", "local", "10.1.1.5/32", "2001:db8::/32", "fe80::1%eth0", "eth0", "", "\0", "1e400"]),
)
JSON_VALUES = st.recursive(_JSON_SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                                  st.dictionaries(_TEXT, kids, max_size=4)),
                           max_leaves=12)
# Raw payloads no tree strategy makes: nesting past any recursion limit, integers past
# int()'s 4,300 digits, NaN and Infinity literals, byte-order marks, UTF-16, a lone surrogate.
RAW_SPECIALS = st.sampled_from([
    b"[" * 100_000, b'{"a":' * 50_000, b"NaN", b"-Infinity", b"1" * 5000, b'{"version": ' + b"9" * 5000 + b"}",
    b"\xef\xbb\xbf{}", "{}".encode("utf-16"), b'"\\ud800"', b"\x00" * 64, b"", b"{}", b"[]", b"null",
])


def _canonical(net: ipaddress.IPv4Network | ipaddress.IPv6Network, ntop: bool) -> str:
    if ntop and net.version == 6:  # the form netlink.decode_rule produces (inet_ntop)
        return f"{socket.inet_ntop(socket.AF_INET6, net.network_address.packed)}/{net.prefixlen}"
    return str(net)


def prefixes(family: int) -> st.SearchStrategy[str]:
    bits = 32 if family == AF_INET else 128
    network = ipaddress.IPv4Network if family == AF_INET else ipaddress.IPv6Network
    return st.builds(lambda n, length, ntop: _canonical(network((n, length), strict=False), ntop),
                     st.integers(0, 2**bits - 1), st.integers(0, bits), st.booleans())


def addresses(family: int) -> st.SearchStrategy[str]:
    af, bits = (socket.AF_INET, 32) if family == AF_INET else (socket.AF_INET6, 128)
    return st.integers(0, 2**bits - 1).map(lambda n: socket.inet_ntop(af, n.to_bytes(bits // 8, "big")))


IFNAMES = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), min_size=1, max_size=15)
U8, U32 = st.integers(0, 255), st.integers(0, 2**32 - 1)


def opt(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | s


def rules(family: int) -> st.SearchStrategy[Rule]:
    return st.builds(Rule, family=st.just(family), priority=U32, table=U32, action=U8, src=opt(prefixes(family)),
                     dst=opt(prefixes(family)), fwmark=opt(U32), fwmask=opt(U32), iifname=opt(IFNAMES),
                     oifname=opt(IFNAMES), tos=U8, flags=U32, goto=opt(U32), suppress_prefixlen=opt(U32),
                     suppress_ifgroup=opt(U32), l3mdev=opt(U8), protocol=U8)


def routes(family: int) -> st.SearchStrategy[Route]:
    return st.builds(Route, family=st.just(family), table=U32, dst=prefixes(family), oif=opt(IFNAMES),
                     gateway=opt(addresses(family)), prefsrc=opt(addresses(family)), priority=opt(U32),
                     tos=U8, scope=U8, type=U8, protocol=U8)


# Built once: strategies made per example (flatmap) cost more to validate than the test itself.
RULES = rules(AF_INET) | rules(AF_INET6)
ROUTES = routes(AF_INET) | routes(AF_INET6)
SNAPSHOTS = st.builds(Snapshot, st.frozensets(RULES, max_size=4), st.frozensets(ROUTES, max_size=4))


@functools.cache
def _pool() -> tuple[list[Rule], list[Route]]:
    """Valid entries with every attribute varied (seeded), for the loaders' near-valid documents:
    drawing each of a rule's 17 fields costs Hypothesis more than the loader under test, and the
    fields' own variety is what SNAPSHOTS (the round-trip property) explores."""
    rnd = random.Random(10)

    def maybe(value: Any) -> Any:
        return value if rnd.random() < 0.5 else None

    def prefix(family: int) -> str:
        bits = 32 if family == AF_INET else 128
        network = ipaddress.IPv4Network if family == AF_INET else ipaddress.IPv6Network
        return _canonical(network((rnd.getrandbits(bits), rnd.randint(0, bits)), strict=False), rnd.random() < 0.5)

    def address(family: int) -> str:
        af, bits = (socket.AF_INET, 32) if family == AF_INET else (socket.AF_INET6, 128)
        return socket.inet_ntop(af, rnd.getrandbits(bits).to_bytes(bits // 8, "big"))

    def name() -> str:
        return "".join(rnd.choice("eth0123456789abcdefÄ-_.:") for _ in range(rnd.randint(1, 15)))

    def u32() -> int:
        return rnd.choice([0, 1, 255, 256, 2**32 - 1, rnd.getrandbits(32)])

    rules_, routes_ = [], []
    for _ in range(64):
        f = rnd.choice([AF_INET, AF_INET6])
        rules_.append(Rule(f, u32(), u32(), rnd.randint(0, 255), maybe(prefix(f)), maybe(prefix(f)), maybe(u32()),
                           maybe(u32()), maybe(name()), maybe(name()), rnd.randint(0, 255), u32(), maybe(u32()),
                           maybe(u32()), maybe(u32()), maybe(rnd.randint(0, 1)), rnd.randint(0, 255)))
        f = rnd.choice([AF_INET, AF_INET6])
        routes_.append(Route(f, u32(), prefix(f), maybe(name()), maybe(address(f)), maybe(address(f)), maybe(u32()),
                             rnd.randint(0, 255), rnd.randint(0, 255), rnd.randint(0, 255), rnd.randint(0, 255)))
    return rules_, routes_


POOLED_SNAPSHOTS = st.builds(
    Snapshot,
    st.lists(st.integers(0, 63), max_size=6).map(lambda ix: frozenset(_pool()[0][i] for i in ix)),
    st.lists(st.integers(0, 63), max_size=6).map(lambda ix: frozenset(_pool()[1][i] for i in ix)),
)


def mutate(draw: st.DrawFn, doc: Any, depth: int = 3) -> Any:
    """doc with up to `depth` mutations at random places: a value replaced by any JSON value,
    a key dropped, an unknown key added, a value wrapped in a list, an object turned into a list."""
    for _ in range(draw(st.integers(0, depth))):
        target, key = _pick(draw, doc)
        if target is None:
            doc = draw(JSON_VALUES)
            continue
        how = draw(st.sampled_from(["replace", "drop", "add", "wrap", "listify"]))
        if how == "replace":
            target[key] = draw(JSON_VALUES)
        elif how == "drop" and isinstance(target, dict):
            del target[key]
        elif how == "add" and isinstance(target, dict):
            target[draw(_TEXT)] = draw(JSON_VALUES)
        elif how == "wrap":
            target[key] = [target[key]]
        elif how == "listify" and isinstance(target[key], dict):
            target[key] = list(target[key].items())
    return doc


def _pick(draw: st.DrawFn, doc: Any) -> tuple[Any, Any]:
    """A (container, key) somewhere in doc, or (None, None) for the document itself."""
    spots: list[tuple[Any, Any]] = [(None, None)]

    def walk(node: Any) -> None:
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for k in keys:
            spots.append((node, k))
            walk(node[k])

    walk(doc)
    return draw(st.sampled_from(spots))


def _counted(prop: Any) -> int:
    """Run a @given property; returns how many inputs it was called with."""
    calls = [0]
    prop(calls)
    assert calls[0] >= EXAMPLES, calls[0]
    return calls[0]


# ------------------------------------------------------------------ the config loader


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {_toml(v)}" for k, v in value.items()) + "}"
    return '""'  # None has no TOML spelling


def _toml_doc(doc: Any) -> bytes:
    if not isinstance(doc, dict):
        return f"value = {_toml(doc)}\n".encode("utf-8", "surrogatepass")
    lines = [f"{json.dumps(k, ensure_ascii=False)} = {_toml(v)}" for k, v in doc.items()]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


_RANGES = st.one_of(st.integers(-1, 2**32), st.builds(lambda a, b: f"{a}-{b}", st.integers(-1, 2**32),
                                                     st.integers(-1, 2**32)))
_TABLES = st.one_of(st.integers(-1, 2**32), st.sampled_from(["main", "local", "default", "mian"]))
_PROTOCOLS = st.one_of(st.integers(-1, 300), st.sampled_from([*model.PROTOCOLS, "carrier-pigeon"]))
_CONFIG_VALID = st.fixed_dictionaries({}, optional={
    "log_level": st.sampled_from([*config.LOG_LEVELS, "loud"]),
    "state_dir": st.sampled_from(["/var/lib/netd-hook", "relative", "/a\0b", "/"]),
    "scope": st.fixed_dictionaries({}, optional={
        "include_priorities": st.lists(_RANGES, max_size=3), "exclude_priorities": st.lists(_RANGES, max_size=3),
        "include_tables": st.lists(_TABLES, max_size=3), "exclude_tables": st.lists(_TABLES, max_size=3),
        "exclude_protocols": st.lists(_PROTOCOLS, max_size=3)}),
    "replay": st.fixed_dictionaries({}, optional={
        k: st.integers(-1, 700_000) for k in ("quiet_ms", "absent_grace_ms", "ack_timeout_ms", "max_attempts")}),
    "metrics": st.fixed_dictionaries({}, optional={"textfile": st.sampled_from(["/x.prom", "x.prom", "/x.txt"])}),
})


@st.composite
def _config_docs(draw: st.DrawFn) -> bytes:
    return _toml_doc(mutate(draw, draw(_CONFIG_VALID)))


CONFIG_DOCS = _config_docs()

CONFIG_SPECIALS = ("fifo", "directory", "missing", "dev-zero", "dev-null", "oversized", "symlink-loop", "deep")


def _config_input() -> st.SearchStrategy[tuple[str, bytes]]:
    return st.one_of(
        CONFIG_DOCS.map(lambda b: ("file", b)),
        st.binary(max_size=200).map(lambda b: ("file", b)),
        st.text(max_size=200).map(lambda t: ("file", t.encode("utf-8", "surrogatepass"))),
        RAW_SPECIALS.map(lambda b: ("file", b)),
        st.integers(1, 100_000).map(lambda n: ("file", b"a = " + b"[" * n)),
        st.sampled_from(CONFIG_SPECIALS).map(lambda s: (s, b"")),
    )


def _place(path: Path, kind: str, body: bytes, cap: int) -> Path:
    """Put what `kind` says at `path` (emptied first); returns the path to read."""
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    if kind == "file":
        path.write_bytes(body)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "dev-null":
        path.symlink_to("/dev/null")
    elif kind == "oversized":
        path.write_bytes(b" " * (cap + 1))
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    elif kind == "deep":
        path.write_bytes(b"a = " + b"{b = " * 100_000)
    return path


def test_config_loader_raises_only_config_error(tmp_path: Path) -> None:
    path = tmp_path / "netd-hook.toml"

    @SETTINGS
    @given(case=_config_input())
    def prop(calls: list[int], case: tuple[str, bytes]) -> None:
        calls[0] += 1
        kind, body = case
        _place(path, kind, body, config.CONFIG_MAX_BYTES)
        with writes_only_under(tmp_path), within(5):
            try:
                cfg = config.load(path)
            except config.ConfigError as exc:
                msg = str(exc)
                assert msg.startswith(f"{path}: ") and "\n" not in msg and len(msg) < 600, msg
                return
        assert kind == "file", kind
        assert isinstance(cfg.replay.quiet_ms, int) and cfg.state_dir.is_absolute()
        assert "\0" not in str(cfg.state_dir) and cfg.log_level in config.LOG_LEVELS
        for lo, hi in (*cfg.scope.include_priorities, *cfg.scope.exclude_priorities):
            assert 0 <= lo <= hi <= 2**32 - 1

    print(f"config loader: {_counted(prop)} inputs")


# ------------------------------------------------------------------ the snapshot loader


@st.composite
def _snapshot_docs(draw: st.DrawFn) -> Any:
    return mutate(draw, json.loads(json.dumps(model.snapshot_to_json(draw(POOLED_SNAPSHOTS)))))


def _snapshot_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        _snapshot_docs().map(lambda d: json.dumps(d).encode("utf-8", "surrogatepass")),
        JSON_VALUES.map(lambda d: json.dumps(d).encode("utf-8", "surrogatepass")),
        st.binary(max_size=300),
        st.tuples(POOLED_SNAPSHOTS, st.integers(0, 400), st.binary(max_size=8)).map(_spliced),
    )


def _spliced(case: tuple[Snapshot, int, bytes]) -> bytes:
    snap, at, junk = case
    text = json.dumps(model.snapshot_to_json(snap)).encode()
    return text[:at] + junk + text[at:]


def _usable(snap: Snapshot) -> None:
    """What the daemon does with a loaded snapshot must not raise either."""
    scope = Scope()
    for rule in snap.rules:
        netlink.encode_rule(rule, netlink.RTM_NEWRULE, 0)
        rule.describe()
        rule.host_address()
        rule_in_scope(scope, rule)
    for route in snap.routes:
        netlink.encode_route(route, 7, netlink.RTM_NEWROUTE, 0)
        route.describe()
        route_in_scope(scope, route)
    again = model.snapshot_from_json(json.loads(json.dumps(model.snapshot_to_json(snap))))
    assert again == snap


def test_snapshot_loader_sets_aside_whatever_does_not_decode(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()

    @SETTINGS
    @given(raw=_snapshot_bytes())
    def prop(calls: list[int], raw: bytes) -> None:
        calls[0] += 1
        for p in state.iterdir():
            p.unlink()
        (state / store.SNAPSHOT_FILE).write_bytes(raw)
        with writes_only_under(state), within(5):
            loaded = store.load(state, now=NOW)
        assert loaded.status in ("loaded", "corrupt"), loaded
        if loaded.status == "loaded":
            _usable(loaded.snapshot)
        else:
            assert loaded.snapshot == Snapshot() and "\n" not in loaded.detail and len(loaded.detail) < 600
            assert loaded.moved_to is not None and loaded.moved_to.parent == state
            assert loaded.moved_to.read_bytes() == raw and not (state / store.SNAPSHOT_FILE).exists()

    print(f"snapshot loader (store.load): {_counted(prop)} inputs")


SNAPSHOT_SPECIALS = ("fifo", "directory", "missing", "dev-zero", "dev-null", "oversized", "symlink-loop")


def test_snapshot_file_reader_raises_only_oserror_or_format_error(tmp_path: Path) -> None:
    path = tmp_path / store.SNAPSHOT_FILE

    @SETTINGS
    @given(case=st.one_of(_snapshot_bytes().map(lambda b: ("file", b)), RAW_SPECIALS.map(lambda b: ("file", b)),
                          st.integers(1, 100_000).map(lambda n: ("file", b"[" * n)),
                          st.sampled_from(SNAPSHOT_SPECIALS).map(lambda s: (s, b""))))
    def prop(calls: list[int], case: tuple[str, bytes]) -> None:
        calls[0] += 1
        kind, body = case
        _place(path, kind, body, model.SNAPSHOT_MAX_BYTES)
        with writes_only_under(tmp_path), within(5):
            try:
                snap = files.load_snapshot_file(path)
            except FormatError as exc:
                assert kind == "file" and "\n" not in str(exc) and len(str(exc)) < 600, exc
                return
            except OSError as exc:
                assert kind != "file" and exc.strerror, (kind, exc)
                return
        assert kind == "file"
        _usable(snap)

    print(f"snapshot file reader: {_counted(prop)} inputs")


def test_every_snapshot_the_daemon_can_hold_round_trips_through_the_codec() -> None:
    @settings(SETTINGS, max_examples=500)
    @given(snap=SNAPSHOTS)
    def prop(snap: Snapshot) -> None:
        raw = json.dumps(model.snapshot_to_json(snap), separators=(",", ":"), sort_keys=True).encode()
        assert model.decode_snapshot(raw) == snap

    prop()


# ------------------------------------------------------------------ the status reader


def _good_status() -> dict[str, Any]:
    return {
        "format": status.FORMAT, "version": status.VERSION, "pid": 4242, "started_at": NOW - 3600,
        "updated_at": NOW - 1,
        "networkd": {"owner": ":1.7", "pid": 99, "generation": 2, "settled": True,
                     "links": {"eth0": "configured", "eth1": "configuring", "eni1": "unmanaged"}},
        "complete": True, "protected": {"rules": 11, "routes": 4}, "missing": 0, "held_back": 0,
        "set_aside": ["pref 512 from all to 10.1.1.5/32 lookup 254"], "missing_since": None, "outage_seconds": 0.25,
        "forgotten": {"total": 2, "generation": 2, "while_busy": 1, "doubt": None,
                      "by_port": [{"port": 7537, "process": "ip", "count": 2, "last_at": NOW - 5}],
                      "last": {"at": NOW - 5, "port": 7537, "process": "ip", "count": 1, "example": "x",
                               "while_busy": False}},
        "last_repair": {"at": NOW - 50, "trigger": "reconfigure:eth1", "rules_restored": 9, "routes_restored": 2,
                        "skipped_dead": 1, "duration_ms": 1.5},
        "counters": {"repairs": 3, "rules_restored": 20, "losses": {"networkd": 3},
                     "repairs_by_trigger": {"reconfigure": 2}},
        "networkd_sockets": [7481], "config": "<defaults>", "state_dir": "/var/lib/netd-hook",
    }


STATUS_SPECIALS = ("fifo", "directory", "missing", "dev-zero", "oversized", "symlink-loop")


@st.composite
def _status_docs(draw: st.DrawFn) -> Any:
    return mutate(draw, _good_status(), depth=4)


def _status_input() -> st.SearchStrategy[tuple[str, bytes]]:
    docs = _status_docs()
    return st.one_of(
        docs.map(lambda d: ("file", json.dumps(d).encode("utf-8", "surrogatepass"))),
        JSON_VALUES.map(lambda d: ("file", json.dumps(d).encode("utf-8", "surrogatepass"))),
        st.binary(max_size=200).map(lambda b: ("file", b)),
        RAW_SPECIALS.map(lambda b: ("file", b)),
        st.sampled_from(STATUS_SPECIALS).map(lambda s: (s, b"")),
    )


def _facts(root: Path) -> doctor.Facts:
    root.mkdir()
    return doctor.read_tree(root, 252)


def test_status_reader_never_raises_and_the_commands_keep_their_exit_codes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # argparse's parser takes 2.5 ms to build, four fifths of each example: build it once
    monkeypatch.setattr(cli, "_parser", functools.cache(cli._parser))
    live, idle = tmp_path / "live", tmp_path / "idle"
    idle.mkdir()
    lock = status.DaemonLock(live)
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    facts = _facts(tmp_path / "root")
    try:
        @SETTINGS
        @given(case=_status_input(), alive=st.booleans())
        def prop(calls: list[int], case: tuple[str, bytes], alive: bool) -> None:
            calls[0] += 1
            kind, body = case
            run = live if alive else idle
            _place(run / status.STATUS_FILE, kind, body, status.STATUS_MAX_BYTES)
            out, err = io.StringIO(), io.StringIO()
            with writes_only_under(tmp_path), within(5), contextlib.redirect_stdout(out), \
                    contextlib.redirect_stderr(err):
                pr = status.probe(run)
                code = cli.main(["status", "--runtime-dir", str(run), "--config", str(cfg)])
                waited = cli.main(["wait", "--timeout", "0", "--runtime-dir", str(run), "--config", str(cfg)])
                findings = doctor.assess(facts, pr, None, NOW)
                if pr.status is not None:
                    render.status_text(pr.status, alive, NOW)
                    metrics.render(pr.status)
            assert pr.running is alive and waited == 0 and findings
            raw = _json_or_none(body) if kind == "file" else None
            if isinstance(raw, dict) and raw.get("format") == status.FORMAT:
                try:  # the probe's verdict is from_json's, the error its message
                    assert pr.status == status_doc.from_json(raw)
                except status_doc.StatusError as exc:
                    assert pr.status is None and pr.error.endswith(f": {exc}"), (pr.error, exc)
            assert "Traceback" not in err.getvalue() and "Error(" not in err.getvalue(), err.getvalue()
            if pr.status is None:
                assert pr.error and "\n" not in pr.error and len(pr.error) < 800, pr.error
                assert code == (cli.EXIT_UNKNOWN if alive else cli.EXIT_NOT_RUNNING)
            else:
                assert kind == "file" and status_doc.from_json(status_doc.to_json(pr.status)) == pr.status
                assert code in ((cli.EXIT_OK, cli.EXIT_PROBLEM) if alive else (cli.EXIT_NOT_RUNNING,))

        print(f"status reader: {_counted(prop)} inputs")
    finally:
        lock.close()


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def test_the_strategies_cover_every_field() -> None:
    # rules() and routes() set every field; a field added to Rule or Route must be added there too
    assert {f.name for f in fields(Rule)} == set(model.RULE_FIELDS)
    assert {f.name for f in fields(Route)} == set(model.ROUTE_FIELDS)
