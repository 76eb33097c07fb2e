"""Issue 3's second oracle: Keras Applications' VGG16 and DenseNet121 (KERAS_BACKEND=torch,
weights=None, random weights) saved as Keras weight files, converted by cnnzoo's Keras loader,
give the same outputs as Keras itself (rtol 1e-4). Nobody here wrote the reference nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnzoo

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
# Keras's torch backend warns on every numpy conversion (NumPy 2 copy keyword): noise only.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _randomize_bn_stats(model, rng):
    # Keras initialises moving mean 0 / variance 1, which would hide a swapped mean/variance.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, c).astype("float32"))


def _keras_out(model, x_nhwc: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x_nhwc, training=False))


def test_densenet121_matches_keras_both_file_formats(tmp_path):
    rng = np.random.default_rng(0)
    # 32 px, Keras's smallest DenseNet input: the same layers, the cheapest forward pass.
    km = keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3), classes=1000,
                                        classifier_activation=None)
    _randomize_bn_stats(km, rng)
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    ref = _keras_out(km, x)

    modern = tmp_path / "densenet121.weights.h5"  # Keras 3: layers/<class name>_<n>/vars/<i>
    km.save_weights(str(modern))
    legacy = tmp_path / "densenet121_legacy.h5"  # Keras 2: layer names + weight_names attributes
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, km)

    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    for path in (modern, legacy):
        model = cnnzoo.create_model("densenet121", weights=str(path)).eval()
        assert model.weights_info.layout == "keras"
        with torch.no_grad():
            out = model(xt).numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_headless_keras_densenet_is_a_backbone_for_transfer(tmp_path):
    """include_top=False, pooling='avg' -- the file people bring for transfer learning: it
    loads as the backbone (pooled features equal Keras's), with a new head for new classes, and
    `cnnzoo convert` keeps it a backbone. A headless VGG16 lacks fc6/fc7: one line says so."""
    from cnnzoo.cli import main
    from cnnzoo.errors import WeightsError

    rng = np.random.default_rng(1)
    km = keras.applications.DenseNet121(weights=None, include_top=False, pooling="avg",
                                        input_shape=(32, 32, 3))
    _randomize_bn_stats(km, rng)
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    ref = _keras_out(km, x)
    path = tmp_path / "densenet121_notop.weights.h5"
    km.save_weights(str(path))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    backbone = cnnzoo.create_model("densenet121", num_classes=0, weights=str(path)).eval()
    five = cnnzoo.create_model("densenet121", num_classes=5, weights=str(path)).eval()
    assert not five.weights_info.head_loaded
    with torch.no_grad():
        np.testing.assert_allclose(backbone(xt).numpy(), ref, rtol=1e-4,
                                   atol=1e-4 * np.abs(ref).max())
        pooled = five.forward_head(five.forward_features(xt), pre_logits=True)
        np.testing.assert_allclose(pooled.numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    out = tmp_path / "densenet121_notop.safetensors"
    assert main(["convert", str(path), str(out), "--model", "densenet121"]) == 0
    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    vgg_path = tmp_path / "vgg16_notop.weights.h5"
    vgg.save_weights(str(vgg_path))
    with pytest.raises(WeightsError, match="convolutions only \\(include_top=False\\)"):
        cnnzoo.create_model("vgg16", num_classes=5, weights=str(vgg_path))


def test_vgg16_matches_keras_including_flatten_order(tmp_path):
    """VGG16 at 64 px with include_top=True: Keras flattens the 2x2x512 map in HWC order, the
    zoo (pool_size=2, the 2x2 map unchanged) in CHW order, so fc1 must be permuted to match; the
    first conv must turn Keras's BGR input into RGB."""
    rng = np.random.default_rng(1)
    km = keras.applications.VGG16(weights=None, input_shape=(64, 64, 3), classes=1000,
                                  classifier_activation=None)
    path = tmp_path / "vgg16.weights.h5"
    km.save_weights(str(path))
    archive = tmp_path / "vgg16.keras"  # Keras 3's model.save: config + model.weights.h5 zipped
    km.save(str(archive))
    x_rgb = rng.normal(size=(2, 64, 64, 3)).astype("float32")
    ref = _keras_out(km, np.ascontiguousarray(x_rgb[..., ::-1]))  # Keras VGG takes BGR

    for given in (archive, path):
        model = cnnzoo.create_model("vgg16", pool_size=2, weights=str(given)).eval()
        with torch.no_grad():
            out = model(torch.from_numpy(x_rgb).permute(0, 3, 1, 2).contiguous()).numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # Caffe preprocessing: 0..255 minus the ImageNet means, no scaling.
    pre = model.weights_info.preprocessing
    assert pre.std == pytest.approx((1 / 255,) * 3)
    assert [m * 255 for m in pre.mean] == pytest.approx([123.68, 116.779, 103.939])

    # Converted (what `cnnzoo convert` does): .safetensors in cnnzoo's names, preprocessing kept.
    from cnnzoo.weights import convert_file

    out_file = tmp_path / "vgg16.safetensors"
    convert_file(path, out_file, "vgg16", pool_size=2)
    again = cnnzoo.create_model("vgg16", pool_size=2, weights=str(out_file)).eval()
    with torch.no_grad():
        out2 = again(torch.from_numpy(x_rgb).permute(0, 3, 1, 2).contiguous()).numpy()
    np.testing.assert_allclose(out2, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert again.weights_info.layout == "cnnzoo"
    assert again.weights_info.preprocessing == pre


def test_keras_resnet_is_refused_with_a_reason(tmp_path):
    from cnnzoo.errors import WeightsError
    from cnnzoo.weights.files import Checkpoint, KerasLayer
    from cnnzoo.weights.layouts import convert_checkpoint

    model = cnnzoo.create_model("resnet18", num_classes=10)
    ckpt = Checkpoint("x.h5", "keras", keras_layers=[KerasLayer("c", "conv", [torch.zeros(1)])])
    with pytest.raises(WeightsError, match="original v1"):
        convert_checkpoint(ckpt, model, "resnet50")


def test_keras_file_with_its_top_into_a_headless_model(tmp_path):
    """num_classes=0 from a whole Keras file (include_top=True), as from a torchvision one: the
    predictions layer is left out with a note, and the model returns what Keras's layer before
    it does (DenseNet's avg_pool, VGG's fc2 after its ReLU)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    dense = keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3))
    _randomize_bn_stats(dense, rng)
    vgg = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3))
    for km, name, before, kwargs, bgr in ((dense, "densenet121", "avg_pool", {}, False),
                                          (vgg, "vgg16", "fc2", {"pool_size": 1}, True)):
        path = tmp_path / f"{name}.weights.h5"
        km.save_weights(str(path))
        features = keras.Model(km.inputs, km.get_layer(before).output)
        ref = _keras_out(features, np.ascontiguousarray(x[..., ::-1]) if bgr else x)
        model = cnnzoo.create_model(name, num_classes=0, weights=str(path), **kwargs).eval()
        assert any("not loaded" in n for n in model.weights_info.notes), name
        with torch.no_grad():
            out = model(xt).numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=name)
