"""The `cnnzoo` command: parse, call the library, print. Each subcommand lives in
`cnnzoo/commands/<name>.py` with `add_arguments(parser)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
import time
import typing
from pathlib import Path

from .errors import CnnzooError
from .text import shown

# name -> one-line help. Modules are imported only to build their own parser.
COMMANDS: dict[str, str] = {
    "demo": "replay the transfer-learning lecture offline: ImageNet predictions, then a new task",
    "models": "list the architectures with parameters, multiply-adds (GMACs), year and paper",
    "predict": "classify images with a zoo model or a trained bundle",
    "train": "train a zoo model from scratch (or grow it from a smaller one)",
    "evaluate": "score a training checkpoint or a transfer bundle on labelled images",
    "compare": "compare training runs: parameters, multiply-adds (MMACs), time, accuracy, "
               "and what else differed",
    "transfer": "transfer learning: pretrained backbone + new head on your image folder",
    "segment": "segment images with a trained U-Net",
    "data": "export built-in data sets as image folders, or show what a data set holds (info)",
    "convert": "convert a checkpoint to .safetensors with cnnzoo's key names",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line and a pointer to --help: the full usage of `train`
    ran to 25 lines above the one that said what was wrong.

    Options are not abbreviated (argparse's allow_abbrev, off here and, through
    add_subparsers, in every command's parser): `predict --mode x` was silently read as
    --model x, and a new option could change what an old script's prefix meant."""

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        if os.environ.get("RANK", "0") != "0":
            self.exit(2)  # under torchrun every rank parses the same line: rank 0 says it
        line = f"{self.prog}: error: {message} (see `{self.prog} --help`)"
        self._print_message(line + "\n", sys.stderr)
        raise UsageExit(line, has_json="--json" in self._option_string_actions)


class UsageExit(SystemExit):
    """argparse's exit (status 2) after a mistake in the options, with the line it printed and
    whether the command that refused them has --json (`_main` then says it as JSON too)."""

    def __init__(self, line: str, has_json: bool) -> None:
        super().__init__(2)
        self.line, self.has_json = line, has_json


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="cnnzoo",
        description="Landmark CNNs, pretrained weights and transfer learning on a CPU.",
    )
    parser.add_argument("--version", action="version", version=f"cnnzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f".commands.{name}", __package__)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _command_parser(parser: argparse.ArgumentParser,
                    args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command that `args` chose: `cnnzoo data export`'s for
    `cnnzoo data export ...`; `parser` itself when no command was given."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None))
            if chosen is not None:
                return _command_parser(chosen, args)
    return parser


def _refuse_misplaced(parser: argparse.ArgumentParser, words: list[str]) -> None:
    """Refuse options given before the name of the command they go with, in that command's
    parser, saying where they go: for one that takes a value (`cnnzoo --threads 1 train`)
    argparse took the value for the command's name ("invalid choice: '1'"), and only a
    switch (`cnnzoo --json models`) reached `_spelled_out`. No parser above a command has
    options of its own but -h and --version, so nothing it takes is refused here."""
    words = _options_part(words)
    level, i, misplaced = parser, 0, []
    while (sub := _subcommands(level)) is not None:
        j = next((k for k in range(i, len(words)) if words[k] in sub.choices), None)
        if j is None or any(w.partition("=")[0] in level._option_string_actions
                            for w in words[i:j]):  # (--help, --version: argparse's own)
            return
        misplaced += words[i:j]
        level, i = sub.choices[words[j]], j + 1
    if misplaced:
        level.error(f"unrecognized arguments: {' '.join(misplaced)}"
                    f"{_spelled_out(level, misplaced, words)}")


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)),
                None)


def _spelled_out(parser: argparse.ArgumentParser, unknown: list[str],
                 words: list[str]) -> str:
    """For an unknown option that begins a real one (`--mode` of --model, which argparse took
    as its abbreviation until abbreviations were turned off): the options it may have meant.
    For one of the command's own options given before its name (`cnnzoo --json models`): that
    it goes after it. `words`: the command line."""
    for word in unknown:
        given = word.partition("=")[0]
        if not given.startswith("--") or given == "--":  # '--' alone begins every option
            continue
        if given in parser._option_string_actions:
            # Only the parser of the level it stood at saw it ('did you mean --json?' said
            # nothing); one after a '--' is an argument, as the user meant.
            if word in _options_part(words):
                return f"; {given} is an option of `{parser.prog}`: give it after `{parser.prog}`"
            continue
        meant = sorted(o for o in parser._option_string_actions if o.startswith(given))
        if meant:
            return f"; did you mean {' or '.join(meant)}? Options are not abbreviated"
    return ""


# File errors that the user, not the code, must fix, and what to do about each.
_TODO = {
    errno.ENOSPC: "free some space and run it again",
    errno.EDQUOT: "free some space and run it again",
    errno.EROFS: "choose another --out",
    errno.EACCES: "check its permissions, or choose another --out if results go there",
    errno.EPERM: "check its permissions, or choose another --out if results go there",
    # A path given with a name over the file system's 255 bytes: pathlib's checks raise it.
    errno.ENAMETOOLONG: "a name in the path is longer than the file system takes (255 bytes): "
                        "give a shorter one",
}


@contextlib.contextmanager
def _printable_stdout() -> typing.Iterator[None]:
    """While a command runs, print what stdout's encoding cannot take instead of ending in a
    UnicodeEncodeError traceback after the work is done. A UTF-8 stdout prints a file name
    that is not UTF-8 (Latin-1 bytes from an old zip, held as 'caf\\udce9.jpg') as its own
    bytes, as `ls` does; another (PYTHONIOENCODING=ascii, a Latin-1 locale) prints a class
    named 'Würfel' as 'W\\xfcrfel', as Python prints stderr. --json output is ASCII either way.
    The stream is put back as it was afterwards (main may be called from a notebook)."""
    out = sys.stdout
    errors = getattr(out, "errors", None)
    try:
        utf8 = codecs.lookup(out.encoding).name == "utf-8"
    except (AttributeError, LookupError, TypeError):
        utf8 = False
    wanted = "surrogateescape" if utf8 else "backslashreplace"
    if errors not in ("strict", "surrogateescape") or errors == wanted or not hasattr(
            out, "reconfigure"):
        yield
        return
    out.reconfigure(errors=wanted)
    try:
        yield
    finally:
        out.reconfigure(errors=errors)


@contextlib.contextmanager
def _streams_to_devnull_when_closed() -> typing.Iterator[None]:
    """While a command runs, a closed stdout or stderr (`>&-`, `2>&-`, a service started without
    them: Python makes it None) reads as /dev/null, as print() already treats it: `predict
    --json` ended in a traceback after the work (its document is written with .write), and with
    stderr closed any progress bar (tqdm) did, exit status 1 -- the status of an unreadable
    image. Put back as it was afterwards."""
    closed = [name for name in ("stdout", "stderr") if getattr(sys, name) is None]
    with contextlib.ExitStack() as stack:
        for name in closed:
            setattr(sys, name, stack.enter_context(open(os.devnull, "w", encoding="utf-8")))
        try:
            yield
        finally:
            for name in closed:
                setattr(sys, name, None)


def main(argv: list[str] | None = None) -> int:
    with _streams_to_devnull_when_closed(), _printable_stdout():
        return _main(argv)


def _json_failure(line: str, status: int) -> None:
    """A --json command that failed: the line it said on stderr, as the one JSON document on
    stdout, so that a script's json.loads reads why instead of failing on an empty string."""
    from .text import json_text

    try:
        print(json_text({"error": line.strip(), "exit_status": status}), flush=True)
    except OSError:
        # Its reader went away (Ctrl-C in a pipe stops it too), or the failure was stdout's own
        # (a full disk under `> out.json`): the line on stderr says it, and Python's flush at
        # exit must not fail on the same stream again (the recipe in the `signal` docs). A
        # stream without a file descriptor (a notebook's) has no such flush to fail.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _json_asked(argv: list[str] | None) -> bool:
    """Whether the command line holds --json before any `--` (the command's parser refused
    it before `args` could say so)."""
    return "--json" in _options_part(_given(argv))


def _given(argv: list[str] | None) -> list[str]:
    return sys.argv[1:] if argv is None else argv


def _options_part(words: list[str]) -> list[str]:
    """The command line's words before a `--`, after which none is an option."""
    return words[:words.index("--")] if "--" in words else words


def _main(argv: list[str] | None) -> int:
    # SIGTERM raises `Terminated` from the start, the parse too: a `timeout` or `kill` then
    # ended the process without a line (nor --json's document) until the command had begun.
    previous = _catch_sigterm()
    try:
        return _parse_and_run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _parse_and_run(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
        _refuse_misplaced(parser, _given(argv))
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            # argparse lets the top-level parser say it ("cnnzoo: error: unrecognized arguments
            # ... (see `cnnzoo --help`)"), which lists no command's options: the command's
            # own parser says it, as it says every other mistake in its options.
            command = _command_parser(parser, args)
            command.error(f"unrecognized arguments: {' '.join(unknown)}"
                          f"{_spelled_out(command, unknown, _given(argv))}")
    except (KeyboardInterrupt, Terminated) as exc:  # right after starting: no command has begun
        stopped = isinstance(exc, KeyboardInterrupt)
        line = "cnnzoo: interrupted" if stopped else "cnnzoo: terminated (SIGTERM)"
        status = 130 if stopped else 128 + signal.SIGTERM
        print(f"\n{line}", file=sys.stderr)
        # Whether the command takes --json is not known yet: the words ask for it, and a script
        # that gave it reads the document it gets once the command has begun.
        if _json_asked(argv):
            _json_failure(line, status)
        return status
    except UsageExit as exc:
        if exc.has_json and _json_asked(argv):
            _json_failure(exc.line, 2)
        raise
    if not getattr(args, "_run", None):
        # A usage error (exit 2), so on stderr: `cnnzoo > out.txt` left the help in the file.
        parser.print_help(sys.stderr)
        return 2
    started = time.time()
    # `cnnzoo data export: error: ...`, as argparse names the subcommand in its own errors
    command = " ".join(filter(None, (args.command, getattr(args, "action", None))))

    def failed(line: str, status: int) -> int:
        # Every failure's line, in one place: with --json also stdout's one document.
        print(line, file=sys.stderr)
        if getattr(args, "json", False):
            _json_failure(line, status)
        return status

    def bug(exc: Exception) -> None:
        # A bug ends in its traceback on stderr and exit status 1, as any Python program's;
        # with --json stdout still holds a document (an object, not predict's list of records,
        # whose exit status 1 means some images could not be read).
        if getattr(args, "json", False):
            _json_failure(f"cnnzoo {command}: internal error: {type(exc).__name__}: "
                          f"{shown(exc)} (a bug: see the traceback)", 1)

    try:
        # numpy before any command imports torch: torch's own import of it swallows whatever
        # ends it, so a Ctrl-C there left numpy half-imported and the command went on to a
        # RecursionError or ImportError traceback (exit 1) instead of "interrupted". Here the
        # KeyboardInterrupt is raised (torch imports numpy anyway: no time is added).
        import numpy  # noqa: F401

        return int(args._run(args) or 0)
    except Terminated:
        return failed(f"\ncnnzoo {command}: terminated (SIGTERM){_resume_hint(args, started)}",
                      128 + signal.SIGTERM)
    except CnnzooError as exc:
        # One line, whatever the names in it hold (a class or file name with '\n' or '\x1b[2J')
        return failed(f"cnnzoo {command}: error: {shown(exc)}", 2)
    except KeyboardInterrupt:
        # On a line of its own: a progress bar may hold the cursor.
        return failed(f"\ncnnzoo {command}: interrupted{_resume_hint(args, started)}", 130)
    except BrokenPipeError:
        # The reader went away (`cnnzoo models | head`): stop quietly, and keep Python's exit
        # flush from failing on the closed pipe again (the recipe in the `signal` docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        # A full disk or a folder it may not write, met after the checkpoints (metrics.jsonl,
        # the report's figures, the feature cache): the user's one line, not a traceback.
        # Anything else is a bug and keeps its traceback.
        if exc.errno not in _TODO:
            bug(exc)
            raise
        where = f"{shown(exc.filename)}: " if exc.filename else ""
        return failed(f"cnnzoo {command}: error: {where}{exc.strerror}: {_TODO[exc.errno]}"
                      f"{_resume_hint(args, started)}", 2)
    except Exception as exc:
        bug(exc)
        raise


class Terminated(BaseException):  # not an Exception: no `except Exception` may swallow it
    """SIGTERM -- a batch system's time limit, `docker stop`, `timeout`, `kill` -- raised in
    the main thread, so that the run ends as Ctrl-C ends it."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def _catch_sigterm() -> typing.Any:
    """Make SIGTERM raise `Terminated` while a command runs; the handler it replaces, or None
    when it leaves SIGTERM alone (a handler of a program that runs `main`, or a thread that is
    not the main one, which may not set one). Without it, a killed run ended its log with
    nothing: no line saying why it stopped, nor that --resume continues it."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _terminated)


def _resume_hint(args: argparse.Namespace, started: float) -> str:
    """For an interrupted training or fine-tuning run that has saved an epoch, or a segment run
    that has written a mask: how to continue it. With --overwrite, a checkpoint older than
    this command is the replaced run's."""

    def ours(path: Path) -> bool:
        # os.path's: Path.is_file raised again on the name too long that ended the command
        return os.path.isfile(path) and not (getattr(args, "overwrite", False)
                                             and path.stat().st_mtime < started)

    if "torch" not in sys.modules:
        # Interrupted while torch was being imported (Python drops a module whose import
        # failed): nothing can have been saved, and importing the modules below would import
        # the half-initialised torch again -- a segfault or a traceback instead of the line.
        return ""
    if args.command == "train":
        from .engine.run import out_dir_for

        last = out_dir_for(args.model, args.out) / "last.pt"
        if ours(last):
            return f"; {last} holds the last finished epoch: add --resume to continue"
    elif args.command == "transfer":
        from .commands.transfer import out_folder

        tuned = out_folder(args) / "finetune"  # its phases' checkpoints: head/, full/
        if any(ours(tuned / phase / "last.pt") for phase in ("head", "full")):
            return (f"; {tuned} holds the fine-tuning's last finished epoch: add --resume to "
                    "continue")
    elif args.command == "segment" and getattr(args, "segmented", 0):  # (set by segment.run)
        return f"; {args.out} holds the masks finished so far: add --resume to segment the rest"
    return ""


if __name__ == "__main__":
    sys.exit(main())
