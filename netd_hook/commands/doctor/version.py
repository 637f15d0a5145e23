"""systemd's version, from `networkctl --version`: which search paths and wipes apply."""

from __future__ import annotations

import re
import shutil
import subprocess

_VERSION_RE = re.compile(r"^systemd (\d+)\b")


def parse_systemd_version(text: str) -> int | None:
    """`networkctl --version` prints `systemd 252 (252.38-1~deb12u1)` on its first line."""
    m = _VERSION_RE.match(text.lstrip())
    return int(m.group(1)) if m else None


def systemd_version(networkctl: str = "networkctl", timeout: float = 5.0) -> int | None:
    """systemd's version from `networkctl --version`; None when networkctl is absent or fails."""
    exe = shutil.which(networkctl)
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=timeout, check=False,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_systemd_version(r.stdout) if r.returncode == 0 else None
