"""Is this node at risk? `assess(facts, probe, snapshot_mtime, now)` turns facts into findings (pure).

networkd's two wipes (`ManageForeignRoutingPolicyRules=`, `ManageForeignRoutes=`) as the files
set them, the files that stop networkd reading, the .network files and links it manages, the
cured node and what it still loses; then whether netd-hook guards the node (doctor/guard.py).
Each risk carries the exact fix; the cure is a drop-in named to sort after every drop-in that
sets one of the keys (later files win).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ...adapters import status as statusmod
from ...core.links import UNMANAGED, managed
from .facts import (
    KEYS,
    MAIN_SEARCH_SINCE,
    ROUTES_KEY,
    ROUTES_SINCE,
    RULES_KEY,
    RULES_SINCE,
    ConfFile,
    Facts,
    Finding,
    Setting,
    Severity,
    UnitFacts,
    effective,
)
from .guard import DEFAULT_STALE_AFTER, guard_findings, guard_fix

CURE_DIR = "/etc/systemd/networkd.conf.d"
CURE_BODY = f"[Network]\n{RULES_KEY}=no\n{ROUTES_KEY}=no\n"
CURE_NAMES = ("80-netd-hook.conf", "90-netd-hook.conf", "99-netd-hook.conf", "zz-netd-hook.conf")

# A cured node (both keys no) loses no rule, but networkd still takes a managed link's address
# away and re-adds it at some moments, and the kernel flushes every route through a link when its
# last address goes (fib_disable_ip in net/ipv4/fib_frontend.c, no RTM_DELROUTE): the ENI's own
# table with it, whatever ManageForeignRoutes= says. Which moments, measured on booted nodes with
# the kops/AL2023 drop-in (tests/test_booted_cured.py); in 249's source link_reconfigure_impl()
# and link_carrier_lost() both call link_drop_config(), which removes the link's addresses.
ADDRESS_DROPS: Mapping[int, tuple[str, ...]] = {
    249: ("networkctl reconfigure", "carrier loss"),
    252: ("networkctl reconfigure", "networkd restart", "carrier loss"),
    257: ("carrier loss",),  # reconfigure and restart update the address in place
}
ADDRESS_DROPS_UNKNOWN = ("networkctl reconfigure", "networkd restart", "carrier loss")


def _cure_name(conf_files: Sequence[ConfFile]) -> str:
    """A drop-in name that sorts after every drop-in that sets one of the keys (later wins)."""
    setters = [os.path.basename(f.path) for f in conf_files
               if f.role == "drop-in" and f.assignments and os.path.basename(f.path) not in CURE_NAMES]
    last = max(setters, key=os.fsencode, default="")
    for name in CURE_NAMES:
        if os.fsencode(name) > os.fsencode(last):
            return name
    return CURE_NAMES[-1]


def cure_fix(conf_files: Sequence[ConfFile]) -> str:
    """The drop-in that turns both wipes off, named to sort after every drop-in that sets them."""
    name = _cure_name(conf_files)
    body = CURE_BODY.replace("\n", "\\n")
    broken = [f.path for f in conf_files if f.state == "error"]
    first = (f"  first fix {broken[0]}: networkd stops reading there and would never see the drop-in\n"
             if broken else "")
    return (f"{first}"
            f"  mkdir -p {CURE_DIR}\n"
            f"  printf '{body}' > {CURE_DIR}/{name}\n"
            f"  systemctl restart systemd-networkd   # networkctl reload does not re-read networkd.conf\n"
            f"  (restart networkd while netd-hook runs: it puts back anything lost in the restart)")



_SKIP_CURE = ("Where the image owns networkd's configuration (netplan/cloud-init images, read-only /etc),\n"
              "skip the cure: netd-hook is the guard there, keep it enabled.")


def _risk_finding(key: str, setting: Setting, version: int | None, since: int, guard_running: bool,
                  unit: UnitFacts, conf_files: Sequence[ConfFile], fixed_above: bool = False) -> Finding:
    check = f"networkd.{key}"
    where = f"set in {setting.source}" if setting.source else "networkd's default"
    lost = "policy rules" if key == RULES_KEY else "ENI table routes"
    what = ("deletes every policy rule it did not create (the VPC CNI's pod, fwmark and ENI rules) on all links "
            "whenever it configures any link: restart, netplan apply, networkctl reconfigure, ENI hot-plug"
            if key == RULES_KEY else
            "deletes the routes it did not create on every link it configures, such as an ENI's own "
            "route table (default via the ENI's gateway)")
    if version is not None and version < since:
        return Finding(check, Severity.INFO,
                       f"systemd {version} predates {key}= (systemd {since}): not assessed",
                       f"networkd ignores {key}= before systemd {since}; the manager-wide wipe netd-hook guards "
                       f"against is the behaviour of systemd 249 and later.")
    assumed = "" if version is not None else " (systemd's version unknown: assuming 249 or later)"
    if not setting.value:
        return Finding(check, Severity.OK, f"{key}=no ({where}): networkd leaves foreign "
                       f"{'policy rules' if key == RULES_KEY else 'routes'} alone{assumed}")
    detail = f"With {key}=yes ({where}), systemd-networkd {what}.{assumed}"
    if key == ROUTES_KEY:
        detail += (" Even with ManageForeignRoutes=no, an ENI whose address networkd takes away and re-adds loses "
                   f"its table routes (the kernel flushes them: {_address_drops(version)}), which netd-hook "
                   "repairs.")
    cure = (f"the drop-in above (for {RULES_KEY}) sets {key}=no too" if fixed_above
            else "Cure, turn the wipe off:\n" + cure_fix(conf_files) + "\n" + _SKIP_CURE)
    if guard_running:
        return Finding(check, Severity.WARNING,
                       f"{key}=yes ({where}): networkd deletes the CNI's {lost}; netd-hook is running and puts "
                       f"them back", detail, cure)
    if not fixed_above:
        cure = ("Guard now: " + guard_fix(unit) + "\n" + cure
                + "\nPods that already lost their network need a restart (kubectl delete pod ...).")
    return Finding(check, Severity.CRITICAL,
                   f"{key}=yes ({where}) and netd-hook is not running: the next networkd reconfigure deletes "
                   f"the CNI's {lost} and nothing puts them back",
                   detail + " Pods on secondary ENIs lose their network until they are restarted.", cure)


def _conf_findings(facts: Facts) -> list[Finding]:
    out: list[Finding] = []
    read = [f for f in facts.conf_files if f.state in ("read", "empty", "error")]
    main = next((f for f in facts.conf_files if f.role == "main"), None)
    n_drop = sum(1 for f in facts.conf_files if f.role == "drop-in")
    lines = []
    for f in facts.conf_files:
        note = {"read": "", "empty": " (empty: masks its namesakes)", "masked": " (-> /dev/null: masks its namesakes)",
                "dangling": " (dangling symlink: skipped, masks its namesakes)",
                "error": f" (networkd stops here: {f.error})",
                "not-read": " (never read: networkd stopped before it)"}[f.state]
        sets = ", ".join(f"{a.key}={a.value} (line {a.line})" for a in f.assignments)
        lines.append(f"{f.role:7} {f.path}{note}{': ' + sets if sets else ''}")
        lines.extend(f"        hides {s}" for s in f.shadows)
    for u in facts.unused_main:
        lines.append(f"unused  {u} (read only by systemd {MAIN_SEARCH_SINCE} and later)")
    if not facts.conf_files:
        lines.append("no networkd.conf and no drop-ins: networkd runs with its defaults")
    mains = facts.main_candidates
    first = mains[0] if len(mains) == 1 else "the first of " + ", ".join(mains)
    detail = (f"Read order (later files win): {first}, then the drop-ins of " + ", ".join(facts.dropin_dirs)
              + " sorted by file name.\n" + "\n".join(lines))
    summary = (f"networkd.conf: {main.path if main else 'no main file'} and {n_drop} drop-in"
               f"{'s' if n_drop != 1 else ''} ({len(read)} read)")
    out.append(Finding("networkd.conf", Severity.OK, summary, detail))
    for f in facts.conf_files:
        if f.state != "error":
            continue
        later = [g.path for g in facts.conf_files if g.state == "not-read"]
        at = f"{f.path}:{f.error_line}" if f.error_line else f.path
        if f.error_line:
            fix = f"Fix or remove line {f.error_line} of {f.path}, then: systemctl restart systemd-networkd"
        elif f.error.startswith("not readable"):
            fix = f"chmod 0644 {f.path}\nsystemctl restart systemd-networkd"
        elif f.error == "is a directory":
            fix = (f"Move the directory {f.path} out of the way (drop-ins must be files), then:\n"
                   "systemctl restart systemd-networkd")
        else:
            fix = (f"Run netd-hook doctor as root. If root cannot read {f.path} either, neither can networkd:\n"
                   f"check the file, then: systemctl restart systemd-networkd")
        out.append(Finding(
            "networkd.conf.error", Severity.WARNING,
            f"networkd stops reading its configuration at {at} ({f.error})"
            + (f": {len(later)} later file{'s are' if len(later) != 1 else ' is'} ignored" if later else ""),
            "networkd logs \"Failed to parse configuration file\" and keeps only what it read before this point."
            + (" Ignored: " + ", ".join(later) if later else ""),
            fix))
    for key in KEYS:
        for where, raw in effective(facts.conf_files, key).invalid:
            out.append(Finding(
                "networkd.conf.invalid-boolean", Severity.WARNING,
                f"{where}: {key}={raw} is not a boolean: networkd ignores this line",
                "networkd keeps the value it had before this line (the default, or an earlier file's).",
                f"Edit {where.rsplit(':', 1)[0]}: {key}=no (booleans: 1/yes/y/true/t/on, 0/no/n/false/f/off)"))
    for e in facts.errors:
        out.append(Finding("networkd.conf.listing", Severity.WARNING, e,
                           "networkd skips a directory it cannot list; so does doctor.",
                           "Run netd-hook doctor as root."))
    return out


def _network_finding(facts: Facts) -> Finding:
    live = [f for f in facts.network_files if f.state in ("read", "error")]
    if not live:
        return Finding("networkd.network-files", Severity.INFO,
                       "no .network files: networkd manages no link",
                       "Nothing triggers the wipe until a .network file appears (netplan apply writes them to "
                       "/run/systemd/network). Looked in " + ", ".join(facts.network_dirs) + ".")
    lines = []
    for f in facts.network_files:
        if f.state in ("masked", "empty", "dangling"):
            lines.append(f"{f.path}: {f.state} (networkd skips it)")
            continue
        match = " ".join(f.match) if f.match else "no [Match]: networkd ignores this file"
        extra = (" Unmanaged=yes" if f.unmanaged else "") + (" (netplan)" if "netplan" in f.path else "")
        lines.append(f"{f.path}: {match}{extra}")
        lines.extend(f"  drop-in {d}" for d in f.dropins)
        lines.extend(f"  hides {s}" for s in f.shadows)
        if f.error:
            lines.append(f"  networkd ignores this file: {f.error}")
    names = ", ".join(os.path.basename(f.path) for f in live)
    return Finding("networkd.network-files", Severity.INFO,
                   f"networkd has {len(live)} .network file{'s' if len(live) != 1 else ''}: {names}",
                   "A link matching any of these is configured by networkd; configuring one link wipes foreign "
                   "rules for all.\n" + "\n".join(lines))


def _links_finding(links: Mapping[str, str]) -> Finding:
    names = managed(links)
    ours = sorted((n, s) for n, s in links.items() if n in names)
    unmanaged = sorted(n for n, s in links.items() if s == UNMANAGED)
    m = ", ".join(f"{n} ({s})" for n, s in ours) or "none"
    shown = ", ".join(unmanaged[:8]) + (f", … ({len(unmanaged)} in all)" if len(unmanaged) > 8 else "")
    return Finding("networkd.links", Severity.INFO,
                   f"networkd manages {len(ours)} link{'s' if len(ours) != 1 else ''}: {m}; "
                   f"{len(unmanaged)} unmanaged",
                   f"From netd-hook's status. Unmanaged: {shown or 'none'}.")


def _address_drops(version: int | None) -> str:
    """The moments networkd takes a managed ENI's address away, for this systemd."""
    known = ADDRESS_DROPS.get(version) if version is not None else None
    if known is not None:
        return f"systemd {version}: {', '.join(known)}"
    return f"{', '.join(ADDRESS_DROPS_UNKNOWN[:-1])} or {ADDRESS_DROPS_UNKNOWN[-1]}, depending on the systemd version"


def _cured_finding(facts: Facts, rules: Setting, routes: Setting, running: bool,
                   links: Mapping[str, str] | None) -> Finding | None:
    """Both wipes off (the kops/AL2023 drop-in, or doctor's own cure): say so, and what is still
    lost and who puts it back. None when either wipe is on, or systemd predates the rule wipe."""
    version = facts.version
    if rules.value or routes.value or (version is not None and version < RULES_SINCE):
        return None
    drops = _address_drops(version)
    flushed = f"the ENI table routes the kernel flushes when networkd re-adds an ENI's address ({drops})"
    sources = "; ".join(f"{s.key}=no in {s.source}" for s in (rules, routes) if s.source)
    listed = ", ".join(sorted(managed(links))) if links is not None else ""
    which = (f"Links networkd manages now (from netd-hook's status): {listed or 'none'}. "
             if links is not None else "")
    detail = (f"{sources}. networkd deletes none of the CNI's policy rules or routes. But when a link's last "
              "address goes, the kernel flushes every route through it, the ENI's own table (default via its "
              f"gateway) included, and networkd takes a managed ENI's address away and re-adds it ({drops}); it "
              "re-adds the address, never the CNI's routes, and the pods on that ENI lose their egress. "
              f"{which}An ENI whose link networkd does not manage (Unmanaged=yes) keeps its address and its table.")
    if running:
        return Finding("networkd.cured", Severity.OK,
                       f"cured: networkd deletes none of the CNI's rules or routes; netd-hook still guards {flushed}",
                       detail + " netd-hook re-reads the kernel once networkd settles and puts them back.")
    return Finding("networkd.cured", Severity.INFO,
                   f"cured: networkd deletes none of the CNI's rules or routes, but nothing puts back {flushed}: "
                   "netd-hook is not running",
                   detail + " Without netd-hook they stay gone until the CNI re-creates them (aws-node restarted).")


def _unmanaged_finding(facts: Facts, rules: Setting) -> Finding | None:
    """`[Link] Unmanaged=yes` on the secondary ENIs (Ubuntu's common layout) keeps networkd off their
    addresses and routes, never off the rules: the rule wipe is manager-wide (amazon-vpc-cni-k8s #1600)."""
    files = [f for f in facts.network_files if f.state in ("read", "error") and f.unmanaged]
    if not files or not rules.value or (facts.version is not None and facts.version < RULES_SINCE):
        return None
    names = ", ".join(f"{os.path.basename(f.path)} ({' '.join(f.match) or 'no [Match]'})" for f in files)
    routes_note = (" networkd neither configures the addresses of these links nor drops their routes, so an ENI table "
                   "on them survives whatever networkd does, ManageForeignRoutes=yes or not.")
    return Finding("networkd.unmanaged", Severity.INFO,
                   f"Unmanaged=yes in {names}: networkd leaves those links' addresses and routes alone, but not the "
                   "rules: the rule wipe is manager-wide",
                   "networkd deletes every foreign policy rule whenever it configures any link it manages (the "
                   "primary ENI: networkctl reconfigure, netplan apply, a networkd restart; on 249 also a carrier "
                   "loss), whichever link the rule is about. Unmanaged=yes does not change that (amazon-vpc-cni-k8s "
                   "#1600); ManageForeignRoutingPolicyRules=no does." + routes_note)


def assess(facts: Facts, probe: statusmod.Probe | None, snapshot_mtime: float | None, now: float,
           stale_after: float = DEFAULT_STALE_AFTER, links: Mapping[str, str] | None = None) -> list[Finding]:
    """Findings, in a stable order (render_text sorts by severity). Pure."""
    out: list[Finding] = []
    version = facts.version
    if version is None:
        out.append(Finding("systemd.version", Severity.INFO, "systemd's version unknown (networkctl not found)",
                           "Assuming 249 or later: the version where networkd's rule wipe began."))
    elif version < RULES_SINCE:
        out.append(Finding("systemd.version", Severity.INFO, f"systemd {version}: older than 249"))
    else:
        out.append(Finding("systemd.version", Severity.OK, f"systemd {version}"))
    status = probe.status if probe is not None else None
    running = probe is not None and probe.running
    rules = effective(facts.conf_files, RULES_KEY)
    routes = effective(facts.conf_files, ROUTES_KEY)
    rf = _risk_finding(RULES_KEY, rules, version, RULES_SINCE, running, facts.unit, facts.conf_files)
    out.append(rf)
    out.append(_risk_finding(ROUTES_KEY, routes, version, ROUTES_SINCE, running, facts.unit, facts.conf_files,
                             fixed_above=rf.severity.rank >= Severity.WARNING.rank))
    out.extend(_conf_findings(facts))
    at_risk = ((rules.value and (version is None or version >= RULES_SINCE))
               or (routes.value and (version is None or version >= ROUTES_SINCE)))
    need = Severity.WARNING if at_risk else Severity.INFO
    why = "" if at_risk else (" (networkd's wipe is off here; netd-hook still puts back the ENI table routes"
                              " the kernel flushes when networkd takes an ENI's address away)")

    out.append(_network_finding(facts))
    if links is None and status is not None and running:  # a dead daemon's links are history
        links = status.networkd.links
    if links is not None:
        out.append(_links_finding(links))
    unmanaged = _unmanaged_finding(facts, rules)
    if unmanaged is not None:
        out.append(unmanaged)
    cured = _cured_finding(facts, rules, routes, running, links)
    if cured is not None:
        out.append(cured)

    out.extend(guard_findings(facts.unit, probe, snapshot_mtime, now, stale_after, need, why))
    return out
