"""What `status` and the metrics say about the daemon's own trouble: degraded writes, stuck
links, entries unattributed after an overrun (status documents as the daemon writes them)."""

from __future__ import annotations

from dataclasses import replace

from netd_hook.commands import metrics, render
from netd_hook.core.status_doc import Degraded, Networkd, Protected, Status

NOW = 1_800_000_000.0

DOC = Status(
    pid=7, started_at=NOW - 60, updated_at=NOW - 1, protected=Protected(rules=3, routes=2),
    networkd=Networkd(owner=":1.1", pid=9, generation=1, settled=True,
                      links={"eth0": "configured", "eth3": "configuring"}, stuck={"eth3": 42.0}),
    degraded=Degraded(since=NOW - 30, reason="cannot save the snapshot to /var/lib/netd-hook: No space left "
                                             "on device (ENOSPC)"),
    unattributed=("pref 1024 from all fwmark 0x80/0x80 lookup 254",),
)


def test_status_names_degraded_writes_stuck_links_and_unattributed_entries():
    text = render.status_text(DOC, True, NOW)
    assert text.splitlines()[0] == "netd-hook: active, protecting, DEGRADED (protecting from memory)"
    assert "   stuck: eth3 busy for 42s (delaying no repair; checked again when it settles)" in text
    assert "DEGRADED since" in text and "ENOSPC" in text
    assert "unattributed (deleted unseen in a netlink monitor overrun" in text
    assert "    pref 1024 from all fwmark" in text


def test_metrics_carry_them_too():
    out = metrics.render(DOC)
    assert "netd_hook_degraded 1" in out and "netd_hook_unattributed_entries 1" in out
    assert "netd_hook_stuck_links 1" in out
    calm = metrics.render(replace(DOC, degraded=None, unattributed=(), networkd=replace(DOC.networkd, stuck={})))
    assert "netd_hook_degraded 0" in calm and "netd_hook_stuck_links 0" in calm


def test_status_and_diff_introduce_unattributed_entries_with_the_same_words():
    text = render.status_text(DOC, True, NOW)
    assert render.unattributed_heading() in text.splitlines()
    assert render.unattributed_heading() == ("unattributed (deleted unseen in a netlink monitor overrun while "
                                             "networkd was idle; who deleted them is unknown; `netd-hook replay` "
                                             "puts them back):")
    assert render.unattributed_heading(2).startswith("unattributed (2; deleted unseen in a netlink monitor overrun")
