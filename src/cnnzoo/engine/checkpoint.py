"""Checkpoints that survive a kill at any moment and load with `torch.load(weights_only=True)`.

Everything stored is a tensor or a Python primitive (dict/list/tuple/str/int/float/bool/None),
so loading never unpickles arbitrary objects. Files are written to a temporary file in the same
folder, fsync'ed, then `os.replace`d over the old one: a reader sees the old checkpoint or the
new one, never half of one.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import DamagedCheckpointError, TrainingError, WeightsError
from ..paths import remove_stale_temps, replacing, utf8_path
from ..text import plural
from ..weights.files import (
    CHECKPOINT_FORMAT,
    newer_format,
    pickled_objects,
    refuse_torchscript,
)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """`torch.save(obj, path)` via temp file + fsync + os.replace (`paths.replacing`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)  # a killed write's: as large as a checkpoint, and hidden
    try:
        with replacing(path, durable=True) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except BaseException as exc:
        # A full disk: torch's zip writer reports the OSError as a RuntimeError raised from it.
        cause = exc if isinstance(exc, OSError) else exc.__context__
        if isinstance(exc, OSError | RuntimeError) and isinstance(cause, OSError):
            reason = cause.strerror or " ".join(str(cause).split())
            kept = f"; the {path.name} there before is unchanged" if path.exists() else ""
            raise TrainingError(f"cannot write {path} ({reason}): free some space or choose "
                                f"another --out{kept}") from None
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, Any]:
    """Load a cnnzoo checkpoint safely (weights_only=True); a one-line error if unreadable.

    mmap: map the tensors instead of reading them (a zip-format file only): cheap when the file
    may turn out not to be one of ours and is read again by the weights loader."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(folder_given(path))
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist: pass the file written by `cnnzoo train`")
    refuse_torchscript(path)  # before torch.load, which warns first
    try:
        with utf8_path(path) as name:  # mapped tensors stay readable once the name goes
            ckpt = torch.load(name, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        # A pickled payload is said to be one, as predict --weights says it: "cannot read
        # checkpoint (UnpicklingError)" did not tell a user it had been sent one.
        if isinstance(exc, pickle.UnpicklingError) and (
                refusal := pickled_objects(path, exc)) is not None:  # fmt: skip
            raise refusal from None
        raise WeightsError(f"cannot read checkpoint {path} ({type(exc).__name__}): "
                           "is it a file written by `cnnzoo train`?") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        # A state_dict, a `cnnzoo convert` output, a .safetensors file (which torch.load reads
        # by its name): weights without the run they came from.
        raise WeightsError(f"{path} holds weights only, not a `cnnzoo train` checkpoint (which "
                           "also records the model, its classes and input): give a run's "
                           "best.pt or last.pt; weights files go to `cnnzoo predict --weights` "
                           "and `cnnzoo transfer --weights`")  # fmt: skip
    newer_format(path, ckpt.get("format"), CHECKPOINT_FORMAT, ckpt.get("cnnzoo_version"))
    check_description(ckpt, path)
    return ckpt


def check_description(ckpt: dict[str, Any], path: Path) -> None:
    """The fields of a checkpoint that rebuild and feed its model, as `cnnzoo train` writes
    them, or one `DamagedCheckpointError` line naming the file and the first field that is
    not. A checkpoint from elsewhere (downloaded, sent, edited) with a list for its meta, a
    string for its image size or a list for its options ended in a traceback deep in
    evaluate, predict, convert or segment (an image size of 10^9: a MemoryError)."""
    from ..limits import MAX_INPUT_SIZE
    from ..models.base import finite_numbers, is_whole

    def bad(problem: str) -> DamagedCheckpointError:
        return damaged(path, problem)

    state, meta = ckpt["model"], ckpt.get("meta")
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise bad("its model must be a state_dict (names -> tensors)")
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise bad(f"its meta must be a dict, not {meta!r}")
    if ckpt.get("config") is not None and not isinstance(ckpt["config"], dict):
        raise bad(f"its config must be a dict, not {ckpt['config']!r}")
    precision = ckpt.get("precision")
    if precision is not None and not (  # what `Precision.to_dict` writes
            isinstance(precision, dict) and precision.get("dtype") in ("bf16", "fp32")
            and set(precision) <= {"dtype", "channels_last", "source", "speedup"}):  # fmt: skip
        raise bad(f"its precision must be a dict with dtype bf16 or fp32, not {precision!r}")
    for key, kind in (("model", str), ("task", str), ("model_kwargs", dict)):
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            raise bad(f"meta {key} must be a {'string' if kind is str else 'dict'}, not {meta[key]!r}")
    for key in ("num_classes", "in_chans", "img_size"):
        if key in meta and not is_whole(meta[key]):
            raise bad(f"meta {key} must be a whole number >= 1, not {meta[key]!r}")
    if meta.get("img_size", 0) > MAX_INPUT_SIZE:  # every image is sized to it
        raise bad(f"meta img_size must be at most {MAX_INPUT_SIZE}, not {meta['img_size']!r}")
    for key in ("mean", "std"):
        if key in meta and not finite_numbers(meta[key], meta.get("in_chans")):
            raise bad(f"meta {key} must be a list of numbers, one per channel "
                      f"({meta.get('in_chans', 'in_chans')}), not {meta[key]!r}")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list)
                                  and all(isinstance(c, str) for c in names)):  # fmt: skip
        raise bad(f"meta class_names must be a list of names, not {names!r}")
    if names and "num_classes" in meta and len(names) != meta["num_classes"]:
        # A segmentation checkpoint's per-class table ended in zip()'s traceback.
        raise bad(f"meta class_names lists {plural(len(names), 'class', 'classes')}, its "
                  f"num_classes is {meta['num_classes']}")


def damaged(path: Path, problem: str) -> DamagedCheckpointError:
    """The one line for a checkpoint with a field of the wrong kind (`problem` names it)."""
    return DamagedCheckpointError(f"{path}: {problem}: the checkpoint is damaged or was not "
                                  "written by `cnnzoo train`")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_run_state(ckpt: dict[str, Any], path: Path) -> None:
    """The parts of a run's last.pt that `--resume` continues from, beyond `check_description`'s
    (its config, precision, epoch, history, best so far, scheduler and RNG states), or one
    `DamagedCheckpointError` line naming the first that is not as `cnnzoo train` writes it. A
    damaged or forged one ended in a traceback deep in the resume (an RNG state of the wrong
    size, a history row that is a string), or went on wrongly without a word (an epoch of
    10^12: 'nothing left to train'). The optimizer state is checked against the optimizer it
    is to continue (`check_optimizer_state`)."""
    from ..models.base import is_whole

    for key in ("config", "precision", "optimizer", "scheduler", "rng"):
        if not isinstance(ckpt.get(key), dict):
            raise damaged(path, f"its {key} must be a dict, not {ckpt.get(key)!r}"[:200])
    epoch, history = ckpt.get("epoch"), ckpt.get("history")
    if not is_whole(epoch):
        raise damaged(path, f"its epoch must be a whole number >= 1, not {epoch!r}")
    # One row per epoch trained, each the numbers of metrics.jsonl's line (the file is
    # rewritten from it, and the curves drawn).
    if not (isinstance(history, list) and all(
            isinstance(row, dict) and row.get("epoch") == i
            and all(isinstance(k, str) and _number(v) for k, v in row.items())
            for i, row in enumerate(history, 1))):  # fmt: skip
        raise damaged(path, "its history must be a list of dicts of numbers, one per epoch")
    if len(history) != epoch:
        raise damaged(path, f"its history has {plural(len(history), 'epoch')}, its epoch is "
                            f"{epoch}")
    if ckpt.get("best") is not None and not _number(ckpt["best"]):
        raise damaged(path, f"its best must be a number, not {ckpt['best']!r}")
    for key in ("best_epoch", "bad_epochs"):
        if not (is_whole(ckpt.get(key), 0) and ckpt[key] <= epoch):
            raise damaged(path, f"its {key} must be a whole number from 0 to its epoch "
                                f"({epoch}), not {ckpt.get(key)!r}")
    if not is_whole(ckpt["scheduler"].get("last_epoch"), 0):
        raise damaged(path, "its scheduler's last_epoch must be a whole number >= 0")
    optimizer = ckpt["optimizer"]
    if not (isinstance(optimizer.get("state"), dict)
            and all(isinstance(v, dict) for v in optimizer["state"].values())
            and isinstance(optimizer.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                    and all(is_whole(i, 0) for i in g["params"])
                    for g in optimizer["param_groups"])):  # fmt: skip
        raise damaged(path, "its optimizer must hold a state dict and a list of parameter groups")
    # Set on throwaway generators, each of which checks its state as the global one would.
    import numpy as np

    try:
        set_rng_state(ckpt["rng"], into=(torch.Generator(), random.Random(),
                                         np.random.RandomState()))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError):
        raise damaged(path, "its RNG states (torch, Python, NumPy) are not ones they can "
                            "take") from None


def check_optimizer_state(saved: dict[str, Any], optimizer: torch.optim.Optimizer,
                          path: Path) -> None:
    """`saved` (a last.pt's optimizer, past `check_run_state`) fits `optimizer`, the one the
    resumed run built: as many parameter groups and parameters, each parameter's state of its
    shape and finite. Else one `DamagedCheckpointError` line: torch's load raised a ValueError
    for another group count, and a momentum of another shape loaded without a word and failed
    at the first step (or broadcast into a wrong run)."""
    groups, saved_groups = optimizer.param_groups, saved["param_groups"]
    if len(saved_groups) != len(groups):
        has = plural(len(saved_groups), "parameter group")
        raise damaged(path, f"its optimizer state has {has}, the resumed run's optimizer "
                            f"{len(groups)}")
    params: dict[object, torch.Tensor] = {}
    for i, (was, now) in enumerate(zip(saved_groups, groups, strict=True), 1):
        if len(was["params"]) != len(now["params"]):
            raise damaged(path, f"its optimizer's parameter group {i} has "
                                f"{plural(len(was['params']), 'parameter')}, the resumed "
                                f"run's {len(now['params'])}")
        params.update(zip(was["params"], now["params"], strict=True))
    for key, state in saved["state"].items():
        param = params.get(key)
        if param is None:
            raise damaged(path, f"its optimizer state names parameter {key!r}, which none "
                                "of its parameter groups lists")
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                # Adam's step is a 0-d tensor; the rest (moments, momentum) are per weight.
                shape = () if name == "step" else tuple(param.shape)
                if tuple(value.shape) != shape:
                    raise damaged(path, f"its optimizer's {name} for a parameter of shape "
                                        f"{tuple(param.shape)} has shape {tuple(value.shape)}")
                if not bool(torch.isfinite(value).all()):
                    raise damaged(path, f"its optimizer's {name} holds NaN or inf")
            elif not (value is None or _number(value)):
                raise damaged(path, f"its optimizer's {name} must be a tensor or a number, "
                                    f"not {value!r}"[:200])


def folder_given(path: Path, otherwise: str = " (a run's best.pt or last.pt)") -> str:
    """What to say when a run's folder is given where its checkpoint file belongs; `otherwise`
    ends it when the folder holds no run."""
    found = [path / n for n in ("best.pt", "last.pt") if (path / n).is_file()]
    return f"{path} is a folder: give a checkpoint file" + (f", e.g. {found[0]}" if found
                                                            else otherwise)


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch, Python, NumPy) as tensors and primitives."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss),
                          float(cached))
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return state


def set_rng_state(state: dict[str, Any], into: tuple[Any, Any, Any] | None = None) -> None:
    """Restore what `rng_state` captured; `into`: a torch.Generator, random.Random and NumPy
    RandomState to set instead of the global ones (`check_run_state` tries them)."""
    import numpy as np

    gen, py_rng, np_rng = into or (torch.default_generator, random, np.random)
    gen.set_state(state["torch"])
    py = state["python"]
    # weights_only loading turns the inner tuple into a list; random.setstate wants tuples.
    py_rng.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np_rng.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))


@contextmanager
def caller_rng_kept() -> Iterator[None]:
    """Give the global RNGs (torch, Python, NumPy) back as they were when the block started.

    A run seeds them (`TrainConfig.seed`) so its numbers are reproducible, and a resumed run
    sets them from its checkpoint; a notebook that calls `transfer` or `Trainer.fit` must still
    draw from its own random stream afterwards, as if the run had not touched it. Also used as a
    decorator (nested uses are fine: each restores what it found)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
