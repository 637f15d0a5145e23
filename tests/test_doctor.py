"""netd-hook doctor: networkd's configuration read the way networkd reads it, and the verdicts.

Config trees live in tmp_path (doctor's `root`). The lab test at the end checks doctor's reading
of networkd.conf against the real systemd-networkd: whether it wipes a foreign rule or not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from netd_hook.adapters import status, store
from netd_hook.commands import doctor, render
from netd_hook.commands.doctor import Severity
from netd_hook.core.status_doc import Networkd, Protected, Status

NOW = 1_700_000_000.0
ETC_D = "etc/systemd/networkd.conf.d"
RUN_D = "run/systemd/networkd.conf.d"
USR_D = "usr/lib/systemd/networkd.conf.d"
RULES = "networkd.ManageForeignRoutingPolicyRules"
ROUTES = "networkd.ManageForeignRoutes"


def put(root: Path, rel: str, text: str | bytes, mode: int = 0o644) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    p.chmod(mode)
    return p


def link(root: Path, rel: str, target: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(target)


def by_check(findings: list[doctor.Finding], check: str) -> list[doctor.Finding]:
    return [f for f in findings if f.check == check]


def one(findings: list[doctor.Finding], check: str) -> doctor.Finding:
    found = by_check(findings, check)
    assert len(found) == 1, (check, findings)
    return found[0]


def settings(root: Path, version: int | None = 252) -> tuple[doctor.Setting, doctor.Setting]:
    facts = doctor.read_tree(root, version)
    return doctor.effective(facts.conf_files, doctor.RULES_KEY), doctor.effective(facts.conf_files, doctor.ROUTES_KEY)


FRESH = Status(
    pid=4242, started_at=NOW - 3 * 3600, updated_at=NOW - 12,
    networkd=Networkd(owner=":1.7", pid=321, generation=3, settled=True,
                      links={"eth0": "configured", "eth1": "configured", "eni0a1b2c3d4e5": "unmanaged",
                             "lo": "unmanaged"}),
    protected=Protected(rules=27, routes=2),
)


def fresh_status(**over: Any) -> Status:
    return replace(FRESH, **over)


def installed(root: Path) -> None:
    put(root, "usr/lib/systemd/system/netd-hook.service", "[Service]\nExecStart=/usr/bin/netd-hook run\n")
    link(root, "etc/systemd/system/multi-user.target.wants/netd-hook.service",
         "/usr/lib/systemd/system/netd-hook.service")
    put(root, "usr/lib/systemd/system/systemd-networkd.service.d/netd-hook.conf", "[Unit]\n")


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("raw", "want"), [
    ("yes", True), ("YES", True), ("y", True), ("True", True), ("t", True), ("on", True), ("1", True),
    ("no", False), ("N", False), ("false", False), ("f", False), ("Off", False), ("0", False),
    ("", None), ("2", None), ("nope", None), ("enable", None), ("yes please", None),
])
def test_parse_boolean(raw: str, want: bool | None) -> None:
    assert doctor.parse_boolean(raw) is want


def test_parse_ini_comments_sections_continuations() -> None:
    data = (b"\xef\xbb\xbf# comment\r\n"
            b"Outside=1\n"
            b"[Network]\n"
            b"  ; also a comment\n"
            b"ManageForeignRoutes = no \n"
            b"NoEquals\n"
            b"=novalue\n"
            b"[DHCPv4]\n"
            b"ManageForeignRoutes=yes\n"
            b"[Network]\n"
            b"ManageForeignRoutingPolicyRules=\\\n"
            b"# dropped, even inside a continuation\n"
            b"  yes\n"
            b"Key=a\\\\\n")
    p = doctor.parse_ini(data)
    assert p.error == ""
    assert [(a.section, a.key, a.value, a.line) for a in p.assignments] == [
        ("Network", "ManageForeignRoutes", "no", 5),
        ("DHCPv4", "ManageForeignRoutes", "yes", 9),
        ("Network", "ManageForeignRoutingPolicyRules", "yes", 13),
        ("Network", "Key", "a\\\\", 14),
    ]


def test_parse_ini_fatal_errors_stop_at_the_line() -> None:
    p = doctor.parse_ini(b"[Network]\nManageForeignRoutes=no\n[Network\nManageForeignRoutes=yes\n")
    assert (p.error, p.error_line) == ("invalid section header '[Network'", 3)
    assert [a.value for a in p.assignments] == ["no"]
    p = doctor.parse_ini(b"[Network]\nFoo=\xff\nManageForeignRoutes=no\n")
    assert (p.error, p.error_line, p.assignments) == ("line is not valid UTF-8", 2, ())


def test_parse_ini_section_names_are_verbatim_and_case_sensitive() -> None:
    p = doctor.parse_ini(b"[ Network ]\nManageForeignRoutes=no\n[network]\nManageForeignRoutes=no\n")
    assert [a.section for a in p.assignments] == [" Network ", "network"]


# ---------------------------------------------------------------------------- version


REAL_252 = ("systemd 252 (252.38-1~deb12u1)\n+PAM +AUDIT +SELINUX +APPARMOR +IMA +SMACK +SECCOMP +GCRYPT -GNUTLS "
            "+OPENSSL +ACL +BLKID +CURL +ELFUTILS +FIDO2 +IDN2 -IDN +IPTC +KMOD +LIBCRYPTSETUP +LIBFDISK +PCRE2 "
            "-PWQUALITY +P11KIT +QRENCODE +TPM2 +BZIP2 +LZ4 +XZ +ZLIB +ZSTD -BPF_FRAMEWORK -XKBCOMMON +UTMP "
            "+SYSVINIT default-hierarchy=unified\n")
REAL_249 = ("systemd 249 (249.11-0ubuntu3.12)\n+PAM +AUDIT +SELINUX +APPARMOR +IMA +SMACK +SECCOMP +GCRYPT "
            "+GNUTLS +OPENSSL +ACL +BLKID +CURL +ELFUTILS +FIDO2 +IDN2 -IDN +IPTC +KMOD +LIBCRYPTSETUP +LIBFDISK "
            "+PCRE2 -PWQUALITY -P11KIT -QRENCODE +BZIP2 +LZ4 +XZ +ZLIB +ZSTD -XKBCOMMON +UTMP +SYSVINIT "
            "default-hierarchy=unified\n")


def test_parse_systemd_version() -> None:
    assert doctor.parse_systemd_version(REAL_252) == 252
    assert doctor.parse_systemd_version(REAL_249) == 249
    assert doctor.parse_systemd_version("systemd 256.4 (256.4-1)\n") == 256
    assert doctor.parse_systemd_version("networkctl: command not found\n") is None
    assert doctor.parse_systemd_version("") is None


@pytest.mark.skipif(shutil.which("networkctl") is None, reason="networkctl not installed")
def test_systemd_version_from_this_machine() -> None:
    out = subprocess.run(["networkctl", "--version"], capture_output=True, text=True, check=True).stdout
    want = int(out.split()[1])
    assert doctor.systemd_version() == want
    assert want >= 249


def test_systemd_version_without_networkctl() -> None:
    assert doctor.systemd_version("/nonexistent/networkctl") is None


# ---------------------------------------------------------------------------- networkd.conf precedence


def test_default_tree_is_at_risk(tmp_path: Path) -> None:
    rules, routes = settings(tmp_path)
    assert (rules.value, rules.source) == (True, None)
    assert (routes.value, routes.source) == (True, None)
    findings = doctor.assess(doctor.read_tree(tmp_path, 252), None, None, NOW)
    f = one(findings, RULES)
    assert f.severity is Severity.CRITICAL
    assert f.summary.startswith("ManageForeignRoutingPolicyRules=yes (networkd's default) and netd-hook is not running")
    assert one(findings, ROUTES).severity is Severity.CRITICAL
    assert doctor.exit_code(findings) == 1


def test_main_file_sets_no(tmp_path: Path) -> None:
    put(tmp_path, "etc/systemd/networkd.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    rules, routes = settings(tmp_path)
    assert (rules.value, rules.source) == (False, "/etc/systemd/networkd.conf:2")
    assert (routes.value, routes.source) == (True, None)
    f = one(doctor.assess(doctor.read_tree(tmp_path, 252), None, None, NOW), RULES)
    assert f.severity is Severity.OK
    assert f.summary == ("ManageForeignRoutingPolicyRules=no (set in /etc/systemd/networkd.conf:2): "
                         "networkd leaves foreign policy rules alone")


def test_dropin_overrides_main_file(tmp_path: Path) -> None:
    put(tmp_path, "etc/systemd/networkd.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    put(tmp_path, f"{USR_D}/10-vendor.conf", "[Network]\nManageForeignRoutingPolicyRules=yes\n")
    rules, _ = settings(tmp_path)
    assert (rules.value, rules.source) == (True, "/usr/lib/systemd/networkd.conf.d/10-vendor.conf:2")


def test_later_dropin_wins_whatever_its_directory(tmp_path: Path) -> None:
    put(tmp_path, f"{ETC_D}/50-admin.conf", "[Network]\nManageForeignRoutingPolicyRules=no\nManageForeignRoutes=no\n")
    put(tmp_path, f"{USR_D}/90-vendor.conf", "[Network]\nManageForeignRoutingPolicyRules=yes\n")
    put(tmp_path, f"{RUN_D}/60-run.conf", "[Network]\nManageForeignRoutes=yes\n")
    facts = doctor.read_tree(tmp_path, 252)
    assert [f.path for f in facts.conf_files] == [
        "/etc/systemd/networkd.conf.d/50-admin.conf",
        "/run/systemd/networkd.conf.d/60-run.conf",
        "/usr/lib/systemd/networkd.conf.d/90-vendor.conf",
    ]
    rules, routes = settings(tmp_path)
    assert rules.source == "/usr/lib/systemd/networkd.conf.d/90-vendor.conf:2" and rules.value is True
    assert routes.source == "/run/systemd/networkd.conf.d/60-run.conf:2" and routes.value is True
    # and the cure's drop-in is named to sort after 90-vendor.conf
    fix = one(doctor.assess(facts, None, None, NOW), RULES).fix
    assert fix is not None
    assert "> /etc/systemd/networkd.conf.d/99-netd-hook.conf" in fix


def test_etc_dropin_masks_same_named_usr_lib_one(tmp_path: Path) -> None:
    put(tmp_path, f"{USR_D}/50-vendor.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    put(tmp_path, f"{ETC_D}/50-vendor.conf", "[Network]\nManageForeignRoutes=no\n")
    facts = doctor.read_tree(tmp_path, 252)
    assert [(f.path, f.state, f.shadows) for f in facts.conf_files] == [
        ("/etc/systemd/networkd.conf.d/50-vendor.conf", "read", ("/usr/lib/systemd/networkd.conf.d/50-vendor.conf",)),
    ]
    rules, routes = settings(tmp_path)
    assert (rules.value, routes.value) == (True, False)


def test_dev_null_symlink_and_empty_file_mask(tmp_path: Path) -> None:
    put(tmp_path, f"{USR_D}/50-vendor.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    put(tmp_path, f"{USR_D}/60-vendor.conf", "[Network]\nManageForeignRoutes=no\n")
    link(tmp_path, f"{ETC_D}/50-vendor.conf", "/dev/null")
    put(tmp_path, f"{RUN_D}/60-vendor.conf", "")
    facts = doctor.read_tree(tmp_path, 252)
    assert [(f.path, f.state) for f in facts.conf_files] == [
        ("/etc/systemd/networkd.conf.d/50-vendor.conf", "masked"),
        ("/run/systemd/networkd.conf.d/60-vendor.conf", "empty"),
    ]
    rules, routes = settings(tmp_path)
    assert (rules.value, rules.source, routes.value, routes.source) == (True, None, True, None)


def test_dangling_symlink_is_skipped_but_masks(tmp_path: Path) -> None:
    put(tmp_path, f"{USR_D}/50-a.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    link(tmp_path, f"{ETC_D}/50-a.conf", "/nonexistent.conf")
    facts = doctor.read_tree(tmp_path, 252)
    assert [(f.path, f.state) for f in facts.conf_files] == [("/etc/systemd/networkd.conf.d/50-a.conf", "dangling")]
    assert doctor.effective(facts.conf_files, doctor.RULES_KEY).value is True


def test_absolute_symlinks_resolve_inside_root(tmp_path: Path) -> None:
    put(tmp_path, "opt/site/no.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    link(tmp_path, f"{ETC_D}/50-site.conf", "/opt/site/no.conf")
    # /lib -> usr/lib as on merged-/usr systems: listed once, not as a lower-priority copy
    (tmp_path / "usr/lib/systemd/networkd.conf.d").mkdir(parents=True)
    put(tmp_path, f"{USR_D}/70-x.conf", "[Network]\nManageForeignRoutes=no\n")
    link(tmp_path, "lib", "usr/lib")
    facts = doctor.read_tree(tmp_path, 252)
    assert [(f.path, f.shadows) for f in facts.conf_files] == [
        ("/etc/systemd/networkd.conf.d/50-site.conf", ()),
        ("/usr/lib/systemd/networkd.conf.d/70-x.conf", ()),
    ]
    rules, routes = settings(tmp_path)
    assert (rules.value, rules.source) == (False, "/etc/systemd/networkd.conf.d/50-site.conf:2")
    assert routes.value is False


def test_split_usr_lib_dir_is_read_before_256(tmp_path: Path) -> None:
    put(tmp_path, "lib/systemd/networkd.conf.d/50-a.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    assert settings(tmp_path, 252)[0].value is False
    assert settings(tmp_path, 256)[0].value is True


def test_hidden_files_and_other_suffixes_are_ignored(tmp_path: Path) -> None:
    put(tmp_path, f"{ETC_D}/.50-hidden.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    put(tmp_path, f"{ETC_D}/50-a.conf.bak", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    put(tmp_path, f"{ETC_D}/50-a.conf~", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    facts = doctor.read_tree(tmp_path, 252)
    assert facts.conf_files == ()
    assert doctor.effective(facts.conf_files, doctor.RULES_KEY).value is True


def test_invalid_boolean_keeps_the_earlier_value_and_is_reported(tmp_path: Path) -> None:
    put(tmp_path, f"{ETC_D}/50-a.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    put(tmp_path, f"{ETC_D}/60-b.conf", "[Network]\n\nManageForeignRoutingPolicyRules=nein\nManageForeignRoutes=\n")
    facts = doctor.read_tree(tmp_path, 252)
    rules = doctor.effective(facts.conf_files, doctor.RULES_KEY)
    assert (rules.value, rules.source) == (False, "/etc/systemd/networkd.conf.d/50-a.conf:2")
    assert rules.invalid == (("/etc/systemd/networkd.conf.d/60-b.conf:3", "nein"),)
    routes = doctor.effective(facts.conf_files, doctor.ROUTES_KEY)
    assert (routes.value, routes.source) == (True, None)
    assert routes.invalid == (("/etc/systemd/networkd.conf.d/60-b.conf:4", ""),)
    bad = by_check(doctor.assess(facts, None, None, NOW), "networkd.conf.invalid-boolean")
    assert [(f.severity, f.summary) for f in bad] == [
        (Severity.WARNING, "/etc/systemd/networkd.conf.d/60-b.conf:3: ManageForeignRoutingPolicyRules=nein is not a "
                           "boolean: networkd ignores this line"),
        (Severity.WARNING, "/etc/systemd/networkd.conf.d/60-b.conf:4: ManageForeignRoutes= is not a boolean: "
                           "networkd ignores this line"),
    ]


def test_comments_other_sections_and_wrong_case_are_ignored(tmp_path: Path) -> None:
    put(tmp_path, "etc/systemd/networkd.conf",
        "#[Network]\n#ManageForeignRoutingPolicyRules=no\n"
        "[DHCPv4]\nManageForeignRoutingPolicyRules=no\n"
        "[X-Custom]\nManageForeignRoutes=no\n"
        "[network]\nManageForeignRoutes=no\n"
        "[ Network ]\nManageForeignRoutes=no\n"
        "[Network]\n; ManageForeignRoutes=no\nmanageforeignroutingpolicyrules=no\n"
        "  ManageForeignRoutes  =  no  # not a comment: part of the value\n")
    rules, routes = settings(tmp_path)
    assert (rules.value, rules.source) == (True, None)
    assert (routes.value, routes.source) == (True, None)
    assert routes.invalid == (("/etc/systemd/networkd.conf:14", "no  # not a comment: part of the value"),)


def test_a_fatal_error_stops_networkd_reading(tmp_path: Path) -> None:
    put(tmp_path, f"{ETC_D}/40-broken.conf", "[Network]\nManageForeignRoutes=no\n[Network\n")
    put(tmp_path, f"{ETC_D}/80-netd-hook.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    facts = doctor.read_tree(tmp_path, 252)
    assert [(f.path, f.state, f.error_line) for f in facts.conf_files] == [
        ("/etc/systemd/networkd.conf.d/40-broken.conf", "error", 3),
        ("/etc/systemd/networkd.conf.d/80-netd-hook.conf", "not-read", 0),
    ]
    rules, routes = settings(tmp_path)
    assert (rules.value, routes.value) == (True, False)  # what was parsed before the error stays
    findings = doctor.assess(facts, None, None, NOW)
    err = one(findings, "networkd.conf.error")
    assert err.severity is Severity.WARNING
    assert err.summary == ("networkd stops reading its configuration at /etc/systemd/networkd.conf.d/40-broken.conf:3 "
                           "(invalid section header '[Network'): 1 later file is ignored")
    rf = one(findings, RULES).fix
    assert rf is not None and "first fix /etc/systemd/networkd.conf.d/40-broken.conf" in rf


def test_file_networkd_cannot_read_stops_it(tmp_path: Path) -> None:
    uid = os.getuid()
    put(tmp_path, "etc/passwd", f"root:x:0:0::/root:/bin/sh\nsystemd-network:x:{uid + 1}:{uid + 1}::/:/bin/false\n")
    put(tmp_path, "etc/group", "root:x:0:\n")
    put(tmp_path, f"{ETC_D}/80-netd-hook.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n", mode=0o600)
    put(tmp_path, f"{ETC_D}/90-ok.conf", "[Network]\nManageForeignRoutes=no\n")
    facts = doctor.read_tree(tmp_path, 252)
    assert [f.state for f in facts.conf_files] == ["error", "not-read"]
    assert facts.conf_files[0].error.startswith("not readable by user systemd-network (mode 0600")
    rules, routes = settings(tmp_path)
    assert (rules.value, routes.value) == (True, True)
    err = one(doctor.assess(facts, None, None, NOW), "networkd.conf.error")
    assert err.fix == "chmod 0644 /etc/systemd/networkd.conf.d/80-netd-hook.conf\nsystemctl restart systemd-networkd"


def test_file_owned_by_systemd_network_is_readable(tmp_path: Path) -> None:
    uid = os.getuid()
    put(tmp_path, "etc/passwd", f"systemd-network:x:{uid}:{os.getgid()}::/:/bin/false\n")
    put(tmp_path, f"{ETC_D}/80-netd-hook.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n", mode=0o600)
    assert settings(tmp_path)[0].value is False


def test_directory_named_conf_stops_networkd(tmp_path: Path) -> None:
    (tmp_path / ETC_D / "40-dir.conf").mkdir(parents=True)
    put(tmp_path, f"{ETC_D}/50-a.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    facts = doctor.read_tree(tmp_path, 252)
    assert [(f.state, f.error) for f in facts.conf_files] == [("error", "is a directory"), ("not-read", "")]


def test_main_file_search_depends_on_version(tmp_path: Path) -> None:
    put(tmp_path, "usr/lib/systemd/networkd.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    old = doctor.read_tree(tmp_path, 252)
    assert old.conf_files == ()
    assert old.unused_main == ("/usr/lib/systemd/networkd.conf",)
    new = doctor.read_tree(tmp_path, 256)
    assert [(f.path, f.role) for f in new.conf_files] == [("/usr/lib/systemd/networkd.conf", "main")]
    assert doctor.effective(new.conf_files, doctor.RULES_KEY).value is False
    put(tmp_path, "etc/systemd/networkd.conf", "[Network]\n")  # the first one found is the only one read
    assert [f.path for f in doctor.read_tree(tmp_path, 256).conf_files] == ["/etc/systemd/networkd.conf"]


def test_old_systemd_is_info_only(tmp_path: Path) -> None:
    findings = doctor.assess(doctor.read_tree(tmp_path, 245), None, None, NOW)
    assert one(findings, RULES).severity is Severity.INFO
    assert one(findings, ROUTES).severity is Severity.INFO
    assert one(findings, "systemd.version").summary == "systemd 245: older than 249"
    assert one(findings, "netd-hook.installed").severity is Severity.INFO  # not needed there


def test_unknown_version_assumes_the_wipe(tmp_path: Path) -> None:
    findings = doctor.assess(doctor.read_tree(tmp_path, None), None, None, NOW)
    assert one(findings, RULES).severity is Severity.CRITICAL
    assert one(findings, "systemd.version").severity is Severity.INFO


# ---------------------------------------------------------------------------- .network files


def test_network_files_with_masking_dropins_and_matches(tmp_path: Path) -> None:
    put(tmp_path, "run/systemd/network/10-netplan-eth0.network",
        "[Match]\nPermanentMACAddress=0a:1b:2c:3d:4e:5f\nName=eth0\n\n[Network]\nDHCP=ipv4\n")
    put(tmp_path, "run/systemd/network/10-netplan-eth0.network.d/override.conf", "[Match]\nDriver=ena\n")
    put(tmp_path, "usr/lib/systemd/network/80-container-vb.network", "[Match]\nName=vb-*\nDriver=veth\n")
    link(tmp_path, "etc/systemd/network/80-container-vb.network", "/dev/null")
    put(tmp_path, "etc/systemd/network/20-eni.network", "[Match]\nName=eni*\n[Link]\nUnmanaged=yes\n")
    put(tmp_path, "etc/systemd/network/30-nomatch.network", "[Network]\nDHCP=yes\n")
    put(tmp_path, "etc/systemd/network/README", "not a .network file\n")
    facts = doctor.read_tree(tmp_path, 252)
    assert [(n.path, n.state, n.match, n.unmanaged, n.dropins, n.shadows) for n in facts.network_files] == [
        ("/run/systemd/network/10-netplan-eth0.network", "read",
         ("PermanentMACAddress=0a:1b:2c:3d:4e:5f", "Name=eth0", "Driver=ena"), False,
         ("/run/systemd/network/10-netplan-eth0.network.d/override.conf",), ()),
        ("/etc/systemd/network/20-eni.network", "read", ("Name=eni*",), True, (), ()),
        ("/etc/systemd/network/30-nomatch.network", "read", (), False, (), ()),
        ("/etc/systemd/network/80-container-vb.network", "masked", (), False, (),
         ("/usr/lib/systemd/network/80-container-vb.network",)),
    ]
    f = one(doctor.assess(facts, None, None, NOW), "networkd.network-files")
    assert f.severity is Severity.INFO
    assert f.summary == ("networkd has 3 .network files: 10-netplan-eth0.network, 20-eni.network, "
                         "30-nomatch.network")
    assert "/etc/systemd/network/30-nomatch.network: no [Match]: networkd ignores this file" in f.detail
    assert "/etc/systemd/network/20-eni.network: Name=eni* Unmanaged=yes" in f.detail
    assert "(netplan)" in f.detail


def test_no_network_files(tmp_path: Path) -> None:
    f = one(doctor.assess(doctor.read_tree(tmp_path, 252), None, None, NOW), "networkd.network-files")
    assert f.summary == "no .network files: networkd manages no link"


def test_live_links_from_status(tmp_path: Path) -> None:
    probe = status.Probe(True, fresh_status())
    f = one(doctor.assess(doctor.read_tree(tmp_path, 252), probe, NOW - 30, NOW), "networkd.links")
    assert f.summary == "networkd manages 2 links: eth0 (configured), eth1 (configured); 2 unmanaged"
    assert f.detail == "From netd-hook's status. Unmanaged: eni0a1b2c3d4e5, lo."
    g = one(doctor.assess(doctor.read_tree(tmp_path, 252), None, None, NOW, links={"eth0": "configuring"}),
            "networkd.links")
    assert g.summary == "networkd manages 1 link: eth0 (configuring); 0 unmanaged"


# ---------------------------------------------------------------------------- netd-hook itself


def test_installed_enabled_dropin_detection(tmp_path: Path) -> None:
    facts = doctor.read_tree(tmp_path, 252)
    assert facts.unit == doctor.UnitFacts(None, False, (), None)
    installed(tmp_path)
    facts = doctor.read_tree(tmp_path, 252)
    assert facts.unit == doctor.UnitFacts(
        "/usr/lib/systemd/system/netd-hook.service", False,
        ("/etc/systemd/system/multi-user.target.wants/netd-hook.service",),
        "/usr/lib/systemd/system/systemd-networkd.service.d/netd-hook.conf")
    findings = doctor.assess(facts, None, None, NOW)
    assert [one(findings, c).severity for c in ("netd-hook.installed", "netd-hook.enabled",
                                                "netd-hook.networkd-dropin")] == [Severity.OK] * 3


def test_not_enabled_and_dropin_missing_are_warnings_when_at_risk(tmp_path: Path) -> None:
    put(tmp_path, "etc/systemd/system/netd-hook.service", "[Service]\n")
    findings = doctor.assess(doctor.read_tree(tmp_path, 252), status.Probe(True, fresh_status()), NOW - 5, NOW)
    en = one(findings, "netd-hook.enabled")
    assert (en.severity, en.fix) == (Severity.WARNING, "systemctl enable --now netd-hook")
    assert one(findings, "netd-hook.networkd-dropin").severity is Severity.WARNING
    # cured node: the same gaps are only informational
    put(tmp_path, f"{ETC_D}/80-netd-hook.conf", doctor.CURE_BODY)
    findings = doctor.assess(doctor.read_tree(tmp_path, 252), status.Probe(True, fresh_status()), NOW - 5, NOW)
    assert one(findings, "netd-hook.enabled").severity is Severity.INFO
    assert doctor.exit_code(findings) == 0


def test_masked_unit(tmp_path: Path) -> None:
    put(tmp_path, "usr/lib/systemd/system/netd-hook.service", "[Service]\n")
    link(tmp_path, "etc/systemd/system/netd-hook.service", "/dev/null")
    findings = doctor.assess(doctor.read_tree(tmp_path, 252), None, None, NOW)
    f = one(findings, "netd-hook.installed")
    assert f.severity is Severity.WARNING
    assert f.summary == "netd-hook.service is masked (/etc/systemd/system/netd-hook.service)"
    assert f.fix == "systemctl unmask netd-hook && systemctl enable --now netd-hook"
    rules_fix = one(findings, RULES).fix
    assert rules_fix is not None and rules_fix.startswith("Guard now: systemctl unmask netd-hook")


def test_running_guard_downgrades_the_risk_to_warning(tmp_path: Path) -> None:
    installed(tmp_path)
    findings = doctor.assess(doctor.read_tree(tmp_path, 252), status.Probe(True, fresh_status()), NOW - 30, NOW)
    f = one(findings, RULES)
    assert f.severity is Severity.WARNING
    assert f.summary == ("ManageForeignRoutingPolicyRules=yes (networkd's default): networkd deletes the CNI's "
                         "policy rules; netd-hook is running and puts them back")
    assert one(findings, ROUTES).fix == ("the drop-in above (for ManageForeignRoutingPolicyRules) sets "
                                         "ManageForeignRoutes=no too")
    assert one(findings, "netd-hook.running").summary == "netd-hook is running (pid 4242, up 3h 0m)"
    assert one(findings, "netd-hook.status").summary == ("netd-hook's status is fresh (published 12s ago): "
                                                         "protecting 27 rules, 2 routes")
    assert one(findings, "netd-hook.snapshot").severity is Severity.OK
    assert doctor.exit_code(findings) == 1
    assert max(f.severity.rank for f in findings) == Severity.WARNING.rank


def test_stale_status_and_missing_snapshot(tmp_path: Path) -> None:
    installed(tmp_path)
    probe = status.Probe(True, fresh_status(updated_at=NOW - 423))
    findings = doctor.assess(doctor.read_tree(tmp_path, 252), probe, None, NOW, stale_after=120)
    st = one(findings, "netd-hook.status")
    assert st.severity is Severity.WARNING
    assert st.summary == "netd-hook's status is stale: last published 7m 3s ago (more than 120s)"
    assert st.fix == "journalctl -u netd-hook -n 50 --no-pager\nsystemctl restart netd-hook"
    snap = one(findings, "netd-hook.snapshot")
    assert (snap.severity, snap.summary) == (Severity.WARNING, "netd-hook is running but has no snapshot file")
    # just inside the window: fresh
    probe = status.Probe(True, fresh_status(updated_at=NOW - 120))
    assert one(doctor.assess(doctor.read_tree(tmp_path, 252), probe, NOW, NOW, stale_after=120),
               "netd-hook.status").severity is Severity.OK


def test_missing_entries_reported(tmp_path: Path) -> None:
    installed(tmp_path)
    findings = doctor.assess(doctor.read_tree(tmp_path, 252), status.Probe(True, fresh_status(missing=13)),
                             NOW - 1, NOW)
    f = one(findings, "netd-hook.missing")
    assert (f.severity, f.summary) == (Severity.WARNING, "13 protected entries are missing from the kernel right now")


def cured(root: Path) -> None:
    """Installed, and networkd's wipe turned off: a calm daemon leaves nothing to warn about."""
    installed(root)
    put(root, f"{ETC_D}/80-netd-hook.conf", doctor.CURE_BODY)


# The drop-ins kops and Amazon Linux 2023 write (kops nodeup disableManageForeignRoutes(); the EKS
# AL2023 AMI's templates/al2023/runtime/rootfs/etc/systemd/networkd.conf.d/80-release.conf; both
# wrote /usr/lib/systemd/networkd.conf.d/80-release.conf before), comments and blank lines included.
KOPS_BODY = ("\n# Do not clobber any routes or rules added by CNI.\n[Network]\nManageForeignRoutes=no\n"
             "ManageForeignRoutingPolicyRules=no\n")
AL2023_BODY = ("# Make networkd ignore foreign settings, otherwise it may unexpectedly delete IP\n"
               "# rules and routes added by CNI.\n[Network]\nManageForeignRoutes=no\n"
               "ManageForeignRoutingPolicyRules=no\n")
CURED_252 = ("cured: networkd deletes none of the CNI's rules or routes; netd-hook still guards the ENI table routes "
             "the kernel flushes when networkd re-adds an ENI's address (systemd 252: networkctl reconfigure, "
             "networkd restart, carrier loss)")


@pytest.mark.parametrize(("rel", "body"), [
    ("etc/systemd/networkd.conf.d/80-release.conf", AL2023_BODY),
    ("usr/lib/systemd/networkd.conf.d/40-disable-manage-foreign-routes.conf", KOPS_BODY),
    ("usr/lib/systemd/networkd.conf.d/80-release.conf", KOPS_BODY),
], ids=["al2023", "kops", "kops-before"])
def test_the_kops_and_al2023_drop_ins_make_the_node_cured(tmp_path: Path, rel: str, body: str) -> None:
    installed(tmp_path)
    put(tmp_path, rel, body)
    facts = doctor.read_tree(tmp_path, 252)
    findings = doctor.assess(facts, status.Probe(True, fresh_status()), NOW - 30, NOW)
    f = one(findings, "networkd.cured")
    assert (f.severity, f.summary) == (Severity.OK, CURED_252)
    assert f.detail.startswith(f"ManageForeignRoutingPolicyRules=no in /{rel}:5; ManageForeignRoutes=no in /{rel}:4. ")
    assert "Links networkd manages now (from netd-hook's status): eth0, eth1." in f.detail
    assert f.detail.endswith("netd-hook re-reads the kernel once networkd settles and puts them back.")
    assert doctor.exit_code(findings) == 0
    assert doctor.render_text(findings).splitlines()[-1] == (
        "2 info, 11 ok: cured: networkd deletes none of the CNI's rules or routes; netd-hook guards the ENI table "
        "routes the kernel flushes")
    doc = doctor.to_json(findings, facts)
    assert doc["cured"] is True and doc["exit_code"] == 0


@pytest.mark.parametrize(("version", "drops"), [
    (249, "systemd 249: networkctl reconfigure, carrier loss"),
    (252, "systemd 252: networkctl reconfigure, networkd restart, carrier loss"),
    (257, "systemd 257: carrier loss"),
    (255, "networkctl reconfigure, networkd restart or carrier loss, depending on the systemd version"),
    (None, "networkctl reconfigure, networkd restart or carrier loss, depending on the systemd version"),
])
def test_what_a_cured_node_still_loses_depends_on_networkds_version(tmp_path: Path, version: int | None,
                                                                    drops: str) -> None:
    """Measured on the booted nodes (tests/test_booted_cured.py): the moments networkd takes a
    managed ENI's address away, when the kernel flushes the ENI's table."""
    uncured = tmp_path / "uncured"
    installed(uncured)
    routes = one(doctor.assess(doctor.read_tree(uncured, version), status.Probe(True, fresh_status()), NOW - 30, NOW),
                 ROUTES)
    assert f"the kernel flushes them: {drops})" in routes.detail
    cured(tmp_path)
    f = one(doctor.assess(doctor.read_tree(tmp_path, version), status.Probe(True, fresh_status()), NOW - 30, NOW),
            "networkd.cured")
    assert f.summary.endswith(f"when networkd re-adds an ENI's address ({drops})")


def test_a_cured_node_without_netd_hook_says_nothing_puts_the_routes_back(tmp_path: Path) -> None:
    cured(tmp_path)
    findings = doctor.assess(doctor.read_tree(tmp_path, 249), None, None, NOW)
    f = one(findings, "networkd.cured")
    assert f.severity is Severity.INFO
    assert f.summary == ("cured: networkd deletes none of the CNI's rules or routes, but nothing puts back the ENI "
                         "table routes the kernel flushes when networkd re-adds an ENI's address (systemd 249: "
                         "networkctl reconfigure, carrier loss): netd-hook is not running")
    assert "Links networkd manages now" not in f.detail  # a dead daemon's links are history
    assert f.detail.endswith("they stay gone until the CNI re-creates them (aws-node restarted).")
    assert doctor.exit_code(findings) == 0
    assert doctor.render_text(findings).splitlines()[-1].endswith(
        ": cured: networkd deletes none of the CNI's rules or routes; nothing guards the ENI table routes the "
        "kernel flushes (netd-hook is not running)")


def test_half_a_cure_is_no_cure(tmp_path: Path) -> None:
    installed(tmp_path)
    probe = status.Probe(True, fresh_status())
    for body in ("[Network]\nManageForeignRoutingPolicyRules=no\n", "[Network]\nManageForeignRoutes=no\n",
                 "[Network]\nManageForeignRoutingPolicyRules=no\nManageForeignRoutes=no\nManageForeignRoutes=yes\n"):
        put(tmp_path, f"{ETC_D}/50-a.conf", body)
        facts = doctor.read_tree(tmp_path, 252)
        findings = doctor.assess(facts, probe, NOW - 30, NOW)
        assert not by_check(findings, "networkd.cured"), body
        assert doctor.to_json(findings, facts)["cured"] is False
        assert "cured" not in doctor.render_text(findings).splitlines()[-1]
    put(tmp_path, f"{ETC_D}/50-a.conf", doctor.CURE_BODY)
    assert by_check(doctor.assess(doctor.read_tree(tmp_path, 252), probe, NOW - 30, NOW), "networkd.cured")
    # before 249 there is no rule wipe to cure
    assert not by_check(doctor.assess(doctor.read_tree(tmp_path, 248), probe, NOW - 30, NOW), "networkd.cured")


def ubuntu_layout(root: Path) -> None:
    """Ubuntu's common layout: the primary managed (netplan's file), the secondaries Unmanaged=yes."""
    put(root, "run/systemd/network/10-netplan-eth0.network", "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n")
    for i in (1, 2):
        put(root, f"etc/systemd/network/10-eth{i}.network", f"[Match]\nName=eth{i}\n\n[Link]\nUnmanaged=yes\n")


def test_unmanaged_secondaries_keep_their_routes_but_not_the_rules(tmp_path: Path) -> None:
    installed(tmp_path)
    ubuntu_layout(tmp_path)
    findings = doctor.assess(doctor.read_tree(tmp_path, 249), status.Probe(True, fresh_status()), NOW - 30, NOW)
    f = one(findings, "networkd.unmanaged")
    assert f.severity is Severity.INFO
    assert f.summary == ("Unmanaged=yes in 10-eth1.network (Name=eth1), 10-eth2.network (Name=eth2): networkd leaves "
                         "those links' addresses and routes alone, but not the rules: the rule wipe is manager-wide")
    assert "amazon-vpc-cni-k8s #1600" in f.detail and "an ENI table on them survives" in f.detail
    assert one(findings, RULES).severity is Severity.WARNING  # still wiped, still guarded
    assert not by_check(findings, "networkd.cured")
    # cured as well: nothing left to say about Unmanaged=yes but that such a link keeps its table
    put(tmp_path, f"{ETC_D}/80-netd-hook.conf", doctor.CURE_BODY)
    findings = doctor.assess(doctor.read_tree(tmp_path, 249), status.Probe(True, fresh_status()), NOW - 30, NOW)
    assert not by_check(findings, "networkd.unmanaged")
    assert "(Unmanaged=yes) keeps its address and its table" in one(findings, "networkd.cured").detail


def test_a_stuck_link_is_a_warning_naming_it_and_since_when(tmp_path: Path) -> None:
    cured(tmp_path)
    calm = doctor.assess(doctor.read_tree(tmp_path, 252), status.Probe(True, fresh_status()), NOW - 30, NOW)
    assert not by_check(calm, "netd-hook.stuck") and doctor.exit_code(calm) == 0
    nd = replace(FRESH.networkd, links={**FRESH.networkd.links, "eth1": "configuring"}, stuck={"eth1": 42.0})
    findings = doctor.assess(doctor.read_tree(tmp_path, 252), status.Probe(True, fresh_status(networkd=nd)),
                             NOW - 30, NOW)
    f = one(findings, "netd-hook.stuck")
    since = NOW - 12 - 42  # busy for 42 s when the status was published, 12 s ago
    assert f.severity is Severity.WARNING
    assert f.summary == f"networkd link stuck: eth1 (configuring) busy since {render.when(since)} (54s)"
    assert "stuck_ms" in f.detail
    assert f.fix == "networkctl status eth1\njournalctl -u systemd-networkd -n 50 --no-pager"
    assert doctor.exit_code(findings) == 1


def test_a_degraded_daemon_is_a_warning_naming_the_reason(tmp_path: Path) -> None:
    cured(tmp_path)
    full = OSError(28, "No space left on device")
    spell = store.failed(None, store.Write.SNAPSHOT, "/var/lib/netd-hook/snapshot.json", full, 50.0, NOW - 300)
    degraded = store.degraded({store.Write.SNAPSHOT: spell}, 60.0, NOW - 12)  # as the daemon publishes it
    findings = doctor.assess(doctor.read_tree(tmp_path, 252), status.Probe(True, fresh_status(degraded=degraded)),
                             NOW - 400, NOW)
    f = one(findings, "netd-hook.degraded")
    assert f.severity is Severity.WARNING
    assert f.summary == (f"netd-hook is degraded since {render.when(NOW - 300)} (5m 0s): cannot save the snapshot to "
                         "/var/lib/netd-hook/snapshot.json: No space left on device (ENOSPC)")
    assert f.fix is not None
    assert f.fix.startswith("df -h /var/lib/netd-hook   # full?\nfindmnt -T /var/lib/netd-hook   #")
    assert doctor.exit_code(findings) == 1
    calm = doctor.assess(doctor.read_tree(tmp_path, 252), status.Probe(True, fresh_status(degraded=None)),
                         NOW - 30, NOW)
    assert not by_check(calm, "netd-hook.degraded")


def test_not_running_with_an_old_status(tmp_path: Path) -> None:
    installed(tmp_path)
    probe = status.Probe(False, fresh_status(updated_at=NOW - 7200))
    findings = doctor.assess(doctor.read_tree(tmp_path, 252), probe, NOW - 7300, NOW)
    f = one(findings, "netd-hook.running")
    assert f.severity is Severity.WARNING
    assert f.detail == "Nothing puts back what networkd deletes. Its last status was published 2h 0m ago."
    assert f.fix == ("systemctl start netd-hook\nsystemctl status netd-hook\n"
                     "journalctl -u netd-hook -n 50 --no-pager")
    assert one(findings, RULES).severity is Severity.CRITICAL
    assert one(findings, "netd-hook.snapshot").summary == ("netd-hook's snapshot was written 2h 1m ago: "
                                                           "netd-hook replays it when it starts")
    assert not by_check(findings, "networkd.links")  # a dead daemon's view of the links is history


def test_real_lock_and_published_status(tmp_path: Path) -> None:
    root, runtime, state = tmp_path / "root", tmp_path / "run", tmp_path / "state"
    root.mkdir()
    installed(root)
    put(root, f"{ETC_D}/80-netd-hook.conf", doctor.CURE_BODY)
    now = time.time()
    lines: list[str] = []
    facts, findings = doctor.run(root, runtime, state, now, 252, lines.append)
    assert one(findings, "netd-hook.running").severity is Severity.INFO  # cured: netd-hook optional
    lock = status.DaemonLock(runtime)
    try:
        status.publish(runtime, fresh_status(pid=os.getpid(), started_at=now - 60, updated_at=now - 1))
        state.mkdir()
        (state / "snapshot.json").write_text("{}\n")
        facts, findings = doctor.run(root, runtime, state, now, 252, lines.append)
    finally:
        lock.close()
    assert one(findings, "netd-hook.running").summary == f"netd-hook is running (pid {os.getpid()}, up 1m 0s)"
    assert one(findings, "netd-hook.status").severity is Severity.OK
    assert one(findings, "netd-hook.snapshot").severity is Severity.OK
    assert one(findings, RULES).severity is Severity.OK
    assert one(findings, ROUTES).severity is Severity.OK
    assert doctor.exit_code(findings) == 0
    assert lines[:4] == [
        "reading 1 drop-in (no networkd.conf)…",
        "reading 0 .network files…",
        "looking for netd-hook's units…",
        f"asking for netd-hook's status in {runtime}…",
    ]
    text = doctor.render_text(findings)
    assert text.splitlines()[-1] == ("2 info, 11 ok: cured: networkd deletes none of the CNI's rules or routes; "
                                     "netd-hook guards the ENI table routes the kernel flushes")
    assert "fix:" not in text
    # the lock released: the same files now say "not running"
    _, findings = doctor.run(root, runtime, state, now, 252, lambda _line: None)
    assert one(findings, "netd-hook.running").summary.startswith("netd-hook is not running")


# ---------------------------------------------------------------------------- output


def test_render_text_puts_the_worst_first_with_the_fix(tmp_path: Path) -> None:
    findings = doctor.assess(doctor.read_tree(tmp_path, 252), None, None, NOW)
    text = doctor.render_text(findings)
    lines = text.splitlines()
    assert lines[0] == ("[ CRIT ] ManageForeignRoutingPolicyRules=yes (networkd's default) and netd-hook is not "
                        "running: the next networkd reconfigure deletes the CNI's policy rules and nothing puts "
                        "them back")
    assert lines[1] == "         fix:"
    assert lines[2] == "           Guard now: install netd-hook, then: systemctl enable --now netd-hook"
    assert ("             printf '[Network]\\nManageForeignRoutingPolicyRules=no\\nManageForeignRoutes=no\\n' "
            "> /etc/systemd/networkd.conf.d/80-netd-hook.conf") in lines
    assert ("             systemctl restart systemd-networkd   # networkctl reload does not re-read "
            "networkd.conf") in lines
    assert lines[-1] == ("2 critical, 1 warning, 1 info, 2 ok: AT RISK: networkd can delete the CNI's rules or "
                         "routes and nothing puts them back")
    assert "Read order" not in text
    assert "Read order (later files win)" in doctor.render_text(findings, verbose=True)


def test_the_printed_cure_works(tmp_path: Path) -> None:
    """Run the fix's shell lines against the tree (paths rebased): doctor then says ok."""
    findings = doctor.assess(doctor.read_tree(tmp_path, 252), None, None, NOW)
    fix = one(findings, RULES).fix
    assert fix is not None
    cmds = [ln.strip() for ln in fix.splitlines() if ln.strip().startswith(("mkdir", "printf"))]
    assert len(cmds) == 2
    script = "\n".join(cmds).replace("/etc/", f"{tmp_path}/etc/")
    subprocess.run(["sh", "-ec", script], check=True)
    rules, routes = settings(tmp_path)
    assert (rules.value, routes.value) == (False, False)
    assert rules.source == "/etc/systemd/networkd.conf.d/80-netd-hook.conf:2"


def test_to_json(tmp_path: Path) -> None:
    put(tmp_path, f"{ETC_D}/50-a.conf", "[Network]\nManageForeignRoutes=no\n")
    facts = doctor.read_tree(tmp_path, 252)
    findings = doctor.assess(facts, None, None, NOW)
    doc = json.loads(json.dumps(doctor.to_json(findings, facts)))
    assert doc["format"] == "netd-hook/doctor" and doc["version"] == 1
    assert doc["exit_code"] == 1 and doc["systemd_version"] == 252
    assert doc["settings"] == {
        "ManageForeignRoutingPolicyRules": {"value": True, "source": None, "invalid": []},
        "ManageForeignRoutes": {"value": False, "source": "/etc/systemd/networkd.conf.d/50-a.conf:2", "invalid": []},
    }
    rules = next(f for f in doc["findings"] if f["check"] == RULES)
    assert rules["severity"] == "critical"
    assert doc["facts"]["conf_files"][0]["path"] == "/etc/systemd/networkd.conf.d/50-a.conf"
    assert doc["facts"]["conf_files"][0]["assignments"] == [
        {"section": "Network", "key": "ManageForeignRoutes", "value": "no", "line": 2}]


def test_exit_code() -> None:
    ok = doctor.Finding("a", Severity.OK, "fine")
    info = doctor.Finding("b", Severity.INFO, "fyi")
    warn = doctor.Finding("c", Severity.WARNING, "hm", fix="do x")
    crit = doctor.Finding("d", Severity.CRITICAL, "bad", fix="do y")
    assert doctor.exit_code([]) == 0
    assert doctor.exit_code([ok, info]) == 0
    assert doctor.exit_code([ok, warn]) == 1
    assert doctor.exit_code([crit]) == 1


# ---------------------------------------------------------------------------- against real networkd


LAB_CASES: dict[str, dict[str, tuple[str | bytes, int] | str]] = {
    # name -> drop-ins for /run/systemd/networkd.conf.d: (content, mode), or a symlink target
    "no": {"50-a.conf": ("[Network]\nManageForeignRoutingPolicyRules=no\n", 0o644)},
    "no-then-invalid": {"50-a.conf": ("[Network]\nManageForeignRoutingPolicyRules=no\n", 0o644),
                        "60-b.conf": ("[Network]\nManageForeignRoutingPolicyRules=nein\n", 0o644)},
    "broken-before": {"40-x.conf": ("[Network\n", 0o644),
                      "50-a.conf": ("[Network]\nManageForeignRoutingPolicyRules=no\n", 0o644)},
    "unreadable-before": {"40-x.conf": ("[Network]\n", 0o600),
                          "50-a.conf": ("[Network]\nManageForeignRoutingPolicyRules=no\n", 0o644)},
    "hidden": {".50-a.conf": ("[Network]\nManageForeignRoutingPolicyRules=no\n", 0o644)},
    "dangling-after": {"50-a.conf": ("[Network]\nManageForeignRoutingPolicyRules=no\n", 0o644),
                       "60-d.conf": "/nonexistent.conf"},
    "wrong-section": {"50-a.conf": ("[ Network ]\nManageForeignRoutingPolicyRules=no\n", 0o644)},
    "continued": {"50-a.conf": ("[Network]\nManageForeignRoutingPolicyRules=\\\n# c\n  NO\n", 0o644)},
}


@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root (netns, mounts)")
@pytest.mark.skipif(not os.path.exists("/lib/systemd/systemd-networkd"), reason="systemd-networkd not installed")
def test_doctor_agrees_with_real_networkd() -> None:
    from tests.lab import Lab

    version = doctor.systemd_version()
    verdicts: dict[str, tuple[bool, bool]] = {}
    with Lab() as lab:
        lab.add_eni(1)
        dropins = "/run/systemd/networkd.conf.d"
        for name, files in LAB_CASES.items():
            lab.stop_networkd()
            lab.run("rm", "-rf", dropins)
            lab.run("mkdir", "-p", dropins)
            for fname, spec in files.items():
                if isinstance(spec, str):
                    lab.run("ln", "-s", spec, f"{dropins}/{fname}")
                    continue
                text, mode = spec
                lab.write_file(f"{dropins}/{fname}", text if isinstance(text, str) else text.decode())
                os.chmod(lab.path(f"{dropins}/{fname}"), mode)
            facts = doctor.read_tree(Path(lab.path("/")), version)
            predicted = doctor.effective(facts.conf_files, doctor.RULES_KEY).value
            lab.start_networkd()
            lab.ip_batch(["rule add fwmark 0x80/0x80 lookup main priority 1024"], force=True)
            lab.reconfigure("eth1", wait=True)
            time.sleep(0.3)  # the wipe follows 'configured' within milliseconds
            wiped = 1024 not in lab.rule_prefs()
            verdicts[name] = (predicted, wiped)
    assert {n: p for n, (p, _) in verdicts.items()} == {n: w for n, (_, w) in verdicts.items()}
    assert verdicts == {"no": (False, False), "no-then-invalid": (False, False), "broken-before": (True, True),
                        "unreadable-before": (True, True), "hidden": (True, True),
                        "dangling-after": (False, False), "wrong-section": (True, True),
                        "continued": (False, False)}


def test_bulk_forgetting_while_networkd_was_busy_is_flagged(tmp_path: Path) -> None:
    from netd_hook.core.forgotten import BULK, Forget, Ledger

    installed(tmp_path)
    led = Ledger()
    led.networkd_busy(100.0)
    led.forgot(Forget(100.1, NOW - 20, 1, "systemd", BULK * 5, "pref 512 from all to 10.1.1.5/32 lookup 254"))
    findings = doctor.assess(doctor.read_tree(tmp_path, 252),
                             status.Probe(True, fresh_status(forgotten=led.status())), NOW - 30, NOW)
    f = one(findings, "netd-hook.forgotten")
    assert f.severity is Severity.WARNING
    assert f"{BULK * 5} protected entries were deleted by port 1 (systemd) while networkd was busy" in f.summary
    assert "Sockets=systemd-networkd.socket" in f.detail

    calm = Ledger()
    calm.forgot(Forget(100.0, NOW - 20, 9000, "aws-k8s-agent", 2, "pref 512 from all to 10.1.1.5/32 lookup 254"))
    findings = doctor.assess(doctor.read_tree(tmp_path, 252),
                             status.Probe(True, fresh_status(forgotten=calm.status())), NOW - 30, NOW)
    assert one(findings, "netd-hook.forgotten").severity is Severity.OK


def test_a_socket_activated_networkd_without_the_socket_for_netd_hook_is_critical(tmp_path: Path) -> None:
    installed(tmp_path)
    link(tmp_path, "etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
         "/lib/systemd/system/systemd-networkd.socket")
    facts = doctor.read_tree(tmp_path, 252)
    assert facts.unit.networkd_socket_enabled
    bad = doctor.assess(facts, status.Probe(True, fresh_status(networkd_sockets=())), NOW - 30, NOW)
    f = one(bad, "netd-hook.networkd-socket")
    assert f.severity is Severity.CRITICAL and "Sockets=systemd-networkd.socket" in f.detail
    good = doctor.assess(facts, status.Probe(True, fresh_status(networkd_sockets=(1,))), NOW - 30, NOW)
    assert not by_check(good, "netd-hook.networkd-socket")
    # networkd not socket-activated: its PID tells, no socket is needed
    plain = doctor.read_tree(tmp_path / "nothing", 252)
    assert not plain.unit.networkd_socket_enabled
