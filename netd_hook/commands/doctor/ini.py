"""systemd's INI dialect, parsed the way networkd's `config_parse()` does (pure).

From src/shared/conf-parser.c, checked for the behaviours marked (lab) against the real
systemd-networkd 252 in tests/lab.py:

* A line whose first non-blank is `#` or `;` is a comment; a trailing `\\` continues the line;
  `[Section]` names are case-sensitive and taken verbatim (`[ Network ]` is an unknown section,
  lab); keys are case-sensitive (lab); later assignments win.
* A value that is not a boolean (`1/yes/y/true/t/on`, `0/no/n/false/f/off`, any case) is
  ignored with a warning and the value before it stays (`parse_boolean` says None).
* Fatal errors: an unterminated section header or a line that is not UTF-8 make `config_parse()`
  fail there (`Parsed.error`): networkd keeps what it parsed before and reads no later file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOOL_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})
_BOOL_FALSE = frozenset({"0", "no", "n", "false", "f", "off"})
_WHITESPACE = b" \t\n\r"
_BOM = b"\xef\xbb\xbf"
_EOL = re.compile(rb"\r\n|\r|\n|\x00")  # read_line(): \n, \r, \r\n and NUL end a line


@dataclass(frozen=True, slots=True)
class Assignment:
    section: str
    key: str
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class Parsed:
    assignments: tuple[Assignment, ...]
    error: str = ""  # fatal: config_parse() fails here and networkd reads no further
    error_line: int = 0


def parse_boolean(value: str) -> bool | None:
    """systemd's parse_boolean(); None for anything else (networkd ignores such a line)."""
    v = value.lower()
    if v in _BOOL_TRUE:
        return True
    if v in _BOOL_FALSE:
        return False
    return None


def parse_ini(data: bytes) -> Parsed:
    """config_parse() of systemd 249..252: every assignment in order, or where it fails."""
    out: list[Assignment] = []
    section: str | None = None
    continuation: bytes | None = None
    bom_seen = False
    lines = _EOL.split(data)
    if lines and lines[-1] == b"":
        lines.pop()
    n = 0
    for raw in lines:
        n += 1
        stripped = raw.lstrip(_WHITESPACE)
        if stripped and stripped[:1] in (b"#", b";"):
            continue  # comments are dropped before continuation handling, even inside one
        buf = raw
        if not bom_seen and buf.startswith(_BOM):
            buf, bom_seen = buf[len(_BOM):], True
        p = buf if continuation is None else continuation + buf
        trailing = len(p) - len(p.rstrip(b"\\"))
        if trailing % 2 == 1:
            continuation = p[:-1] + b" "
            continue
        continuation = None
        err, section = _parse_line(p, section, n, out)
        if err:
            return Parsed(tuple(out), err, n)
    if continuation is not None:
        n += 1
        err, section = _parse_line(continuation, section, n, out)
        if err:
            return Parsed(tuple(out), err, n)
    return Parsed(tuple(out))


def _parse_line(raw: bytes, section: str | None, n: int, out: list[Assignment]) -> tuple[str, str | None]:
    b = raw.strip(_WHITESPACE)
    if not b:
        return "", section
    try:
        line = b.decode("utf-8")
    except UnicodeDecodeError:
        return "line is not valid UTF-8", section
    if line.startswith("["):
        if not line.endswith("]"):
            return f"invalid section header {line!r}", section
        return "", line[1:-1]  # verbatim: "[ Network ]" is the section " Network "
    if section is None:
        return "", section  # assignment outside of a section: ignored
    key, eq, value = line.partition("=")
    if not eq or not key:
        return "", section  # missing '=' or key: ignored with a warning
    out.append(Assignment(section, key.strip(" \t\n\r"), value.strip(" \t\n\r"), n))
    return "", section
