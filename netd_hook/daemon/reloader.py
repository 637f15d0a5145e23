"""SIGHUP: the configuration file read again. A bad file is logged and the running configuration
kept; a good one changes the scope, the log level and the state machine's parameters (the last
through `decide.Reconfigured`, which also has the kernel re-read: the scope may have grown)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters import config as configmod
from ..core import decide

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("netd_hook.daemon.service")  # the daemon's one logger, as before the split


def params(cfg: configmod.Config) -> decide.Params:
    """The state machine's parameters, in seconds, from the configuration's [replay] table."""
    r = cfg.replay
    return decide.Params(quiet=r.quiet_ms / 1000, absent_grace=r.absent_grace_ms / 1000,
                         stuck_after=r.stuck_ms / 1000, chase=r.chase)


class Reloader:
    """Reads the configuration again and applies it; the state machine learns of it by an event."""

    def __init__(self, svc: Service, config_path: Path | None) -> None:
        self.svc = svc  # its configuration, state directory and tracker
        self.config_path = config_path

    def reload(self) -> decide.Reconfigured | None:
        """The event for the state machine, or None when the file is bad (and nothing changed)."""
        svc = self.svc
        try:
            cfg = configmod.load(self.config_path)
        except configmod.ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return None
        cfg = replace(cfg, state_dir=svc.state_dir)  # the state directory is the one the daemon holds
        if cfg.scope != svc.cfg.scope:
            svc.tracker.rescope(cfg.scope)  # what newly enters the scope comes with the re-read that follows
        svc.cfg = cfg
        logging.getLogger("netd_hook").setLevel(cfg.log_level.upper())
        log.info("reloaded configuration from %s", cfg.source)
        return decide.Reconfigured(params(cfg))
