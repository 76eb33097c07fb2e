"""Counting a model's operations by running it, not by formula.

The count follows the papers' and torchvision's tables: one multiply-add is one operation
(VGG-16: 15.5 G; ResNet-50: 4.1 G). torch's FlopCounterMode counts a multiply-add as two, so the
result is halved. Models are built and run on the 'meta' device: shapes only, no memory, no time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .base import count_parameters
from .registry import create_model, fixed_input_size, get_config


def count_macs(name: str, input_size: tuple[int, int, int] | None = None, **kwargs: Any) -> int:
    """Multiply-adds of one forward pass of `name` at `input_size` (default: the model's own),
    built with `kwargs` (num_classes, model options such as shortcut='none'; a net built for
    one size, residual_net, is built for `input_size` unless `img_size` is given)."""
    cfg = get_config(name)
    c, h, w = input_size or cfg.input_size
    if fixed_input_size(name) and h == w:
        kwargs = {"img_size": h, **kwargs}
    with torch.device("meta"):
        model = create_model(name, in_chans=c, **kwargs)
    return _forward_macs(model, (c, h, w))


def _forward_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-adds of one forward pass of a net built on the 'meta' device."""
    model.eval()
    with torch.device("meta"):
        x = torch.empty(1, *input_size)
    # A sparse layer run as a dense one (LeNet-5's C3 table) counts only its connections.
    unused: list[int] = []
    hooks = [m.register_forward_hook(lambda mod, _, out: unused.append(mod.unused_macs(out)))
             for m in model.modules() if hasattr(m, "unused_macs")]  # fmt: skip
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return counter.get_total_flops() // 2 - sum(unused)


def count_params(name: str) -> int:
    """Parameters at the model's default number of classes, without allocating them."""
    with torch.device("meta"):
        model = create_model(name)
    return count_parameters(model)


def counts_at(name: str, channels: int, size: int, **kwargs: Any) -> tuple[int, int | None]:
    """(parameters, multiply-adds) of `name` built with `kwargs` (num_classes, options; default:
    its default head) for `channels` x `size` x `size` inputs, and for that size where it is
    built for one (residual_net); multiply-adds None for a size the net does not take (below
    its least, or not one of a valid-padding U-Net's sizes). Built on the 'meta' device."""
    from ..errors import InputSizeError
    from .registry import min_input_size

    if fixed_input_size(name):
        kwargs = {"img_size": size, **kwargs}
    # Built once for both counts: a U-Net on an ImageNet encoder printed its weights' notes
    # ('convs reading the image ...') once per build.
    with torch.device("meta"):
        model = create_model(name, in_chans=channels, **kwargs)
    params = count_parameters(model)
    if size < min_input_size(name, **kwargs):
        return params, None
    try:
        return params, _forward_macs(model, (channels, size, size))
    except InputSizeError:
        return params, None


def table_counts(names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """{name: (parameters, multiply-adds)} at each model's defaults, for `cnnzoo models`.

    Counting all 34 models takes 5-10 s on this CPU, so the counts are kept in cnnzoo's cache
    (models.json), keyed by torch's version and the zoo's source files: a changed model, or
    counting code, is counted again. A cache that cannot be written is only slower."""
    from ..errors import UsageError
    from ..paths import cache_root, write_text_atomic

    here = Path(__file__).parent
    digest = hashlib.sha256(torch.__version__.encode())
    for source in sorted(here.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    key = digest.hexdigest()[:16]
    counts: dict[str, Any] = {}
    try:
        path: Path | None = cache_root() / "models.json"
    except UsageError:  # no home folder to find the cache in: counted every time
        path = None
    if path is not None:
        try:
            stored = json.loads(path.read_text())
            counts = stored["counts"] if stored.get("key") == key else {}
            # Only well-formed entries, [parameters, multiply-adds]: others are counted again.
            counts = {n: c for n, c in counts.items()
                      if isinstance(c, list) and len(c) == 2 and all(type(v) is int for v in c)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            counts = {}
    missing = [n for n in names if n not in counts]
    for name in missing:
        counts[name] = [count_params(name), count_macs(name)]
    if missing and path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps({"key": key, "counts": counts}))
        except OSError:
            pass
    return {n: (int(counts[n][0]), int(counts[n][1])) for n in names}
