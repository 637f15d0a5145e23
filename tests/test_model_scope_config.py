from __future__ import annotations

import json
from pathlib import Path

import pytest

from netd_hook.adapters.config import ConfigError, load, parse
from netd_hook.commands import cli
from netd_hook.core.model import AF_INET6, FormatError, Route, Rule, Snapshot, snapshot_from_json, snapshot_to_json
from netd_hook.core.scope import Scope, route_in_scope, rule_in_scope
from tests.fixtures import KERNEL_RULES, NETWORKD_RULE, NODE_RULES, eni_routes, pod_rules


def test_snapshot_json_round_trip_is_exact():
    snap = Snapshot(
        frozenset([*NODE_RULES, *pod_rules("10.1.1.5", 2), Rule(AF_INET6, 1536, 3, src="2001:db8::5/128")]),
        frozenset([*eni_routes(1), Route(AF_INET6, 3, "::/0", oif="eth2", gateway="fe80:ec2::1")]),
    )
    doc = json.loads(json.dumps(snapshot_to_json(snap)))
    assert snapshot_from_json(doc) == snap
    assert doc["version"] == 1 and doc["format"] == "netd-hook/snapshot"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d.update(format="x"), "format"),
        (lambda d: d["rules"].append({"family": 2, "priority": 1, "table": 2, "bogus": 1}), "unknown keys"),
        (lambda d: d["routes"].append({"family": 2, "table": 2, "dst": "10.1.1.5/24"}), "canonical"),
        (lambda d: d["rules"].append({"family": 10, "priority": 1, "table": 2, "src": "2001:0db8::5/64"}), "canonical"),
        (lambda d: d["rules"].append({"family": 7, "priority": 1, "table": 2}), "family"),
        (lambda d: d["routes"].append({"family": 2, "table": 2, "dst": "0.0.0.0/0", "gateway": "nope"}), "nope"),
        (lambda d: d["rules"].append({"family": 2, "priority": True, "table": 2}), "bad value"),
        (lambda d: d.update(rules={}), "lists"),
    ],
)
def test_snapshot_decoder_names_what_is_wrong(mutate, message):
    doc = snapshot_to_json(Snapshot(frozenset(NODE_RULES), frozenset(eni_routes(1))))
    mutate(doc)
    with pytest.raises(FormatError, match=message):
        snapshot_from_json(doc)


def test_default_scope_covers_the_vpc_cni_layout_and_nothing_of_the_kernel_or_networkd():
    scope = Scope()
    for rule in [*NODE_RULES, *pod_rules("10.1.1.5", 2), *pod_rules("10.1.0.9", None)]:
        assert rule_in_scope(scope, rule), rule
    for rule in [*KERNEL_RULES, NETWORKD_RULE]:
        assert not rule_in_scope(scope, rule), rule
    assert all(route_in_scope(scope, r) for r in eni_routes(1))
    assert not route_in_scope(scope, Route(2, 254, "10.1.1.5/32", oif="eni1"))  # main is never a route table
    assert not route_in_scope(scope, Route(2, 2, "10.0.0.0/8", oif="eth1", protocol=2))


def test_protected_routes_follow_the_tables_rules_look_up():
    snap = Snapshot(frozenset(pod_rules("10.1.1.5", 2)), frozenset([*eni_routes(1), *eni_routes(2)]))
    assert snap.protected_routes() == frozenset(eni_routes(1))


def test_empty_include_tables_means_every_table_as_documented():
    s = parse({"scope": {"include_tables": []}}, "t.toml").scope
    assert s.include_tables is None and rule_in_scope(s, pod_rules("10.1.1.5", 2)[1])
    s = parse({"scope": {"include_tables": [3]}}, "t.toml").scope
    assert not rule_in_scope(s, pod_rules("10.1.1.5", 2)[1]) and rule_in_scope(s, pod_rules("10.1.1.5", 3)[1])


def test_config_scope_keys(tmp_path: Path):
    cfg = parse(
        {
            "scope": {
                "include_priorities": ["500-2000", 32765],
                "exclude_priorities": [1024],
                "exclude_tables": ["local", 7],
                "exclude_protocols": ["kernel", 99],
            },
            "replay": {"quiet_ms": 5},
            "log_level": "debug",
        },
        "t.toml",
    )
    s = cfg.scope
    assert s.include_priorities == ((500, 2000), (32765, 32765))
    assert s.exclude_tables == frozenset({255, 7}) and s.exclude_protocols == frozenset({2, 99})
    assert rule_in_scope(s, pod_rules("10.1.1.5", 2)[1])
    assert not rule_in_scope(s, NODE_RULES[1])  # 1024 excluded
    assert not rule_in_scope(s, NODE_RULES[0])  # 20 not included
    assert cfg.replay.quiet_ms == 5 and cfg.log_level == "debug"


def test_the_chase_is_on_by_default_and_off_with_chase_false():
    from netd_hook.daemon.reloader import params
    assert params(parse({}, "t.toml")).chase is True and parse({}, "t.toml").replay.chase_max == 8
    assert params(parse({"replay": {"chase": False}}, "t.toml")).chase is False


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("bogus = 1", "bogus: 1 is not a known key"),
        ("[scope]\ninclude_priorities = ['9-1']", "[scope] include_priorities: '9-1' is not a range"),
        ("[scope]\ninclude_priorities = [70000000000]", "70000000000"),
        ("[scope]\nexclude_protocols = ['carrier-pigeon']", "'carrier-pigeon' is not one of"),
        ("[scope]\nwhat = 1", "[scope] what: 1 is not a known key"),
        ("[replay]\nquiet_ms = -1", "[replay] quiet_ms: -1 is not an integer"),
        ("[replay]\nchase = 1", "[replay] chase: 1 is not true or false"),
        ("[replay]\nchase = 'no'", "[replay] chase: 'no' is not true or false"),
        ("[replay]\nchase_max = 0", "[replay] chase_max: 0 is not an integer in 1..1000"),
        ("[replay]\nchase_max = true", "[replay] chase_max: True is not an integer"),
        ("log_level = 'loud'", "log_level: 'loud'"),
        ("state_dir = 'relative'", "state_dir: 'relative'"),
        ("scope = [", "not valid TOML"),
    ],
)
def test_bad_config_exits_2_naming_file_key_and_value(tmp_path: Path, capsys, text, fragment):
    path = tmp_path / "netd-hook.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(path) in str(err.value) and fragment in str(err.value)
    assert cli.main(["run", "--config", str(path)]) == 2
    assert fragment in capsys.readouterr().err


def test_missing_config_file_is_an_error_but_no_file_means_defaults(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.toml")
    assert load(None).scope == Scope() or Path("/etc/netd-hook/netd-hook.toml").exists()
