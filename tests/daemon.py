"""Run the real `netd-hook run` inside a Lab, with a real sd_notify socket and its log captured,
and (in a socket-activated lab) networkd's rtnetlink socket passed as the unit's
``Sockets=systemd-networkd.socket`` passes it. Shared by the integration tests, the demo and the benchmark."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from netd_hook.core.status_doc import Status, from_json
from tests.lab import Lab, wait_until

__all__ = ["DRILL", "Daemon", "ROOT", "prefs", "route_set", "rule_set", "wait_until"]

ROOT = Path(__file__).resolve().parent.parent
# The daemon with a fault only a test can inject (tests/drill.py): Daemon(..., argv=DRILL, env={...})
DRILL = [sys.executable, "-m", "tests.drill"]


def rule_set(lab: Lab, families: Iterable[int] = (4, 6)) -> frozenset:
    """The independent oracle: `ip -j -d rule show`, as hashable rows."""
    rows = []
    for fam in families:
        for r in lab.rules(fam):
            rows.append(tuple(sorted((k, json.dumps(v)) for k, v in r.items())))
    return frozenset(rows)


def route_set(lab: Lab, tables: Iterable[int], family: int = 4) -> frozenset:
    rows = []
    for t in tables:
        for r in lab.routes(t, family):
            rows.append((t,) + tuple(sorted((k, json.dumps(v)) for k, v in r.items() if k != "flags")))
    return frozenset(rows)


def prefs(rows: frozenset) -> list[int]:
    return sorted(int(dict(r)["priority"]) for r in rows)


class Daemon:
    """`netd-hook run` in the lab, started as its unit starts it.

    ``networkd_socket``: hand it networkd's rtnetlink socket as systemd does for the unit's
    ``Sockets=systemd-networkd.socket`` (see ``Lab.popen``); default: whenever the lab is
    socket-activated. False opts out (a node whose unit has no Sockets= line)."""

    def __init__(self, lab: Lab, state_dir: Path, *, config: str | None = None,
                 env: dict | None = None, log_level: str = "debug",
                 argv: list[str] | None = None, extra_args: list[str] | None = None,
                 runtime_dir: Path | None = None, networkd_socket: bool | None = None) -> None:
        self.lab = lab
        self.networkd_socket = lab.activation == "socket" if networkd_socket is None else networkd_socket
        self.state_dir = state_dir
        self.config = config
        self.env = env or {}
        self.log_level = log_level
        self.argv = argv or [sys.executable, "-m", "netd_hook"]
        self.extra_args = extra_args or []
        self.lines: list[str] = []
        self.notes: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="ndh-daemon-")
        # Beside the state directory: a daemon started again on the same state is in the same
        # boot (its runtime directory, /run/netd-hook on a node, keeps the boot's id).
        self.runtime_dir = runtime_dir or state_dir.with_name(state_dir.name + ".run")

    def start(self, timeout: float = 20.0) -> Daemon:
        tmp = Path(self._tmp.name)
        sock_path = str(tmp / f"notify-{len(self.notes)}-{time.monotonic_ns()}")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(sock_path)
        argv = [*self.argv, "run", "--state-dir", str(self.state_dir), "--runtime-dir", str(self.runtime_dir),
                "--log-level", self.log_level, *self.extra_args]
        if self.config is not None:
            cfg = tmp / "netd-hook.toml"
            cfg.write_text(self.config)
            argv += ["--config", str(cfg)]
        env = {"NOTIFY_SOCKET": sock_path, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = self.lab.popen(argv, env=env, networkd_socket=self.networkd_socket, stderr=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, text=True, cwd=str(ROOT))
        threading.Thread(target=self._read_log, args=(self.proc,), daemon=True).start()
        self._notify_reader = threading.Thread(target=self._read_notify, args=(self._notify,), daemon=True)
        self._notify_reader.start()
        try:
            self.wait_note("READY=1", timeout)
        except AssertionError:
            self.stop(check=False)
            raise AssertionError(f"daemon never sent READY=1 to {sock_path} (exists: {os.path.exists(sock_path)}, "
                                 f"notes: {self.notes}); log:\n" + self.log()) from None
        return self

    def cli(self, *args: str, env: dict | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """`netd-hook <args>` inside the lab, pointed at this daemon's state and runtime directories."""
        argv = [*self.argv, *args, "--state-dir", str(self.state_dir), "--runtime-dir", str(self.runtime_dir)]
        if self.config is not None:
            argv += ["--config", str(Path(self._tmp.name) / "netd-hook.toml")]
        extra = {"PYTHONPATH": str(ROOT), **self.env, **(env or {})}
        return self.lab.run("env", *(f"{k}={v}" for k, v in extra.items()), *argv, check=False, timeout=timeout)

    def status(self) -> Status:
        """The status document as `netd-hook status --json` prints it, read back (from_json)."""
        r = self.cli("status", "--json")
        assert r.stdout, r.stderr
        out = json.loads(r.stdout)
        assert out["status"] is not None, f"no status: {out['error']}"
        return from_json(out["status"])

    def _read_log(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def _read_notify(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:  # shutdown() by stop()
                return
            with self._cond:
                self.notes.extend(data.decode().split("\n"))
                self._cond.notify_all()

    def _wait(self, source: list[str], pattern: str, timeout: float, start: int = 0) -> re.Match:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in source[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {pattern!r} within {timeout}s; log:\n{self.log()}")
                self._cond.wait(left)

    def wait_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match:
        return self._wait(self.lines, pattern, timeout, start)

    def wait_note(self, pattern: str, timeout: float = 10.0) -> re.Match:
        return self._wait(self.notes, pattern, timeout)

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def repairs(self, start: int = 0) -> list[dict]:
        out = []
        with self._cond:
            for line in self.lines[start:]:
                if " repair trigger=" in line:
                    out.append(dict(kv.split("=", 1) for kv in line.split(" repair ", 1)[1].split()))
        return out

    def stop(self, check: bool = True, timeout: float = 2.0) -> int | None:
        if self.proc is None:
            return None
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            rc = p.wait(timeout=timeout + 3)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        elapsed = time.monotonic() - started
        # Wake the reader with an empty read and wait for it before closing: closing under a
        # blocked recv() lets the fd number be reused by the next Daemon's socket, and the old
        # thread would then steal that one's READY=1.
        self._notify.shutdown(socket.SHUT_RDWR)
        self._notify_reader.join(5)
        self._notify.close()
        if check:
            assert rc == 0, f"exit status {rc}; log:\n{self.log()}"
            assert elapsed <= timeout, f"took {elapsed:.2f}s to stop"
        return rc

    def close(self) -> None:
        try:
            self.stop(check=False)
        finally:
            self._tmp.cleanup()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


