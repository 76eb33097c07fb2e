"""What the benchmark scripts share: cnnzoo imported from this checkout's src/ (not whatever
cnnzoo the Python has installed), and, as `cnnzoo` itself does, one line instead of a traceback
for a cnnzoo error (exit 2) or Ctrl-C (exit 130). Import it before anything from cnnzoo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

# The cores this process may run on (taskset, cgroups), not the machine's: the scripts' default
# thread count, as two threads pinned to one core wait on each other.
from cnnzoo.engine.distributed import usable_cores  # noqa: E402, F401 (re-exported)


def run(main: Callable[[], object]) -> None:
    """Call `main`; a CnnzooError or KeyboardInterrupt ends the script with one line on stderr
    (temporary folders are removed by the scripts' own `finally` blocks on the way out)."""
    from cnnzoo.errors import CnnzooError

    name = Path(sys.argv[0]).name
    try:
        main()
    except CnnzooError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        # On a line of its own: a progress line may hold the cursor.
        print(f"\n{name}: interrupted", file=sys.stderr)
        sys.exit(130)


def names_of(known: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse type: comma-separated names among `known` (at least one), e.g. --losses."""

    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in names if s not in known]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"{f'unknown {what} {bad[0]!r}' if bad else f'no {what}'}: choose from "
                f"{', '.join(known)} (comma-separated)")
        return names

    return parse
