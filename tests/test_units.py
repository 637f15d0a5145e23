"""The systemd units as shipped: the hardening score, what the issue asks of them, and
`systemd-analyze verify`. The installed copies are verified again by tests/test_package.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "units" / "netd-hook.service"
DROPIN = ROOT / "units" / "systemd-networkd.service.d" / "netd-hook.conf"
NETWORKD_UNIT = Path("/lib/systemd/system/systemd-networkd.service")
SCORE_TARGET = 1.5

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (systemd)")


def unit_items(path: Path) -> dict[str, list[tuple[str, str]]]:
    """[section] -> [(key, value)] in file order; repeated keys stay repeated, as systemd reads them."""
    out: dict[str, list[tuple[str, str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, [])
            continue
        key, _, value = line.partition("=")
        out[section].append((key.strip(), value.strip()))
    return out


def values(path: Path, section: str, key: str) -> list[str]:
    """Every word of every assignment of `key` (an empty assignment resets, as in systemd)."""
    words: list[str] = []
    for k, v in unit_items(path).get(section, []):
        if k == key:
            words = words + v.split() if v else []
    return words


def single(path: Path, section: str, key: str) -> str:
    found = [v for k, v in unit_items(path).get(section, []) if k == key]
    assert len(found) == 1, f"{key}= in [{section}]: {found}"
    return found[0]


def analyze(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", **(env or {})})


@needs_analyze
def test_security_exposure_stays_at_or_under_the_target() -> None:
    r = analyze("security", "--offline=yes", str(SERVICE))
    m = re.search(r"Overall exposure level for netd-hook\.service: (\d+\.\d+)", r.stdout)
    assert m, f"no exposure line (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    score = float(m.group(1))
    left = "\n".join(line for line in r.stdout.splitlines() if line.startswith("✗"))
    assert score <= SCORE_TARGET, f"exposure {score} > {SCORE_TARGET}; what is still open:\n{left}"


def test_service_is_what_the_issue_asks_for() -> None:
    s = SERVICE
    assert single(s, "Service", "Type") == "notify"
    assert single(s, "Service", "Restart") == "on-failure"
    assert int(single(s, "Service", "WatchdogSec")) > 0
    assert single(s, "Service", "StateDirectory") == "netd-hook"
    assert single(s, "Service", "RuntimeDirectory") == "netd-hook"
    assert single(s, "Service", "ExecStart").split()[:2] == ["/usr/bin/netd-hook", "run"]
    assert {"dbus.service", "systemd-networkd.service"} <= set(values(s, "Unit", "After"))
    # before the kubelet, without pulling it in or depending on it
    assert "kubelet.service" in values(s, "Unit", "Before")
    for key in ("Requires", "Wants", "BindsTo", "Requisite", "PartOf"):
        assert "kubelet.service" not in values(s, "Unit", key)
    assert values(s, "Install", "WantedBy") == ["multi-user.target"]


def test_service_sandbox_leaves_only_what_the_daemon_needs() -> None:
    s = SERVICE
    assert values(s, "Service", "CapabilityBoundingSet") == ["CAP_NET_ADMIN"]
    assert values(s, "Service", "AmbientCapabilities") == ["CAP_NET_ADMIN"]
    assert single(s, "Service", "User") not in ("root", "0")
    assert sorted(values(s, "Service", "RestrictAddressFamilies")) == ["AF_NETLINK", "AF_UNIX"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectControlGroups", "RestrictNamespaces", "MemoryDenyWriteExecute"):
        assert single(s, "Service", key) == "yes", key
    assert single(s, "Service", "ProtectSystem") == "strict"
    assert values(s, "Service", "SystemCallFilter")[0] == "@system-service"
    # the host's network namespace is the point; networkd's /proc entry must stay visible
    assert not values(s, "Service", "PrivateNetwork")
    assert values(s, "Service", "ProtectProc") in ([], ["default"])
    assert "-/var/lib/prometheus/node-exporter" in values(s, "Service", "ReadWritePaths")
    # `netd-hook wait` (user systemd-network) reads the status file: the runtime directory and what
    # the daemon writes there stay world-readable
    assert single(s, "Service", "RuntimeDirectoryMode") == "0755"
    assert single(s, "Service", "UMask") == "0022"
    # this boot's id lives there (store.Boot): kept across restarts, gone with /run at reboot
    assert single(s, "Service", "RuntimeDirectoryPreserve") == "yes"


def test_dropin_waits_bounded_and_never_fails_networkd() -> None:
    items = unit_items(DROPIN)
    assert list(items) == ["Service"]
    assert items["Service"] == [("ExecStartPost", "-/usr/bin/netd-hook wait --timeout 20")]


def test_dropin_command_returns_at_once_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    """At boot networkd's ExecStartPost= runs before netd-hook.service can start (it is ordered after
    networkd): the wait must see that and return 0 at once, not sit out its timeout."""
    argv = single(DROPIN, "Service", "ExecStartPost").lstrip("-").split()
    assert argv[0] == "/usr/bin/netd-hook"
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "netd_hook", *argv[1:], "--runtime-dir", str(tmp_path / "run"),
                        "--state-dir", str(tmp_path / "state")],
                       capture_output=True, text=True, timeout=30, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started < 5, r.stderr
    assert "not running" in r.stderr


def _stub_binary(tmp: Path) -> Path:
    stub = tmp / "netd-hook-stub"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return stub


@needs_analyze
def test_service_passes_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` wants ExecStart= to exist: this checks a copy whose ExecStart= is a
    stub, and leaves the man page (Documentation=) to the package test, which verifies the
    installed unit with the installed /usr/bin/netd-hook and netd-hook(8)."""
    unit = tmp_path / "netd-hook.service"
    unit.write_text(SERVICE.read_text().replace("/usr/bin/netd-hook", str(_stub_binary(tmp_path))))
    r = analyze("verify", "--man=no", str(unit))
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


@needs_analyze
@pytest.mark.skipif(not NETWORKD_UNIT.exists(), reason="needs systemd-networkd")
def test_dropin_passes_verify_with_networkds_unit(tmp_path: Path) -> None:
    def verify(dropin_text: str) -> subprocess.CompletedProcess[str]:
        unitdir = tmp_path / "units"
        shutil.rmtree(unitdir, ignore_errors=True)
        (unitdir / "systemd-networkd.service.d").mkdir(parents=True)
        shutil.copy(NETWORKD_UNIT, unitdir)
        (unitdir / "systemd-networkd.service.d" / "netd-hook.conf").write_text(dropin_text)
        return analyze("verify", "--man=no", str(unitdir / "systemd-networkd.service"),
                       env={"SYSTEMD_UNIT_PATH": f"{unitdir}:"})

    r = verify(DROPIN.read_text())
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    # The control: a broken copy of the drop-in is reported, so the clean run above did read it.
    bad = verify(DROPIN.read_text() + "NoSuchSetting=1\n")
    assert "netd-hook.conf" in bad.stdout + bad.stderr and "NoSuchSetting" in bad.stdout + bad.stderr
