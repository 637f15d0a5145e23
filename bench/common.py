"""What every part of the benchmark shares: where things are, the issue's targets, progress output."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IP = shutil.which("ip") or "/usr/sbin/ip"
NS_PREFIX = f"ndhb-{os.getpid()}-"  # the trial namespaces; bench.worker refuses any other name

TARGET_RATIO = 1.15  # part 1: (a) netd-hook's writer <= 1.15 x (d) the kernel floor
RSS_TARGET_MB = 45.0  # part 3: the daemon's idle VmRSS (issue 13); part 2's targets: bench.targets


class TrialError(RuntimeError):
    """A run that did not do what it measures (rules missing after a trial, nothing deleted...)."""


def log(msg: str) -> None:
    """Progress goes to stderr; stdout carries only the report."""
    print(msg, file=sys.stderr, flush=True)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")
