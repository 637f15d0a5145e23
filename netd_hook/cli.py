"""Command line. The only place that maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import anyio

from . import __version__
from . import config as configmod

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="netd-hook",
        description="Keep the VPC CNI's policy rules and routes alive across systemd-networkd reconfigures.",
    )
    p.add_argument("--version", action="version", version=f"netd-hook {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon (as the netd-hook.service does)")
    run.add_argument("--config", type=Path, help=f"TOML file (default: {configmod.DEFAULT_CONFIG} when present)")
    run.add_argument("--state-dir", type=Path,
                     help=f"where the snapshot lives (default: {configmod.DEFAULT_STATE_DIR})")
    run.add_argument("--log-level", choices=configmod.LOG_LEVELS, help="overrides the config's log_level")
    run.add_argument("--bus-address", help="D-Bus address (default: $DBUS_SYSTEM_BUS_ADDRESS or the system bus)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as exc:
        print(f"netd-hook: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.state_dir is not None:
        cfg = replace(cfg, state_dir=args.state_dir.absolute())
    if args.log_level is not None:
        cfg = replace(cfg, log_level=args.log_level)
    # journald adds timestamps and the unit name; keep lines short.
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("netd_hook").setLevel(cfg.log_level.upper())
    if args.command == "run":
        from .journal import Notifier
        from .service import Service

        notifier = Notifier()
        fault = os.environ.get("NETD_HOOK_INJECT_FAULT", "")
        service = Service(cfg, args.config, notifier, args.bus_address,
                          inject_fault=int(fault) if fault.isdigit() else 0)
        try:
            anyio.run(service.run, backend="asyncio")
        except KeyboardInterrupt:
            pass
        finally:
            notifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
