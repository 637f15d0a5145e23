"""doctor's output: the text report (worst first, fixes indented) and the JSON document (pure).

The JSON document's `format` and `version` say what a consumer reads; `exit_code` is 1 when a
warning or a critical finding is reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from .facts import ROUTES_KEY, RULES_KEY, Facts, Finding, Severity, effective

FORMAT = "netd-hook/doctor"
VERSION = 1

_MARK = {Severity.OK: "  ok  ", Severity.INFO: " info ", Severity.WARNING: " WARN ", Severity.CRITICAL: " CRIT "}


def exit_code(findings: Iterable[Finding]) -> int:
    return 1 if any(f.severity.rank >= Severity.WARNING.rank for f in findings) else 0


def render_text(findings: Sequence[Finding], verbose: bool = False) -> str:
    """One line per finding, worst first; fixes indented under non-ok ones; a summary line."""
    lines: list[str] = []
    for f in sorted(findings, key=lambda f: -f.severity.rank):
        lines.append(f"[{_MARK[f.severity]}] {f.summary}")
        if verbose and f.detail:
            lines.extend(f"         {ln}" for ln in f.detail.splitlines())
        if f.fix and f.severity is not Severity.OK:
            lines.append("         fix:")
            lines.extend(f"           {ln}" for ln in f.fix.splitlines())
    counts = {s: sum(1 for f in findings if f.severity is s) for s in Severity}
    parts = [f"{counts[s]} {s.value}{'s' if s is Severity.WARNING and counts[s] != 1 else ''}"
             for s in (Severity.CRITICAL, Severity.WARNING, Severity.INFO, Severity.OK) if counts[s]]
    if counts[Severity.CRITICAL]:
        verdict = "AT RISK: networkd can delete the CNI's rules or routes and nothing puts them back"
    elif counts[Severity.WARNING]:
        verdict = "needs attention"
    elif any(f.check == "networkd.cured" for f in findings):
        guarded = any(f.check == "networkd.cured" and f.severity is Severity.OK for f in findings)
        verdict = ("cured: networkd deletes none of the CNI's rules or routes; "
                   + ("netd-hook guards the ENI table routes the kernel flushes" if guarded else
                      "nothing guards the ENI table routes the kernel flushes (netd-hook is not running)"))
    else:
        verdict = "no problems found"
    lines.append(f"{', '.join(parts)}: {verdict}")
    return "\n".join(lines) + "\n"


def to_json(findings: Sequence[Finding], facts: Facts) -> dict[str, Any]:
    rules = effective(facts.conf_files, RULES_KEY)
    routes = effective(facts.conf_files, ROUTES_KEY)
    return {
        "format": FORMAT,
        "version": VERSION,
        "exit_code": exit_code(findings),
        "cured": any(f.check == "networkd.cured" for f in findings),
        "systemd_version": facts.version,
        "settings": {s.key: {"value": s.value, "source": s.source,
                             "invalid": [{"where": w, "value": v} for w, v in s.invalid]}
                     for s in (rules, routes)},
        "findings": [{"check": f.check, "severity": f.severity.value, "summary": f.summary,
                      "detail": f.detail, "fix": f.fix} for f in findings],
        "facts": json.loads(json.dumps(asdict(facts))),
    }
