"""Wording that messages share (kept free of heavy imports, as limits.py)."""

from collections.abc import Sequence


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 image', '3 images': the count with its noun in agreement; `many` for a plural that is
    not the word + 's' ('1 class', '2 classes')."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def some(names: Sequence[str], limit: int = 3) -> str:
    """The first `limit` names, comma-separated, with ', ...' when there are more: a line that
    names 60 classes of long folder names ran to thousands of characters."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
