"""argparse types for the commands' options.

A value outside what an option can mean (`--epochs 0`, `--val-fraction 1`, `--lr -1`) is
argparse's one-line usage error naming the option and the range, before any work starts or any
file is written, not a traceback from deep in the engine.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..limits import MAX_INPUT_SIZE, MAX_SEED


def whole(low: int = 1, *, high: int | None = None, note: str = "",
          high_note: str = "") -> Callable[[str], int]:  # fmt: skip
    """A whole number >= `low` (and <= `high`); `note` explains a special value, e.g. '0: off';
    `high_note` why the upper limit, said only to a value above it."""
    extra = f" ({note})" if note else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number >= {low}{extra}, not {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}{extra}, not {value}")
        if high is not None and value > high:
            why = f" ({high_note})" if high_note else extra
            raise argparse.ArgumentTypeError(f"must be <= {high}{why}, not {value}")
        return value

    return parse


def real(
    low: float | None = None, high: float | None = None, *, above: bool = False,
    below: bool = False, note: str = "",
) -> Callable[[str], float]:  # fmt: skip
    """A finite number in [low, high]; `above`/`below` make that end open (> low, < high)."""
    ends = []
    if low is not None:
        ends.append(f"{'>' if above else '>='} {low:g}")
    if high is not None:
        ends.append(f"{'<' if below else '<='} {high:g}")
    want = "a number " + " and ".join(ends) + (f" ({note})" if note else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if (not math.isfinite(value)
                or (low is not None and (value <= low if above else value < low))
                or (high is not None and (value >= high if below else value > high))):  # fmt: skip
            raise argparse.ArgumentTypeError(f"must be {want}, not {text!r}")
        return value

    return parse


def model_arg(text: str) -> tuple[str, object]:
    """--model-arg KEY=VALUE: VALUE as an int, a float, a bool (true/false, yes/no, on/off: a
    string 'no' would be truthy), else the string."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    if value.lower() in ("true", "yes", "on", "false", "no", "off"):
        return key, value.lower() in ("true", "yes", "on")
    return key, value


def patience_epochs(text: str) -> int:
    """--patience: a number of epochs, 0 for off (what the engine makes of 0 too)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of epochs (0: off), not {text}")
    return value


def beta_alpha(text: str) -> float:
    """--mixup / --cutmix: a Beta distribution's alpha, 0 for off."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be an alpha >= 0 (0: off), e.g. 0.4, not {text!r}")
    return value


def size_epochs(text: str) -> tuple[int, int]:
    """--progressive SIZE:EPOCHS, two positive whole numbers."""
    size, sep, epochs = text.partition(":")
    try:
        pair = (int(size), int(epochs))
    except ValueError:
        pair = (0, 0)
    if not sep or min(pair) < 1:
        raise argparse.ArgumentTypeError(f"must be SIZE:EPOCHS, e.g. 20:8, not {text!r}")
    return pair


# The options several commands share, with their ranges.
COUNT = whole(1)  # epochs, batch sizes, threads, images per class, top-k
IMG_SIZE = whole(1, high=MAX_INPUT_SIZE, high_note="a batch of larger images does not fit in memory")
# numpy's generators take no negative seed, torch's none above MAX_SEED
SEED = whole(0, high=MAX_SEED, high_note="torch's generators take none larger")
FRACTION = real(0, 1, above=True, below=True)  # --val-fraction
LEARNING_RATE = real(0, above=True)
SAM_RADIUS = real(0, note="0: off; e.g. 0.05")  # --sam: sharpness-aware minimisation's rho


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """--threads, alike in every command that computes (engine.distributed.use_threads; predict
    has its own default)."""
    p.add_argument("--threads", type=COUNT, default=None,
                   help="torch threads (default: the usable cores)")


def add_progress_argument(p: argparse.ArgumentParser) -> None:
    """--no-progress (dest `progress`), alike in the commands that draw progress bars."""
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (they are drawn only when stderr is a terminal)")


def refuse_resume_with_overwrite(args: argparse.Namespace) -> None:
    """--resume and --overwrite (train, transfer, segment) together: a `UsageError`, not one
    silently winning over the other."""
    if args.resume and args.overwrite:
        from ..errors import UsageError

        raise UsageError("--resume continues what --out holds, --overwrite replaces it: pass one")


def add_positional_or_option(p: argparse.ArgumentParser, dest: str, *, help: str) -> None:
    """A positional argument that may also be given as --DEST, the spelling other commands use
    for it (`train --model`, as predict, transfer and convert; `transfer --data`, as train and
    evaluate). Without the option, train's `--model lenet5` was taken for an abbreviation of
    --model-arg ("expected KEY=VALUE, got 'lenet5'"). `settle_positional` joins the two."""
    p.add_argument(dest, nargs="?", metavar=dest.upper(), help=f"{help} (or --{dest})")
    p.add_argument(f"--{dest}", dest=f"{dest}_option", metavar=dest.upper(),
                   help=f"the same as {dest.upper()}")


def settle_positional(args: argparse.Namespace, dest: str, example: str) -> None:
    """`args.<dest>` from the positional or its --DEST spelling (`add_positional_or_option`);
    a `UsageError` when neither or two different ones are given."""
    from ..errors import UsageError

    given, option = getattr(args, dest), getattr(args, f"{dest}_option")
    if given is not None and option is not None and given != option:
        raise UsageError(f"{dest.upper()} {given} and --{dest} {option} say two different "
                         f"things: pass one ({example})")  # fmt: skip
    if given is None and option is None:
        raise UsageError(f"the following arguments are required: {dest.upper()} ({example})")
    setattr(args, dest, given if given is not None else option)
