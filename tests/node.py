"""A booted node: systemd as PID 1 in a throwaway ``systemd-nspawn --private-network`` container.

Stdlib only, Python >= 3.10, needs root, systemd-container (systemd-nspawn), util-linux
(nsenter) and, to build a missing root, debootstrap. Recipe: /work/shared/BOOTED-NODE.md.
It never touches the host's network: every link, rule and route lives in the container's own
network namespace, which the kernel deletes with the container.

Layout (one ``Node``)::

    root   = ensure_root(suite)        cached debootstrap tree, $NETD_HOOK_CACHE/roots/<suite>
                                       (default /var/cache/netd-hook-ci), never written to
    work   = /tmp/ndh-node-<pid>-<n>-XXXX/
               upper/                  the node's own changes (overlayfs upper dir)
               console.log             the container's console, every boot appended
    SYSTEMD_NSPAWN_API_VFS_WRITABLE=1 systemd-nspawn -D <root> --overlay=<root>:<upper>:/
        --boot --private-network --register=no --keep-unit -M <name>       (our child)
    every command:  nsenter -t <container PID 1> -a <argv>

Why an overlay: ``--overlay=ROOT:UPPER:/`` puts an overlayfs over the container's / (nspawn 252
supports it for the root); the cached tree stays the read-only lower layer, untouched (checked:
the tree's listing with sizes, mtimes and modes hashes the same after boots), several nodes can
share it at once, and the per-test "copy" costs nothing. Measured here (ext4, 2 cores):
``nspawn /bin/true`` 0.06 s with the overlay, 1.2 s with ``--ephemeral`` (a full copy on a
non-btrfs file system), ``cp -a --reflink=auto`` of the 320 MB tree 3.8 s. Booting to
``running`` takes about half a second. ``reboot()`` keeps ``upper/``, so /var/lib survives it, as
on a real node.

Files are copied in through ``/proc/<PID 1>/root`` (the container's merged /) while it runs, and
through ``upper/`` (allowed for overlayfs only while it is not mounted) before the first boot:
that is how ``networkd249=True`` installs networkd 249 (see ``_stage_networkd249``).

VPC CNI layout (``tests/lab.py``'s conventions, VPC-CNI-LAYOUT.md): ENI ``i`` is the veth
``eth<i>`` (peer ``vpc<i>`` up), ``.network`` file ``10-eth<i>.network`` with
``Address=10.0.<i>.10/24``, ``LinkLocalAddressing=no``, ``IPv6AcceptRA=no`` (and
``Gateway=10.0.0.1`` on eth0); secondary ENI ``i``: table ``i + 1`` with ``10.0.<i>.1/32 dev
eth<i> scope link`` and ``default via 10.0.<i>.1``, rule ``from 10.0.<i>.10 lookup <i+1> pref
32765``; node rule ``fwmark 0x80/0x80 lookup main pref 1024``; pods ``pod_ips(eni, n)`` on host
veths ``eni*`` (one per ``per_veth`` pods), host route in main, ``to POD lookup main pref 512``
and, on a secondary ENI, ``from POD lookup <eni+1> pref 1536``.

Also here: ``repair_latency()`` (``python3 -m tests.node latency``), the outage a ``networkctl
reconfigure eth1`` causes at 300 pods, measured inside the node by a netlink observer.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import functools
import itertools
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tests.lab import NETWORKD_249_BUILD, SETTLED_STATES, host_veth_name, pod_ips, wait_until

__all__ = [
    "CACHE", "SUITES", "Eni", "Node", "NodeError", "NodeCommandError", "Observer", "build_deb",
    "ensure_networkd249", "ensure_root", "host_veth_name", "pod_ips", "repair_latency", "tools_missing",
    "wait_until",
]

ROOT = Path(__file__).resolve().parent.parent
SUITES = {"bookworm": 252, "trixie": 257}  # suite -> the systemd it ships
ROOT_PACKAGES = "systemd,systemd-sysv,udev,dbus,iproute2,python3"
NSPAWN = shutil.which("systemd-nspawn") or "/usr/bin/systemd-nspawn"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
NAME_PREFIX = "ndh-node-"
# The environment of every command run inside: Debian's root PATH (/usr/local first, so that
# networkd 249's networkctl wins on a networkd249 node), no colours, no pager, no host leftovers.
NODE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
            "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "TERM": "dumb", "HOME": "/root"}
EXIT_REBOOT = 133  # systemd-nspawn's exit status when the container rebooted

_counter = itertools.count()
Baseline = tuple[frozenset[Any], frozenset[Any]]  # (rule_set(), route_set(ENI tables))


def cache_dir() -> Path:
    return Path(os.environ.get("NETD_HOOK_CACHE") or "/var/cache/netd-hook-ci")


CACHE = cache_dir()


class NodeError(RuntimeError):
    """The node could not be built, booted or stopped, or a wait timed out."""


class NodeCommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the command's output."""

    def __str__(self) -> str:  # pragma: no cover - formatting only
        out = "\n".join(s.strip() for s in (self.stdout or "", self.stderr or "") if s and s.strip())
        return f"{super().__str__()}\n{out}" if out else super().__str__()


def tools_missing() -> list[str]:
    """What a booted node needs on the host and is not there (empty: all there)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool in ("systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if "overlay" not in Path("/proc/filesystems").read_text():
        missing.append("overlayfs")
    return missing


# ---------------------------------------------------------------------------------- caches

@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created): one builder at a time, across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_root(suite: str, *, timings: dict[str, float] | None = None) -> Path:
    """The cached root of `suite` (``$NETD_HOOK_CACHE/roots/<suite>``), built when missing:
    ``debootstrap --variant=minbase --include=systemd,systemd-sysv,udev,dbus,iproute2,python3``
    into ``<suite>.tmp``, renamed to ``<suite>`` only when complete (log: ``<suite>.log``)."""
    if suite not in SUITES:
        raise ValueError(f"suite {suite!r}: want one of {sorted(SUITES)}")
    roots = cache_dir() / "roots"
    final = roots / suite
    if (final / "usr/lib/systemd/systemd").exists():
        return final
    with _locked(roots / f"{suite}.lock"):
        if (final / "usr/lib/systemd/systemd").exists():  # built meanwhile by someone else
            return final
        if shutil.which("debootstrap") is None:
            raise NodeError(f"no root at {final} and no debootstrap to build it (apt-get install debootstrap)")
        tmp = roots / f"{suite}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.monotonic()
        with open(roots / f"{suite}.log", "w") as log:
            r = subprocess.run(["debootstrap", "--variant=minbase", f"--include={ROOT_PACKAGES}", suite, str(tmp)],
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
        if r.returncode != 0:
            raise NodeError(f"debootstrap {suite} failed (exit {r.returncode}); see {roots / f'{suite}.log'}")
        if final.exists():  # an incomplete leftover without systemd: never booted, safe to drop
            shutil.rmtree(final)
        os.rename(tmp, final)
        if timings is not None:
            timings[f"root-build-{suite}"] = time.monotonic() - t0
    return final


def ensure_networkd249(*, timings: dict[str, float] | None = None) -> Path:
    """networkd 249's build tree (``$NETD_HOOK_CACHE/networkd-249``), built when missing with
    ``<repo>/../shared/networkd-249/build.sh`` (about a minute; CI lays shared/ beside the clone).
    Returns OUTDIR (``bin/``, ``src/build``)."""
    out = cache_dir() / "networkd-249"
    build = out / "src/build"
    wanted = [build / "systemd-networkd", build / "networkctl", build / "src/shared/libsystemd-shared-249.so"]
    if all(p.exists() for p in wanted):
        return out
    script = Path(os.environ.get("NETD_HOOK_NETWORKD249_BUILD", NETWORKD_249_BUILD))
    with _locked(cache_dir() / "networkd-249.lock"):
        if not all(p.exists() for p in wanted):
            t0 = time.monotonic()
            r = subprocess.run([str(script), str(out)], capture_output=True, text=True, timeout=1800)
            if r.returncode != 0 or not all(p.exists() for p in wanted):
                raise NodeError(f"{script} {out} failed (exit {r.returncode}): {r.stderr[-2000:]}")
            if timings is not None:
                timings["networkd249-build"] = time.monotonic() - t0
    return out


BUILD_PACKAGES = ("dpkg-dev", "debhelper", "dh-python", "python3-venv", "ca-certificates")


def _build_packages_missing() -> list[str]:
    out = []
    for pkg in BUILD_PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", pkg], capture_output=True, text=True)
        if r.stdout.strip() != "installed":
            out.append(pkg)
    return out


def build_deb(outdir: Path, *, install_tools: bool = True) -> Path:
    """``packaging/build-deb.sh OUTDIR`` from the working tree; returns the .deb. Missing build
    tools are installed with apt-get first (what scripts/dev.sh does) when `install_tools`."""
    missing = _build_packages_missing()
    if missing and install_tools:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       env=env, check=True, capture_output=True, timeout=900)
    elif missing:
        raise NodeError(f"missing build packages: {' '.join(missing)} (scripts/dev.sh installs them)")
    r = subprocess.run([str(ROOT / "packaging/build-deb.sh"), str(outdir)], capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        raise NodeError(f"packaging/build-deb.sh failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
    deb = Path(r.stdout.strip().splitlines()[-1])
    if not deb.is_file():
        raise NodeError(f"packaging/build-deb.sh printed {deb}, which is not a file")
    return deb


# ---------------------------------------------------------------------------------- processes

def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:  # no CONFIG_PROC_CHILDREN: scan /proc for the parent pid
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            out.append(int(entry))
                except (OSError, IndexError, ValueError):
                    pass
        return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


@dataclasses.dataclass(frozen=True)
class Eni:
    index: int
    name: str          # eth<index>
    peer: str          # vpc<index>
    ip: str            # 10.0.<index>.10
    gw: str            # 10.0.<index>.1
    table: int | None  # index + 1; None for eth0 (main)


@dataclasses.dataclass
class Pod:
    ip: str
    eni: int
    veth: str


class Node:
    """One booted container. ``with Node("bookworm") as n: n.run("systemctl", "status")``.

    ``networkd249=True``: the bookworm root, its systemd-networkd replaced by a drop-in with
    networkd 249's (``/opt/networkd``), and 249's networkctl first on PATH."""

    def __init__(self, suite: str = "bookworm", *, networkd249: bool = False, name: str | None = None,
                 keep: bool = False, boot_timeout: float = 90.0) -> None:
        if suite not in SUITES:
            raise ValueError(f"suite {suite!r}: want one of {sorted(SUITES)}")
        if networkd249 and suite != "bookworm":
            raise ValueError("networkd249 goes on the bookworm root (systemd 252 around networkd 249)")
        self.suite = suite
        self.networkd249 = networkd249
        self.name = name or f"{NAME_PREFIX}{os.getpid()}-{next(_counter)}"
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", self.name):
            raise ValueError(f"machine name {self.name!r}: want a hostname label")
        self.keep = keep
        self.boot_timeout = boot_timeout
        self.root: Path | None = None
        self.workdir: Path | None = None
        self.pid1: int | None = None
        self.boots = 0
        self.timings: dict[str, float] = {}
        self.enis: dict[int, Eni] = {}
        self.pods: dict[str, Pod] = {}
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._children: list[subprocess.Popen[Any]] = []
        self._bulk = itertools.count()
        self._closed = False
        self.escalated: str | None = None  # the signal poweroff() needed, if any
        # A test's reference picture of the kernel, protected() when the layout was complete;
        # missing() compares with it.
        self.baseline: Baseline = (frozenset(), frozenset())

    @property
    def label(self) -> str:
        return f"{self.suite}+networkd249" if self.networkd249 else self.suite

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.label} pid1={self.pid1}>"

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ lifecycle
    @property
    def upper(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "upper"

    @property
    def console_log(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "console.log"

    def start(self) -> Node:
        if self.workdir is not None:
            raise NodeError("node already started")
        missing = tools_missing()
        if missing:
            raise NodeError(f"a booted node needs: {', '.join(missing)}")
        atexit.register(self.close)
        try:
            self.root = ensure_root(self.suite, timings=self.timings)
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=os.environ.get("NETD_HOOK_NODE_TMP")))
            self.upper.mkdir()
            if self.networkd249:
                self._stage_networkd249()
            self._boot()
            self.timings["boot"] = self.timings["boot-1"]
        except BaseException:
            self.close()
            raise
        return self

    def _stage_networkd249(self) -> None:
        """networkd 249 written into the (not yet mounted) upper layer, as BOOTED-NODE.md says:
        the binaries in /opt/networkd, the library in /opt/networkd/src/shared (their RUNPATH is
        $ORIGIN/src/shared), a drop-in replacing networkd's ExecStart, networkctl on PATH."""
        build = ensure_networkd249(timings=self.timings) / "src/build"
        opt = self.upper / "opt/networkd"
        (opt / "src/shared").mkdir(parents=True)
        for src, dst in ((build / "systemd-networkd", opt / "systemd-networkd"),
                         (build / "networkctl", opt / "networkctl"),
                         (build / "src/shared/libsystemd-shared-249.so", opt / "src/shared/libsystemd-shared-249.so")):
            shutil.copy2(src.resolve(), dst)
        dropin = self.upper / "etc/systemd/system/systemd-networkd.service.d"
        dropin.mkdir(parents=True)
        (dropin / "00-249.conf").write_text(
            "# networkd 249 (Ubuntu 22.04's upstream release) instead of Debian 12's 252\n"
            "[Service]\nExecStart=\nExecStart=!!/opt/networkd/systemd-networkd\n")
        local_bin = self.upper / "usr/local/bin"
        local_bin.mkdir(parents=True)
        os.symlink("/opt/networkd/networkctl", local_bin / "networkctl")

    def _boot(self) -> None:
        assert self.root is not None and self.workdir is not None
        self.boots += 1
        t0 = time.monotonic()
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "1"}
        with open(self.console_log, "ab") as log:
            log.write(f"\n===== boot {self.boots} =====\n".encode())
            log.flush()
            self._nspawn = subprocess.Popen(
                [NSPAWN, "-q", "-D", str(self.root), f"--overlay={self.root}:{self.upper}:/", "--boot",
                 "--private-network", "--register=no", "--keep-unit", "-M", self.name],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        (self.workdir / "nspawn.pid").write_text(f"{self._nspawn.pid}\n")
        self.pid1 = None

        def pid1() -> int | None:
            self._check_nspawn()
            for child in _children(self._nspawn.pid):  # type: ignore[union-attr]
                # the child is nspawn itself until it execs the container's init
                try:
                    other_ns = os.stat(f"/proc/{child}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
                except OSError:
                    continue
                if other_ns and _comm(child) == "systemd":
                    return child
            return None
        self.pid1 = wait_until(pid1, 20, "the container's PID 1", 0.01, error=NodeError)

        state = ""

        def running() -> bool:
            nonlocal state
            self._check_nspawn()
            state = self.run("systemctl", "is-system-running", check=False, timeout=10).stdout.strip()
            # "offline" is also what systemctl says in the first milliseconds, before PID 1 has
            # created /run/systemd/system: not fatal
            if state in ("maintenance", "stopping"):
                raise NodeError(f"{self}: system state {state}; console: {self.console()[-2000:]}")
            return state in ("running", "degraded")
        try:
            wait_until(running, self.boot_timeout, "systemctl is-system-running", 0.05, error=NodeError)
        except NodeError as e:
            raise NodeError(f"{e} (last state {state!r}); console: {self.console()[-2000:]}") from None
        self.timings[f"boot-{self.boots}"] = time.monotonic() - t0

    def _check_nspawn(self) -> None:
        p = self._nspawn
        if p is None or p.poll() is not None:
            code = None if p is None else p.returncode
            raise NodeError(f"{self}: systemd-nspawn is not running (exit {code}); console: {self.console()[-2000:]}")

    @property
    def nspawn_pid(self) -> int | None:
        p = self._nspawn
        return p.pid if p is not None and p.poll() is None else None

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    def boot_id(self) -> str:
        return self.read_file("/proc/sys/kernel/random/boot_id").strip()

    def _wait_exit(self, timeout: float) -> int | None:
        p = self._nspawn
        if p is None:
            return None
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def reboot(self, timeout: float = 60) -> None:
        """``systemctl reboot`` inside; nspawn exits 133; boot again on the same upper layer
        (new boot id, fresh network namespace: no links, rules or routes; /var/lib kept)."""
        self._stop_children()
        t0 = time.monotonic()
        self.run("systemctl", "reboot", check=False, timeout=30)
        code = self._wait_exit(timeout)
        if code != EXIT_REBOOT:
            raise NodeError(f"{self}: nspawn exit {code} after reboot, want {EXIT_REBOOT}; "
                            f"console: {self.console()[-2000:]}")
        self.timings["shutdown-for-reboot"] = time.monotonic() - t0
        self.enis.clear()
        self.pods.clear()
        self._boot()

    def poweroff(self, timeout: float = 30) -> int | None:
        """``systemctl poweroff``, then SIGTERM (nspawn asks the container's init to halt),
        then SIGKILL, each by PID. Returns nspawn's exit status."""
        p = self._nspawn
        if p is None:
            return None
        self._stop_children()
        if p.poll() is None and self.pid1 is not None:
            with contextlib.suppress(Exception):
                self.run("systemctl", "poweroff", check=False, timeout=10)
        t0 = time.monotonic()
        for sig, wait in ((None, timeout), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if sig is not None and p.poll() is None:
                self.escalated = sig.name
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)
            code = self._wait_exit(wait)
            if code is not None:
                break
        self.timings["poweroff"] = time.monotonic() - t0
        self._nspawn = None
        self.pid1 = None
        if self.escalated and self.workdir is not None:
            # keep the console of a node that would not power off, for whoever looks into it
            with contextlib.suppress(OSError):
                shutil.copy(self.console_log, f"{self.workdir}.console.log")
                print(f"{self}: poweroff needed {self.escalated}; console kept in {self.workdir}.console.log",
                      file=sys.stderr)
        return p.returncode

    def close(self) -> None:
        """Stop the container (by PID) and delete the per-node layer. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        with contextlib.suppress(Exception):
            self.poweroff()
        # nspawn leaves its propagation directory behind when /run is not a tmpfs
        with contextlib.suppress(OSError):
            os.rmdir(f"/run/systemd/nspawn/propagate/{self.name}")
        if self.workdir is not None and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @classmethod
    def reap_stale(cls, tmp: str | None = None) -> list[str]:
        """Leftovers of crashed runs: ``/tmp/ndh-node-<pid>-*`` whose creator is dead. Their nspawn
        (by the PID in nspawn.pid, checked against its command line) gets SIGKILL, the directory
        is removed. Returns what was removed. Never called implicitly."""
        removed = []
        base = Path(tmp or os.environ.get("NETD_HOOK_NODE_TMP") or tempfile.gettempdir())
        for d in base.glob(f"{NAME_PREFIX}*"):
            owner = d.name[len(NAME_PREFIX):].split("-", 1)[0]
            if not owner.isdigit() or _pid_alive(int(owner)):
                continue
            with contextlib.suppress(OSError, ValueError):
                pid = int((d / "nspawn.pid").read_text())
                if str(d / "upper").encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
                    time.sleep(0.5)
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
        return removed

    # ------------------------------------------------------------------ running things
    def _nsenter(self, argv: Iterable[str]) -> list[str]:
        if self.pid1 is None:
            raise NodeError(f"{self} is not running")
        return [NSENTER, "-t", str(self.pid1), "-a", *argv]

    def run(self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv inside the node (all its namespaces), text mode, output captured."""
        r = subprocess.run(self._nsenter(argv), input=input, capture_output=True, text=True, timeout=timeout,
                           env={**NODE_ENV, **(env or {})}, stdin=subprocess.DEVNULL if input is None else None)
        if check and r.returncode != 0:
            raise NodeCommandError(r.returncode, list(argv), r.stdout, r.stderr)
        return r

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> str:
        return self.run("sh", "-ec", script, check=check, timeout=timeout).stdout

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """A long-running process inside the node. nsenter forks into the node's PID namespace,
        so killing the returned process does not kill what it runs: give it an end of its own
        (e.g. exit on stdin EOF, like ``Observer``). Stopped at close() with the node anyway."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("env", dict(NODE_ENV))
        p = subprocess.Popen(self._nsenter(argv), **kw)
        self._children.append(p)
        return p

    def _stop_children(self) -> None:
        for p in self._children:
            with contextlib.suppress(Exception):
                if p.stdin:
                    p.stdin.close()
                p.wait(3)
            if p.poll() is None:
                with contextlib.suppress(Exception):
                    p.kill()
                    p.wait(3)
        self._children.clear()

    def path(self, p: str) -> Path:
        """Host path of an absolute path inside the running node (its merged /)."""
        if self.pid1 is None:
            raise NodeError(f"{self} is not running")
        return Path(f"/proc/{self.pid1}/root/{p.lstrip('/')}")

    def write_file(self, p: str, text: str, mode: int = 0o644) -> None:
        dst = self.path(p)
        dst.write_text(text)
        os.chmod(dst, mode)

    def read_file(self, p: str) -> str:
        return self.path(p).read_text()

    def remove_file(self, p: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(p))

    def copy_in(self, src: str | Path, dst: str) -> str:
        """Copy a host file into the node; `dst` may be a directory. Returns the node's path."""
        target = dst.rstrip("/") + "/" + Path(src).name if dst.endswith("/") or self.path(dst).is_dir() else dst
        shutil.copy2(src, self.path(target))
        return target

    # ------------------------------------------------------------------ systemd
    def systemctl(self, *args: str, check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show UNIT -p A,B`` as a dict."""
        args = ["show", unit] + (["-p", ",".join(props)] if props else [])
        out = self.systemctl(*args).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, unit: str) -> int:
        return int(self.show(unit, "MainPID")["MainPID"])

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """``journalctl -o json --all ARGS`` inside (after ``journalctl --sync``), oldest first.
        ARGS are journalctl's: matches (``MESSAGE_ID=…``) and options (``-u netd-hook``, ``-b``).
        Byte-array values come back as str; a repeated field as a list."""
        self.run("journalctl", "--sync", check=False)
        r = self.run("journalctl", "-o", "json", "--all", "--no-pager", *args, check=False)
        if r.returncode != 0 and not r.stdout.strip():
            if "No entries" in r.stderr or "No journal files" in r.stderr:
                return []
            raise NodeCommandError(r.returncode, ["journalctl", *args], r.stdout, r.stderr)

        def value(v: Any) -> Any:
            if isinstance(v, list) and all(isinstance(b, int) for b in v):
                return bytes(v).decode("utf-8", "replace")
            if isinstance(v, list):
                return [value(x) for x in v]
            return v
        return [{k: value(v) for k, v in json.loads(line).items()}
                for line in r.stdout.splitlines() if line.startswith("{")]

    def install_deb(self, deb: str | Path) -> float:
        """Copy the .deb into /root and ``dpkg -i`` it (its postinst starts netd-hook.service and
        waits for READY=1: Type=notify). Returns the seconds dpkg took."""
        target = self.copy_in(deb, "/root/")
        t0 = time.monotonic()
        self.run("dpkg", "-i", target, timeout=300)
        took = time.monotonic() - t0
        self.timings["install"] = took
        return took

    # ------------------------------------------------------------------ networkd
    def networkctl_version(self) -> int:
        out = self.run("networkctl", "--version").stdout
        return int(out.split()[1])

    def link_setup_states(self) -> dict[str, str]:
        """name -> SETUP column of ``networkctl list`` (its text form: 249 has no --json)."""
        out = self.run("networkctl", "list", "--no-legend", "--no-pager", timeout=20).stdout
        states = {}
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 5 and cols[0].isdigit():
                states[cols[1]] = cols[4]
        return states

    def links(self) -> list[str]:
        return sorted(os.listdir(self.path("/sys/class/net")))

    def wait_settled(self, timeout: float = 30) -> dict[str, str]:
        """Until networkd lists every link in the node and each is configured, unmanaged,
        failed or linger (polls ``networkctl list``)."""
        last: dict[str, str] = {}

        def settled() -> bool:
            nonlocal last
            try:
                last = self.link_setup_states()
            except subprocess.CalledProcessError:
                return False
            return set(self.links()) <= set(last) and all(s in SETTLED_STATES for s in last.values())
        try:
            wait_until(settled, timeout, "networkd's links to settle", 0.05, error=NodeError)
        except NodeError as e:
            raise NodeError(f"{e}; states={last}") from None
        return last

    def wait_state(self, link: str, state: str = "configured", timeout: float = 30) -> None:
        wait_until(lambda: self.link_setup_states().get(link) == state, timeout, f"{link} to be {state}", 0.05,
                   error=NodeError)

    def networkd_pid(self) -> int:
        return self.main_pid("systemd-networkd.service")

    def netlink_sockets(self) -> list[dict[str, int]]:
        """/proc/net/netlink of the node's network namespace: sk, Eth (protocol), Pid (port id),
        Groups, Inode, ... as ints (Groups is hex). Read on the host as /proc/<PID 1>/net/netlink
        (inside the node's root, /proc/net is a symlink to a /proc/self we are not in)."""
        if self.pid1 is None:
            raise NodeError(f"{self} is not running")
        lines = Path(f"/proc/{self.pid1}/net/netlink").read_text().splitlines()
        head = lines[0].split()
        out = []
        for line in lines[1:]:
            cols = line.split()
            row = {}
            for k, v in zip(head, cols, strict=False):
                row[k] = int(v, 16) if k in ("sk", "Groups") else int(v)
            out.append(row)
        return out

    # ------------------------------------------------------------------ ip oracle
    def ip_json(self, *args: str) -> list[dict[str, Any]]:
        out = self.run("ip", "-j", *args).stdout.strip()
        return json.loads(out) if out else []

    def rules(self, family: int = 4) -> list[dict[str, Any]]:
        return self.ip_json("-d", f"-{family}", "rule", "show")

    def routes(self, table: int | str, family: int = 4) -> list[dict[str, Any]]:
        return self.ip_json("-d", f"-{family}", "route", "show", "table", str(table))

    def rule_set(self, families: Iterable[int] = (4, 6)) -> frozenset[tuple[tuple[str, str], ...]]:
        """Every rule as a hashable row of ``ip -j -d rule show`` (the same oracle as tests/daemon.py)."""
        return frozenset(tuple(sorted((k, json.dumps(v)) for k, v in r.items()))
                         for fam in families for r in self.rules(fam))

    def route_set(self, tables: Iterable[int], family: int = 4) -> frozenset[tuple[Any, ...]]:
        return frozenset((t, *sorted((k, json.dumps(v)) for k, v in r.items() if k != "flags"))
                         for t in tables for r in self.routes(t, family))

    def ip_batch(self, lines: list[str], force: bool = False) -> None:
        """Feed lines to one ``ip [-force] -batch -`` inside the node."""
        if lines:
            self.run("ip", *(["-force"] if force else []), "-batch", "-", input="\n".join(lines) + "\n",
                     check=not force, timeout=300)

    # ------------------------------------------------------------------ VPC CNI layout
    @staticmethod
    def network_file(index: int) -> str:
        gw = f"Gateway=10.0.{index}.1\n" if index == 0 else ""
        return (f"[Match]\nName=eth{index}\n\n[Network]\nAddress=10.0.{index}.10/24\n{gw}"
                "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")

    def setup_layout(self, enis: Iterable[int] = (0, 1, 2), pods: dict[int, int] | None = None, *,
                     per_veth: int = 50) -> None:
        """The whole VPC CNI layout from scratch: ENIs ``enis`` (0 is the primary), then
        ``systemctl enable --now systemd-networkd`` and, once every link is settled, in one
        ``ip -batch``: the per-ENI tables and 32765 rules, the 1024 node rule and ``pods``
        (ENI index -> how many pods)."""
        idx = sorted(set(enis))
        if 0 not in idx:
            raise ValueError("the primary ENI (0) is part of every node")
        t0 = time.monotonic()
        lines = []
        for i in idx:
            lines += [f"link add eth{i} type veth peer name vpc{i}", f"link set vpc{i} up"]
            self.write_file(f"/etc/systemd/network/10-eth{i}.network", self.network_file(i))
        self.ip_batch(lines)
        for i in idx:
            self.enis[i] = Eni(i, f"eth{i}", f"vpc{i}", f"10.0.{i}.10", f"10.0.{i}.1", i + 1 if i else None)
        self.systemctl("enable", "--now", "systemd-networkd.service")
        self.wait_settled()
        self.timings["networkd-up"] = time.monotonic() - t0
        lines = ["rule add fwmark 0x80/0x80 lookup main priority 1024"]
        for i in idx:
            if i:
                lines += self.eni_table_lines(i) + [f"rule add from 10.0.{i}.10 lookup {i + 1} priority 32765"]
        for eni, count in sorted((pods or {}).items()):
            lines += self._pod_lines(pod_ips(eni, count), eni, per_veth)
        self.ip_batch(lines)
        self.wait_settled()  # the pod veths, unmanaged
        self.timings["layout"] = time.monotonic() - t0

    def eni_table_lines(self, index: int) -> list[str]:
        gw = f"10.0.{index}.1"
        return [f"route replace {gw}/32 dev eth{index} scope link table {index + 1}",
                f"route replace default via {gw} dev eth{index} table {index + 1}"]

    @staticmethod
    def pod_rule_lines(ip: str, eni: int, verb: str = "add") -> list[str]:
        lines = [f"rule {verb} to {ip} lookup main priority 512"]
        if eni >= 1:
            lines.append(f"rule {verb} from {ip} lookup {eni + 1} priority 1536")
        return lines

    def _pod_lines(self, ips: list[str], eni: int, per_veth: int) -> list[str]:
        lines: list[str] = []
        for start in range(0, len(ips), max(1, per_veth)):
            veth = host_veth_name(f"{self.name}/bulk/{next(self._bulk)}")
            lines += [f"link add {veth} type veth peer name p{veth[3:]}", f"link set {veth} up",
                      f"link set p{veth[3:]} up"]
            for ip in ips[start:start + per_veth]:
                if ip in self.pods:
                    raise NodeError(f"pod {ip} exists")
                lines.append(f"route add {ip} dev {veth} scope link")
                lines += self.pod_rule_lines(ip, eni)
                self.pods[ip] = Pod(ip, eni, veth)
        return lines

    def add_pods(self, eni: int, count: int, *, start: int = 0, per_veth: int = 50) -> list[str]:
        """More pods on ENI `eni` (like CNI ADD), one ``ip -batch``; returns their IPs."""
        ips = pod_ips(eni, count, start)
        self.ip_batch(self._pod_lines(ips, eni, per_veth))
        return ips

    def del_pod(self, ip: str) -> None:
        """Like CNI DEL: the pod's rules, then its host route (rules already gone are no error)."""
        p = self.pods.pop(ip)
        self.ip_batch([*self.pod_rule_lines(ip, p.eni, "del"), f"route del {ip} dev {p.veth}"], force=True)

    def eni_tables(self) -> list[int]:
        return [e.table for e in self.enis.values() if e.table is not None]

    def protected(self) -> Baseline:
        """(rules, table routes) as the kernel has them now: the baseline to compare with."""
        return self.rule_set(), self.route_set(self.eni_tables())

    def missing(self, baseline: Baseline | None = None) -> Baseline:
        """(rules, routes) of `baseline` (default: self.baseline) that the kernel lacks now."""
        base = self.baseline if baseline is None else baseline
        rules, routes = self.protected()
        return base[0] - rules, base[1] - routes


# ---------------------------------------------------------------------------------- observer

# Runs inside the node on its own python3 (3.11 / 3.13). One rtnetlink socket bound to the IPv4 and
# IPv6 rule groups and the IPv4 route group; one JSON line per RTM_{NEW,DEL}{RULE,ROUTE}:
#   [monotonic_ns, "new"|"del", "rule"|"route", nlmsg_pid, key]
# "READY <port>" first; exits on stdin EOF (nsenter's child cannot be killed through nsenter).
OBSERVER = r"""
import os, select, socket, struct, sys, time, json
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
s.bind((0, 0x40 | 0x80))                       # RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE
s.setsockopt(270, 1, 19)                       # SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_IPV6_RULE
out = sys.stdout
out.write("READY %d\n" % s.getsockname()[0]); out.flush()
def attrs(b, off):
    a = {}
    while off + 4 <= len(b):
        ln, ty = struct.unpack_from("=HH", b, off)
        if ln < 4: break
        a[ty & 0x3fff] = b[off + 4:off + ln]
        off += (ln + 3) & ~3
    return a
def addr(v, fam):
    return socket.inet_ntop(fam, v) if v is not None else None
def u32(v):
    return struct.unpack("=I", v)[0] if v is not None else None
def emit(now, data):
    off = 0
    while off + 16 <= len(data):
        ln, ty, fl, seq, pid = struct.unpack_from("=IHHII", data, off)
        if ln < 16: break
        body = data[off + 16:off + ln]
        off += (ln + 3) & ~3
        if ty in (32, 33):     # RTM_NEWRULE, RTM_DELRULE
            fam, dl, sl, tos, table, _, _, action = struct.unpack_from("=BBBBBBBB", body, 0)
            a = attrs(body, 12)
            key = [fam, u32(a.get(6)) or 0, addr(a.get(2), fam), sl, addr(a.get(1), fam), dl,
                   u32(a.get(15)) or table, u32(a.get(10)), u32(a.get(16))]
            out.write(json.dumps([now, "new" if ty == 32 else "del", "rule", pid, key]) + "\n")
        elif ty in (24, 25):   # RTM_NEWROUTE, RTM_DELROUTE
            fam, dl, sl, tos, table, proto, scope, rtype, flags = struct.unpack_from("=BBBBBBBBI", body, 0)
            a = attrs(body, 12)
            key = [fam, u32(a.get(15)) or table, addr(a.get(1), fam), dl, addr(a.get(5), fam), u32(a.get(4))]
            out.write(json.dumps([now, "new" if ty == 24 else "del", "route", pid, key]) + "\n")
# Datagrams are kept raw with the time they were read, and decoded and written once the socket
# has been quiet for 20 ms (or 2 s after the oldest kept): decoding and writing each one as it
# came made the observer fall behind a 600-rule wipe, and stamp its later events tens of ms late
# (and so would a flush in the middle of a wipe: what queues meanwhile is read late).
def flush(pending):
    for now, data, err in pending:
        if data is None:
            out.write(json.dumps([now, "overrun", err]) + "\n")
        else:
            emit(now, data)
    out.flush()
pending, since = [], None
while True:
    timeout = None if not pending else max(0.0, min(0.02, since + 2.0 - time.monotonic()))
    r, _, _ = select.select([s, sys.stdin], [], [], timeout)
    if sys.stdin in r and not os.read(sys.stdin.fileno(), 4096):
        flush(pending)
        break
    if s in r:
        try:
            data = s.recv(1 << 22)
        except OSError as e:
            pending.append((time.monotonic_ns(), None, str(e)))
        else:
            pending.append((time.monotonic_ns(), data, None))
        since = since if since is not None else time.monotonic()
        if time.monotonic() < since + 2.0:
            continue
    flush(pending)
    pending, since = [], None
"""


class Observer:
    """A netlink observer inside the node (``OBSERVER``). A thread reads its output as it comes
    (a full pipe would stall it and make its socket overrun); ``events()`` so far, ``close()``
    to end it. Event times are CLOCK_MONOTONIC ns, the same clock as ``time.monotonic_ns()`` here
    (nspawn gives the node no time namespace)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = node.popen(["python3", "-u", "-c", OBSERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline() if r else ""
        if not line.startswith("READY "):
            err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
            raise NodeError(f"observer did not start: {line!r} {err}")
        self.port = int(line.split()[1])
        self._reader = threading.Thread(target=self._read, name="observer", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self._lines.append(line)

    def events(self) -> list[list[Any]]:
        with self._lock:
            lines = list(self._lines)
        return [json.loads(x) for x in lines if x.strip()]

    def wait_for(self, pred: Callable[[list[list[Any]]], Any], timeout: float, what: str) -> Any:
        return wait_until(lambda: pred(self.events()), timeout, what, 0.01)

    def close(self) -> list[list[Any]]:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._reader.join(5)
        return self.events()

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Key = Callable[[list[Any]], str | None]


def rule_key(ev: list[Any]) -> str | None:
    """Every rule counts (the observer's rule key: priority, table, from, fwmark, to...)."""
    return json.dumps(ev[4]) if ev[2] == "rule" else None


def rules_but(ips: Iterable[str]) -> Key:
    """Every rule but those of the pods `ips` (deleted for good by the CNI: from / to)."""
    gone = set(ips)
    return lambda ev: None if ev[2] != "rule" or ev[4][2] in gone or ev[4][4] in gone else json.dumps(ev[4])


def protected_key(tables: set[int], victims: set[str]) -> Key:
    """What netd-hook protects: every rule but the victims' (the CNI deleted those on purpose), and
    every route in an ENI table."""
    def key(ev: list[Any]) -> str | None:
        if ev[2] == "rule":
            return None if ev[4][2] in victims or ev[4][4] in victims else json.dumps(["rule", ev[4]])
        return json.dumps(["route", ev[4]]) if ev[2] == "route" and ev[4][1] in tables else None
    return key


def outage(events: list[list[Any]], t0: int, t1: int | None = None, *, key: Key = rule_key,
           silent_routes: bool = False) -> dict[str, Any]:
    """The outage within [t0, t1) as the observer saw it: from the first entry deleted to the
    moment every entry lost since then is back (and stays back until t1). `key` names the entry
    of a "new"/"del" event when it counts (None: it does not). With `silent_routes`, a route
    re-added without its deletion seen (the kernel flushed it unannounced when its link's address
    went) counts as a loss that ends then. Times in ns (CLOCK_MONOTONIC)."""
    lost: dict[str, int] = {}  # key -> when it went
    each: list[float] = []  # every entry's outage that ended, ms
    first = back = last_del = None
    deleted = restored = silent = 0
    ports: dict[int, int] = {}
    for ev in events:
        if ev[1] not in ("new", "del") or ev[0] < t0 or (t1 is not None and ev[0] >= t1):
            continue
        k = key(ev)
        if k is None:
            continue
        if ev[1] == "del":
            first = ev[0] if first is None else first
            last_del = ev[0]
            lost.setdefault(k, ev[0])
            deleted += 1
            ports[ev[3]] = ports.get(ev[3], 0) + 1
            back = None
        elif k in lost:
            each.append((ev[0] - lost.pop(k)) / 1e6)
            restored += 1
            if not lost:
                back = ev[0]
        elif silent_routes and first is not None and ev[2] == "route":
            silent += 1
            if not lost:
                back = ev[0]
    each.sort()
    return {"deleted": deleted, "restored": restored, "silently_flushed_routes_back": silent,
            "missing": len(lost), "deleted_by_port": ports, "first_loss_ns": first,
            "outage_ms": None if first is None or back is None else (back - first) / 1e6,
            "each_ms": each, "deletions_ms": None if first is None or last_del is None else (last_del - first) / 1e6}


def repair_latency(suite: str = "bookworm", *, networkd249: bool = False, deb: Path | None = None,
                   pods: int = 300, runs: int = 10, settle_timeout: float = 10.0,
                   log: Callable[[str], None] | None = None, config: str | None = None) -> dict[str, Any]:
    """The closing note's numbers: a fresh node with the package installed, ``pods`` pods on
    eth1 (plus eth2 and the primary), ``runs`` times ``networkctl reconfigure eth1``; an observer
    in the node measures each outage (first rule deleted -> last rule back). A run whose rules
    are not all back within `settle_timeout` counts as unrepaired; its rules are then put back
    by hand so that the next run starts from the full layout again. `config`: the text of
    /etc/netd-hook/netd-hook.toml (netd-hook restarted with it), e.g. "[replay]\nchase = false"."""
    say = log or (lambda s: None)
    tmp = None
    if deb is None:
        tmp = Path(tempfile.mkdtemp(prefix="ndh-deb-"))
        deb = build_deb(tmp)
    try:
        with Node(suite, networkd249=networkd249) as node:
            node.install_deb(deb)
            if config is not None:
                node.run("sh", "-c", 'mkdir -p /etc/netd-hook && printf "%s\\n" "$1" > /etc/netd-hook/netd-hook.toml '
                         "&& systemctl restart netd-hook", "-", config)
            node.setup_layout((0, 1, 2), {1: pods})
            baseline = node.protected()
            tables = node.eni_tables()
            results: list[dict[str, Any]] = []
            with Observer(node) as obs:
                for i in range(runs):
                    t0 = time.monotonic_ns()
                    node.run("networkctl", "reconfigure", "eth1")
                    # the bus call returns before the wipe: see it start, then wait for the end
                    obs.wait_for(functools.partial(_wiped_since, t0), settle_timeout, "networkd's wipe")
                    try:
                        wait_until(functools.partial(_repaired_since, obs, node, baseline, t0), settle_timeout,
                                   "every rule back", 0.05)
                        ok = True
                    except AssertionError:
                        ok = False
                    time.sleep(0.3)  # a later second pass (networkd 249) would show up here
                    node.wait_settled()
                    res = outage(obs.events(), t0)
                    res["repaired"] = ok and not any(node.missing(baseline))
                    if not res["repaired"]:
                        rules_gone, routes_gone = node.missing(baseline)
                        res["missing_after"] = {"rules": len(rules_gone), "routes": len(routes_gone)}
                        node.ip_batch([ln for t in tables for ln in node.eni_table_lines(t - 1)]
                                      + _rule_lines(rules_gone), force=True)
                        time.sleep(0.3)
                    results.append(res)
                    each = res["each_ms"]
                    say(f"{node.label} run {i + 1}: {dict(res, each_ms=f'{len(each)} outages')}")
            repairs = node.journal("-u", "netd-hook", "MESSAGE_ID=a7e6caf34a5a4925b54a82f6a6014e44")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    ms = [r["outage_ms"] for r in results if r["repaired"] and r["outage_ms"] is not None]
    each = sorted(x for r in results if r["repaired"] for x in r.pop("each_ms"))
    spans = [r["deletions_ms"] for r in results if r["deletions_ms"] is not None]
    return {"node": f"{suite}+networkd249" if networkd249 else suite, "pods": pods, "runs": runs, "config": config,
            "rules_lost": statistics.median(r["deleted"] for r in results) if results else 0,
            "repaired_runs": len(ms), "p50_ms": statistics.median(ms) if ms else None,
            "max_ms": max(ms) if ms else None, "daemon_batch_ms_p50": _median_field(repairs, "NETD_HOOK_DURATION_MS"),
            "rule_p50_ms": statistics.median(each) if each else None,
            "rule_p99_ms": each[min(len(each) - 1, int(0.99 * len(each)))] if each else None,
            "rule_max_ms": each[-1] if each else None,
            "deletions_p50_ms": statistics.median(spans) if spans else None,
            "repair_records": len(repairs), "runs_detail": results}


def _wiped_since(t0: int, events: list[list[Any]]) -> bool:
    return any(e[1] == "del" and e[2] == "rule" and e[0] >= t0 for e in events)


def _repaired_since(obs: Observer, node: Node, baseline: Baseline, t0: int) -> bool:
    return outage(obs.events(), t0)["outage_ms"] is not None and not any(node.missing(baseline))


def _median_field(entries: list[dict[str, Any]], name: str) -> float | None:
    vals = [float(e[name]) for e in entries if name in e]
    return statistics.median(vals) if vals else None


def _rule_lines(rows: Iterable[tuple[tuple[str, str], ...]]) -> list[str]:
    """`ip rule add` lines for rule_set() rows (the VPC CNI layout's kinds only)."""
    lines = []
    for row in rows:
        r = {k: json.loads(v) for k, v in row}
        parts = ["rule", "add", "priority", str(r["priority"])]
        if r.get("src", "all") != "all":
            parts += ["from", r["src"] + (f"/{r['srclen']}" if "srclen" in r else "")]
        if r.get("dst", "all") != "all":
            parts += ["to", r["dst"] + (f"/{r['dstlen']}" if "dstlen" in r else "")]
        if "fwmark" in r:
            parts += ["fwmark", r["fwmark"] + (f"/{r['fwmask']}" if "fwmask" in r else "")]
        parts += ["lookup", str(r["table"])]
        lines.append(" ".join(parts))
    return lines


def _main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python3 -m tests.node", description=__doc__.split("\n", 1)[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    lat = sub.add_parser("latency", help="repair latency per node (the closing note's p50/max)")
    lat.add_argument("--nodes", default="bookworm,trixie,bookworm+networkd249")
    lat.add_argument("--pods", type=int, default=300)
    lat.add_argument("--runs", type=int, default=10)
    lat.add_argument("--deb", type=Path)
    lat.add_argument("--json", action="store_true")
    lat.add_argument("--today", action="store_true", help="netd-hook configured with [replay] chase = false")
    sub.add_parser("reap", help="remove leftovers of crashed runs")
    args = ap.parse_args(argv)
    if args.cmd == "reap":
        print("\n".join(Node.reap_stale()))
        return 0
    tmp = None
    deb = args.deb
    if deb is None:
        tmp = Path(tempfile.mkdtemp(prefix="ndh-deb-"))
        deb = build_deb(tmp)
    try:
        for spec in args.nodes.split(","):
            suite, _, extra = spec.partition("+")
            res = repair_latency(suite, networkd249=extra == "networkd249", deb=deb, pods=args.pods, runs=args.runs,
                                 log=lambda s: print(s, file=sys.stderr),
                                 config="[replay]\nchase = false" if args.today else None)
            if args.json:
                print(json.dumps(res))
            else:
                def ms(v: float | None) -> str:
                    return "-" if v is None else f"{v:.1f} ms"
                print(f"{res['node']}{' (chase = false)' if args.today else ''}: {res['pods']} pods, "
                      f"{res['rules_lost']:.0f} rules lost per reconfigure, "
                      f"repaired {res['repaired_runs']}/{res['runs']}, outage p50 {ms(res['p50_ms'])}, "
                      f"max {ms(res['max_ms'])}, daemon batch p50 {ms(res['daemon_batch_ms_p50'])}; "
                      f"each rule out p50 {ms(res['rule_p50_ms'])}, p99 {ms(res['rule_p99_ms'])}, "
                      f"max {ms(res['rule_max_ms'])}; networkd's deletions p50 {ms(res['deletions_p50_ms'])}; "
                      f"{res['repair_records']} repair records")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
