"""What every zoo classifier shares: timm's forward_features / forward_head / reset_classifier."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Container, Iterable, Sequence
from dataclasses import replace
from typing import Any, Literal, NamedTuple, get_args

import torch
from torch import Tensor, nn

from ..errors import InputSizeError, InputTypeError, ModelOptionError


class _AuxFields(NamedTuple):
    logits: Tensor
    aux_logits2: Tensor
    aux_logits1: Tensor


class AuxOutputs(_AuxFields):
    """Training-mode output of nets with auxiliary classifiers (GoogLeNet).

    It unpacks as torchvision's `GoogLeNetOutputs` does, so torchvision's training loops run
    unchanged: `logits, aux_logits2, aux_logits1 = model(x)` (aux2 sits on inception 4d, aux1
    on 4a). The engine's loss is `loss(logits) + aux_weight * sum(loss(a) for a in aux)`; the
    weight rides along as an attribute, not a fourth value. In eval mode such nets return
    plain logits.
    """

    aux_weight: float

    def __new__(cls, logits: Tensor, aux_logits2: Tensor, aux_logits1: Tensor,
                aux_weight: float = 0.3) -> AuxOutputs:  # fmt: skip
        self = super().__new__(cls, logits, aux_logits2, aux_logits1)
        self.aux_weight = aux_weight  # the paper's 0.3 when rebuilt from its three values
        return self

    @property
    def aux(self) -> tuple[Tensor, Tensor]:
        return self.aux_logits2, self.aux_logits1

    # NamedTuple's own build the tuple without __new__, which would leave no aux_weight.
    @classmethod
    def _make(cls, iterable: Any) -> AuxOutputs:
        return cls(*iterable)

    def _replace(self, **changes: Any) -> AuxOutputs:
        values = [changes.pop(name, value) for name, value in zip(self._fields, self, strict=True)]
        if changes:
            raise ValueError(f"AuxOutputs has no field {sorted(changes)[0]!r}")
        return type(self)(*values, self.aux_weight)


_PREPROCESS_HINT = ("images become one with model.weights_info.preprocessing.batch(images) "
                    "(no weights: cnnzoo.weights.Preprocessing.for_model(model))")


def check_input_size(model: nn.Module, x: Tensor, *, sizes: bool = True) -> None:
    """Raise a one-line error saying what to do when `x` is not a float tensor (`InputTypeError`), not
    an (N, C, H, W) batch with the model's channel count, or smaller than the model's minimum
    size (`InputSizeError`; sizes=False: the caller checks the size itself)."""
    if not isinstance(x, Tensor):  # a numpy array: torch's AttributeError named no remedy
        raise InputTypeError(f"expected a float tensor (N, C, H, W), not a {type(x).__name__}: "
                        f"torch.as_tensor(x); {_PREPROCESS_HINT}")  # fmt: skip
    if not x.is_floating_point():  # uint8 images: "expected scalar type Byte but found Float"
        raise InputTypeError(f"expected a float tensor, not {x.dtype}: scale and normalise it as the "
                        f"weights expect; {_PREPROCESS_HINT}")  # fmt: skip
    if torch.jit.is_tracing():
        # A trace keeps no Python branch, so the checks below guard nothing in it; each
        # comparison of its traced sizes was a TracerWarning, and the shape text below printed
        # them as tensors (54 warnings per torch.jit.trace of residual_net).
        return
    shape = "(" + ", ".join(map(str, x.shape)) + ")"
    if x.dim() != 4:  # torch would fail deep inside, at the first flatten or dense layer
        raise InputSizeError(f"expected a batch (N, C, H, W), got shape {shape}"
                             + (": add the batch dimension, x[None]" if x.dim() == 3 else ""))
    cfg = getattr(model, "default_cfg", None)
    # The first conv reads the image: its width holds even where it was replaced by hand.
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None and x.shape[1] != conv.in_channels:
        c, name = conv.in_channels, cfg.name if cfg is not None else type(model).__name__
        if x.shape[-1] == c:  # Keras's and PIL's (N, H, W, C): the size check said "resize"
            hint = "it looks channels-last (N, H, W, C): pass x.permute(0, 3, 1, 2)"
        else:
            hint = f"build the model with in_chans={x.shape[1]}"
            if c == 3 and x.shape[1] == 1:
                hint += " (RGB weights are summed over the colours), or pass x.expand(-1, 3, -1, -1)"
        raise InputSizeError(f"{name} takes {c}-channel input, got {x.shape[1]} channels "
                             f"(shape {shape}): {hint}")  # fmt: skip
    if (conv is not None and x.dtype != conv.weight.dtype
            and not torch.is_autocast_enabled(x.device.type)):  # fmt: skip
        # numpy's float64 through torch.as_tensor: "expected scalar type Double but found Float"
        raise InputTypeError(f"expected a {conv.weight.dtype} tensor like the model's weights, not "
                        f"{x.dtype}: pass x.to({conv.weight.dtype}) (numpy arrays are float64)")
    if cfg is None or not sizes:
        return
    h, w = x.shape[-2:]
    if h < cfg.min_size or w < cfg.min_size:
        raise InputSizeError(
            f"{cfg.name} needs inputs of at least {cfg.min_size}x{cfg.min_size} pixels, got "
            f"{h}x{w}: resize the images to at least {cfg.min_size} pixels "
            f"(default {cfg.input_size[1]}x{cfg.input_size[2]})."
        )


class Classifier(nn.Module):
    """Base of every zoo classifier.

    Subclasses implement `forward_features` (image -> last feature map), `forward_head`
    (feature map -> logits, or the pre-logits vector with `pre_logits=True`) and
    `get_classifier` / `reset_classifier` (the final linear layer). `num_features` is the length
    of the pre-logits vector; `num_classes == 0` means the net has no head and returns pre-logits.
    """

    num_classes: int
    num_features: int
    # Dotted path of the final linear layer ("fc", "classifier.6"), as timm's config names it:
    # the weights loader and transfer learning find the head through it.
    head_name: str = "fc"

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.head_name)

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised head for `num_classes` (0: none, return pre-logits)."""
        parent, _, leaf = self.head_name.rpartition(".")
        head = placed_like(new_head(self.num_features, num_classes), self)
        setattr(self.get_submodule(parent), leaf, head)
        self._head_replaced(num_classes)

    def _head_replaced(self, num_classes: int) -> None:
        """Bookkeeping after a new head: the class count everywhere it is recorded, and no
        class names of the old head (decode_predictions would pair 1000 names with 10 outputs)."""
        num_classes = operator.index(num_classes)  # a plain int in the config and checkpoints
        self.num_classes = num_classes
        cfg = getattr(self, "default_cfg", None)
        if cfg is not None:
            self.default_cfg = replace(cfg, num_classes=num_classes)
        info = getattr(self, "weights_info", None)
        if info is not None:
            info.class_names, info.head_loaded = None, False

    def forward(self, x: Tensor) -> Tensor:
        check_input_size(self, x)
        return self.forward_head(self.forward_features(x))


def stats_for_channels(
    mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std for an input of `channels` channels from statistics of another
    count: grey averages them; more channels repeat them cyclically, as the first conv's
    pretrained kernel is repeated (`weights.adapt`)."""
    if len(mean) == channels:
        return tuple(mean), tuple(std)
    if channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    m, s = (tuple(v[i % len(v)] for i in range(channels)) for v in (mean, std))
    return m, s


def is_whole(value: object, low: int = 1) -> bool:
    """An int (not a bool: True is an int to isinstance) >= low: what a count or a size given
    in code, on the command line or in a JSON file must be."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_integral(value: object, low: int = 1) -> bool:
    """`is_whole` for a setting given in Python, where numpy's integers count too (a batch size
    from np.arange, a grid search's np.int64), as `TrainConfig` and `transfer` take them."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def is_real(value: object) -> bool:
    """A finite number (numpy's too), not a bool: what a rate, fraction or width must be."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))  # fmt: skip


def finite_numbers(value: object, n: int | None = None) -> bool:
    """A list of finite ints or floats (not bools), of `n` of them when given, else of one or
    more: what a mean or std read from a file must be."""
    return (isinstance(value, list) and (len(value) == n if n is not None else bool(value))
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                    for v in value))  # fmt: skip


def new_head(num_features: int, num_classes: int) -> nn.Module:
    """A freshly initialised linear head, or Identity for `num_classes == 0` (no head)."""
    try:  # numpy's and torch's integers too (len(np.unique(labels)), a 0-d tensor)
        n = -1 if isinstance(num_classes, bool) else operator.index(num_classes)
    except TypeError:
        n = -1
    if n < 0:  # reset_classifier(-1) built a headless net
        raise ModelOptionError(f"num_classes must be a whole number >= 0, not {num_classes!r}")
    return nn.Identity() if n == 0 else nn.Linear(num_features, n)


def placed_like(module: nn.Module, model: nn.Module) -> nn.Module:
    """A new `module` (a head) in the dtype and on the device of `model`'s parameters: a net
    turned bf16 before `reset_classifier` fed its bf16 features to a float32 head ("mat1 and
    mat2 must have the same dtype")."""
    ref = next(model.parameters(), None)
    return module if ref is None else module.to(device=ref.device, dtype=ref.dtype)


# The `act` option of the nets where ReLU is compared with what came before it (LeNet-5, AlexNet,
# VGG, the CIFAR ResNets, residual_net): 'relu' is the default and builds today's nets exactly.
Activation = Literal["relu", "tanh", "sigmoid", "gelu", "silu", "leaky_relu"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)


def make_activation(name: str, *, inplace: bool = False) -> nn.Module:
    """The activation module called `name` (one of ACTIVATIONS). `inplace` is honoured where
    PyTorch has it (ReLU, LeakyReLU, SiLU) and may only be asked for where the net used
    `ReLU(inplace=True)`: after a conv, BN or linear layer whose output nothing else reads."""
    if name == "relu":
        return nn.ReLU(inplace=inplace)
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU(inplace=inplace)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=inplace)
    raise ModelOptionError(f"act must be one of {', '.join(ACTIVATIONS)}, not {name!r}")


def init_nonlinearity(act: str) -> str:
    """`nonlinearity` for nn.init.kaiming_normal_ under activation `act`: its gain keeps the
    signal's variance through the layers (relu sqrt(2), tanh 5/3, sigmoid 1; the ReLU-like
    gelu, silu and leaky_relu take ReLU's). The draws are the same, only scaled, so 'relu' nets
    are initialised exactly as before."""
    return act if act in ("tanh", "sigmoid") else "relu"


def tapped_outputs(layers: Iterable[nn.Module], x: Tensor, taps: Container[int]) -> list[Tensor]:
    """`layers` run in turn from `x`; the outputs of those whose index is in `taps`: the feature
    stages of a net that is one sequence (VGG's features, EfficientNet's blocks)."""
    out: list[Tensor] = []
    for i, layer in enumerate(layers):
        x = layer(x)
        if i in taps:
            out.append(x)
    return out


# The in-place initialisers of torch.nn.init (normal_, trunc_normal_, ...), and the random
# fills others (kaiming_normal_) call on the tensor itself.
_INITIALISERS = frozenset({Tensor.normal_, Tensor.uniform_}
                          | {getattr(nn.init, n) for n in dir(nn.init)
                             if n.endswith("_") and not n.startswith("_")})  # fmt: skip


class _NoInitOnMeta(torch.overrides.TorchFunctionMode):
    """Skips torch.nn.init's initialisers on meta tensors, which hold no values to set. On the
    meta device torch runs normal_ through its Python reference, whose first call imports
    torch._dynamo (3-4 s): building EfficientNet-Lite0 there, to check a weights file before
    the net takes memory, made `cnnzoo predict photo.jpg` seconds slower than building it."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:  # fmt: skip
        kwargs = kwargs or {}
        if func in _INITIALISERS:
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def initialised_off_meta() -> Any:
    """A context for building a net: its initialisers skipped where the default device is the
    meta device (`with torch.device("meta")`), else nothing."""
    from contextlib import nullcontext

    return _NoInitOnMeta() if torch.get_default_device().type == "meta" else nullcontext()


@torch.no_grad()
def count_parameters(model: nn.Module) -> int:
    """The model's parameters (trainable or not; buffers such as BatchNorm statistics are not
    parameters)."""
    return sum(p.numel() for p in model.parameters())
