"""Where audit records go: the journal when there is one, the module logger otherwise."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from .audit import Audit
from .native import CRIT, ERR, INFO, NOTICE, WARNING, Journal, encode_entry

log = logging.getLogger(__package__)  # one logger for the package, as before the split


def log_level(priority: int) -> int:
    """The `logging` level for a syslog priority (notice has none of its own: info)."""
    if priority <= CRIT:
        return logging.CRITICAL
    return {ERR: logging.ERROR, WARNING: logging.WARNING, NOTICE: logging.INFO, INFO: logging.INFO}.get(
        priority, logging.DEBUG)


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when `fd` is the stream systemd connected to the journal ($JOURNAL_STREAM is its
    `device:inode`, systemd.exec(5)): a line logged there would repeat the native entry."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


class AuditSink:
    """Where audit events go: a native journal entry when there is a journal, else one line
    through `logger` at the level matching the priority.

    `echo`: also log the line when the entry went to the journal. Default: only when stderr is
    not the journal already (run by hand in a terminal), so that under systemd every event is in
    the journal exactly once. `emit()` tells whether the journal took it."""

    def __init__(self, journal: Journal | None, *, logger: logging.Logger | None = None,
                 echo: bool | None = None) -> None:
        self.journal = journal
        self.logger = log if logger is None else logger
        self.echo = (not stderr_is_journal()) if echo is None else echo

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *, logger: logging.Logger | None = None,
             echo: bool | None = None) -> AuditSink:
        return cls(Journal.open(path), logger=logger, echo=echo)

    @property
    def native(self) -> bool:
        return self.journal is not None

    def emit(self, audit: Audit) -> bool:
        sent = self.journal is not None and self.journal.send_entry(encode_entry(audit.items(self.journal.identifier)))
        if not sent or self.echo:
            self.logger.log(log_level(audit.priority), "%s", audit.message)
        return sent

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
