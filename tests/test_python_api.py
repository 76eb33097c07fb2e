"""cnnzoo from a notebook, as a Keras Applications / timm user drives it: what bad input raises,
what the objects print as, and how pixel values are read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import cnnzoo
from cnnzoo.errors import CnnzooError
from cnnzoo.segmentation.tiling import predict_tiled
from cnnzoo.weights import Preprocessing


def _one_line_cnnzoo_error(call, *kinds: type[Exception]) -> str:
    with pytest.raises(CnnzooError) as exc:
        call()
    for kind in kinds:  # what `except ValueError` / `except TypeError` callers caught before
        assert isinstance(exc.value, kind), (type(exc.value).__mro__, kind)
    text = str(exc.value)
    assert text and "\n" not in text
    return text


def test_bad_images_and_batches_are_one_line_cnnzoo_errors_that_stay_value_or_type_errors():
    """A float image of 0..255, a (C, H, W) array, a list given as an image, a numpy or uint8
    batch given to a model: plain ValueError / TypeError, which a notebook's `except
    CnnzooError` (the library's documented base) let through. They are CnnzooErrors now, and
    still the ValueError or TypeError they were."""
    pre = Preprocessing.for_model(cnnzoo.create_model("lenet5", in_chans=1))
    grey = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    text = _one_line_cnnzoo_error(lambda: pre(grey.astype(np.float64)), ValueError)
    assert text.startswith("a float image must lie in [0, 1]")
    _one_line_cnnzoo_error(lambda: pre(grey.astype(np.int8)), ValueError)
    _one_line_cnnzoo_error(lambda: pre(np.stack([grey] * 3)), ValueError)  # (C, H, W) array
    _one_line_cnnzoo_error(lambda: pre(torch.zeros(1, 1, 32, 32)), ValueError)  # a batch
    _one_line_cnnzoo_error(lambda: pre(b"\x89PNG"), TypeError)

    net = cnnzoo.create_model("resnet18", num_classes=3).eval()
    x = np.zeros((1, 3, 32, 32), np.float32)
    _one_line_cnnzoo_error(lambda: net(x), TypeError)
    _one_line_cnnzoo_error(lambda: net(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)), TypeError)
    _one_line_cnnzoo_error(lambda: net(torch.zeros(1, 3, 32, 32, dtype=torch.float64)), TypeError)

    unet = cnnzoo.create_model("unet", num_classes=2, in_chans=1, padding="same", base_width=4)
    _one_line_cnnzoo_error(lambda: predict_tiled(unet, [[1, 2], [3, 4]]), TypeError)
    _one_line_cnnzoo_error(lambda: predict_tiled(unet, np.zeros((40, 50, 3), np.uint8)),
                           ValueError)


def test_predict_tiled_reads_pixel_values_as_bundle_predict_does():
    """predict_tiled divided uint8 by 255 but took every other type as it was: a microscope's
    uint16 frame reached the net as values up to 65535, and a float image of 0..255 (which
    Bundle.predict refuses) unscaled, each a confident mask of nonsense without a word. Now
    uint16 is scaled as a 16-bit file is (x / 257, to 8 bits), bool is 0 / 255, float must lie
    in [0, 1]: one picture, one mask, however it is passed."""
    torch.manual_seed(0)
    unet = cnnzoo.create_model("unet", num_classes=2, in_chans=1, padding="same",
                               base_width=4).eval()
    grey = np.random.default_rng(0).integers(0, 256, (40, 48), dtype=np.uint8)
    want = predict_tiled(unet, grey, tile=64, output="logits")
    # 257 x, the 16-bit file of the same picture: the same logits, bit for bit.
    frame = grey.astype(np.uint16) * 257
    assert torch.equal(predict_tiled(unet, frame, tile=64, output="logits"), want)
    unit = torch.from_numpy(grey).float() / 255  # what predict_tiled does to uint8, per tile
    assert torch.equal(predict_tiled(unet, unit, tile=64, output="logits"), want)
    mask = grey > 127
    assert torch.equal(predict_tiled(unet, mask, tile=64, output="logits"),
                       predict_tiled(unet, mask.astype(np.uint8) * 255, tile=64, output="logits"))
    with pytest.raises(CnnzooError, match=r"must lie in \[0, 1\].*not \[0.0, 255.0\]: divide"):
        predict_tiled(unet, grey.astype(np.float32), tile=64)
    with pytest.raises(ValueError, match="looks normalised already"):
        predict_tiled(unet, (unit - 0.5) / 0.25, tile=64)


def test_a_loader_and_a_trainer_print_what_they_hold_in_one_line():
    """A notebook cell ending in `train` or `trainer` printed `<cnnzoo.data.loader.BatchLoader
    object at 0x7f...>`: nothing of the images, batches or normalisation it was given. Both say
    it now in a line, the trainer only the settings changed from TrainConfig's defaults."""
    from cnnzoo.data import BatchLoader, default_augmentation
    from cnnzoo.engine.loop import TrainConfig, Trainer
    from cnnzoo.engine.task import ClassificationTask

    images = torch.zeros(100, 1, 8, 8, dtype=torch.uint8)
    labels = torch.zeros(100, dtype=torch.long)
    train = BatchLoader(images, labels, batch_size=32, shuffle=True, drop_last=True,
                        transform=default_augmentation("none", 32), mean=[0.3], std=[0.4])
    # 100 // 32 = 3 whole batches (drop_last); the validation loader keeps the 4th, of 4.
    assert repr(train) == ("BatchLoader(100 images 1x8x8 uint8, batch_size=32, 3 batches, "
                           "shuffle, drop_last, transform=Resize((32, 32)), mean=(0.3,), "
                           "std=(0.4,))")
    val = BatchLoader(images[:40], labels[:40], batch_size=40)
    assert repr(val) == "BatchLoader(40 images 1x8x8 uint8, batch_size=40, 1 batch)"
    model = cnnzoo.create_model("lenet5", num_classes=10, in_chans=1)
    trainer = Trainer(model, ClassificationTask(10, label_smoothing=0.1), train, val,
                      TrainConfig(epochs=8, lr=0.05), out_dir="runs/x")
    # 61,706: LeNet-5's published parameter count (README's table).
    assert repr(trainer) == ("Trainer(lenet5 (61,706 parameters), ClassificationTask(10 classes, "
                             "label_smoothing=0.1, monitor='loss'), train=3 batches of 32, "
                             "val=1 batch of 40, TrainConfig(epochs=8, lr=0.05), "
                             "out_dir='runs/x')")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"optimizer": "adam"}, "optimizer must be one of sgd, adamw, not 'adam'"),
    ({"schedule": "step"}, "schedule must be one of onecycle, cosine, constant, not 'step'"),
    ({"precision": "fp16"}, "precision must be one of auto, bf16, fp32, not 'fp16'"),
    ({"tta": "flips"}, "tta must be one of flip, flip-shift"),
    ({"epochs": -1}, "epochs must be a whole number >= 0, not -1"),
    ({"epochs": 2.5}, "epochs must be a whole number >= 0, not 2.5"),
    ({"log_every": 0}, "log_every must be a whole number of steps >= 1, not 0"),
    ({"lr": -0.1}, "lr must be a number >= 0, not -0.1"),
    ({"weight_decay": float("nan")}, "weight_decay must be a number >= 0, not nan"),
    ({"momentum": 1.5}, r"momentum must lie in \[0, 1\), not 1.5"),
    ({"grad_clip": 0}, r"grad_clip must be a gradient norm > 0 \(None: off\), not 0"),
    # A string is true whatever it says: freeze_bn='False' froze every BatchNorm layer.
    ({"freeze_bn": "False"}, "freeze_bn must be True or False, not 'False'"),
    ({"nesterov": "no"}, "nesterov must be True or False, not 'no'"),
    ({"restore_best": "yes"}, "restore_best must be True or False, not 'yes'"),
])
def test_train_config_refuses_what_the_command_line_refuses_when_it_is_built(kwargs, message):
    """TrainConfig(optimizer='adam') was accepted, and fit() raised a plain ValueError after
    loading and a precision trial; log_every=0 was a ZeroDivisionError at the first step;
    epochs=-1, lr=-1's neighbours weight_decay=nan or momentum=1.5 trained without a word.
    Each is now a one-line UsageError (a CnnzooError and a ValueError) when the config is made."""
    from cnnzoo.engine.loop import TrainConfig
    from cnnzoo.errors import UsageError

    with pytest.raises(UsageError, match=f"^TrainConfig: {message}"):
        TrainConfig(**kwargs)


def test_train_config_takes_numpy_numbers_and_its_documented_values():
    from cnnzoo.engine.loop import TrainConfig

    cfg = TrainConfig(epochs=np.int64(3), lr=np.float32(0.05), patience=0, tta=True,
                      grad_clip=1.0, momentum=0.0, optimizer="adamw", schedule="cosine",
                      freeze_bn=np.bool_(True), restore_best=None, nesterov=False)
    assert cfg.epochs == 3 and cfg.patience is None and cfg.freeze_bn


def test_batch_loader_takes_numpy_arrays_and_says_what_is_wrong_with_bad_ones():
    """Keras's (x_train, y_train) are numpy arrays: BatchLoader took them and failed at the
    first batch with "'numpy.ndarray' object has no attribute 'index_select'"; a mean of three
    numbers for grey images was torch's "shape '[1, 1, 1, 1]' is invalid for input of size 3",
    and Keras's channels-last images were batched as they were, for the model to refuse at the
    first step. Now numpy arrays are taken as the tensors they hold, and the rest is one line
    each, when the loader is made."""
    from cnnzoo.data import BatchLoader
    from cnnzoo.errors import UsageError

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 1, 4, 4), dtype=np.uint8)
    y = np.arange(10) % 2
    batches = list(BatchLoader(x, y, batch_size=4, mean=[0.5], std=[0.25]))
    xb, yb = batches[0]
    # (x / 255 - 0.5) / 0.25, computed here from the numbers themselves.
    expected = (torch.from_numpy(x[:4]).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(xb, expected)
    assert yb.tolist() == [0, 1, 0, 1] and [len(b[1]) for b in batches] == [4, 4, 2]
    with pytest.raises(UsageError, match=r"^mean needs one number per channel of the images "
                                         r"\(1\), not 3: \[0.485, 0.456, 0.406\]$"):
        BatchLoader(x, y, batch_size=4, mean=[0.485, 0.456, 0.406], std=[0.2] * 3)
    with pytest.raises(UsageError, match=r"look channels-last .*permute\(0, 3, 1, 2\)"):
        BatchLoader(rng.integers(0, 256, (10, 28, 28, 3), dtype=np.uint8), y, batch_size=4)
    with pytest.raises(ValueError, match="^10 images but 3 targets$"):  # a ValueError still
        BatchLoader(x, y[:3], batch_size=4)


def test_batch_loader_refuses_float_images_outside_0_1_as_every_reader_of_floats_does():
    """Keras's x_train.astype("float32") is 0..255: BatchLoader took it as [0, 1] images, and
    LeNet-5 trained on digits so given stayed at chance without a word (0.09 against 0.94 from
    the same images as uint8, 3 epochs). Bundle.predict, predict_tiled and the image readers
    refuse such floats (data.images.check_unit_range); the loader now does too."""
    from cnnzoo.data import BatchLoader
    from cnnzoo.errors import ImageError

    x = np.array([0, 64, 255], dtype=np.uint8).reshape(3, 1, 1, 1).repeat(4, 2).repeat(4, 3)
    y = np.arange(3)
    for images, said in (
            (x.astype(np.float32), "images: a float image must lie in [0, 1] (scikit-image's "
             "convention), not [0.0, 255.0]: divide it by 255, or pass uint8"),
            ((x / 255 - 0.5) / 0.25, "images: a float image must lie in [0, 1] (scikit-image's "
             "convention), not [-2.0, 2.0]: it looks normalised already: pass the image before "
             "normalising, or pass uint8")):
        assert _one_line_cnnzoo_error(lambda i=images: BatchLoader(i, y, batch_size=2),
                                      ImageError, ValueError) == said
    # Floats in [0, 1] are the same batch as the uint8 images they came from.
    as_float = next(iter(BatchLoader(x.astype(np.float32) / 255, y, batch_size=3)))[0]
    torch.testing.assert_close(as_float, next(iter(BatchLoader(x, y, batch_size=3)))[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras's torch backend, numpy 2
def test_a_keras_vgg_files_preprocessing_is_keras_preprocess_input_and_its_note_says_so(tmp_path):
    """Keras is the reference: `keras.applications.vgg16.preprocess_input` of a photo, turned
    from BGR to RGB, equals the loaded file's `preprocessing.normalize`, and the note printed
    when the file loads gives the means it subtracts. The note said 0.482 for the red mean,
    123.68 / 255 = 0.485 (the preprocessing itself was right)."""
    import re

    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras runs on another backend here")
    km = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10)  # 1x1 map
    path = tmp_path / "vgg16.weights.h5"
    km.save_weights(str(path))
    model = cnnzoo.create_model("vgg16", pool_size=1, weights=str(path))
    pre = model.weights_info.preprocessing
    photo = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ref = keras.ops.convert_to_numpy(
        keras.applications.vgg16.preprocess_input(photo[None].astype("float32")))[0]
    ours = pre.normalize(torch.from_numpy(photo).permute(2, 0, 1)).numpy()
    np.testing.assert_allclose(ours, ref[..., ::-1].transpose(2, 0, 1), atol=1e-3)
    note = next(n for n in model.weights_info.notes if "Caffe" in n)
    said = [float(v) for v in re.search(r"mean=\(([^)]*)\)", note).group(1).split(",")]
    # The means Keras subtracts from a black image, back on the 0..1 scale, in RGB order.
    black = keras.ops.convert_to_numpy(
        keras.applications.vgg16.preprocess_input(np.zeros((1, 1, 1, 3), "float32")))[0, 0, 0]
    assert said == pytest.approx(list(-black[::-1] / 255), abs=5e-4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"output": "labels"}, "output must be probs, logits or mask, not 'labels'"),
    ({"tile": 0}, "tile must be a whole number >= 1, not 0"),
    ({"margin": -1}, "margin must be a whole number >= 0, not -1"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1, not 0"),
    ({"mean": (0.5,)}, "mean and std go together"),
    ({"mean": (0.485, 0.456, 0.406), "std": (0.2, 0.2, 0.2)},
     r"mean needs one number per channel of the net \(1\), not \[0.485, 0.456, 0.406\]"),
    ({"tta": "flips"}, "unknown TTA 'flips': choose one of flip, flip-shift"),
])
def test_predict_tiled_refuses_settings_it_cannot_use_in_one_line(kwargs, message):
    """output='labels' returned logits, tile=0 and margin=-1 ran as if given sensible values,
    batch_size=0 was range()'s "arg 3 must not be zero", mean without std a TypeError, and an
    ImageNet mean for a grey net broadcast the image to three channels, which the net then
    refused as "got 3 channels: build the model with in_chans=3"."""
    from cnnzoo.errors import UsageError

    unet = cnnzoo.create_model("unet", num_classes=2, in_chans=1, padding="same", base_width=4)
    with pytest.raises(UsageError, match=f"^{message}"):
        predict_tiled(unet, np.zeros((20, 24), np.uint8), **{"tile": 64, **kwargs})


def test_predict_tiled_says_a_classifier_is_no_segmentation_net():
    from cnnzoo.errors import UsageError

    net = cnnzoo.create_model("resnet18", num_classes=4).eval()  # (N, 4): no map
    with pytest.raises(UsageError, match=r"needs a net that outputs a map .* shape \(4, 4\)$"):
        predict_tiled(net, np.zeros((3, 40, 40), np.uint8), tile=64)


def test_bundle_predict_and_decode_predictions_refuse_bad_input_as_cnnzoo_errors():
    """Bundle.predict(precision='fp16'), batch_size=0, a 1-D tensor, a channels-last batch,
    predict_loaded given a float batch, and decode_predictions given logits or top=0 raised
    plain ValueErrors, past a notebook's `except CnnzooError`."""
    from cnnzoo.transfer.bundle import Bundle
    from cnnzoo.weights import decode_predictions

    pre = Preprocessing(32, 32, "bilinear", (0.5,), (0.5,), 1)
    bundle = Bundle(cnnzoo.create_model("lenet5", num_classes=2, in_chans=1), "lenet5",
                    ["a", "b"], pre)
    grey = np.zeros((32, 32), np.uint8)
    assert bundle.predict(grey).probabilities.shape == (1, 2)  # the bundle itself works
    text = _one_line_cnnzoo_error(lambda: bundle.predict(grey, precision="fp16"), ValueError)
    assert text == "precision must be auto, bf16 or fp32, not 'fp16'"
    _one_line_cnnzoo_error(lambda: bundle.predict(grey, batch_size=0), ValueError)
    _one_line_cnnzoo_error(lambda: bundle.predict(torch.zeros(32, dtype=torch.uint8)),
                           ValueError)
    text = _one_line_cnnzoo_error(
        lambda: bundle.predict(torch.zeros(2, 32, 32, 1, dtype=torch.uint8)), ValueError)
    assert text.endswith("use images.permute(0, 3, 1, 2)")
    _one_line_cnnzoo_error(lambda: bundle.predict_loaded(torch.zeros(1, 1, 32, 32)), ValueError)
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    text = _one_line_cnnzoo_error(lambda: decode_predictions(logits, class_names=list("abc")),
                                  ValueError)
    assert text.endswith("pass model(x).softmax(1), not the logits")
    _one_line_cnnzoo_error(lambda: decode_predictions(logits.softmax(1), top=0), ValueError)


def test_trainer_checks_a_loaders_labels_before_training_and_takes_keras_integer_types():
    """A label at or above the task's class count was torch's "IndexError: Target 2 is out of
    bounds." at the first step, one-hot or float labels its "expected target dtype to be Long",
    and Keras's int32 labels (what np.arange and many loaders give) the same error although
    they are class indices. Out-of-range and float labels are now a one-line DataError when the
    Trainer is made; integer labels of any width train."""
    from cnnzoo.data import BatchLoader
    from cnnzoo.engine.loop import TrainConfig, Trainer
    from cnnzoo.engine.task import ClassificationTask
    from cnnzoo.errors import DataError

    x = np.random.default_rng(0).integers(0, 256, (12, 1, 32, 32), dtype=np.uint8)
    y = (np.arange(12) % 3).astype(np.int32)
    net = cnnzoo.create_model("lenet5", num_classes=2, in_chans=1)
    with pytest.raises(DataError, match=r"^train_loader holds label 2, outside the task's 2 "
                                        r"classes \(0..1\): .* num_classes=3, or check"):
        Trainer(net, ClassificationTask(2), BatchLoader(x, y, batch_size=4))
    one_hot = np.eye(3, dtype=np.float32)[y]
    with pytest.raises(DataError, match=r"class indices \(N,\), not torch.float32 \(12, 3\): "
                                        r"one-hot .* labels.argmax\(1\)$"):
        Trainer(net, ClassificationTask(2), BatchLoader(x, y % 2, batch_size=4),
                BatchLoader(x, one_hot, batch_size=4))
    loader = BatchLoader(x, y, batch_size=4)
    assert loader.targets.dtype == torch.int64 and loader.targets.tolist() == [0, 1, 2] * 4
    cfg = TrainConfig(epochs=1, precision="fp32", channels_last="off", progress=False,
                      verbose=False, tensorboard=False, report=False)
    three = cnnzoo.create_model("lenet5", num_classes=3, in_chans=1)
    result = Trainer(three, ClassificationTask(3), loader, loader, cfg).fit()
    assert result.accumulator.confusion.sum() == 12  # every image scored once


def test_trainer_arguments_of_the_wrong_kind_are_one_line_errors_before_any_training():
    """Trainer(net, 'classification', train) was "'str' object has no attribute 'name'",
    config={'epochs': 1} "'dict' object has no attribute 'mixup'", and Trainer(net, task,
    train, cfg) -- the config in the validation loader's place -- trained a default run of 10
    epochs for one epoch, then stopped with "'TrainConfig' object is not iterable"."""
    from cnnzoo.data import BatchLoader
    from cnnzoo.engine.loop import TrainConfig, Trainer
    from cnnzoo.engine.task import ClassificationTask

    x = np.zeros((8, 1, 32, 32), dtype=np.uint8)
    loader = BatchLoader(x, np.arange(8) % 2, batch_size=4)
    net, task, cfg = cnnzoo.create_model("lenet5", num_classes=2, in_chans=1), \
        ClassificationTask(2), TrainConfig(epochs=1)
    for args, kwargs, said in (
            ((net, "classification", loader), {}, "task must be a task object, "
             "ClassificationTask(num_classes) or SegmentationTask(num_classes), not the str "
             "'classification'"),
            ((net, task, loader), {"config": {"epochs": 1}},
             "config must be a TrainConfig, not a dict: TrainConfig(**config)"),
            ((net, task, loader, cfg), {}, "a TrainConfig was given as the validation loader: "
             "pass it as config=..., Trainer(model, task, train_loader, config=cfg) (the "
             "validation loader, if any, comes before it)"),
            (("lenet5", task, loader), {}, "model must be a torch nn.Module such as "
             "cnnzoo.create_model('lenet5', num_classes=10), not the str 'lenet5'"),
            ((net, task, None), {}, "train_loader must be a BatchLoader (or any iterable of "
             "(inputs, targets) batches), not None")):
        assert _one_line_cnnzoo_error(lambda a=args, k=kwargs: Trainer(*a, **k), TypeError) \
            == said
    # Any iterable of batches is still a loader, and the config goes by keyword or fifth.
    assert Trainer(net, task, [(torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.long))],
                   None, cfg).config is cfg


def test_a_model_or_a_number_given_for_a_name_is_a_cnnzoo_error_and_still_a_type_error():
    """list_models(3) said "'int' object is not iterable", and create_model(net) a plain
    TypeError; both are one-line CnnzooErrors now, still TypeErrors."""
    text = _one_line_cnnzoo_error(lambda: cnnzoo.list_models(3), TypeError)
    assert text == "pattern must be a string or a list of strings, not 3"
    net = cnnzoo.create_model("lenet5")
    text = _one_line_cnnzoo_error(lambda: cnnzoo.create_model(net), TypeError)
    assert text.endswith("not a LeNet5: a model's own is model.default_cfg")
    # Several patterns, as timm takes them, from any iterable.
    assert cnnzoo.list_models(p for p in ("vgg11", "lenet5")) == ["lenet5", "vgg11"]


def test_an_unknown_segmentation_loss_is_a_cnnzoo_error():
    """train('cells', loss='focal') and SegmentationTask(2, loss='focal') raised a plain
    ValueError; now a UsageError naming the losses there are."""
    from cnnzoo.segmentation.task import SegmentationTask

    text = _one_line_cnnzoo_error(lambda: SegmentationTask(2, loss="focal"), ValueError)
    assert text == "unknown loss 'focal'; choose one of ce, dice, ce+dice, weighted_ce"


def test_a_frozen_model_and_class_weights_of_another_length_are_cnnzoo_errors():
    """Freezing a whole net (Keras's backbone.trainable = False, the new head forgotten) made
    fit() raise a plain ValueError, and so did ClassificationTask given two class weights for
    three classes; both are one-line UsageErrors now, the first saying what to unfreeze."""
    from cnnzoo.data import BatchLoader
    from cnnzoo.engine.loop import TrainConfig, Trainer
    from cnnzoo.engine.task import ClassificationTask

    net = cnnzoo.create_model("lenet5", num_classes=2, in_chans=1)
    net.requires_grad_(False)
    loader = BatchLoader(torch.zeros(4, 1, 32, 32, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]),
                         batch_size=2)
    cfg = TrainConfig(epochs=1, precision="fp32", channels_last="off", progress=False,
                      verbose=False, tensorboard=False, report=False)
    text = _one_line_cnnzoo_error(lambda: Trainer(net, ClassificationTask(2), loader,
                                                  config=cfg).fit(), ValueError)
    assert text.startswith("no trainable parameters: every parameter is frozen")
    _one_line_cnnzoo_error(lambda: ClassificationTask(3, class_weights=[1.0, 2.0]), ValueError)


def test_the_library_s_training_functions_write_nothing_to_stdout_by_default(
        two_class_folder, capsys):
    """train_classifier, the U-Net's train and fine-tuning's finetune defaulted to say=print:
    called from a notebook or a script, every data, precision and epoch line (and the per-class
    table) went to stdout, among the caller's own output, while transfer() and Trainer.fit send
    theirs to stderr. Now they all do: stdout stays the caller's."""
    from cnnzoo.data import Splits, load_dataset
    from cnnzoo.engine.loop import TrainConfig
    from cnnzoo.engine.run import DataOptions, train_classifier
    from cnnzoo.segmentation.training import train
    from cnnzoo.transfer import FinetuneConfig
    from cnnzoo.transfer.finetune import finetune as run_finetune

    quick = dict(precision="fp32", channels_last="off", progress=False, tensorboard=False,
                 report=False)
    data = two_class_folder(8)
    train_classifier("lenet5", DataOptions(str(data)), TrainConfig(epochs=1, **quick),
                     out_dir=None)
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("data: ") and "epoch 1/1" in err

    train("cells", cells=4, crop=32, batch_size=2, base_width=4, config=TrainConfig(
        epochs=1, **quick))
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("data: cells") and "epoch 1/1" in err

    splits = load_dataset(str(data), progress=False)
    net = cnnzoo.create_model("resnet18", num_classes=2)  # the folder loads as RGB
    pre = Preprocessing(32, 32, "bilinear", (0.5,) * 3, (0.5,) * 3, 3, fit="resize")
    run_finetune(net, Splits(splits.train, splits.val), pre, FinetuneConfig(
        head_epochs=1, epochs=0, batch_size=8, progress=False, precision="fp32",
        channels_last="off"), out_dir=None)
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("fine-tune 1/1: the new head alone")


def test_the_finetune_submodule_is_the_module_and_runs_as_its_function(monkeypatch):
    """cnnzoo.transfer re-exported the function finetune under its submodule's name, which
    hid the module: `import cnnzoo.transfer.finetune as ft` gave the function, so
    `ft.FinetuneConfig` (and `cnnzoo.transfer.finetune.default_sam`) was an AttributeError.
    The module is now callable as the function: both spellings work."""
    import importlib
    import inspect
    import types

    import cnnzoo.transfer.finetune as ft
    from cnnzoo.transfer import FinetuneConfig, finetune

    module = importlib.import_module("cnnzoo.transfer.finetune")
    assert ft is module and finetune is module and isinstance(ft, types.ModuleType)
    assert ft.FinetuneConfig is FinetuneConfig and cnnzoo.transfer.finetune.default_sam(3, 1) == 0.05
    # Called, it is the function: its parameters, its own errors.
    assert list(inspect.signature(finetune).parameters)[:4] == ["model", "splits", "pre", "cfg"]
    with pytest.raises(TypeError, match=r"finetune\(\) missing 4 required positional"):
        finetune()
    assert callable(cnnzoo.transfer) and inspect.signature(cnnzoo.transfer).parameters["data"]
    # The call looks the function up when it is made: patching it patches the call.
    monkeypatch.setattr(ft, "finetune", lambda *args, **kwargs: ("patched", args))
    assert finetune(1, 2) == ("patched", (1, 2))


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(batch_size=0), "DataOptions: batch_size must be a whole number >= 1 (None: the default), not 0"),
    (dict(img_size=32.5), "DataOptions: img_size must be a whole number >= 1 (None: the default), not 32.5"),
    (dict(val_fraction=2), "DataOptions: val_fraction must lie strictly between 0 and 1, not 2"),
    (dict(channels=2), "DataOptions: channels must be 1, 3 or None (the data's own), not 2"),
    (dict(augment="flip"), "DataOptions: augment must be one of none, flip-crop, crop, photo "
                           "(None: the data's default), not 'flip'"),
    (dict(erase=1.5), "DataOptions: erase is a probability in [0, 1], not 1.5"),
    (dict(progressive=(20,)), "DataOptions: progressive must be (size, epochs), two whole "
                              "numbers >= 1, not (20,)"),
])
def test_data_options_refuse_what_the_command_line_refuses_when_they_are_built(kwargs, message):
    """train_classifier(..., DataOptions(...)) from a notebook: batch_size=0 was a
    ZeroDivisionError, val_fraction=2 and channels=2 plain ValueErrors, each after the data
    had loaded and the first lines were printed. DataOptions now refuses them when built, as
    TrainConfig does, in one UsageError line."""
    from cnnzoo.engine.run import DataOptions

    assert _one_line_cnnzoo_error(lambda: DataOptions("digits", **kwargs), ValueError) == message
    DataOptions("digits", batch_size=8, img_size=32, val_fraction=0.5, channels=1, augment="crop",
                erase=0.5, progressive=(20, 2))  # the documented values pass
    # and numpy's numbers, as TrainConfig takes them (a grid search's np.int64 batch size)
    opts = DataOptions("digits", batch_size=np.int64(8), img_size=np.int32(32),
                       val_fraction=np.float32(0.5), erase=np.float64(0.5))
    assert (opts.batch_size, opts.img_size, opts.val_fraction) == (8, 32, 0.5)
    assert type(opts.batch_size) is int and type(opts.val_fraction) is float  # for its JSON


def test_a_label_smoothing_outside_0_1_is_refused_before_the_data_load(tmp_path, capsys):
    """label_smoothing=2 was torch's RuntimeError at the first training step, after the data
    load, the precision trial and the first lines; train_classifier and ClassificationTask
    now refuse it in one line first."""
    from cnnzoo.engine.loop import TrainConfig
    from cnnzoo.engine.run import DataOptions, train_classifier
    from cnnzoo.engine.task import ClassificationTask

    text = _one_line_cnnzoo_error(lambda: train_classifier(
        "lenet5", DataOptions(str(tmp_path / "none yet")), TrainConfig(epochs=1), out_dir=None,
        label_smoothing=2), ValueError)
    assert text == "label_smoothing must lie in [0, 1), not 2" and capsys.readouterr().err == ""
    _one_line_cnnzoo_error(lambda: ClassificationTask(3, label_smoothing=-0.1), ValueError)


def test_the_data_layer_s_bad_arguments_are_one_line_cnnzoo_errors():
    """load_dataset(val_fraction=2), ImageDataset with a label past its class names,
    subset(per_class=0), with_channels(2), load_image(channels=2) and PadCrop(mode='x') raised
    plain ValueErrors, which a notebook's `except CnnzooError` let through; ImageSpec(channels=2)
    or method='center' were taken and failed at the first image (or never, with size=None).
    Each is now a one-line CnnzooError that is still a ValueError."""
    from cnnzoo.data import ImageDataset, ImageSpec, load_dataset, load_image
    from cnnzoo.data.augment import PadCrop

    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    data = ImageDataset(images, torch.tensor([0, 1, 0, 1]), ["a", "b"])
    assert _one_line_cnnzoo_error(lambda: load_dataset("digits", val_fraction=2), ValueError) == (
        "val_fraction must lie strictly between 0 and 1, not 2")
    assert _one_line_cnnzoo_error(lambda: ImageDataset(images, torch.tensor([0, 1, 0, 2]),
                                                       ["a", "b"]), ValueError) == (
        "labels must lie in [0, 2): one index per class name, not 0..2")
    _one_line_cnnzoo_error(lambda: data.subset(per_class=0), ValueError)
    assert _one_line_cnnzoo_error(lambda: data.with_channels(2), ValueError) == (
        "channels must be 1 or 3, not 2")
    _one_line_cnnzoo_error(lambda: load_image("any.png", channels=2), ValueError)
    _one_line_cnnzoo_error(lambda: PadCrop(mode="x"), ValueError)
    assert _one_line_cnnzoo_error(lambda: ImageSpec(channels=2), ValueError) == (
        "ImageSpec: channels must be 1 or 3, not 2")
    _one_line_cnnzoo_error(lambda: ImageSpec(size=32, method="center"), ValueError)
    # A net of 2 input channels: no image file decodes to that (the same kind of mistake).
    two = Preprocessing.for_model(cnnzoo.create_model("lenet5", in_chans=2))
    _one_line_cnnzoo_error(lambda: two(np.zeros((32, 32), np.uint8)), ValueError)
    assert data.with_channels(3).channels == 3 and ImageSpec(32, 1, "crop").channels == 1


def test_unknown_keywords_and_a_bundle_folder_of_the_wrong_kind_are_cnnzoo_errors():
    """transfer(data, epochs=3), transfer(data, foo=1), the U-Net's train(data, foo=1) and
    load_bundle(None) raised plain TypeErrors, which `except CnnzooError` (the README's bad
    input: 'an unknown model or option') let through. They are one-line CnnzooErrors now, and
    still TypeErrors, as Python's own for an unknown keyword is."""
    from cnnzoo.segmentation.training import train

    text = _one_line_cnnzoo_error(lambda: cnnzoo.transfer("DATA", epochs=3), TypeError)
    assert text == ("transfer(): 'epochs' is a fine-tuning setting: pass "
                    "finetune=FinetuneConfig(epochs=...)")
    text = _one_line_cnnzoo_error(lambda: cnnzoo.transfer("DATA", modle="x"), TypeError)
    assert text.startswith("transfer() got an unexpected keyword argument 'modle' (did you mean")
    assert _one_line_cnnzoo_error(lambda: train("cells", foo=1), TypeError) == (
        "unknown TrainConfig fields: foo")
    assert _one_line_cnnzoo_error(lambda: cnnzoo.load_bundle(None), TypeError) == (
        "expected the bundle's folder (a str or Path), not NoneType")


def test_a_transfer_result_prints_as_the_command_s_summary_line():
    """A notebook cell ending in `result` printed the dataclass whole: the metrics dict with the
    L2 search's rows of full-precision floats (about 1,500 characters for one features run).
    It prints the line `cnnzoo transfer` ends with now, the time, the bundle and the folder."""
    from cnnzoo.transfer import Bundle, TransferResult

    net = cnnzoo.create_model("lenet5", num_classes=2, in_chans=1)
    bundle = Bundle(net, "lenet5", ["bag", "coat"], Preprocessing.for_model(net),
                    metrics={"val_acc": 0.96})
    cv = [{"l2": 10.0 ** k, "cv_acc": 0.8, "cv_loss": 0.7168691303259249} for k in range(-4, 1)]
    metrics = {"features": {"val_acc": 0.95, "val_balanced_acc": 0.9475, "cv": cv},
               "finetune": {"val_acc": 0.96, "val_balanced_acc": 0.955}, "kept": "finetune",
               "val_acc": 0.96, "val_balanced_acc": 0.955}
    result = TransferResult(bundle, Path("runs/parts"), metrics, {"load": 0.75, "head": 8.3})
    assert repr(result) == (
        "TransferResult(validation accuracy features 0.950 (balanced 0.948), finetune 0.960 "
        "(balanced 0.955); kept finetune; 9.1 s; bundle=Bundle(lenet5, 2 classes (bag, coat), "
        "32 px, val_acc 0.960), out_dir='runs/parts')")


def test_a_transfer_result_holds_the_per_class_numbers_the_command_prints(capsys):
    """transfer(..., out=None) from a notebook printed no per-class table and kept no confusion
    matrix: precision and recall per class, which `cnnzoo transfer` prints, were nowhere in the
    result. result.accumulator has them, as FitResult's and Bundle.evaluate's do, and the
    table is shown (`show`) whether or not a report is written."""
    from cnnzoo.data import Splits, load_fashion_mnist

    data = load_fashion_mnist("test").subset(per_class=6, classes=["bag", "coat", "dress"],
                                             seed=1)
    train, val = data.split(0.5, seed=0)
    shown: list[str] = []
    res = cnnzoo.transfer(Splits(train, val), model="resnet18", weights=None, mode="features",
                          img_size=32, fit="resize", views=1, use_cache=False, progress=False,
                          l2=0.1, show=shown.append)  # a fixed L2: no cross-validation
    predicted = res.val_probabilities.argmax(1)
    by_hand = torch.zeros(3, 3, dtype=torch.int64)
    for true, guess in zip(val.labels.tolist(), predicted.tolist(), strict=True):
        by_hand[true, guess] += 1
    assert torch.equal(res.accumulator.confusion.long(), by_hand)
    recall = [by_hand[k, k].item() / by_hand[k].sum().item() for k in range(3)]
    assert res.accumulator.per_class()["recall"] == pytest.approx(recall)
    assert res.accumulator.balanced()["balanced_acc"] == pytest.approx(
        res.metrics["val_balanced_acc"]) == pytest.approx(sum(recall) / 3)
    assert "accumulator" not in repr(res)
    # and the table the command prints is shown, though nothing is written
    assert shown[0].split() == ["class", "precision", "recall", "support"]
    rows = {line.split()[0]: line.split() for line in shown[1:4]}
    assert [rows[name][2] for name in val.class_names] == [f"{r:.3f}" for r in recall]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(crop=0), "crop must be a whole number >= 1, not 0"),
    (dict(crop=2.5), "crop must be a whole number >= 1, not 2.5"),
    (dict(crop=np.int64(0)), "crop must be a whole number >= 1, not np.int64(0)"),  # numpy's too
    (dict(val_fraction=3), "val_fraction must lie strictly between 0 and 1, not 3"),
    (dict(w0=-1), "w0 must be a number >= 0, not -1"),
    (dict(sigma=0), "sigma must be a border width in pixels > 0, not 0"),
    (dict(elastic=-1), "elastic must be a number >= 0, not -1"),
    (dict(jitter=1.5), "jitter must lie in [0, 1) (0: off), not 1.5"),
    (dict(cells=0), "cells must be a whole number >= 1 (None: 200), not 0"),
    (dict(count_instances="yes"), "count_instances must be True, False or None (when there are "
                                  "two classes), not 'yes'"),
])
def test_the_unet_train_refuses_settings_the_command_line_refuses_before_the_data(
        kwargs, message, capsys):
    """The U-Net's train() from Python took crop=0 (a run on a snapped tile), val_fraction=3,
    a negative w0 or elastic and count_instances='yes' without a word, and sigma=0 made the
    border weights infinite (a divide-by-zero warning, then a NaN loss). Each is now one
    UsageError line before anything is loaded or printed."""
    from cnnzoo.segmentation.training import train

    assert _one_line_cnnzoo_error(lambda: train("cells", loss="weighted_ce", **kwargs),
                                  ValueError) == message
    assert capsys.readouterr().err == ""


def test_predictions_print_each_image_s_answer_not_the_whole_tensor():
    """A notebook cell ending in bundle.predict(files) printed the named tuple whole: every
    predicted name and the (N, K) tensor in exponent notation, thousands of lines for a
    folder. It prints the first 8 answers with their probabilities, and the shapes."""
    from cnnzoo.transfer import Predictions

    names = ["bag", "coat", "T-Shirt, kurz"]
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.1, 0.2, 0.7]])
    assert repr(Predictions(["bag", "coat", "T-Shirt, kurz"], probs, names)) == (
        "Predictions(3 images: bag 0.90, coat 0.60, 'T-Shirt, kurz' 0.70; probabilities (3, 3) "
        "over 3 classes (bag, coat, 'T-Shirt, kurz'))")
    many = Predictions(["bag"] * 10, probs[:1].repeat(10, 1), names)
    assert repr(many) == ("Predictions(10 images: " + ", ".join(["bag 0.90"] * 8) + ", ...; "
                          "probabilities (10, 3) over 3 classes (bag, coat, 'T-Shirt, kurz'))")
    assert many.classes == ["bag"] * 10 and many[1] is many.probabilities  # still the tuple


def test_list_models_names_the_tasks_instead_of_listing_nothing_for_a_misspelt_one():
    """list_models(task='segmentaton') returned [] without a word, as if the zoo had no such
    model, and its docstring did not name the parameter; now a misspelt task is one line that
    names the two there are."""
    assert cnnzoo.list_models(task="segmentation") == ["unet"]
    assert "resnet18" in cnnzoo.list_models("res*", task="classification")
    assert _one_line_cnnzoo_error(lambda: cnnzoo.list_models(task="segmentaton"), ValueError) == (
        "task must be one of classification, segmentation (None: all), not 'segmentaton'")


@pytest.mark.parametrize("name", ["create_model", "get_config", "list_models", "load_bundle",
                                  "transfer"])
def test_help_of_each_top_level_function_names_every_parameter(name):
    """help(cnnzoo.create_model) said nothing of its **kwargs (the model's options, the way to
    build resnet20 without shortcuts), nor help(cnnzoo.transfer) of model_kwargs or
    help(cnnzoo.list_models) of task: a notebook user reads the signature's names in the
    docstring, so each must be there."""
    import inspect

    function = getattr(cnnzoo, name)
    doc = inspect.getdoc(function.__call__ if name == "transfer" else function)
    for parameter in inspect.signature(function).parameters:
        assert parameter in doc, (name, parameter)


def test_every_public_class_and_function_has_its_own_docstring():
    """help(cnnzoo.weights.Prediction), what decode_predictions returns, showed the named
    tuple's generated 'Prediction(index, name, probability)' and nothing of what index is or
    how it unpacks as Keras's tuples do. Every class and function in the public modules'
    __all__ has a docstring of its own now (type aliases such as BatchTransform have none to
    give)."""
    import importlib
    import inspect

    for module_name in ("cnnzoo", "cnnzoo.models", "cnnzoo.transfer", "cnnzoo.weights",
                        "cnnzoo.data", "cnnzoo.data.augment", "cnnzoo.segmentation"):
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            assert doc and not doc.startswith(f"{name}("), f"{module_name}.{name}"


def test_the_segmentation_package_names_what_docs_segmentation_calls_from_python():
    """cnnzoo.segmentation had no __init__.py: a namespace package, help() of it said nothing,
    and it had no __all__. It has a docstring now, and every name docs/segmentation.md imports
    from its modules is in its __all__, the same object; importing it does not import torch."""
    import importlib
    import os
    import re
    import subprocess
    import sys

    import cnnzoo.segmentation as seg

    docs = (Path(__file__).parents[1] / "docs" / "segmentation.md").read_text()
    imports = re.findall(r"from cnnzoo\.segmentation\.(\w+) import ([\w, ]+)", docs)
    assert len(imports) >= 4  # (training, tiling, data, task)
    for module, names in imports:
        for name in (n.strip() for n in names.split(",")):
            assert name in seg.__all__, name
            assert getattr(seg, name) is getattr(
                importlib.import_module(f"cnnzoo.segmentation.{module}"), name)
    assert seg.__file__ and seg.__file__.endswith("__init__.py")
    assert "predict_tiled" in (seg.__doc__ or "") and set(seg.__all__) <= set(dir(seg))
    code = ("import sys, cnnzoo.segmentation as s; "
            "print('torch' in sys.modules, s.__file__ is not None)")
    src = str(Path(cnnzoo.__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": src})
    assert out.stdout.split() == ["False", "True"]


def test_a_numpy_batch_without_channels_last_is_refused_with_advice_that_fits_a_batch():
    """Keras's Fashion-MNIST x_test is (N, 28, 28) uint8. Given to bundle.predict, (3, 28, 28)
    was read as one image and the error advised x.transpose(1, 2, 0), which makes the three
    grey images one RGB picture (one answer for three images); an (N, 1, 28, 28) array was
    taken apart into images and each refused with that same advice. Now the error says how to
    pass each as a batch, and the advice works: x[..., None] gives the answers of the images
    one by one."""
    from cnnzoo.transfer import Bundle

    net = cnnzoo.create_model("lenet5", num_classes=2, in_chans=1).eval()
    bundle = Bundle(net, "lenet5", ["bag", "coat"], Preprocessing.for_model(net), fit="resize",
                    views=1)
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    text = _one_line_cnnzoo_error(lambda: bundle.predict(x), ValueError)
    assert text == ("expected an image array (H, W) or (H, W, C), or a batch (N, H, W, C), not "
                    "(3, 28, 28): for 3 grey images pass x[..., None], (N, H, W, 1); for one "
                    "(C, H, W) image, x.transpose(1, 2, 0)")
    one_by_one = torch.cat([bundle.predict(image).probabilities for image in x])
    assert torch.equal(bundle.predict(x[..., None]).probabilities, one_by_one)
    text = _one_line_cnnzoo_error(lambda: bundle.predict(x[:, None]), ValueError)
    assert text.endswith("for a (N, C, H, W) batch pass x.transpose(0, 2, 3, 1), or "
                         "torch.from_numpy(x)")
