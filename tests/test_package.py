"""The Debian package: built once per session with packaging/build-deb.sh, checked with lintian and
dpkg-deb, installed on this machine, its daemon run in the lab, then removed and purged.

The install tests change the machine (dpkg database, /usr/bin/netd-hook, the netd-hook user) and
put it back as they found it: the package is purged at the end, even on failure, and the user is
deleted if it was created here. They do not run where netd-hook is already installed, or where
systemd is PID 1 (the postinst would start netd-hook.service on the host).
"""

from __future__ import annotations

import dataclasses
import glob
import grp
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netd_hook import __version__
from netd_hook.adapters import config as configmod
from tests.daemon import Daemon, route_set, rule_set, wait_until
from tests.lab import Lab

ROOT = Path(__file__).resolve().parent.parent
DEBIAN = ROOT / "packaging" / "debian"
IS_ROOT = os.geteuid() == 0
LIB = Path("/usr/lib/netd-hook")
BIN = Path("/usr/bin/netd-hook")
STATE = Path("/var/lib/netd-hook")
CONFFILE = Path("/etc/netd-hook/netd-hook.toml")
WANTS = Path("/etc/systemd/system/multi-user.target.wants/netd-hook.service")
# A clean environment for the installed copy: no virtualenv on PATH, no PYTHONPATH.
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

pytestmark = pytest.mark.skipif(shutil.which("dpkg-buildpackage") is None and not IS_ROOT,
                                reason="needs dpkg-buildpackage (scripts/dev.sh installs it, as root)")


def python310() -> str | None:
    for p in sorted(glob.glob("/root/.pyenv/versions/3.10*/bin/python3.10")) + ["/usr/bin/python3.10"]:
        if os.access(p, os.X_OK):
            return p
    return None


def run(*argv: str, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def installed(pkg: str = "netd-hook") -> str:
    """dpkg's status of `pkg`: "installed", "config-files", or "" when dpkg does not know it."""
    r = run("dpkg-query", "-W", "-f", "${db:Status-Status}", pkg, check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


# ---------------------------------------------------------------- no build needed

def test_versions_agree() -> None:
    changelog = run("dpkg-parsechangelog", "-l", str(DEBIAN / "changelog"), "-S", "Version").stdout.strip()
    assert changelog == __version__, "packaging/debian/changelog and netd_hook.__version__ differ"
    th = (DEBIAN / "netd-hook.8").read_text().split("\n", 1)[0]
    assert f'"netd-hook {__version__}"' in th, f"netd-hook.8 header: {th}"


def test_conffile_is_all_comments_and_its_values_are_the_defaults(tmp_path: Path) -> None:
    shipped = DEBIAN / "netd-hook.toml"
    # all comments, section headers included: a later version that drops or renames a key or a
    # section cannot be broken by an untouched copy of this file left in /etc
    assert all(not line.strip() or line.startswith("#") for line in shipped.read_text().splitlines())
    cfg = configmod.load(shipped)
    assert dataclasses.replace(cfg, source="") == dataclasses.replace(configmod.Config(), source=""), \
        "the shipped configuration must change nothing"
    # Every commented-out key is a real key with a valid value, and the defaults it claims are
    # the defaults (the two marked "example" aside).
    uncommented = tmp_path / "uncommented.toml"
    uncommented.write_text(re.sub(r"(?m)^# ([a-z_]+ = |\[[a-z]+\])", r"\1", shipped.read_text()))
    cfg = configmod.load(uncommented)
    assert cfg.scope.include_tables == frozenset({2, 3}) and cfg.metrics_textfile is not None
    default = configmod.Config()
    cfg = dataclasses.replace(cfg, scope=dataclasses.replace(cfg.scope, include_tables=None),
                              metrics_textfile=None, source="")
    assert cfg == dataclasses.replace(default, source="")


# ---------------------------------------------------------------- the .deb

@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("dpkg-buildpackage") is None:
        pytest.fail("dpkg-buildpackage is missing: scripts/dev.sh test installs it (dpkg-dev, debhelper, ...)")
    out = tmp_path_factory.mktemp("deb")
    r = run(str(ROOT / "packaging" / "build-deb.sh"), str(out), check=False, timeout=600)
    assert r.returncode == 0, f"build failed:\n{r.stdout}\n{r.stderr}"
    path = out / f"netd-hook_{__version__}_all.deb"
    assert path.exists() and r.stdout.strip() == str(path)
    return path


def test_one_architecture_all_package_without_compiled_code(deb: Path) -> None:
    fields = {k: run("dpkg-deb", "-f", str(deb), k).stdout.strip() for k in ("Package", "Architecture", "Depends")}
    assert fields["Package"] == "netd-hook" and fields["Architecture"] == "all"
    # Only what Ubuntu 22.04 and Debian 12 both have: no python3-* library packages.
    deps = {re.split(r"[ (:]", d.strip())[0] for d in fields["Depends"].split(",")}
    assert deps == {"python3", "systemd", "dbus"}, fields["Depends"]
    listing = run("dpkg-deb", "-c", str(deb)).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    compiled = sorted(p for p in paths if re.search(r"\.(so(\.\d+)*|pyc|pyd|c)$", p) or "__pycache__" in p)
    assert not compiled, compiled
    for want in ("/usr/bin/netd-hook", "/usr/lib/netd-hook/netd_hook/commands/cli.py",
                 "/usr/lib/netd-hook/vendor/dbus_fast/message.py", "/usr/lib/netd-hook/vendor/pyroute2/__init__.py",
                 "/usr/lib/netd-hook/vendor/anyio/__init__.py", "/usr/lib/netd-hook/vendor/exceptiongroup/__init__.py",
                 "/usr/lib/netd-hook/vendor/tomli/__init__.py", "/usr/lib/netd-hook/vendor/typing_extensions.py",
                 "/usr/lib/netd-hook/vendor/idna/__init__.py",
                 "/lib/systemd/system/netd-hook.service",
                 "/lib/systemd/system/systemd-networkd.service.d/netd-hook.conf",
                 "/usr/lib/sysusers.d/netd-hook.conf", "/usr/share/man/man8/netd-hook.8.gz",
                 "/etc/netd-hook/netd-hook.toml", "/usr/share/doc/netd-hook/copyright"):
        assert want in paths, want
    # every module of netd-hook, its subpackages' too (debian/rules once copied netd_hook/*.py only)
    ours = {p for p in paths if p.startswith("/usr/lib/netd-hook/netd_hook/") and p.endswith(".py")}
    assert ours == {f"/usr/lib/netd-hook/netd_hook/{p.relative_to(ROOT / 'netd_hook')}"
                    for p in (ROOT / "netd_hook").rglob("*.py")}, ours
    # dbus-fast is the pure-Python build of 5.0.26 (the last release for Python 3.10)
    assert "/usr/lib/netd-hook/vendor/dbus_fast-5.0.26.dist-info/METADATA" in paths
    # the one conffile: all comments (see test_conffile_is_all_comments_and_its_values_are_the_defaults)
    assert run("dpkg-deb", "-I", str(deb), "conffiles").stdout.split() == ["/etc/netd-hook/netd-hook.toml"]


def test_lintian_is_clean(deb: Path) -> None:
    """No error and no warning; what is overridden carries its reason in netd-hook.lintian-overrides."""
    if shutil.which("lintian") is None:
        pytest.fail("lintian is missing: scripts/dev.sh test installs it")
    r = run("lintian", "--fail-on", "error,warning", "--display-level", ">=warning", str(deb), check=False,
            timeout=300)
    tags = [line for line in r.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert r.returncode == 0 and not tags, r.stdout + r.stderr


# ---------------------------------------------------------------- installed on this machine

@pytest.fixture(scope="module")
def installed_deb(deb: Path) -> Iterator[Path]:
    if not IS_ROOT:
        pytest.skip("installing the package needs root")
    if installed():
        pytest.skip(f"netd-hook is already installed here ({installed()}); the test would replace and purge it")
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd is PID 1 here: installing would start netd-hook.service on the host")
    user_existed = _user_exists("netd-hook")
    try:
        r = run("dpkg", "-i", str(deb))
        # without systemd as PID 1 the postinst enables the unit and starts nothing
        assert "error" not in r.stderr.lower(), r.stderr
        yield deb
    finally:
        if installed():
            run("dpkg", "--purge", "netd-hook", check=False)
        if not user_existed and _user_exists("netd-hook"):
            run("userdel", "netd-hook", check=False)
        if not user_existed and _group_exists("netd-hook"):
            run("groupdel", "netd-hook", check=False)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_install_enables_the_service_and_creates_its_user(installed_deb: Path) -> None:
    assert installed() == "installed"
    assert WANTS.is_symlink() and os.readlink(WANTS) == "/lib/systemd/system/netd-hook.service"
    assert _user_exists("netd-hook")
    # the postinst byte-compiled the private tree for the default python3
    assert list(LIB.glob("netd_hook/commands/__pycache__/cli.cpython-*.pyc"))


def test_installed_version_from_a_clean_environment(installed_deb: Path, tmp_path: Path) -> None:
    r = run(str(BIN), "--version", env=CLEAN_ENV)
    assert r.stdout.strip() == f"netd-hook {__version__}"
    # The launcher runs isolated: a broken anyio (or pyroute2, ...) on PYTHONPATH, or the
    # distribution's own, is never picked up instead of the vendored one.
    poison = tmp_path / "poison"
    for mod in ("anyio", "pyroute2", "dbus_fast", "netd_hook"):
        (poison / mod).mkdir(parents=True)
        (poison / mod / "__init__.py").write_text("raise ImportError('not the vendored copy')\n")
    r = run(str(BIN), "--version", env={**CLEAN_ENV, "PYTHONPATH": str(poison)})
    assert r.stdout.strip() == f"netd-hook {__version__}"
    assert BIN.read_text().startswith("#!/usr/bin/python3 -IS\n")


@pytest.mark.skipif(python310() is None, reason="no Python 3.10 here (pyenv or python3.10)")
def test_installed_copy_runs_on_python_310(installed_deb: Path) -> None:
    """The Ubuntu 22.04 promise: the same files, vendored backports included, on Python 3.10."""
    py = python310()
    assert py is not None
    r = run(py, "-I", "-S", str(BIN), "--version", env=CLEAN_ENV)
    assert r.stdout.strip() == f"netd-hook {__version__}"
    # every module of netd-hook imports on 3.10 from the vendored tree alone
    mods = sorted(".".join(p.relative_to(LIB).with_suffix("").parts).removesuffix(".__init__")
                  for p in (LIB / "netd_hook").rglob("*.py") if p.name != "__main__.py")
    code = ("import sys; sys.dont_write_bytecode = True; "
            "sys.path[:0] = ['/usr/lib/netd-hook', '/usr/lib/netd-hook/vendor']; "
            f"import {', '.join(mods)}; "
            "import exceptiongroup, tomli, anyio; assert anyio.__file__.startswith('/usr/lib/netd-hook/'); "
            "print(sys.version_info[:2])")
    r = run(py, "-I", "-S", "-c", code, env=CLEAN_ENV)
    assert r.stdout.strip() == "(3, 10)"


def test_installed_units_pass_verify(installed_deb: Path) -> None:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    for unit in ("/lib/systemd/system/netd-hook.service", "systemd-networkd.service"):
        # --man=yes (the default): Documentation=man:netd-hook(8) must be installed
        r = run("systemd-analyze", "verify", unit, check=False, env=env)
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), f"{unit}:\n{r.stdout}{r.stderr}"
    dropins = run("systemd-analyze", "cat-config", "systemd/system/systemd-networkd.service", env=env).stdout
    assert "ExecStartPost=-/usr/bin/netd-hook wait --timeout 20" in dropins


# The unit's sandbox, as far as it can be had without systemd as PID 1: user netd-hook with
# CAP_NET_ADMIN as its only capability and no new privileges; a read-only file system but for the
# state and runtime directories (ProtectSystem=strict); /proc with processes only (ProcSubset=pid);
# no writable+executable memory (MemoryDenyWriteExecute=; here prctl(PR_SET_MDWE), inherited
# across exec). Not reproduced: the seccomp filters (SystemCallFilter=, RestrictAddressFamilies=),
# the private /tmp and /dev, the protected kernel tunables.
_MDWE_EXEC = r"""/usr/bin/python3 -I -S -c '
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3)
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")
os.execv(sys.argv[1], sys.argv[1:])
'"""
_SANDBOX = r"""
set -e
if [ -n "$PY_PREFIX" ]; then  # an interpreter under /root (0700): the same path, open to the user
    stage=$(mktemp -d); mount --bind "$PY_PREFIX" "$stage"
    mount -t tmpfs -o mode=0755 tmpfs /root; mkdir -p "$PY_PREFIX"; mount --move "$stage" "$PY_PREFIX"
fi
mount -t proc -o subset=pid proc /proc
chmod 0755 "$(dirname "$NOTIFY_SOCKET")"; chmod 0777 "$NOTIFY_SOCKET"
for dir in $WRITABLE; do mount --bind "$dir" "$dir"; done
mount -o remount,bind,ro /
exec """ + _MDWE_EXEC + r""" /usr/bin/setpriv --reuid=netd-hook --regid=netd-hook --init-groups --no-new-privs \
    --inh-caps=-all,+net_admin --ambient-caps=-all,+net_admin --bounding-set=-all,+net_admin \
    /usr/bin/env -i -C / PATH=/usr/sbin:/usr/bin:/sbin:/bin "NOTIFY_SOCKET=$NOTIFY_SOCKET" \
    "DBUS_SYSTEM_BUS_ADDRESS=$DBUS_SYSTEM_BUS_ADDRESS" \
    ${LISTEN_FDS:+"LISTEN_PID=$LISTEN_PID" "LISTEN_FDS=$LISTEN_FDS" "LISTEN_FDNAMES=$LISTEN_FDNAMES"} "$@"
"""

# The drop-in's `netd-hook wait` as networkd runs it: user systemd-network with networkd's
# capabilities, /proc showing that user's processes only (ProtectProc=invisible), no
# writable+executable memory, $MAINPID networkd's.
_NETWORKD_SANDBOX = r"""
set -e
mount -t proc -o hidepid=invisible proc /proc
caps=-all,+net_admin,+net_bind_service,+net_broadcast,+net_raw
exec """ + _MDWE_EXEC + r""" /usr/bin/setpriv --reuid=systemd-network --regid=systemd-network --init-groups \
    --inh-caps=$caps --ambient-caps=$caps --bounding-set=$caps \
    /usr/bin/env -i -C / PATH=/usr/sbin:/usr/bin:/sbin:/bin "MAINPID=$MAINPID" \
    "DBUS_SYSTEM_BUS_ADDRESS=$DBUS_SYSTEM_BUS_ADDRESS" "$@"
"""


def _interpreters() -> list:
    out = [pytest.param(None, id="python3")]
    py = python310()
    out.append(pytest.param(py, id="python3.10", marks=pytest.mark.skipif(py is None, reason="no Python 3.10")))
    return out


@pytest.mark.lab
@pytest.mark.skipif(not os.path.exists("/lib/systemd/systemd-networkd"), reason="needs systemd-networkd")
@pytest.mark.parametrize("python", _interpreters())
def test_installed_daemon_repairs_a_reconfigure_in_the_lab(installed_deb: Path, python: str | None) -> None:
    """The installed daemon, in the unit's sandbox (above), from a clean environment, on the
    distribution's python3 and on Python 3.10 (Ubuntu 22.04's): a `networkctl reconfigure` wipe
    is repaired; then the drop-in's `netd-hook wait` agrees."""
    user = pwd.getpwnam("netd-hook")
    base = Path(tempfile.mkdtemp(prefix="ndh-pkg-"))
    state, rundir = base / "state", base / "run"
    env = {"WRITABLE": f"{state} {rundir}"}
    if python is None:
        cmd, want_exe = [str(BIN)], os.path.realpath("/usr/bin/python3")
    else:
        cmd, want_exe = [python, "-I", "-S", str(BIN)], "python3.10"
        prefix = Path(python).parent.parent
        if str(prefix).startswith("/root/"):
            env["PY_PREFIX"] = str(prefix)
    try:
        base.chmod(0o755)
        for sub in (state, rundir):  # what StateDirectory= and RuntimeDirectory= create
            sub.mkdir()
            os.chown(sub, user.pw_uid, user.pw_gid)
        with Lab() as lab:
            eni = lab.add_eni(1)
            lab.ip_batch([f"rule add from {eni.ip} lookup {eni.table} priority 32765"], force=True)
            lab.node_rules(strict=True)
            lab.add_pod("10.1.1.5", 1)
            lab.add_pod("10.1.0.5", 0)
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", _SANDBOX, "sandbox", *cmd]
            daemon = Daemon(lab, state, argv=argv, env=env, runtime_dir=rundir)
            try:
                daemon.start()
                assert daemon.proc is not None
                _assert_credentials(daemon.proc.pid, user.pw_uid, want_exe)
                want = (rule_set(lab), route_set(lab, (2,)))
                mark = daemon.mark()
                lab.reconfigure("eth1")
                daemon.wait_log(r" repair trigger=", 10, start=mark)
                wait_until(lambda: (rule_set(lab), route_set(lab, (2,))) == want, 10, "the repair")
                assert int(daemon.repairs(mark)[0]["rules_restored"]) >= 4
                lab.wait_settled()
                if python is None:  # once is enough
                    _assert_wait_sees_the_repair(lab, state, rundir)
                    # and an operator's view, from the installed copy: protecting, nothing missing
                    r = lab.run("env", "-i", *(f"{k}={v}" for k, v in CLEAN_ENV.items()), str(BIN), "status",
                                "--runtime-dir", str(rundir), "--state-dir", str(state), check=False)
                    assert r.returncode == 0, r.stdout + r.stderr
                assert daemon.stop() == 0
            finally:
                daemon.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _assert_credentials(pid: int, uid: int, want_exe: str) -> None:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    assert int(status["Uid"].split()[1]) == uid
    assert int(status["CapEff"], 16) == 1 << 12, status["CapEff"]  # CAP_NET_ADMIN alone
    assert status["NoNewPrivs"].strip() == "1"
    assert want_exe in os.readlink(f"/proc/{pid}/exe")


def _assert_wait_sees_the_repair(lab: Lab, state: Path, rundir: Path) -> None:
    started = time.monotonic()
    r = lab.run("env", f"MAINPID={lab.networkd_pid}", "unshare", "-m", "--propagation", "private",
                "sh", "-c", _NETWORKD_SANDBOX, "networkd", str(BIN), "wait", "--timeout", "10",
                "--runtime-dir", str(rundir), "--state-dir", str(state), check=False)
    assert r.returncode == 0, r.stderr
    # it found the daemon, read its status and the snapshot, and checked the kernel: not a give-up
    assert "is settled" in r.stderr and time.monotonic() - started < 10, r.stderr


def test_remove_keeps_the_state_and_purge_deletes_everything(installed_deb: Path) -> None:
    """Last: takes the package off again. remove keeps /var/lib/netd-hook and the conffile; purge
    deletes both, the enablement and every file of the package (byte-compiled caches included)."""
    created_state = not STATE.exists()
    if created_state:  # what StateDirectory= creates on the first start of the service
        user = pwd.getpwnam("netd-hook")
        STATE.mkdir(mode=0o755)
        os.chown(STATE, user.pw_uid, user.pw_gid)
        (STATE / "snapshot.json").write_text("{}\n")
    try:
        run("dpkg", "-r", "netd-hook")
        assert installed() == "config-files"
        assert not BIN.exists() and not LIB.exists()
        assert (STATE / "snapshot.json").exists(), "remove must keep the snapshot"
        assert CONFFILE.exists()
        run("dpkg", "--purge", "netd-hook")
        assert installed() in ("", "not-installed")
        for gone in (STATE, CONFFILE.parent, LIB, BIN, WANTS,
                     Path("/lib/systemd/system/systemd-networkd.service.d/netd-hook.conf")):
            assert not os.path.lexists(gone), f"{gone} is still there after purge"
    finally:
        if created_state and STATE.exists() and installed() == "installed":
            shutil.rmtree(STATE)
