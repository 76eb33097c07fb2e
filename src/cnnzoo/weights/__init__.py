"""Pretrained weights: safe, offline, from any common format.

`load_weights(model, weights)` accepts a checkpoint path (.pth/.pt state_dict, .safetensors,
Keras .h5/.weights.h5), a named tag ('imagenet'), or a state_dict. It reads the file safely
(`files`), converts the key layout (`layouts`: torchvision, timm, lukemelas, Keras), adapts the
head and the first conv to the model's `num_classes`/`in_chans` (`adapt`), and refuses anything
else with one error listing the missing/unexpected keys and shape or dtype conflicts. The model
gets a `weights_info` attribute: where the weights came from, their preprocessing and class
names.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import ModelOptionError, WeightsError
from ..paths import transfer_bundle
from .adapt import (
    adapt_input_conv,
    adapt_state_dict,
    aux_classifiers,
    check_fit,
    first_conv_key,
    head_keys,
    load_into,
    non_finite_note,
)
from .classes import (
    Prediction,
    check_class_names,
    decode_predictions,
    imagenet_classes,
    imagenet_wnids,
)
from .files import Checkpoint, read_checkpoint, save_safetensors, state_dict_tensors
from .layouts import convert_checkpoint
from .named import (
    WeightsEntry,
    cache_dir,
    download_weights,
    get_weights,
    is_weights_tag,
    list_weights,
    resolve,
)
from .preprocess import Preprocessing

log = logging.getLogger("cnnzoo.weights")

__all__ = [
    "Checkpoint",
    "Prediction",
    "Preprocessing",
    "WeightsEntry",
    "WeightsInfo",
    "adapt_input_conv",
    "cache_dir",
    "checkpoint_shape",
    "convert_file",
    "create_pretrained",
    "decode_predictions",
    "download_weights",
    "get_weights",
    "imagenet_classes",
    "imagenet_wnids",
    "list_weights",
    "load_state_dict",
    "load_weights",
    "open_weights",
    "read_checkpoint",
]


@dataclass
class WeightsInfo:
    """What `load_weights` loaded: set as `model.weights_info`."""

    source: str  # file path, or 'state_dict'
    layout: str  # 'torchvision', 'lukemelas', 'timm', 'keras', 'cnnzoo'
    preprocessing: Preprocessing
    class_names: list[str] | None = field(repr=False)  # None when the head was re-initialised
    head_loaded: bool
    entry: WeightsEntry | None = None
    notes: list[str] = field(default_factory=list)
    # The options the net was built with (`create_pretrained`: given, the file's recorded ones,
    # GoogLeNet's aux_logits from its keys), besides num_classes and in_chans: what a bundle or
    # a converted file must record to build it again.
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def open_weights(
    weights: Any, name: str | None = None
) -> tuple[Checkpoint, WeightsEntry | None]:
    """Read `weights` (path, named tag, state_dict or `Checkpoint`): (checkpoint, named entry)."""
    if isinstance(weights, Checkpoint):
        return weights, None
    if isinstance(weights, Mapping):
        # The caller's own tensors (another net's state_dict() shares its parameters): copied,
        # or the new net, which takes the checkpoint's tensors as its parameters, shared them,
        # and training one changed the other.
        tensors = {k: v.detach().clone()
                   for k, v in state_dict_tensors(weights, "state_dict").items()}  # fmt: skip
        return Checkpoint(path="state_dict", format="torch", tensors=tensors), None
    if is_weights_tag(weights) and not os.path.exists(weights):
        if name is None:
            raise WeightsError(f"named weights {weights!r} need a model name")
        entry = get_weights(name, weights)
        return read_checkpoint(resolve(entry)), entry
    if isinstance(weights, (str, os.PathLike)):
        if _looks_like_tag(weights) and not os.path.exists(weights):
            raise WeightsError(_unknown_tag_message(os.fspath(weights), name))
        # A named entry's own file passed by path (torchvision's googlenet-1378be20.pth) still
        # gets that entry's preprocessing, class names and accuracy.
        known = [e for e in list_weights(name) if e.file == Path(weights).name] if name else []
        return read_checkpoint(weights), (known[0] if known else None)
    raise WeightsError(
        f"weights must be a file path, 'imagenet' or a state_dict, not {type(weights).__name__}"
    )


def _looks_like_tag(weights: str | os.PathLike[str]) -> bool:
    """A bare word ('imagenet21k'): no folder and no file suffix, so more likely an unknown
    weights name than a missing file."""
    text = os.fspath(weights)
    return bool(text) and Path(text).name == text and not Path(text).suffix


def _unknown_tag_message(word: str, name: str | None) -> str:
    tags = [repr(e.tag) for e in list_weights(name)] if name else []
    if tags:
        known = f"{name}'s named weights: {', '.join(tags)}"
    elif name:
        known = f"{name} has no named weights; pass a checkpoint file path"
    else:
        known = "pass a checkpoint file path"
    return f"{word}: no such weights file or named weights; {known}"


def load_state_dict(
    model: nn.Module, weights: Any, *, name: str | None = None
) -> tuple[dict[str, Tensor], WeightsInfo]:
    """Read and convert `weights` for `model` without loading them: (state_dict, info).

    The state_dict is in the model's key names, adapted to its head and input channels, and
    checked: any missing/unexpected key or shape/dtype conflict raises one `WeightsError`.
    """
    name = name or getattr(getattr(model, "default_cfg", None), "name", None)
    ckpt, entry = open_weights(weights, name)
    return _fit(model, ckpt, entry, name)


def _fitted(
    model: nn.Module, ckpt: Checkpoint, name: str | None, *,
    clearer: Callable[[], None] | None = None,
) -> tuple[Any, dict[str, Tensor], list[str]]:
    """(conversion, state_dict adapted to `model`, notes), or the `WeightsError` naming what
    does not fit. Shapes only: `model` may be built on the meta device. clearer: called first
    when it does not fit, to raise a more telling error of the caller's where it has one."""
    conv = convert_checkpoint(ckpt, model, name)
    sd, notes = adapt_state_dict(conv.state_dict, model)
    missing, unexpected, conflicts = check_fit(sd, model)
    if missing or unexpected or conflicts:
        if clearer is not None:
            clearer()
        raise WeightsError(_mismatch_message(ckpt, name, conv.layout, missing, unexpected,
                                             conflicts, _architecture_of(ckpt, name)))  # fmt: skip
    return conv, sd, notes


def _fit(
    model: nn.Module, ckpt: Checkpoint, entry: WeightsEntry | None, name: str | None
) -> tuple[dict[str, Tensor], WeightsInfo]:
    conv, sd, notes = _fitted(model, ckpt, name)
    if (bad := non_finite_note(sd)) is not None:
        notes.append(bad)
    head_loaded = getattr(model, "num_classes", None) != 0 and not any(
        "classifier re-initialised" in n for n in notes
    )
    pre, classes = _preprocessing_and_classes(model, entry, conv, ckpt, head_loaded)
    kept = _names_in(ckpt.metadata) if ckpt.format == "torch" and not ckpt.metadata.get(
        "format") else None  # fmt: skip
    if kept is not None and kept[0] is None:  # numbered from 1: used as such, or not at all
        if head_loaded and classes is None:
            from ..text import some

            named = kept[1:]
            notes.append(f"the file numbers its {len(named)} class names ({some(named)}) from "
                         f"1, and its head's {getattr(model, 'num_classes', '?')} outputs are "
                         "numbered from 0: left unused, as which output is which is not "
                         "recorded (predict --classes names its outputs in order, from 0)")
    elif kept is not None and head_loaded and classes != kept:
        from ..text import some

        notes.append(f"the file's {len(kept)} class names ({some(kept)}) do not match its "
                     f"{getattr(model, 'num_classes', '?')}-class head: left unused (predict "
                     "--classes names its classes)")
    info = WeightsInfo(
        source=ckpt.path, layout=conv.layout, preprocessing=pre, class_names=classes,
        head_loaded=head_loaded, entry=entry, notes=conv.notes + notes,
    )  # fmt: skip
    return sd, info


def load_weights(model: nn.Module, weights: Any, *, name: str | None = None) -> WeightsInfo:
    """Load `weights` (path, 'imagenet' or state_dict) into `model`; see the module docstring.

    Changes made to fit the model (head re-initialised, first conv adapted, Keras conversions)
    are logged as warnings on the 'cnnzoo.weights' logger and listed in `info.notes`.
    """
    sd, info = load_state_dict(model, weights, name=name)
    load_into(model, sd)
    _record(model, info)
    return info


def _record(model: nn.Module, info: WeightsInfo) -> None:
    for note in info.notes:
        log.warning("note: %s", note)  # as the data's and the engine's notes
    model.weights_info = info
    # timm's rule: the config travels with the weights (GoogLeNet's TensorFlow-trained ones
    # want (x - 0.5) / 0.5, not the ImageNet statistics its architecture's config names).
    cfg, pre = getattr(model, "default_cfg", None), info.preprocessing
    if cfg is not None and len(pre.mean) == cfg.input_size[0]:
        model.default_cfg = replace(cfg, mean=tuple(pre.mean), std=tuple(pre.std),
                                    input_size=(cfg.input_size[0], pre.crop_size, pre.crop_size))


def create_pretrained(name: str, weights: Any, **model_kwargs: Any) -> nn.Module:
    """Build `name` shaped like its checkpoint and load it (what `create_model(name,
    weights=...)` does): the checkpoint's own number of classes (0, no head, for a backbone-only
    checkpoint), input channels and, for GoogLeNet, auxiliary classifiers or none are kept
    unless `num_classes`/`in_chans`/`aux_logits` are given; a `cnnzoo train` checkpoint or
    `cnnzoo convert` output also brings its model options (those given win), class names and
    input (size, the training images' mean/std) as `weights_info.preprocessing`. A given
    `num_classes` that differs re-initialises the head (the transfer-learning case), a given
    `in_chans` adapts the first conv; predicting with, or converting, a fine-tuned 10-class or
    grey checkpoint needs neither.
    """
    import torch

    from ..models import create_model, get_config
    from ..models.registry import FUNCTION_OPTIONS, option_defaults

    get_config(name)  # an unknown name fails as such, before any weights are looked up
    ckpt, entry = open_weights(weights, name)
    stored = ckpt.metadata
    if stored.get("transfer_checkpoint"):  # as predict, evaluate and convert refuse it
        bundle = transfer_bundle(ckpt.path)
        raise WeightsError(f"{ckpt.path} is a checkpoint of transfer fine-tuning: its run's "
                           f"bundle holds the model ({bundle}: --bundle, cnnzoo.load_bundle), "
                           f"and {bundle / 'model.safetensors'} is its weights file")  # fmt: skip
    if stored.get("format") == "cnnzoo" and stored.get("model", name) != name:
        raise WeightsError(f"{ckpt.path} holds {stored['model']}, not {name}: build it as "
                           f"{stored['model']}")  # fmt: skip
    # A `cnnzoo train` checkpoint or `cnnzoo convert` output records the options it was built
    # with (stages, width_mult, ...): without them its tensors fit no default-built net.
    recorded = json.loads(stored.get("model_kwargs", "{}"))
    if "model_kwargs" in stored:
        # A `cnnzoo train` run records every option it was built with (one left out had its
        # default); a converted foreign file only those given to convert.
        trained = stored.get("source_layout") == "cnnzoo train"
        defaults = option_defaults(name) if trained else {}
        for k in FUNCTION_OPTIONS:
            was = recorded.get(k, defaults.get(k))
            if k in model_kwargs and was is not None and model_kwargs[k] != was:  # both fit
                raise ModelOptionError(f"{ckpt.path} was trained with {k}={was}: leave out "
                                       f"{k}={model_kwargs[k]!r}, with which its weights would "
                                       "compute another function")  # fmt: skip
    kwargs = {**recorded, **model_kwargs}
    # Shaped and checked against the file on the meta device (no memory) before it is built:
    # a file whose recorded options lie (hidden=10^9) asked the allocator for 25 TB.
    with torch.device("meta"):
        probe = create_model(name, **kwargs)
        shape = {k: v for k, v in checkpoint_shape(ckpt, probe, name).items() if k not in kwargs}
        cfg = probe.default_cfg
        built = {"in_chans": cfg.input_size[0], "num_classes": cfg.num_classes,
                 "aux_logits": bool(aux_classifiers(probe))}  # fmt: skip
        reshaped = any(built[k] != v for k, v in shape.items())
        # (the options' refusal only when it does not fit: trying them costs conversions)
        _fitted(create_model(name, **kwargs, **shape) if reshaped else probe, ckpt, name,
                clearer=lambda: _refuse_given_options(name, ckpt, recorded, model_kwargs))
    model = create_model(name, **kwargs, **shape) if reshaped else create_model(name, **kwargs)
    sd, info = _fit(model, ckpt, entry, name)
    options = {k: v for k, v in {**kwargs, **shape}.items() if k not in ("num_classes", "in_chans")}
    info = replace(info, model_kwargs=options)
    if (name == "googlenet" and entry is None and info.layout == "torchvision"
            and "transform_input" not in kwargs and _in_chans(model) == 3):  # fmt: skip
        info.notes.append(GOOGLENET_TRANSFORM_NOTE.format(path=ckpt.path))
    own = model.state_dict()
    if any(t.is_meta for t in own.values()):
        # Built on the meta device (`with torch.device("meta")`: shapes, counts): the values have
        # nowhere to go, and assigned they put CPU tensors among meta ones (a U-Net with
        # encoder_weights='imagenet' in `cnnzoo models` then failed in its forward).
        pass
    elif own.keys() <= sd.keys():
        # The checkpoint's tensors become the parameters instead of being copied into them.
        sd = {k: (v.to(own[k].dtype) if v.is_floating_point() else v).contiguous()
              for k, v in sd.items()}  # fmt: skip
        model.load_state_dict(sd, strict=True, assign=True)
    else:  # a head the checkpoint lacks keeps its fresh initialisation
        load_into(model, sd)
    _record(model, info)
    return model


# torchvision's googlenet(weights=...) turns transform_input on (its ImageNet weights expect
# (x - 0.5) / 0.5), so every GoogLeNet fine-tuned from them has it; a state_dict does not
# record it, and one trained from scratch has it off. Read as off, a fine-tuned file gets its
# input normalised another way than in training, without a word.
GOOGLENET_TRANSFORM_NOTE = (
    "googlenet: {path} does not record torchvision's transform_input, which "
    "googlenet(weights=...) turns on; it is read as False. A GoogLeNet fine-tuned from "
    "torchvision's ImageNet weights had it on: cnnzoo convert {path} OUT.safetensors --model "
    "googlenet --model-arg transform_input=true, then use OUT"
)


def _refuse_given_options(name: str, ckpt: Checkpoint, recorded: dict[str, Any],
                          given: dict[str, Any]) -> None:  # fmt: skip
    """For a file that does not fit `name` built with the options `given` (`_fitted`'s
    `clearer`): a one-line error when it fits `name` without options that change its layers
    (googlenet reductions=False, paper_5x5=True, a VGG's width_mult): the keys' error asked 'is
    it a checkpoint of another architecture or width?' of torchvision's own googlenet weights.
    Each option alone is tried, then all of them; nothing is said when none of those nets fits
    (the keys' error then)."""
    import torch

    from ..models import create_model
    from ..models.registry import option_words

    options = [k for k in given if k not in ("num_classes", "in_chans", "aux_logits")]

    def fits(net: nn.Module) -> bool:
        # (not _fitted: its error looks through every family for the file's, for seconds)
        sd, _ = adapt_state_dict(convert_checkpoint(ckpt, net, name).state_dict, net)
        return not any(check_fit(sd, net))

    def fits_without(left_out: list[str]) -> bool:
        kwargs = {**recorded, **{k: v for k, v in given.items() if k not in left_out}}
        try:
            with torch.device("meta"):
                probe = create_model(name, **kwargs)
                shape = {k: v for k, v in checkpoint_shape(ckpt, probe, name).items()
                         if k not in kwargs}  # fmt: skip
                return fits(create_model(name, **kwargs, **shape))
        except Exception:  # noqa: BLE001 - a hint for the error to come: never replace it
            return False

    if not options:
        return
    left = next(([k] for k in options if fits_without([k])), None)
    if left is None and len(options) > 1 and fits_without(options):
        left = options
    if left:
        words = " ".join(option_words(k, given[k]) for k in left)
        them = "it" if len(left) == 1 else "them"
        raise WeightsError(f"{ckpt.path} does not fit {name} built with {words}, which has other "
                           f"layers; it fits {name} without {them}: leave out {words} to load "
                           f"it (a net built with {them} starts from scratch)")


def checkpoint_shape(ckpt: Checkpoint, model: nn.Module, name: str | None) -> dict[str, int | bool]:
    """`num_classes` (0 when it has no head) and `in_chans` of a checkpoint for `model`'s
    architecture (those it shows), and `aux_logits=False` when the model has auxiliary
    classifiers and the checkpoint none."""
    sd = convert_checkpoint(ckpt, model, name).state_dict
    out: dict[str, int | bool] = {}
    aux = aux_classifiers(model)
    # GoogLeNet fine-tuned with aux_logits=False (torchvision's usual fine-tune) has no aux* keys.
    if aux and not any(k.split(".", 1)[0] in aux for k in sd):
        out["aux_logits"] = False
    first = first_conv_key(model)
    if first in sd and sd[first].dim() == 4:
        out["in_chans"] = int(sd[first].shape[1])
    head = head_keys(model)
    head_w = sorted(k for k in head if k.endswith("weight"))
    if head_w and head_w[0] in sd and sd[head_w[0]].dim() == 2:
        out["num_classes"] = int(sd[head_w[0]].shape[0])
    elif head and not head & sd.keys():
        # A backbone-only checkpoint shows a model without a head; building it so re-initialises
        # nothing (predict refuses it without first warning of a new random head).
        out["num_classes"] = 0
    return out


def _preprocessing_and_classes(
    model: nn.Module, entry: WeightsEntry | None, conv: Any, ckpt: Checkpoint, head_loaded: bool
) -> tuple[Preprocessing, list[str] | None]:
    in_chans = _in_chans(model)
    meta = ckpt.metadata
    if entry is not None:
        pre, classes = entry.preprocessing, entry.class_names()
    elif "preprocessing" in meta:  # written by `cnnzoo convert`
        pre = Preprocessing.from_dict(json.loads(meta["preprocessing"]))
        classes = json.loads(meta["class_names"]) if "class_names" in meta else None
    elif "checkpoint_input" in meta:  # a `cnnzoo train` checkpoint, or converted from one
        pre = Preprocessing.of_training_run(**json.loads(meta["checkpoint_input"]))
        classes = json.loads(meta.get("class_names", "null"))
    else:  # class names a training script kept beside the state_dict (`files.names_beside`)
        pre = Preprocessing.for_model(model, conv.mean, conv.std)
        classes = _names_in(meta) if ckpt.format == "torch" else None
    n_out = getattr(model, "num_classes", None)
    if classes and classes[0] is None:  # numbered from 1 (`files.names_beside`)
        # A head with an output more than the classes was trained on their numbers as they
        # are, output 0 never a target: named by its number, as predict names unnamed ones.
        # With one output per class, which is which is not recorded (`_fit` says so).
        classes = ["0", *classes[1:]] if len(classes) == n_out else None
    if not head_loaded or (classes is not None and n_out is not None and len(classes) != n_out):
        classes = None
    if classes is None and head_loaded and n_out == 1000:
        classes = imagenet_classes()
    return pre.with_channels(in_chans) if in_chans else pre, classes


def _names_in(meta: Mapping[str, str]) -> list[str] | None:
    names = json.loads(meta.get("class_names", "null"))  # (written by files._read_torch)
    return names if isinstance(names, list) else None


def _in_chans(model: nn.Module) -> int | None:
    cfg = getattr(model, "default_cfg", None)
    return cfg.input_size[0] if cfg is not None else None


def _architecture_of(ckpt: Checkpoint, name: str | None) -> str | None:
    """The zoo model (default options; any head and input channels) that a checkpoint which
    does not fit `name` fits, for the error: `name`'s family first, then every family whose
    first model shares a key with the file. The candidates are built on the meta device (no
    memory, no initialisation to speak of); only this error path pays for it. Keras files and
    `cnnzoo convert` outputs say what they are by other means."""
    import torch

    from ..models import create_model, get_config, list_models

    if ckpt.format == "keras" or ckpt.metadata.get("model"):
        return None
    families: dict[str, list[str]] = {}
    for n in list_models():
        families.setdefault(get_config(n).family, []).append(n)
    own = get_config(name).family if name in list_models() else None
    order = sorted(families, key=lambda f: f != own)

    def fits(candidate: str, first_only: bool = False) -> bool:
        with torch.device("meta"):
            model = create_model(candidate)
        sd = convert_checkpoint(ckpt, model, candidate).state_dict
        if first_only:  # the family's first model: does the file share any name with it?
            return bool(sd.keys() & model.state_dict().keys())
        sd, _ = adapt_state_dict(sd, model)
        return not any(check_fit(sd, model))

    try:
        for family in order:
            members = families[family]
            if family != own and not fits(members[0], first_only=True):
                continue
            for candidate in members:
                if candidate != name and fits(candidate):
                    return candidate
    except Exception:  # noqa: BLE001 -- a hint for the error being raised: never replace it
        return None
    return None


def _mismatch_message(ckpt, name, layout, missing, unexpected, conflicts, holds=None) -> str:
    def few(items: list[str]) -> str:
        more = f" (+{len(items) - 4} more)" if len(items) > 4 else ""
        return ", ".join(items[:4]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
    if conflicts:
        parts.append(f"{len(conflicts)} conflicts: {few(conflicts)}")
    stored = ckpt.metadata.get("model")  # `cnnzoo convert` records it
    if stored and stored != name:
        hint = f"the file holds {stored}; use that model name"
    elif holds:  # what the file is, before the keys that tell it
        return (f"{ckpt.path} does not fit {name or 'the model'}: the file looks like {holds}'s "
                f"weights, load it as {holds} ({layout} layout; " + "; ".join(parts) + ")")
    elif missing and not unexpected and not conflicts and all(k.startswith("aux") for k in missing):
        hint = "the checkpoint has no auxiliary classifiers: build the model with aux_logits=False"
    else:
        hint = "is it a checkpoint of another architecture or width?"
    return (
        f"{ckpt.path} does not fit {name or 'the model'} ({layout} layout): " + "; ".join(parts)
        + f" -- {hint}"
    )


def convert_file(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], model_name: str, *,
    class_names: Sequence[str] | None = None, **model_kwargs: Any,
) -> WeightsInfo:
    """Convert any supported checkpoint to `.safetensors` with cnnzoo's key names.

    The model keeps the checkpoint's head size and input channels. The output records the model
    name and options (`model_kwargs`: width_mult, fc_dim, ...), source layout, preprocessing and
    class names in the safetensors metadata, so loading it later needs no guessing.
    class_names: the names of the checkpoint's classes, in output order, for a file that does
    not record them (a fine-tuned torchvision net's).
    """
    model = create_pretrained(model_name, src, **model_kwargs)
    info: WeightsInfo = model.weights_info
    if class_names is not None:
        if not info.head_loaded:
            raise WeightsError(f"{src} has no trained classifier for {model_name}, so no classes "
                               "to name: leave out the class names")  # fmt: skip
        check_class_names(class_names, model.num_classes, src)
        info = replace(info, class_names=list(class_names))
    meta = {
        "format": "cnnzoo", "model": model_name, "model_kwargs": json.dumps(info.model_kwargs),
        "source_layout": info.layout, "source_file": Path(info.source).name,
        "preprocessing": json.dumps(info.preprocessing.to_dict()),
    }  # fmt: skip
    if info.class_names is not None:
        meta["class_names"] = json.dumps(info.class_names)
    sd = model.state_dict()
    if not info.head_loaded:
        # A backbone-only checkpoint: leave any freshly initialised head (num_classes given) out,
        # so that the file still reads as "no trained classifier" (predict refuses it, transfer
        # adds its own). The loader's "classifier re-initialised" note is then not true of it.
        sd = {k: v for k, v in sd.items() if k not in head_keys(model)}
        notes = [n for n in info.notes if "classifier re-initialised" not in n]
        info = replace(info, notes=[*notes, f"no trained classifier for {model_name}: the "
                                            "output holds the backbone only"])  # fmt: skip
    save_safetensors(sd, dst, meta)
    return info
