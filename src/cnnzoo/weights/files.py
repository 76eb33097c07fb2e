"""Reading checkpoint files safely: PyTorch .pth/.pt, .safetensors and Keras .h5/.weights.h5.

Nothing here executes code from a file. PyTorch files are read with `torch.load(...,
weights_only=True)`, whose unpickler only rebuilds tensors and plain containers; a file that
needs any other Python object (a pickled class instance, a whole pickled `nn.Module`) is refused
with a `WeightsError` before anything in it runs. safetensors and HDF5 hold raw arrays only.

The result is a `Checkpoint`: flat `name -> tensor` for PyTorch and safetensors files (and
in-memory state_dicts), normalised by `state_dict_tensors`, or, for Keras files, the list of
weighted layers in model order (`KerasLayer`), which `layouts.py` maps onto a zoo model.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import shlex
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import NewerFormatError, WeightsError, pip_install_extra
from ..paths import (
    BUNDLE_JSON,
    bundle_in,
    file_digest,
    remove_stale_temps,
    replacing,
    usual_permissions,
    utf8_path,
)

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
SAFETENSORS_SUFFIXES = (".safetensors",)
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")


def named_as_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether a file's name says it holds weights (.pt, .pth, .ckpt, .safetensors, .h5, ...),
    to tell a checkpoint given where an image or a bundle goes; not .bin or .tar, which need
    not be weights."""
    return str(path).lower().endswith((".pt", ".pth", ".ckpt", *SAFETENSORS_SUFFIXES,
                                       *KERAS_SUFFIXES))  # fmt: skip
# The `format` in the metadata of a transfer bundle's model.safetensors (transfer/bundle.py).
BUNDLE_FORMAT = "cnnzoo-bundle-1"
# The `format` of a `cnnzoo train` checkpoint (engine/loop.py). A change that an older cnnzoo
# would misread raises the number: that cnnzoo then refuses the file (`newer_format`).
CHECKPOINT_FORMAT = "cnnzoo-checkpoint-1"


def newer_format(path: object, found: object, known: str, written_by: object = None) -> None:
    """One `WeightsError` line when the format tag `found` is `known`'s kind at a higher number
    ('cnnzoo-bundle-2' where this cnnzoo reads 'cnnzoo-bundle-1'): a newer cnnzoo wrote the
    file, and reading it as the old format could predict wrongly without a word. Nothing for
    any other tag. written_by: the cnnzoo version the file records, for the message."""
    from .. import __version__

    kind, _, number = known.rpartition("-")
    tail = found[len(kind) + 1:] if isinstance(found, str) and found.startswith(kind + "-") else ""
    if tail.isdigit() and int(tail) > int(number):
        by = f"cnnzoo {written_by}" if isinstance(written_by, str) else "a newer cnnzoo"
        raise NewerFormatError(f"{path} was written by {by} in format {found}; this cnnzoo "
                           f"({__version__}) reads {known}: upgrade cnnzoo to use it")

# Containers that training scripts wrap a state_dict in (timm/engine checkpoints, Lightning, ...).
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "model_state", "net", "module")
# Prefixes added by DistributedDataParallel / DataParallel, by torch.compile and by PyTorch
# Lightning (the LightningModule's `self.model`), in any nesting; no zoo model has a child of
# these names.
_STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")
# The same wrappers around one submodule: pytorch/examples' ImageNet script puts only AlexNet's
# and VGG's `features` in DataParallel (`features.module.0.weight` beside `classifier.1.weight`),
# and torch.compile of a submodule gives `features._orig_mod.0.weight`.
_INNER_WRAPPERS = re.compile(r"(?<=\.)(?:module|_orig_mod)\.")


@dataclass
class KerasLayer:
    """One Keras layer with weights: its kind and its arrays in Keras's variable order.

    kind: 'conv' ([kernel HWIO, bias?]), 'depthwise' ([kernel HW I 1, bias?]), 'dense' ([kernel
    (in, out), bias?]) or 'bn' ([gamma, beta, moving_mean, moving_variance]).
    """

    name: str
    kind: str
    arrays: list[Tensor]


@dataclass
class Checkpoint:
    """What a checkpoint file holds, before conversion to a model's key names."""

    path: str
    format: str  # 'torch', 'safetensors' or 'keras'
    tensors: dict[str, Tensor] = field(default_factory=dict)
    keras_layers: list[KerasLayer] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint file of any supported format (chosen by its contents, then suffix)."""
    if not os.fspath(path):  # Path("") is ".", which would be reported as a folder
        raise WeightsError("an empty name is not a weights file: pass a checkpoint file path")
    p = Path(path)
    if p.is_dir():
        raise WeightsError(_folder_given(p))
    if not p.is_file():
        raise WeightsError(f"{p}: no such weights file")
    if p.stat().st_size == 0:
        raise WeightsError(f"{p}: empty file (0 bytes)")
    if p.name == BUNDLE_JSON and bundle_in(p.parent) is not None:  # as its model.safetensors
        raise WeightsError(f"{p} is the description of a transfer bundle: "
                           + _use_bundle(p.parent))
    with open(p, "rb") as fh:
        magic = fh.read(9)
    if magic[:8] == b"\x89HDF\r\n\x1a\n" or p.name.lower().endswith(KERAS_SUFFIXES):
        return _read_keras(p)
    if _safetensors_magic(magic, p.name):
        checkpoint = _read_safetensors(p)
        if checkpoint.metadata.get("format") == BUNDLE_FORMAT:
            # Its keys are the bundle's (backbone. + head), and its classes, input and views are
            # in bundle.json: as a model's weights it would only fail to fit, naming 500 keys.
            raise WeightsError(f"{p} is the weights file of a transfer bundle: "
                               + _use_bundle(p.parent))
    else:
        checkpoint = _read_torch(p)
    check_stored(checkpoint.metadata, p)
    return checkpoint


def check_stored(metadata: Mapping[str, str], path: object) -> None:
    """The description a `cnnzoo convert` output carries in its metadata (or `training_metadata`
    gives a `cnnzoo train` checkpoint), each field JSON text, as `convert_file` writes it; or
    one `WeightsError` line naming the file and the field. A .safetensors from elsewhere whose
    model_kwargs was a list, or whose preprocessing was not JSON, or asked for a 10^9-px
    input, ended in a traceback (a MemoryError) when it was loaded or used."""
    from ..limits import MAX_INPUT_SIZE
    from ..models.base import finite_numbers, is_whole
    from .preprocess import preprocessing_problem

    if metadata.get("format") != "cnnzoo":
        return

    def bad(problem: str) -> WeightsError:
        return WeightsError(f"{path}: its metadata's {problem}: the file is damaged or was not "
                            "written by cnnzoo convert; convert the original checkpoint again")

    fields: dict[str, Any] = {}
    for key in ("model_kwargs", "preprocessing", "class_names", "checkpoint_input"):
        if key in metadata:
            try:
                fields[key] = json.loads(metadata[key])
            except (ValueError, TypeError, RecursionError):
                raise bad(f"{key} is not JSON") from None
    if not isinstance(fields.get("model_kwargs", {}), dict):
        raise bad(f"model_kwargs must be an object, not {metadata['model_kwargs']!r}")
    if "preprocessing" in fields and (problem := preprocessing_problem(fields["preprocessing"])):
        raise bad(problem)
    names = fields.get("class_names")
    if names is not None and not (isinstance(names, list)
                                  and all(isinstance(c, str) for c in names)):  # fmt: skip
        raise bad(f"class_names must be a list of names, not {metadata['class_names']!r}")
    given = fields.get("checkpoint_input", {})
    if not (isinstance(given, dict) and set(given) <= {"size", "channels", "mean", "std"}
            and all(is_whole(given.get(k, 1)) for k in ("size", "channels"))
            and given.get("size", 1) <= MAX_INPUT_SIZE
            and all(finite_numbers(given.get(k, [0])) for k in ("mean", "std"))):  # fmt: skip
        raise bad(f"checkpoint_input must be an object of size (at most {MAX_INPUT_SIZE}), "
                  f"channels, mean and std, not {metadata['checkpoint_input']!r}")


def _use_bundle(folder: Path) -> str:
    # Each as it is pasted: shell-quoted, and a Python literal (a folder named "Bob's runs"
    # made load_bundle('Bob's runs') a syntax error, as did C:\Users's '\U').
    return (f"a bundle is used whole, with its classes and input: --bundle "
            f"{shlex.quote(str(folder))} "
            f"(cnnzoo predict, evaluate), cnnzoo.load_bundle({str(folder)!r}) in Python")


def _folder_given(p: Path) -> str:
    """What to say when a folder is given as weights: the bundle or the run's checkpoint it
    holds, when it holds one (`runs/parts`, `runs/parts/bundle`, `runs/lenet5`)."""
    from ..engine.checkpoint import folder_given

    bundle = bundle_in(p)
    if bundle is not None:
        return f"{p} holds a transfer bundle, not a weights file: " + _use_bundle(bundle)
    return folder_given(p, otherwise=" (the weights file in it)")


def _safetensors_magic(magic: bytes, name: str) -> bool:
    """Whether a file starting with `magic` (its first 9 bytes) is read as safetensors. Files
    get renamed (a safetensors `model.bin`), so the contents decide before the suffix:
    safetensors starts with its JSON header's length and then "{"; torch.save writes a zip
    (before PyTorch 1.6 a pickle, starting with its PROTO opcode), never "{" there."""
    saved_by_torch = magic[:2] == b"PK" or magic[:1] == b"\x80"
    return magic[8:9] == b"{" or (name.lower().endswith(SAFETENSORS_SUFFIXES) and not saved_by_torch)


def refuse_torchscript(p: Path) -> None:
    """One `WeightsError` line for a TorchScript archive (torch.jit.save: a zip with
    constants.pkl and the net's code), which torch.load(weights_only=True) refuses with
    'Cannot use weights_only=True with TorchScript archives' after a warning to call
    torch.jit.load: cnnzoo runs no code from a file, TorchScript's included."""
    try:
        with zipfile.ZipFile(p) as z:
            scripted = any(n.rpartition("/")[2] == "constants.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return  # not a zip: the reader says what it is
    if scripted:
        raise WeightsError(f"{p} is a TorchScript archive (torch.jit.save), which holds the "
                           "net's code besides its weights; cnnzoo reads weights only: save "
                           f"them with torch.save(torch.jit.load({str(p)!r}).state_dict(), "
                           "'weights.pth') and pass that file")


def _read_torch(p: Path) -> Checkpoint:
    refuse_torchscript(p)
    try:
        with warnings.catch_warnings():
            # "Detected pickle protocol 4": noise before the error below explains the file.
            warnings.simplefilter("ignore", UserWarning)
            # A file object: given a path, torch.load reads a `.safetensors` name as safetensors.
            with open(p, "rb") as fh:
                obj = torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if (refusal := pickled_objects(p, exc)) is not None:
            raise refusal from None
        text = str(exc)
        # Anything else the safe unpickler cannot parse: not a PyTorch file at all (an image, a
        # text file), or a pickle written by something other than torch.save.
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        why = f" ({detail.group(1).strip()})" if detail else ""
        raise WeightsError(
            f"{p}: not a PyTorch checkpoint{why}; expected a state_dict saved with torch.save, "
            ".safetensors or Keras .h5"
        ) from None
    except Exception as exc:  # noqa: BLE001 -- any parse failure of a foreign or cut-off file
        # The pickle reader fails on text and other formats with whatever it trips on (KeyError,
        # IndexError, struct.error, ...); a cut-off zip gives a RuntimeError whose first
        # sentence is the useful part (the rest is miniz boilerplate).
        first = re.split(r"(?<=\.) ", " ".join(str(exc).split()), maxsplit=1)[0]
        msg = f": {first[:160]}" if isinstance(exc, RuntimeError | OSError) and first else ""
        raise WeightsError(
            f"{p}: not a readable PyTorch checkpoint (truncated, or another format?){msg}"
        ) from None
    if isinstance(obj, Mapping):
        newer_format(p, obj.get("format"), CHECKPOINT_FORMAT, obj.get("cnnzoo_version"))
    metadata = training_metadata(obj)
    if not metadata and (names := names_beside(obj)) is not None:
        metadata = {"class_names": json.dumps(names)}
    return Checkpoint(path=str(p), format="torch", tensors=state_dict_tensors(obj, str(p)),
                      metadata=metadata)


def pickled_objects(p: object, exc: pickle.UnpicklingError) -> WeightsError | None:
    """The error that refuses a file holding pickled Python objects, from torch.load's
    weights_only failure `exc`; None when `exc` is another unpickling failure. weights_only's
    unpickler stops at the first global it does not allow-list, before calling it: the
    file's code never runs."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if not (found or "Unsupported global" in text):
        return None
    what = f" ({found.group(1)})" if found else ""
    return WeightsError(f"{p}: refused: the file contains pickled Python objects{what}, and "
                        "loading them could run arbitrary code; cnnzoo reads tensors only -- "
                        "re-save it with torch.save(model.state_dict(), path) or as "
                        ".safetensors")  # fmt: skip


def training_metadata(obj: Any) -> dict[str, str]:
    """For a checkpoint written by `cnnzoo train`, what `cnnzoo convert` writes into the
    safetensors it makes of one: the model, its options and class names, the precision it ran
    in and, for a classifier, the input it was trained on (size, channels, the training
    images' mean and std). A
    transfer fine-tuning checkpoint is marked as one (its bundle is what to load); {} for
    anything else."""
    if not isinstance(obj, Mapping):
        return {}
    meta = obj.get("meta")
    if not (str(obj.get("format", "")).startswith("cnnzoo-checkpoint") and isinstance(meta, Mapping)
            and isinstance(meta.get("model"), str)):  # fmt: skip
        return {}
    if meta.get("transfer"):
        return {"format": "cnnzoo", "model": meta["model"], "transfer_checkpoint": "true"}
    try:
        out = {"format": "cnnzoo", "model": meta["model"], "source_layout": "cnnzoo train",
               "model_kwargs": json.dumps(dict(meta.get("model_kwargs") or {})),
               "class_names": json.dumps(meta.get("class_names"))}  # fmt: skip
        if obj.get("task", "classification") == "classification":  # segmentation tiles instead
            out["checkpoint_input"] = json.dumps(training_input(meta))
        if isinstance(obj.get("precision"), Mapping) and obj["precision"].get("dtype") in (
                "bf16", "fp32"):  # fmt: skip
            out["precision"] = obj["precision"]["dtype"]  # predict's default, as for the .pt
        return out
    except (KeyError, TypeError, ValueError):
        return {}  # a meta that does not say: loaded as a plain state_dict


# Where training scripts keep the class names beside the state_dict: a list, or ImageFolder's
# `class_to_idx` (which the PyTorch transfer tutorials and the Udacity flower classifier save
# with a fine-tuned torchvision net), or its inverse.
_CLASS_KEYS = ("class_names", "classes", "labels", "class_to_idx", "idx_to_class")


def names_beside(obj: Any) -> list[str | None] | None:
    """The class names a checkpoint dict holds beside its state_dict, in logit order; None
    when it holds none (or a list or mapping that is not one name per index 0..n-1). A mapping
    that numbers its classes from 1 (a script's own class_to_idx; ImageFolder's count from 0)
    gives None first, for output 0, which no class was numbered with (`weights._beside`
    decides whether they name the head's outputs; they were dropped without a word)."""
    if not isinstance(obj, Mapping):
        return None
    for key in _CLASS_KEYS:
        found = obj.get(key)
        if isinstance(found, list | tuple) and found and all(isinstance(c, str) for c in found):
            return list(found)
        if isinstance(found, Mapping) and found:
            pairs = [(v, k) if key == "class_to_idx" else (k, v) for k, v in found.items()]
            by_index = {int(i): c for i, c in pairs
                        if isinstance(c, str) and str(i).isdigit()}  # fmt: skip
            if len(by_index) == len(found) and sorted(by_index) == list(range(len(found))):
                return [by_index[i] for i in range(len(found))]
            if len(by_index) == len(found) and sorted(by_index) == list(range(1, len(found) + 1)):
                return [None, *(by_index[i] for i in range(1, len(found) + 1))]
    return None


def training_input(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The input a `cnnzoo train` classifier was trained on, from its checkpoint's meta: the
    keywords of `Preprocessing.of_training_run` (size, channels, the training images' mean and
    std)."""
    return {"size": int(meta["img_size"]), "channels": int(meta["in_chans"]),
            "mean": [float(v) for v in meta["mean"]], "std": [float(v) for v in meta["std"]]}


def state_dict_tensors(obj: Any, source: str) -> dict[str, Tensor]:
    """The name -> tensor mapping inside a loaded checkpoint, a safetensors file's contents or a
    state_dict passed in memory: unwrapped from training-script containers, with the DDP /
    torch.compile prefixes removed. Every source goes through here, so all load alike."""
    for _ in range(3):  # e.g. {'model': {'state_dict': {...}}}
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = next(
                (obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None
            )
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        raise WeightsError(
            f"{source}: no state_dict found (expected a dict of tensors, optionally under "
            f"'state_dict' or 'model'); got {type(obj).__name__}"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    while tensors and (prefix := next((p for p in _STRIP_PREFIXES
                                       if all(k.startswith(p) for k in tensors)), None)):  # fmt: skip
        tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return {_INNER_WRAPPERS.sub("", k): v for k, v in tensors.items()}


def _is_tensor_dict(obj: Mapping) -> bool:
    values = list(obj.values())
    return bool(values) and sum(isinstance(v, Tensor) for v in values) >= max(1, len(values) // 2)


def stored_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata a `cnnzoo convert` output (format 'cnnzoo': its model, options, classes,
    input) or a transfer bundle's weights file ('cnnzoo-bundle-1') carries, read from the header
    only; {} for any other file."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    try:
        with open(p, "rb") as fh:  # by its contents, as read_checkpoint tells it (a renamed .bin)
            if not _safetensors_magic(fh.read(9), p.name):
                return {}
    except OSError:  # a folder, a missing file, 'imagenet': the weights loader says which
        return {}
    try:
        with utf8_path(p) as name, safe_open(name, framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return {}  # read_checkpoint reports it
    return meta if str(meta.get("format", "")).startswith("cnnzoo") else {}


def _read_safetensors(p: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with utf8_path(p) as name, safe_open(name, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        msg = " ".join(str(exc).split())[:160]
        raise WeightsError(f"{p}: not a readable .safetensors file: {msg}") from None
    return Checkpoint(path=str(p), format="safetensors", tensors=state_dict_tensors(tensors, str(p)),
                      metadata=metadata)  # fmt: skip


def _read_keras(p: Path) -> Checkpoint:
    """Keras 3 `.weights.h5` (layers/<auto name>/vars/<i>) or the legacy Keras 2 `.h5` format.

    Keras 3 names the groups after the layer *class* in creation order (conv2d, conv2d_1, ...),
    not after the layer names, so layers are ordered by that counter within each kind; the legacy
    format lists the layer names in model order in the file's `layer_names` attribute.
    """
    try:
        import h5py
    except ImportError:
        raise WeightsError(
            f"{p}: reading Keras .h5 files needs h5py: {pip_install_extra('keras')}"
        ) from None
    source: Any = p
    if p.name.lower().endswith(".keras"):
        source = _keras_archive_weights(p)
    try:
        with h5py.File(source, "r") as f:
            _refuse_unsafe_h5(f, p)
            if "layers" in f and isinstance(f["layers"], h5py.Group) and "layer_names" not in f.attrs:
                layers = _keras3_layers(f["layers"])
            else:
                root = f["model_weights"] if "model_weights" in f else f  # a whole saved model
                layers = _legacy_layers(root)
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        msg = " ".join(str(exc).split())[:160]
        raise WeightsError(f"{p}: not a readable Keras weights file: {msg}") from None
    if not layers:
        raise WeightsError(f"{p}: no layer weights found in this HDF5 file")
    return Checkpoint(path=str(p), format="keras", keras_layers=layers)


# Keras's own guards (keras.src.saving.saving_lib) against archives and HDF5 files that store
# next to nothing yet unpack into gigabytes: Keras stores its members uncompressed and weights
# do not compress, so a zip member or a dataset more than 100 (zip) or 1000 (HDF5) times
# larger unpacked than stored is a bomb once it passes this size (a .keras file of 28 MB held
# 6 GB of zeros: read into memory, a MemoryError traceback, or the machine's memory).
BOMB_FLOOR_BYTES = 64 << 20


def _refuse_unsafe_h5(f: Any, p: Path) -> None:
    """One `WeightsError` line for an HDF5 file that reaches outside itself (an external link,
    a dataset stored in another file or a virtual one mapping other files: h5py read the
    bytes of any file the HDF5 named, /etc/passwd or a key, as weights, which `cnnzoo convert`
    then wrote into its output) or that holds a dataset unpacking to far more than it stores."""
    import h5py

    itself = "; a weights file must hold its arrays itself"
    # The visitors return what is wrong, which ends the visit (raising inside one is a
    # SystemError from h5py's lock).
    def link(name: str, found: Any) -> str | None:
        if isinstance(found, h5py.ExternalLink):
            return f"{name} is a link to {found.filename}, another file{itself}"
        return None

    def dataset(name: str, obj: Any) -> str | None:
        if not isinstance(obj, h5py.Dataset):
            return None
        if obj.external or obj.is_virtual:
            return (f"dataset {name} is stored in other files "
                    f"({'virtual' if obj.is_virtual else obj.external[0][0]}){itself}")  # fmt: skip
        declared = math.prod(obj.shape or ()) * obj.dtype.itemsize
        stored = obj.id.get_storage_size()
        if declared > BOMB_FLOOR_BYTES and declared > 1000 * stored:
            return (f"dataset {name} unpacks to {declared:,} bytes from {stored:,} stored, a "
                    "decompression bomb, not weights")
        return None

    problem = f.visititems_links(link) or f.visititems(dataset)
    if problem:
        raise WeightsError(f"{p}: refused: {problem}")


def _keras_archive_weights(p: Path) -> io.BytesIO:
    """The weights of a Keras 3 `.keras` archive (`model.save`): a zip holding the model's
    config and `model.weights.h5`, the `.weights.h5` layout; read from memory."""
    try:
        with zipfile.ZipFile(p) as z:
            info = z.getinfo("model.weights.h5")
            if info.file_size > BOMB_FLOOR_BYTES and info.file_size > 100 * info.compress_size:
                raise WeightsError(f"{p}: refused: model.weights.h5 unpacks to "
                                   f"{info.file_size:,} bytes from {info.compress_size:,} "
                                   "stored, a decompression bomb, not weights")
            return io.BytesIO(z.read("model.weights.h5"))
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise WeightsError(f"{p}: not a readable .keras archive ({exc}); save the weights "
                           "alone with model.save_weights('x.weights.h5')") from None


_KERAS3_KINDS = {
    "conv2d": "conv",
    "depthwise_conv2d": "depthwise",
    "dense": "dense",
    "batch_normalization": "bn",
}


def _keras3_layers(group: Any) -> list[KerasLayer]:
    import h5py

    out: list[tuple[str, int, KerasLayer]] = []
    for gname, g in group.items():
        m = re.fullmatch(r"([a-z0-9_]+?)(?:_(\d+))?", gname)
        if not m or not isinstance(g, h5py.Group):
            continue
        base, idx = m.group(1), int(m.group(2) or 0)
        if "vars" not in g or len(g["vars"]) == 0:
            if "layers" in g:  # a nested model: not supported, say so rather than mis-map
                raise WeightsError(
                    f"nested Keras model {gname!r} in the weights file: save the inner model's "
                    "weights (inner.save_weights(...)) and load those"
                )
            continue
        arrays = [torch.from_numpy(g["vars"][str(i)][()]) for i in range(len(g["vars"]))]
        kind = _KERAS3_KINDS.get(base) or _kind_from_arrays(arrays)
        out.append((kind, idx, KerasLayer(name=gname, kind=kind, arrays=arrays)))
    out.sort(key=lambda t: (t[0], t[1]))
    return [layer for _, _, layer in out]


def _legacy_layers(root: Any) -> list[KerasLayer]:
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in root.attrs["layer_names"]]
    out = []
    for name in names:
        g = root[name]
        wnames = [w.decode() if isinstance(w, bytes) else str(w) for w in g.attrs["weight_names"]]
        if not wnames:
            continue
        arrays = [torch.from_numpy(g[w][()]) for w in wnames]
        lowered = " ".join(wnames).lower()
        kind = "depthwise" if "depthwise" in lowered else _kind_from_arrays(arrays)
        out.append(KerasLayer(name=name, kind=kind, arrays=arrays))
    return out


def _kind_from_arrays(arrays: list[Tensor]) -> str:
    if arrays[0].dim() == 4:
        return "conv"
    if arrays[0].dim() == 2:
        return "dense"
    if len(arrays) == 4 and all(a.dim() == 1 for a in arrays):
        return "bn"
    return "other"


def save_safetensors(
    tensors: Mapping[str, Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None,
    *, shown_as: str | os.PathLike[str] | None = None,
) -> None:
    """Write `tensors` as .safetensors in one step, fsync'ed (`paths.replacing`): no half-written
    file after a kill, nor an empty one after a power cut.
    shown_as: the path an error names instead of `path` (a bundle is written into a hidden
    temporary folder first, which the user never sees)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    p = Path(path)
    if not p.parent.is_dir():
        raise WeightsError(f"{p}: no folder {p.parent} to write into; create it first")
    remove_stale_temps(p)
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        with replacing(p, durable=True) as tmp:
            save_file(data, str(tmp), metadata=metadata)
            usual_permissions(tmp)  # safetensors creates 0600
    except (OSError, SafetensorError) as exc:  # read-only folder, disk full, p is a folder
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:120]
        raise WeightsError(f"{shown_as or p}: cannot write ({reason}); choose another output "
                           "path") from None


def weights_fingerprint(source: str | os.PathLike[str] | None) -> str:
    """What identifies a set of weights: the SHA-256 of the checkpoint file's bytes (the file a
    named tag resolves to, or the path given), or 'random' for None."""
    if source is None:
        return "random"
    p = Path(source)
    if not p.is_file():
        return str(source)
    return file_digest(p)
