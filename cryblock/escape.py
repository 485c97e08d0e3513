"""Escaping user and device text (labels, categories, file names, serial output) for the outputs it lands in.

Labels and categories come from users' manifests and params.json; they are pasted into C
comments of the generated firmware and into Markdown tables of READMEs and reports, so each
output gets its own escaping (a label ``x */ int injected(void){return 42;} /*`` must stay inside
its comment; ``a|b`` must not split a table cell).
"""
from __future__ import annotations

import json
import re
import unicodedata
from typing import Any


#: Unicode categories that md_cell turns into spaces: controls (Cc, Cf, Cs, Co, Cn), line (Zl) and
#: paragraph (Zp) separators.
_BREAKING = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def c_comment(text: Any) -> str:
    """``text`` made safe inside a C comment or string literal: JSON string escapes (quotes,
    backslashes, control characters, non-ASCII as ``\\uXXXX``) and no ``*/`` or ``/*``, so a
    label such as ``x */ int injected(void){return 42;} /*`` stays inside its comment."""
    return json.dumps(str(text), ensure_ascii=True)[1:-1].replace("*/", "*\\/").replace("/*", "/\\*")


def md_cell(text: Any) -> str:
    """``text`` made safe inside a Markdown table cell or line: control characters and line or
    paragraph separators (U+2028, U+2029: a line break to Markdown and HTML converters) → space,
    ``\\ | ` * _ <`` escaped."""
    s = "".join(" " if unicodedata.category(ch) in _BREAKING else ch for ch in str(text))
    return re.sub(r"([\\|`*_])", r"\\\1", s).replace("<", "&lt;")


_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def csv_cell(text: Any) -> str:
    """``text`` made safe as a CSV cell that a spreadsheet will open: a cell starting with ``=``,
    ``+``, ``-``, ``@``, tab or carriage return would be read as a formula (OWASP "CSV injection"),
    so it gets a leading ``'``, which spreadsheets show as text; plain decimal numbers (``-0.5``,
    ``+3``, ``1e-3``) stay numbers."""
    s = str(text)
    if s[:1] in ("=", "+", "-", "@", "\t", "\r") and not _PLAIN_NUMBER.fullmatch(s):
        return "'" + s
    return s


_ANSI_SGR = re.compile(r"\x1b\[[0-9;]*m")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(raw: bytes | str) -> str:
    """Device text made safe for a terminal: UTF-8 decoded (bad bytes → U+FFFD), ESP_LOG colour
    codes removed, other control characters (which noise — or a field value of a checksum-valid
    line — could turn into terminal escape sequences) shown as ``?``; newlines and tabs are kept."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return _CONTROL.sub("?", _ANSI_SGR.sub("", text))
