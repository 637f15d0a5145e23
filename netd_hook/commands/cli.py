"""Command line. The only place that maps errors to exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import anyio

from .. import __version__
from ..adapters import config as configmod
from ..adapters import netlink, status
from ..core import status_doc
from . import ops, render

EXIT_OK = 0
EXIT_PROBLEM = 1  # status/diff: something is missing; replay: something could not be restored
EXIT_CONFIG = 2  # bad configuration or usage
EXIT_NOT_RUNNING = 3  # status: the daemon is not running (as in LSB `status`)
EXIT_UNKNOWN = 4  # status: running, but its status cannot be read
EXIT_RESTART = 75  # run: networkd's socket changed; systemd restarts netd-hook (EX_TEMPFAIL)

EPILOG = """\
exit status: 0 fine; 1 something is missing (status, diff) or could not be restored (replay),
or doctor found a risk; 2 bad configuration or usage; 3 the daemon is not running (status);
4 status unknown.
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help=f"TOML file (default: {configmod.DEFAULT_CONFIG} when present)")
    p.add_argument("--state-dir", type=Path,
                   help=f"where the snapshot lives (default: {configmod.DEFAULT_STATE_DIR})")
    p.add_argument("--runtime-dir", type=Path, default=status.DEFAULT_RUNTIME_DIR,
                   help=f"where the running daemon publishes its status (default: {status.DEFAULT_RUNTIME_DIR})")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="netd-hook",
        description="Keep the VPC CNI's policy rules and routes alive across systemd-networkd reconfigures.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"netd-hook {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=description, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(c)
        return c

    run = command("run", "run the daemon (as netd-hook.service does)",
                  "Run the daemon: watch networkd over D-Bus and the kernel over netlink, repair what networkd "
                  "destroys. Needs CAP_NET_ADMIN and the system bus.")
    run.add_argument("--log-level", choices=configmod.LOG_LEVELS, help="overrides the config's log_level")
    run.add_argument("--bus-address", help="D-Bus address (default: $DBUS_SYSTEM_BUS_ADDRESS or the system bus)")
    st = command("status", "is the node protected? the daemon, networkd, the last repair",
                 "Show what the running daemon last published: networkd's state, what is protected and "
                 "missing, the last repair and counters. Works (and says so) when the daemon is down. "
                 "Exit 0: protecting, nothing missing; 1: something missing; 3: not running.")
    st.add_argument("--json", action="store_true", help="the status document as the daemon published it")
    sn = command("snapshot", "what is protected: pod rules by ENI table, node-wide rules, routes",
                 "Show the saved snapshot, grouped: pod rules by the ENI table their pod uses, node-wide rules, "
                 "and the routes of each protected table.")
    sn.add_argument("--json", action="store_true", help="machine-readable output")
    df = command("diff", "what is missing from the kernel right now, and what the gate would hold back",
                 "Compare the saved snapshot with the kernel, through the daemon's own planner and liveness gate. "
                 "Exit 1 when something would be replayed: usable as a monitoring check.")
    df.add_argument("--json", action="store_true", help="machine-readable output")
    rp = command("replay", "put back what is missing now, once (safe beside the daemon)",
                 "One-shot repair from the saved snapshot through the daemon's planner, liveness gate and atomic "
                 "batch. Takes the lock in the state directory, so it is safe (and idempotent) while the daemon "
                 "runs. Needs CAP_NET_ADMIN.")
    rp.add_argument("--dry-run", action="store_true", help="say what would be restored, change nothing")
    rp.add_argument("--json", action="store_true", help="machine-readable output")
    dr = command("doctor", "is this node's networkd configuration a risk? with the exact fixes",
                 "Read the effective networkd configuration (networkd.conf and its drop-ins in systemd's order) "
                 "and netd-hook's own installation, and report each risk with its severity and fix. "
                 "Exit 1 when a warning or critical finding is reported.")
    dr.add_argument("--root", type=Path, default=Path("/"), help="read configuration under this directory")
    dr.add_argument("--systemd-version", type=int, metavar="N",
                    help="with --root: the tree's systemd version (default: assume 249 or later)")
    dr.add_argument("--verbose", "-v", action="store_true", help="explain every finding")
    dr.add_argument("--json", action="store_true", help="machine-readable output")
    wt = command("wait", "wait until the daemon has repaired this networkd generation (ExecStartPost=)",
                 "Wait, bounded, until the running daemon has seen the networkd whose PID is $MAINPID (as "
                 "systemd sets it for ExecStartPost=), that networkd is settled and nothing protected is missing. "
                 "Never fails: daemon not running, timeout or error are logged and exit 0.")
    wt.add_argument("--timeout", type=float, default=20.0, help="give up after this many seconds (default 20)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "wait":  # first: it must never fail, whatever the configuration says
        return _wait(args)
    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as exc:
        print(f"netd-hook: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.state_dir is not None:
        cfg = replace(cfg, state_dir=args.state_dir.absolute())
    if getattr(args, "log_level", None) is not None:
        cfg = replace(cfg, log_level=args.log_level)
    # journald adds timestamps and the unit name; keep lines short.
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("netd_hook").setLevel(cfg.log_level.upper())
    runtime_dir: Path = args.runtime_dir.absolute()
    if args.command == "run":
        return _run(args, cfg, runtime_dir)
    try:
        if args.command == "status":
            return _status(args, runtime_dir)
        if args.command == "snapshot":
            return _snapshot(args, cfg, runtime_dir)
        if args.command == "diff":
            return _diff(args, cfg, runtime_dir)
        if args.command == "replay":
            return _replay(args, cfg, runtime_dir)
        if args.command == "doctor":
            return _doctor(args, cfg, runtime_dir)
    except ops.OpsError as exc:
        print(f"netd-hook: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except PermissionError as exc:
        print(f"netd-hook: {exc}; run it as root (it needs CAP_NET_ADMIN)", file=sys.stderr)
        return EXIT_PROBLEM
    except netlink.NetlinkError as exc:  # a dump that kept being interrupted (NLM_F_DUMP_INTR), say
        print(f"netd-hook: cannot read the kernel's rules and routes: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    raise AssertionError(args.command)


def _run(args: argparse.Namespace, cfg: configmod.Config, runtime_dir: Path) -> int:
    from ..adapters.journal import AuditSink, Notifier
    from ..daemon.service import NetworkdSocketGone, Service
    from ..daemon.service import log as service_log

    # First: the sockets systemd passed (Sockets=systemd-networkd.socket): networkd's rtnetlink socket.
    passed, other = netlink.rtnetlink_sockets(netlink.listen_fds())
    for what in other:
        service_log.warning("ignoring a file descriptor systemd passed: %s", what)
    notifier = Notifier()
    audit = AuditSink.open(logger=service_log)  # native journald entries when the journal is there
    service = Service(cfg, args.config, notifier, args.bus_address, runtime_dir=runtime_dir, audit=audit,
                      networkd_sockets=passed)
    try:
        anyio.run(service.run, backend="asyncio")
    except KeyboardInterrupt:
        pass
    except status.AlreadyRunning as exc:
        print(f"netd-hook: {exc}; see `netd-hook status --runtime-dir {runtime_dir}`", file=sys.stderr)
        return EXIT_PROBLEM
    except netlink.NetlinkError as exc:  # the start-up dump kept failing (NLM_F_DUMP_INTR, say)
        print(f"netd-hook: cannot read the kernel's rules and routes: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except NetworkdSocketGone as exc:
        print(f"netd-hook: {exc}; exiting for systemd to restart netd-hook with networkd's current socket",
              file=sys.stderr)
        return EXIT_RESTART
    finally:
        notifier.close()
        audit.close()
    return EXIT_OK


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _json(doc: object) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def _status(args: argparse.Namespace, runtime_dir: Path) -> int:
    pr = status.probe(runtime_dir)
    if pr.status is None:
        if args.json:
            _json({"running": pr.running, "status": None, "error": pr.error})
        elif pr.running:
            print(f"netd-hook: active, but its status cannot be read ({pr.error} in {runtime_dir}): "
                  "it may be starting; journalctl -u netd-hook -n 50")
        else:
            print(f"netd-hook: inactive (not running; nothing holds {runtime_dir / status.LOCK_FILE})\n"
                  "hint: systemctl status netd-hook; journalctl -u netd-hook -n 50")
        return EXIT_UNKNOWN if pr.running else EXIT_NOT_RUNNING
    if args.json:
        _json({"running": pr.running, "status": status_doc.to_json(pr.status)})
    else:
        print(render.status_text(pr.status, pr.running, time.time()))
    if not pr.running:
        return EXIT_NOT_RUNNING
    return EXIT_OK if pr.status.whole else EXIT_PROBLEM


def _snapshot(args: argparse.Namespace, cfg: configmod.Config, runtime_dir: Path) -> int:
    snap = ops.read_snapshot(cfg.state_dir, runtime_dir)
    try:
        dump = ops.dump_kernel()
        node = frozenset(a.addr for a in dump.local_addresses)
    except OSError:
        node = frozenset()  # grouping then treats the ENI primary rules as pod rules
    groups = ops.group(snap, node)
    if args.json:
        _json(render.snapshot_json(groups))
    else:
        print(render.snapshot_text(groups))
    return EXIT_OK


def _diff(args: argparse.Namespace, cfg: configmod.Config, runtime_dir: Path) -> int:
    chk = ops.check_now(ops.read_snapshot(cfg.state_dir, runtime_dir), cfg.scope)
    chk = ops.with_daemon_view(chk, runtime_dir)  # what the daemon calls unattributed (after an overrun)
    if args.json:
        _json(render.diff_json(chk))
    else:
        print(render.diff_text(chk))
    return EXIT_PROBLEM if len(chk.plan) else EXIT_OK


def _replay(args: argparse.Namespace, cfg: configmod.Config, runtime_dir: Path) -> int:
    r = cfg.replay

    async def go() -> ops.ReplayResult:
        return await ops.replay(cfg.state_dir, runtime_dir, cfg.scope, ops.networkd_link_states(), dry_run=args.dry_run,
                                timeout=r.ack_timeout_ms / 1000, max_attempts=r.max_attempts,
                                progress=_progress)

    res = anyio.run(go, backend="asyncio")
    if args.json:
        doc = render.diff_json(res.check)
        if res.outcome is not None:
            o = res.outcome
            doc["outcome"] = {"rules_restored": o.rules_restored, "routes_restored": o.routes_restored,
                              "already_present": o.already_present, "rollbacks": o.rollbacks,
                              "batches": o.batches, "duration_ms": round(res.duration_ms, 3),
                              "set_aside": [{"entry": e.describe(), "errno": n} for e, n in o.set_aside],
                              "unknown": list(o.unknown)}
        doc["dry_run"] = args.dry_run
        _json(doc)
    else:
        print(render.replay_text(res, args.dry_run))
    out = res.outcome
    return EXIT_PROBLEM if out is not None and (out.set_aside or out.unknown or out.gave_up) else EXIT_OK


def _doctor(args: argparse.Namespace, cfg: configmod.Config, runtime_dir: Path) -> int:
    from . import doctor

    # Under --root the tree is another system's: its systemd version is not this one's (None: assume >= 249).
    version = doctor.systemd_version() if args.root.resolve() == Path("/") else args.systemd_version
    progress = _progress if sys.stderr.isatty() else (lambda line: None)
    facts, findings = doctor.run(args.root, runtime_dir, cfg.state_dir, time.time(), version, progress)
    if args.json:
        _json(doctor.to_json(findings, facts))
    else:
        print(doctor.render_text(findings, args.verbose), end="")
    code: int = doctor.exit_code(findings)
    return code


def _wait(args: argparse.Namespace) -> int:
    """For networkd's ExecStartPost=-: every outcome is exit 0, and every outcome is said."""
    try:
        return _wait_inner(args)
    except Exception as exc:  # never fail networkd's start
        print(f"netd-hook wait: not waiting: {exc!r}", file=sys.stderr)
        return EXIT_OK


def _wait_inner(args: argparse.Namespace) -> int:
    runtime_dir = args.runtime_dir.absolute()
    mainpid = os.environ.get("MAINPID", "")
    want = int(mainpid) if mainpid.isdigit() else None
    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as exc:
        print(f"netd-hook wait: {exc}; checking with the default scope", file=sys.stderr)
        cfg = configmod.Config()
    state_dir = args.state_dir.absolute() if args.state_dir else cfg.state_dir
    started = time.monotonic()
    deadline = started + max(0.0, args.timeout)
    while True:
        pr = status.probe(runtime_dir)
        if not pr.running:
            print("netd-hook wait: netd-hook is not running; not waiting", file=sys.stderr)
            return EXIT_OK
        why, unchecked = _not_done(pr.status, want, state_dir, runtime_dir, cfg)
        if not why and pr.status is not None:
            nd, last, forgotten = pr.status.networkd, pr.status.last_repair, pr.status.forgotten
            checked = ("the kernel has every entry netd-hook still protects" if not unchecked else
                       f"the daemon reports nothing missing; the kernel itself was NOT checked ({unchecked})")
            print(f"netd-hook wait: networkd generation {nd.generation} (pid {nd.pid}) is settled "
                  f"and {checked}, after {time.monotonic() - started:.2f}s "
                  f"(last repair: {last.trigger if last else 'none'}; forgotten as deleted on purpose in this "
                  f"generation: {forgotten.generation})", file=sys.stderr)
            if not pr.status.whole:
                print(f"netd-hook wait: NOT VOUCHED WHOLE: {forgotten.doubt}; see `netd-hook status`",
                      file=sys.stderr)
            return EXIT_OK
        if time.monotonic() >= deadline:
            print(f"netd-hook wait: gave up after {args.timeout:g}s: {why}; see `netd-hook status`",
                  file=sys.stderr)
            return EXIT_OK
        time.sleep(0.05)


def _not_done(doc: status_doc.Status | None, want: int | None, state_dir: Path, runtime_dir: Path,
              cfg: configmod.Config) -> tuple[str, str]:
    """(why waiting goes on, "" when done; what could not be checked, "" when everything was).
    The daemon must have seen this networkd (its PID) settle with nothing pending, and then the
    kernel itself must hold every protected entry: the daemon's word alone could predate a wipe
    whose signals it has not read yet. Without a readable snapshot the kernel cannot be checked,
    and the message must say so rather than claim it."""
    if doc is None:
        return "the daemon has not published its status", ""
    nd = doc.networkd
    if want is not None and nd.pid != want:
        return f"the daemon has not seen networkd pid {want} yet (it knows pid {nd.pid})", ""
    if not doc.complete:
        return f"networkd settled: {nd.settled}, missing: {doc.missing}", ""
    try:
        snap = ops.read_snapshot(state_dir, runtime_dir)
    except ops.OpsError as exc:
        return "", f"cannot read the snapshot: {exc}"
    try:
        chk = ops.check_now(snap, cfg.scope)
    except ops.OpsError as exc:  # networkd's link states cannot be read: the gate cannot decide
        return "", str(exc)
    except netlink.NetlinkError as exc:
        return "", f"cannot read the kernel's rules and routes: {exc}"
    return (f"the kernel still misses {len(chk.plan)} protected entries" if len(chk.plan) else ""), ""

if __name__ == "__main__":
    sys.exit(main())
