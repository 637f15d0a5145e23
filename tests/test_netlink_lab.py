"""The netlink adapter against the real kernel, checked with `ip -j` as the oracle."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.daemon import ROOT
from tests.lab import Lab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/lib/systemd/systemd-networkd"),
                       reason="needs root and systemd-networkd"),
]


def probe(lab: Lab, *args: str) -> dict:
    out = lab.run("env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "tests.netlink_probe", *args)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        lab.add_eni(1)
        lab.node_rules(strict=True)
        veth = lab.add_pod("10.1.1.5", 1)
        lab.run("ip", "-6", "route", "add", "2001:db8:1::5/128", "dev", veth)
        lab.run("ip", "-6", "rule", "add", "from", "2001:db8:1::5", "lookup", "2", "priority", "1536")
        lab.run("ip", "rule", "add", "iif", "vlan9", "lookup", "109", "priority", "10", "not")
        yield lab


def test_dump_matches_ip_json(lab):
    d = probe(lab, "dump")
    ours = {(r["family"], r["priority"], r["src"], r["dst"], r["table"], r["fwmark"], r["iifname"], r["flags"])
            for r in d["rules"]}
    theirs = set()
    for fam, family in ((4, 2), (6, 10)):
        for r in lab.rules(fam):
            src = None if r["src"] == "all" else f"{r['src']}/{r.get('srclen', 32 if fam == 4 else 128)}"
            dst = f"{r['dst']}/{r.get('dstlen', 32 if fam == 4 else 128)}" if "dst" in r else None
            table = {"main": 254, "local": 255, "default": 253}.get(r["table"]) or int(r["table"])
            fwmark = int(r["fwmark"], 16) if "fwmark" in r else None
            theirs.add((family, r["priority"], src, dst, table, fwmark, r.get("iif"), 2 if "not" in r else 0))
    assert ours == theirs
    routes = {(r["table"], r["dst"], r["gateway"], r["oif"]) for r in d["routes"]}
    assert routes == {(2, "10.0.1.1/32", None, "eth1"), (2, "0.0.0.0/0", "10.0.1.1", "eth1")}
    assert {"addr": "10.1.1.5", "oif": lab.pods["10.1.1.5"].veth} in d["host_routes"]
    assert {"addr": "2001:db8:1::5", "oif": lab.pods["10.1.1.5"].veth} in d["host_routes"]
    assert {"addr": "10.0.1.10", "oif": "eth1"} in d["local_addresses"]
    assert {lk["name"] for lk in d["links"]} == set(lab.links())


def test_batch_of_1000_is_applied_and_exists_the_second_time(lab):
    """Only the last message asks for an ack: the 999 before it are applied without one."""
    first = probe(lab, "batch", "1000", "0")
    assert first == {"acked": 1000, "existed": 0, "failed": [], "unknown": None}
    assert sum(1 for r in lab.rules(4) if r["priority"] == 3000) == 1000
    again = probe(lab, "batch", "1000", "0")  # NLM_F_EXCL: no duplicates, EEXIST for each
    assert again == {"acked": 0, "existed": 1000, "failed": [], "unknown": None}
    assert sum(1 for r in lab.rules(4) if r["priority"] == 3000) == 1000
    lab.run("ip", "rule", "flush", "priority", "3000", check=False)


def test_kernel_goes_on_after_a_failed_message(lab):
    lab.ip_batch(["rule del priority 3000" for _ in range(3)], force=True)
    res = probe(lab, "batch", "5", "2")
    assert res["failed"] == [[1, 97]] and res["acked"] == 4  # EAFNOSUPPORT for #2, the rest applied
    lab.run("ip", "rule", "flush", "priority", "3000", check=False)
    last = probe(lab, "batch", "5", "5")  # the one message that asked for an ack fails: its error is the answer
    assert last["failed"] == [[4, 97]] and last["acked"] == 4 and last["unknown"] is None
