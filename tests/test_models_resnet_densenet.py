"""ResNet, plain nets, CIFAR ResNets, DenseNet and the lecture's residual_net.

Truth: published parameter counts (shared/README.md), torchvision's own definitions (random init,
loaded strictly, eval outputs compared), and hand-computed tensors and counts.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnzoo import create_model, get_config, list_models
from cnnzoo.errors import InputSizeError
from cnnzoo.models import count_parameters
from cnnzoo.models.resnet import BasicBlock, ShortcutA

# Published counts: torchvision's definitions at 1000 classes; the CIFAR nets at 10 classes
# (ResNet paper Sec. 4.2 "0.27M ... 1.7M", DenseNet paper Table 2 "0.8M").
IMAGENET_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
}
CIFAR_PARAMS = {
    ("resnet20", "A"): 269_722,
    ("resnet20", "B"): 272_474,
    ("resnet32", "A"): 464_154,
    ("resnet44", "A"): 658_586,
    ("resnet56", "A"): 853_018,
    ("resnet110", "A"): 1_727_962,
    ("resnet110", "B"): 1_730_714,
}
OURS = list_models("resnet*") + list_models("plain*") + list_models("densenet*") + ["residual_net"]
SMALLEST = {"resnet18", "plain18", "densenet121", "resnet20", "densenet_bc_100_k12", "residual_net"}


def test_all_registered():
    assert set(OURS) == {
        *(f"resnet{d}" for d in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110)),
        "plain18", "plain34", "densenet121", "densenet161", "densenet169", "densenet201",
        "densenet_bc_100_k12", "residual_net",
    }  # fmt: skip


@pytest.mark.parametrize(("name", "shortcut"), list(CIFAR_PARAMS))
def test_cifar_resnet_param_counts(name, shortcut):
    model = create_model(name, shortcut=shortcut)
    assert model.num_classes == 10
    assert count_parameters(model) == CIFAR_PARAMS[name, shortcut]


def test_densenet_bc_param_counts_and_widths():
    model = create_model("densenet_bc_100_k12")
    assert count_parameters(model) == 769_162
    assert count_parameters(create_model("densenet_bc_100_k12", num_classes=100)) == 800_032
    # 24 + 16*12 = 216 -> 108; 108 + 192 = 300 -> 150; 150 + 192 = 342 channels into the head.
    assert model.num_features == 342
    assert model.features.transition1.conv.weight.shape == (108, 216, 1, 1)


def test_residual_net_param_count_by_hand():
    # conv1 1*32*9+32, conv2 32*32*9+32, projection 1*32, fc1 (32*14*14)*128+128, fc2 128*10+10.
    expected = 320 + 9248 + 32 + 802_944 + 1290
    assert count_parameters(create_model("residual_net")) == expected


@pytest.mark.parametrize("name", list(IMAGENET_PARAMS))
def test_matches_torchvision(name, tv_models):
    """Published count, torchvision's keys and shapes (strict load), identical eval outputs."""
    ours = create_model(name).eval()
    assert count_parameters(ours) == IMAGENET_PARAMS[name]
    ref = getattr(tv_models, name)().eval()
    ref_sd = ref.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref_sd.items()
    }
    ours.load_state_dict(ref_sd, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_plain_nets_differ_from_resnets_only_by_shortcuts():
    for depth in (18, 34):
        res_sd = create_model(f"resnet{depth}").state_dict()
        plain = create_model(f"plain{depth}")
        kept = {k: v for k, v in res_sd.items() if ".downsample." not in k}
        assert len(kept) < len(res_sd)  # resnet has projections; plain does not
        plain.load_state_dict(kept, strict=True)
    # With the same weights, a block computes relu(F(x) + x) with and relu(F(x)) without shortcut.
    res, plain = BasicBlock(8, 8).eval(), BasicBlock(8, 8, shortcut=False).eval()
    for bn in (res.bn1, res.bn2):
        nn.init.uniform_(bn.weight)
        nn.init.uniform_(bn.bias, -1, 1)
    plain.load_state_dict(res.state_dict())
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        f = res.bn2(res.conv2(torch.relu(res.bn1(res.conv1(x)))))
        torch.testing.assert_close(res(x), torch.relu(f + x))
        torch.testing.assert_close(plain(x), torch.relu(f))


def test_option_a_shortcut_by_hand():
    x = torch.arange(32.0).view(1, 2, 4, 4)
    out = ShortcutA(2, 4, stride=2)(x)
    zeros = [[0.0, 0.0], [0.0, 0.0]]
    # Every other pixel of each channel; one zero channel before and one after (4 - 2 = 2 extra).
    expected = torch.tensor([[zeros, [[0.0, 2.0], [8.0, 10.0]], [[16.0, 18.0], [24.0, 26.0]], zeros]])
    torch.testing.assert_close(out, expected)
    a, b = create_model("resnet20"), create_model("resnet20", shortcut="B")
    assert isinstance(a.layer2[0].downsample, ShortcutA)
    assert sum(p.numel() for p in a.layer2[0].downsample.parameters()) == 0
    # B's projections: 1x1 conv + BN at 16->32 and 32->64 channels.
    assert count_parameters(b) - count_parameters(a) == (16 * 32 + 64) + (32 * 64 + 128)


def _build(name: str, in_chans: int, size: int) -> nn.Module:
    kwargs = {"img_size": size} if name == "residual_net" else {}
    return create_model(name, in_chans=in_chans, **kwargs)


def _forward_backward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.train()
    out = model(x)
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return out


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", OURS)
def test_forward_backward_at_minimum_size(name, in_chans):
    cfg = get_config(name)
    model = _build(name, in_chans, cfg.min_size)
    # Batch 2: BatchNorm in training mode needs more than one value per channel.
    out = _forward_backward(model, torch.randn(2, in_chans, cfg.min_size, cfg.min_size))
    assert out.shape == (2, cfg.num_classes)


@pytest.mark.parametrize("name", OURS)
def test_default_size(name):
    """Forward at the default size with 3 channels for all; backward with 1 channel for the
    smallest net of each family (the big ones at 224 px would cost the suite minutes)."""
    cfg = get_config(name)
    size = cfg.input_size[1]
    model = _build(name, 3, size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, cfg.num_classes)
    if name in SMALLEST:
        grey = _build(name, 1, size)
        assert _forward_backward(grey, torch.randn(2, 1, size, size)).shape == (2, cfg.num_classes)


@pytest.mark.parametrize("name", ["densenet121", "densenet161", "densenet_bc_100_k12"])
def test_minimum_size_is_tight(name):
    """One pixel below the minimum the network itself fails, and the model says so in one line."""
    small = get_config(name).min_size - 1
    model = create_model(name).eval()
    x = torch.randn(1, 3, small, small)
    with pytest.raises(RuntimeError):
        model.forward_head(model.forward_features(x))
    with pytest.raises(InputSizeError, match=f"at least {small + 1}x{small + 1}") as err:
        model(x)
    assert "\n" not in str(err.value)


def test_resnet_minimum_is_total_stride_and_smaller_is_refused():
    # 32 = the total stride: the last stage's map is exactly 1x1.
    assert get_config("resnet18").min_size == 32
    model = create_model("resnet18").eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)
    with pytest.raises(InputSizeError, match="at least 32x32"):
        model(torch.randn(1, 3, 31, 31))


def test_residual_net_identity_skip_and_fixed_size():
    model = create_model("residual_net", in_chans=32, img_size=6).eval()
    assert isinstance(model.shortcut, nn.Identity)  # the lecture's case: add the input itself
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        y = model.conv2(torch.relu(model.conv1(x)))
        expected = nn.functional.max_pool2d(torch.relu(y + x), 2)
        torch.testing.assert_close(model.forward_features(x), expected)
    with pytest.raises(InputSizeError, match="img_size=8"):
        model(torch.randn(1, 32, 8, 8))


@pytest.mark.parametrize(("name", "channels"), [("resnet18", [64, 64, 128, 256, 512]),
                                                 ("resnet50", [64, 256, 512, 1024, 2048])])  # fmt: skip
def test_forward_intermediates(name, channels):
    model = create_model(name).eval()
    assert model.feature_channels == channels
    assert model.feature_strides == [2, 4, 8, 16, 32]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_intermediates(x)
        assert [f.shape[1:] for f in feats] == [
            (c, 64 // s, 64 // s) for c, s in zip(channels, model.feature_strides, strict=True)
        ]
        torch.testing.assert_close(feats[-1], model.forward_features(x))


@pytest.mark.parametrize("name", ["resnet20", "densenet_bc_100_k12", "residual_net"])
def test_heads(name):
    model = create_model(name).eval()
    x = torch.randn(2, *get_config(name).input_size)
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        assert feats.shape == (2, model.num_features)
        torch.testing.assert_close(model.get_classifier()(feats), model(x))
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), feats)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "silu"])
def test_cifar_resnet_act_block_by_hand_and_same_keys(act):
    """resnet20 act=...: every ReLU of the stem and the blocks becomes `act` (no ReLU left), the
    state_dict keys and shapes stay, and a block computes act(bn2(conv2(act(bn1(conv1 x)))) + x)
    with torch's functional activation. The in-place SiLU leaves the gradients those of the
    out-of-place function."""
    f = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": nn.functional.silu}[act]
    relu_net, net = create_model("resnet20"), create_model("resnet20", act=act)
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    assert {k: v.shape for k, v in net.state_dict().items()} == {
        k: v.shape for k, v in relu_net.state_dict().items()}
    block = net.layer1[1].eval()
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    want = f(block.bn2(block.conv2(f(block.bn1(block.conv1(x))))) + x)
    (gx_want,) = torch.autograd.grad(want.sum(), x)
    got = block(x)
    torch.testing.assert_close(got, want)
    (gx,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(gx, gx_want)
    stem = net.eval()._stem(torch.randn(1, 3, 4, 4))
    assert stem.min() >= 0 if act == "sigmoid" else stem.min() < 0  # not clipped at zero


def test_act_default_is_todays_net_and_tanh_convs_take_their_gain():
    """act='relu' (the default) builds resnet20 exactly as before from one seed; 'tanh' draws
    the same numbers scaled by calculate_gain('tanh') / calculate_gain('relu')."""
    nets = {}
    for act in (None, "relu", "tanh"):
        torch.manual_seed(3)
        nets[act] = create_model("resnet20", **({} if act is None else {"act": act}))
    for (k, v), v_relu, v_tanh in zip(nets[None].state_dict().items(),
                                      nets["relu"].state_dict().values(),
                                      nets["tanh"].state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(v, v_relu), k
        if k.endswith("conv1.weight") or k.endswith("conv2.weight"):
            ratio = nn.init.calculate_gain("tanh") / nn.init.calculate_gain("relu")
            torch.testing.assert_close(v_tanh, v * ratio)


def test_residual_net_act_by_hand():
    model = create_model("residual_net", in_chans=32, img_size=6, act="tanh").eval()
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        y = model.conv2(torch.tanh(model.conv1(x)))
        feats = nn.functional.max_pool2d(torch.tanh(y + x), 2)
        torch.testing.assert_close(model.forward_features(x), feats)
        hidden = torch.tanh(model.fc1(feats.flatten(1)))
        torch.testing.assert_close(model(x), model.fc2(hidden))


def test_residual_net_shortcut_option_spelt_as_the_cifar_resnets():
    """shortcut='none' removes the skip: relu(conv2(relu(conv1 x))) by hand, and the keys of the
    default net minus the projection's; 'A' zero-pads the grey input to 32 channels (no
    parameters); 'B' is the default net (projection only where the channels change)."""
    from cnnzoo.errors import ModelOptionError

    default = create_model("residual_net")
    assert isinstance(create_model("residual_net", shortcut="B").shortcut, nn.Conv2d)
    plain = create_model("residual_net", shortcut="none").eval()
    assert plain.shortcut is None
    assert set(default.state_dict()) - set(plain.state_dict()) == {"shortcut.weight"}
    plain.load_state_dict({k: v for k, v in default.state_dict().items() if k != "shortcut.weight"})
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        y = torch.relu(plain.conv2(torch.relu(plain.conv1(x))))
        torch.testing.assert_close(plain.forward_features(x), nn.functional.max_pool2d(y, 2))
        # The same weights with the skip give another output: the skip was really there.
        assert not torch.allclose(default.eval().forward_features(x), plain.forward_features(x))
    a = create_model("residual_net", shortcut="A").eval()
    assert count_parameters(default) - count_parameters(a) == 32  # the 1x1 conv's 1x32 weights
    a.load_state_dict({k: v for k, v in default.state_dict().items() if k != "shortcut.weight"})
    with torch.no_grad():
        padded = nn.functional.pad(x, (0, 0, 0, 0, 15, 16))  # 31 zero channels around the input
        y = torch.relu(a.conv2(torch.relu(a.conv1(x))) + padded)
        torch.testing.assert_close(a.forward_features(x), nn.functional.max_pool2d(y, 2))
    # The lecture's identity at 32 input channels is kept by 'A' and 'B', dropped by 'none'.
    for shortcut in ("A", "B"):
        assert isinstance(create_model("residual_net", in_chans=32, shortcut=shortcut).shortcut,
                          nn.Identity)  # fmt: skip
    with pytest.raises(ModelOptionError, match="shortcut='A' zero-pads the 64 input channels"):
        create_model("residual_net", in_chans=64, shortcut="A")
    with pytest.raises(ModelOptionError, match=r"shortcut must be one of A, B, none, not 'C'"):
        create_model("residual_net", shortcut="C")
    assert "shortcut" in get_config("residual_net").options


def test_a_plain_cifar_depth_points_to_the_resnet_without_shortcuts(capsys):
    """'plain56' is not registered: the paper's plain CIFAR nets are resnetN with
    shortcut='none', which the error says (it suggested plain18, plain34); other depths name
    the plain nets there are; plain18 spelt otherwise still gets "did you mean"."""
    from cnnzoo.cli import main
    from cnnzoo.errors import UnknownModelError

    for name, depth in (("plain56", 56), ("Plain-20", 20), ("plain_110", 110)):
        with pytest.raises(UnknownModelError) as err:
            create_model(name)
        assert str(err.value) == (
            f"unknown model {name!r}: the plain {depth}-layer CIFAR net is resnet{depth} without "
            f"shortcuts: create_model('resnet{depth}', shortcut='none'), on the command line "
            f"resnet{depth} --model-arg shortcut=none")
    with pytest.raises(UnknownModelError, match=r"'plain50': the plain nets are plain18, plain34 "
                                                r"\(ImageNet\) and resnet20/32/44/56/110 with "
                                                "shortcut='none'"):  # fmt: skip
        create_model("plain50")
    with pytest.raises(UnknownModelError, match=r"Did you mean plain18\?"):
        create_model("plain-18")
    # What it points to builds the plain net: the keys of resnet56 (option A has no parameters).
    with torch.device("meta"):
        plain = create_model("resnet56", shortcut="none")
        assert list(plain.state_dict()) == list(create_model("resnet56").state_dict())
    assert main(["train", "plain56", "--data", "digits"]) == 2
    assert "resnet56 --model-arg shortcut=none" in capsys.readouterr().err
