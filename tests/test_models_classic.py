"""LeNet-5, AlexNet, VGG and GoogLeNet against published counts, hand counts and torchvision."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnzoo
from cnnzoo.errors import InputSizeError
from cnnzoo.models.base import AuxOutputs, count_parameters
from cnnzoo.models.vgg import VGG_CONFIGS, VGG_DENSE_LAYERS, vgg_conv_layers

VGGS = [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
TV_NETS = ["alexnet", *VGGS, "googlenet"]
CLASSIC = ["lenet5", "lenet5_classic", *TV_NETS]

# torchvision's counts (shared/README.md); vgg13_bn and vgg19_bn from torchvision's weight tables.
PUBLISHED_1000 = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "googlenet": 13_004_888,
}


def _meta_model(name: str, **kwargs) -> nn.Module:
    # Building on the meta device allocates nothing: counting and size checks stay instant.
    with torch.device("meta"):
        return cnnzoo.create_model(name, **kwargs)


@pytest.mark.parametrize("name", list(PUBLISHED_1000))
def test_parameter_count_matches_published(name):
    assert count_parameters(_meta_model(name)) == PUBLISHED_1000[name]


def test_googlenet_without_aux_heads_has_published_count():
    assert count_parameters(_meta_model("googlenet", aux_logits=False)) == 6_624_904


def _macs(module: nn.Module, channels: int, size: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        module(torch.empty(1, channels, size, size, device="meta"))
    return counter.get_total_flops() // 2  # torch counts a multiply-add as two


def test_googlenet_reductions_cost_what_the_lecture_says_in_inception_3a():
    """Inception 3a at 224 px reads 28x28x192. Its 5x5 branch (the paper's kernel) with the
    16-channel 1x1 reduction: 28*28*(192*16 + 25*16*32) = 12.4 M multiply-adds; without it,
    the 5x5 conv on all 192 channels: 28*28*25*192*32 = 120.4 M, ten times as many."""
    from cnnzoo.models.googlenet import INCEPTION_TABLE, Inception

    name, channels = INCEPTION_TABLE[0]
    assert name == "inception3a"
    with torch.device("meta"):
        reduced = Inception(*channels, kernel5=5)
        naive = Inception(*channels, kernel5=5, reductions=False)
        torchvision_kernel = Inception(*channels)
    assert _macs(reduced.branch3, 192, 28) == 28 * 28 * (192 * 16 + 25 * 16 * 32) == 12_443_648
    assert _macs(naive.branch3, 192, 28) == 28 * 28 * 25 * 192 * 32 == 120_422_400
    assert _macs(naive.branch2, 192, 28) == 28 * 28 * 9 * 192 * 128
    assert _macs(torchvision_kernel.branch3, 192, 28) == 28 * 28 * (192 * 16 + 9 * 16 * 32)
    # The module's output is the same width either way: the rest of the net is unchanged.
    x = torch.empty(1, 192, 28, 28, device="meta")
    assert reduced(x).shape == naive(x).shape == (1, 256, 28, 28)


@pytest.mark.parametrize("reductions", [True, False])
@pytest.mark.parametrize("paper_5x5", [False, True])
def test_googlenet_lesson_variants_counted_from_table_1(reductions, paper_5x5):
    """From the published 6,624,904 (no auxiliary heads), by hand per module of Table 1: the
    paper's 5x5 adds (25 - 9) * reduce * out weights to the "5x5" branch; dropping a reduction
    removes the 1x1 conv (in * reduce weights, 2 * reduce BatchNorm parameters) and lets the
    k x k conv read all `in` channels instead of `reduce`."""
    from cnnzoo.models.googlenet import INCEPTION_TABLE

    expected = 6_624_904
    for entry in INCEPTION_TABLE:
        if isinstance(entry, str):
            continue
        cin, _, red3, out3, red5, out5, _ = entry[1]
        k5 = 25 if paper_5x5 else 9
        expected += (k5 - 9) * red5 * out5
        if not reductions:
            for red, out, kk in ((red3, out3, 9), (red5, out5, k5)):
                expected += kk * cin * out - (cin * red + 2 * red + kk * red * out)
    model = _meta_model("googlenet", aux_logits=False, reductions=reductions, paper_5x5=paper_5x5)
    assert count_parameters(model) == expected
    assert {True: {False: 6_624_904, True: 7_005_832},
            False: {False: 18_389_512, True: 25_311_752}}[reductions][paper_5x5] == expected


def test_googlenet_without_reductions_trains_and_refuses_torchvision_weights():
    torch.manual_seed(0)
    options = {"num_classes": 3, "in_chans": 1, "aux_logits": False}
    model = cnnzoo.create_model("googlenet", reductions=False, paper_5x5=True, **options)
    out = model.train()(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 3)
    out.sum().backward()
    assert model.inception3a.branch3[0].conv.weight.shape == (32, 192, 5, 5)
    # torchvision's weights have the reductions: a shape they do not fit, not a silent load.
    reference = cnnzoo.create_model("googlenet", **options).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(reference)


def test_lenet_parameter_counts_match_the_paper():
    # Section II.B: C1 156, S2 12, C3 1,516 (Table I), S4 32, C5 48,120, F6 10,164; plus the
    # 84*10+10 = 850 of the linear output layer that replaces the RBF units.
    classic = cnnzoo.create_model("lenet5_classic")
    assert count_parameters(classic.c3) == 1516
    assert count_parameters(classic.s2) == 12 and count_parameters(classic.s4) == 32
    assert count_parameters(classic) == 156 + 12 + 1516 + 32 + 48_120 + 10_164 + 850
    # The modern form connects C3 fully: 6*16*25 + 16 = 2,416, and has no subsampling weights.
    assert count_parameters(cnnzoo.create_model("lenet5")) == 156 + 2416 + 48_120 + 10_164 + 850


def test_lenet_classic_c3_follows_table_1():
    c3 = cnnzoo.create_model("lenet5_classic").c3
    used = (c3.dense_weight().abs().sum((2, 3)) > 0).int()
    assert used.sum(1).tolist() == [3] * 6 + [4] * 9 + [6]
    assert used[:, 0].tolist() == [1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1]  # Table I


def _fwd_bwd(model: nn.Module, batch: int, chans: int, size: int) -> None:
    x = torch.randn(batch, chans, size, size, requires_grad=True)
    out = model(x)
    logits = out.logits if isinstance(out, AuxOutputs) else out
    assert logits.shape == (batch, model.num_classes)
    loss = logits.sum() + (sum(a.sum() for a in out.aux) if isinstance(out, AuxOutputs) else 0)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    model.zero_grad(set_to_none=True)


# At the default size, 1 and 3 channels alternate between a family's members to keep the file
# fast (in_chans only touches the first conv, whatever the depth).
_DEFAULT_CHANS = {name: 1 if i % 2 else 3 for i, name in enumerate(CLASSIC)}


@pytest.mark.parametrize("name", CLASSIC)
def test_forward_backward_at_minimum_and_default_size(name):
    cfg = cnnzoo.get_config(name)
    for chans in (1, 3):
        model = cnnzoo.create_model(name, num_classes=7, in_chans=chans).train()
        # Batch 2: BatchNorm in training mode needs more than one value per channel.
        _fwd_bwd(model, 2, chans, cfg.min_size)
        if chans == _DEFAULT_CHANS[name]:
            size = cfg.input_size[1]
            _fwd_bwd(model, 1 if size > 32 else 2, chans, size)
        # min_size is the true minimum: one pixel less breaks the network itself.
        model.eval()
        with torch.no_grad(), pytest.raises(RuntimeError):
            model.forward_head(model.forward_features(torch.zeros(1, chans, cfg.min_size - 1,
                                                                  cfg.min_size - 1)))


@pytest.mark.parametrize("name", CLASSIC)
def test_input_below_minimum_raises_one_line_error(name):
    model = _meta_model(name)
    size = model.default_cfg.min_size
    with pytest.raises(InputSizeError, match=f"at least {size}x{size}") as err:
        model(torch.zeros(1, model.default_cfg.input_size[0], size, size - 1, device="meta"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["lenet5", "alexnet", "vgg11_bn", "googlenet"])
def test_reset_classifier_and_pre_logits(name):
    cfg = cnnzoo.get_config(name)
    model = cnnzoo.create_model(name).eval()
    x = torch.randn(2, cfg.input_size[0], cfg.min_size, cfg.min_size)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, model.num_features)
        assert torch.allclose(model.get_classifier()(pre), model(x))
        model.reset_classifier(5)
        assert model.get_classifier().out_features == 5 and model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert torch.equal(model(x), pre)
    headless = cnnzoo.create_model(name, num_classes=0).eval()
    assert headless(x).shape == (2, model.num_features)


def test_googlenet_aux_logits_in_training_only():
    model = cnnzoo.create_model("googlenet", num_classes=4)
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert isinstance(out, AuxOutputs) and out.aux_weight == 0.3
    # Rebuilt by NamedTuple's own means, it keeps its weight (they skipped __new__).
    model.aux_weight = 0.5
    out = model(x)
    changed = out._replace(logits=out.logits * 2)
    assert changed.aux_weight == 0.5 and torch.equal(changed.logits, out.logits * 2)
    assert AuxOutputs._make(out).aux_weight == 0.3  # three values: the paper's weight
    with pytest.raises(ValueError, match="no field 'aux'"):
        out._replace(aux=None)
    assert out.logits.shape == (2, 4) and [a.shape for a in out.aux] == [(2, 4), (2, 4)]
    assert isinstance(model.eval()(x), torch.Tensor)
    model.reset_classifier(6)
    assert [a.shape for a in model.train()(x).aux] == [(2, 6), (2, 6)]
    plain = cnnzoo.create_model("googlenet", num_classes=4, aux_logits=False).train()
    assert isinstance(plain(x), torch.Tensor)


# --- torchvision as the oracle -----------------------------------------------------------


def _tv_model(tv_models, name: str, **kwargs) -> nn.Module:
    if name == "googlenet":
        kwargs = {"init_weights": True, "aux_logits": True, "transform_input": False, **kwargs}
    return getattr(tv_models, name)(weights=None, **kwargs)


def _ours_from(name: str, ref: nn.Module, **kwargs) -> nn.Module:
    # Built on meta and filled from the reference (assign=True): strict key and shape check
    # without paying for a second random initialisation of 100M+ parameters.
    model = _meta_model(name, **kwargs)
    model.load_state_dict(ref.state_dict(), strict=True, assign=True)
    return model


def _assert_same(ours: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("name", TV_NETS)
def test_torchvision_state_dict_loads_and_matches(tv_models, name):
    ref = _tv_model(tv_models, name).eval()
    ours = _ours_from(name, ref).eval()
    # Small inputs keep this fast: the VGGs' minimum, AlexNet's and GoogLeNet's just above it.
    size = {"alexnet": 67, "googlenet": 40}.get(name, 32)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        _assert_same(ours(x), ref(x))
        if name.startswith("vgg"):  # fc7 features equal torchvision's classifier[:6] output
            feats = torch.flatten(ref.avgpool(ref.features(x)), 1)
            _assert_same(ours.forward_head(ours.forward_features(x), pre_logits=True),
                         ref.classifier[:6](feats))


# The module of torchvision's net whose output is each of our feature stages (the last map at
# each stride; DenseNet's last is norm5's, ReLU'd as its head does), for `--stages` taps.
TV_STAGE_MODULES = {
    "vgg16": ["features.4", "features.9", "features.16", "features.23", "features.30"],
    "googlenet": ["conv1", "conv3", "inception3b", "inception4e", "inception5b"],
    "densenet121": ["features.relu0", "features.denseblock1", "features.denseblock2",
                    "features.denseblock3", "features.norm5"],
}


def _caught_outputs(ref: torch.nn.Module, keys: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of `ref`'s modules named `keys` on `x`, caught with forward hooks."""
    caught: dict[str, torch.Tensor] = {}
    modules = dict(ref.named_modules())
    hooks = [modules[key].register_forward_hook(
        # clone: torchvision's in-place ReLUs (relu0, DenseNet's) change what they return
        lambda _m, _i, out, key=key: caught.__setitem__(key, out.clone())) for key in keys]
    with torch.no_grad():
        ref(x)
    for hook in hooks:
        hook.remove()
    return [caught[key] for key in keys]


@pytest.mark.parametrize("name", list(TV_STAGE_MODULES))
def test_feature_stages_are_torchvisions_maps_at_each_stride(tv_models, name):
    """`forward_intermediates` of VGG, GoogLeNet and DenseNet (transfer's `--stages` taps)
    against torchvision's own modules' outputs, caught with forward hooks, at strides 2 ... 32."""
    ref = _tv_model(tv_models, name).eval()
    ours = _ours_from(name, ref).eval()
    x = torch.randn(1, 3, 64, 64)
    expected = _caught_outputs(ref, TV_STAGE_MODULES[name], x)
    with torch.no_grad():
        feats = ours.forward_intermediates(x)
    if name == "densenet121":
        expected[-1] = torch.relu(expected[-1])
    assert len(feats) == 5 and ours.feature_strides == [2, 4, 8, 16, 32]
    for got, want, channels, stride in zip(feats, expected, ours.feature_channels,
                                           ours.feature_strides, strict=True):  # fmt: skip
        assert got.shape[1:] == (channels, 64 // stride, 64 // stride)
        _assert_same(got, want)


def test_alexnet_stages_are_torchvisions_maps_at_strides_4_to_32(tv_models):
    """AlexNet had no `forward_intermediates`, so `transfer --stages` refused an AlexNet file.
    Its stages are the last map at each stride (conv1's stride 4 is its first): torchvision's
    own ReLUs after conv1, conv2 and conv5 and its last max-pool, caught with forward hooks,
    55, 27, 13 and 6 px at 224 (the paper's 55x55 and 27x27 maps)."""
    from cnnzoo.models.taps import StageTaps

    ref = _tv_model(tv_models, "alexnet").eval()
    ours = _ours_from("alexnet", ref).eval()
    x = torch.randn(1, 3, 224, 224)
    expected = _caught_outputs(ref, ["features.1", "features.4", "features.11", "features.12"], x)
    with torch.no_grad():
        feats = ours.forward_intermediates(x)
    assert (ours.feature_channels, ours.feature_strides) == ([64, 192, 256, 256], [4, 8, 16, 32])
    assert [f.shape[1:] for f in feats] == [(64, 55, 55), (192, 27, 27), (256, 13, 13),
                                            (256, 6, 6)]  # fmt: skip
    for got, want in zip(feats, expected, strict=True):
        _assert_same(got, want)
    taps = StageTaps(ours, "3,4", num_classes=3)
    assert taps.num_features == 512
    with pytest.raises(ValueError, match=r"stages 1-4 \(strides 4, 8, 16, 32\), not 5"):
        StageTaps(_ours_from("alexnet", ref), (4, 5), 3)


def test_stage_taps_read_vgg_googlenet_and_densenet_stages():
    """A transfer head on stages 4 + 5 of each: the pooled maps, concatenated."""
    from cnnzoo.models.taps import StageTaps

    for name, width in (("vgg11", 512 + 512), ("googlenet", 832 + 1024),
                        ("densenet121", 1024 + 1024)):  # fmt: skip
        net = StageTaps(cnnzoo.create_model(name), "4,5", num_classes=3).eval()
        assert net.num_features == width, name
        with torch.no_grad():
            assert net(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    small = cnnzoo.create_model("vgg11_bn", stages=3)  # the Fashion-MNIST VGG: three stages
    assert small.feature_strides == [2, 4, 8]
    with pytest.raises(ValueError, match="stages 1-3"):
        StageTaps(small, (4,), 3)


def test_googlenet_matches_torchvision_in_training_and_with_transform_input(tv_models):
    # Dropout off so that training-mode outputs (BatchNorm on batch statistics) are
    # deterministic: checks the aux heads and their order (aux2, aux1) too.
    ref = _tv_model(tv_models, "googlenet", dropout=0.0, dropout_aux=0.0).train()
    ours = _ours_from("googlenet", ref, dropout=0.0, dropout_aux=0.0).train()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        r, o = ref(x), ours(x)
    _assert_same(o.logits, r.logits)
    _assert_same(o.aux[0], r.aux_logits2)
    _assert_same(o.aux[1], r.aux_logits1)
    # torchvision's training loops unpack three values: (logits, aux_logits2, aux_logits1).
    assert len(o) == len(r) == 3 and o._fields == r._fields
    for mine, theirs in zip(o, r, strict=True):
        _assert_same(mine, theirs)

    ref_t = _tv_model(tv_models, "googlenet", transform_input=True).eval()
    # torchvision's init (std 0.01) makes an untrained GoogLeNet's output nearly constant;
    # He init makes the input, and so transform_input, visible in the logits.
    for m in ref_t.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(m.weight)
    ours_t = _ours_from("googlenet", ref_t, transform_input=True).eval()
    with torch.no_grad():
        _assert_same(ours_t(x), ref_t(x))
        assert not torch.allclose(ours_t(x), _ours_from("googlenet", ref_t).eval()(x))


# --- VGG's configuration table and its helpers -----------------------------------------------


def test_vgg_table_matches_paper_depths():
    # Table 1: A has 8 convs, B 10, D 13, E 16; plus 3 dense layers = 11/13/16/19 weight layers.
    convs = {k: sum(isinstance(c, int) for c in cfg) for k, cfg in VGG_CONFIGS.items()}
    assert convs == {"A": 8, "B": 10, "D": 13, "E": 16}
    assert all(cfg.count("M") == 5 for cfg in VGG_CONFIGS.values())


@pytest.mark.parametrize(
    ("name", "per_stage"),
    [("vgg11", [1, 1, 2, 2, 2]), ("vgg13_bn", [2, 2, 2, 2, 2]), ("vgg16", [2, 2, 3, 3, 3])],
)
def test_vgg_conv_layers_give_stage_positions_and_real_keys(name, per_stage):
    model = _meta_model(name)
    layers = vgg_conv_layers(model)
    assert [sum(layer.stage == s for layer in layers) for s in range(5)] == per_stage
    assert [layer.index for layer in layers if layer.stage == 2] == list(range(per_stage[2]))
    modules = dict(model.named_modules())
    for layer in layers:
        assert isinstance(modules[layer.conv], nn.Conv2d)
        assert (layer.bn is not None) == name.endswith("_bn")
        if layer.bn:
            assert isinstance(modules[layer.bn], nn.BatchNorm2d)
    assert all(isinstance(modules[p], nn.Linear) for p in VGG_DENSE_LAYERS)


def test_small_vgg_for_fashion_mnist():
    # d2l's VGG-11 with a quarter of the channels: convs 16,32,64,64,128,128,128,128 (grey in),
    # then 128 -> 256 -> 256 -> 10 dense layers on a 1x1 pooled map. Counted by hand:
    convs = (1 * 16 + 16 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 3 * 128 * 128) * 9
    conv_bias = 16 + 32 + 64 + 64 + 128 * 4
    dense = 128 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    model = cnnzoo.create_model(
        "vgg11", num_classes=10, in_chans=1, width_mult=0.25, fc_dim=256, pool_size=1
    )
    assert count_parameters(model) == convs + conv_bias + dense
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_create_model_arguments_are_checked_in_one_line():
    """Wrong values and other libraries' option names: one line that says what to write."""
    from cnnzoo.errors import ModelOptionError, UnknownModelError

    cases = [
        (dict(num_classes=-1), "num_classes must be a whole number >= 0, not -1"),
        (dict(in_chans=0), "in_chans must be a whole number >= 1, not 0"),
        (dict(bogus=1), "resnet18 has no option 'bogus'"),
        (dict(pretrained=True), "has no option 'pretrained': use weights='imagenet'"),  # timm
        (dict(include_top=False), "use num_classes=0 for the pooled features"),  # Keras
        # timm's: these said only "it has none besides num_classes and in_chans".
        (dict(features_only=True), "has no option 'features_only': model.forward_intermediates(x)"),
        (dict(out_indices=(1, 2)), "has no option 'out_indices': model.forward_intermediates(x)"),
        (dict(checkpoint_path="r18.pth"), "has no option 'checkpoint_path': use weights='path/to"),
        (dict(global_pool="avg"), "has no option 'global_pool': num_classes=0 gives globally"),
        # As the CIFAR ResNets take it: the ImageNet ResNet-18 without shortcuts is plain18.
        (dict(shortcut="none"), "resnet18 has no option 'shortcut': plain18 is resnet18 without "
                                "shortcuts (create_model('plain18'), --model plain18)"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ModelOptionError) as err:
            cnnzoo.create_model("resnet18", **kwargs)
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UnknownModelError, match="Did you mean resnet18\\?"):
        cnnzoo.create_model("ResNet18")
    features = cnnzoo.create_model("resnet18", num_classes=0).eval()  # Keras's include_top=False
    assert features(torch.zeros(1, 3, 64, 64)).shape == (1, 512)


def test_residual_net_config_follows_its_img_size_and_inputs_must_be_batches():
    m = cnnzoo.create_model("residual_net", img_size=32)
    assert m.default_cfg.input_size == (1, 32, 32) and m.default_cfg.min_size == 32
    assert m(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(InputSizeError, match=r"got 32x34: resize the images\.$"):
        m(torch.rand(1, 1, 32, 34))  # not square: rebuilding for one side would not help
    with pytest.raises(InputSizeError, match=r"got shape \(1, 32, 32\): add the batch dimension"):
        m(torch.rand(1, 32, 32))


@pytest.mark.parametrize("name", ["lenet5", "vgg11", "googlenet", "resnet18", "densenet121",
                                  "efficientnet_lite0", "residual_net"])  # fmt: skip
def test_inputs_a_model_cannot_take_get_one_line_saying_what_to_do(name):
    """Keras users pass channels-last batches, uint8 images and numpy arrays; a grey batch
    meets an RGB net. These got torch's errors from the first conv ("expected scalar type Byte
    but found Float"), an AttributeError, or, for (N, H, W, C), 'got 64x3: resize the images'."""
    import numpy as np

    model = cnnzoo.create_model(name).eval()
    c, size = model.default_cfg.input_size[0], model.default_cfg.input_size[1]
    other = 1 if c == 3 else 3
    checks = [
        (torch.rand(1, size, size, c), InputSizeError, r"permute\(0, 3, 1, 2\)"),
        (torch.rand(1, other, size, size), InputSizeError,
         rf"takes {c}-channel input, got {other} channels.*in_chans={other}"),
        (torch.randint(0, 256, (1, c, size, size), dtype=torch.uint8), TypeError,
         r"float tensor, not torch\.uint8.*Preprocessing"),
        (torch.rand(1, c, size, size, dtype=torch.float64), TypeError,
         r"torch\.float32 tensor like the model's weights, not torch\.float64: pass "
         r"x\.to\(torch\.float32\)"),
        (np.random.rand(1, c, size, size).astype(np.float32), TypeError,
         r"float tensor .*not a ndarray.*Preprocessing"),
    ]
    for x, error, message in checks:
        with pytest.raises(error, match=message) as err:
            model(x)
        assert "\n" not in str(err.value)
    # What it takes still works (other dtypes under autocast too), and a first conv replaced by
    # hand (torchvision's way to take grey images) sets the channel count, not the config.
    assert model(torch.rand(2, c, size, size)).shape == (2, model.num_classes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.rand(2, c, size, size, dtype=torch.bfloat16)).shape[0] == 2
    if name == "resnet18":
        model.conv1 = nn.Conv2d(other, 64, 7, 2, 3, bias=False)
        assert model(torch.rand(2, other, size, size)).shape == (2, 1000)


def test_reset_classifier_updates_what_records_the_head():
    src = cnnzoo.create_model("lenet5", num_classes=4)
    m = cnnzoo.create_model("lenet5", num_classes=4, weights=src.state_dict())
    assert m.weights_info.head_loaded and m.default_cfg.num_classes == 4
    m.reset_classifier(7)
    assert m.default_cfg.num_classes == 7 == m.num_classes == m(torch.rand(1, 1, 32, 32)).shape[1]
    assert m.weights_info.class_names is None and not m.weights_info.head_loaded
    g = cnnzoo.create_model("googlenet", num_classes=5)
    g.reset_classifier(3)
    assert g.default_cfg.num_classes == 3 and g.aux1.fc2.out_features == 3
    # A net already in bf16 gets its new heads in bf16 ("mat1 and mat2 must have the same
    # dtype" at the first forward pass with float32 ones).
    for net, shape in ((cnnzoo.create_model("resnet20"), (2, 3, 32, 32)), (g, (2, 3, 64, 64))):
        net.to(torch.bfloat16).train()
        net.reset_classifier(4)
        out = net(torch.rand(shape, dtype=torch.bfloat16))
        assert all(o.dtype == torch.bfloat16 and o.shape == (2, 4) for o in
                   (out if isinstance(out, tuple) else (out,)))  # fmt: skip
    with pytest.raises(cnnzoo.errors.ModelOptionError, match="num_classes must be a whole"):
        cnnzoo.create_model("lenet5", num_classes=True)  # a bool is an int to isinstance
    for bad in (-1, 2.0, True):  # -1 gave a headless net that said num_classes=-1
        with pytest.raises(cnnzoo.errors.ModelOptionError, match="num_classes must be a whole"):
            m.reset_classifier(bad)
    import numpy as np

    for count in (np.int64(3), torch.tensor(3)):  # len(np.unique(labels)), a 0-d tensor
        m.reset_classifier(count)
        assert type(m.num_classes) is int and m(torch.rand(1, 1, 32, 32)).shape == (1, 3)
    # A U-Net's last 1x1 conv is its mask classes, not a head to drop.
    with pytest.raises(cnnzoo.errors.ModelOptionError, match="unet is a segmentation model"):
        cnnzoo.create_model("unet", num_classes=0)


def test_every_model_lists_the_options_it_takes():
    """`ModelConfig.options` is what the unknown-option error names: each listed option is
    taken (at its default value) and each keyword of the model's builder is listed."""
    import inspect

    from cnnzoo.models.registry import _lookup

    for name in cnnzoo.list_models():
        builder, cfg = _lookup(name)
        sig = inspect.signature(builder, eval_str=True)
        explicit = {p.name: p.default for p in sig.parameters.values()
                    if p.kind is p.KEYWORD_ONLY and p.name not in ("num_classes", "in_chans")}
        assert set(explicit) <= set(cfg.options), (name, explicit)
        init = inspect.signature(sig.return_annotation.__init__).parameters
        for option in cfg.options:
            default = explicit[option] if option in explicit else init[option].default
            with torch.device("meta"):
                cnnzoo.create_model(name, **{option: default})
    with pytest.raises(cnnzoo.errors.ModelOptionError,
                       match="has no option 'dropout': did you mean drop_rate\\? its options are "
                             "drop_rate$"):  # fmt: skip
        cnnzoo.create_model("densenet121", dropout=0.2)


def test_list_models_takes_several_patterns_and_pretrained_as_timm_does():
    assert cnnzoo.list_models(["vgg1?", "resnet1*"]) == [
        "resnet18", "resnet101", "resnet110", "resnet152", "vgg11", "vgg13", "vgg16", "vgg19"]
    with_weights = cnnzoo.list_models(pretrained=True)
    assert "efficientnet_lite0" in with_weights and "resnet18" in with_weights
    assert not {"lenet5", "resnet20", "residual_net", "unet"} & set(with_weights)
    from cnnzoo.models import get_config

    # A model where its name belongs: one line, not "'ResNet' object has no attribute 'lower'".
    with torch.device("meta"):
        net = cnnzoo.create_model("resnet18")
    with pytest.raises(TypeError, match="not a ResNet: a model's own is model.default_cfg$"):
        get_config(net)


def test_the_config_has_one_mean_and_std_per_input_channel():
    """A grey ResNet's config had input_size (1, 224, 224) with the three RGB means; a colour
    LeNet-5 three channels with one. The average of the channels' statistics stands in."""
    for name in cnnzoo.list_models(task="classification"):
        for chans in (1, 3):
            with torch.device("meta"):
                cfg = cnnzoo.create_model(name, in_chans=chans).default_cfg
            assert len(cfg.mean) == len(cfg.std) == cfg.input_size[0] == chans, name
    with torch.device("meta"):
        grey = cnnzoo.create_model("resnet18", in_chans=1).default_cfg
    assert grey.mean == pytest.approx(((0.485 + 0.456 + 0.406) / 3,))
    assert grey.std == pytest.approx(((0.229 + 0.224 + 0.225) / 3,))


# Each `act` against torch's own functional form of it (the truth the modules are checked by).
FUNCTIONAL_ACTS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": nn.functional.gelu,
    "silu": nn.functional.silu,
    "leaky_relu": nn.functional.leaky_relu,  # negative slope 0.01, PyTorch's default
}


@pytest.mark.parametrize("act", list(FUNCTIONAL_ACTS))
def test_lenet5_act_computes_the_named_function_with_the_same_keys(act):
    """lenet5's `act` swaps the activation of every layer, nothing else: the same state_dict
    keys, and the output of the net written out with torch's functional activation."""
    from cnnzoo.models.base import ACTIVATIONS

    assert set(ACTIVATIONS) == set(FUNCTIONAL_ACTS)
    f = FUNCTIONAL_ACTS[act]
    relu_net = cnnzoo.create_model("lenet5", num_classes=3)
    m = cnnzoo.create_model("lenet5", num_classes=3, act=act).eval()
    assert list(m.state_dict()) == list(relu_net.state_dict())
    m.load_state_dict(relu_net.state_dict())
    x = torch.randn(2, 1, 32, 32)
    F = nn.functional
    with torch.no_grad():
        h = F.max_pool2d(f(F.conv2d(x, m.c1.weight, m.c1.bias)), 2)
        h = F.max_pool2d(f(F.conv2d(h, m.c3.weight, m.c3.bias)), 2)
        h = f(F.conv2d(h, m.c5.weight, m.c5.bias)).flatten(1)
        want = F.linear(f(F.linear(h, m.f6.weight, m.f6.bias)), m.fc.weight, m.fc.bias)
        torch.testing.assert_close(m(x), want)
    if act != "relu":  # another function: other outputs from the same weights
        assert not torch.allclose(m(x), relu_net.eval()(x))


def test_act_replaces_every_relu_of_alexnet_and_vgg_and_keeps_the_keys():
    """Where torchvision has a ReLU, `act='tanh'` has a Tanh (AlexNet: 5 convs + 2 dense; VGG-11:
    8 convs + 2 dense), with the same state_dict keys and shapes."""
    for name, kwargs, relus in (("alexnet", {}, 7), ("vgg11", {}, 10), ("vgg11_bn", {}, 10),
                                ("vgg13_bn", {"stages": 3}, 6 + 2)):  # fmt: skip
        relu_net, tanh_net = _meta_model(name, **kwargs), _meta_model(name, act="tanh", **kwargs)
        kinds = [type(m) for m in relu_net.modules()]
        assert kinds.count(nn.ReLU) == relus and nn.Tanh not in kinds, name
        kinds = [type(m) for m in tanh_net.modules()]
        assert kinds.count(nn.Tanh) == relus and nn.ReLU not in kinds, name
        assert {k: v.shape for k, v in relu_net.state_dict().items()} == {
            k: v.shape for k, v in tanh_net.state_dict().items()}, name
    # Forward and backward through the in-place positions, for every activation.
    from cnnzoo.models.base import ACTIVATIONS

    for act in ACTIVATIONS:
        m = cnnzoo.create_model("vgg11", num_classes=3, act=act, width_mult=0.125, fc_dim=8,
                                pool_size=1)  # fmt: skip
        x = torch.randn(2, 3, 32, 32, requires_grad=True)
        m(x).sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, act


def test_vgg_act_initialises_the_convs_with_its_gain():
    """He init with the activation's gain (torch's calculate_gain: relu sqrt(2), tanh 5/3,
    sigmoid 1) from the same draws: under one seed the tanh net's convs are the ReLU net's
    times (5/3)/sqrt(2); the dense layers keep their init (it does not depend on `act`)."""
    nets = {}
    for act in ("relu", "tanh", "sigmoid"):
        torch.manual_seed(0)
        nets[act] = cnnzoo.create_model("vgg11", act=act, width_mult=0.125, fc_dim=8, pool_size=1)
    relu_w = nets["relu"].features[0].weight
    for act in ("tanh", "sigmoid"):
        ratio = nn.init.calculate_gain(act) / nn.init.calculate_gain("relu")
        torch.testing.assert_close(nets[act].features[0].weight, relu_w * ratio)
        torch.testing.assert_close(nets[act].classifier[0].weight,
                                   nets["relu"].classifier[0].weight)  # fmt: skip


def test_full_size_vgg_init_is_torchvisions_bit_for_bit(tv_models):
    """torchvision's layout (4096-wide dense layers behind a 7x7 pool) keeps torchvision's init
    exactly: under one seed every tensor equals torchvision's, dense layers N(0, 0.01)
    included. Only narrower dense layers get the raised std of `dense_init_std`."""
    torch.manual_seed(3)
    ref = tv_models.vgg11_bn(weights=None, num_classes=10).state_dict()
    torch.manual_seed(3)
    ours = cnnzoo.create_model("vgg11_bn", num_classes=10).state_dict()
    assert ours.keys() == ref.keys()
    differ = [k for k in ref if not torch.equal(ours[k], ref[k])]
    assert not differ, differ
    assert abs(ours["classifier.3.weight"].std().item() - 0.01) < 1e-4


def test_a_narrow_vgg_learns_in_a_few_steps():
    """A small VGG (fc_dim=64, the sizes the docs train on digits and Fashion-MNIST) leaves
    chance within 20 SGD steps on 256 real digits. With torchvision's N(0, 0.01) for its
    dense layers (sized for 4096 inputs) the same run stayed at chance: training loss 2.30,
    held-out accuracy 0.08 for seeds 0-2; with the std raised for narrow layers, 0.64-0.96
    and 0.44-0.58."""
    from cnnzoo.data import load_dataset
    from cnnzoo.models.vgg import dense_init_std

    assert dense_init_std(4096) == dense_init_std(25088) == 0.01
    assert dense_init_std(64) == pytest.approx(0.08)  # 64 * 0.08**2 == 4096 * 0.01**2
    splits = load_dataset("digits")  # native 8 px: three pools leave 1x1
    x = splits.train.images.float() / 255
    x, y = (x - x.mean()) / x.std(), splits.train.labels
    train_x, train_y, held_x, held_y = x[:256], y[:256], x[256:556], y[256:556]
    torch.manual_seed(0)
    model = cnnzoo.create_model("vgg11_bn", num_classes=10, in_chans=1, stages=3,
                                width_mult=0.25, fc_dim=64, pool_size=1, dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = torch.randint(0, 256, (32,), generator=order)
        loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        train_loss = nn.functional.cross_entropy(model(train_x), train_y).item()
        held_acc = (model(held_x).argmax(1) == held_y).float().mean().item()
    assert train_loss < 1.5 and held_acc > 0.3, (train_loss, held_acc)  # chance: 2.30, 0.1


def test_a_bad_act_is_one_line_naming_the_choices():
    from cnnzoo.errors import ModelOptionError

    for name in ("lenet5", "alexnet", "vgg11", "resnet20", "residual_net"):
        with pytest.raises(ModelOptionError) as err:
            _meta_model(name, act="softplus")
        msg = str(err.value)
        assert "act must be one of relu, tanh, sigmoid, gelu, silu, leaky_relu" in msg, msg
        assert "'softplus'" in msg and "\n" not in msg
    # The paper's net keeps the paper's scaled tanh; the option belongs to the modern form.
    with pytest.raises(ModelOptionError, match="lenet5_classic keeps the paper's scaled tanh"):
        cnnzoo.create_model("lenet5_classic", act="relu")
    # Nets without the option say so, as for any other unknown option.
    with pytest.raises(ModelOptionError, match="googlenet has no option 'act'"):
        _meta_model("googlenet", act="tanh")


def test_probability_options_take_a_number_in_0_1():
    """dropout / dropout_aux / drop_rate / drop_path_rate given True (`--model-arg dropout=yes`
    built Dropout(p=True), p = 1.0: every unit dropped), 1, a negative number or a word: one
    line naming the option and the range. 0 (an int from the command line) and 0.3 build, and
    the Dropout really has that p."""
    from cnnzoo.errors import ModelOptionError
    from cnnzoo.models.registry import PROBABILITY_OPTIONS

    found = {(n, o) for n in cnnzoo.list_models() for o in cnnzoo.get_config(n).options
             if "drop" in o}  # fmt: skip
    assert {o for _, o in found} == PROBABILITY_OPTIONS  # every such option is checked
    assert len(found) == 1 + 8 * 1 + 2 + 5 + 3 * 2 + 1  # alexnet, vgg, googlenet, densenet, ...
    for name, option in sorted(found):
        for bad in (True, 1, 1.0, -0.1, float("nan"), "none"):
            with pytest.raises(ModelOptionError) as err:
                _meta_model(name, **{option: bad})
            assert str(err.value) == (f"{name}: {option} is a probability, a number in [0, 1), "
                                      f"not {bad!r}")  # fmt: skip
    for p in (0, 0.3):
        m = cnnzoo.create_model("alexnet", dropout=p)
        assert [d.p for d in m.modules() if isinstance(d, nn.Dropout)] == [p, p]


def test_size_options_take_a_whole_number_of_at_least_1():
    """VGG's fc_dim=0 built a net of empty dense layers that `cnnzoo train` trained to chance
    without a word (residual_net hidden=0 too); pool_size=0, fc_dim=-3 or fc_dim=yes were
    tracebacks from inside torch, and unet base_width=0 a ZeroDivisionError. Every option whose
    default is a whole number is a size: one line naming it, before anything is built."""
    from cnnzoo.errors import ModelOptionError
    from cnnzoo.models.registry import model_options

    sizes = {(n, o) for n in cnnzoo.list_models()
             for o, spec in model_options(n).items()
             if isinstance(spec.default, int) and not isinstance(spec.default, bool)}  # fmt: skip
    assert {o for _, o in sizes} == {"fc_dim", "pool_size", "img_size", "hidden", "base_width"}
    for name, option in sorted(sizes):
        for bad in (0, -3, 1.5, True, "wide"):
            with pytest.raises(ModelOptionError) as err:
                _meta_model(name, **{option: bad})
            assert str(err.value) == (f"{name}: {option} is a size, a whole number >= 1, "
                                      f"not {bad!r}")  # fmt: skip
    m = cnnzoo.create_model("vgg11", num_classes=3, in_chans=1, stages=2, width_mult=0.125,
                            fc_dim=1, pool_size=1)  # fmt: skip
    assert [m.classifier[i].out_features for i in (0, 3, 6)] == [1, 1, 3]


@pytest.mark.parametrize("name, kwargs, shape", [
    ("resnet20", {}, (1, 3, 32, 32)),
    ("residual_net", {}, (1, 1, 28, 28)),
    ("unet", {"base_width": 4}, (1, 1, 188, 188)),
])  # fmt: skip
def test_tracing_warns_only_of_what_the_trace_cannot_follow(name, kwargs, shape):
    """torch.jit.trace of a zoo net gave 30-54 TracerWarnings, none about the net: the input
    checks' size comparisons, and their shape text printing the traced sizes as tensors. They
    drowned the warnings that matter (EfficientNet's 'SAME' padding, fixed at the traced
    size). The checks guard nothing in a trace (it keeps no Python branch): skipped there."""
    import warnings

    model = cnnzoo.create_model(name, **kwargs).eval()
    x = torch.rand(shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, x)
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert tracer == []
    assert torch.equal(traced(x), model(x))
    with pytest.raises(InputSizeError):  # the eager net still checks
        model(x[0])
