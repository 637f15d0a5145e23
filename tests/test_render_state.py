"""What `status` and the metrics say about the daemon's own trouble: degraded writes, stuck
links, entries held back after an overrun (status documents as the daemon writes them)."""

from __future__ import annotations

from netd_hook.commands import metrics, render

NOW = 1_800_000_000.0


def _doc() -> dict:
    return {
        "pid": 7, "started_at": NOW - 60, "updated_at": NOW - 1, "missing": 0, "protected": {"rules": 3, "routes": 2},
        "networkd": {"owner": ":1.1", "pid": 9, "generation": 1, "settled": True,
                     "links": {"eth0": "configured", "eth3": "configuring"}, "stuck": {"eth3": 42.0}},
        "degraded": {"since": NOW - 30, "reason": "cannot save the snapshot to /var/lib/netd-hook: No space left "
                                                  "on device (ENOSPC)", "writes": []},
        "unattributed": ["pref 1024 from all fwmark 0x80/0x80 lookup 254"],
        "counters": {}, "forgotten": {},
    }


def test_status_names_degraded_writes_stuck_links_and_held_back_entries():
    text = render.status_text(_doc(), True, NOW)
    assert text.splitlines()[0] == "netd-hook: active, protecting, DEGRADED (protecting from memory)"
    assert "   stuck: eth3 busy for 42s (holding back no repair; checked again when it settles)" in text
    assert "DEGRADED since" in text and "ENOSPC" in text
    assert "held back after a netlink monitor overrun" in text and "    pref 1024 from all fwmark" in text


def test_metrics_carry_them_too():
    out = metrics.render(_doc())
    assert "netd_hook_degraded 1" in out and "netd_hook_unattributed_entries 1" in out
    assert "netd_hook_stuck_links 1" in out
    calm = metrics.render({**_doc(), "degraded": None, "unattributed": [],
                           "networkd": {**_doc()["networkd"], "stuck": {}}})
    assert "netd_hook_degraded 0" in calm and "netd_hook_stuck_links 0" in calm


def test_status_and_diff_introduce_overrun_held_back_entries_with_the_same_words():
    text = render.status_text(_doc(), True, NOW)
    assert render.unattributed_heading() in text.splitlines()
    assert render.unattributed_heading() == ("held back after a netlink monitor overrun (who deleted them is "
                                             "unknown; `netd-hook replay` puts them back):")
    assert render.unattributed_heading(2).startswith("held back after a netlink monitor overrun (2; who deleted")
