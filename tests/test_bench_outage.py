"""The benchmark's outage computation (bench/outage.py: each rule's outage, re-wipes, batches,
networkd's pass) on hand-made observer events: the figures in README come from it."""

from __future__ import annotations

import math

import pytest

from bench.outage import NoOutage, batches, first_vs_later, guess_networkd_ports, intervals, quantile, trial
from bench.rtnl import RTPROT_KERNEL

ND, DAEMON, IP = 100, 200, 300  # ports


def ev(t: float, kind: str, key: int, port: int, seq: int, proto: int = 0) -> list[object]:
    return [t, kind, key, 512, proto, port, seq]


def test_quantile_interpolates_between_ranks() -> None:
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([0.0, 10.0], 0.99) == pytest.approx(9.9)
    assert quantile([5.0], 0.99) == 5.0
    assert math.isnan(quantile([], 0.5))


def test_per_rule_outage_sums_a_rewiped_rules_intervals() -> None:
    rules = [
        ev(1.000, "D", 1, ND, 10), ev(1.002, "D", 2, ND, 11),
        ev(1.005, "N", 1, DAEMON, 50), ev(1.006, "N", 2, DAEMON, 51),  # one batch: both back
        ev(1.010, "D", 1, ND, 12),  # networkd's second pass takes rule 1 again
        ev(1.013, "N", 1, DAEMON, 53),  # a second batch (seq 52 was the gap between batches)
    ]
    s = trial(rules, {ND}, {DAEMON})
    assert sorted(s["per_rule_ms"]) == pytest.approx([4.0, 8.0])  # rule 2: 4 ms; rule 1: 5 + 3 ms
    assert s["deleted"] == 2 and s["rewiped"] == 1
    assert s["outage_ms"] == pytest.approx(13.0)  # first loss -> the last return
    assert s["nd_span_ms"] == pytest.approx(10.0)  # networkd's first -> last deletion
    assert s["nd_deletions"] == 3 and s["other_deletions"] == 0
    assert s["batches"] == 2 and s["unknown_senders"] == []
    assert s["whole_again"] == 2  # whole at 1.006, lost again, whole at 1.013
    tl = s["timeline"]
    assert tl["rules"] == [[[0.0, 5.0], [10.0, 13.0]], [[2.0, 6.0]]]  # in order of first deletion
    assert tl["nd_pass"] == [0.0, 10.0] and tl["whole_ms"] == 13.0
    assert [b[2] for b in tl["batches"]] == [2, 1]


def test_unprotected_rules_and_other_senders() -> None:
    rules = [
        ev(1.0, "D", 9, ND, 1, proto=RTPROT_KERNEL),  # the kernel's own rule: not protected
        ev(1.0, "D", 1, IP, 1),  # someone but networkd deleted it
        ev(1.001, "N", 9, DAEMON, 5, proto=RTPROT_KERNEL),
        ev(1.004, "N", 1, IP, 7),
    ]
    s = trial(rules, {ND}, {DAEMON})
    assert s["deleted"] == 1 and s["per_rule_ms"] == pytest.approx([4.0])
    assert s["other_deletions"] == 1
    assert s["nd_deletions"] == 1  # networkd's deletions count whatever they took
    assert s["unknown_senders"] == [IP]  # additions by a port not known as the daemon's are named


def test_no_outage_is_an_error() -> None:
    with pytest.raises(NoOutage):
        trial([ev(1.0, "N", 1, DAEMON, 1)], {ND}, {DAEMON})
    with pytest.raises(NoOutage, match="1 deleted rules never came back"):
        trial([ev(1.0, "D", 1, ND, 1), ev(1.0, "D", 2, ND, 2), ev(1.1, "N", 2, DAEMON, 9)], {ND}, {DAEMON})


def test_an_addition_of_a_rule_not_missing_is_no_return() -> None:
    spans = intervals([ev(1.0, "N", 1, DAEMON, 1), ev(2.0, "D", 1, ND, 1), ev(2.0, "D", 1, ND, 2)])
    assert spans == {1: [(2.0, None)]}


def test_batches_split_on_a_seq_gap_and_per_port() -> None:
    rules = [
        ev(1.0, "N", 1, DAEMON, 10), ev(1.0, "N", 2, IP, 3), ev(1.1, "N", 3, DAEMON, 11),
        ev(1.2, "D", 4, ND, 7), ev(1.3, "N", 4, DAEMON, 13), ev(1.4, "N", 5, IP, 4),
    ]
    got = [(b["port"], b["n"]) for b in batches(rules)]
    assert got == [(DAEMON, 2), (IP, 2), (DAEMON, 1)]
    assert [(b["port"], b["n"]) for b in batches(rules, {DAEMON})] == [(DAEMON, 2), (DAEMON, 1)]


def test_networkd_port_guess_and_first_vs_later() -> None:
    rules = [ev(1.0, "D", 1, ND, 1), ev(1.0, "D", 2, ND, 2), ev(1.0, "D", 3, IP, 1)]
    assert guess_networkd_ports(rules) == {ND}
    samples = [{"x": 50.0, "y": {"p50": 9.0}}, {"x": 10.0, "y": {"p50": 1.0}}, {"x": 20.0, "y": {"p50": 3.0}}]
    assert first_vs_later(samples, "x") == (50.0, 15.0)
    assert first_vs_later(samples, "y") == (9.0, 2.0)
    assert first_vs_later(samples[:1], "x") == (50.0, None)


def test_rule_line_makes_the_lab_rules_again() -> None:
    from bench.common import TrialError
    from bench.labtools import rule_line

    assert rule_line({"priority": 512, "src": "all", "dst": "10.1.1.1", "table": "main", "protocol": "unspec"}) \
        == "rule add to 10.1.1.1 lookup main priority 512"
    assert rule_line({"priority": 1536, "src": "10.1.1.1", "table": "2"}) \
        == "rule add from 10.1.1.1 lookup 2 priority 1536"
    assert rule_line({"priority": 9, "src": "10.0.0.0", "srclen": 8, "table": "3"}) \
        == "rule add from 10.0.0.0/8 lookup 3 priority 9"
    assert rule_line({"priority": 1024, "src": "all", "fwmark": "0x80", "fwmask": "0x80", "table": "main"}) \
        == "rule add fwmark 0x80/0x80 lookup main priority 1024"
    with pytest.raises(TrialError, match="iif"):
        rule_line({"priority": 1, "src": "all", "iif": "eth0", "table": "main"})
