"""Paths the commands are given: output folders (checked before any work, so that a file in the
way costs nothing first), their permissions, and whether two data sources are one."""

from __future__ import annotations

import glob
import hashlib
import itertools
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs into one folder are not guarded there
    fcntl = None  # type: ignore[assignment]

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
        if part.is_symlink() and not part.exists():
            # A link to a disk that is not mounted, or a folder since removed: mkdir's
            # FileExistsError traceback came after the work (transfer: its features).
            raise UsageError(f"{what} {p}: {part} is a link to {os.readlink(part)}, which does "
                             f"not exist: create that folder (or mount its disk), or {todo}")
        if part.exists():
            if not part.is_dir():
                raise UsageError(f"{what} {p}: {part} is a file, not a folder: {todo}")
            # access() also says no on a read-only file system, for root too.
            if not os.access(part, os.W_OK | os.X_OK):
                raise UsageError(f"{what} {p}: {part} is not writable: {todo}")
            return


LOCK_FILE = ".cnnzoo.lock"
# .folders: [(folder, fd, made)] this thread holds, in the order taken; made: the folders that
# did not exist before (the folder and the parents made for it, deepest first), which go again
# if the run wrote nothing into them (a NaN in its first epoch).
_held = threading.local()


def hold_folder(folder: str | os.PathLike[str], what: str = "--out") -> None:
    """Make this run the only one writing into `folder` until the enclosing `folders_released`
    ends: a second run into it meanwhile (two batch jobs given one --out, a --resume started
    twice) gets one `UsageError` line instead of both writing, renaming and deleting each
    other's checkpoints. Taken when a run first writes there, not when it checks its options,
    so that a run that fails before writing leaves no folder behind. An flock on a hidden file,
    which the OS lets go of however the process ends (SIGKILL too); a file system without locks
    goes unguarded (and is left as clean: the lock file goes at the end all the same)."""
    if fcntl is None:
        return
    folder = Path(os.path.abspath(folder))
    held = _held.__dict__.setdefault("folders", [])
    if any(f == folder for f, _, _ in held):  # transfer's fine-tuning inside its own run
        return
    # transfer's OUT/finetune/head: a fine-tuning that failed before writing left OUT/finetune
    # behind, and the retry with a lower --lr was refused as a folder holding a transfer run.
    made = list(itertools.takewhile(lambda p: not p.exists(), (folder, *folder.parents)))
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # a folder it cannot write: the run's own first write says so
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"{what} {folder}: another cnnzoo run is writing into it: wait "
                             f"for it to end, or choose another {what}") from None
        except OSError:  # a file system without locks (ENOLCK): unguarded, but listed as
            break  # held all the same, so that the run's end removes the file it made there
        # The run that held it removed the file between our open and flock: lock the new one.
        with suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        os.close(fd)
    held.append((folder, fd, made))


@contextmanager
def folders_released() -> Iterator[None]:
    """Let go of the folders `hold_folder` took inside this block when it ends (a decorator
    of `Trainer.fit` and `transfer`), and remove their lock files: a finished run leaves no
    trace of it (nor the folders it made, when it wrote nothing there)."""
    held = _held.__dict__.setdefault("folders", [])
    n = len(held)
    try:
        yield
    finally:
        while len(held) > n:
            folder, fd, made = held.pop()
            with suppress(OSError):
                os.unlink(folder / LOCK_FILE)  # before letting go, so no one locks it meanwhile
            os.close(fd)
            for made_here in made:  # deepest first, and only if empty: a run that wrote
                with suppress(OSError):  # nothing leaves nothing
                    made_here.rmdir()


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


def temp_prefix(path: str | os.PathLike[str]) -> str:
    """The start of the name of a temporary file or folder written beside `path` and renamed
    onto it (`.NAME.PID.`; mkstemp / mkdtemp add a unique part): hidden, so no loader reads
    it, and naming its writer, so `remove_stale_temps` can tell a killed write's leftover from
    another process's write in progress."""
    return f".{Path(path).name}.{os.getpid()}."


# What lies between '.NAME.' and '.tmp' in the names the writers use: PID + mkstemp's 8
# characters (or 'old', a bundle moved aside), and the older forms, PID alone or a random part.
# A name with more parts is not ours: '.w.safetensors.v2.PID.abcd1234.tmp' is the live
# temporary file of another writer's w.safetensors.v2, which the glob also matches.
_TEMP_MIDDLE = re.compile(r"\d+\.(?:[a-z0-9_]{8}|old)|[^.]+")


def remove_stale_temps(path: str | os.PathLike[str]) -> None:
    """Delete what killed writes of `path` left beside it: the hidden `.NAME.*.tmp` files and
    folders the atomic writers (checkpoints, .safetensors files, bundles) rename into place
    when done. SIGKILL, the OOM killer or a closed terminal leave them behind, as large as
    what they were writing, and nothing else removes them. One named with the id of a running
    process (`temp_prefix`) is another process's write in progress, and is left alone (so is
    everything of a process with our own id: two containers' process 1 sharing a cache),
    except our own id's in a folder this run holds (`_own_leftover`)."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        middle = stale.name[len(path.name) + 2:-len(".tmp")]
        if not _TEMP_MIDDLE.fullmatch(middle):
            continue  # not a name we write: a user's, or the temp of another file (NAME.v2)
        pid = middle.split(".")[0]
        if pid.isdigit() and _running(int(pid)) and not (
                int(pid) == os.getpid() and _own_leftover(stale)):  # fmt: skip
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _own_leftover(stale: Path) -> bool:
    """Whether `stale`, named with this process's id, was left by a killed earlier process of
    the same id: in a container every run is process 1, so a killed run's temporary file
    looked like this run's own write in progress and stayed for good (a VGG's last.pt: 1 GB
    per kill). Told only in a folder this run holds (`hold_folder`: no other cnnzoo run, in
    this container or another sharing the volume, writes there) and of a file this process
    does not have open; anywhere else (a cache shared by two containers' process 1) it is
    kept."""
    folder = Path(os.path.abspath(stale.parent))
    if not any(f == folder for f, _, _ in _held.__dict__.get("folders", [])):
        return False
    name = os.path.abspath(stale)
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:  # not Linux: cannot tell
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (listdir's own fd)
            continue
        if target == name or target.startswith(name + os.sep):  # the file, or in the folder
            return False
    return True


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's, or not a pid at all
        return True
    return True


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
    fd, name = tempfile.mkstemp(prefix=temp_prefix(p), suffix=suffix, dir=p.parent)
    os.close(fd)
    usual_permissions(name)
    return Path(name)


@contextmanager
def replacing(path: str | os.PathLike[str], *, durable: bool = False) -> Iterator[Path]:
    """Write the next version of `path` in one step: the block writes the `temp_beside` file
    it is given, which is renamed onto `path` when the block ends without an error and removed
    otherwise. A reader (another process, or the user after a kill or a full disk) sees the
    old file or the new one, never an empty or half-written one. The temporary name ends in
    .tmp, so a writer that picks its format from the name must be told it (PIL's `format=`).

    durable: fsync'ed before the rename (weights and checkpoints), so that a power cut right
    after does not leave an empty file under the name; not for the many small files of an
    export or a segmentation, where it would cost a disk flush each."""
    tmp = temp_beside(path)
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace `path` with `text` (UTF-8) in one step (`replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def utf8_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """`path` as a name that safetensors and torch's mmap loading can open: they take only
    UTF-8 names, so a file in a folder named in Latin-1 bytes (an old zip's 'r\xe9sultats',
    held as 'r\udce9sultats') was written but never read back ('Path ... is not valid UTF-8',
    'cannot read checkpoint ... (UnicodeEncodeError)'). Such a name (or one whose UTF-8 bytes
    are not its bytes on disk: a Latin-1 locale decodes 0xe9 as 'é') is given as a link with
    an ASCII name in a temporary folder, for the block's time; any other as it is."""
    name = os.fspath(path)
    try:
        as_is = name.encode("utf-8") == os.fsencode(name)
    except UnicodeEncodeError:
        as_is = False
    if as_is:
        yield name
        return
    with tempfile.TemporaryDirectory(prefix="cnnzoo-") as tmp:
        link = os.path.join(tmp, "file")
        os.symlink(os.path.abspath(name), link)
        yield link


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
    of a project moved or copied whole. Both ends with links resolved, as the data's recorded
    path is: an --out written through a linked folder (a cluster's /home/u -> /gpfs/u,
    `--out $PWD/runs/a`) made the path climb out through the link's target, which a copy of
    the project elsewhere does not have."""
    if not (isinstance(source, str | os.PathLike) and Path(source).is_absolute()
            and Path(source).exists()):  # fmt: skip
        return None
    return os.path.relpath(Path(source).resolve(), Path(run_dir).resolve())


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


@cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the memo key: a rewritten file is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()[:24]


def file_digest(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (24 hex digits), memoised per path, size and mtime."""
    st = os.stat(path)
    return _file_digest(os.path.realpath(path), st.st_size, st.st_mtime_ns)
