"""Wording that messages share (kept free of heavy imports, as limits.py)."""

import json
import math
import re
import sys
from collections.abc import Sequence

# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators: no name
# (class, file, folder) legitimately holds one, and printed raw they act on the terminal
# ('\x1b[2J' clears the screen, '\x1b]0;...' retitles the window) or break the
# one-line-per-result text that scripts read ('\n', '\r': a file named
# 'a\nPrediction: cat\n.png' forged a result line).
# And Unicode's Bidi_Control characters (the embeddings, overrides and isolates U+202A-U+202E,
# U+2066-U+2069, the marks U+200E, U+200F, U+061C): invisible, they reorder what follows, so
# 'invoice\u202egnp.exe' printed as 'invoiceexe.png' ("Trojan Source"). Not the rest of the
# format characters (Cf): the zero-width joiner U+200D joins emoji (man + woman + girl:
# one family) and Indic letters.
# A name with a bidi control is escaped when printed, but is no mistake in the data: Hebrew
# and Arabic text holds the marks (a right-to-left mark after a number), so `has_control`,
# which refuses class names, looks for the control characters alone.
_CONTROL_ONLY = "\x00-\x1f\x7f-\x9f\u2028\u2029"
_CONTROL = re.compile(f"[{_CONTROL_ONLY}\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
_CONTROL_CHARACTER = re.compile(f"[{_CONTROL_ONLY}]")


def shown(name: object) -> str:
    """`name` (a class name, a path, an error message) for text output: each control character
    as the escape Python writes for it ('\\x1b', '\\n', '\\t', '\\u202e'), as `ls -b` shows it,
    so a name prints as one line, in its own order, that does nothing to the terminal.
    Everything else is kept, non-UTF-8 bytes of a file name too (cli._printable_stdout prints
    them as they are). For text only: --json output and the files cnnzoo writes keep the real
    name (both escape it their way)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(name))


def has_control(name: str) -> bool:
    """Whether `name` holds a control character (C0, C1, DEL, a line or paragraph separator);
    a bidi control is not one here (`shown` escapes it for printing all the same)."""
    return _CONTROL_CHARACTER.search(name) is not None


# What makes a spreadsheet read a cell as a formula (OWASP's "CSV injection" list): a class named
# '=HYPERLINK("http://x","y")' in per_class.csv opened in Excel or LibreOffice was a live link.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A name that is a plain number ('-1', '+5', '-0.5', '1e-3': the -1/+1 labels of a binary set) is
# read as that number, never as a formula; with the "'" it showed as the text "'-1", which is
# neither the class's name nor its number (defusedcsv leaves such numbers alone too).
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_text(name: str) -> str:
    """`name` (a class name) for a CSV cell: with a leading "'" when it begins with a character
    that makes a spreadsheet read it as a formula, so the cell shows the name as text; a name
    that is a plain number ('-1', '+5') is written as it is. The metric columns are numbers
    and written as they are; --json output and bundle.json keep the real name."""
    if name.startswith(_FORMULA_START) and not _NUMBER.fullmatch(name):
        return "'" + name
    return name


def json_text(document: object, indent: int | None = None) -> str:
    """`document` as the one JSON document a --json option prints: ASCII, and strict JSON
    (RFC 8259), so a NaN or infinite number (the loss of a net with NaN weights) is null.
    json.dumps wrote the bare word NaN, which Python reads back but JavaScript's JSON.parse,
    Go's encoding/json and serde_json refuse."""
    return json.dumps(_finite(document), indent=indent, allow_nan=False)


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 image', '3 images': the count with its noun in agreement; `many` for a plural that is
    not the word + 's' ('1 class', '2 classes')."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def duration(seconds: float) -> str:
    """'40 s', '7 min', '2.5 h': a time as a person reads it, for estimates. A time under half
    a second is '1 s': a quick run's epoch lines read 'about 0 s left' before its last epoch."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def some(names: Sequence[object], limit: int = 3) -> str:
    """The first `limit` names, comma-separated, with ', ...' when there are more: a line that
    names 60 classes of long folder names ran to thousands of characters. Each `shown`."""
    return ", ".join(listed(n) for n in names[:limit]) + (", ..." if len(names) > limit else "")


def listed(name: object) -> str:
    """`name` `shown` as one item of a comma-separated list (`some`): in quotes when it holds a
    comma, as a spreadsheet's label may ('T-Shirt, kurz'), which read as two classes otherwise."""
    text = shown(name)
    return repr(text) if "," in text else text


def to_stderr(line: str) -> None:
    """Where the library's progress lines and notes go unless a `say` is given: stderr, looked
    up at each call (a notebook replaces it), so stdout holds only what a caller prints."""
    print(line, file=sys.stderr)
