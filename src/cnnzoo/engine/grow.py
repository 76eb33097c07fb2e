"""Grow a deeper network from a trained shallower one of the same family (`--init-from`).

Simonyan & Zisserman (2015), Sec. 3.1: "we began with training the configuration A, shallow
enough to be trained with random initialisation. Then, when training deeper architectures, we
initialised the first four convolutional layers and the last three fully-connected layers with
the layers of net A (the intermediate layers were initialised randomly)." For VGG the place of a
conv is its (stage, index-in-stage) from `models.vgg.vgg_conv_layers`; the paper's rule copies
the first four convs of net A to the same places in the deeper net, plus the three dense layers.
`rule='all'` copies every conv whose (stage, index) exists in both.

Other families (ResNet-18 -> 34, DenseNet, ...) name their tensors by place already
('layer1.1.conv1.weight'), so every layer whose keys and shapes exist in both is copied.

A layer is copied whole (weight, bias, BatchNorm statistics) or not at all. A VGG layer at a
shared place, or any layer when the two nets were built with other options (width_mult,
fc_dim, ...), that does not fit means the nets differ in width: an error, not a net of which
nothing but a bias was copied. Only the head may differ (another number of classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import WeightsError
from ..models.registry import FUNCTION_OPTIONS, option_defaults, same_option
from ..text import plural
from .loop import differing_options


@dataclass
class GrowReport:
    """What `grow_from` did, tensor by tensor (keys of the target state_dict)."""

    copied: dict[str, str] = field(default_factory=dict)  # target key -> source key
    fresh: list[str] = field(default_factory=list)  # kept their fresh initialisation
    unused: list[str] = field(default_factory=list)  # source keys that went nowhere
    # Layers (prefixes) left fresh because their source layer has other shapes: the head when
    # the number of classes differs, or deeper DenseNet/ResNet parts whose widths follow depth.
    reshaped: list[str] = field(default_factory=list)
    # The head left fresh because the source was trained on other classes (as many, but other
    # names or order): its rows would score the wrong classes. (source classes, these classes)
    other_classes: tuple[list[str], list[str]] | None = None

    def lines(self) -> list[str]:
        """Human-readable summary, grouped by layer prefix."""
        def prefixes(keys: Any) -> list[str]:
            seen: dict[str, None] = {}
            for k in keys:
                seen.setdefault(k.rsplit(".", 1)[0], None)
            return list(seen)

        copied = prefixes(self.copied)
        renamed = {t.rsplit(".", 1)[0]: s.rsplit(".", 1)[0] for t, s in self.copied.items()}
        out = [f"copied {len(self.copied)} tensors ({plural(len(copied), 'layer')}):"]
        out += [f"  {p}" + (f" <- {renamed[p]}" if renamed[p] != p else "") for p in copied]
        fresh = prefixes(self.fresh)
        out.append(f"freshly initialised {len(self.fresh)} tensors "
                   f"({plural(len(fresh), 'layer')}): " + ", ".join(fresh))
        if self.other_classes is not None:
            was, now = (", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                        for names in self.other_classes)
            out.append(f"the head is not copied: the source was trained on other classes ({was}; "
                       f"here {now})")
        if self.unused:
            out.append(f"not used from the source: {', '.join(prefixes(self.unused))}")
        if self.reshaped:
            more = len(self.reshaped) - 6
            out.append("not copied, their shapes differ from the source's "
                       f"({plural(len(self.reshaped), 'layer')}): " + ", ".join(self.reshaped[:6])
                       + (f", ... and {more} more" if more > 0 else ""))
        return out


def _vgg_mapping(target: nn.Module, source_state: dict[str, Tensor], source_config: list[Any],
                 rule: str) -> dict[str, str]:
    """target prefix -> source prefix for VGG convs (paper's rule or every shared place) and
    the three dense layers."""
    from ..models.vgg import VGG, VGG_DENSE_LAYERS, vgg_conv_layers

    # A tiny net with net A's layer sequence: only the key names and places are needed.
    bn = any(k.endswith(".running_mean") for k in source_state)
    src_net = VGG(source_config, num_classes=1, batch_norm=bn, width_mult=1 / 64, fc_dim=1,
                  pool_size=1)
    src_layers = vgg_conv_layers(src_net)
    if rule == "paper":
        src_layers = src_layers[:4]
    tgt_by_place = {(c.stage, c.index): c for c in vgg_conv_layers(target)}
    mapping: dict[str, str] = {}
    for s in src_layers:
        t = tgt_by_place.get((s.stage, s.index))
        if t is None:
            continue
        mapping[t.conv] = s.conv
        if t.bn and s.bn:
            mapping[t.bn] = s.bn
    for p in VGG_DENSE_LAYERS:
        mapping[p] = p
    return mapping


def _family(model_name: Any) -> str | None:
    from ..models import get_config

    try:
        return get_config(str(model_name)).family
    except Exception:  # noqa: BLE001 - a name this version does not know: no family to compare
        return None


def _conv_count(state: dict[str, Tensor]) -> int:
    """The conv layers of a state_dict (its 4-d weights): how deep the net is."""
    return sum(1 for k, v in state.items() if k.endswith("weight") and v.dim() == 4)


def _shape(t: Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def check_source_family(family: str | None, source_name: Any) -> None:
    """Refuse growing a `family` net from a checkpoint of another family's `source_name` (the
    one check that needs neither net built: `train_classifier` asks before loading its data)."""
    source_family = _family(source_name) if source_name else None
    if family and source_family and source_family != family:
        if family == "vgg":
            raise WeightsError(f"the source checkpoint is {source_name}, not a VGG; growth goes "
                               "vgg11 → vgg13 → vgg16 → vgg19: pass a checkpoint of `cnnzoo "
                               "train vgg11 ...` (or of the VGG before this one)")
        raise WeightsError(f"the source checkpoint is {source_name}, not a {family} model: grow "
                           f"from a trained shallower {family} model")


def grow_from(
    model: nn.Module,
    source_state: dict[str, Tensor],
    *,
    source_meta: dict[str, Any] | None = None,
    rule: str = "paper",
    target_kwargs: dict[str, Any] | None = None,
    target_classes: list[str] | None = None,
) -> GrowReport:
    """Copy layers of a trained shallower net (`source_state`) into `model`, in place.

    rule: 'paper' (VGG: first four convs + dense layers, Sec. 3.1) or 'all' (every layer whose
    place exists in both). A layer is copied whole or left freshly initialised; a head of
    another size stays fresh and is reported. `source_meta` is the checkpoint's meta (its
    'model' and 'model_kwargs'; VGG needs 'vgg_config' or a VGG 'model': net A's Table-1
    channel list; its 'class_names': a head trained on other classes than `target_classes`
    stays fresh too); `target_kwargs` the options `model` was built with. Raises `WeightsError`
    when the source is another family, or when the nets differ in width or options.
    """
    if rule not in ("paper", "all"):
        raise ValueError(f"rule must be 'paper' or 'all', not {rule!r}")
    target_state = model.state_dict()
    family = getattr(getattr(model, "default_cfg", None), "family", None)
    meta = source_meta or {}
    source_name = meta.get("model")
    check_source_family(family, source_name)
    # A deeper source into a shallower net (vgg13 -> vgg11) copied a few layers (two convs
    # by the paper's rule) and left the rest unused: growth goes the other way (the docs'
    # "a deeper net from a trained shallower one"). The same net (a new run from a run's
    # weights) is not compared: its options decide its layers, checked below.
    target_name = getattr(getattr(model, "default_cfg", None), "name", None)
    # Before the depths: the paper's sparse C3 is no conv weight, and lenet5 -> lenet5_classic
    # read as a deeper net into a shallower one.
    _check_classic(model, source_name, meta.get("model_kwargs"), target_name)
    deep_src, deep_tgt = _conv_count(source_state), _conv_count(target_state)
    if source_name and target_name and source_name != target_name and deep_src > deep_tgt:
        # A full vgg11 (8 convs) into vgg16 stages=3 (7) is no shallower net: the stages
        # differ, and "vgg11 deeper than vgg16" sent the user after the wrong cause.
        staged = differing_options(
            {k: v for k, v in (meta.get("model_kwargs") or {}).items() if k == "stages"},
            {k: v for k, v in (target_kwargs or {}).items() if k == "stages"},
            {k: v for k, v in option_defaults(target_name).items() if k == "stages"})
        if staged:
            had = (meta.get("model_kwargs") or {}).get("stages")
            arg = "leave out --model-arg stages" if had is None else f"--model-arg stages={had}"
            raise WeightsError(f"the source checkpoint's {source_name} was built with "
                               f"{staged[0]} ({deep_src} conv layers), this {target_name} with "
                               f"{staged[1]} ({deep_tgt}): grow with the source's stages ({arg})")
        chain = " (vgg11 → vgg13 → vgg16 → vgg19)" if family == "vgg" else ""
        raise WeightsError(f"the source checkpoint is {source_name} ({deep_src} conv layers), "
                           f"deeper than {target_name} ({deep_tgt}): --init-from grows a deeper "
                           f"net from a shallower one{chain}; train {target_name} from scratch, "
                           "or grow a net at least as deep from this checkpoint")  # fmt: skip
    # Conv weights trained with BatchNorm after them are on another scale without it (and the
    # reverse): copied, they would start the net far off, with no warning.
    source_bn = any(k.endswith("running_mean") for k in source_state)
    target_bn = any(k.endswith("running_mean") for k in target_state)
    if source_bn != target_bn:
        target = target_name or "this model"
        source = source_name or "the source checkpoint"
        has, lacks = (source, target) if source_bn else (target, source)
        raise WeightsError(f"{has} has BatchNorm and {lacks} does not: grow between nets that "
                           "both have it (vgg11_bn -> vgg13_bn) or both lack it (vgg11 -> vgg13)")
    report = GrowReport()
    pairs: dict[str, str] = {}
    if family == "vgg":
        config = meta.get("vgg_config")
        if config is None and source_name:
            from ..models.vgg import VGG_CONFIGS, VGG_DEPTHS

            letter = VGG_DEPTHS.get(str(source_name).removesuffix("_bn"))
            config = VGG_CONFIGS.get(letter) if letter else None
        if config is None:
            raise WeightsError("the source checkpoint does not say which VGG it is: grow from a "
                               "checkpoint written by `cnnzoo train vgg11 ...`")
        for t_prefix, s_prefix in _vgg_mapping(model, source_state, config, rule).items():
            for k in target_state:
                if k.startswith(t_prefix + "."):
                    pairs[k] = s_prefix + k[len(t_prefix):]
    else:
        pairs = {k: k for k in target_state if k in source_state}

    # Whole layers: a layer fits when each of its tensors has a source of the same shape.
    layers: dict[str, list[str]] = {}
    for k in target_state:
        layers.setdefault(k.rsplit(".", 1)[0], []).append(k)
    head = getattr(model, "head_name", None)
    source_classes = meta.get("class_names")
    relabelled = (source_classes is not None and target_classes is not None
                  and list(source_classes) != list(target_classes))  # fmt: skip
    misfit: list[tuple[str, str, str]] = []  # (layer, source shape, target shape), body only
    for prefix, keys in layers.items():
        needed = [k for k in keys if not k.endswith("num_batches_tracked")]
        sources = [pairs.get(k) for k in needed]
        if not needed or any(s is None or s not in source_state for s in sources):
            report.fresh.extend(needed)
            continue
        if prefix == head and relabelled:
            report.fresh.extend(needed)
            if all(source_state[s].shape == target_state[k].shape
                   for k, s in zip(needed, sources, strict=True)):  # fmt: skip
                report.other_classes = (list(source_classes), list(target_classes))
            else:
                report.reshaped.append(prefix)
            continue
        wrong = [(k, s) for k, s in zip(needed, sources, strict=True)
                 if source_state[s].shape != target_state[k].shape]
        if wrong:
            report.fresh.extend(needed)
            report.reshaped.append(prefix)
            if prefix != head:
                k, s = wrong[0]
                misfit.append((prefix, _shape(source_state[s]), _shape(target_state[k])))
            continue
        for k in keys:  # BatchNorm's num_batches_tracked too, where the source has it
            s = pairs.get(k)
            if s is not None and s in source_state and \
                    source_state[s].shape == target_state[k].shape:
                report.copied[k] = s
    first_conv = next((k.rsplit(".", 1)[0] for k, v in target_state.items() if v.dim() == 4), None)
    _check_fit(misfit, family, meta, target_kwargs, first_conv, target_name)  # before any copy
    _check_function(meta.get("model_kwargs"), target_kwargs, target_name)
    _check_shortcuts(model, source_name, meta.get("model_kwargs"), target_name)
    with torch.no_grad():
        for k, s in report.copied.items():
            target_state[k].copy_(source_state[s])
    used = set(report.copied.values())
    report.unused = [k for k in source_state if k not in used
                     and not k.endswith("num_batches_tracked")]
    if not report.copied:
        source = f" ({source_name})" if source_name else ""
        raise WeightsError(f"no layer of the source checkpoint{source} fits this model: growth "
                           "copies layers of equal shape between nets of one design (vgg11 -> "
                           "vgg13, resnet20 -> resnet32; not the CIFAR resnet20 -> the ImageNet "
                           "resnet18)")  # fmt: skip
    return report


def _check_function(src: dict[str, Any] | None, tgt: dict[str, Any] | None,
                    name: str | None) -> None:  # fmt: skip
    """A one-line error when the nets differ in an option of `FUNCTION_OPTIONS` (an option
    left out is its default: act='relu' given and left out agree)."""
    if src is None or tgt is None:
        return
    defaults = option_defaults(name) if name is not None else {}
    full_src = {k: src.get(k, defaults.get(k)) for k in FUNCTION_OPTIONS if k in src or k in defaults}
    full_tgt = {k: tgt.get(k, defaults.get(k)) for k in FUNCTION_OPTIONS if k in tgt or k in defaults}
    keys = [k for k in FUNCTION_OPTIONS if full_src.get(k, ...) != full_tgt.get(k, ...)]
    diff = differing_options({k: full_src[k] for k in keys if k in full_src},
                             {k: full_tgt[k] for k in keys if k in full_tgt})  # fmt: skip
    if diff:  # (an option left out is shown at its default: act=relu, not 'act unset')
        raise WeightsError(f"the source was built with {diff[0]}, this model with {diff[1]}: its "
                           "layers would compute other functions here; grow with the source's "
                           f"options ({_source_args(src, keys)})")


def _source_args(src: dict[str, Any], keys: list[str]) -> str:
    """What to pass to build the source's net where it differs in `keys`: the source's value of
    each option it was built with, and leaving out those it was not ('(--model-arg)' alone left
    the student to work out which)."""
    given = [f"--model-arg {k}={src[k]}" for k in keys if k in src]
    left = [k for k in keys if k not in src]
    return "; ".join([*given, *(["leave out --model-arg " + " ".join(left)] if left else [])])


def _built_attribute(name: Any, kwargs: dict[str, Any] | None, attribute: str) -> Any:
    """`attribute` of the net `name` built with `kwargs` on the meta device (None for a family
    without it or a net this version cannot build): what its name says and its options do not
    (plain18's shortcut_type 'none', lenet5_classic's `classic`)."""
    from ..models import create_model

    try:
        with torch.device("meta"):
            return getattr(create_model(str(name), **(kwargs or {})), attribute, None)
    except Exception:  # noqa: BLE001 - nothing to compare; the copy decides as before
        return None


def _check_classic(model: nn.Module, source_name: Any, source_kwargs: dict[str, Any] | None,
                   target_name: str | None) -> None:  # fmt: skip
    """A one-line error between the paper's LeNet-5 and the modern one: lenet5_classic ->
    lenet5 fits c1, c5, f6 and the head, and copied its scaled-tanh weights into a ReLU net
    without a word, where lenet5 act=tanh -> lenet5 is refused (`_check_function`)."""
    here = getattr(model, "classic", None)
    if here is None or not source_name:
        return
    there = _built_attribute(source_name, source_kwargs, "classic")
    if there is None or there == here:
        return
    words = {True: "the paper's net (scaled tanh, trainable subsampling, sparse C3)",
             False: "the modern form (max-pooling, full C3, ReLU or its act)"}
    raise WeightsError(f"the source checkpoint is {source_name}, {words[there]}, and "
                       f"{target_name or 'this model'} is {words[here]}: its layers would "
                       "compute other functions here; grow lenet5 from lenet5 (with the "
                       "source's act) and lenet5_classic from lenet5_classic")


def _check_shortcuts(model: nn.Module, source_name: Any, source_kwargs: dict[str, Any] | None,
                     target_name: str | None) -> None:  # fmt: skip
    """A one-line error when one net has shortcuts and the other none: plain18 -> resnet34
    fits every shape, and was copied without a word, while resnet20 shortcut=none -> resnet32
    was refused (`_check_function`); the plain nets carry 'none' in their name."""
    here = getattr(model, "shortcut_type", None)
    if here is None or not source_name:  # a net without shortcuts to compare (VGG, DenseNet)
        return
    there = _built_attribute(source_name, source_kwargs, "shortcut_type")
    if there is None or (there == "none") == (here == "none"):
        return
    words = {"none": "no shortcuts"}
    raise WeightsError(f"the source checkpoint is {source_name}, with "
                       f"{words.get(there, 'shortcuts')}, and {target_name or 'this model'} has "
                       f"{words.get(here, 'shortcuts')}: its layers would compute other "
                       "functions here; grow a plain net into a plain one (plain18 -> plain34) "
                       "and a residual one into a residual one (resnet18 -> resnet34)")


def _check_fit(misfit: list[tuple[str, str, str]], family: str | None, meta: dict[str, Any],
               target_kwargs: dict[str, Any] | None, first_conv: str | None,
               name: str | None = None) -> None:  # fmt: skip
    """A one-line error when layers other than the head do not fit because the two nets were
    built with other options or for other input channels (or, for VGG, whose places always
    match, for any reason). name: the target model's, whose option defaults an option left out
    is shown at (one family: the source's are the same)."""
    if not misfit:
        return
    src, tgt = meta.get("model_kwargs"), target_kwargs
    defaults = option_defaults(name) if name is not None else None
    diff = differing_options(src, tgt, defaults) if src is not None and tgt is not None else None
    layer, there, here = misfit[0]
    shapes = f"{layer}: {there} in the source, {here} here"
    a, b = there.split("x"), here.split("x")
    if not diff and layer == first_conv and a[1:2] != b[1:2] and a[0] == b[0] and a[2:] == b[2:]:
        # The first conv differs in its input channels only: a grey source and colour data (or
        # the other way round), which the options cannot name.
        raise WeightsError(f"the source checkpoint's layers do not fit this model ({shapes}): "
                           "it was trained on images with other channels (grey vs colour); "
                           f"grow on data of the same kind, or pass --channels {a[1]}")  # fmt: skip
    if family != "vgg" and not diff:
        return  # e.g. DenseNet-121 -> 169: widths after the deeper block follow depth (reported)
    if diff:
        keys = [k for k in sorted({*src, *tgt}) if not same_option(
            k, src.get(k, (defaults or {}).get(k)), tgt.get(k, (defaults or {}).get(k)))]
        raise WeightsError(
            f"the source checkpoint's layers do not fit this model: the source was built with "
            f"{diff[0]}, this model with {diff[1]} ({shapes}); grow with the source's options "
            f"({_source_args(src, keys)})")
    raise WeightsError(f"the source checkpoint's layers do not fit this model ({shapes}): grow "
                       "with the source's model options (--model-arg) and input channels")
