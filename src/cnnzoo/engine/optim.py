"""Optimisers and learning-rate schedules.

- Weight decay is applied to conv and linear weights only, not to norm scales/shifts or biases
  (they have no scale to regularise; Goyal et al. 2017, "Accurate, Large Minibatch SGD", Sec. 5.1
  and the "bag of tricks" of He et al. 2019, Sec. 3.1 "no bias decay").
- Parameter groups carry their own learning rate (discriminative fine-tuning: Howard & Ruder
  2018, ULMFiT, Sec. 3.2); parameters with `requires_grad=False` are frozen and left out.
- Schedules are per step: one-cycle (Smith & Topin 2019, "Super-Convergence") or linear warm-up
  then cosine (Loshchilov & Hutter 2017, SGDR, without restarts). They scale every group's own
  learning rate by the same factor, so discriminative ratios hold throughout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import UsageError

# A group the caller passes: {"params": [...], "lr": float (optional), "name": str (optional)}.
ParamGroup = dict[str, Any]


def no_decay(name: str, param: nn.Parameter) -> bool:
    """1-d parameters are biases and norm scales/shifts: they get no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias")


def split_decay(
    named: Iterable[tuple[str, nn.Parameter]], weight_decay: float
) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a not-decayed group."""
    decay, plain = [], []
    for name, p in named:
        if p.requires_grad:
            (plain if no_decay(name, p) else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return groups


def build_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    groups: list[ParamGroup] | None = None,
    exclude: Iterable[nn.Parameter] = (),
) -> list[dict[str, Any]]:
    """Optimizer groups: caller's groups (each with its own lr) or the whole model, each split
    into decay / no-decay. Parameters in no caller group train at `lr`; frozen ones are skipped,
    and so are those in `exclude` unless a caller group lists them explicitly."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for i, g in enumerate(groups or []):
        params = [p for p in g["params"] if id(p) not in seen]
        seen.update(id(p) for p in params)
        named = [(names.get(id(p), f"group{i}.{j}"), p) for j, p in enumerate(params)]
        for sub in split_decay(named, g.get("weight_decay", weight_decay)):
            sub["lr"] = g.get("lr", lr)
            sub["name"] = g.get("name", f"group{i}")
            out.append(sub)
    seen.update(id(p) for p in exclude)
    rest = [(n, p) for n, p in model.named_parameters() if id(p) not in seen]
    for sub in split_decay(rest, weight_decay):
        sub["lr"] = lr
        sub["name"] = "model" if not groups else "rest"
        out.append(sub)
    if not out:
        # Keras's habit (backbone.trainable = False, then the new head forgotten) ends here.
        raise UsageError("no trainable parameters: every parameter is frozen (requires_grad="
                         "False): unfreeze the head at least, e.g. model.reset_classifier(k)")
    return out


def build_optimizer(
    model: nn.Module,
    *,
    name: str = "sgd",
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    nesterov: bool = True,
    betas: tuple[float, float] = (0.9, 0.999),
    groups: list[ParamGroup] | None = None,
    exclude: Iterable[nn.Parameter] = (),
) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum or AdamW (decoupled weight decay, Loshchilov & Hutter 2019)."""
    param_groups = build_param_groups(model, lr, weight_decay, groups, exclude)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum,
                               nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {name!r}")


def lr_factor(
    step: int,
    total: int,
    *,
    schedule: str = "onecycle",
    warmup: int = 0,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` of `total`.

    onecycle: cosine from peak/div_factor up to the peak over `pct_start` of the steps, then
    cosine down to peak/(div_factor*final_div_factor) (torch's OneCycleLR defaults, without the
    momentum cycle). cosine: linear warm-up over `warmup` steps, then half a cosine to 0.
    constant: 1 after the warm-up.
    """
    total = max(total, 1)
    step = min(step, total)
    if schedule == "onecycle":
        up = max(int(pct_start * total), 1)
        start, end = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)
        if step < up:
            t = step / up
            return start + (1.0 - start) * (1 - math.cos(math.pi * t)) / 2
        t = (step - up) / max(total - up, 1)
        return end + (1.0 - end) * (1 + math.cos(math.pi * t)) / 2
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        t = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule must be 'onecycle', 'cosine' or 'constant', not {schedule!r}")


class StepSchedule(torch.optim.lr_scheduler.LambdaLR):
    """A per-step LambdaLR over `lr_factor`; its state is primitives only (resumable)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, *,
                 schedule: str = "onecycle", warmup: int = 0, pct_start: float = 0.25) -> None:
        self.total_steps = total_steps

        def factor(step: int) -> float:
            return lr_factor(step, total_steps, schedule=schedule, warmup=warmup,
                             pct_start=pct_start)

        super().__init__(optimizer, factor)

    def used_lr(self) -> float:
        """The first group's learning rate in the last optimizer step taken (the one before
        the latest `step()`; the initial rate before any). Not `get_last_lr()`: that is the
        rate of the next step, which after a one-cycle run's last step is its final value and
        after a one-step epoch the peak, never used."""
        return self.base_lrs[0] * self.lr_lambdas[0](max(self.last_epoch - 1, 0))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("lr_lambdas", None)  # rebuilt from the config, never pickled
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        state["lr_lambdas"] = [None] * len(self.lr_lambdas)
        super().load_state_dict(state)
