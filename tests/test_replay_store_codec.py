from __future__ import annotations

import errno
import json
import socket
from pathlib import Path

import anyio
import pytest
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from netd_hook.adapters import store
from netd_hook.adapters.journal import Notifier
from netd_hook.adapters.netlink import (
    ADD_FLAGS,
    RTM_DELRULE,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    BatchResult,
    Encoder,
    HostRoute,
    LocalAddress,
    Unsupported,
    decode,
    encode_route,
    encode_rule,
)
from netd_hook.core.apply import execute
from netd_hook.core.model import (
    AF_INET,
    AF_INET6,
    FormatError,
    Route,
    Rule,
    Snapshot,
    snapshot_from_json,
    snapshot_to_json,
)
from netd_hook.core.plan import Plan
from tests.fixtures import NODE_RULES, eni_routes, pod_rules

# The kernel keeps a rule's address as given: `ip rule add from 10.1.1.5/24` lists as such and is
# a rule of its own (not `from 10.1.1.0/24`); routes refuse host bits.
HOST_BITS_RULES = [Rule(AF_INET, 1000, 5, src="10.1.1.5/24"), Rule(AF_INET6, 1000, 5, dst="2001:db8::5/64")]

# -- codec: our requests decode (with pyroute2, independently of our decoder) to what we meant --

RULES = [*NODE_RULES, *pod_rules("10.1.1.5", 2), Rule(AF_INET6, 1536, 70000, src="2001:db8::5/128"),
         Rule(10, 20, 255, flags=2, iifname="vlan.eth.1", oifname="eth1", suppress_prefixlen=0, protocol=3),
         *HOST_BITS_RULES]
ROUTES = [*eni_routes(1), Route(AF_INET6, 3, "::/0", oif="eth1", gateway="fe80:ec2::1", priority=1024)]


def _pyroute2_attrs(msg):
    return {k: v for k, v in msg["attrs"]}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.describe())
def test_rule_request_round_trips_through_our_decoder_and_pyroute2s(rule):
    data = encode_rule(rule, RTM_NEWRULE, ADD_FLAGS, seq=7)
    [(mtype, flags, seq, _p, item)] = list(decode(data, {}))
    assert (mtype, flags, seq, item) == (RTM_NEWRULE, ADD_FLAGS, 7, rule)
    msg = fibmsg(data)  # the independent reading
    msg.decode()
    attrs = _pyroute2_attrs(msg)
    assert msg["header"]["length"] == len(data) and msg["family"] == rule.family
    assert attrs["FRA_PRIORITY"] == rule.priority and attrs["FRA_TABLE"] == rule.table
    if rule.src:
        assert f"{attrs['FRA_SRC']}/{msg['src_len']}" == rule.src
    if rule.dst:
        assert f"{attrs['FRA_DST']}/{msg['dst_len']}" == rule.dst
    assert attrs.get("FRA_FWMARK") == rule.fwmark and attrs.get("FRA_IIFNAME") == rule.iifname
    assert attrs.get("FRA_PROTOCOL", 0) == rule.protocol and msg["flags"] == rule.flags


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.describe())
def test_route_request_round_trips_through_our_decoder_and_pyroute2s(route):
    data = encode_route(route, 3, RTM_NEWROUTE, ADD_FLAGS)
    [(_t, _f, _s, _p, item)] = list(decode(data, {3: "eth1"}))
    assert item == route
    msg = rtmsg(data)
    msg.decode()
    attrs = _pyroute2_attrs(msg)
    assert attrs["RTA_OIF"] == 3 and attrs["RTA_TABLE"] == route.table
    assert attrs.get("RTA_GATEWAY") == route.gateway and attrs.get("RTA_PRIORITY") == route.priority


def test_decoder_sorts_host_routes_local_addresses_and_unsupported_attributes():
    names = {4: "eni1", 3: "eth1"}
    host = Route(2, 254, "10.1.1.5/32", oif="eni1", scope=253)
    local = Route(2, 255, "10.0.1.10/32", oif="eth1", type=2, scope=254, protocol=2)
    via_gw = Route(2, 254, "10.9.0.0/32", oif="eni1", gateway="10.0.1.1")
    out = [item for data in (encode_route(host, 4, RTM_NEWROUTE, 0), encode_route(local, 3, RTM_NEWROUTE, 0),
                             encode_route(via_gw, 4, RTM_NEWROUTE, 0))
           for *_rest, item in decode(data, names)]
    assert out == [HostRoute("10.1.1.5", "eni1"), LocalAddress("10.0.1.10", "eth1"), None]
    fancy = fibmsg()
    fancy["family"], fancy["action"] = 2, 1
    fancy["attrs"] = [("FRA_PRIORITY", 9), ("FRA_TABLE", 2), ("FRA_UID_RANGE", "1000:2000")]
    fancy["header"]["type"] = RTM_NEWRULE
    fancy.encode()
    [(*_rest, item)] = list(decode(bytes(fancy.data), {}))
    assert item == Unsupported("rule with ['uid_range']")


def test_encoder_caches_and_reencodes_routes_when_the_device_index_changes():
    enc = Encoder()
    route = eni_routes(1)[1]
    first = enc.add_request(route, {"eth1": 3}.get)
    assert enc.add_request(route, {"eth1": 3}.get) is first
    again = enc.add_request(route, {"eth1": 9}.get)
    assert again != first and enc.add_request(route, {}.get) is None


# -- the batch: all-or-nothing with our own rollback --------------------------------------


class FakeWriter:
    """Plays the kernel: a dict of what exists; messages fail per a rule table."""

    def __init__(self, fail: dict[bytes, int] | None = None, unknown_once: bool = False):
        self.kernel: set[bytes] = set()
        self.fail = fail or {}
        self.unknown_once = unknown_once
        self.sent: list[list[bytes]] = []

    async def send(self, messages, timeout):
        self.sent.append(list(messages))
        res = BatchResult()
        for i, m in enumerate(messages):
            key, is_del = m[:-1], m[-1:] == b"D"
            if key in self.fail:
                res.failed.append((i, self.fail[key]))
            elif is_del:
                if key in self.kernel:
                    self.kernel.discard(key)
                    res.acked.append(i)
                else:
                    res.failed.append((i, errno.ENOENT))
            elif key in self.kernel:
                res.existed.append(i)
            else:
                self.kernel.add(key)
                res.acked.append(i)
        if self.unknown_once:
            self.unknown_once = False
            res.unknown = "ENOBUFS"
        return res


def _key(e):
    return e.describe().encode()


async def _execute(writer, p, replan=None):
    async def same():
        return p

    return await execute(p, lambda e: _key(e) + b"A", lambda e: _key(e) + b"D", writer,
                         timeout=1, max_attempts=5, replan=replan or same)


def test_failure_mid_batch_rolls_back_then_applies_the_rest():
    rules = tuple(pod_rules("10.1.1.5", 2) + pod_rules("10.1.1.6", 2))
    bad = rules[1]
    w = FakeWriter(fail={_key(bad): errno.EINVAL})
    out = anyio.run(_execute, w, Plan(routes=tuple(eni_routes(1)), rules=rules))
    assert out.set_aside == [(bad, errno.EINVAL)] and out.rollbacks == 1
    assert out.rules_restored == 3 and out.routes_restored == 2
    assert w.kernel == {_key(e) for e in (*eni_routes(1), *rules) if e != bad}
    # batch 1 (all), rollback (everything batch 1 added), batch 2 (all but the bad one)
    assert [len(b) for b in w.sent] == [6, 5, 5]
    assert all(m.endswith(b"D") for m in w.sent[1])


def test_eexist_counts_as_present():
    rules = tuple(pod_rules("10.1.1.5", 2))
    w = FakeWriter()
    w.kernel.add(_key(rules[0]))
    out = anyio.run(_execute, w, Plan(rules=rules))
    assert out.already_present == 1 and out.rules_restored == 1 and not out.rollbacks
    assert out.existed == [rules[0]]  # the service marks it present in its view


def test_unknown_outcome_replans_from_a_fresh_view_and_never_counts_as_success():
    rules = tuple(pod_rules("10.1.1.5", 2))
    w = FakeWriter(unknown_once=True)
    replans = []

    async def replan():
        replans.append(1)
        return Plan()  # the fresh dump shows everything present

    out = anyio.run(_execute, w, Plan(rules=rules), replan)
    assert replans == [1] and out.unknown == ["ENOBUFS"] and out.rules_restored == 0


# -- store ------------------------------------------------------------------------------------


def test_store_round_trip_and_atomic_file(tmp_path: Path):
    snap = Snapshot(frozenset(NODE_RULES), frozenset(eni_routes(1)))
    path = store.save(tmp_path, snap)
    assert store.load(tmp_path).snapshot == snap
    assert json.loads(path.read_text())["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot.json"]  # no temp files left


@pytest.mark.parametrize("content", [b"{not json", b'{"format":"netd-hook/snapshot","version":9}', b"\xff\xfe"])
def test_corrupt_snapshot_is_moved_aside(tmp_path: Path, content):
    (tmp_path / "snapshot.json").write_bytes(content)
    loaded = store.load(tmp_path, now=0)
    assert loaded.status == "corrupt" and loaded.snapshot == Snapshot()
    assert loaded.moved_to == tmp_path / "snapshot.json.corrupt-19700101T000000"
    assert loaded.moved_to.read_bytes() == content and not (tmp_path / "snapshot.json").exists()


def test_missing_snapshot(tmp_path: Path):
    assert store.load(tmp_path).status == "missing"


# -- sd_notify against a real datagram socket -------------------------------------------------


def test_notifier_sends_datagrams(tmp_path: Path):
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    n = Notifier(path)
    n.send(ready=1, status="protecting 3 rules")
    assert server.recv(4096) == b"READY=1\nSTATUS=protecting 3 rules"
    n.close()
    server.close()
    assert not Notifier("").enabled


def test_delete_requests_are_dels():
    data = encode_rule(NODE_RULES[1], RTM_DELRULE, 5)
    assert list(decode(data, {}))[0][0] == RTM_DELRULE


def test_detached_flags_are_not_part_of_a_rules_identity():
    rule = Rule(2, 10, 109, iifname="vlan9", flags=2)
    data = bytearray(encode_rule(rule, RTM_NEWRULE, 0))
    data[16 + 8] |= 0x8  # fib_rule_hdr.flags |= FIB_RULE_IIF_DETACHED, as a dump reports it
    [(*_rest, item)] = list(decode(bytes(data), {}))
    assert item == rule


def test_a_rule_message_is_decoded_once_per_body_and_the_memo_is_bounded(monkeypatch):
    from netd_hook.adapters.netlink import wire

    monkeypatch.setattr(wire, "_RULES", {})
    monkeypatch.setattr(wire, "RULES_MEMO", 3)
    calls: list[int] = []
    real = wire.decode_rule
    monkeypatch.setattr(wire, "decode_rule", lambda *a: calls.append(1) or real(*a))
    rules = pod_rules("10.1.1.5", 2) + pod_rules("10.1.1.6", 2)
    for mtype in (RTM_NEWRULE, RTM_DELRULE, RTM_DELRULE):  # the same body: decoded the first time only
        assert [i[-1] for i in decode(encode_rule(rules[0], mtype, 0), {})] == [rules[0]]
    assert len(calls) == 1
    for r in rules:  # a fourth body empties the full memo
        assert [i[-1] for i in decode(encode_rule(r, RTM_DELRULE, 0), {})] == [r]
    assert len(calls) == 4 and len(wire._RULES) == 1


def test_a_batch_asks_for_one_ack_its_last_messages():
    from netd_hook.adapters.netlink import HDR, NLM_F_ACK, BatchWriter

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)  # as the batch socket is
    sent: list[bytes] = []

    class Sock:  # what the kernel would get; it answers only the one message asking
        def __getattr__(self, name):
            return getattr(a, name)

        def send(self, buf):
            sent.append(bytes(buf))
            offset = 0
            while offset < len(buf):
                length, _t, flags, seq, _p = HDR.unpack_from(buf, offset)
                if flags & NLM_F_ACK:
                    b.send(HDR.pack(HDR.size + 4, 2, 0, seq, 0) + b"\0\0\0\0")  # NLMSG_ERROR 0
                offset += length
            return len(buf)

    msgs = [encode_rule(r, RTM_NEWRULE, ADD_FLAGS) for r in NODE_RULES]
    res = anyio.run(BatchWriter(Sock()).send, msgs, 2.0)  # type: ignore[arg-type]
    flags = [HDR.unpack_from(sent[0], sum(map(len, msgs[:i])))[2] & NLM_F_ACK for i in range(len(msgs))]
    assert flags == [0] * (len(msgs) - 1) + [NLM_F_ACK]
    assert res.acked == list(range(len(msgs))) and res.unknown is None
    a.close()
    b.close()


def test_repair_record_line_and_journal_fields_come_from_the_same_data():
    from netd_hook.adapters.journal import RepairRecord

    rec = RepairRecord("reconfigure:eth1", 13, 1, 0, 0, 0, 0, 0, 1, 0.71, ":1.1")
    assert rec.line() == ("repair trigger=reconfigure:eth1 rules_restored=13 routes_restored=1 already_present=0 "
                          "skipped_dead=0 skipped_other=0 set_aside=0 rollbacks=0 batches=1 duration_ms=0.7 "
                          "networkd_owner=:1.1")
    assert rec.fields()["NETD_HOOK_RULES_RESTORED"] == "13" and rec.fields()["NETD_HOOK_DURATION_MS"] == "0.7"


def test_rules_whose_prefix_keeps_host_bits_are_saved_and_loaded_as_the_kernel_keys_them(tmp_path: Path):
    """Such a rule used to make the saved snapshot unloadable (set aside at the next start, so
    a restart while rules were missing lost them) and crashed the pod-address lookup."""
    snap = Snapshot(rules=frozenset([*HOST_BITS_RULES, *pod_rules("10.1.1.5", 2)]), routes=frozenset(eni_routes(1)))
    store.save(tmp_path, snap)
    loaded = store.load(tmp_path)
    assert loaded.snapshot == snap, loaded
    assert [r.host_address() for r in HOST_BITS_RULES] == [None, None]
    assert Rule(AF_INET, 1536, 2, src="10.1.1.5/32").host_address() == "10.1.1.5"


@pytest.mark.parametrize("value, why", [
    ("10.1.1.05/24", "not an IPv4 prefix"), ("10.1.1.5/33", "not an IPv4 prefix"),
    ("2001:DB8::5/64", "not a canonical IPv6 prefix (that would be '2001:db8::5/64')"),
])
def test_a_rule_prefix_is_still_checked(value: str, why: str):
    doc = snapshot_to_json(Snapshot(rules=frozenset([HOST_BITS_RULES[0]]), routes=frozenset()))
    doc["rules"][0]["src"] = value
    doc["rules"][0]["family"] = AF_INET if "." in value else AF_INET6
    with pytest.raises(FormatError) as err:
        snapshot_from_json(doc)
    assert why in str(err.value)


def test_a_route_with_host_bits_is_refused_as_the_kernel_refuses_it():
    doc = snapshot_to_json(Snapshot(rules=frozenset(), routes=frozenset(eni_routes(1))))
    doc["routes"][0]["dst"] = "10.0.1.1/24"
    with pytest.raises(FormatError, match=r"not a canonical IPv4 prefix \(that would be '10.0.1.0/24'\)"):
        snapshot_from_json(doc)


def test_the_monitor_does_not_read_back_the_echoes_of_its_own_additions():
    """Issue 13: a batch's acks are the news (Tracker.added_by_us); decoding its echoes again
    cost the chase as much as reading networkd's deletions. Its deletions are still read (an
    orphan removed, a rollback), and so is everyone else's."""
    from netd_hook.adapters.netlink import read_available
    from netd_hook.adapters.netlink.encode import encode_rule
    from netd_hook.adapters.netlink.wire import HDR, RTM_DELRULE, RTM_NEWRULE

    def sent_by(port: int, mtype: int, rule) -> bytes:
        msg = encode_rule(rule, mtype, 0)
        length, t, flags, seq, _ = HDR.unpack_from(msg)
        return HDR.pack(length, t, flags, seq, port) + msg[HDR.size:]

    ours, cni = 777, 4242
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    rules = pod_rules("10.1.1.5", 2)
    with a, b:
        b.setblocking(False)
        for datagram in (sent_by(ours, RTM_NEWRULE, rules[0]), sent_by(cni, RTM_NEWRULE, rules[1]),
                         sent_by(ours, RTM_DELRULE, rules[0])):
            a.send(datagram)
        got = read_available(b, {}, echoes_of=ours)
    assert [(c.new, c.item, c.port) for c in got if c is not None] == [(True, rules[1], cni), (False, rules[0], ours)]
