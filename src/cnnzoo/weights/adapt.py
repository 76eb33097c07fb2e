"""Fitting a converted checkpoint to a model built with other `num_classes` or `in_chans`.

- A head whose shape differs from the checkpoint's (or that the checkpoint lacks) keeps the
  model's fresh initialisation; everything else loads. This is the transfer-learning case
  (timm's `num_classes=...` with `pretrained=True`), and it is logged, never silent.
- Every convolution that reads the image (the first one; residual_net's projection shortcut
  too), built for other input channels, gets the checkpoint's kernel adapted by timm's
  rule (`timm.models._manipulate.adapt_input_conv`): for one channel the kernel is summed over
  the RGB channels -- a grey image g seen as RGB (g, g, g) gives exactly the same response --
  and for C > 3 channels the RGB kernel is repeated and scaled by 3 / C. A grey (1-channel)
  kernel becomes a C-channel one by repeating it scaled by 1 / C, so that (g, g, g) again gives
  exactly the grey net's response.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import WeightsError
from ..text import plural

log = logging.getLogger("cnnzoo.weights")


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """A conv kernel (O, I, kH, kW) for `in_chans` input channels from one trained for I."""
    o, i, kh, kw = weight.shape
    if in_chans == i:
        return weight
    dtype = weight.dtype
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    elif i == 3:
        # Repeat R, G, B cyclically over the new channels; the 3/C scale keeps the activation's
        # magnitude when the extra channels carry similar signal.
        w = w.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3 / in_chans)
    elif i == 1:
        w = w.repeat(1, in_chans, 1, 1) / in_chans
    else:
        raise WeightsError(
            f"cannot adapt an input conv trained on {i} input channels to in_chans={in_chans} "
            f"(only 1 or 3 channels adapt); build the model with in_chans={i}"
        )
    return w.to(dtype)


def head_name(model: nn.Module) -> str | None:
    """The module name of the model's classifier (an Identity when built with num_classes=0);
    None if it is not a Classifier."""
    get = getattr(model, "get_classifier", None)
    if get is None:
        return None
    try:
        head = get()
    except NotImplementedError:
        return None
    return next((prefix for prefix, m in model.named_modules() if m is head and prefix), None)


def head_keys(model: nn.Module) -> set[str]:
    """state_dict keys of the model's classifier (empty if it has none or is not a Classifier)."""
    name = head_name(model)
    if name is None:
        return set()
    return {f"{name}.{k}" for k in model.get_submodule(name).state_dict()}


def aux_classifiers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's auxiliary classifiers by name (GoogLeNet's aux1, aux2; none when built with
    aux_logits=False): the child modules named aux*, as cnnzoo and torchvision name them."""
    return {n: m for n, m in model.named_children() if n.startswith("aux")}


def output_keys(model: nn.Module) -> set[str]:
    """state_dict keys of every layer that outputs the classes: the head, plus the last linear
    layer of each auxiliary classifier (GoogLeNet's aux1.fc2 / aux2.fc2), the layers
    `reset_classifier` replaces. All of them must be re-initialised together for a new task.
    Found by place, not by width: a hidden layer as wide as the class count is not a head."""
    keys = head_keys(model)
    for name, aux in aux_classifiers(model).items():
        linears = [p for p, m in aux.named_modules() if isinstance(m, nn.Linear)]
        if linears:
            last = aux.get_submodule(linears[-1])
            keys |= {f"{name}.{linears[-1]}.{k}" for k in last.state_dict()}
    return keys


def _switched_off(model: nn.Module, key: str) -> bool:
    """Whether `key` belongs to a classifier this model was built without: the head with
    num_classes=0 (an Identity in its place) or an auxiliary classifier set to None (GoogLeNet's
    aux_logits=False). Nothing else: layers of the checkpoint that the model lacks (a ResNet's
    projection shortcuts, for a plain net) are unexpected keys."""
    first = key.split(".", 1)[0]
    if first.startswith("aux") and getattr(model, first, "absent") is None:
        return True
    head = head_name(model)
    return (head is not None and isinstance(model.get_submodule(head), nn.Identity)
            and key.startswith(f"{head}."))  # fmt: skip


def first_conv_key(model: nn.Module) -> str | None:
    """The weight key of the first Conv2d in module order (the one that sees the image)."""
    for prefix, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return f"{prefix}.weight"
    return None


def input_conv_keys(model: nn.Module) -> list[str]:
    """Weight keys of the convolutions that may read the image: the first Conv2d, and every
    other ungrouped one with as many input channels (residual_net's 1x1 projection shortcut
    also sees the image). A deeper conv that merely has that many channels is not adapted:
    its checkpoint kernel has the same channels as the model's, whatever the image's."""
    first = first_conv_key(model)
    if first is None:
        return []
    in_chans = model.get_submodule(first.rsplit(".", 1)[0]).in_channels
    return [f"{p}.weight" for p, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels == in_chans]  # fmt: skip


def adapt_state_dict(
    sd: dict[str, Tensor], model: nn.Module
) -> tuple[dict[str, Tensor], list[str]]:
    """Adapt `sd` (already in the model's names) to the model's head size and input channels.

    Returns the adapted state_dict (head entries that do not fit removed) and human-readable
    notes of what was changed.
    """
    own = model.state_dict()
    sd = dict(sd)
    notes: list[str] = []
    keys = [k for k in input_conv_keys(model) if k in sd and sd[k].dim() == 4]
    if keys and sd[keys[0]].shape[1] != own[keys[0]].shape[1]:
        # The image's channels in the checkpoint and in the model, as the first conv shows them.
        old_in, new_in = sd[keys[0]].shape[1], own[keys[0]].shape[1]
        adapted = []
        for key in keys:
            w, target = sd[key], own[key]
            # Only the image's channels may differ: anything else is another architecture,
            # which check_fit reports as a shape conflict.
            if (w.shape[1], target.shape[1]) == (old_in, new_in) and w.shape[0] == target.shape[0]:
                sd[key] = adapt_input_conv(w, new_in)
                adapted.append(key)
        if adapted:
            rule = "summed over" if new_in == 1 else "repeated across"
            notes.append(f"convs reading the image ({', '.join(adapted)}): {old_in}-channel "
                         f"kernels {rule} their input channels for in_chans={new_in}")  # fmt: skip
    # Checkpoints older than PyTorch 0.4.1 have no BatchNorm counters; the counter only matters
    # for momentum=None, so the model's own (zero) value stands in.
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v
    # Classifiers this model was built without (num_classes=0: pooled features, Keras's
    # include_top=False; aux_logits=False) simply leave the checkpoint's ones out.
    off = [k for k in sd if k not in own and _switched_off(model, k)]
    if off:
        for k in off:
            del sd[k]
        layers = sorted({k.rsplit(".", 1)[0] for k in off})
        more = f" and {len(layers) - 3} more" if len(layers) > 3 else ""
        notes.append(f"checkpoint layers {', '.join(layers[:3])}{more} not loaded: the model "
                     "was built without them (num_classes=0 or no auxiliary heads)")  # fmt: skip
    heads = head_keys(model)
    outputs = output_keys(model)
    mismatched = [k for k in sorted(outputs) if k in sd and sd[k].shape != own[k].shape]
    missing = [k for k in heads if k not in sd]
    if mismatched or (missing and heads):
        if mismatched:
            old = next(sd[k].shape[0] for k in mismatched)
            why = f"the checkpoint's head has {old} classes, the model {own[mismatched[0]].shape[0]}"
        else:
            why = "the checkpoint has no head"
        for k in outputs:
            sd.pop(k, None)
        notes.append(f"classifier re-initialised ({why}); all other layers loaded")
    return sd, notes


def check_fit(sd: dict[str, Tensor], model: nn.Module) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, conflicts) of `sd` against the model, heads allowed missing: a
    conflict is another shape, or integer/complex values where the model has real floats
    (fp16, bf16, fp64 are cast when loaded)."""
    own = model.state_dict()
    heads = output_keys(model)
    missing = [k for k in own if k not in sd and k not in heads]
    unexpected = [k for k in sd if k not in own]
    conflicts = []
    for k in (k for k in sd if k in own):
        if sd[k].shape != own[k].shape:
            conflicts.append(f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}")
        elif own[k].is_floating_point() and not sd[k].is_floating_point():
            conflicts.append(f"{k} {str(sd[k].dtype).removeprefix('torch.')} vs "
                             f"{str(own[k].dtype).removeprefix('torch.')}")  # fmt: skip
    return missing, unexpected, conflicts


def state_mismatch(model: nn.Module, state: dict[str, Tensor]) -> str | None:
    """How a state_dict read from a file does not fit `model` exactly ('2 missing, 1
    unexpected, 1 mis-shaped tensors, e.g. ...'), or None. Meant for a `model` built on the
    meta device (`with torch.device("meta")`): the file's description (a bundle.json, a
    checkpoint's meta) is checked against its weights before the net takes any memory, so a
    description edited to a 10^9-wide layer is this line, not terabytes asked of the
    allocator."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]  # fmt: skip
    if not (missing or unexpected or shapes):
        return None
    what = shapes[:2] or [f"missing {k}" for k in missing[:2]] or [
        f"unexpected {k}" for k in unexpected[:2]]  # fmt: skip
    return (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} mis-shaped "
            f"tensors, e.g. {'; '.join(what)}")


def fitted_model(build: Callable[[], nn.Module], state: dict[str, Tensor],
                 path: str | os.PathLike[str], says: str | None = None) -> nn.Module:
    """`build()` with `state` (read from the file `path`) loaded, after checking on the meta
    device that it fits (`state_mismatch`): a description edited to 10^6 input channels or a
    1000-times wider net asked the allocator for terabytes, and one that merely did not fit
    its weights ended in load_state_dict's traceback. says: the error's words before the
    mismatch (default: a checkpoint's, '{path} does not fit the model its meta describes')."""
    with torch.device("meta"):
        skeleton = build()
    if (mismatch := state_mismatch(skeleton, state)) is not None:
        raise WeightsError(f"{says or f'{path} does not fit the model its meta describes'}: "
                           f"{mismatch}")
    model = build()
    model.load_state_dict(state)
    return model


def non_finite_note(sd: dict[str, Tensor]) -> str | None:
    """A note naming the tensors that hold NaN or infinity, or None: such a file (a diverged
    run's, or damaged) loads without complaint but makes every prediction NaN (NaN weights) or
    quietly wrong (an infinite BatchNorm running_var zeroes its channel)."""
    bad = [k for k, t in sd.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if not bad:
        return None
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return (f"{plural(len(bad), 'tensor')} hold{'s' if len(bad) == 1 else ''} NaN or infinite "
            f"values ({shown}): predictions will be NaN or wrong; the file is from a diverged run "
            "or damaged")


def warn_non_finite(sd: dict[str, Tensor], source: str | os.PathLike[str]) -> None:
    """Log `non_finite_note` for weights read other than by `load_weights` (which lists it
    in its notes): a `cnnzoo train` checkpoint (training never saves NaN weights, but a file
    can be damaged, or written by other code in cnnzoo's format), a segmentation checkpoint, a
    transfer bundle."""
    if (note := non_finite_note(sd)) is not None:
        log.warning("note: %s: %s", os.fspath(source), note)  # as load_weights says it


@torch.no_grad()
def load_into(model: nn.Module, sd: dict[str, Tensor]) -> None:
    """Copy `sd` into the model; keys absent from `sd` (only a re-initialised head) are kept."""
    own = model.state_dict()
    full = {k: sd.get(k, v) for k, v in own.items()}
    model.load_state_dict(full, strict=True)
