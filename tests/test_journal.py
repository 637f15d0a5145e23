"""The native journald sender and the audit records.

Unit tests decode what a plain AF_UNIX datagram socket in tmp_path receives with a decoder
written here from the protocol document (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/), not
with the module's own encoder. The lab tests send every kind of entry to a real
systemd-journald in a private mount namespace and read it back with journalctl.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import select
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from netd_hook.adapters import journal as j
from netd_hook.adapters.journal import (
    Audit,
    AuditSink,
    Journal,
    JournalFieldError,
    RejectedBurst,
    RejectedSignals,
    RepairRecord,
)
from tests.lab import JOURNALD, NETWORKD, Lab, _pid_alive

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the oracle
def decode(payload: bytes) -> list[tuple[str, bytes]]:
    """The documented format: `KEY=value\\n`, or `KEY\\n` + u64 LE length + value + `\\n`."""
    out = []
    i = 0
    while i < len(payload):
        nl = payload.index(b"\n", i)
        eq = payload.find(b"=", i, nl)
        if eq != -1:
            out.append((payload[i:eq].decode("ascii"), payload[eq + 1:nl]))
            i = nl + 1
        else:
            name = payload[i:nl].decode("ascii")
            size = int.from_bytes(payload[nl + 1:nl + 9], "little")
            start = nl + 9
            assert payload[start + size:start + size + 1] == b"\n", "binary field not terminated by a newline"
            out.append((name, payload[start:start + size]))
            i = start + size + 1
    return out


@pytest.fixture
def server(tmp_path):
    path = tmp_path / "socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, path
    sock.close()


@pytest.fixture
def journal(server):
    _, path = server
    jr = Journal.open(path)
    assert jr is not None
    yield jr
    jr.close()


def receive(sock: socket.socket) -> tuple[list[tuple[str, bytes]], str]:
    """One entry, from the datagram or from the memfd passed with it; and which way it came."""
    msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 4)
    if not fds:
        return decode(msg), "datagram"
    try:
        assert msg == b"" and len(fds) == 1, "an fd comes alone, with an empty payload"
        seals = fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)
        want = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        assert seals & want == want, f"memfd not sealed: {seals:#x}"
        size = os.fstat(fds[0]).st_size
        return decode(os.pread(fds[0], size, 0)), "memfd"
    finally:
        for fd in fds:
            os.close(fd)


def nothing_queued(sock: socket.socket) -> bool:
    return not select.select([sock], [], [], 0)[0]


# ----------------------------------------------------------------------------- encoding
def test_encode_entry_matches_the_documented_example():
    # The protocol document's own example: a value with a newline uses the binary form.
    got = j.encode_entry([("PRIORITY", 3), ("BINARY_BLOB", b"xx\nx"), ("MESSAGE", "Something happened.")])
    assert got == (b"PRIORITY=3\n"
                   b"BINARY_BLOB\n\x04\x00\x00\x00\x00\x00\x00\x00xx\nx\n"
                   b"MESSAGE=Something happened.\n")


def test_send_plain_and_multiline_fields(server, journal):
    sock, _ = server
    assert journal.send("first line\nsecond line\n\tthird", priority=j.WARNING, message_id=j.MESSAGE_ID_REPAIR,
                        fields={"NETD_HOOK_RULES_RESTORED": 13, "NETD_HOOK_NOTE": "a=b c"},
                        code=j.CodeLocation("netd_hook/daemon/service.py", 42, "_record"))
    fields, way = receive(sock)
    assert way == "datagram"
    assert fields == [
        ("MESSAGE", b"first line\nsecond line\n\tthird"),
        ("PRIORITY", b"4"),
        ("MESSAGE_ID", j.MESSAGE_ID_REPAIR.encode()),
        ("SYSLOG_IDENTIFIER", b"netd-hook"),
        ("CODE_FILE", b"netd_hook/daemon/service.py"),
        ("CODE_LINE", b"42"),
        ("CODE_FUNC", b"_record"),
        ("NETD_HOOK_RULES_RESTORED", b"13"),
        ("NETD_HOOK_NOTE", b"a=b c"),
    ]
    assert journal.sent == 1 and journal.failed == 0


def test_send_raw_bytes_and_utf8(server, journal):
    sock, _ = server
    assert journal.send("ünïcode", fields=[("NETD_HOOK_BLOB", b"\x00\xff"), ("NETD_HOOK_BLOB", b"again")])
    fields, _ = receive(sock)
    assert ("MESSAGE", "ünïcode".encode()) in fields
    assert [v for k, v in fields if k == "NETD_HOOK_BLOB"] == [b"\x00\xff", b"again"]  # repeated fields kept


def test_big_entry_goes_as_a_sealed_memfd(server, journal):
    sock, _ = server
    sndbuf = journal._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)  # type: ignore[union-attr]
    blob = "0123456789abcdef" * ((sndbuf + (256 << 10)) // 16)  # well past one datagram
    tail = "end\nof it"
    assert journal.send("big", message_id=j.MESSAGE_ID_SNAPSHOT_REBUILT,
                        fields={"NETD_HOOK_BLOB": blob, "NETD_HOOK_TAIL": tail})
    fields, way = receive(sock)
    assert way == "memfd"
    got = dict(fields)
    assert got["NETD_HOOK_BLOB"] == blob.encode() and got["NETD_HOOK_TAIL"] == tail.encode()
    assert got["MESSAGE"] == b"big" and got["MESSAGE_ID"] == j.MESSAGE_ID_SNAPSHOT_REBUILT.encode()
    # Small entries keep going as plain datagrams afterwards.
    assert journal.send("small")
    assert receive(sock)[1] == "datagram"


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("name", ["MESSAGE_X", "A", "NETD_HOOK_RULES_RESTORED", "X1_2", "A" * 64])
def test_valid_field_names(name):
    assert j.check_field_name(name) == name


@pytest.mark.parametrize("name", ["", "_PID", "__CURSOR", "1ABC", "lower", "NETD-HOOK", "A B", "A=B", "A\nB",
                                  "A" * 65, "ÄBC", "NETD_HOOK_é"])
def test_invalid_field_names(name, server, journal):
    sock, _ = server
    with pytest.raises(JournalFieldError):
        j.check_field_name(name)
    with pytest.raises(JournalFieldError):
        journal.send("x", fields={name: "1"})
    with pytest.raises(JournalFieldError):
        Audit(j.MESSAGE_ID_REPAIR, j.WARNING, "x", {name: "1"})
    assert nothing_queued(sock)  # a bad entry is never half sent


@pytest.mark.parametrize("kwargs", [
    {"priority": 8}, {"priority": -1}, {"priority": True},
    {"message_id": "A7E6CAF34A5A4925B54A82F6A6014E44"}, {"message_id": "a7e6caf3-4a5a-4925-b54a-82f6a6014e44"},
    {"message_id": "abc"},
    {"fields": {"MESSAGE": "twice"}}, {"fields": {"PRIORITY": "1"}}, {"fields": {"SYSLOG_IDENTIFIER": "x"}},
])
def test_bad_standard_fields_are_refused(kwargs, journal):
    with pytest.raises(JournalFieldError):
        journal.send("x", **kwargs)
    assert journal.sent == journal.failed == 0


# ----------------------------------------------------------------------------- no journal, errors
def test_open_without_a_socket_is_none(tmp_path):
    assert Journal.open(tmp_path / "missing") is None
    (tmp_path / "file").write_text("not a socket")
    assert Journal.open(tmp_path / "file") is None


def test_sink_without_journal_logs_at_the_matching_level(caplog):
    sink = AuditSink(None)
    assert not sink.native
    caplog.set_level(logging.DEBUG, logger="netd_hook")
    rollback = j.rollback_audit("reconfigure:eth1", "rule from 10.1.1.5 lookup 2", errno.EAFNOSUPPORT, 3)
    assert sink.emit(rollback) is False
    assert sink.emit(j.networkd_generation_audit(":1.7", 42, 2, ":1.5")) is False
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("netd_hook.adapters.journal", logging.ERROR,
         'rollback trigger=reconfigure:eth1 rolled_back=3 failed=1 errno=EAFNOSUPPORT '
         'failed_entry="rule from 10.1.1.5 lookup 2"'),
        ("netd_hook.adapters.journal", logging.INFO,
         "networkd-generation networkd_owner=:1.7 networkd_pid=42 generation=2 previous_owner=:1.5"),
    ]


def test_sink_does_not_double_the_line_when_stderr_is_the_journal(server, journal, caplog):
    sock, _ = server
    caplog.set_level(logging.DEBUG, logger="netd_hook")
    service_log = logging.getLogger("netd_hook.daemon.service")
    rec = _record()
    assert AuditSink(journal, logger=service_log, echo=False).emit(j.repair_audit(rec)) is True
    assert caplog.records == []  # under systemd: the native entry only
    assert AuditSink(journal, logger=service_log, echo=True).emit(j.repair_audit(rec)) is True
    # run by hand in a terminal: the line the service has always logged, as well
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("netd_hook.daemon.service", logging.WARNING, rec.line())]
    for _ in range(2):
        assert dict(receive(sock)[0])["MESSAGE"] == rec.line().encode()


def test_stderr_is_journal(tmp_path):
    with open(tmp_path / "f", "w") as f:
        st = os.fstat(f.fileno())
        assert j.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f.fileno())
        assert not j.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f.fileno())
        assert not j.stderr_is_journal({}, f.fileno())
        assert not j.stderr_is_journal({"JOURNAL_STREAM": "garbage"}, f.fileno())


def test_errors_are_counted_logged_once_and_never_raise(server, journal, caplog):
    sock, path = server
    caplog.set_level(logging.DEBUG, logger="netd_hook.adapters.journal")

    def warnings():
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    # journald stopped: its socket file stays, nobody listens (ECONNREFUSED) ...
    sock.close()
    assert journal.send("a") is False
    # ... then gone (ENOENT), as between a stop and the next start
    path.unlink()
    assert journal.send("b") is False
    assert journal.failed == 2 and journal.sent == 0
    assert len(warnings()) == 1 and os.strerror(errno.ECONNREFUSED) in warnings()[0]
    # journald back at the same path: picked up without reopening anything
    back = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    back.bind(str(path))
    try:
        assert journal.send("c") is True
        assert dict(receive(back)[0])["MESSAGE"] == b"c"
        assert any("takes entries again" in r.getMessage() for r in caplog.records)
        # journald's queue full (it is not reading): EAGAIN, counted, the sender does not block.
        # (net.unix.max_dgram_qlen: 10 by default, 512 where systemd's sysctl.d sets it.)
        results = []
        while len(results) < 20000 and (not results or results[-1]):
            results.append(journal.send(f"burst {len(results)}"))
        assert results[0] is True and results[-1] is False
        assert journal.failed == 3
        assert len(warnings()) == 2 and os.strerror(errno.EAGAIN) in warnings()[1]
    finally:
        back.close()
    journal.close()
    assert journal.send("closed") is False  # a closed sender counts too, never raises


def test_sink_falls_back_to_the_log_when_a_send_fails(server, journal, caplog):
    sock, _ = server
    sock.close()
    caplog.set_level(logging.INFO, logger="netd_hook")
    audit = j.snapshot_rebuilt_audit("corrupt: Expecting value", 5, 1, corrupt=True, moved_to="/s.corrupt-1")
    assert AuditSink(journal, echo=False).emit(audit) is False
    assert (logging.ERROR, audit.message) in [(r.levelno, r.getMessage()) for r in caplog.records]


# ----------------------------------------------------------------------------- audit records
def _record(**kw) -> RepairRecord:
    base = dict(trigger="reconfigure:eth1", rules_restored=13, routes_restored=1, already_present=0, skipped_dead=2,
                skipped_other=0, set_aside=0, rollbacks=0, batches=1, duration_ms=0.73, networkd_owner=":1.1")
    base.update(kw)
    return RepairRecord(**base)  # type: ignore[arg-type]


def test_message_ids_are_pinned():
    # Saved searches and alerts match on these: a change here is a breaking change.
    assert j.MESSAGE_IDS == {
        "repair": "a7e6caf34a5a4925b54a82f6a6014e44",
        "rollback": "42ca24a307504d3fb8e4b59f2acb432b",
        "rejected-signals": "16c9e29f67304724b2609ad397d0c0b7",
        "snapshot-rebuilt": "86102935c4624c3aac843f766b9b588d",
        "networkd-generation": "673ebf16c5574f6faf247b96df0ae5a9",
        "forgotten-bulk": "208c2ee2ebe949c4bf2d850a94e6374f",
    }


def test_repair_audit():
    rec = _record()
    a = j.repair_audit(rec)
    assert (a.message_id, a.priority, a.message) == (j.MESSAGE_ID_REPAIR, j.WARNING, rec.line())
    assert dict(a.fields) == rec.fields()
    assert a.fields["NETD_HOOK_TRIGGER"] == "reconfigure:eth1"
    assert a.fields["NETD_HOOK_RULES_RESTORED"] == "13"
    assert a.fields["NETD_HOOK_ROUTES_RESTORED"] == "1"
    assert a.fields["NETD_HOOK_SKIPPED_DEAD"] == "2"
    assert a.fields["NETD_HOOK_DURATION_MS"] == "0.7"
    assert a.fields["NETD_HOOK_NETWORKD_OWNER"] == ":1.1"
    # Only dead pods' rules held back, nothing restored: notice, not warning.
    assert j.repair_audit(_record(rules_restored=0, routes_restored=0)).priority == j.NOTICE
    assert j.repair_audit(_record(rules_restored=0, routes_restored=0, set_aside=1)).priority == j.WARNING
    with pytest.raises(TypeError):
        a.fields["NETD_HOOK_TRIGGER"] = "x"  # type: ignore[index]


def test_rollback_audit():
    a = j.rollback_audit("networkd-restart", "rule from 10.1.1.5 lookup 2 pref 1536", errno.EAFNOSUPPORT, 12,
                         failed=2)
    assert (a.message_id, a.priority) == (j.MESSAGE_ID_ROLLBACK, j.ERR)
    assert dict(a.fields) == {
        "NETD_HOOK_TRIGGER": "networkd-restart",
        "NETD_HOOK_ROLLED_BACK": "12",
        "NETD_HOOK_FAILED": "2",
        "NETD_HOOK_ERRNO": "EAFNOSUPPORT",
        "NETD_HOOK_FAILED_ENTRY": "rule from 10.1.1.5 lookup 2 pref 1536",
        "ERRNO": str(errno.EAFNOSUPPORT),
    }
    assert a.message == ('rollback trigger=networkd-restart rolled_back=12 failed=2 errno=EAFNOSUPPORT '
                         'failed_entry="rule from 10.1.1.5 lookup 2 pref 1536"')
    assert j.rollback_audit("t", "e", 9999, 0).fields["NETD_HOOK_ERRNO"] == "9999"


def test_rejected_signals_audit():
    a = j.rejected_signals_audit(RejectedBurst(37, (":1.9", ":1.12"), 8.25))
    assert (a.message_id, a.priority) == (j.MESSAGE_ID_REJECTED_SIGNALS, j.WARNING)
    assert dict(a.fields) == {"NETD_HOOK_REJECTED": "37", "NETD_HOOK_SENDER": ":1.9,:1.12", "NETD_HOOK_WINDOW_S": "8.2"}
    assert a.message == "rejected-signals rejected=37 sender=:1.9,:1.12 window_s=8.2"
    more = j.rejected_signals_audit(RejectedBurst(9, tuple(f":1.{i}" for i in range(8)), 1.0, more_senders=True))
    assert more.fields["NETD_HOOK_SENDER"].endswith(":1.7,...")


def test_snapshot_rebuilt_audit():
    corrupt = j.snapshot_rebuilt_audit("corrupt: Expecting value: line 1 column 1 (char 0)", 1537, 2, corrupt=True,
                                       moved_to=Path("/var/lib/netd-hook/snapshot.json.corrupt-20250101T000000"))
    assert (corrupt.message_id, corrupt.priority) == (j.MESSAGE_ID_SNAPSHOT_REBUILT, j.ERR)
    assert dict(corrupt.fields) == {
        "NETD_HOOK_REASON": "corrupt: Expecting value: line 1 column 1 (char 0)",
        "NETD_HOOK_MOVED_TO": "/var/lib/netd-hook/snapshot.json.corrupt-20250101T000000",
        "NETD_HOOK_RULES": "1537",
        "NETD_HOOK_ROUTES": "2",
    }
    assert corrupt.message.startswith('snapshot-rebuilt reason="corrupt: Expecting value')
    missing = j.snapshot_rebuilt_audit("missing", 3, 0, corrupt=False)
    assert missing.priority == j.NOTICE and missing.fields["NETD_HOOK_MOVED_TO"] == "-"
    assert missing.message == "snapshot-rebuilt reason=missing moved_to=- rules=3 routes=0"


def test_networkd_generation_audit():
    a = j.networkd_generation_audit(":1.7", 4242, 3, ":1.5")
    assert (a.message_id, a.priority) == (j.MESSAGE_ID_NETWORKD_GENERATION, j.NOTICE)
    assert dict(a.fields) == {"NETD_HOOK_NETWORKD_OWNER": ":1.7", "NETD_HOOK_NETWORKD_PID": "4242",
                              "NETD_HOOK_GENERATION": "3", "NETD_HOOK_PREVIOUS_OWNER": ":1.5"}
    gone = j.networkd_generation_audit(None, None, 3, ":1.7")
    assert gone.fields["NETD_HOOK_NETWORKD_OWNER"] == "-" and gone.fields["NETD_HOOK_NETWORKD_PID"] == "-"


def test_audit_validates_itself():
    with pytest.raises(JournalFieldError):
        Audit("nothex", j.WARNING, "x")
    with pytest.raises(JournalFieldError):
        Audit(j.MESSAGE_ID_REPAIR, 9, "x")
    with pytest.raises(JournalFieldError):
        Audit(j.MESSAGE_ID_REPAIR, j.WARNING, "x", {"MESSAGE_ID": j.MESSAGE_ID_ROLLBACK})


@pytest.mark.parametrize(("priority", "level"), [
    (0, logging.CRITICAL), (2, logging.CRITICAL), (3, logging.ERROR), (4, logging.WARNING), (5, logging.INFO),
    (6, logging.INFO), (7, logging.DEBUG)])
def test_log_level(priority, level):
    assert j.log_level(priority) == level


# ----------------------------------------------------------------------------- burst limiter
def test_rejected_signals_limiter():
    lim = RejectedSignals(window_s=10)
    assert lim.deadline is None
    lim, b = lim.reject(":1.9", 100.0)
    assert b == RejectedBurst(1, (":1.9",), 0.0)  # the first one is reported at once
    assert lim.deadline is None
    for t in (101.0, 102.0, 103.5):
        lim, b = lim.reject(":1.9" if t < 103 else ":1.10", t)
        assert b is None
    assert lim.deadline == 110.0
    lim, b = lim.tick(109.9)
    assert b is None
    lim, b = lim.tick(110.0)
    assert b == RejectedBurst(3, (":1.9", ":1.10"), 2.5)  # one summary for the rest of the window
    assert lim.deadline is None
    assert lim.tick(111.0) == (lim, None)
    # Within the window of that summary: held back, summarised by the next reject after it.
    lim, b = lim.reject(None, 112.0)
    assert b is None and lim.deadline == 120.0
    lim, b = lim.reject(":1.9", 125.0)
    assert b == RejectedBurst(2, ("-", ":1.9"), 13.0)
    # Quiet for a window: the next one is reported at once again.
    lim, b = lim.reject(":1.9", 140.0)
    assert b == RejectedBurst(1, (":1.9",), 0.0)


def test_rejected_signals_limiter_senders_and_flush():
    lim = RejectedSignals(window_s=5)
    lim, _ = lim.reject(":1.0", 0.0)
    for i in range(1, 12):
        lim, b = lim.reject(f":1.{i}", float(i) / 10)
        assert b is None
    lim, b = lim.flush(1.5)  # at shutdown: what is pending, regardless of the window
    assert b is not None and b.count == 11 and b.more_senders
    assert b.senders == tuple(f":1.{i}" for i in range(1, 9))
    assert lim.flush(1.6) == (lim, None)
    with pytest.raises(ValueError):
        RejectedSignals(window_s=0)


# ----------------------------------------------------------------------------- real journald
_LAB_MARKS = (
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root (netns, mounts)"),
    pytest.mark.skipif(not os.path.exists(NETWORKD), reason=f"{NETWORKD} not installed"),
    pytest.mark.skipif(not os.path.exists(JOURNALD), reason=f"{JOURNALD} not installed"),
)


def lab_test(fn):
    for mark in _LAB_MARKS:
        fn = mark(fn)
    return fn

# Runs inside the lab: sends one entry of every kind through AuditSink, a multi-line one and a
# big one (which must take the memfd path) through Journal, and says what happened.
SENDER = r"""
import errno, json, os, sys
from netd_hook.adapters import journal as j

class Counting(j.Journal):
    memfds = 0
    def _send_memfd(self, sock, payload):
        Counting.memfds += 1
        super()._send_memfd(sock, payload)

test_id, blob_size = sys.argv[1], int(sys.argv[2])
jr = Counting.open()
assert jr is not None, "no journal socket in the lab"
sink = j.AuditSink(jr, echo=False)
rec = j.RepairRecord(trigger="reconfigure:eth1", rules_restored=13, routes_restored=1, already_present=0,
                     skipped_dead=2, skipped_other=0, set_aside=0, rollbacks=0, batches=1, duration_ms=0.7,
                     networkd_owner=":1.1")
audits = {
    "repair": j.repair_audit(rec),
    "rollback": j.rollback_audit("reconfigure:eth1", "rule from 10.1.1.5 lookup 2 pref 1536", errno.EAFNOSUPPORT, 3),
    "rejected-signals": j.rejected_signals_audit(j.RejectedBurst(37, (":1.9", ":1.12"), 8.2)),
    "snapshot-rebuilt": j.snapshot_rebuilt_audit("corrupt: bad json", 1537, 2, corrupt=True,
                                                  moved_to="/var/lib/netd-hook/snapshot.json.corrupt-1"),
    "networkd-generation": j.networkd_generation_audit(":1.7", 4242, 3, ":1.5"),
    "forgotten-bulk": j.forgotten_bulk_audit("54 protected entries were deleted by port 1 (systemd) while networkd "
                                             "was busy", 54, 2, [(1, "systemd")]),
}
sent = {kind: sink.emit(a) for kind, a in audits.items()}
sent["multiline"] = jr.send("first line\nsecond line\n\tindented third", priority=j.NOTICE, message_id=test_id,
                            fields={"NETD_HOOK_CASE": "multiline", "NETD_HOOK_LINES": "a\nb"},
                            code=j.CodeLocation("tests/test_journal.py", 1, "sender"))
sent["big"] = jr.send("a big entry", priority=j.INFO, message_id=test_id,
                      fields={"NETD_HOOK_CASE": "big", "NETD_HOOK_BLOB": "x" * blob_size + "\nend"})
print(json.dumps({"pid": os.getpid(), "sent": sent, "memfds": Counting.memfds, "failed": jr.failed,
                  "audits": {k: {"message": a.message, "priority": a.priority, "fields": dict(a.fields)}
                             for k, a in audits.items()}}))
"""

# Runs inside the lab: one entry per line read from stdin, reporting each outcome on stdout.
STEPPER = r"""
import json, logging, sys
from netd_hook.adapters import journal as j
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
test_id = sys.argv[1]
jr = j.Journal.open()
sink = j.AuditSink(jr, echo=False)
for line in sys.stdin:
    step = line.strip()
    ok = sink.emit(j.Audit(test_id, j.NOTICE, f"step {step}", {"NETD_HOOK_STEP": step}))
    print(json.dumps({"step": step, "sent": ok, "failed": jr.failed, "ok": jr.sent}), flush=True)
"""


@pytest.fixture(scope="module")
def jlab():
    with Lab(journald=True) as lab:
        yield lab


def _python(lab, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.run("env", f"PYTHONPATH={ROOT}", sys.executable, "-c", code, *args, timeout=60)


@lab_test
def test_every_audit_kind_reaches_a_real_journald(jlab):
    test_id = uuid.uuid4().hex
    blob_size = 1 << 20  # far beyond one datagram: goes as a sealed memfd
    r = _python(jlab, SENDER, test_id, str(blob_size))
    out = json.loads(r.stdout)
    assert out["sent"] == dict.fromkeys(out["sent"], True) and out["failed"] == 0
    assert out["memfds"] == 1
    pid = str(out["pid"])

    for kind, message_id in j.MESSAGE_IDS.items():
        entries = [e for e in jlab.journal(f"MESSAGE_ID={message_id}") if e["_PID"] == pid]
        assert len(entries) == 1, (kind, entries)
        e, want = entries[0], out["audits"][kind]
        assert e["MESSAGE"] == want["message"]
        assert e["PRIORITY"] == str(want["priority"])
        assert e["SYSLOG_IDENTIFIER"] == "netd-hook" and e["_TRANSPORT"] == "journal"
        assert {k: v for k, v in e.items() if k.startswith("NETD_HOOK_") or k == "ERRNO"} == want["fields"]

    repair = jlab.journal(f"MESSAGE_ID={j.MESSAGE_ID_REPAIR}", f"_PID={pid}")[0]
    assert (repair["NETD_HOOK_TRIGGER"], repair["NETD_HOOK_RULES_RESTORED"], repair["NETD_HOOK_DURATION_MS"]) == (
        "reconfigure:eth1", "13", "0.7")
    # journalctl's field matches work on the custom fields: the README's examples.
    assert len(jlab.journal(f"MESSAGE_ID={j.MESSAGE_ID_ROLLBACK}", "NETD_HOOK_ERRNO=EAFNOSUPPORT",
                            f"_PID={pid}")) == 1

    mine = {e["NETD_HOOK_CASE"]: e for e in jlab.journal(f"MESSAGE_ID={test_id}")}
    assert set(mine) == {"multiline", "big"}
    multi = mine["multiline"]
    assert multi["MESSAGE"] == "first line\nsecond line\n\tindented third"
    assert multi["NETD_HOOK_LINES"] == "a\nb" and multi["PRIORITY"] == "5"
    assert (multi["CODE_FILE"], multi["CODE_LINE"], multi["CODE_FUNC"]) == ("tests/test_journal.py", "1", "sender")
    big = mine["big"]
    assert big["MESSAGE"] == "a big entry" and big["_PID"] == pid
    assert big["NETD_HOOK_BLOB"] == "x" * blob_size + "\nend"


@lab_test
def test_journald_restart_is_survived(jlab):
    test_id = uuid.uuid4().hex
    p = jlab.popen(["env", f"PYTHONPATH={ROOT}", sys.executable, "-c", STEPPER, test_id],
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def step(name):
        p.stdin.write(name + "\n")
        p.stdin.flush()
        return json.loads(p.stdout.readline())

    try:
        assert step("a")["sent"] is True
        jlab.stop_journald()
        assert step("b") == {"step": "b", "sent": False, "failed": 1, "ok": 1}  # socket left behind: refused
        assert step("c") == {"step": "c", "sent": False, "failed": 2, "ok": 1}
        jlab.start_journald()
        assert step("d") == {"step": "d", "sent": True, "failed": 2, "ok": 2}
        p.stdin.close()
        assert p.wait(10) == 0
        err = p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert [e["NETD_HOOK_STEP"] for e in jlab.journal(f"MESSAGE_ID={test_id}")] == ["a", "d"]
    lines = err.splitlines()
    # One warning for the outage, the events that missed the journal on stderr, one line when it is back.
    assert len([ln for ln in lines if ln.startswith("WARNING netd_hook.adapters.journal: cannot send")]) == 1
    assert "INFO netd_hook.adapters.journal: step b" in lines and "INFO netd_hook.adapters.journal: step c" in lines
    assert "INFO netd_hook.adapters.journal: step a" not in lines
    assert "INFO netd_hook.adapters.journal: step d" not in lines
    assert any("takes entries again" in ln for ln in lines)


@lab_test
def test_lab_journald_is_private_and_cleaned_up():
    def host_mounts():  # the ones a journald lab mounts over (other labs come and go under /run/netns)
        watched = ("/run/log", "/var/log", "/sys/fs/cgroup", "/run/systemd")
        with open("/proc/self/mountinfo") as f:
            return sorted(m for m in (line.split()[4] for line in f) if m.startswith(watched))

    before = host_mounts()
    host_socket = os.path.exists(j.JOURNAL_SOCKET)
    lab = Lab(journald=True)
    with lab:
        pid = lab.journald_pid
        assert pid is not None and _pid_alive(pid)
        assert os.path.exists(lab.path(j.JOURNAL_SOCKET))
        assert os.path.exists(lab.path("/run/systemd/journald.conf.d/zz-ndh-lab.conf"))
        assert host_mounts() == before  # every mount is in the lab's namespace
        assert os.path.exists(j.JOURNAL_SOCKET) == host_socket
    assert not _pid_alive(pid)
    assert lab.journald_pid is None
    assert host_mounts() == before



def test_forgotten_bulk_names_each_port_once_whether_or_not_its_process_was_known_each_time():
    """The fault drill crashed the daemon here: the same port seen once with its process name
    and once without (the process had exited) could not be sorted."""
    a = j.forgotten_bulk_audit("doubt", 30, 2, [(4497, None), (4497, "ip"), (1, "systemd-network"), (9, None)])
    assert a.fields["NETD_HOOK_PORTS"] == "1,9,4497"
    assert a.fields["NETD_HOOK_PROCESSES"] == "systemd-network,?,ip"
