"""Paths the commands are given: output folders (checked before any work, so that a file in the
way costs nothing first), their permissions, and whether two data sources are one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .errors import UsageError


def cache_root() -> Path:
    """cnnzoo's cache (weights, Fashion-MNIST, features, precision choices, the models table):
    $CNNZOO_CACHE, else $XDG_CACHE_HOME/cnnzoo, else ~/.cache/cnnzoo."""
    if env := os.environ.get("CNNZOO_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cnnzoo"


def check_folder(path: str | os.PathLike[str], what: str) -> None:
    """`path` is a folder to write into (it may not exist yet): the first part of it that exists
    must be a folder we may write into, else one `UsageError` line naming `what` (e.g. '--out')
    and the file or folder in the way -- instead of mkdir's or the checkpoint's traceback after
    the work is done."""
    p = Path(path)
    for part in (p, *p.parents):
        if part.exists():
            if not part.is_dir():
                raise UsageError(f"{what} {p}: {part} is a file, not a folder: choose another "
                                 "folder")  # fmt: skip
            # access() also says no on a read-only file system, for root too.
            if not os.access(part, os.W_OK | os.X_OK):
                raise UsageError(f"{what} {p}: {part} is not writable: choose another folder")
            return


def check_outside(out: str | os.PathLike[str], data: object) -> None:
    """One `UsageError` line when the output folder `out` is, or lies inside, the data folder
    `data`: the next run would read the run's files (its report's pictures) as images. Compared
    as written and with links resolved, so neither a linked class folder (DATA/cat/run, cat a
    link) nor a link to DATA hides it."""
    if not (isinstance(data, str | os.PathLike) and Path(data).is_dir()):
        return
    for where, folder in ((Path(os.path.abspath(out)), Path(os.path.abspath(data))),
                          (Path(out).resolve(), Path(data).resolve())):  # fmt: skip
        if where == folder or folder in where.parents:
            raise UsageError(f"output folder {out} lies inside the data folder {data}: the next "
                             "run would read its files as images; choose an output folder "
                             "outside it")  # fmt: skip


def remove_entries(folder: Path, names: Sequence[str]) -> None:
    """Delete `folder / name` for each of `names` that exists, in that order: files, links
    (not what they point to) and whole folders. What a run replacing another clears."""
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def usual_permissions(path: str | os.PathLike[str]) -> None:
    """Give a file or folder made private by its maker (safetensors' files and mkdtemp's
    folders are 0600 / 0700) the permissions the user's umask gives anything else, before it is
    renamed into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)


def same_source(a: object, b: object) -> bool:
    """Two data sources are one: equal names (built-ins in any case: 'Fashion-MNIST') or the
    same existing file or folder however written (relative, absolute, a trailing slash)."""
    a, b = str(a), str(b)
    pa, pb = Path(a), Path(b)
    if pa.exists() or pb.exists():  # folders digfold and DIGFOLD are two data sets
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    return a.lower() == b.lower()


def from_run(source: object, run_dir: str | os.PathLike[str]) -> str | None:
    """The data folder or CSV `source` (recorded absolute) as a path relative to `run_dir`,
    the folder a run writes its checkpoints or bundle to; None for a built-in name or a path
    that is gone. Recorded beside the absolute path, so that `run_data` still finds the data
    of a project moved or copied whole."""
    if not (isinstance(source, str | os.PathLike) and Path(source).is_absolute()
            and Path(source).exists()):  # fmt: skip
        return None
    return os.path.relpath(os.path.abspath(source), os.path.abspath(run_dir))


def run_data(recorded: object, relative: object, run_dir: str | os.PathLike[str],
             given: object = None) -> str:
    """The data a run recorded (`recorded`: absolute; `relative`: `from_run`'s path from the
    run's folder), where it is now. A project folder holding both the data and the runs, moved
    or copied (to another machine, or under another name), keeps the second path valid when
    the first is gone or names the old copy: without it a resume there was refused as another
    data set, with advice to resume on a folder that no longer existed, and `evaluate --data`
    scored every image, training ones too, as if they were held out.

    given: the data the user passed (--data), returned when it is the run's data at either
    path, so that comparing it with the result tells whether it is the run's data. Otherwise
    the recorded path while it exists, else the relative one when that exists, else the
    recorded path (for the messages that say it is gone)."""
    recorded = str(recorded or "")
    places = [recorded] if recorded else []
    if isinstance(relative, str) and relative:
        moved = Path(run_dir) / relative
        if moved.exists():
            places.append(str(moved.resolve()))
    if given is not None and any(same_source(given, p) for p in places):
        return str(given)
    return next((p for p in places if Path(p).exists()), recorded)


BUNDLE_JSON = "bundle.json"  # a transfer bundle's description (transfer/bundle.py)


def bundle_in(folder: str | os.PathLike[str]) -> Path | None:
    """The transfer bundle a folder given where something else belongs is (a bundle/ folder)
    or holds (a transfer run's OUT, with OUT/bundle/), or None: for messages that point to it."""
    for d in (Path(folder), Path(folder) / "bundle"):
        if (d / BUNDLE_JSON).is_file():
            return d
    return None


def transfer_bundle(checkpoint: str | os.PathLike[str]) -> Path:
    """The bundle folder of the transfer run a fine-tuning checkpoint (OUT/finetune/full/last.pt)
    belongs to, for messages that point to it: OUT/bundle."""
    p = Path(checkpoint)
    return p.parents[2] / "bundle" if len(p.parents) > 2 and p.parent.parent.name == "finetune" \
        else Path("OUT/bundle")
