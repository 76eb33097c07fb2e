"""Paths the commands are given: output folders (checked before any work, so that a file in the
way costs nothing first), their permissions, and whether two data sources are one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import UsageError


def cache_root() -> Path:
    """cnnzoo's cache (weights, Fashion-MNIST, features, precision choices, the models table):
    $CNNZOO_CACHE, else $XDG_CACHE_HOME/cnnzoo, else ~/.cache/cnnzoo."""
    if env := os.environ.get("CNNZOO_CACHE"):
        return Path(env)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "cnnzoo"
    try:
        return Path.home() / ".cache" / "cnnzoo"
    except RuntimeError:  # pathlib's traceback, e.g. under `env -i` with a user id of no name
        raise UsageError("cnnzoo cannot tell where its cache goes: $HOME is not set and this "
                         "user has no home folder: set $CNNZOO_CACHE (or $HOME) to a writable "
                         "folder") from None


def check_folder(path: str | os.PathLike[str], what: str,
                 todo: str = "choose another folder") -> None:
    """`path` is a folder to write into (it may not exist yet): the first part of it that exists
    must be a folder we may write into, else one `UsageError` line naming `what` (e.g. '--out')
    and the file or folder in the way, ending in `todo` -- instead of mkdir's or the
    checkpoint's traceback after the work is done."""
    p = Path(path)
    for part in (p, *p.parents):
        if part.exists():
            if not part.is_dir():
                raise UsageError(f"{what} {p}: {part} is a file, not a folder: {todo}")
            # access() also says no on a read-only file system, for root too.
            if not os.access(part, os.W_OK | os.X_OK):
                raise UsageError(f"{what} {p}: {part} is not writable: {todo}")
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


def temp_beside(path: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
    """A new, empty, hidden file in `path`'s folder (so that `os.replace` onto `path` is
    atomic) to write the next version of `path` into, with the permissions the umask gives.
    Its name is unique among every writer of that folder: one made of the process id was
    shared by two containers using one cache volume, each cnnzoo its process 1, and one
    run's rename found the file gone ('cannot write ... No such file or directory')."""
    p = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent)
    os.close(fd)
    usual_permissions(name)
    return Path(name)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace `path` with `text` (UTF-8) in one step: a reader, another process among them,
    sees the old file or the new one, never half of one. The temporary file goes on failure."""
    tmp = temp_beside(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def same_source(a: object, b: object) -> bool:
    """Two data sources are one: equal names (built-ins in any case: 'Fashion-MNIST') or the
    same existing file or folder however written (relative, absolute, a trailing slash)."""
    a, b = str(a), str(b)
    pa, pb = Path(a), Path(b)
    if pa.exists() or pb.exists():  # folders digfold and DIGFOLD are two data sets
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    return a.lower() == b.lower()


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
