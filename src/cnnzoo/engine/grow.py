"""Grow a deeper network from a trained shallower one of the same family (`--init-from`).

Simonyan & Zisserman (2015), Sec. 3.1: "we began with training the configuration A, shallow
enough to be trained with random initialisation. Then, when training deeper architectures, we
initialised the first four convolutional layers and the last three fully-connected layers with
the layers of net A (the intermediate layers were initialised randomly)." For VGG the place of a
conv is its (stage, index-in-stage) from `models.vgg.vgg_conv_layers`; the paper's rule copies
the first four convs of net A to the same places in the deeper net, plus the three dense layers.
`rule='all'` copies every conv whose (stage, index) exists in both.

Other families (ResNet-18 -> 34, DenseNet, ...) name their tensors by place already
('layer1.1.conv1.weight'), so every tensor whose key and shape exist in both is copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import WeightsError


@dataclass
class GrowReport:
    """What `grow_from` did, tensor by tensor (keys of the target state_dict)."""

    copied: dict[str, str] = field(default_factory=dict)  # target key -> source key
    fresh: list[str] = field(default_factory=list)  # kept their fresh initialisation
    unused: list[str] = field(default_factory=list)  # source keys that went nowhere

    def lines(self) -> list[str]:
        """Human-readable summary, grouped by layer prefix."""
        def prefixes(keys: Any) -> list[str]:
            seen: dict[str, None] = {}
            for k in keys:
                seen.setdefault(k.rsplit(".", 1)[0], None)
            return list(seen)

        copied = prefixes(self.copied)
        renamed = {t.rsplit(".", 1)[0]: s.rsplit(".", 1)[0] for t, s in self.copied.items()}
        out = [f"copied {len(self.copied)} tensors ({len(copied)} layers):"]
        out += [f"  {p}" + (f" <- {renamed[p]}" if renamed[p] != p else "") for p in copied]
        fresh = prefixes(self.fresh)
        out.append(f"freshly initialised {len(self.fresh)} tensors ({len(fresh)} layers): "
                   + ", ".join(fresh))
        if self.unused:
            out.append(f"not used from the source: {', '.join(prefixes(self.unused))}")
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


def grow_from(
    model: nn.Module,
    source_state: dict[str, Tensor],
    *,
    source_meta: dict[str, Any] | None = None,
    rule: str = "paper",
) -> GrowReport:
    """Copy tensors of a trained shallower net (`source_state`) into `model`, in place.

    rule: 'paper' (VGG: first four convs + dense layers, Sec. 3.1) or 'all' (every tensor whose
    place exists in both). Tensors whose shapes differ (another width, another head) are left
    freshly initialised and reported. `source_meta` is the checkpoint's meta (needs 'vgg_config'
    for VGG sources: the Table-1 channel list of net A).
    """
    if rule not in ("paper", "all"):
        raise ValueError(f"rule must be 'paper' or 'all', not {rule!r}")
    target_state = model.state_dict()
    family = getattr(getattr(model, "default_cfg", None), "family", None)
    report = GrowReport()
    pairs: dict[str, str] = {}
    if family == "vgg":
        meta = source_meta or {}
        config = meta.get("vgg_config")
        if config is None and meta.get("model"):
            from ..models.vgg import VGG_CONFIGS, VGG_DEPTHS

            letter = VGG_DEPTHS.get(str(meta["model"]).removesuffix("_bn"))
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
    with torch.no_grad():
        for k, v in target_state.items():
            s = pairs.get(k)
            if s is not None and s in source_state and source_state[s].shape == v.shape:
                v.copy_(source_state[s])
                report.copied[k] = s
            elif not k.endswith("num_batches_tracked"):
                report.fresh.append(k)
    used = set(report.copied.values())
    report.unused = [k for k in source_state if k not in used
                     and not k.endswith("num_batches_tracked")]
    if not report.copied:
        raise WeightsError("no tensor of the source checkpoint fits this model: grow within one "
                           "family (e.g. vgg11 -> vgg13) with the same number of classes")
    return report
