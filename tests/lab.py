"""A throwaway lab: real systemd-networkd + a private D-Bus system bus in a namespace.

Stdlib only, Python >= 3.10, needs root, iproute2, util-linux (nsenter/unshare),
dbus-daemon and /lib/systemd/systemd-networkd (and, for udev=True, apt-get and dpkg-deb).
It never touches the host's network: everything lives in a network namespace plus a private
mount namespace.

By default a lab runs networkd the way a node does (``activation="socket"``, ``udev=True``);
``Lab(activation="self", udev=False)`` is the older container-like lab.

Layout (one ``Lab``)::

    ip netns add <name>
    holder = ip netns exec <name> unshare -m --propagation private sh -c '<mounts>; exec sleep infinity'
        tmpfs over /run/systemd, /run/dbus, /etc/systemd/network (and networkd.conf.d if present),
        udev=True:  tmpfs over /run/udev (created in the host's /run when missing, like /run/dbus),
                    /run/udev/rules.d/99-lab.rules; /sys stays writable (networkd then waits
                    for udev to initialize each link, as on a node)
        udev=False: /sys remounted read-only (networkd then does not wait for udev)
        lo up
    every command:  nsenter -t <holder pid> -n -m <argv>   (PATH: the networkd binary's
                                                    directory first when a networkctl is beside it)
    udev=True:  systemd-udevd --resolve-names=never   (child; from Debian's udev package unpacked
                    by ``udev_bindir()``, not installed; in a mount namespace of its own with an
                    empty tmpfs over /dev and over every udev rules directory but /run/udev/rules.d:
                    it also receives the host's untagged uevents, and must neither touch the host's
                    /dev nor run the host's rules), then coldplug: ``udevadm trigger --action=add
                    --subsystem-match=net && udevadm settle``; later links come through uevents
    dbus-daemon --system --nofork --print-pid      (child of this process; bus at
                                                    unix:path=/run/dbus/system_bus_socket)
    activation="socket": the rtnetlink socket of systemd-networkd.socket (``ListenNetlink=route
                    1361``, ``ReceiveBuffer=128M``, ``PassPacketInfo=yes``), created in the lab's
                    netns and held by this process, standing in for PID 1, across networkd restarts
                    (``networkd_socket_port``, ``restart_networkd_socket()``)
    <networkd>                                     (child of this process; default
                    /lib/systemd/systemd-networkd, ``networkd_249()`` for Ubuntu 22.04's);
                    activation="socket": started with that socket as fd 3, LISTEN_FDS=1,
                    LISTEN_PID=<its pid>, LISTEN_FDNAMES=systemd-networkd.socket (sd_listen_fds;
                    ``bash -c 'export LISTEN_PID=$$ ...; exec "$@" 3<&N N<&-'`` through nsenter);
                    activation="self": it opens (autobinds) its own rtnetlink socket
    ``popen(..., networkd_socket=True)``: the same socket handed over the same way, as systemd does
                    to a unit with ``Sockets=systemd-networkd.socket``

Opt-in ``Lab(journald=True)``: a private systemd-journald as well (see ``_JOURNALD_SETUP``):
tmpfs over /run/log (and /var/log/journal when the host has one), cgroup2 on /sys/fs/cgroup,
a drop-in in the lab's /run/systemd/journald.conf.d (Storage=volatile, no forwarding), then
``/lib/systemd/systemd-journald`` as a child, started before dbus-daemon. Anything started
in the lab finds its native socket at /run/systemd/journal/socket; ``lab.journal(*matches)``
reads the entries back with ``journalctl -D /run/log/journal -o json``.

Addressing conventions (VPC CNI layout, see /work/shared/VPC-CNI-LAYOUT.md):

* ENI ``i`` is the veth ``eth<i>`` (peer ``vpc<i>``, up, stays in the namespace, unmanaged),
  address ``10.0.<i>.10/24``, gateway ``10.0.<i>.1``. eth0 (created by ``start()``) also gets
  ``Gateway=10.0.0.1`` (default route in main) and uses main; no table 1.
* Secondary ENI ``i >= 1``: table ``i + 1`` with ``10.0.<i>.1/32 dev eth<i> scope link`` and
  ``default via 10.0.<i>.1 dev eth<i>``, rule ``from 10.0.<i>.10 lookup <i+1> pref 32765``.
* Pods: the third octet is the ENI index: ``10.1.<eni>.<x>`` for hand-written tests;
  ``pod_ips(eni, n)`` yields ``10.<1 + k // 250>.<eni>.<k % 250 + 1>`` for k in range(n)
  (so the first 250 are ``10.1.<eni>.1..250``). Per pod: host route ``<ip> dev eniXXXXXXXXXXX
  scope link`` in main, rule ``to <ip> lookup main pref 512`` and, for eni >= 1,
  ``from <ip> lookup <eni+1> pref 1536``. Host veths ``eni*`` match no .network file, so
  networkd leaves them (and their routes) alone.

Beware (real networkd behaviour, reproduced here): configuring any managed link -- including
``add_eni()`` of a new managed ENI, ``reconfigure()``, ``networkctl reload`` that changes a
link's match -- drops every foreign policy rule (512/1024/1536/32765, strict 20) and the
reconfigured link's foreign routes (its per-ENI table). With udev=True a plain
``restart_networkd()`` drops every foreign rule too (links are configured after start-up, once
udev has initialized them); with udev=False it drops nothing.

Caches (outside the repository; parent directory ``$NETD_HOOK_CACHE``, default
/var/cache/netd-hook-ci): ``udev/<version>/`` (the unpacked udev package, see ``udev_bindir()``)
and ``networkd-249/`` (see ``networkd_249()``).

Pytest marker: the smoke/integration tests use ``pytest.mark.lab``; register it with
``markers = ["lab: needs root + systemd-networkd; runs real networkd in a namespace"]``
under ``[tool.pytest.ini_options]``.
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import functools
import glob
import hashlib
import itertools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from collections.abc import Iterable

NETWORKD = "/lib/systemd/systemd-networkd"
JOURNALD = "/lib/systemd/systemd-journald"
JOURNAL_DIR = "/run/log/journal"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
IP = shutil.which("ip") or "/usr/sbin/ip"
BASH = shutil.which("bash") or "/bin/bash"
BUS_ADDRESS = "unix:path=/run/dbus/system_bus_socket"
NETWORK1 = "org.freedesktop.network1"
NAME_PREFIX = "ndh-"
SETTLED_STATES = frozenset({"configured", "unmanaged", "failed", "linger"})
ACTIVATIONS = ("socket", "self")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORKD_249_BUILD = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "networkd-249", "build.sh"))
DEFAULT_CACHE = "/var/cache/netd-hook-ci"

# systemd-networkd.socket: ListenNetlink=route 1361, ReceiveBuffer=128M, PassPacketInfo=yes.
NETWORKD_SOCKET_UNIT = "systemd-networkd.socket"
NETWORKD_SOCKET_GROUPS = 1361
NETWORKD_SOCKET_RCVBUF = 128 * 1024 * 1024
_SO_RCVBUFFORCE = 33      # not in Python's socket module
_SOL_NETLINK = 270
_NETLINK_PKTINFO = 3
_CLONE_NEWNET = 0x40000000

UDEV_RULE = "/run/udev/rules.d/99-lab.rules"
UDEV_CONTROL = "/run/udev/control"

_counter = itertools.count()


class LabError(RuntimeError):
    """The lab could not be set up or a wait timed out."""


class LabCommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the command's stderr."""

    def __str__(self) -> str:  # pragma: no cover - formatting only
        err = (self.stderr or "").strip()
        return f"{super().__str__()}\nstderr: {err}" if err else super().__str__()


@dataclasses.dataclass(frozen=True)
class Eni:
    index: int
    name: str          # eth<index>
    peer: str          # vpc<index>
    ip: str            # 10.0.<index>.10
    prefixlen: int     # 24
    gw: str            # 10.0.<index>.1
    table: int | None  # index + 1, None for eth0 (main)
    ifindex: int
    managed: bool


@dataclasses.dataclass
class _Pod:
    ip: str
    eni: int
    veth: str
    single: bool       # True: the veth carries only this pod (deleted with it)


def pod_ips(eni: int, count: int, start: int = 0) -> list[str]:
    """Pod IPs for ENI ``eni``: ``10.<1 + k // 250>.<eni>.<k % 250 + 1>``."""
    if not 0 <= eni <= 255:
        raise ValueError("eni must be 0..255")
    out = []
    for k in range(start, start + count):
        hi = 1 + k // 250
        if hi > 255:
            raise ValueError("too many pods")
        out.append(f"10.{hi}.{eni}.{k % 250 + 1}")
    return out


def host_veth_name(key: str) -> str:
    """CNI-style host veth name: 'eni' + 11 hex chars (sha1 of key)."""
    return "eni" + hashlib.sha1(key.encode()).hexdigest()[:11]


def wait_until(pred, timeout: float = 10.0, what: str = "condition", interval: float = 0.02,
               error: type = AssertionError):
    """Poll `pred` until it returns something truthy (test harness only: the daemon never polls)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def cache_dir(name: str) -> str:
    """``$NETD_HOOK_CACHE/<name>`` (default parent /var/cache/netd-hook-ci): outside the repo,
    kept between runs (and between CI jobs when the CI caches it)."""
    return os.path.join(os.environ.get("NETD_HOOK_CACHE") or DEFAULT_CACHE, name)


def _host_systemd_version() -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "systemd"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        raise LabError(f"cannot tell the host's systemd version: {r.stderr.strip()}")
    return r.stdout.strip()


@functools.cache
def udev_bindir() -> str:
    """Debian's udev package for the host's systemd version, unpacked (never installed) into
    ``cache_dir("udev")/<version>``; returns the directory holding its ``udevadm`` and a
    ``systemd-udevd`` link to it, at once when that is already there.

    udevd is udevadm under another name (argv[0] picks): the package's own link is absolute
    (/bin/udevadm, not on this machine), hence a relative one beside udevadm. Debian builds
    udevadm without libsystemd-shared: it runs in place with the host's libraries (libkmod,
    libblkid, libacl...), no LD_LIBRARY_PATH. Raises LabError when the package cannot be had
    (e.g. offline)."""
    version = _host_systemd_version()
    dest = os.path.join(cache_dir("udev"), version.replace(":", "%3a"))
    for sub in ("bin", "usr/bin"):  # Debian 12 / Ubuntu 22.04, Debian 13 (merged /usr)
        if os.path.islink(os.path.join(dest, sub, "systemd-udevd")):
            return os.path.join(dest, sub)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unpack-", dir=os.path.dirname(dest))
    try:
        def download() -> subprocess.CompletedProcess[str]:
            return subprocess.run(["apt-get", "download", "-q", f"udev={version}"], cwd=tmp,
                                  capture_output=True, text=True, timeout=300)
        r = download()
        if r.returncode != 0:  # an image without package lists: what apt-get update is for
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
            r = download()
        debs = glob.glob(os.path.join(tmp, "udev_*.deb"))
        if r.returncode != 0 or len(debs) != 1:
            raise LabError(f"apt-get download udev={version} failed: {r.stderr.strip()}")
        root = os.path.join(tmp, "root")
        r = subprocess.run(["dpkg-deb", "-x", debs[0], root], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise LabError(f"dpkg-deb -x {debs[0]} failed: {r.stderr.strip()}")
        sub = next((d for d in ("bin", "usr/bin") if os.path.isfile(os.path.join(root, d, "udevadm"))), None)
        if sub is None:
            raise LabError(f"no udevadm in {debs[0]}")
        os.symlink("udevadm", os.path.join(root, sub, "systemd-udevd"))
        try:
            os.rename(root, dest)
        except OSError:  # another run unpacked it meanwhile
            if not os.path.islink(os.path.join(dest, sub, "systemd-udevd")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(dest, sub)


@functools.cache
def networkd_249() -> str:
    """Path of systemd-networkd 249 (Ubuntu 22.04's), with its networkctl beside it.

    Runs ``<repo>/../shared/networkd-249/build.sh`` with OUTDIR ``cache_dir("networkd-249")``:
    it returns at once when that is built, else builds (installs build tools with apt-get; about
    a minute). Raises LabError when it cannot; tests call ``require_networkd_249()``."""
    if not os.path.isfile(NETWORKD_249_BUILD):
        raise LabError(f"{NETWORKD_249_BUILD} not found")
    r = subprocess.run(["sh", NETWORKD_249_BUILD, cache_dir("networkd-249")],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800)
    bindir = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    networkd = os.path.join(bindir, "systemd-networkd")
    if r.returncode != 0 or not all(os.access(os.path.join(bindir, b), os.X_OK)
                                    for b in ("systemd-networkd", "networkctl")):
        raise LabError(f"building networkd 249 failed (rc {r.returncode}): {r.stderr.strip()[-2000:]}")
    return networkd


def require_networkd_249() -> str:
    """``networkd_249()`` for tests: skips the test (unittest.SkipTest, which pytest honours)
    when it cannot be built, except in CI (env CI non-empty), where the LabError propagates."""
    try:
        return networkd_249()
    except LabError as e:
        if os.environ.get("CI"):
            raise
        raise unittest.SkipTest(f"networkd 249 unavailable: {e}") from None


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _ns_inode(pid: int, kind: str = "net") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _pids_in_netns(inode: int) -> list[int]:
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        if _ns_inode(int(entry)) == inode:
            out.append(int(entry))
    return out


def _stop_popen(p: subprocess.Popen, timeout: float = 5.0) -> None:
    if p.poll() is not None:
        return
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
    except ProcessLookupError:
        pass


# Shell run by the holder inside `ip netns exec NAME unshare -m --propagation private`;
# {sys} is _SYS_UDEV or _SYS_READ_ONLY.
_HOLDER_SCRIPT = r"""
set -e
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir -p /run/dbus
mount -t tmpfs -o mode=0755 tmpfs /run/dbus
mount -t tmpfs -o mode=0755 tmpfs /etc/systemd/network
if [ -d /etc/systemd/networkd.conf.d ]; then
    mount -t tmpfs -o mode=0755 tmpfs /etc/systemd/networkd.conf.d
fi
{sys}
mkdir -p /run/systemd/netif/links /run/systemd/netif/leases
chown -R systemd-network:systemd-network /run/systemd/netif
ip link set lo up
echo READY
exec sleep infinity
"""

# udev=True: /sys stays as `ip netns exec` mounted it (writable); a private /run/udev, created in
# the host's volatile /run only when missing (as /run/dbus above; a host with udev has it).
_SYS_UDEV = r"""
[ -d /run/udev ] || mkdir -m 0755 /run/udev
mount -t tmpfs -o mode=0755 tmpfs /run/udev
mkdir /run/udev/rules.d
"""
# udev=False: what a container looks like to networkd.
_SYS_READ_ONLY = "mount -o remount,ro /sys"

_PRIVATE_MOUNTS = ("/run/systemd", "/run/dbus", "/etc/systemd/network")

# A link without a udev database entry counts as not initialized: give every one a property.
_UDEV_RULES = 'SUBSYSTEM=="net", ENV{ID_LAB}="1"\n'

# systemd-udevd's own mount namespace, inside the lab's (`unshare -m` then this; "$0" is udevd).
# Untagged uevents (every device that is not a network interface) reach every network namespace,
# so this udevd also handles the host's: an empty /dev keeps it off the host's device nodes
# (no /dev/block, /dev/char links), and empty rules directories keep the host's rules (dm,
# hwclock, seat...) from running; only /run/udev/rules.d, the lab's, is read.
_UDEVD_SCRIPT = r"""
set -e
mount -t tmpfs -o mode=0755,size=1m tmpfs /dev
for d in /etc/udev/rules.d /usr/local/lib/udev/rules.d /usr/lib/udev/rules.d /lib/udev/rules.d; do
    if [ -d "$d" ] && ! mountpoint -q "$d"; then
        mount -t tmpfs -o ro,mode=0755,size=64k tmpfs "$d"
    fi
done
exec "$0" "$@"
"""

# Run inside the lab (its private mount namespace) before journald starts, for journald=True.
# - /run/log: journald's runtime journal, on a private tmpfs. Only when the host has no /run/log
#   is the empty directory created, in the host's volatile /run (what systemd-tmpfiles makes on
#   any systemd host); nothing else on the host is written.
# - /var/log/journal, when the host has one: a private tmpfs over it too, belt and braces; with
#   Storage=volatile journald never goes there, and never creates it when it is missing.
# - /sys/fs/cgroup: `ip netns exec` mounted a fresh /sys without it, and journald 252 refuses to
#   start without a cgroup hierarchy ("Failed to acquire cgroup root path: No medium found").
# - The drop-in sits in the lab's private /run/systemd and overrides /etc/systemd/journald.conf:
#   volatile storage, no forwarding anywhere (syslog, kmsg, console, wall), no reading of the
#   host's /dev/kmsg, no rate limit (tests send bursts).
_JOURNALD_SETUP = r"""
set -e
[ -d /run/log ] || mkdir -m 0755 /run/log
mount -t tmpfs -o mode=0755,size=64m tmpfs /run/log
if [ -d /var/log/journal ]; then
    mount -t tmpfs -o mode=2755,size=16m tmpfs /var/log/journal
fi
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
mkdir -p /run/systemd/journald.conf.d
printf '%s\n' '[Journal]' Storage=volatile RuntimeMaxUse=48M ForwardToSyslog=no ForwardToKMsg=no \
    ForwardToConsole=no ForwardToWall=no ReadKMsg=no RateLimitIntervalSec=0 \
    > /run/systemd/journald.conf.d/zz-ndh-lab.conf
echo OK
"""


class Lab:
    """Real systemd-networkd in a private net+mount namespace. See module docstring."""

    bus_address: str = BUS_ADDRESS

    def __init__(self, name: str | None = None, *, activation: str = "socket", udev: bool = True,
                 networkd: str | None = None, networkd_debug: bool = False,
                 keep_logs: bool = False, journald: bool = False):
        """``activation``: "socket" (networkd gets its rtnetlink socket from this process, as
        from PID 1 on a node) or "self" (networkd opens its own). ``udev``: run systemd-udevd
        with a writable /sys, as on a node, or none with a read-only /sys, as in a container.
        ``networkd``: the networkd binary (default /lib/systemd/systemd-networkd; e.g.
        ``networkd_249()``); a ``networkctl`` beside it comes first on the lab's PATH."""
        self.name = name or f"{NAME_PREFIX}{os.getpid()}-{next(_counter)}"
        if len(self.name) > 64 or "/" in self.name:
            raise ValueError("bad namespace name")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}")
        self.activation = activation
        self.udev = udev
        self.networkd = networkd or NETWORKD
        bindir = os.path.dirname(os.path.abspath(self.networkd))
        self._path_prefix = bindir if os.access(os.path.join(bindir, "networkctl"), os.X_OK) else None
        self.networkd_debug = networkd_debug
        self.keep_logs = keep_logs
        self.journald = journald
        self._journald: subprocess.Popen | None = None
        self._udevd: subprocess.Popen | None = None
        self._udevadm: str | None = None
        self._networkd_socket: socket.socket | None = None
        self.holder_pid: int | None = None
        self.dbus_pid: int | None = None
        self.netns_inode: int | None = None
        self.logdir: str | None = None
        self.enis: dict[int, Eni] = {}
        self.pods: dict[str, _Pod] = {}
        self.timings: dict[str, float] = {}
        self._holder: subprocess.Popen | None = None
        self._dbus: subprocess.Popen | None = None
        self._networkd: subprocess.Popen | None = None
        self._children: list[subprocess.Popen] = []
        self._netns_created = False
        self._closed = False
        self._started = False
        self._bulk_counter = itertools.count()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Lab {self.name} activation={self.activation} udev={self.udev} holder={self.holder_pid} "
                f"networkd={self.networkd_pid}>")

    def start(self) -> None:
        if self._started:
            raise LabError("Lab already started")
        if os.geteuid() != 0:
            raise LabError("Lab needs root")
        self._started = True
        t0 = time.monotonic()
        atexit.register(self.close)
        try:
            self.logdir = tempfile.mkdtemp(prefix=f"{self.name}-")
            self._start_holder()
            self.timings["holder"] = time.monotonic() - t0
            if self.udev:
                self.start_udevd()
                self.timings["udev"] = time.monotonic() - t0
            if self.activation == "socket":
                self._networkd_socket = self._bind_networkd_socket()
            if self.journald:
                self._setup_journald()
                self.start_journald()
                self.timings["journald"] = time.monotonic() - t0
            self._start_dbus()
            self.timings["dbus"] = time.monotonic() - t0
            self.add_eni(0, wait=False)
            self.start_networkd()
            self.timings["start"] = time.monotonic() - t0
        except BaseException:
            self.close()
            raise

    def _start_holder(self) -> None:
        r = subprocess.run([IP, "netns", "add", self.name], capture_output=True, text=True)
        if r.returncode != 0:
            raise LabError(f"ip netns add {self.name} failed: {r.stderr.strip()}")
        self._netns_created = True
        self.netns_inode = os.stat(f"/run/netns/{self.name}").st_ino
        # ip netns exec and unshare (without --fork) both exec, and sh execs sleep:
        # the Popen pid ends up being the `sleep infinity` holding both namespaces.
        self._holder = subprocess.Popen(
            [IP, "netns", "exec", self.name, "unshare", "-m", "--propagation", "private",
             "sh", "-c", _HOLDER_SCRIPT.format(sys=_SYS_UDEV if self.udev else _SYS_READ_ONLY)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, close_fds=True)
        self.holder_pid = self._holder.pid
        line = self._readline(self._holder, 10.0)
        if line.strip() != "READY":
            err = ""
            if self._holder.poll() is not None:
                err = self._holder.stderr.read()
            raise LabError(f"namespace holder failed to start: {line!r} {err.strip()}")
        self._holder.stdout.close()
        self._holder.stderr.close()
        self._check_private()

    @staticmethod
    def _readline(p: subprocess.Popen, timeout: float) -> str:
        r, _, _ = select.select([p.stdout], [], [], timeout)
        if not r:
            raise LabError(f"timeout waiting for pid {p.pid} to report readiness")
        return p.stdout.readline()

    def _check_private(self) -> None:
        pid = self.holder_pid
        if _ns_inode(pid, "mnt") == _ns_inode(os.getpid(), "mnt"):
            raise LabError("holder shares the host mount namespace")
        if _ns_inode(pid, "net") != self.netns_inode:
            raise LabError("holder is not in the lab's network namespace")
        with open(f"/proc/{pid}/mountinfo") as f:
            mounts = {}
            for line in f:
                left, _, right = line.partition(" - ")
                mounts[left.split()[4]] = (right.split()[0], left.split()[5])
        for path in _PRIVATE_MOUNTS + (("/run/udev",) if self.udev else ()):
            if mounts.get(path, ("",))[0] != "tmpfs":
                raise LabError(f"{path} is not a private tmpfs in the lab")
        sys_ro = "ro" in mounts.get("/sys", ("", ""))[1].split(",")
        if self.udev and sys_ro:
            raise LabError("/sys is read-only in the lab (is the host's?): networkd would not use udev; "
                           "use udev=False")
        if not self.udev and not sys_ro:
            raise LabError("/sys is not read-only in the lab")
        # A file written in the lab's /etc/systemd/network must not show up on the host.
        probe = f".ndh-probe-{self.name}"
        self.write_file(f"/etc/systemd/network/{probe}", "probe\n")
        try:
            if os.path.exists(f"/etc/systemd/network/{probe}"):
                os.unlink(f"/etc/systemd/network/{probe}")
                raise LabError("lab mounts leak to the host (/etc/systemd/network)")
        finally:
            self.remove_file(f"/etc/systemd/network/{probe}")

    def _start_dbus(self) -> None:
        # --nofork keeps dbus-daemon our child (reaped, killed by pid); --print-pid doubles
        # as the readiness signal: it is printed once the socket is listening.
        log = open(os.path.join(self.logdir, "dbus.log"), "ab")
        try:
            self._dbus = subprocess.Popen(
                [NSENTER, "-t", str(self.holder_pid), "-n", "-m",
                 "dbus-daemon", "--system", "--nofork", "--nopidfile", "--print-pid"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True)
        finally:
            log.close()
        line = self._readline(self._dbus, 10.0).strip()
        if not line.isdigit():
            raise LabError(f"dbus-daemon did not start: {line!r} (see {self.logdir}/dbus.log)")
        self.dbus_pid = int(line)
        self._dbus.stdout.close()

    def close(self) -> None:
        """Stop everything by PID and delete the namespace. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            atexit.unregister(self.close)
        except Exception:
            pass
        for p in reversed(self._children):
            self._quiet(_stop_popen, p)
        self._quiet(self.stop_networkd, False)
        if self._networkd_socket is not None:
            self._quiet(self._networkd_socket.close)
            self._networkd_socket = None
        self._quiet(self.stop_udevd)
        self._quiet(self.stop_journald)
        if self._dbus is not None:
            self._quiet(_stop_popen, self._dbus)
        # Anything else still living in our netns (e.g. a daemon a test forked): by PID.
        if self.netns_inode is not None and self._netns_created:
            for pid in self._quiet(_pids_in_netns, self.netns_inode) or []:
                if pid != self.holder_pid:
                    self._quiet(os.kill, pid, signal.SIGKILL)
        if self._holder is not None:
            self._quiet(self._holder.kill)
            self._quiet(self._holder.wait, 5)
        if self._netns_created:
            self._quiet(subprocess.run, [IP, "netns", "del", self.name],
                        capture_output=True, timeout=10)
        if self.logdir and not self.keep_logs:
            self._quiet(shutil.rmtree, self.logdir, True)

    @staticmethod
    def _quiet(fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except Exception:
            return None

    @classmethod
    def reap_stale(cls) -> list[str]:
        """Remove leftovers of crashed runs: netns ``ndh-<pid>-*`` whose creator pid is dead.

        Processes inside such a namespace are killed by PID (matched by netns inode).
        Returns the names removed. Never called implicitly."""
        removed = []
        try:
            names = os.listdir("/run/netns")
        except OSError:
            return removed
        for name in names:
            if not name.startswith(NAME_PREFIX):
                continue
            owner = name[len(NAME_PREFIX):].split("-", 1)[0]
            if not owner.isdigit() or _pid_alive(int(owner)):
                continue
            try:
                ino = os.stat(f"/run/netns/{name}").st_ino
                for pid in _pids_in_netns(ino):
                    cls._quiet(os.kill, pid, signal.SIGKILL)
            except OSError:
                pass
            subprocess.run([IP, "netns", "del", name], capture_output=True)
            removed.append(name)
        return removed

    # ------------------------------------------------------------------ running things
    def _nsenter(self, argv: Iterable[str]) -> list[str]:
        if self.holder_pid is None or self._closed:
            raise LabError("lab is not running")
        return [NSENTER, "-t", str(self.holder_pid), "-n", "-m", *argv]

    def _env(self, env: dict | None = None) -> dict[str, str]:
        """os.environ for a process in the lab: the lab's bus, the lab networkd's networkctl
        first on PATH, none of our own notify or socket-activation variables; ``env`` over it."""
        full = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.bus_address)
        for var in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC",
                    "WATCHDOG_PID"):
            full.pop(var, None)
        if self._path_prefix:
            full["PATH"] = os.pathsep.join([self._path_prefix, full.get("PATH") or os.defpath])
        full.update(env or {})
        return full

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run argv inside the lab (nsenter), text mode, output captured."""
        env = self._env({"SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""})
        r = subprocess.run(self._nsenter(argv), input=input, capture_output=True, text=True,
                           timeout=timeout, env=env,
                           stdin=subprocess.DEVNULL if input is None else None)
        if check and r.returncode != 0:
            raise LabCommandError(r.returncode, list(argv), r.stdout, r.stderr)
        return r

    def popen(self, argv: list[str], env: dict | None = None, *, networkd_socket: bool = False,
              **kw) -> subprocess.Popen:
        """Start a long-running process inside the lab.

        ``env`` is merged over os.environ (see ``_env``); DBUS_SYSTEM_BUS_ADDRESS is always set
        (unless ``env`` sets it). ``networkd_socket`` (socket-activated labs only): hand it networkd's
        rtnetlink socket the way systemd does to a unit with ``Sockets=systemd-networkd.socket``
        (fd 3, LISTEN_FDS=1, LISTEN_PID=its pid, LISTEN_FDNAMES=systemd-networkd.socket). The
        process is stopped (SIGTERM, then SIGKILL) by ``close()``; stop it yourself earlier if
        the test needs its exit status."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        if networkd_socket:
            argv = self._socket_activated(argv)
            kw["pass_fds"] = (*kw.get("pass_fds", ()), self._networkd_socket_fd())
        p = subprocess.Popen(self._nsenter(argv), env=self._env(env), **kw)
        self._children.append(p)
        return p

    # ------------------------------------------------------------------ networkd's socket (PID 1's part)
    def netns_socket(self, family: int, type: int, proto: int = 0) -> socket.socket:
        """A socket created in the lab's network namespace, owned by this process (sockets keep
        the namespace they were created in). A short-lived thread enters the namespace
        (setns(2) changes only the calling thread), creates it and goes back."""
        if not self._netns_created or self._closed:
            raise LabError("lab is not running")
        libc = ctypes.CDLL(None, use_errno=True)
        out: list[socket.socket] = []
        failed: list[BaseException] = []

        def create() -> None:
            try:
                home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    lab = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        if libc.setns(lab, _CLONE_NEWNET) != 0:
                            raise OSError(ctypes.get_errno(), f"setns into {self.name}")
                        try:
                            out.append(socket.socket(family, type, proto))
                        finally:
                            # The thread ends right after; going back keeps it tidy regardless.
                            libc.setns(home, _CLONE_NEWNET)
                    finally:
                        os.close(lab)
                finally:
                    os.close(home)
            except BaseException as e:  # handed to the caller's thread
                failed.append(e)
        t = threading.Thread(target=create, name=f"{self.name}-setns")
        t.start()
        t.join()
        if failed:
            raise LabError(f"cannot create a socket in {self.name}: {failed[0]}") from failed[0]
        return out[0]

    def _bind_networkd_socket(self) -> socket.socket:
        """What PID 1 does for systemd-networkd.socket (non-blocking, as systemd makes it)."""
        s = self.netns_socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, NETWORKD_SOCKET_RCVBUF)
            s.setsockopt(_SOL_NETLINK, _NETLINK_PKTINFO, 1)
            s.bind((0, NETWORKD_SOCKET_GROUPS))  # port 0: the kernel picks one (autobind)
            s.setblocking(False)
            # Proof it lives in the lab's netns: the lab's /proc/net/netlink lists its inode.
            inode = str(os.fstat(s.fileno()).st_ino)
            with open(f"/proc/{self.holder_pid}/net/netlink") as f:
                if not any(line.split()[-1] == inode for line in f.readlines()[1:]):
                    raise LabError("networkd's socket is not in the lab's network namespace")
        except BaseException:
            s.close()
            raise
        return s

    @property
    def networkd_socket_port(self) -> int | None:
        """Netlink port id of the socket this lab hands networkd (the ``nlmsg_pid`` of its
        requests' notifications); None for activation="self"."""
        s = self._networkd_socket
        return s.getsockname()[0] if s is not None else None

    def _networkd_socket_fd(self) -> int:
        if self._networkd_socket is None:
            raise LabError("this lab is not socket-activated (activation='socket')")
        return self._networkd_socket.fileno()

    def _socket_activated(self, argv: list[str]) -> list[str]:
        """argv wrapped so that it runs with networkd's socket as fd 3 and the sd_listen_fds
        variables (LISTEN_PID is the pid after exec: $$ of the shell that execs it). The caller
        passes the socket's fd with pass_fds. bash, not sh: dash takes only one-digit fds."""
        fd = self._networkd_socket_fd()
        move = f" 3<&{fd} {fd}<&-" if fd != 3 else ""
        script = (f"export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES={NETWORKD_SOCKET_UNIT}; "
                  f'exec "$@"{move}')
        return [BASH, "-c", script, "bash", *argv]

    def restart_networkd_socket(self) -> None:
        """What ``systemctl restart systemd-networkd.socket`` does: PID 1 closes the socket and
        binds a new one (a new port), which the next networkd gets; a running networkd keeps
        the old one."""
        old = self._networkd_socket
        if old is None:
            raise LabError("this lab is not socket-activated (activation='socket')")
        self._networkd_socket = self._bind_networkd_socket()
        old.close()

    def path(self, p: str) -> str:
        """Host path for an absolute path as seen inside the lab (/proc/<holder>/root/...)."""
        return f"/proc/{self.holder_pid}/root/{p.lstrip('/')}"

    def write_file(self, p: str, text: str) -> None:
        with open(self.path(p), "w") as f:
            f.write(text)

    def read_file(self, p: str) -> str:
        with open(self.path(p)) as f:
            return f.read()

    def remove_file(self, p: str) -> None:
        try:
            os.unlink(self.path(p))
        except FileNotFoundError:
            pass

    def busctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("busctl", "--system", *args, check=check)

    # ------------------------------------------------------------------ ip oracle
    def ip_json(self, *args: str) -> list[dict]:
        """``ip -j <args>`` inside the lab, parsed; [] for empty output."""
        out = self.run(IP, "-j", *args).stdout.strip()
        return json.loads(out) if out else []

    def rules(self, family: int = 4) -> list[dict]:
        return self.ip_json("-d", f"-{family}", "rule", "show")

    def routes(self, table, family: int = 4) -> list[dict]:
        return self.ip_json("-d", f"-{family}", "route", "show", "table", str(table))

    def rule_prefs(self, family: int = 4) -> list[int]:
        """Sorted priorities of all rules (handy for asserts)."""
        return sorted(r.get("priority", 0) for r in self.rules(family))

    def links(self) -> list[str]:
        """Interface names in the lab (from the lab's sysfs, no subprocess)."""
        return sorted(os.listdir(self.path("/sys/class/net")))

    def ip_batch(self, lines: list[str], force: bool = False) -> None:
        """Feed lines to ``ip [-force] -batch -``. With force, errors are ignored."""
        if not lines:
            return
        args = [IP] + (["-force"] if force else []) + ["-batch", "-"]
        self.run(*args, input="\n".join(lines) + "\n", check=not force, timeout=120)

    # ------------------------------------------------------------------ journald (opt-in)
    def _setup_journald(self) -> None:
        if not os.access(JOURNALD, os.X_OK):
            raise LabError(f"{JOURNALD} not installed")
        out = self.run("sh", "-c", _JOURNALD_SETUP).stdout.strip()
        if out != "OK":
            raise LabError(f"journald mounts failed: {out!r}")
        with open(f"/proc/{self.holder_pid}/mountinfo") as f:
            fstypes = {}
            for line in f:
                left, _, right = line.partition(" - ")
                fstypes[left.split()[4]] = right.split()[0]
        private = ["/run/log"] + (["/var/log/journal"] if os.path.isdir("/var/log/journal") else [])
        for path in private:
            if fstypes.get(path) != "tmpfs":
                raise LabError(f"{path} is not a private tmpfs in the lab")

    @property
    def journald_pid(self) -> int | None:
        p = self._journald
        return p.pid if p is not None and p.poll() is None else None

    def journald_log(self) -> str:
        try:
            with open(os.path.join(self.logdir, "journald.log"), errors="replace") as f:
                return f.read()
        except (OSError, TypeError):
            return ""

    def start_journald(self, timeout: float = 10) -> None:
        """Start the lab's systemd-journald (journald=True labs start it themselves) and wait
        until it answers ``journalctl --sync`` (its varlink socket: the event loop runs)."""
        if not self.journald:
            raise LabError("this lab was created without journald=True")
        if self.journald_pid is not None:
            raise LabError("journald already running")
        env = self._env({"SYSTEMD_LOG_TARGET": "console", "SYSTEMD_LOG_LEVEL": "info"})
        log = open(os.path.join(self.logdir, "journald.log"), "ab")
        try:
            self._journald = subprocess.Popen(self._nsenter([JOURNALD]), env=env, stdin=subprocess.DEVNULL,
                                              stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

        def ready():
            if self._journald.poll() is not None:
                raise LabError("systemd-journald exited: " + self.journald_log()[-2000:])
            return (os.path.exists(self.path(JOURNAL_SOCKET))
                    and self.run("journalctl", "--sync", check=False).returncode == 0)
        self._wait(ready, timeout, "systemd-journald to listen")

    def stop_journald(self) -> None:
        """SIGTERM by PID. Its sockets stay behind (as after a crash): senders get ECONNREFUSED."""
        p = self._journald
        if p is None:
            return
        self._journald = None
        _stop_popen(p, 10)

    def journal(self, *matches: str, sync: bool = True) -> list[dict]:
        """The lab journal's entries matching ``matches`` (journalctl syntax, e.g.
        ``"MESSAGE_ID=..."``), oldest first, as ``journalctl -o json --all`` dicts.

        ``sync``: first ``journalctl --sync``: journald answers after it has written what was
        already queued on its sockets. Values journalctl prints as byte arrays (not printable
        UTF-8) come back as str (UTF-8, invalid bytes replaced); a field sent more than once
        comes back as a list."""
        if sync and self.journald_pid is not None:
            self.run("journalctl", "--sync")
        r = self.run("journalctl", "-D", JOURNAL_DIR, "-o", "json", "--all", "--no-pager", *matches, check=False)
        if r.returncode != 0 and not r.stdout.strip():
            if "No journal files" in r.stderr:
                return []
            raise LabCommandError(r.returncode, ["journalctl", *matches], r.stdout, r.stderr)

        def value(v):
            if isinstance(v, list) and all(isinstance(b, int) for b in v):
                return bytes(v).decode("utf-8", "replace")
            if isinstance(v, list):
                return [value(x) for x in v]
            return v
        return [{k: value(v) for k, v in json.loads(line).items()}
                for line in r.stdout.splitlines() if line.startswith("{")]

    def wait_journal(self, *matches: str, count: int = 1, timeout: float = 10) -> list[dict]:
        """``journal(*matches)`` once it has at least ``count`` entries (polls)."""
        def enough():
            entries = self.journal(*matches)
            return entries if len(entries) >= count else None
        return self._wait(enough, timeout, f"{count} journal entries matching {matches}", interval=0.1)

    # ------------------------------------------------------------------ udev (udev=True)
    @property
    def udevd_pid(self) -> int | None:
        p = self._udevd
        return p.pid if p is not None and p.poll() is None else None

    def udevd_log(self) -> str:
        try:
            with open(os.path.join(self.logdir, "udevd.log"), errors="replace") as f:
                return f.read()
        except (OSError, TypeError):
            return ""

    def udevadm(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """The unpacked ``udevadm <args>`` inside the lab."""
        if self._udevadm is None:
            raise LabError("no udev in this lab (udev=False)")
        return self.run(self._udevadm, *args, timeout=timeout)

    def start_udevd(self, timeout: float = 10) -> None:
        """Start systemd-udevd (udev=True labs start it themselves, before networkd), wait for
        its control socket, then coldplug the links that exist, as systemd-udev-trigger.service
        does at boot; links created later are initialized through their uevents."""
        if not self.udev:
            raise LabError("this lab was created with udev=False")
        if self.udevd_pid is not None:
            raise LabError("systemd-udevd already running")
        bindir = udev_bindir()
        self._udevadm = os.path.join(bindir, "udevadm")
        self.write_file(UDEV_RULE, _UDEV_RULES)
        self.remove_file(UDEV_CONTROL)  # a stopped udevd leaves it behind
        env = self._env({"SYSTEMD_LOG_TARGET": "console",
                         "SYSTEMD_LOG_LEVEL": "debug" if self.networkd_debug else "info"})
        log = open(os.path.join(self.logdir, "udevd.log"), "ab")
        try:
            # nsenter, unshare (without --fork) and sh all exec: the Popen pid is udevd's.
            self._udevd = subprocess.Popen(
                self._nsenter(["unshare", "-m", "--propagation", "private", "sh", "-c", _UDEVD_SCRIPT,
                               os.path.join(bindir, "systemd-udevd"), "--resolve-names=never"]),
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

        def listening() -> bool:
            if self._udevd is None or self._udevd.poll() is not None:
                raise LabError("systemd-udevd exited: " + self.udevd_log()[-2000:])
            return os.path.exists(self.path(UDEV_CONTROL))
        self._wait(listening, timeout, "systemd-udevd to listen")
        self.udevadm("trigger", "--action=add", "--subsystem-match=net")
        self.udevadm("settle", f"--timeout={int(timeout)}")

    def stop_udevd(self) -> None:
        """SIGTERM by PID (udevd stops its workers itself; close() kills any left in the netns)."""
        p = self._udevd
        if p is None:
            return
        self._udevd = None
        _stop_popen(p, 10)

    # ------------------------------------------------------------------ networkd
    @property
    def networkd_pid(self) -> int | None:
        p = self._networkd
        return p.pid if p is not None and p.poll() is None else None

    def networkd_log(self) -> str:
        try:
            with open(os.path.join(self.logdir, "networkd.log"), errors="replace") as f:
                return f.read()
        except (OSError, TypeError):
            return ""

    def name_owner(self, name: str = NETWORK1) -> str | None:
        """Unique bus name owning ``name`` on the lab's bus, or None."""
        r = self.busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                        "org.freedesktop.DBus", "GetNameOwner", "s", name, check=False)
        if r.returncode != 0:
            return None
        return r.stdout.split('"')[1] if '"' in r.stdout else None

    def _wait(self, pred, timeout: float, what: str, interval: float = 0.05):
        return wait_until(pred, timeout, what, interval, error=LabError)

    def start_networkd(self, wait: bool = True, timeout: float = 15) -> None:
        """Start ``self.networkd`` (socket-activated or not, see the class) and, with ``wait``,
        wait until it owns its bus name and every link has settled."""
        if self.networkd_pid is not None:
            raise LabError("networkd already running")
        if self._dbus is None or self._dbus.poll() is not None:
            raise LabError("dbus-daemon is not running")
        env = self._env({"SYSTEMD_LOG_LEVEL": "debug" if self.networkd_debug else "info",
                         "SYSTEMD_LOG_TARGET": "console"})
        argv = [self.networkd]  # no arguments: networkd 249 refuses any
        pass_fds: tuple[int, ...] = ()
        if self.activation == "socket":
            argv = self._socket_activated(argv)
            pass_fds = (self._networkd_socket_fd(),)
        log = open(os.path.join(self.logdir, "networkd.log"), "ab")
        try:
            self._networkd = subprocess.Popen(self._nsenter(argv), env=env, pass_fds=pass_fds,
                                              stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT)
        finally:
            log.close()
        if not wait:
            return

        def owned():
            if self._networkd.poll() is not None:
                raise LabError("systemd-networkd exited: " + self.networkd_log()[-2000:])
            return self.name_owner()
        self._wait(owned, timeout, "org.freedesktop.network1 to be owned")
        self.wait_settled(timeout)

    def stop_networkd(self, wait_name: bool = True) -> None:
        p = self._networkd
        if p is None:
            return
        self._networkd = None
        _stop_popen(p, 10)
        if wait_name and self._dbus is not None and self._dbus.poll() is None:
            # dbus-daemon releases the name when it notices the closed connection;
            # don't let a quick restart race with that.
            self._wait(lambda: self.name_owner() is None, 5, "org.freedesktop.network1 release")

    def kill_networkd(self) -> None:
        """SIGKILL, as a crash or the OOM killer would (systemd then restarts it: the caller's
        ``start_networkd``). The bus releases its name; the socket stays with the holder."""
        p, self._networkd = self._networkd, None
        if p is None:
            raise LabError("networkd is not running")
        p.kill()
        p.wait(10)

    def restart_dbus(self) -> None:
        """Stop the system bus and start a new one (every connection is dropped; systemd's own
        services do not get back on it by themselves)."""
        if self._dbus is not None:
            _stop_popen(self._dbus)
        self._start_dbus()

    def restart_networkd(self, wait: bool = True, timeout: float = 15) -> None:
        """Stop and start networkd (``systemctl restart systemd-networkd``: the socket stays)."""
        self.stop_networkd()
        self.start_networkd(wait=wait, timeout=timeout)

    def reconfigure(self, *links: str, wait: bool = False) -> None:
        """``networkctl reconfigure LINK...`` (default: all ENIs). The bus call returns after
        the link is already back in 'initialized'; the wipe follows within milliseconds."""
        names = list(links) or [e.name for e in self.enis.values() if e.managed]
        self.run("networkctl", "reconfigure", *names)
        if wait:
            self.wait_settled()

    def reload(self) -> None:
        self.run("networkctl", "reload")

    def networkctl_json(self) -> dict:
        return json.loads(self.run("networkctl", "list", "--json=short").stdout)

    def link_states(self) -> dict[str, str]:
        """name -> AdministrativeState, from ``networkctl list --json=short`` (bus Describe());
        networkctl 249 calls it SetupState there."""
        return {i["Name"]: i.get("AdministrativeState") or i.get("SetupState", "")
                for i in self.networkctl_json().get("Interfaces", [])}

    def wait_settled(self, timeout: float = 15) -> None:
        """Until networkd knows every link in the lab and each is configured/unmanaged/
        failed/linger. Polls every 50 ms (test harness only)."""
        last: dict[str, str] = {}

        def settled():
            nonlocal last
            if self._networkd is not None and self._networkd.poll() is not None:
                raise LabError("systemd-networkd exited: " + self.networkd_log()[-2000:])
            try:
                last = self.link_states()
            except (subprocess.CalledProcessError, ValueError):
                return False
            if not set(self.links()) <= set(last):
                return False
            return all(s in SETTLED_STATES for s in last.values())
        try:
            self._wait(settled, timeout, "links to settle")
        except LabError as e:
            raise LabError(f"{e}; states={last}") from None

    def wait_state(self, link: str, state: str = "configured", timeout: float = 15) -> None:
        self._wait(lambda: self.link_states().get(link) == state, timeout,
                   f"{link} to be {state}")

    # ------------------------------------------------------------------ VPC CNI layout
    def add_eni(self, index: int, *, managed: bool = True, wait: bool = True) -> Eni:
        """Create ENI ``eth<index>`` (see module docstring). A managed ENI appearing makes
        networkd configure it, which drops foreign rules (ENI hot-plug)."""
        if index in self.enis:
            raise LabError(f"eth{index} exists")
        if not 0 <= index <= 200:
            raise ValueError("index must be 0..200")
        name, peer = f"eth{index}", f"vpc{index}"
        ip, gw = f"10.0.{index}.10", f"10.0.{index}.1"
        table = index + 1 if index >= 1 else None
        if managed:
            conf = ("[Match]\nName={n}\n\n[Network]\nAddress={ip}/24\n{gwl}"
                    "LinkLocalAddressing=no\nIPv6AcceptRA=no\n").format(
                        n=name, ip=ip, gwl=f"Gateway={gw}\n" if index == 0 else "")
            self.write_file(f"/etc/systemd/network/10-{name}.network", conf)
            if self.networkd_pid is not None:
                self.reload()
        lines = [f"link add {name} type veth peer name {peer}",
                 f"link set {peer} up"]
        if not managed:
            lines += [f"addr add {ip}/24 dev {name}", f"link set {name} up"]
        self.ip_batch(lines)
        if managed and wait and self.networkd_pid is not None:
            self.wait_state(name)
        ifindex = int(self.read_file(f"/sys/class/net/{name}/ifindex"))
        if table is not None and managed and not wait:
            # As ipamd does: its table routes once the ENI is up (networkd brings it up; with udev
            # only after udev has initialized the link), else "Device for nexthop is not up".
            self._wait(lambda: int(self.read_file(f"/sys/class/net/{name}/flags"), 16) & 1, 15, f"{name} to be up")
        if table is not None:
            self.ip_batch([f"route replace {gw}/32 dev {name} scope link table {table}",
                           f"route replace default via {gw} dev {name} table {table}",
                           f"rule add from {ip} lookup {table} priority 32765"])
        eni = Eni(index, name, peer, ip, 24, gw, table, ifindex, managed)
        self.enis[index] = eni
        return eni

    def eni_routes(self, index: int) -> list[str]:
        """The per-ENI table routes as ip-batch lines (to restore them by hand)."""
        e = self.enis[index]
        return [f"route replace {e.gw}/32 dev {e.name} scope link table {e.table}",
                f"route replace default via {e.gw} dev {e.name} table {e.table}"]

    def node_rules(self, strict: bool = False) -> None:
        lines = ["rule add fwmark 0x80/0x80 lookup main priority 1024"]
        if strict:
            lines += ["rule add priority 20 lookup local", "rule del priority 0 lookup local"]
        self.ip_batch(lines)

    def _pod_rule_lines(self, ip: str, eni: int, verb: str = "add") -> list[str]:
        lines = [f"rule {verb} to {ip} lookup main priority 512"]
        if eni >= 1:
            lines.append(f"rule {verb} from {ip} lookup {eni + 1} priority 1536")
        return lines

    def pod_rule_lines(self, ip: str | None = None) -> list[str]:
        """ip-batch lines that (re)add the 512/1536 rules of one pod or all live pods."""
        pods = [self.pods[ip]] if ip else list(self.pods.values())
        return [ln for p in pods for ln in self._pod_rule_lines(p.ip, p.eni)]

    def add_pod(self, ip: str, eni: int) -> str:
        """One pod like CNI ADD; returns the host veth name."""
        if ip in self.pods:
            raise LabError(f"pod {ip} exists")
        veth = host_veth_name(f"{self.name}/{ip}/{time.monotonic_ns()}")
        peer = "p" + veth[3:]
        self.ip_batch([f"link add {veth} type veth peer name {peer}",
                       f"link set {veth} up", f"link set {peer} up",
                       f"route add {ip} dev {veth} scope link",
                       *self._pod_rule_lines(ip, eni)])
        self.pods[ip] = _Pod(ip, eni, veth, True)
        return veth

    def add_pods_bulk(self, ips: list[str], eni: int, per_veth: int = 50) -> None:
        """Many pods at once: one host veth per ``per_veth`` pods, one ``ip -batch``."""
        lines: list[str] = []
        new: list[_Pod] = []
        for start in range(0, len(ips), max(1, per_veth)):
            chunk = ips[start:start + per_veth]
            veth = host_veth_name(f"{self.name}/bulk/{next(self._bulk_counter)}")
            peer = "p" + veth[3:]
            lines += [f"link add {veth} type veth peer name {peer}",
                      f"link set {veth} up", f"link set {peer} up"]
            for ip in chunk:
                if ip in self.pods:
                    raise LabError(f"pod {ip} exists")
                lines.append(f"route add {ip} dev {veth} scope link")
                lines += self._pod_rule_lines(ip, eni)
                new.append(_Pod(ip, eni, veth, False))
        self.ip_batch(lines)
        for p in new:
            self.pods[p.ip] = p

    def del_pod(self, ip: str) -> None:
        self.del_pods([ip])

    def del_pods(self, ips: list[str]) -> None:
        """Like CNI DEL, in one ``ip -batch``: each pod's rules first, then its host route (and
        the veth if single-pod). Rules already wiped by networkd are not an error."""
        lines: list[str] = []
        for ip in ips:
            p = self.pods.pop(ip)
            lines += self._pod_rule_lines(ip, p.eni, "del")
            # A single-pod veth takes its host route along when deleted.
            lines.append(f"link del {p.veth}" if p.single else f"route del {ip} dev {p.veth}")
        self.ip_batch(lines, force=True)
