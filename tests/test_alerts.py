"""The Prometheus alerting rules the package ships (packaging/prometheus/netd-hook.rules.yml).

- `promtool check rules` and `promtool test rules` (the unit tests beside the rules: every alert
  fires with its exact labels and annotations, and stays quiet on a healthy node, on a repair that
  took milliseconds and on an idle node);
- those unit tests catch a broken rule: each rule is broken on purpose (a threshold, a `for:`, a
  matcher, an annotation) in a copy, and `promtool test rules` must fail on that very alert;
- every metric the rules and their tests name is one netd_hook/commands/metrics.py renders (or one of
  node_exporter's), so renaming a metric breaks this test, not the alerting;
- the built package installs the file;
- the daemon rewrites its metrics file at least every HEARTBEAT when nothing changes, which
  NetdHookMetricsStale counts on (lab).

promtool comes with Debian's `prometheus` package (scripts/dev.sh installs it); without it the
promtool tests are skipped, in CI (env CI non-empty) they fail instead.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from netd_hook.commands import metrics
from netd_hook.core.status_doc import (
    Counters,
    Degraded,
    FailingWrite,
    Forgotten,
    LastRepair,
    Networkd,
    Protected,
    Status,
)
from netd_hook.daemon import publisher
from tests.daemon import Daemon, wait_until
from tests.lab import Lab

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "packaging" / "prometheus"
RULES = PROMETHEUS / "netd-hook.rules.yml"
RULE_TESTS = PROMETHEUS / "netd-hook.rules.test.yml"
INSTALLED = "/usr/share/netd-hook/prometheus/netd-hook.rules.yml"
IN_CI = bool(os.environ.get("CI"))

# What the rules take from node_exporter, with the labels they match on (collector/systemd_linux.go
# and collector/textfile.go of node_exporter 1.3 to 1.10), and Prometheus' own `up`.
NODE_EXPORTER = {"node_systemd_unit_state": {"name", "state", "type"}, "node_textfile_mtime_seconds": {"file"},
                 "up": set()}
KEYWORDS = {"and", "or", "unless", "on", "ignoring", "by", "without", "group_left", "group_right", "bool",
            "offset", "atan2"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if IN_CI:
            pytest.fail("promtool is missing: scripts/dev.sh installs Debian's prometheus package")
        pytest.skip("needs promtool (Debian's prometheus package; scripts/dev.sh installs it)")
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


# ---------------------------------------------------------------- the rules file, as text

@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    start: int  # line index of "- alert:"
    end: int  # exclusive: the next alert's "- alert:" line, or the end of the file
    expr_lines: tuple[int, int]  # [first, last + 1) of the expr key and its folded continuation
    for_line: int


def parse_rules(text: str) -> list[Alert]:
    """The alerts of the rules file, with where each one's expr and for: are. Only the subset of
    YAML the file uses (checked against promtool's count in test_promtool_checks_the_rules)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"\s*- alert: \w+$", line)]
    alerts = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        name = lines[start].split(": ", 1)[1]
        expr = for_ = None
        expr_lines = (0, 0)
        for_line = -1
        for i in range(start, end):
            m = re.match(r"(\s*)(expr|for): (.*)$", lines[i])
            if not m:
                continue
            indent, key, value = len(m.group(1)), m.group(2), m.group(3)
            if key == "for":
                for_, for_line = value, i
                continue
            if value in (">-", ">"):  # folded: continuation lines, more indented, joined by spaces
                j = i + 1
                while j < end and lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) > indent:
                    j += 1
                expr, expr_lines = " ".join(line.strip() for line in lines[i + 1:j]), (i, j)
            else:
                expr, expr_lines = value, (i, i + 1)
        assert expr is not None and for_ is not None, f"{name}: no expr or no for:"
        alerts.append(Alert(name, expr, for_, start, end, expr_lines, for_line))
    return alerts


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|`[^`]*`', '""', expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, keywords or labels)."""
    s = strip_strings(expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range durations
    s = re.sub(r"\b(on|ignoring|by|without|group_left|group_right)\s*\([^)]*\)", r"\1 ", s)  # label lists
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if m.group() in KEYWORDS or s[m.end():].lstrip().startswith("("):  # a keyword, a function
            continue
        names.add(m.group())
    return names


def matchers(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names it matches on) for every `name{...}` selector."""
    out = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", expr):
        inside = strip_strings(m.group(2))
        out.append((m.group(1), {lm.group(1) for lm in re.finditer(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", inside)}))
    return out


def rendered() -> dict[str, set[str]]:
    """Every metric metrics.render() writes, with its label names, from a status document that has
    every section (a real daemon's: what Publisher.status_doc fills in)."""
    doc = Status(
        pid=4242, started_at=1_700_000_000.0, updated_at=1_700_000_100.0,
        networkd=Networkd(owner=":1.7", pid=99, generation=2, settled=False, stuck={"eth3": 12.5},
                          links={"eth0": "configured", "eth3": "configuring", "eni1": "unmanaged"}),
        complete=False, protected=Protected(rules=11, routes=4), missing=2, held_back=1,
        set_aside=("rule 512: to 10.1.1.5 lookup main",),
        unattributed=("rule 1536: from 10.1.1.6 lookup 2",),
        forgotten=Forgotten(total=14, generation=12, while_busy=12, doubt="12 protected entries ..."),
        missing_since=1_700_000_090.0, outage_seconds=10.0,
        last_repair=LastRepair(at=1_700_000_050.0, trigger="reconfigure:eth1", rules_restored=9,
                               routes_restored=2, skipped_dead=1, duration_ms=1.5),
        counters=Counters(repairs=3, rules_restored=20, routes_restored=4, skipped_dead=1, rollbacks=1, set_aside=1,
                          rejected_signals=5, forgotten_deliberate=14, monitor_overruns=1,
                          repairs_by_trigger={"reconfigure": 2, "networkd-restart": 1}),
        degraded=Degraded(since=1_700_000_000.0, reason="cannot save the snapshot to /var/lib/netd-hook/snapshot.json: "
                                                        "No space left on device (ENOSPC)",
                          writes=(FailingWrite(what="snapshot", path="/var/lib/netd-hook/snapshot.json",
                                               since=1_700_000_000.0, error="No space left on device",
                                               errno="ENOSPC", failures=3, next_attempt_at=1_700_000_104.0),)),
        networkd_sockets=(1,), config="<defaults>", state_dir="/var/lib/netd-hook",
        snapshot_saved_at=1_700_000_000.0, snapshot_unsaved=True,
    )
    out: dict[str, set[str]] = {}
    for line in metrics.render(doc).splitlines():
        if line.startswith("#") or not line:
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$", line)
        assert m, f"not a sample line: {line!r}"
        labels = {kv.split("=", 1)[0] for kv in m.group(2).split(",")} if m.group(2) else set()
        out.setdefault(m.group(1), set()).update(labels)
    return out


def unknown(exprs: list[str], known: dict[str, set[str]]) -> list[str]:
    """What the expressions select that `known` does not have: metrics, or labels of a metric."""
    out = sorted(f"metric {name}" for e in exprs for name in metric_names(e) if name not in known)
    out += sorted(f"label {name}{{{label}}}" for e in exprs for name, labels in matchers(e) if name in known
                  for label in labels - known[name] - {"instance", "job"})
    return out


# ---------------------------------------------------------------- promtool

def test_promtool_checks_the_rules() -> None:
    r = run_promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    alerts = parse_rules(RULES.read_text())
    # the parser above sees every rule promtool sees: what the other tests check is all of them
    assert f"SUCCESS: {len(alerts)} rules found" in r.stdout, r.stdout
    assert len(alerts) >= 11
    names = [a.name for a in alerts]
    assert len(set(names)) == len(names), names
    for a in alerts:
        assert re.fullmatch(r"NetdHook[A-Z][A-Za-z]+", a.name), a.name
        block = "\n".join(RULES.read_text().splitlines()[a.start:a.end])
        assert re.search(r"^\s+severity: (critical|warning)$", block, re.M), f"{a.name}: severity"
        assert re.search(r"^\s+summary: ", block, re.M) and re.search(r"^\s+description: ", block, re.M), a.name
        # the description says what to run first on the node
        assert re.search(r"First:\s+`(netd-hook|systemctl|journalctl) ", block), f"{a.name}: no first command"


def test_promtool_unit_tests_pass() -> None:
    r = run_promtool("test", "rules", RULE_TESTS.name, cwd=PROMETHEUS)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    text = RULE_TESTS.read_text()
    for a in parse_rules(RULES.read_text()):
        quiet = re.search(rf"alertname: {a.name}, exp_alerts: \[\]\}}", text)
        firing = re.search(rf"alertname: {a.name}\n\s+exp_alerts:\n\s+- exp_labels:", text)
        assert quiet and firing, f"{a.name}: quiet case {bool(quiet)}, firing case {bool(firing)}"


# Each rule broken the way a careless edit would break it; the unit tests must notice.
# (alert, "expr" or "for", old, new, what the tests would have let through)
MUTANTS = [
    ("NetdHookNotRunning", "expr", 'state!="active"', 'state=~".+"', "an active unit firing"),
    ("NetdHookNotRunning", "for", "1m", "0m", "an upgrade's restart firing"),
    ("NetdHookMetricsAbsent", "expr", "and on (instance, job) up == 1", "", "a node scaled in firing"),
    ("NetdHookMetricsAbsent", "expr", "[1d]", "[5m]", "a vanished file forgotten before it fires"),
    ("NetdHookMetricsAbsent", "for", "5m", "0m", "an upgrade's one scrape without the file firing"),
    ("NetdHookMetricsStale", "expr", "> 300", "> 100", "an idle node scraped every 2 min firing"),
    ("NetdHookMetricsStale", "expr", r"|.*/netd-hook/metrics\.prom", "", "the default file missed"),
    ("NetdHookMetricsStale", "expr", "(.*/)?", "", "node_exporter 1.3's full paths missed"),
    ("NetdHookRestarting", "expr", ">= 3", ">= 1", "an upgrade's restart firing"),
    ("NetdHookEntriesMissing", "for", "2m", "1m", "a networkd pass seen by two scrapes firing"),
    ("NetdHookEntriesMissing", "expr", "> 0", ">= 0", "every node firing"),
    ("NetdHookRollback", "expr", "increase(netd_hook_rollbacks_total[1h]) > 0", "netd_hook_rollbacks_total > 0",
     "old rollbacks firing forever"),
    ("NetdHookRollback", "expr", "[1h]", "[5m]", "the alert over before anyone looks"),
    ("NetdHookEntriesSetAside", "expr", "unless increase(netd_hook_rollbacks_total[1h]) > 0", "",
     "a rollback paging twice"),
    ("NetdHookEntriesSetAside", "expr", "increase(", "rate(", "rate > 0 for a counter reset by a restart"),
    ("NetdHookDegraded", "for", "5m", "1m", "a two-minute full disk firing"),
    ("NetdHookLinkStuck", "for", "10m", "5m", "a slow DHCP firing"),
    ("NetdHookUnattributedEntries", "expr", "> 0", ">= 0", "every node firing"),
    ("NetdHookForgottenInBulk", "expr", "== 1", ">= 0", "every node firing"),
]
GENERIC = ["never fires", "fires everywhere", "another first command", "another severity"]


def mutate(text: str, alert: str, change: str, old: str = "", new: str = "") -> str:
    """The rules file with one alert broken; the rest byte for byte."""
    lines = text.splitlines()
    a = next(x for x in parse_rules(text) if x.name == alert)
    indent = lines[a.expr_lines[0]][:len(lines[a.expr_lines[0]]) - len(lines[a.expr_lines[0]].lstrip())]
    expr = a.expr
    if change == "for":
        assert a.for_ == old, f"{alert}: for: {a.for_}, not {old}"
        lines[a.for_line] = lines[a.for_line].replace(f"for: {old}", f"for: {new}")
        return "\n".join(lines) + "\n"
    if change == "expr":
        assert expr.count(old) >= 1, f"{alert}: {old!r} not in {expr!r}"
        expr = expr.replace(old, new, 1)
    elif change == "never fires":
        expr = "vector(1) == 0"
    elif change == "fires everywhere":
        expr = f"({expr}) or on () vector(1)"
    elif change in ("another first command", "another severity"):
        pattern, repl = ((r"First:", "First of all:") if change == "another first command"
                         else (r"severity: (critical|warning)", "severity: page"))
        block = "\n".join(lines[a.start:a.end])
        changed = re.sub(pattern, repl, block, count=1)
        assert changed != block, f"{alert}: {change}"
        return "\n".join(lines[:a.start] + changed.split("\n") + lines[a.end:]) + "\n"
    lines[a.expr_lines[0]:a.expr_lines[1]] = [f"{indent}expr: >-", f"{indent}  {expr}"]
    return "\n".join(lines) + "\n"


def _mutant_params() -> list:
    out = [pytest.param(a, c, o, n, id=f"{a}:{c}:{o}->{n}") for a, c, o, n, _ in MUTANTS]
    out += [pytest.param(a.name, g, "", "", id=f"{a.name}:{g}") for a in parse_rules(RULES.read_text())
            for g in GENERIC]
    return out


def groups_checking(alert: str) -> str:
    """The unit tests file with only the groups that check `alert`. The rules do not read each
    other's results, so breaking one alert can only fail the groups that name it; running those
    alone gives the same verdict in a fraction of the time."""
    text = RULE_TESTS.read_text()
    head, _, body = text.partition("\ntests:\n")
    groups = re.split(r"(?m)^(?=  - name: )", body)
    kept = [g for g in groups if re.search(rf"alertname: {alert}\b", g)]
    assert kept, f"no unit test checks {alert}"
    return head + "\ntests:\n" + "".join(kept)


@pytest.mark.parametrize("alert", [a.name for a in parse_rules(RULES.read_text())])
def test_the_groups_that_check_an_alert_pass_alone(tmp_path: Path, alert: str) -> None:
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / RULE_TESTS.name).write_text(groups_checking(alert))
    r = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize(("alert", "change", "old", "new"), _mutant_params())
def test_a_broken_rule_fails_the_unit_tests(tmp_path: Path, alert: str, change: str, old: str, new: str) -> None:
    broken = mutate(RULES.read_text(), alert, change, old, new)
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / RULE_TESTS.name).write_text(groups_checking(alert))
    check = run_promtool("check", "rules", RULES.name, cwd=tmp_path)
    assert check.returncode == 0, f"the broken rule is not even valid:\n{check.stdout}{check.stderr}"
    r = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert r.returncode != 0, f"{alert} broken ({change} {old!r} -> {new!r}) and the unit tests still pass"
    # it failed on that alert's own cases, not on something else
    assert f"alertname: {alert}," in r.stdout + r.stderr, r.stdout + r.stderr


def test_the_mutants_parse_and_the_unmutated_file_round_trips() -> None:
    """The text surgery above changes only what it is told to: rewriting an expr as itself
    leaves a file that promtool reads the same (same rules, same exprs)."""
    text = RULES.read_text()
    same = text
    for a in parse_rules(text):
        same = mutate(same, a.name, "expr", a.expr, a.expr)
    assert [(a.name, a.expr, a.for_) for a in parse_rules(same)] == \
        [(a.name, a.expr, a.for_) for a in parse_rules(text)]


# ---------------------------------------------------------------- the names the rules use

def test_every_metric_the_rules_use_is_rendered_by_netd_hook() -> None:
    known = {**rendered(), **NODE_EXPORTER}
    text = RULES.read_text()
    alerts = parse_rules(text)
    exprs = [a.expr for a in alerts]
    assert unknown(exprs, known) == []
    used = {n for e in exprs for n in metric_names(e)}
    assert {"netd_hook_missing_entries", "netd_hook_rollbacks_total", "netd_hook_forgotten_doubt",
            "netd_hook_start_time_seconds", "node_textfile_mtime_seconds"} <= used, used
    # annotations and comments name metrics too (what an operator looks up): all real
    mentioned = set(re.findall(r"\bnetd_hook_[a-z0-9_]+", text))
    assert mentioned - known.keys() == set(), mentioned - known.keys()
    # the unit tests feed series of real names (a test of a metric netd-hook does not write proves nothing)
    series = re.findall(r"series: '([a-zA-Z_:][a-zA-Z0-9_:]*)\{", RULE_TESTS.read_text())
    assert series and set(series) - known.keys() == set(), set(series) - known.keys()
    # and the check can fail: a renamed metric or a label netd-hook does not write are caught
    assert unknown(["netd_hook_missing_entrie > 0"], known) == ["metric netd_hook_missing_entrie"]
    assert unknown(['netd_hook_protected_entries{family="6"} > 0'], known) == \
        ["label netd_hook_protected_entries{family}"]
    assert unknown(["rate(netd_hook_repairs_total[5m]) > 0 unless on (instance) up == 0"], known) == []


def test_the_metrics_file_parses_as_prometheus_text() -> None:
    """node_exporter drops a whole textfile that does not parse, and with it every netd-hook
    alert but NetdHookMetricsAbsent. promtool's linter must find nothing."""
    doc_text = metrics.render(Status(counters=Counters(repairs_by_trigger={'we"ird\\': 1})))
    r = subprocess.run([promtool(), "check", "metrics"], input=doc_text, capture_output=True, text=True, timeout=60)
    problems = {line.strip() for line in (r.stdout + r.stderr).splitlines() if line.strip()}
    assert r.returncode == 0 and not problems, r.stdout + r.stderr  # 1: it does not parse; 3: lint


# ---------------------------------------------------------------- the package

def test_the_package_installs_the_rules(deb: Path) -> None:
    """The .deb built from the working tree (tests/conftest.py's `deb`, shared with the booted
    tier) has the rules at /usr/share/netd-hook/prometheus/, byte for byte, root's and 0644."""
    fs = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True, timeout=120).stdout
    with tarfile.open(fileobj=io.BytesIO(fs)) as tar:
        members = {m.name.lstrip("."): m for m in tar.getmembers()}
        assert INSTALLED in members, (
            f"{deb.name} has no {INSTALLED}: packaging/build-deb.sh must lay packaging/prometheus/ out as "
            "prometheus/ beside debian/ (packaging/debian/netd-hook.install installs it from there)")
        m = members[INSTALLED]
        assert (m.mode & 0o7777, m.uname, m.gname) == (0o644, "root", "root")
        f = tar.extractfile(m)
        assert f is not None and f.read() == RULES.read_bytes()
        assert not [n for n in members if n.startswith("/usr/share/netd-hook/") and n.endswith(".test.yml")]


# ---------------------------------------------------------------- the heartbeat NetdHookMetricsStale needs

@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/lib/systemd/systemd-networkd"),
                    reason="needs root and systemd-networkd")
def test_an_idle_daemon_rewrites_its_metrics_file_every_heartbeat(tmp_path: Path) -> None:
    """Nothing changes on the node: the metrics file (the same bytes) is still rewritten at least
    every HEARTBEAT, so its mtime (what node_exporter's node_textfile_mtime_seconds reports) is
    never older than that while the daemon runs. The daemon's HEARTBEAT (30 s) is shortened to
    3 s here (tests/drill.py), so that three beats take seconds; it stopped after the first."""
    beat = 3.0
    assert publisher.HEARTBEAT == 30.0  # what NetdHookMetricsStale's 300 s allow ten of
    with Lab() as lab:
        eni = lab.add_eni(1)
        lab.ip_batch([f"rule add from {eni.ip} lookup {eni.table} priority 32765"], force=True)
        lab.node_rules(strict=True)
        lab.add_pod("10.1.1.5", 1)
        with Daemon(lab, tmp_path / "state", argv=[sys.executable, "-m", "tests.drill"],
                    env={"NETD_HOOK_DRILL_HEARTBEAT": str(beat)}) as d:
            path = d.runtime_dir / metrics.DEFAULT_FILE
            wait_until(lambda: path.exists() and "netd_hook_missing_entries 0\n" in path.read_text(), 10,
                       "the first metrics file")
            lab.wait_settled()

            def rewritten(since: int) -> int | None:
                m = path.stat().st_mtime_ns
                return m if m != since else None

            m0 = path.stat().st_mtime_ns
            m1 = wait_until(lambda: rewritten(m0), beat + 5, "a rewrite")  # the rest of a beat at most
            content = path.read_text()
            ages = []
            deadline = time.monotonic() + beat + 5
            m2 = None
            while time.monotonic() < deadline and m2 is None:
                ages.append(time.time() - path.stat().st_mtime)
                m2 = rewritten(m1)
                time.sleep(0.25)
            assert m2 is not None, f"not rewritten within {beat + 5:.0f}s after the last write"
            gap = (m2 - m1) / 1e9
            print(f"\nidle rewrites {gap:.2f}s apart (HEARTBEAT {beat:.0f}s); oldest seen {max(ages):.2f}s")
            assert gap <= beat + 2 and max(ages) <= beat + 2
            assert path.read_text() == content, "something changed: this was no heartbeat"
