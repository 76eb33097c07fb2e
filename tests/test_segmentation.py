"""U-Net segmentation (issue 7): the border weight map, Dice/IoU, paired augmentation, the
overlap-tile strategy, image/mask pairs, and the `train --task segmentation` / `segment` CLI.

Independent truth: values worked out by hand from the paper's formula and the metric
definitions, brute-force numpy re-computations, and whole-image predictions of the same net.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.cli import main
from cnnzoo.data.augment import ElasticDeform, HorizontalFlip, RandomCrop, RandomRot90
from cnnzoo.data.cells import make_cells, semantic_from_instances
from cnnzoo.data.masks import IGNORE_INDEX, holds_mask_pairs, load_mask_pairs
from cnnzoo.errors import DataError
from cnnzoo.models import create_model
from cnnzoo.segmentation.data import (
    PadToNet,
    PairedTransform,
    SegmentationSet,
    load_segmentation,
    stack_pairs,
    train_transform,
)
from cnnzoo.segmentation.losses import segmentation_loss, unet_weight_map
from cnnzoo.segmentation.metrics import SegmentationAccumulator, confusion_matrix, dice_iou
from cnnzoo.segmentation.tiling import mirror_indices, predict_tiled

# ----------------------------------------------------------------------------- weight map


def test_weight_map_two_cells_matches_hand_computed_values():
    # Two one-pixel cells at (0, 0) and (0, 4) of a 3 x 5 image; w_c given as 1 everywhere.
    inst = np.zeros((3, 5), dtype=np.int32)
    inst[0, 0], inst[0, 4] = 1, 2
    mask = (inst > 0).astype(np.uint8)
    w = unet_weight_map(inst, mask, class_weights=[1.0, 1.0], w0=10.0, sigma=5.0)
    # Pixel (2, 2): d1 = d2 = sqrt(8); w = 1 + 10 exp(-(2 sqrt 8)^2 / 50) = 1 + 10 exp(-0.64).
    assert w[2, 2] == pytest.approx(1 + 10 * math.exp(-0.64), abs=1e-5)
    assert w[2, 2] == pytest.approx(6.272924, abs=1e-5)
    # Pixel (1, 1): d1 = sqrt(2) (cell 1), d2 = sqrt(10) (cell 2).
    s = math.sqrt(2) + math.sqrt(10)
    assert w[1, 1] == pytest.approx(1 + 10 * math.exp(-(s**2) / 50), abs=1e-5)
    # Pixel (0, 2), midway: d1 = d2 = 2 -> 1 + 10 exp(-16 / 50).
    assert w[0, 2] == pytest.approx(1 + 10 * math.exp(-0.32), abs=1e-5)
    # Cell pixels get w_c only (the border term is on the background between cells).
    assert w[0, 0] == pytest.approx(1.0) and w[0, 4] == pytest.approx(1.0)

    # Brute force over every pixel, straight from Eq. 2.
    cells = [np.argwhere(inst == k) for k in (1, 2)]
    for y in range(3):
        for x in range(5):
            if mask[y, x]:
                continue
            d = sorted(np.hypot(c[:, 0] - y, c[:, 1] - x).min() for c in cells)
            want = 1 + 10 * math.exp(-((d[0] + d[1]) ** 2) / 50)
            assert w[y, x] == pytest.approx(want, abs=1e-5)


def test_weight_map_class_balance_and_single_cell():
    inst = np.zeros((3, 5), dtype=np.int32)
    inst[0, 0], inst[0, 4] = 1, 2
    mask = (inst > 0).astype(np.uint8)
    w = unet_weight_map(inst, mask, w0=0.0)
    # w_c(k) = N / (K n_k): 15 pixels, 13 background, 2 cell.
    assert w[1, 1] == pytest.approx(15 / (2 * 13), abs=1e-6)
    assert w[0, 0] == pytest.approx(15 / (2 * 2), abs=1e-6)
    # One cell has no second nearest cell: no border term at all.
    one = np.where(inst == 2, 0, inst)
    w1 = unet_weight_map(one, (one > 0).astype(np.uint8), class_weights=[1.0, 1.0])
    np.testing.assert_allclose(w1, np.ones((3, 5)), atol=1e-6)


def test_weighted_ce_is_weight_mean_times_log2_for_uniform_logits():
    mask = torch.tensor([[[0, 1], [1, 0]]])
    weight = torch.tensor([[[1.0, 2.0], [3.0, 6.0]]])
    target = torch.stack([mask.float(), weight], 1)  # (N, 2, H, W)
    logits = torch.zeros(1, 2, 2, 2)
    loss = segmentation_loss(logits, target, "weighted_ce")
    assert float(loss) == pytest.approx(3.0 * math.log(2), abs=1e-6)


def test_valid_mode_loss_crops_the_mask_to_the_output():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 4)
    mask = torch.randint(0, 3, (2, 8, 8))
    loss = segmentation_loss(logits, mask, "ce")
    want = torch.nn.functional.cross_entropy(logits, mask[:, 2:6, 2:6])
    assert float(loss) == pytest.approx(float(want), abs=1e-6)


@pytest.mark.parametrize("kind", ["ce", "dice", "ce+dice", "weighted_ce"])
def test_losses_of_ignored_pixels_count_nowhere(kind):
    # Every pixel predicts p = (1/4, 3/4): logits (0, ln 3).
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 1] = math.log(3)
    mask = torch.tensor([[[0, 1], [255, 255]]])  # two labelled pixels, two ignored (VOC)
    weight = torch.tensor([[[2.0, 3.0], [0.0, 0.0]]])

    def target(m):
        return torch.stack([m.float(), weight], 1) if kind == "weighted_ce" else m

    ce0, ce1 = math.log(4), math.log(4 / 3)  # -ln p of the true class
    # soft Dice (smooth 1) over the labelled pixels: class 0 (2/4 + 1) / (1/2 + 1 + 1),
    # class 1 (6/4 + 1) / (3/2 + 1 + 1)
    dice = 1 - (1.5 / 2.5 + 2.5 / 3.5) / 2
    want = {"ce": (ce0 + ce1) / 2, "dice": dice, "ce+dice": (ce0 + ce1) / 2 + dice,
            "weighted_ce": (2 * ce0 + 3 * ce1) / 2}[kind]
    assert float(segmentation_loss(logits, target(mask), kind)) == pytest.approx(want, abs=1e-6)
    # No labelled pixel at all (a crop of an unlabelled region): zero, not NaN, and backward
    # works (it stopped training with "loss became NaN/inf ... lower --lr").
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    none = torch.full((2, 8, 8), IGNORE_INDEX)
    t = torch.stack([none.float(), torch.zeros(2, 8, 8)], 1) if kind == "weighted_ce" else none
    loss = segmentation_loss(x, t, kind)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


def test_class_weighted_ce_is_torchs_weighted_mean_and_zero_when_all_ignored():
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 1] = math.log(3)
    mask = torch.tensor([[[0, 1], [255, 255]]])
    w = torch.tensor([1.0, 3.0])
    want = (1 * math.log(4) + 3 * math.log(4 / 3)) / (1 + 3)
    got = segmentation_loss(logits, mask, "ce", class_weights=w)
    assert float(got) == pytest.approx(want, abs=1e-6)
    none = torch.full((1, 2, 2), IGNORE_INDEX)
    assert float(segmentation_loss(logits, none, "ce", class_weights=w)) == 0.0


# ----------------------------------------------------------------------------- metrics


def test_dice_iou_hand_computed():
    truth = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    pred = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    cm = confusion_matrix(pred, truth, 2)
    assert cm.tolist() == [[5, 1], [1, 2]]
    dice, iou = dice_iou(cm)
    # cell: TP 2, FP 1, FN 1 -> Dice 4/6, IoU 2/4; background: TP 5, FP 1, FN 1.
    assert dice.tolist() == pytest.approx([10 / 12, 4 / 6])
    assert iou.tolist() == pytest.approx([5 / 7, 2 / 4])


def test_empty_mask_conventions():
    empty = torch.zeros(3, 3, dtype=torch.long)
    some = empty.clone()
    some[1, 1] = 1
    # Absent from truth and prediction: 1 (nothing to find, nothing wrongly found).
    d, j = dice_iou(confusion_matrix(empty, empty, 2))
    assert d[1] == 1 and j[1] == 1
    # Absent from the truth but predicted: 0.  Present but not predicted: 0.
    d, j = dice_iou(confusion_matrix(some, empty, 2))
    assert d[1] == 0 and j[1] == 0
    d, j = dice_iou(confusion_matrix(empty, some, 2))
    assert d[1] == 0 and j[1] == 0
    # Ignored pixels (255) count nowhere.
    truth = some.clone()
    truth[0, 0] = 255
    pred = some.clone()
    pred[0, 0] = 1
    assert confusion_matrix(pred, truth, 2).sum() == 8


def test_accumulator_sums_over_the_set_not_a_mean_of_images():
    # Image A: 1 true cell pixel, found. Image B: 8 true, 4 found, 0 false positives.
    ta = torch.zeros(4, 4, dtype=torch.long)
    ta[0, 0] = 1
    tb = torch.zeros(4, 4, dtype=torch.long)
    tb[:2] = 1
    pb = torch.zeros(4, 4, dtype=torch.long)
    pb[0] = 1
    logits = torch.stack([torch.stack([1 - x, x]).float() for x in (ta, pb)])
    acc = SegmentationAccumulator(2, ["bg", "cell"])
    acc.update(logits[:1], ta[None], torch.tensor(0.5))
    acc.update(logits[1:], tb[None], torch.tensor(1.5))
    m = acc.compute()
    assert m["iou"] == pytest.approx(5 / 9)  # (1 + 4) / (1 + 8); per-image mean would be 0.75
    assert m["dice"] == pytest.approx(10 / 14)
    assert m["pixel_acc"] == pytest.approx(28 / 32)
    assert m["loss"] == pytest.approx(1.0)


def test_the_metrics_are_smps_reductions_that_docs_segmentation_names():
    """docs/segmentation.md maps the metrics to segmentation_models_pytorch's reductions; they
    said 'micro' for all, which for three or more classes is smp's pooled score (a function of
    the pixel accuracy), not the mean over classes `iou` is. smp's get_stats and reductions
    are written out here from its documentation (zero_division=1)."""
    rng = np.random.default_rng(0)
    truth = torch.from_numpy(rng.choice(3, (3, 8, 8), p=[0.8, 0.15, 0.05]))  # mostly background
    pred = torch.where(torch.from_numpy(rng.random((3, 8, 8))) < 0.7, truth,
                       torch.from_numpy(rng.integers(0, 3, (3, 8, 8))))
    truth[0, 0] = IGNORE_INDEX  # get_stats(..., ignore_index=255)

    def stats(k: int, classes: list[int]) -> tuple[np.ndarray, ...]:  # (N, C) each, as smp's
        keep = (truth != IGNORE_INDEX).numpy()
        p, t = pred.numpy(), truth.numpy()
        per = [[((p[i] == c) & (t[i] == c) & keep[i]).sum(), ((p[i] == c) & (t[i] != c) & keep[i]).sum(),
                ((p[i] != c) & (t[i] == c) & keep[i]).sum()] for i in range(len(p)) for c in classes]  # fmt: skip
        return tuple(np.array(per).reshape(len(p), len(classes), 3).transpose(2, 0, 1))

    def iou(tp, fp, fn):
        return np.where(tp + fp + fn == 0, 1.0, tp / np.maximum(tp + fp + fn, 1))

    acc = SegmentationAccumulator(3)
    acc.add_masks(pred, truth)
    m = acc.compute()
    tp, fp, fn = (a.sum(0) for a in stats(3, [0, 1, 2]))  # summed over the images
    assert [m["iou_0"], m["iou_1"], m["iou_2"]] == pytest.approx(iou(tp, fp, fn).tolist())
    assert m["iou"] == pytest.approx(iou(tp, fp, fn)[1:].mean())  # macro over 1..K-1
    micro = iou(tp.sum(), fp.sum(), fn.sum())
    wrong = int(fp.sum())
    assert micro == pytest.approx(tp.sum() / (tp.sum() + 2 * wrong))
    assert abs(m["iou"] - micro) > 0.05  # (so the two are told apart here)
    # Two classes: smp's binary mode scores the foreground alone, micro = macro.
    pred, truth = (pred > 0).long(), torch.where(truth == IGNORE_INDEX, truth, (truth > 0).long())
    acc = SegmentationAccumulator(2)
    acc.add_masks(pred, truth)
    m = acc.compute()
    tp, fp, fn = (a.sum() for a in stats(2, [1]))
    assert m["iou"] == pytest.approx(iou(tp, fp, fn))
    keep = truth != IGNORE_INDEX
    assert m["pixel_acc"] == pytest.approx(float(((pred == truth) & keep).sum() / keep.sum()))


def test_count_error_sees_merged_cells():
    inst = np.zeros((12, 12), dtype=np.int32)
    inst[2:6, 2:6] = 1
    inst[2:6, 6:10] = 2  # touching cell 1
    truth = semantic_from_instances(inst)  # one-pixel seams keep them apart
    merged = (inst > 0).astype(np.int64)  # a prediction that closes the gap
    acc = SegmentationAccumulator(2, count_instances=True, min_area=4)
    acc.add_counts(merged[None], truth[None].astype(np.int64))
    acc.add_counts(truth[None].astype(np.int64), truth[None].astype(np.int64))
    acc.images += 2
    m = acc.compute()
    assert m["count_err"] == pytest.approx(0.5)  # |1 - 2| and |2 - 2| over 2 images
    assert m["count_rel"] == pytest.approx(1 / 4)


# ----------------------------------------------------------------------------- augmentation


def _pattern(n: int = 4, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric shapes (an L and a bar of class 2), so any flip or turn shows."""
    m = torch.zeros(n, size, size, dtype=torch.long)
    m[:, 8:30, 10:16] = 1
    m[:, 24:30, 10:34] = 1
    m[:, 36:42, 30:44] = 2
    img = (m > 0).float()[:, None] * 0.8 + 0.1
    return img, m


def test_paired_geometry_moves_the_mask_with_the_image_exactly():
    img, m = _pattern()
    g = torch.Generator().manual_seed(3)
    t = PairedTransform([RandomCrop(40), HorizontalFlip(), RandomRot90()])
    out_img, out_m = t(img, m, g)
    assert out_m.shape == (4, 40, 40)
    assert torch.equal((out_img[:, 0] > 0.5), out_m > 0)
    # Something moved: the samples differ from a plain top-left crop.
    assert not all(torch.equal(out_m[i], m[i, :40, :40]) for i in range(4))


def test_elastic_deformation_keeps_masks_aligned_nearest_neighbour():
    img, m = _pattern(n=6)
    g = torch.Generator().manual_seed(0)
    out_img, out_m = PairedTransform([ElasticDeform(sigma=6.0)])(img, m, g)
    assert set(out_m.unique().tolist()) <= {0, 1, 2}  # nearest: no new class values
    assert not torch.equal(out_m, m)  # it did deform
    v = out_img[:, 0]
    # Bilinear image vs nearest mask agree wherever the image is clearly inside or outside.
    assert bool(((v > 0.85) <= (out_m > 0)).all()) and bool(((v < 0.15) <= (out_m == 0)).all())
    inside = (v > 0.85).sum() + (v < 0.15).sum()
    assert inside > 0.8 * v.numel()
    # sigma 0: the identity.
    same_img, same_m = PairedTransform([ElasticDeform(sigma=0.0)])(img, m, g)
    assert torch.equal(same_m, m) and torch.allclose(same_img, img, atol=1e-5)


def test_weight_map_channel_rides_with_the_geometry_and_photometry_skips_targets():
    img, m = _pattern()
    weight = m.float() * 3 + 1  # a map with the mask's shape, easy to predict
    target = torch.stack([m.float(), weight], 1)
    g = torch.Generator().manual_seed(5)
    out_img, out_t = train_transform(32, elastic=8.0, jitter=0.3)(img, target, g)
    mask, w = out_t[:, 0], out_t[:, 1]
    assert out_img.shape == (4, 1, 32, 32) and out_t.shape == (4, 2, 32, 32)
    # Where the mask is a clean class, the bilinear-warped weight is that class's weight.
    core = torch.nn.functional.max_pool2d(
        (mask[:, None] != torch.nn.functional.avg_pool2d(mask[:, None], 3, 1, 1)).float(),
        3, 1, 1)[:, 0] == 0
    assert torch.allclose(w[core], mask[core] * 3 + 1, atol=1e-4)
    assert set(mask.unique().tolist()) <= {0.0, 1.0, 2.0}


# ----------------------------------------------------------------------------- tiling


def test_mirror_indices_match_numpy_reflect():
    a = np.arange(7)
    padded = np.pad(a, 20, mode="reflect")
    assert mirror_indices(-20, 47, 7).tolist() == padded.tolist()


def _eval_unet(seed: int = 0):
    torch.manual_seed(seed)
    net = create_model("unet", num_classes=3, in_chans=1, padding="same", base_width=4)
    for mod in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_overlap_tile_matches_whole_image_away_from_borders():
    net = _eval_unet()
    torch.manual_seed(2)
    img = torch.rand(1, 320, 352)
    with torch.no_grad():
        whole = net(img[None])[0]
    tiled = predict_tiled(net, img, tile=320, output="logits")  # margin 96: 128-px tiles
    assert tiled.shape == whole.shape
    inner = (slice(None), slice(96, -96), slice(96, -96))
    assert (tiled[inner] - whole[inner]).abs().max() < 1e-4
    # Near the border the mirrored context differs from zero padding (it is not a no-op).
    assert (tiled[:, :8] - whole[:, :8]).abs().max() > 1e-3


def test_valid_unet_tiles_equal_whole_mirrored_image():
    torch.manual_seed(0)
    net = create_model("unet", num_classes=2, in_chans=1, padding="valid", base_width=4).eval()
    img = torch.rand(1, 100, 90)
    # 220 px tiles -> 36 px out, 32 kept (a multiple of 16: each tile on the pooling grid).
    tiled = predict_tiled(net, img, tile=220, output="logits")
    # The whole image mirrored (numpy's reflect) in one pass: 94 px of context on the top/left
    # (92 trimmed by the net + 2 cut from each tile), padded to the legal sizes 300 x 284.
    pad = np.pad(img[0].numpy(), ((94, 300 - 94 - 100), (94, 284 - 94 - 90)), mode="reflect")
    with torch.no_grad():
        whole = net(torch.from_numpy(pad)[None, None])[0, :, 2:102, 2:92]
    assert tiled.shape == (2, 100, 90)
    assert (tiled - whole).abs().max() < 1e-4
    # A grey (H, W) array is one image; a colour (H, W, C) one names the transpose it needs.
    assert torch.equal(predict_tiled(net, img[0], tile=220, output="logits"), tiled)
    rgb = create_model("unet", num_classes=2, in_chans=3, padding="same", base_width=4).eval()
    with pytest.raises(ValueError, match=r"channels last .* pass image.transpose\(2, 0, 1\)"):
        predict_tiled(rgb, np.zeros((40, 50, 3), np.uint8))
    # Another channel count: one line that says what to pass (torch's errors named tensors).
    with pytest.raises(ValueError) as exc:
        predict_tiled(net, np.zeros((40, 50, 3), np.uint8))  # colour array, grey net
    assert str(exc.value).startswith("image of shape (40, 50, 3) has 3 channels (H, W, C), but "
                                     "the net takes 1: pass a grey (H, W) image, e.g. np.asarray("
                                     "PIL.Image.open(path).convert('L'))")
    with pytest.raises(ValueError) as exc:
        predict_tiled(rgb, np.zeros((40, 50, 4), np.uint8))  # RGBA
    assert str(exc.value) == ("image of shape (40, 50, 4) has 4 channels (H, W, C), but the net "
                              "takes 3: pass its colour channels, image.transpose(2, 0, 1)"
                              "[:3] (3, H, W), without the alpha channel")
    with pytest.raises(ValueError, match=r"has 1 channel .*np.repeat\(image, 3, axis=0\)"):
        predict_tiled(rgb, np.zeros((1, 40, 50), np.uint8))
    # A grey (H, W) array: its own shape, and a repeat that makes (3, H, W) of it, not (3H, W).
    with pytest.raises(ValueError, match=r"shape \(40, 50\) has 1 channel \(H, W\).*"
                                         r"np.repeat\(image\[None\], 3, axis=0\)"):
        predict_tiled(rgb, np.zeros((40, 50), np.uint8))
    # A PIL image ("Could not infer dtype of Image") is read as `cnnzoo segment` reads a file:
    # converted to the net's channels, grey for a grey net.
    from PIL import Image

    colour = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    pil = Image.fromarray(colour)
    assert torch.equal(predict_tiled(rgb, pil, output="logits"),
                       predict_tiled(rgb, colour.transpose(2, 0, 1), output="logits"))
    assert torch.equal(predict_tiled(net, pil, tile=220, output="logits"),
                       predict_tiled(net, np.array(pil.convert("L")), tile=220, output="logits"))



def test_predict_tiled_takes_a_read_only_array_without_a_warning(monkeypatch):
    """np.asarray(PIL image), what the docs and the channel advice suggest, is read-only, and
    torch warned about it (UserWarning: "The given NumPy array is not writable"). torch warns
    only once per process, so the test checks what it warns about: no read-only array reaches
    torch."""
    as_tensor = torch.as_tensor
    given = []

    def checked(data, *args, **kwargs):
        if isinstance(data, np.ndarray):
            given.append(data.flags.writeable)
        return as_tensor(data, *args, **kwargs)

    monkeypatch.setattr(torch, "as_tensor", checked)
    torch.manual_seed(0)
    net = create_model("unet", num_classes=2, in_chans=1, padding="same", base_width=4).eval()
    img = np.asarray(Image.fromarray(np.arange(1200, dtype=np.uint8).reshape(30, 40)))
    assert not img.flags.writeable
    mask = predict_tiled(net, img, tile=64, output="mask")
    assert given and all(given)
    assert mask.shape == (30, 40)
    assert torch.equal(mask, predict_tiled(net, img.copy(), tile=64, output="mask"))


def test_predict_tiled_reads_a_path_as_cnnzoo_segment_does(tmp_path):
    """A notebook's file name was torch's "new(): invalid data type 'str'"; now read as
    `cnnzoo segment` reads it (for a grey net, its grey version), and anything else that is
    no image is one line naming what may be passed."""
    torch.manual_seed(0)
    net = create_model("unet", num_classes=2, in_chans=1, padding="same", base_width=4).eval()
    colour = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "a.png")
    want = predict_tiled(net, Image.fromarray(colour), tile=64, output="mask")
    for path in (tmp_path / "a.png", str(tmp_path / "a.png")):
        assert torch.equal(predict_tiled(net, path, tile=64, output="mask"), want)
    with pytest.raises(TypeError, match=r"^expected an image: .* or a file's path, not list$"):
        predict_tiled(net, [[1, 2], [3, 4]], tile=64)


def test_a_run_and_its_fit_result_print_in_a_few_lines():
    """A notebook cell ending in `run` (what `train` returns) printed the whole U-Net and
    every epoch's record: 90 lines and 7,000 characters after one epoch of a narrow net.
    The model and the history are its attributes, out of the repr."""
    from cnnzoo.engine.loop import FitResult
    from cnnzoo.engine.precision import Precision
    from cnnzoo.segmentation.training import SegmentationRun

    record = {"epoch": 1, **{f"val_metric_{i}": 0.5 for i in range(20)}}
    result = FitResult([record] * 40, best_epoch=40, best_value=0.5, monitor="val_dice",
                       precision=Precision(), final={"dice": 0.5})  # fmt: skip
    run = SegmentationRun(result, create_model("unet", num_classes=2, in_chans=1,
                                               padding="same", base_width=4),
                          splits="splits", task="task", meta={"model": "unet"})  # fmt: skip
    text = repr(run)
    assert "\n" not in text and len(text) < 600
    assert "best_epoch=40" in text and "final={'dice': 0.5}" in text and "UNet" not in text
    assert len(run.result.history) == 40  # still there, for pandas


# ----------------------------------------------------------------------------- data


def _png(path, arr):
    Image.fromarray(arr).save(path)


def test_a_pair_folder_named_on_windows_reads_in_any_case(tmp_path):
    """Images/ and Masks/ (made where folder names ignore case, and read there as images/ and
    masks/) were refused here with a hint to rename them, while a classification folder's
    Train/ and Val/ were read: they read as images/ and masks/, a VAL/ folder as val/, and
    `evaluate` finds them too. Both spellings at once cannot be told apart: one line."""
    from cnnzoo.data.masks import has_test_part
    from cnnzoo.segmentation.data import split_pairs

    _pair_folder(tmp_path / "d", ["a", "b", "c"])
    _pair_folder(tmp_path / "d" / "VAL", ["v"])
    (tmp_path / "d" / "images").rename(tmp_path / "d" / "Images")
    (tmp_path / "d" / "masks").rename(tmp_path / "d" / "MASKS")
    (tmp_path / "d" / "VAL" / "images").rename(tmp_path / "d" / "VAL" / "Images")
    assert holds_mask_pairs(tmp_path / "d")
    assert load_mask_pairs(tmp_path / "d").names == ["a", "b", "c"]
    split = split_pairs(tmp_path / "d")
    assert not split.drawn and split.val.names == ["v"] and len(split.train) == 3
    (tmp_path / "d" / "VAL").rename(tmp_path / "d" / "Test")
    assert has_test_part(tmp_path / "d")
    (tmp_path / "d" / "images").mkdir()
    with pytest.raises(DataError) as err:
        load_mask_pairs(tmp_path / "d")
    assert str(err.value) == (f"{tmp_path / 'd'} has Images/ and images/: folder names that "
                              "differ only in case; keep one images/ folder")


def test_a_decompression_bomb_among_the_masks_is_a_skip_line(tmp_path, monkeypatch):
    """Masks and instance ids are read with Image.open for their own values, without
    load_image's refusals: a mask past twice the pixel limit (a tiny PNG declaring 3.6 Gpx)
    raised PIL's DecompressionBombError, which is no OSError or ValueError: a traceback
    before training. It is skipped with one line, as a bomb among the images is."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16 x 20 = 320 px: past twice that
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = np.full((16, 20), 100, dtype=np.uint8)
    for stem in ("a", "b", "c"):
        _png(tmp_path / "images" / f"{stem}.png", img[:8, :8])
        _png(tmp_path / "masks" / f"{stem}.png", np.zeros((8, 8), dtype=np.uint8))
    _png(tmp_path / "images" / "d.png", img[:8, :8])
    _png(tmp_path / "masks" / "d.png", np.zeros((16, 20), dtype=np.uint8))
    lines: list[str] = []
    pairs = load_mask_pairs(tmp_path, classes=["background", "cell"], report=lines.append)
    assert pairs.names == ["a", "b", "c"]
    assert len(lines) == 1 and lines[0].startswith("skipped d: cannot read mask") \
        and "refused as a decompression bomb" in lines[0], lines  # fmt: skip


def test_mask_pairs_report_missing_and_mismatched_pairs_one_line_each(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = np.full((16, 20), 100, dtype=np.uint8)
    m = np.zeros((16, 20), dtype=np.uint8)
    m[4:8, 4:8] = 255
    for stem in ("a", "b", "c", "d"):
        _png(tmp_path / "images" / f"{stem}.png", img)
    _png(tmp_path / "masks" / "a.png", m)
    _png(tmp_path / "masks" / "b.png", m[:10])  # size mismatch
    _png(tmp_path / "masks" / "d.png", m)
    _png(tmp_path / "masks" / "e.png", m)  # mask without an image; c has no mask
    lines: list[str] = []
    pairs = load_mask_pairs(tmp_path, classes=["background", "cell"], report=lines.append)
    assert pairs.names == ["a", "d"]
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    assert any("c.png" in line and "no mask" in line for line in lines)
    assert any("e.png" in line and "no image" in line for line in lines)
    assert any(line.startswith("skipped b") and "20x10" in line and "20x16" in line
               for line in lines)
    # 0/255 masks are two classes.
    assert pairs.masks[0].max() == 1 and int(pairs.masks[0].sum()) == 16
    # Any format images are read in pairs (a .webp was "no image w.*"), a mask may be named
    # <stem>_mask (as `cnnzoo segment` writes them), and hidden files are no pairs.
    Image.fromarray(img).save(tmp_path / "images" / "w.webp", lossless=True)
    _png(tmp_path / "masks" / "w.png", m)
    _png(tmp_path / "masks" / "c_mask.png", m)
    _png(tmp_path / "masks" / "._a.png", m)
    lines.clear()
    pairs = load_mask_pairs(tmp_path, classes=["background", "cell"], report=lines.append)
    assert pairs.names == ["a", "c", "d", "w"] and len(lines) == 2  # b and e, as before
    # Accents spelt as a Mac spells file names (NFD) in masks/, as Windows does in images/:
    # "skipped images/Zelle é.png: no mask Zelle é.* in masks" beside masks/Zelle é.png.
    _png(tmp_path / "images" / "Zelle \u00e9.png", img)
    _png(tmp_path / "masks" / "Zelle e\u0301.png", m)
    lines.clear()
    pairs = load_mask_pairs(tmp_path, classes=["background", "cell"], report=lines.append)
    assert pairs.names == ["Zelle \u00e9", "a", "c", "d", "w"] and len(lines) == 2
    # A mask with the image's sides swapped: drawn on a photo before its EXIF turn.
    _png(tmp_path / "masks" / "b.png", m.T.copy())
    lines.clear()
    load_mask_pairs(tmp_path, classes=["background", "cell"], report=lines.append)
    assert any(ln.startswith("skipped b: mask 16x20 but image 20x16") and "EXIF" in ln
               for ln in lines), lines
    # 0/255 masks with three class names: 255 is 'ignore', no pixel is a cell; said, not silent.
    lines.clear()
    pairs = load_mask_pairs(tmp_path, classes=["bg", "cell", "extra"], report=lines.append)
    assert int((pairs.masks[0] == 255).sum()) == 16
    assert [ln for ln in lines if ln.startswith("note:")] == [
        "note: every mask holds only 0 and 255, and with 3 classes 255 means 'ignore', so no "
        "pixel is labelled cell, extra; if 255 marks the foreground, name two classes (--classes "
        "background,cell)"]
    # The names as one string, as --classes takes them (from Python, a str is a sequence of
    # str: 'background,cell' gave 15 classes b, a, c, k, ...).
    pairs = load_mask_pairs(tmp_path, classes=" background, cell", report=None)
    assert pairs.classes == ["background", "cell"] and pairs.masks[0].max() == 1
    # Fewer than two names (--classes cell, --classes ','): one line, before any file is read
    # (it came after the skipped pairs and a note on '1 classes'; ',' named no class and was
    # dropped in silence, the classes inferred instead).
    for given in ("cell", ",", ["cell"]):
        lines.clear()
        with pytest.raises(DataError, match="needs at least two classes"):
            load_mask_pairs(tmp_path, classes=given, report=lines.append)
        assert lines == []


def test_csv_manifest_with_class_indices_and_a_missing_file(tmp_path):
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    m = np.zeros((8, 8), dtype=np.uint8)
    m[:4] = 2
    m[0, 0] = 255  # with other classes present, 255 is "ignore" (VOC)
    _png(tmp_path / "x.png", img)
    _png(tmp_path / "x_mask.png", m)
    (tmp_path / "list.csv").write_text("image,mask\nx.png,x_mask.png\ngone.png,x_mask.png\n"
                                       "x.png,\n")  # fmt: skip
    lines: list[str] = []
    pairs = load_mask_pairs(tmp_path / "list.csv", classes=["a", "b", "c"], report=lines.append)
    assert pairs.names == ["x"] and pairs.in_chans == 3
    assert pairs.masks[0][0, 0] == 255 and pairs.masks[0][1, 0] == 2
    assert len(lines) == 2 and "gone.png" in lines[0] and "no such file" in lines[0]
    assert lines[1] == f"skipped x: no mask file given for {tmp_path / 'x.png'}"  # not EISDIR
    # Semicolons, as Excel writes them where the decimal mark is a comma.
    (tmp_path / "list.csv").write_text("\n;;\nimage;mask\nx.png;x_mask.png\n")
    assert holds_mask_pairs(tmp_path / "list.csv")
    assert load_mask_pairs(tmp_path / "list.csv", classes=["a", "b", "c"]).names == ["x"]
    # Excel's capitalised headings: "expected a header with the columns image,mask", and the
    # manifest was not told apart from a classifier's.
    (tmp_path / "list.csv").write_text("Image;Mask;Split\r\nx.png;x_mask.png;Val\r\n")
    assert holds_mask_pairs(tmp_path / "list.csv")
    pairs = load_mask_pairs(tmp_path / "list.csv", classes=["a", "b", "c"], parts=("val",))
    assert pairs.names == ["x"] and pairs.splits == ["val"]


def test_csv_manifest_split_column_picks_validation_and_holds_test_out(tmp_path, capsys):
    _pair_folder(tmp_path / "d", ["a", "b", "c", "d", "e", "f"], size=(8, 8))
    rows = [("a", "train"), ("b", "val"), ("c", "train"), ("d", "test"), ("e", "VAL"),
            ("f", "holdout")]
    (tmp_path / "d" / "list.csv").write_text("image,mask,split\n" + "".join(
        f"images/{n}.png,masks/{n}.png,{part}\n" for n, part in rows))
    capsys.readouterr()
    splits = load_segmentation(tmp_path / "d" / "list.csv")
    assert splits.train.names == ["a", "c"] and splits.val.names == ["b", "e"]  # was random
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{tmp_path / 'd' / 'list.csv'}: 1 row with split 'holdout' (line 7): the "
                   "split is train, val or test"]
    # No val row: a seeded fraction of the training rows, as without the column.
    (tmp_path / "d" / "list.csv").write_text("image,mask,split\n" + "".join(
        f"images/{n}.png,masks/{n}.png,{'test' if n == 'f' else 'train'}\n" for n, _ in rows))
    splits = load_segmentation(tmp_path / "d" / "list.csv")
    assert sorted(splits.train.names + splits.val.names) == ["a", "b", "c", "d", "e"]
    assert len(splits.val) == 1
    # Test rows only (all held out): that, not 'lists no image/mask pair' of a sheet that does.
    sheet = tmp_path / "d" / "list.csv"
    sheet.write_text("image,mask,split\nimages/a.png,masks/a.png,test\n"
                     "images/b.png,masks/b.png,Test\n")
    assert main(["train", "unet", "--data", str(sheet), "--epochs", "1", "--out",
                 str(tmp_path / "run"), "--json"]) == 2  # fmt: skip
    line = f"cnnzoo train: error: every row of {sheet} is marked test, held out: mark the pairs " \
           "to train on train (or leave their split cell empty), and those to validate on val"
    assert capsys.readouterr().err.strip() == line and not (tmp_path / "run").exists()


def test_a_pair_manifests_rows_sorted_in_the_sheet_split_the_same(tmp_path, capsys):
    """Image/mask manifests were split in row order: sorting the sheet drew other validation
    pairs for the same seed (classification manifests had been read in path order since
    session 23). Pairs are now read in path order; a run from before (no 'pair_order' in its
    checkpoint) is resumed and evaluated on the pairs it drew in row order."""
    from cnnzoo.data.dataset import names_digest
    from cnnzoo.engine.checkpoint import atomic_save, load_checkpoint
    from cnnzoo.segmentation.data import split_pairs
    from cnnzoo.segmentation.evaluation import evaluate_segmenter

    stems = [f"p{i}" for i in range(10)]
    _pair_folder(tmp_path, stems, size=(32, 32))
    shuffled = ["p7", "p2", "p9", "p0", "p5", "p3", "p8", "p1", "p6", "p4"]
    for name, order in (("rows.csv", shuffled), ("sorted.csv", stems)):
        (tmp_path / name).write_text("image,mask\n" + "".join(
            f"images/{n}.png,masks/{n}.png\n" for n in order))
    # The split by hand: seed 0's permutation of 10 pairs, the first round(10 * 0.2) validate.
    drawn = sorted(np.random.default_rng(0).permutation(10)[:2])
    by_path, by_rows = [stems[i] for i in drawn], [shuffled[i] for i in drawn]
    assert by_path != by_rows  # (else this test would not tell the orders apart)
    for name in ("rows.csv", "sorted.csv"):
        sp = split_pairs(tmp_path / name)
        assert sp.val.names == by_path and sp.train.names == sorted(set(stems) - set(by_path))
    legacy = split_pairs(tmp_path / "rows.csv", row_order=True)
    assert legacy.val.names == by_rows
    assert legacy.train.names == [n for n in shuffled if n not in by_rows]
    # A run on rows.csv, then made into one from before: no 'pair_order', the row-order split.
    out = tmp_path / "run"
    args = ["train", "unet", "--data", str(tmp_path / "rows.csv"), "--crop", "32",
            "--batch-size", "4", "--base-width", "4", "--precision", "fp32", "--channels-last",
            "off", "--no-progress", "--no-tensorboard", "--out", str(out)]  # fmt: skip
    assert main([*args, "--epochs", "1"]) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["meta"]["pair_order"] == "path"
    assert ckpt["meta"]["val_files"] == names_digest(by_path)
    del ckpt["meta"]["pair_order"]
    ckpt["meta"]["val_files"] = names_digest(by_rows)
    atomic_save(ckpt, out / "last.pt")
    # evaluate scores its own validation pairs (it was refused as 'changed since the run').
    assert evaluate_segmenter(out / "last.pt", tile=32).names == by_rows
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    # Resumed on the pairs it drew: no 'resuming with different validation images'.
    assert "the data splits otherwise" not in capsys.readouterr().err
    meta = load_checkpoint(out / "last.pt")["meta"]
    assert meta["pair_order"] == "rows" and meta["val_files"] == names_digest(by_rows)
    assert evaluate_segmenter(out / "last.pt", tile=32).names == by_rows
    # Such a run's sheet sorted since: its split cannot be drawn again, and the line says why.
    shutil.copy(tmp_path / "sorted.csv", tmp_path / "rows.csv")
    with pytest.raises(DataError, match=r"or now readable, or its rows reordered, for a run "
                       r"from before rows were read in path order\), so its validation split"):
        evaluate_segmenter(out / "last.pt", tile=32)


def _pair_folder(root, stems, size=(16, 20)):
    """images/ and masks/ (0/255, a 4x4 square) for `stems`; returns the mask written."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    m = np.zeros(size, dtype=np.uint8)
    m[4:8, 4:8] = 255
    for stem in stems:
        _png(root / "images" / f"{stem}.png", np.full(size, 100, dtype=np.uint8))
        _png(root / "masks" / f"{stem}.png", m)
    return m


def test_epoch_lines_of_many_classes_leave_out_each_classs_scores(tmp_path, capsys):
    """Each class's Dice and IoU, train and val, were on every epoch line: 24 numbers for four
    classes, about 90 for Pascal VOC's 21. Beyond two classes the line keeps the foreground
    means; metrics.jsonl and the final line keep every class's."""
    data = tmp_path / "d"
    m = np.zeros((32, 32), np.uint8)
    m[4:12, 4:12], m[16:28, 8:20], m[0, :] = 1, 2, 255
    for i in range(4):
        _put(data / "images" / f"a{i}.png", np.where(m == 2, 200, np.where(m == 1, 120, 30))
             .astype(np.uint8))
        _put(data / "masks" / f"a{i}.png", m)
    out = tmp_path / "run"
    assert main(["train", "unet", "--data", str(data), "--classes", "bg,cell,nucleus", "--epochs",
                 "1", "--crop", "32", "--batch-size", "2", "--base-width", "4", "--precision",
                 "fp32", "--channels-last", "off", "--no-progress", "--no-tensorboard",
                 "--out", str(out)]) == 0
    said = capsys.readouterr()
    lines = (said.out + said.err).splitlines()
    epoch = next(line for line in lines if line.startswith("epoch 1/1"))
    assert " val_dice " in epoch and " val_iou " in epoch and "nucleus" not in epoch
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {f"{s}_{m}_{c}" for s in ("train", "val") for m in ("dice", "iou")
            for c in ("bg", "cell", "nucleus")} <= set(record)
    final = next(line for line in lines if "final validation" in line)
    assert "dice_nucleus" in final and "iou_cell" in final


def test_an_epoch_is_a_crop_per_image_or_per_tile_as_docs_segmentation_says(tmp_path):
    """docs/segmentation.md's example: five 512-px training images are 5 crops an epoch; four
    of them and one of 500 px are cut into 20 tiles of 256 px (2 x 2 each), 20 crops."""
    _pair_folder(tmp_path / "same", [f"a{i}" for i in range(5)], size=(512, 512))
    _pair_folder(tmp_path / "val", ["v"], size=(512, 512))
    _pair_folder(tmp_path / "mixed", [f"a{i}" for i in range(4)], size=(512, 512))
    _pair_folder(tmp_path / "odd", ["b"], size=(500, 500))
    for part in ("images", "masks"):
        shutil.copy(tmp_path / "odd" / part / "b.png", tmp_path / "mixed" / part / "b.png")
    for root in ("same", "mixed"):
        shutil.copytree(tmp_path / "val", tmp_path / root / "val")
    same, mixed = (load_segmentation(tmp_path / root, tile=256) for root in ("same", "mixed"))
    assert len(same.train) == 5 and len(mixed.train) == 20
    assert mixed.describe().startswith("training: 5 images of 500x500 to 512x512 in 20 tiles "
                                       "of 256x256")


def test_a_run_on_images_of_mixed_sizes_counts_images_and_tiles_apart(tmp_path):
    """`cnnzoo compare` said '4 training, 3 validation' of a run on 3 and 2 images: the run
    recorded its tiles as "images". It records both now, and compare says both; a run from
    before, whose "images" are its tiles, resumes without a warning that its data changed."""
    from cnnzoo.engine.checkpoint import load_checkpoint
    from cnnzoo.engine.compare import summarize_runs
    from cnnzoo.engine.loop import meta_changes

    # Tiles of 256 px (max(2 x crop, 256)): a 40 x 300 image is 2 of them (training: windows
    # at 0 and 44; validation: 512 px wide, padded), a 32 x 32 or 24 x 24 one is 1.
    data = tmp_path / "d"
    m = np.zeros((40, 300), np.uint8)
    m[8:20, 8:30] = 1
    for part, name, (h, w) in (("", "a0", (32, 32)), ("", "a1", (40, 300)),
                               ("", "a2", (24, 24)), ("val", "v0", (40, 300)),
                               ("val", "v1", (32, 32))):
        _put(data / part / "images" / f"{name}.png", (m[:h, :w] * 150 + 40).astype(np.uint8))
        _put(data / part / "masks" / f"{name}.png", m[:h, :w])
    out = tmp_path / "run"
    args = ["train", "unet", "--data", str(data), "--crop", "32", "--batch-size", "4",
            "--base-width", "4", "--precision", "fp32", "--channels-last", "off",
            "--no-progress", "--no-tensorboard", "--out", str(out)]  # fmt: skip
    assert main([*args, "--epochs", "1"]) == 0
    meta = load_checkpoint(out / "last.pt")["meta"]
    assert meta["images"] == {"train": 3, "val": 2} and meta["tiles"] == {"train": 4, "val": 3}
    assert summarize_runs([out])[0].settings["data"].endswith(
        "(3 training images in 4 tiles, 2 validation images in 3 tiles)")
    # A run from before "tiles" was recorded: its tiles were its "images". Compared with the
    # images, its resume warned 'resuming with different images (was train 4, val 3, now
    # train 3, val 2)'; a real change (one image more, of 2 tiles) is still warned.
    before = {k: v for k, v in meta.items() if k != "tiles"} | {"images": meta["tiles"]}
    assert meta_changes(before, meta) == []
    grown = meta | {"images": {"train": 4, "val": 2}, "tiles": {"train": 6, "val": 3}}
    assert meta_changes(before, grown) == ["tiles (was train 4, val 3, now train 6, val 3)"]
    assert meta_changes(meta, grown) == ["images (was train 3, val 2, now train 4, val 2)",
                                         "tiles (was train 4, val 3, now train 6, val 3)"]


def test_data_info_counts_pairs_and_each_classs_share_of_the_pixels(tmp_path, capsys):
    """`cnnzoo data info DIR` of images/ + masks/ said 'a segmentation set, not one sub-folder
    per class' (after a note on resizing the images for a classifier). It now counts the pairs
    of each part as train unet splits them (val/, and test/ held out), and each class's share of
    the labelled pixels, and the ignored (255) share of all pixels, as counted here by hand."""
    root = tmp_path / "d"
    (root).mkdir()
    (root / "classes.txt").write_text("bg\ncell\nnucleus\n")
    a = np.zeros((10, 10), np.uint8)
    a[0:4, 0:5], a[5], a[9] = 1, 2, IGNORE_INDEX  # 20 cell, 10 nucleus, 10 ignored, 60 bg
    v = np.zeros((8, 8), np.uint8)
    v[:4, :4] = 1  # 16 cell, 48 bg
    t = np.zeros((6, 6), np.uint8)
    t[0], t[5] = 2, IGNORE_INDEX  # 6 nucleus, 6 ignored, 24 bg
    for part, name, mask in (("", "a", a), ("", "b", np.zeros((10, 10), np.uint8)),
                             ("val", "v", v), ("test", "t", t)):
        _put(root / part / "images" / f"{name}.png", np.full(mask.shape, 90, np.uint8))
        _put(root / part / "masks" / f"{name}.png", mask)
    _put(root / "images" / "c.png", np.full((10, 10), 90, np.uint8))  # no mask: skipped
    assert main(["data", "info", str(root), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == {"task": "segmentation", "classes": ["bg", "cell", "nucleus"],
                   "images": {"train": 2, "val": 1, "test": 1},
                   "pixels": {"train": [160, 20, 10], "val": [48, 16, 0], "test": [24, 0, 6]},
                   "ignored_pixels": {"train": 10, "val": 0, "test": 6}, "channels": 1,
                   "skipped": 1}
    assert main(["data", "info", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split() for line in out[:6]] == [
        ["class", "train", "val", "test"],
        ["bg", "84.2%", "75.0%", "80.0%"],  # 160/190, 48/64, 24/30
        ["cell", "10.5%", "25.0%", "0.0%"],
        ["nucleus", "5.3%", "0.0%", "20.0%"],
        ["ignored", "(255)", "5.0%", "0.0%", "16.7%"],  # 10/200, 6/36
        ["pairs", "2", "1", "1"]]
    assert out[7] == "3 classes, images 6x6 to 10x10, 1 channel; 1 pair skipped"
    assert main(["data", "info", "cells"]) == 2
    assert "`cnnzoo data export cells DIR --per-class N`" in capsys.readouterr().err


def test_masks_in_a_folder_of_another_name_are_pointed_at(tmp_path, capsys):
    """images/ beside labels/ (as many tools and data sets name the masks) was 'DIR/masks
    is not a folder' in train and 'has no masks/ folder' in evaluate, with no word that the
    masks were there under another name; both now name the folder to rename."""
    _pair_folder(tmp_path / "d", ["a", "b"])
    (tmp_path / "d" / "masks").rename(tmp_path / "d" / "labels")
    (tmp_path / "d" / "notes").mkdir()  # another folder, of other files: not named
    (tmp_path / "d" / "notes" / "x.png").write_bytes(b"")
    hint = "(labels/ holds files named as the images': if they are the masks, rename it masks/)"
    with pytest.raises(DataError) as err:
        load_mask_pairs(tmp_path / "d")
    assert hint in str(err.value)
    _threshold_unet(tmp_path / "net.pt", "elsewhere")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "net.pt"), "--data", str(tmp_path / "d")]) == 2
    assert f"has no masks/ folder {hint}:" in capsys.readouterr().err
    (tmp_path / "d" / "labels").rename(tmp_path / "d" / "other")  # of no image's stems
    for f in (tmp_path / "d" / "other").iterdir():
        f.rename(f.with_name("z" + f.name))
    with pytest.raises(DataError) as err:
        load_mask_pairs(tmp_path / "d")
    assert "holds files named" not in str(err.value)


def test_a_classes_txt_saved_on_windows_is_read_or_refused_in_one_line(tmp_path):
    """Notepad's classes.txt: with a byte-order mark, the first class was '\\ufeffbackground'
    (printed as 'background', but not equal to the held-out set's); in 'ANSI' (cp1252), a
    UnicodeDecodeError traceback."""
    from cnnzoo.segmentation.evaluation import _check_classes_file

    _pair_folder(tmp_path, ["a", "b"])
    txt = tmp_path / "classes.txt"
    txt.write_bytes("background\r\nZellkörper\r\n".encode("utf-8-sig"))
    assert load_mask_pairs(tmp_path).classes == ["background", "Zellkörper"]
    _check_classes_file(tmp_path, ["background", "Zellkörper"])  # the run's own names: fine
    txt.write_bytes("background\r\nZellkörper\r\n".encode("cp1252"))
    for read in (lambda: load_mask_pairs(tmp_path),
                 lambda: _check_classes_file(tmp_path, ["background", "Zellkörper"])):
        with pytest.raises(DataError, match=r"classes.txt is not UTF-8 text \(byte 0xf6 on line "
                           r"2\): save it as UTF-8 \(Notepad: Save As, Encoding UTF-8\)"):
            read()


def test_two_classes_of_one_name_are_refused_in_one_line(tmp_path, capsys):
    """`--classes bg,cell,cell,marker` trained, and every score is keyed by the class's name:
    metrics.jsonl held class 2's Dice and IoU under 'cell' and none of class 1's, and evaluate
    printed class 2's scores on both 'cell' rows. Refused, from --classes and classes.txt."""
    _pair_folder(tmp_path / "d", ["a", "b"])
    out = tmp_path / "run"
    rc = main(["train", "unet", "--data", str(tmp_path / "d"), "--classes", "bg,cell,cell,marker",
               "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["cnnzoo train: error: class 'cell' is named twice in --classes "
                               "(classes 1 and 2): give each class a name of its own; its Dice "
                               "and IoU are reported under it"]
    assert not out.exists()
    (tmp_path / "d" / "classes.txt").write_text("background\ncell\nbackground\n")
    with pytest.raises(DataError, match=r"^class 'background' is named twice in .*classes.txt "
                                        r"\(classes 0 and 2\)"):
        load_mask_pairs(tmp_path / "d")


def test_a_pascal_voc_folder_says_how_to_read_it_and_its_recipe_works(tmp_path):
    """`--data VOC2012`: 'VOC2012/images is not a folder: put images in VOC2012/images and masks
    in VOC2012/masks', nothing of its split lists. The one line now says to write a manifest,
    and one written as it says reads VOC's palette masks as class indices (255: ignore), split
    by the lists. Truth: the masks' values as drawn."""
    voc = tmp_path / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    rng = np.random.default_rng(0)
    drawn = {}
    for n in ("2007_000032", "2007_000033", "2007_000039"):
        _put(voc / "JPEGImages" / f"{n}.jpg", rng.integers(0, 256, (16, 20, 3), dtype=np.uint8))
        m = rng.choice(np.array([0, 1, 15, 255], np.uint8), (16, 20))
        mask = Image.fromarray(m)
        mask.putpalette([0, 0, 0, 128, 0, 0] + [0] * 3 * 254)
        (voc / "SegmentationClass").mkdir(exist_ok=True)
        mask.save(voc / "SegmentationClass" / f"{n}.png")
        drawn[n] = m
    _put(voc / "JPEGImages" / "2008_000001.jpg", np.zeros((16, 20, 3), np.uint8))  # no mask
    (lists / "train.txt").write_text("2007_000032\n2007_000033\n")
    (lists / "val.txt").write_text("2007_000039\n")
    with pytest.raises(DataError) as err:
        load_mask_pairs(voc)
    assert str(err.value) == (
        f"{voc} is a Pascal VOC folder (JPEGImages/, SegmentationClass/), which is read through a "
        "CSV manifest: write one into it, a header image,mask,split and a row "
        "JPEGImages/NAME.jpg,SegmentationClass/NAME.png,train for each NAME in "
        f"{lists / 'train.txt'} (val for those in val.txt), and pass it as --data "
        "(docs/segmentation.md)")
    rows = ["image,mask,split"] + [f"JPEGImages/{n}.jpg,SegmentationClass/{n}.png,{split}"
                                   for split in ("train", "val")
                                   for n in (lists / f"{split}.txt").read_text().split()]
    (voc / "segmentation.csv").write_text("\n".join(rows) + "\n")
    pairs = load_mask_pairs(voc / "segmentation.csv", classes=[str(i) for i in range(21)])
    assert pairs.names == list(drawn) and pairs.splits == ["train", "train", "val"]
    for got, want in zip(pairs.masks, drawn.values(), strict=True):
        np.testing.assert_array_equal(got, want)  # 255 kept: ignored


def test_255_is_class_one_only_when_every_mask_is_0_255(tmp_path):
    _pair_folder(tmp_path / "two", ["a", "b"])
    assert [np.unique(m).tolist() for m in load_mask_pairs(tmp_path / "two").masks] == [[0, 1]] * 2
    # A 4-class set: one mask holding only background and ignored pixels keeps them ignored.
    _pair_folder(tmp_path / "four", ["a", "b"])
    _png(tmp_path / "four" / "masks" / "c.png", np.arange(4, dtype=np.uint8).repeat(80)
         .reshape(16, 20))
    _png(tmp_path / "four" / "images" / "c.png", np.zeros((16, 20), np.uint8))
    lines: list[str] = []
    pairs = load_mask_pairs(tmp_path / "four", report=lines.append)
    assert pairs.classes == ["0", "1", "2", "3"]
    assert [np.unique(m).tolist() for m in pairs.masks] == [[0, 255], [0, 255], [0, 1, 2, 3]]
    # ... and says so: with a mix of 0/255 and 0/1 masks the 0/255 ones lost all foreground.
    assert ("note: 2 of 3 masks hold only 0 and 255 (a, b), the others class indices: 255 means "
            "'ignore' in such a set, so these masks have no foreground; save them with 1 for "
            "the foreground if 255 marks it") in lines


def test_a_two_class_set_of_0_1_and_0_255_masks_reads_255_as_the_foreground(tmp_path, capsys):
    """Some masks saved 0/1 and the others 0/255 (two tools, two people): 255 was 'ignore' in
    such a set, so the 0/255 masks had no foreground and their cells were learnt as background
    (a note said so). With two classes and no mask holding 1 and 255 together, 255 is now the
    foreground of its masks; a note names them."""
    m255 = _pair_folder(tmp_path / "d", ["a", "b", "c"])  # a 4x4 square of 255 in each
    _png(tmp_path / "d" / "masks" / "c.png", m255 // 255)  # c saved 0/1
    for classes in (None, ["background", "cell"]):
        lines: list[str] = []
        pairs = load_mask_pairs(tmp_path / "d", classes=classes, report=lines.append)
        assert pairs.num_classes == 2 and pairs.binary_255
        for m in pairs.masks:  # each mask's square is class 1, nothing is ignored
            np.testing.assert_array_equal(m, m255 // 255)
        assert lines == ["note: 2 of 3 masks hold 0 and 255 (a, b), the others 0 and 1: 255 is "
                         "read as 1, the foreground, in these; save every mask one way to "
                         "silence this note"]
    # A mask holding 1 and 255 together: 255 marks pixels to ignore in this set, as before.
    both = m255 // 255
    both[0] = 255
    _png(tmp_path / "d" / "masks" / "c.png", both)
    pairs = load_mask_pairs(tmp_path / "d", report=None)
    assert not pairs.binary_255 and int((pairs.masks[0] == 255).sum()) == 16
    # Three classes named: 255 stays 'ignore' (the note on the mix says so, as before).
    _png(tmp_path / "d" / "masks" / "c.png", m255 // 255)
    lines = []
    pairs = load_mask_pairs(tmp_path / "d", classes=["bg", "a", "b"], report=lines.append)
    assert int((pairs.masks[0] == 255).sum()) == 16 and "the others class indices" in lines[0]
    # A val/ folder of 0/255 masks beside 0/1 training masks (which hold no 255 to decide by):
    # its 255 is class 1 too (it was 'ignore', val_dice 0).
    for stem in ("a", "b"):
        _png(tmp_path / "d" / "masks" / f"{stem}.png", m255 // 255)
    _pair_folder(tmp_path / "d" / "val", ["v"])
    capsys.readouterr()
    splits = load_segmentation(tmp_path / "d")
    assert int(splits.val.masks.sum()) == 16 and (splits.val.masks <= 1).all()
    assert capsys.readouterr().err == ""


def test_a_resumed_run_reads_255_as_it_began(tmp_path, capsys):
    """A run on 0/1 and 0/255 masks from before 255 was their foreground there (binary_255
    False: ignored) went on after a --resume with 255 as class 1: half one reading, half the
    other. A resume now reads the masks as the run recorded it did, as evaluate does."""
    from cnnzoo.engine.checkpoint import atomic_save, load_checkpoint

    m255 = _pair_folder(tmp_path / "d", [f"p{i}" for i in range(6)], size=(32, 32))
    for i in range(3):
        _png(tmp_path / "d" / "masks" / f"p{i}.png", m255 // 255)
    out = tmp_path / "run"
    args = ["train", "unet", "--data", str(tmp_path / "d"), "--crop", "32", "--batch-size", "4",
            "--base-width", "4", "--precision", "fp32", "--channels-last", "off",
            "--no-progress", "--no-tensorboard", "--out", str(out)]  # fmt: skip
    assert main([*args, "--epochs", "1"]) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["meta"]["binary_255"] is True  # a new run: 255 is the foreground
    ckpt["meta"]["binary_255"] = False  # as the run from before recorded it
    atomic_save(ckpt, out / "last.pt")
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert load_checkpoint(out / "last.pt")["meta"]["binary_255"] is False
    assert "hold only 0 and 255 (p3, p4, p5), but 255 means 'ignore'" in capsys.readouterr().err


def test_a_val_folder_reads_255_as_its_training_folder_does(tmp_path, capsys):
    # Training masks 0/1 with ignored (255) pixels; one val mask holds only 0 and 255.
    m = np.zeros((16, 20), np.uint8)
    m[4:8, 4:8], m[0] = 1, 255
    for root, stems in ((tmp_path, ["a", "b"]), (tmp_path / "val", ["v"])):
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        for stem in stems:
            _png(root / "images" / f"{stem}.png", np.full((16, 20), 100, np.uint8))
            _png(root / "masks" / f"{stem}.png", m if root == tmp_path else (m == 255).astype(np.uint8) * 255)
    capsys.readouterr()
    splits = load_segmentation(tmp_path)
    assert np.unique(splits.val.masks).tolist() == [0, 255]  # ignored, not class 1
    # ... and said, naming the mask, as for the same mix within one folder (val_dice was 0
    # without a word).
    assert (f"note: 1 of 1 masks in {tmp_path / 'val'} hold only 0 and 255 (v), but 255 means "
            "'ignore' for the training masks, so these masks have no foreground; save them with "
            "1 for the foreground if 255 marks it") in capsys.readouterr().err.splitlines()
    # A 0/255 training folder: 255 is class 1 in val/ too, whose 1 stays 1.
    for stem in ("a", "b"):
        _png(tmp_path / "masks" / f"{stem}.png", (m == 1).astype(np.uint8) * 255)
    _png(tmp_path / "val" / "masks" / "v.png", m)
    splits = load_segmentation(tmp_path)
    assert np.unique(splits.train.masks).tolist() == [0, 1]
    assert np.unique(splits.val.masks).tolist() == [0, 1]
    assert "note:" not in capsys.readouterr().err
    # Grey training images, a colour val/ image: the grey ones are promoted, as within one
    # folder (this was an error that did not say what to do).
    _png(tmp_path / "val" / "images" / "v.png", np.full((16, 20, 3), 100, np.uint8))
    splits = load_segmentation(tmp_path)
    assert splits.train.images.shape[1] == splits.val.images.shape[1] == 3
    assert (splits.train.images == 100).all()


def test_jpeg_masks_are_skipped_and_all_jpeg_is_one_line(tmp_path):
    m = _pair_folder(tmp_path / "d", ["a", "b"])
    (tmp_path / "d" / "masks" / "b.png").unlink()
    Image.fromarray(m).save(tmp_path / "d" / "masks" / "b.jpg", quality=75)
    assert len(np.unique(np.asarray(Image.open(tmp_path / "d" / "masks" / "b.jpg")))) > 2
    lines: list[str] = []
    pairs = load_mask_pairs(tmp_path / "d", report=lines.append)
    assert pairs.names == ["a"] and pairs.classes == ["0", "1"]  # not 200-odd noise classes
    assert lines == [lines[0]] and "b.jpg" in lines[0] and "JPEG" in lines[0]
    (tmp_path / "d" / "masks" / "a.png").unlink()
    Image.fromarray(m).save(tmp_path / "d" / "masks" / "a.jpg")
    with pytest.raises(DataError, match="every mask in .* is a JPEG.*PNG"):
        load_mask_pairs(tmp_path / "d", report=None)
    # A lossy WebP (it decodes to RGB) is a lossy mask too, not a "colour mask"; a lossless
    # one is read.
    for stem in ("a", "b"):
        (tmp_path / "d" / "masks" / f"{stem}.jpg").unlink()
    Image.fromarray(m).save(tmp_path / "d" / "masks" / "b.webp", quality=80)
    Image.fromarray(m).save(tmp_path / "d" / "masks" / "a.webp", lossless=True)
    lines.clear()
    pairs = load_mask_pairs(tmp_path / "d", report=lines.append)
    assert pairs.names == ["a"] and np.array_equal(pairs.masks[0], m // 255)
    assert lines == [f"skipped b: {tmp_path / 'd' / 'masks' / 'b.webp'}: lossy WebP mask: lossy "
                     "compression changes the class values along every edge; save masks as PNG"]
    (tmp_path / "d" / "masks" / "b.webp").unlink()
    (tmp_path / "d" / "masks" / "a.webp").unlink()
    # An empty masks/ folder is not "every mask is a JPEG" (0 of 0 masks).
    with pytest.raises(DataError) as exc:
        load_mask_pairs(tmp_path / "d", report=None)
    assert str(exc.value) == (
        f"{tmp_path / 'd' / 'masks'} holds no masks: save one mask per image in "
        f"{tmp_path / 'd' / 'masks'}, named by the image's stem (masks/a.png for images/a.jpg).")
    # Masks of other stems only: the pairing rule, and the skipped lines above say which.
    _png(tmp_path / "d" / "masks" / "z.png", m)
    with pytest.raises(DataError, match=r"^no mask in .* has the stem of an image in .*file stem"):
        load_mask_pairs(tmp_path / "d", report=None)



def _three_class_masks_to_replace(tmp_path: Path, stems: list[str]) -> tuple[np.ndarray, Path]:
    """A pair folder of `stems` whose PNG masks are removed, for a test to save its own files of
    the returned 16x20 mask (classes 0, 1 and 2), and the masks folder."""
    _pair_folder(tmp_path, stems)
    idx = np.zeros((16, 20), np.uint8)
    idx[4:8, 4:8] = 1
    idx[10, :] = 2
    masks = tmp_path / "masks"
    for stem in stems:
        (masks / f"{stem}.png").unlink()
    return idx, masks


def test_masks_in_every_grey_mode_are_read_and_odd_values_refused(tmp_path):
    """Big-endian 16-bit TIFFs (ImageJ's), float TIFFs of whole values and grey PNGs with an
    alpha channel are masks of class indices; they were refused as "mask mode I;16B; save one
    channel of class indices". Fractional and negative values are refused (-1 became 255,
    'ignore', and -100 class 156, without a word)."""
    stems = ["be16", "float", "la", "frac", "neg"]
    idx, masks = _three_class_masks_to_replace(tmp_path, stems)
    Image.fromarray(idx.astype(">u2")).save(masks / "be16.tif")
    Image.fromarray(idx.astype(np.float32)).save(masks / "float.tif")
    Image.fromarray(np.dstack([idx, np.full_like(idx, 255)]), "LA").save(masks / "la.png")
    Image.fromarray(idx.astype(np.float32) / 2).save(masks / "frac.tif")
    Image.fromarray(idx.astype(np.int32) - 1).save(masks / "neg.tif")
    assert [Image.open(masks / f).mode for f in ("be16.tif", "float.tif", "la.png")] == [
        "I;16B", "F", "LA"]
    lines: list[str] = []
    pairs = load_mask_pairs(tmp_path, classes=["bg", "a", "b"], report=lines.append)
    assert pairs.names == ["be16", "float", "la"]
    for m in pairs.masks:
        np.testing.assert_array_equal(m, idx)
    assert lines == [
        f"skipped frac: cannot read mask {masks / 'frac.tif'}: mask of fractional values (a "
        "float image); save whole class indices",
        f"skipped neg: cannot read mask {masks / 'neg.tif'}: mask values below 0; save class "
        "indices 0..254 (255: ignore)"]


def test_white_is_zero_tiff_masks_keep_their_stored_class_values(tmp_path):
    """ImageJ saves an image with an inverting LUT as a TIFF marked WhiteIsZero, and PIL inverts
    such 1- and 8-bit files to show them the right way round: a mask's cells (255) read as 0 and
    its background as 255, the classes swapped without a word. The values stored are read."""
    stems = ["ij8", "ij1"]
    idx, masks = _three_class_masks_to_replace(tmp_path, stems)
    # PIL inverts WhiteIsZero files on saving as on reading: these store idx and idx > 0.
    Image.fromarray(255 - idx).save(masks / "ij8.tif", tiffinfo={262: 0})
    Image.fromarray(idx == 0).save(masks / "ij1.tif", tiffinfo={262: 0})
    assert [Image.open(masks / f).getpixel((5, 5)) for f in ("ij8.tif", "ij1.tif")] == [254, 0]
    pairs = load_mask_pairs(tmp_path, classes=["bg", "a", "b"], report=None)
    assert pairs.names == ["ij1", "ij8"]
    np.testing.assert_array_equal(pairs.masks[0], (idx > 0).astype(np.uint8))
    np.testing.assert_array_equal(pairs.masks[1], idx)


def test_stray_mask_value_is_named_when_classes_are_inferred(tmp_path):
    _pair_folder(tmp_path, ["a", "b", "c"], (40, 40))
    m = np.asarray(Image.open(tmp_path / "masks" / "b.png")) // 255
    m[0, 0] = 5  # one stray pixel in a 0/1 set (1 of 4,800 labelled pixels)
    _png(tmp_path / "masks" / "b.png", m)
    _png(tmp_path / "masks" / "a.png", m.clip(0, 1))
    _png(tmp_path / "masks" / "c.png", m.clip(0, 1))  # 0/1 too: a 0/255 one gets its own note
    lines: list[str] = []
    pairs = load_mask_pairs(tmp_path, report=lines.append)
    assert pairs.num_classes == 6 and len(lines) == 1
    assert "6 classes inferred" in lines[0] and "value 5 is on 1 pixel in 1 mask (b)" in lines[0]
    assert "values 2, 3, 4 in no mask" in lines[0] and "--classes" in lines[0]
    # Named classes: no note, the mask with the stray value is skipped as before.
    lines.clear()
    pairs = load_mask_pairs(tmp_path, classes=["bg", "cell"], report=lines.append)
    assert pairs.names == ["a", "c"] and lines == ["skipped b: mask value 5 but only 2 classes"]


def test_instances_missing_or_corrupt_for_some_pairs_and_duplicate_stems(tmp_path):
    _pair_folder(tmp_path, ["a", "b", "c", "e"])
    (tmp_path / "instances").mkdir()
    inst = np.zeros((16, 20), dtype=np.uint16)
    inst[4:8, 4:6], inst[4:8, 6:8] = 1, 2  # two touching cells: one component of the mask
    _png(tmp_path / "instances" / "a.png", inst)
    _png(tmp_path / "instances" / "c.png", inst)
    (tmp_path / "instances" / "e.png").write_bytes(b"garbage")
    _png(tmp_path / "images" / "f.png", np.zeros((16, 20), np.uint8))
    _png(tmp_path / "images" / "f.jpg", np.zeros((16, 20), np.uint8))
    _png(tmp_path / "masks" / "f.png", np.zeros((16, 20), np.uint8))
    lines: list[str] = []
    pairs = load_mask_pairs(tmp_path, report=lines.append)
    assert pairs.names == ["a", "b", "c"]
    # The instance files are used where they exist; b gets the mask's components.
    assert np.array_equal(pairs.instances[0], inst) and np.array_equal(pairs.instances[2], inst)
    assert np.array_equal(pairs.instances[1], (pairs.masks[1] > 0).astype(np.int32))
    assert any("1 of 3 pairs have no instance file (b)" in line for line in lines)
    # A corrupt instance file is named as such, not as a mask problem.
    bad = [line for line in lines if line.startswith("skipped e")]
    assert len(bad) == 1 and "cannot read instances" in bad[0] and "instances/e.png" in bad[0]
    # Two images of one stem: both named, the pair skipped, no "no image" line for its mask.
    dup = [line for line in lines if "f." in line]
    assert len(dup) == 1 and "f.jpg and" in dup[0] and "f.png" in dup[0] and "same stem" in dup[0]
    assert len(lines) == 3


def test_validation_tiles_count_every_pixel_once(tmp_path):
    sizes = [(30, 30), (70, 40), (64, 64)]
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 2, s, dtype=np.uint8) for s in sizes]
    images = [np.full((*s, 1), 7, dtype=np.uint8) for s in sizes]
    val = stack_pairs(images, masks, None, ["a", "b", "c"], 64, count_once=True)
    counted = val.masks != IGNORE_INDEX
    assert int(counted.sum()) == sum(h * w for h, w in sizes)  # padding counts nowhere
    assert int(val.masks[counted].sum()) == sum(int(m.sum()) for m in masks)
    assert len(val) == 1 + 2 + 1  # 70 rows: two tiles that do not overlap
    acc = SegmentationAccumulator(2)
    acc.update(torch.nn.functional.one_hot(torch.from_numpy(val.masks).long().clamp(0, 1), 2)
               .permute(0, 3, 1, 2).float(), torch.from_numpy(val.masks), torch.zeros(()))
    assert int(acc.confusion.sum()) == 30 * 30 + 70 * 40 + 64 * 64
    assert val.describe() == "3 images of 30x30 to 64x64 in 4 tiles of 64x64"
    # Whole images: width x height too (a 230-wide, 200-high image read '200x230').
    whole = SegmentationSet(np.zeros((1, 1, 200, 230), np.uint8), np.zeros((1, 200, 230),
                            np.uint8), None, ["w"])  # fmt: skip
    assert whole.describe() == "1 image of 230x200"
    # Training tiles keep the paper's mirrored borders (labels there are real mirrored labels).
    train = stack_pairs(images, masks, None, ["a", "b", "c"], 64)
    assert not (train.masks == IGNORE_INDEX).any()
    # Through load_segmentation: a mixed-size val/ folder is tiled the same way.
    _pair_folder(tmp_path, ["t1"], (32, 32))
    _png(tmp_path / "images" / "t2.png", np.zeros((48, 32), np.uint8))
    _png(tmp_path / "masks" / "t2.png", np.zeros((48, 32), np.uint8))
    _pair_folder(tmp_path / "val", ["v1"], (20, 20))
    _png(tmp_path / "val" / "images" / "v2.png", np.zeros((40, 20), np.uint8))
    _png(tmp_path / "val" / "masks" / "v2.png", np.zeros((40, 20), np.uint8))
    splits = load_segmentation(tmp_path, tile=32)
    assert int((splits.val.masks != IGNORE_INDEX).sum()) == 20 * 20 + 40 * 20
    assert splits.describe() == (
        "training: 2 images of 32x32 to 32x48 in 3 tiles of 32x32; "
        "validation: 2 images of 20x20 to 20x40 in 3 tiles of 32x32"
    )


def test_validation_grid_draws_only_the_image_part_of_padded_tiles(tmp_path, monkeypatch):
    from cnnzoo.data.loader import BatchLoader
    from cnnzoo.segmentation import visual
    from cnnzoo.segmentation.data import SegmentationSplits
    from cnnzoo.segmentation.training import _whole_input, write_validation_grid

    rng = np.random.default_rng(0)
    sizes = [(30, 30), (70, 40)]
    images = [rng.integers(0, 256, (*s, 1), dtype=np.uint8) for s in sizes]
    masks = [rng.integers(0, 3, s, dtype=np.uint8) for s in sizes]
    val = stack_pairs(images, masks, None, ["a", "b"], 64, count_once=True)
    # a (30 x 30) is centred in 64 x 64, b (70 x 40) in 128 x 64 (29 rows above, 12 left).
    assert val.regions == [(17, 47, 17, 47), (29, 64, 12, 52), (0, 35, 12, 52)]
    net = _eval_unet()
    loader = BatchLoader(torch.from_numpy(val.images), torch.from_numpy(val.masks),
                         batch_size=4, transform=PadToNet(_whole_input(net)))
    splits = SegmentationSplits(val, val, ["0", "1", "2"], [], "x")
    drawn = {}

    def capture(imgs, truths, preds, path, titles=None, class_names=None):
        drawn.update(imgs=imgs, truths=truths, preds=preds)
        return path

    monkeypatch.setattr(visual, "save_validation_grid", capture)
    write_validation_grid(net, splits, loader, tmp_path / "v.png")
    # The images themselves, not their mirrored copies (a 65x116 image showed as ~8 of them).
    want = [images[0], images[1][:35], images[1][35:]]
    assert [im.shape[:2] for im in drawn["imgs"]] == [(30, 30), (35, 40), (35, 40)]
    assert all(np.array_equal(got[..., 0], w[..., 0]) for got, w in zip(drawn["imgs"], want, strict=True))
    assert np.array_equal(drawn["truths"][2], masks[1][35:])


def test_validation_grid_of_many_classes_names_each_class_in_its_colour(tmp_path, monkeypatch):
    """validation.png of a four-class run was titled 'prediction (magenta)' over contours of
    three colours, and no class was named. Its legend now names each foreground class in the
    colour its contours are drawn in (truth: the pixels of the drawn picture)."""
    from cnnzoo.segmentation import visual

    figures = []
    monkeypatch.setattr(visual, "save_figure", lambda fig, path: figures.append(fig) or path)
    pred = np.zeros((24, 24), np.uint8)
    pred[2:8, 2:8], pred[2:8, 12:20], pred[14:22, 4:12] = 1, 2, 3  # a block of each class
    image = np.full((24, 24, 1), 90, np.uint8)
    names = ["background", "cell", "nucleus", r"$\frac$ marker"]  # a name, not maths
    visual.save_validation_grid([image], [pred], [pred], tmp_path / "v.png", class_names=names)
    fig = figures[0]
    fig.canvas.draw()  # matplotlib would fail on the last name read as maths
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == names[1:]
    drawn = fig.axes[0].images[0].get_array()  # the overlay shown: each block's top-left corner
    for k, (y, x) in zip((1, 2, 3), [(2, 2), (2, 12), (14, 4)], strict=True):
        colour = legend.legend_handles[k - 1].get_facecolor()[:3]
        assert tuple(drawn[y, x]) == tuple(round(c * 255) for c in colour)
    assert "magenta" not in fig.get_suptitle()
    # Two classes: the title's 'prediction (magenta)' says it all; no legend.
    figures.clear()
    visual.save_validation_grid([image], [pred > 0], [pred > 0], tmp_path / "v.png",
                                class_names=["background", "cell"])
    assert not figures[0].legends and "(magenta)" in figures[0].get_suptitle()


def test_curves_of_many_classes_wrap_into_rows(tmp_path):
    """curves.png drew one panel per metric in one row: a four-class run's 12 (Dice and IoU of
    each class, their means, loss, pixel accuracy) made a PNG 5,544 x 374 px, and Pascal VOC's
    21 classes about 20,000 px wide. Rows of six panels: 2 x 6 panels of 4.2 x 3.4 in at 110
    dpi."""
    from cnnzoo.engine.report import plot_curves

    names = ["background", "cell", "nucleus", "marker"]
    keys = ["loss", "pixel_acc", "dice", "iou"] + [f"{m}_{c}" for c in names for m in ("dice", "iou")]
    history = [{"epoch": e, **{f"{split}_{k}": 0.1 * e for k in keys for split in ("train", "val")}}
               for e in (1, 2)]
    with Image.open(plot_curves(history, tmp_path / "curves.png")) as im:
        assert im.size == (round(6 * 4.2 * 110), round(2 * 3.4 * 110))
    with Image.open(plot_curves(history[:1], tmp_path / "one.png", metrics=["loss"])) as im:
        assert im.size == (round(4.2 * 110), round(3.4 * 110))  # one panel, as before


def test_validation_grid_of_tiled_images_shows_every_validation_image(tmp_path, monkeypatch):
    """Validation images of mixed sizes are cut into tiles, and the report drew the first 8:
    all of them corners of the first scan (9 tiles), the other validation image never shown.
    It now draws one tile of each image in turn."""
    from cnnzoo.engine.loop import TrainConfig
    from cnnzoo.segmentation import visual
    from cnnzoo.segmentation.training import train

    _pair_folder(tmp_path / "d", ["t1"], (40, 48))
    _pair_folder(tmp_path / "d" / "val", ["big"], (520, 530))
    _png(tmp_path / "d" / "val" / "images" / "small.png", np.full((40, 30), 100, np.uint8))
    _png(tmp_path / "d" / "val" / "masks" / "small.png", np.zeros((40, 30), np.uint8))
    drawn = {}

    def capture(imgs, truths, preds, path, titles=None, class_names=None):
        drawn.update(imgs=imgs, titles=titles)
        return path

    monkeypatch.setattr(visual, "save_validation_grid", capture)
    run = train(tmp_path / "d", out_dir=tmp_path / "run", base_width=4, crop=32, batch_size=2,
                config=TrainConfig(epochs=1, precision="fp32", channels_last="off",
                                   progress=False, tensorboard=False), say=lambda _: None)
    assert len(run.splits.val) == 10  # big: 3 x 3 tiles of 256, small: 1
    names = [t.split()[0] for t in drawn["titles"]]
    assert len(names) == 8 and names.count("small@0,0") == 1
    assert names == [n for n in run.splits.val.names if n in names]  # in the set's order
    assert drawn["imgs"][names.index("small@0,0")].shape[:2] == (40, 30)  # not its padding


def test_the_validation_grid_shows_the_masks_the_run_scored(tmp_path, monkeypatch):
    """validation.png predicted its masks in fp32 NCHW after a run that validated in bf16 +
    channels-last (the default on a CPU with native bf16): its contours and IoUs were not the
    scored ones (23 pixels of 2 cells images differed), and it took twice as long. Drawn in the
    run's precision, the grid's masks count to the run's final confusion matrix exactly."""
    from cnnzoo.engine.loop import TrainConfig
    from cnnzoo.segmentation import visual
    from cnnzoo.segmentation.training import train

    drawn = {}

    def capture(imgs, truths, preds, path, titles=None, class_names=None):
        drawn.update(truths=truths, preds=preds)
        return path

    monkeypatch.setattr(visual, "save_validation_grid", capture)
    run = train("cells", cells=10, out_dir=tmp_path / "run", base_width=4, crop=64,
                batch_size=2, say=lambda _: None,
                config=TrainConfig(epochs=1, precision="bf16", channels_last="on",
                                   progress=False, tensorboard=False))  # fmt: skip
    assert len(drawn["preds"]) == len(run.splits.val) == 2  # the whole validation set
    grid = sum(confusion_matrix(torch.from_numpy(p).long(), torch.from_numpy(t).long(), 2)
               for p, t in zip(drawn["preds"], drawn["truths"], strict=True))
    assert torch.equal(grid, run.result.accumulator.confusion)
    assert all(p.is_contiguous() for p in run.model.parameters())  # handed back as fit() does


@pytest.mark.parametrize("padding, size", [("same", (100, 150)), ("valid", (17, 90))])
def test_validation_scores_every_pixel_of_any_shape_once(padding, size):
    from cnnzoo.segmentation.training import _whole_input

    net = create_model("unet", num_classes=2, in_chans=1, padding=padding, base_width=4).eval()
    h, w = size
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 1, h, w), dtype=torch.uint8, generator=gen)
    masks = torch.randint(0, 2, (2, h, w), dtype=torch.uint8, generator=gen)
    x, y = PadToNet(_whole_input(net))(images, masks, gen)
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    assert torch.equal(x[..., top : top + h, left : left + w], images)  # the image, centred
    with torch.no_grad():
        logits = net(x.float())
    acc = SegmentationAccumulator(2)
    acc.update(logits, y, torch.zeros(()))
    assert int(acc.confusion.sum()) == 2 * h * w  # every pixel once, the padding nowhere
    assert int(acc.confusion[1].sum()) == int(masks.sum())  # the image's own labels


def test_validation_batches_are_bounded_by_pixels_and_do_not_change_the_metrics():
    from cnnzoo.data.loader import BatchLoader
    from cnnzoo.segmentation.task import SegmentationTask
    from cnnzoo.segmentation.training import _val_batch_size, _whole_input

    # 16 training tiles of 128 px = 262,144 px: one 1440 x 1088 image a batch (it was 16),
    # four 256 x 256 ones, and small images stay at max(batch size, 16).
    assert _val_batch_size(8, 128, 1440 * 1088) == 1
    assert _val_batch_size(8, 128, 256 * 256) == 4
    assert _val_batch_size(8, 128, 48 * 48) == 16 and _val_batch_size(32, 128, 48 * 48) == 32
    # The metrics are sums over pixels (and cells per image): batching does not change them.
    net = _eval_unet()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 1, 40, 44), dtype=torch.uint8, generator=gen)
    masks = torch.randint(0, 3, (5, 40, 44), dtype=torch.uint8, generator=gen)
    masks[:, :20, :20] = 1  # some cells to count
    masks[1, 5:30] = IGNORE_INDEX
    task = SegmentationTask(3, count_instances=True)
    scores = []
    for bs in (1, 2, 5):
        acc = task.metrics()
        loader = BatchLoader(images, masks, batch_size=bs, transform=PadToNet(_whole_input(net)))
        with torch.no_grad():
            for x, y in loader:
                out = net(x)
                acc.update(out, y, task.loss(out, y))
        assert int(acc.confusion.sum()) == 5 * 40 * 44 - 25 * 44
        scores.append({k: v for k, v in acc.compute().items() if k != "loss"})
    assert scores[0] == scores[1] == scores[2]


def test_images_smaller_than_a_tile_train_and_validate_whole(tmp_path):
    _pair_folder(tmp_path / "data", ["a", "b", "c"], size=(10, 12))
    out = tmp_path / "run"
    rc = main(["train", "unet", "--task", "segmentation", "--data", str(tmp_path / "data"),
               "--padding", "valid", "--epochs", "1", "--base-width", "4", "--precision",
               "fp32", "--channels-last", "off", "--no-progress", "--no-tensorboard",
               "--out", str(out)])
    assert rc == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isclose(row["val_pixel_acc"] * 120, round(row["val_pixel_acc"] * 120))


def test_valid_padding_crop_is_the_output_side_and_images_get_the_trimmed_context(tmp_path):
    from cnnzoo.segmentation.training import _legal_crop, train

    net = create_model("unet", num_classes=2, in_chans=1, padding="valid", base_width=4)
    # The paper's tile: 572 in -> 388 out; the default crop 128 -> 316 in, 132 out (it was a
    # 188 input scoring 4 x 4 centre pixels per step).
    assert _legal_crop(net, 388, 10_000) == 572 and net.output_size(572) == 388
    assert _legal_crop(net, 128, 10_000) == 316 and net.output_size(316) == 132
    # At most what the images allow: 64-px images + 2 x 92 px of mirrored context = 248 ->
    # 236 in (188 + 16 * 3), 52 out.
    assert _legal_crop(net, 128, 64 + 184) == 236 and net.output_size(236) == 52
    # Mirror padding by a margin keeps the image in the centre.
    m = np.arange(20, dtype=np.uint8).reshape(4, 5)
    sset = SegmentationSet(m[None, None], m[None], None, ["a"]).padded(16, margin=3)
    assert sset.masks.shape == (1, 16, 16) and np.array_equal(sset.masks[0, 6:10, 5:10], m)
    sset = SegmentationSet(m[None, None], m[None], None, ["a"]).padded(4, margin=3)
    assert sset.masks.shape == (1, 10, 11) and np.array_equal(sset.masks[0, 3:7, 3:8], m)
    _pair_folder(tmp_path / "d", ["a", "b", "c"], size=(64, 64))
    lines: list[str] = []
    train(tmp_path / "d", padding="valid", base_width=4, epochs=1, say=lines.append,
          precision="fp32", channels_last="off", progress=False, tensorboard=False, report=False)
    assert lines[0].endswith("training tiles 236x236 in, 52x52 out")
    # The engine's lines go to `say` too: they went to stderr whatever `say` was.
    assert lines[1] == "precision: fp32 NCHW (forced)" and lines[2].startswith("epoch 1/1  lr ")


def test_training_leaves_the_callers_random_streams_as_they_were():
    """train() seeded the global torch RNG: a notebook's own draws after it changed."""
    import random

    from cnnzoo.segmentation.training import train

    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    before = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    train("cells", cells=4, crop=32, batch_size=2, base_width=4, epochs=1, say=lambda _: None,
          precision="fp32", channels_last="off", progress=False, verbose=False, report=False)
    after = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(after[0], before[0]) and (after[1] == before[1]).all()
    assert after[2] == before[2]


def test_cells_need_two_images_to_validate():
    with pytest.raises(DataError, match="cells has 1 image: need at least 2 to validate"):
        load_segmentation("cells", cells=1)
    splits = load_segmentation("cells", cells=2, val_fraction=0.9)
    assert (len(splits.train), len(splits.val)) == (1, 1)
    assert splits.describe() == "1 training and 1 validation images of 256x256"


def test_classes_given_for_the_cells_are_refused_unless_they_are_theirs(tmp_path, capsys):
    """`cnnzoo train unet --data cells --classes a,b,c` trained 'background, cell' and dropped
    the names without a word: --classes names a folder's mask values. Now a one-line error
    before anything is written; the cells' own names are accepted."""
    with pytest.raises(DataError, match=r"^cells has its own classes \(background, cell\), not "
                                        r"a, b, c: leave out --classes"):
        load_segmentation("cells", cells=2, classes="a,b,c")
    assert load_segmentation("cells", cells=2, classes=["background", "cell"]).classes == [
        "background", "cell"]
    out = tmp_path / "run"
    assert main(["train", "unet", "--data", "cells", "--cells", "2", "--classes", "bg,cell",
                 "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("cnnzoo train: error: cells has its own classes") and err.count("\n") == 1
    assert not out.exists()


def test_cells_given_with_a_folder_is_refused(tmp_path, capsys):
    """`cnnzoo train unet --data DIR --cells 50` trained on every pair of DIR and dropped the
    number without a word (it counts the synthetic cells only). Now a one-line error before
    anything is written; without --cells the folder loads."""
    _pair_folder(tmp_path / "pairs", ["a", "b", "c"])
    with pytest.raises(DataError, match=r"^--cells is the number of synthetic images of --data "
                                        r"cells; .*pairs is image/mask pairs, all of which are "
                                        r"used: leave out --cells$"):
        load_segmentation(tmp_path / "pairs", cells=50)
    assert len(load_segmentation(tmp_path / "pairs").train) == 2
    out = tmp_path / "run"
    assert main(["train", "unet", "--data", str(tmp_path / "pairs"), "--cells", "50",
                 "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("cnnzoo train: error: --cells is the number") and err.count("\n") == 1
    assert not out.exists()


def test_segmentation_objects_have_one_line_reprs(tmp_path):
    # repr(splits) was ~15,000 characters of arrays; the task and accumulator `<... at 0x...>`.
    from cnnzoo.segmentation.task import SegmentationTask

    splits = load_segmentation("cells", cells=4)
    assert repr(splits) == "SegmentationSplits(cells: 2 classes, train=3 1x256x256, val=1 1x256x256)"
    assert repr(splits.train) == "SegmentationSet(3 images of 256x256, 1 channel)"
    task = SegmentationTask(2, loss="weighted_ce", count_instances=True)
    assert repr(task) == "SegmentationTask(2 classes, loss='weighted_ce', monitor='dice')"
    acc = task.metrics()
    acc.update(torch.zeros(2, 2, 4, 5), torch.zeros(2, 4, 5, dtype=torch.long), torch.zeros(()))
    assert repr(acc) == "SegmentationAccumulator(2 classes, 2 images, 40 pixels, counting cells)"
    _pair_folder(tmp_path, ["a", "b"])
    assert repr(load_mask_pairs(tmp_path, report=None)) == "MaskPairs(2 pairs, 2 classes, 0 skipped)"


def test_cells_are_reproducible_and_export_reads_back(tmp_path):
    a = make_cells(2, size=64, seed=7)
    b = make_cells(3, size=64, seed=7)
    assert np.array_equal(a.images, b.images[:2]) and np.array_equal(a.masks, b.masks[:2])
    assert not np.array_equal(make_cells(1, size=64, seed=7, split="test").images, a.images[:1])
    # Touching cells exist and their seams split them in the semantic mask.
    from scipy import ndimage

    big = make_cells(2, size=128, seed=0)
    touching = 0
    for inst, sem in zip(big.instances, big.masks, strict=True):
        touching += int(ndimage.label(inst > 0)[1] < inst.max())  # some cells do touch
        comps, n = ndimage.label(sem)
        for c in range(1, n + 1):  # every component of the semantic mask is one single cell
            assert len(np.unique(inst[comps == c])) == 1
    assert touching == 2
    assert main(["data", "export", "cells", str(tmp_path / "c"), "--per-class", "3",
                 "--seed", "7"]) == 0
    pairs = load_mask_pairs(tmp_path / "c", report=None)
    assert pairs.classes == ["background", "cell"] and len(pairs) == 3
    want = make_cells(3, seed=7)
    assert np.array_equal(np.stack(pairs.masks), want.masks)
    assert np.array_equal(np.stack(pairs.instances), want.instances)
    assert np.array_equal(np.stack(pairs.images)[..., 0], want.images)
    # exporting over it again is refused in one line
    assert main(["data", "export", "cells", str(tmp_path / "c"), "--per-class", "3"]) == 2


# ----------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "efficientnet_lite2"])
def test_classifier_encoders_and_their_weights(tmp_path, name):
    src = create_model(name)  # a random "pretrained" classifier saved as a file
    path = tmp_path / f"{name}.pth"
    torch.save(src.state_dict(), path)
    net = create_model("unet", num_classes=3, in_chans=3, encoder_name=name,
                       encoder_weights=str(path)).eval()
    sd = src.state_dict()
    enc = net.encoder.state_dict()
    shared = [k for k in enc if k in sd]
    assert len(shared) == len(enc) and all(torch.equal(enc[k], sd[k]) for k in shared)
    with torch.no_grad():
        assert net(torch.rand(1, 3, 64, 80)).shape == (1, 3, 64, 80)


def test_vgg16_bn_encoder_taps_before_each_pool():
    net = create_model("unet", num_classes=2, in_chans=1, encoder_name="vgg16_bn").eval()
    assert net.encoder.feature_channels == (64, 128, 256, 512, 512)
    feats = net.encoder.forward_intermediates(torch.rand(1, 1, 64, 64))
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8, 4]


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "run"
    rc = main(["train", "unet", "--task", "segmentation", "--data", "cells", "--cells", "6",
               "--epochs", "2", "--crop", "64", "--batch-size", "4", "--base-width", "4",
               "--loss", "weighted_ce", "--precision", "fp32", "--channels-last", "off",
               "--no-progress", "--no-tensorboard", "--out", str(out)])
    assert rc == 0
    return out


def test_a_bare_resume_of_a_unet_run_keeps_its_epochs(tmp_path, capsys):
    """`--epochs` says 'with --resume: the run's own', and a classifier's resume keeps them; a
    U-Net's took the default 10: a run of 1 resumed as one of 10 ('warning: resuming with
    different epochs (was 1, now 10)') and trained 9 more."""
    from cnnzoo.engine.checkpoint import load_checkpoint

    out = tmp_path / "run"
    args = ["train", "unet", "--data", "cells", "--cells", "3", "--crop", "32", "--batch-size",
            "2", "--base-width", "4", "--precision", "fp32", "--channels-last", "off",
            "--no-progress", "--no-tensorboard", "--out", str(out)]  # fmt: skip
    assert main([*args, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "warning: resuming" not in err and "nothing left to train" in err
    assert len(load_checkpoint(out / "last.pt")["history"]) == 1



def test_a_bare_resume_of_a_unet_run_keeps_its_tiles_and_batches(tmp_path, capsys):
    """A run on 32-px tiles in batches of 2, resumed with --resume and --epochs alone, went on
    with the defaults, 128-px tiles in batches of 8 ('warning: resuming with different
    img_size (was 32, now 128), batch_size (was 2, now 8)'); a classifier's keeps its own."""
    from cnnzoo.engine.checkpoint import load_checkpoint

    out = tmp_path / "run"
    args = ["train", "unet", "--data", "cells", "--cells", "3", "--base-width", "4",
            "--precision", "fp32", "--channels-last", "off", "--no-progress",
            "--no-tensorboard", "--out", str(out)]  # fmt: skip
    assert main([*args, "--epochs", "1", "--crop", "32", "--batch-size", "2"]) == 0
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "img_size" not in err and "batch_size" not in err, err
    meta = load_checkpoint(out / "last.pt")["meta"]
    assert (meta["tile"], meta["batch_size"]) == (32, 2)


def test_train_unet_segmentation_cli_end_to_end(trained, capsys):
    for name in ("best.pt", "last.pt", "curves.png", "validation.png", "metrics.jsonl"):
        assert (trained / name).is_file(), name
    # `predict` classifies: a U-Net checkpoint gets one line pointing to `segment` and to
    # `evaluate` (which scores it, tests below).
    _png(trained.parent / "x.png", np.zeros((32, 32), np.uint8))
    assert main(["predict", str(trained.parent / "x.png"), "--weights",
                 str(trained / "best.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a segmentation checkpoint (unet)" in err and "cnnzoo segment" in err
    assert "cnnzoo evaluate" in err and "\n" not in err
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for key in ("val_iou_cell", "val_dice_cell", "val_pixel_acc", "val_count_err", "val_loss"):
        assert key in rows[-1]
    ckpt = torch.load(trained / "best.pt", weights_only=True)
    assert ckpt["meta"]["task"] == "segmentation" and ckpt["meta"]["loss"] == "weighted_ce"


def test_segment_cli_1024_image_writes_mask_and_overlay(trained, tmp_path, capsys):
    from cnnzoo.segmentation.training import load_segmenter

    data = make_cells(1, size=1024, seed=1, split="test")
    _png(tmp_path / "big.png", data.images[0])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "big.png"), str(tmp_path / "broken.png"),
               "--checkpoint", str(trained / "best.pt"), "--out", str(out), "--tile", "1024",
               "--batch-size", "1"])
    assert rc == 1  # one bad file, reported, the other segmented
    mask = np.asarray(Image.open(out / "big_mask.png"))
    assert mask.shape == (1024, 1024) and set(np.unique(mask)) <= {0, 255}
    overlay = np.asarray(Image.open(out / "big_overlay.png"))
    assert overlay.shape == (1024, 1024, 3)
    # The mask is the net's own prediction: compare with one whole-image pass in the interior.
    model, meta = load_segmenter(trained / "best.pt")
    x = (torch.from_numpy(data.images[0]).float()[None, None] / 255 - meta["mean"][0])
    with torch.no_grad():
        whole = model(x / meta["std"][0])[0].argmax(0).numpy()
    inner = (slice(96, -96), slice(96, -96))
    agree = ((mask[inner] > 0) == (whole[inner] > 0)).mean()
    assert agree > 0.999
    # Overlay: the image where there is no contour, magenta on the predicted contours.
    from cnnzoo.segmentation.visual import contours

    edge = contours(mask // 255)
    assert (overlay[~edge] == data.images[0][~edge][:, None]).all()
    assert (overlay[edge] == [255, 0, 255]).all()
    # Context beyond memory: one line before any tile is made (was a 25 GB MemoryError).
    rc = main(["segment", str(tmp_path / "big.png"), "--checkpoint", str(trained / "best.pt"),
               "--out", str(tmp_path / "o2"), "--margin", "5000"])
    assert rc == 2 and not (tmp_path / "o2" / "big_mask.png").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "more than 4096 px fit in memory: choose a smaller --tile or --margin")


def test_segment_tta_writes_the_masks_evaluate_tta_scores(trained, tmp_path):
    """`evaluate --tta` scored masks that `segment` could not write (it had no --tta). Now
    `segment --tta` averages the same views per overlap tile: its mask is the argmax of the TTA
    probabilities of evaluate's code (`predict_tiled(..., tta=...)`, the same tiles), and with
    the whole image as its one tile, the mean of the net's logits for the image and its mirror
    image, worked out here by hand. Each mask records its TTA mode."""
    from cnnzoo.commands.segment import TTA_KEY
    from cnnzoo.segmentation.training import load_segmenter

    img = make_cells(1, size=64, seed=2, split="test").images[0][:, :48]  # 64 x 48, 4 tiles
    _png(tmp_path / "x.png", img)
    model, meta = load_segmenter(trained / "best.pt")
    norm = {"mean": tuple(meta["mean"]), "std": tuple(meta["std"])}
    written = {}
    for tta in ("flip", "flip-shift", None):
        out = tmp_path / f"out-{tta}"
        assert main(["segment", str(tmp_path / "x.png"), "--checkpoint", str(trained / "best.pt"),
                     "--out", str(out), "--tile", "224", *(["--tta", tta] if tta else [])]) == 0
        with Image.open(out / "x_mask.png") as m:
            written[tta] = np.asarray(m) // 255
            assert m.text.get(TTA_KEY) == tta
        if tta:
            probs = predict_tiled(model, img, tile=224, tta=tta, **norm)
            assert probs.shape == (2, 64, 48)
            np.testing.assert_array_equal(written[tta], probs.argmax(0).numpy())
    assert (written["flip"] != written[None]).any()  # the views change the masks
    assert (written["flip-shift"] != written["flip"]).any()
    # One tile, no context: the whole 64 x 48 image and its mirror image, averaged.
    assert main(["segment", str(tmp_path / "x.png"), "--checkpoint", str(trained / "best.pt"),
                 "--out", str(tmp_path / "one"), "--tile", "64", "--margin", "0",
                 "--tta"]) == 0  # a bare --tta: flip
    x = (torch.from_numpy(img).float()[None, None] / 255 - meta["mean"][0]) / meta["std"][0]
    x = torch.nn.functional.pad(x, (0, 16, 0, 0), mode="reflect")  # the tile: 64 x 64, mirrored
    with torch.no_grad():
        logits = (model(x) + model(x.flip(-1)).flip(-1)) / 2
    with Image.open(tmp_path / "one" / "x_mask.png") as m:
        np.testing.assert_array_equal(np.asarray(m) // 255, logits[0, :, :, :48].argmax(0))
        assert m.text[TTA_KEY] == "flip"


@pytest.mark.parametrize("option", [["--augment", "photo"], ["--erase", "0.5"],
                                    ["--label-smoothing", "0"]])
def test_classification_options_are_refused_for_segmentation(option, tmp_path, capsys):
    # They had no effect: the run was the default one, without a word.
    out = tmp_path / "run"
    rc = main(["train", "unet", "--task", "segmentation", "--data", "cells", *option,
               "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{option[0]} is for classification" in err[0]
    assert not out.exists()  # before any work


@pytest.mark.parametrize("option", [["--cells", "50"], ["--crop", "64"], ["--loss", "dice"],
                                    ["--encoder", "resnet18"], ["--classes", "a,b"]])
def test_segmentation_options_are_refused_for_a_classifier(option, tmp_path, capsys):
    # They had no effect: `train lenet5 --data digits --cells 50` was the default run.
    out = tmp_path / "run"
    rc = main(["train", "lenet5", "--data", "digits", *option, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"cnnzoo train: error: {option[0]} is for --task segmentation "
                               "(a U-Net); this run trains lenet5 as a classifier: leave it out"]
    assert not out.exists()  # before any work


@pytest.mark.parametrize("arg, words", [
    ("num_classes=5", "num_classes: set by the data (the classes: the masks' values, --classes"),
    ("classes=5", "classes: set by the data (the classes: the masks' values, --classes"),
    ("in_chans=3", "in_chans: set by the data (the channels: the images' own"),
    ("in_channels=3", "in_channels: set by the data (the channels: the images' own"),
    ("encoder_depth=4", "unet has no option 'encoder_depth': fixed: the U-Net's decoder takes "
                        "every stage of its encoder"),
])
def test_model_args_the_data_set_are_refused_before_the_data_load(arg, words, tmp_path, capsys):
    """smp's `classes=3, in_channels=1` as --model-arg: the registry's hint said 'use
    num_classes=N', and --model-arg num_classes=5 (or in_chans) then ended in a traceback
    (create_model got num_classes twice) after the data had loaded; encoder_depth was 'did you
    mean encoder_name?'. Each is now one line, before the data are read (a folder that does not
    exist would be a DataError)."""
    out = tmp_path / "run"
    rc = main(["train", "unet", "--data", str(tmp_path / "no such data"), "--model-arg", arg,
               "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"cnnzoo train: error: {words}"), err[0]
    assert not out.exists()


def test_encoder_weights_none_is_a_random_start(tmp_path, monkeypatch):
    """`--encoder-weights none` (smp's encoder_weights=None; the help says 'default: none') was
    looked up as a weights file after the data had loaded: 'none: no such weights file or named
    weights'. It is now the random start that leaving the option out gives; a file named
    'none' is still that file."""
    from cnnzoo.cli import build_parser

    def weights(*given: str):
        argv = ["train", "unet", "--data", "d", "--encoder", "resnet18", *given]
        return build_parser().parse_args(argv).encoder_weights

    monkeypatch.chdir(tmp_path)
    assert weights() is None
    assert weights("--encoder-weights", "none") is None
    assert weights("--encoder-weights", "None") is None
    assert weights("--encoder-weights", "imagenet") == "imagenet"
    (tmp_path / "none").write_bytes(b"")
    assert weights("--encoder-weights", "none") == "none"


def test_base_width_with_an_encoder_is_refused_in_one_line(tmp_path, capsys):
    """An encoder brings its own widths: `--encoder resnet18 --base-width 8` trained resnet18's
    64 to 512 channels and dropped --base-width without a word."""
    out = tmp_path / "run"
    rc = main(["train", "unet", "--data", "cells", "--encoder", "resnet18", "--base-width", "8",
               "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "--base-width sets the widths of the plain U-Net; --encoder resnet18 has its own" in err[0]
    assert not out.exists()  # before any work


def test_net_options_and_mixing_are_refused_before_the_data_load(tmp_path, monkeypatch,
                                                                   capsys):
    """A mistyped --model-arg, an encoder the U-Net does not take, --padding valid with an
    encoder, missing encoder weights and --mixup were refused only after the data load (200
    synthetic cells, or a big folder: many seconds): now before any image is read (the load
    fails here), in the words the real build uses."""
    import cnnzoo.segmentation.training as training

    def no_data(*args, **kwargs):
        raise AssertionError("the data were loaded before the options were checked")

    monkeypatch.setattr(training, "load_segmentation", no_data)
    cases = [
        (["--model-arg", "foo=1"], "unet has no option 'foo': its options are padding, "),
        (["--model-arg", "dropout=2"], "unet: dropout is a probability, a number in [0, 1), "
                                       "not 2"),
        (["--model-arg", "decoder_channels=x"], "decoder_channels takes 4 whole numbers"),
        (["--encoder", "lenet5"], "unet: encoder_name must be one of resnet18, "),
        (["--encoder", "resnet18", "--padding", "valid"], "unet: a custom encoder needs "
                                                          "padding='same'"),
        (["--encoder", "resnet18", "--encoder-weights", str(tmp_path / "gone.pth")],
         f"{tmp_path / 'gone.pth'}: no such weights file"),
        (["--mixup", "0.2"], "mixup and CutMix mix class labels; the segmentation task has "
                             "none: leave --mixup / --cutmix at 0"),
    ]
    out = tmp_path / "run"
    for args, message in cases:
        assert main(["train", "unet", "--data", "cells", *args, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"cnnzoo train: error: {message}"), (args, err)
        assert not out.exists()


def test_classification_options_at_their_defaults_pass_and_patience_says_dice(capsys):
    # At their defaults they are no request: the run goes on to the data (here refused later).
    rc = main(["train", "unet", "--task", "segmentation", "--data", "cells", "--cells", "1",
               "--erase", "0", "--label-smoothing", "0.1"])
    assert rc == 2 and "cells has 1 image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "better validation loss (segmentation: foreground Dice)" in help_text


def test_segment_rejects_a_classification_checkpoint(tmp_path, capsys):
    from cnnzoo.engine.checkpoint import atomic_save

    atomic_save({"model": {}, "meta": {"model": "lenet5"}, "task": "classification"},
                tmp_path / "c.pt")
    _png(tmp_path / "x.png", np.zeros((32, 32), dtype=np.uint8))
    rc = main(["segment", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "c.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a segmentation checkpoint" in err[0]


def test_segment_predicts_in_the_runs_precision_as_evaluate_scores(tmp_path, capsys):
    """A bf16 run's masks: `evaluate` scores the bf16 prediction (the run's own validation), and
    `segment` wrote the fp32 one. This net's two logits sit near 100, where bf16 keeps steps of
    0.5, so nearly every pixel's class depends on the precision."""
    from cnnzoo.engine.checkpoint import atomic_save

    torch.manual_seed(0)
    kwargs = {"padding": "same", "base_width": 4, "batchnorm": False}
    net = create_model("unet", num_classes=2, in_chans=1, **kwargs).eval()
    with torch.no_grad():
        net.head.weight.mul_(0.05)
        net.head.bias.fill_(100)
    meta = {"task": "segmentation", "model": "unet", "model_kwargs": kwargs, "num_classes": 2,
            "in_chans": 1, "mean": [0.0], "std": [1.0], "class_names": ["background", "cell"]}
    atomic_save({"format": "cnnzoo-checkpoint-1", "model": net.state_dict(),
                 "task": "segmentation", "meta": meta,
                 "precision": {"dtype": "bf16", "channels_last": False}}, tmp_path / "net.pt")
    img = np.random.default_rng(0).integers(0, 256, (48, 40), dtype=np.uint8)
    _png(tmp_path / "x.png", img)
    assert main(["segment", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "net.pt"),
                 "--out", str(tmp_path / "out"), "--tile", "64"]) == 0
    written = np.asarray(Image.open(tmp_path / "out" / "x_mask.png")) // 255
    fp32 = predict_tiled(net, img, tile=64, output="mask").numpy()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = predict_tiled(net, img, tile=64, output="mask").numpy()
    assert (fp32 != bf16).mean() > 0.5  # the precision matters here
    np.testing.assert_array_equal(written, bf16)



def test_segment_run_again_leaves_out_its_own_earlier_outputs(tmp_path, capsys):
    """`cnnzoo segment .` run twice: the first run's folder ./segmented is inside the folder
    given, and the second run segmented its masks and overlays too (x_mask_mask.png, ...)."""
    _threshold_unet(tmp_path / "net.pt", "elsewhere")
    scans = tmp_path / "scans"
    _put(scans / "x.png", np.tile(np.array([0, 200], np.uint8).repeat(8), (20, 2)))
    args = ["segment", str(scans), "--checkpoint", str(tmp_path / "net.pt"), "--out",
            str(scans / "segmented")]
    assert main(args) == 0
    first = {p: p.read_bytes() for p in (scans / "segmented").iterdir()}
    assert sorted(p.name for p in first) == ["x_mask.png", "x_overlay.png"]
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 0
    out, err = capsys.readouterr()
    assert sorted(p.name for p in (scans / "segmented").iterdir()) == ["x_mask.png",
                                                                         "x_overlay.png"]
    assert len(out.splitlines()) == 1 and out.startswith(f"{scans / 'x.png'}: 32x20 -> ")
    assert err.strip() == (f"cnnzoo segment: note: left out 2 files in {scans / 'segmented'}, "
                           "the masks and overlays of an earlier run")
    assert {p: p.read_bytes() for p in (scans / "segmented").iterdir()} == first
    # Named on the command line, an earlier mask is segmented as asked.
    assert main(["segment", str(scans / "segmented" / "x_mask.png"), "--checkpoint",
                 str(tmp_path / "net.pt"), "--out", str(scans / "segmented")]) == 0
    assert (scans / "segmented" / "x_mask_mask.png").is_file()



def test_segment_of_a_pair_folder_leaves_out_its_masks(tmp_path, capsys):
    """`cnnzoo segment held_out/` on a folder of image/mask pairs segmented its masks/ and
    instances/ too, as images: a mask of each mask. The images only now, with a note; the
    masks folder named itself is segmented as asked. Truth: the threshold net's masks of the
    images, which are bright where their masks say cell."""
    _threshold_unet(tmp_path / "net.pt", "elsewhere")
    data = tmp_path / "held_out"
    img = np.tile(np.array([0, 200], np.uint8).repeat(8), (20, 2))
    _put(data / "Images" / "a.png", img)
    _put(data / "Masks" / "a.png", (img > 0).astype(np.uint8))
    _put(data / "instances" / "a.png", (img > 0).astype(np.uint8))
    out = tmp_path / "out"
    args = ["--checkpoint", str(tmp_path / "net.pt")]
    assert main(["segment", str(tmp_path), *args, "--out", str(out)]) == 0  # a folder above
    said = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_mask.png")), (img > 0) * 255)
    assert said.out.startswith(f"{data / 'Images' / 'a.png'}: 32x20 -> ")
    assert said.err == (f"cnnzoo segment: note: left out 2 files in {data / 'Masks'}, "
                        f"{data / 'instances'}, the masks of image/mask pairs: name that folder "
                        "to segment them\n")
    assert main(["segment", str(data / "Masks"), *args, "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "a_mask.png").is_file()


def test_segment_json_gives_a_record_per_image_as_predict_does(tmp_path, capsys):
    """`segment` had no --json, where `predict` has one: one JSON list on stdout (nothing else
    there), a record per image with its files and each class's share of the pixels, and an
    unreadable image's error (on stderr too, with exit status 1)."""
    _threshold_unet(tmp_path / "net.pt", "elsewhere")
    scans = tmp_path / "scans"
    _put(scans / "a.png", np.tile(np.array([0, 200], np.uint8).repeat(8), (20, 2)))  # half cell
    _put(scans / "b.png", np.zeros((16, 24), np.uint8))
    (scans / "c.png").write_bytes(b"not a png")
    args = ["segment", str(scans), "--checkpoint", str(tmp_path / "net.pt"), "--out",
            str(tmp_path / "out")]  # fmt: skip
    assert main([*args, "--json"]) == 1
    out, err = capsys.readouterr()
    records = json.loads(out)
    assert [r["image"] for r in records] == [str(scans / n) for n in ("a.png", "b.png", "c.png")]
    a, b, c = records
    assert a == {"image": str(scans / "a.png"), "width": 32, "height": 20,
                 "mask": str(tmp_path / "out" / "a_mask.png"),
                 "overlay": str(tmp_path / "out" / "a_overlay.png"),
                 "classes": [{"index": 0, "class": "background", "share": 0.5},
                             {"index": 1, "class": "cell", "share": 0.5}]}  # fmt: skip
    assert [x["share"] for x in b["classes"]] == [1.0, 0.0]
    assert (tmp_path / "out" / "b_mask.png").is_file()
    assert set(c) == {"image", "error"} and "c.png" in c["error"]
    assert err.strip() == f"cnnzoo segment: error: {c['error']}"
    # The text output says the same, a line per image.
    assert main([*args, "--overwrite"]) == 1
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{scans / 'a.png'}: 32x20 -> {tmp_path / 'out' / 'a_mask.png'}, "
        f"{tmp_path / 'out' / 'a_overlay.png'} (background 50.0%, cell 50.0%)")
    # Resumed (a first run stopped before it printed its JSON): every image's record, in order,
    # those of the earlier run read from their masks, so a script learns where every mask is.
    # It listed only this run's images, and [] with nothing left to segment.
    (scans / "c.png").unlink()
    (tmp_path / "out" / "b_overlay.png").unlink()  # b: to be redone
    assert main([*args, "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{**a, "earlier_run": True}, b]
    assert main([*args, "--resume", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == [{**a, "earlier_run": True}, {**b, "earlier_run": True}]
    assert "nothing to do" in err
    assert main([*args, "--resume"]) == 0  # the text output: this run's lines (none) and a note
    assert capsys.readouterr().out == ""
    (tmp_path / "out" / "b_mask.png").write_bytes(b"cut")  # not a PNG any more: said
    assert main([*args, "--resume", "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)[1] == {"image": str(scans / "b.png"), "error": (
        f"{tmp_path / 'out' / 'b_mask.png'}, the mask an earlier run wrote, cannot be read "
        f"(cannot identify image file {str(tmp_path / 'out' / 'b_mask.png')!r}): pass "
        "--overwrite to segment again")}
    assert err.count("\n") == 2  # the note and the error
    # A folder without images among the others: exit status 1, and a record saying why (it
    # was on stderr only, and the document held nothing that failed).
    (tmp_path / "none").mkdir()
    problem = {"image": str(tmp_path / "none"),
               "error": f"{tmp_path / 'none'}: no image files in this folder"}
    for again in ("--overwrite", "--resume"):  # --resume: a, b from their masks
        assert main([args[0], str(tmp_path / "none"), *args[1:], "--json", again]) == 1
        out, err = capsys.readouterr()
        records = json.loads(out)
        assert records[0] == problem and len(records) == 3
        assert f"cnnzoo segment: error: {problem['error']}\n" in err


def test_segment_writes_a_multi_class_mask_as_a_palette_png_of_class_indices(tmp_path, capsys):
    """A three-class mask was an L-mode PNG of 0, 1, 2: black in every image viewer. It is now
    a palette PNG, as Pascal VOC's masks are: its pixel values are still the class indices (PIL
    and `load_mask_pairs` read them back unchanged), and its colours are the overlay's. Truth:
    the threshold net's classes of three bands, by construction. Two classes stay 0/255 grey."""
    _threshold_unet(tmp_path / "net3.pt", "elsewhere", classes=3)
    data = tmp_path / "pairs"
    img = np.repeat(np.array([0, 128, 255], np.uint8), [6, 7, 7])[:, None].repeat(32, 1)
    want = np.repeat(np.array([0, 1, 2], np.uint8), [6, 7, 7])[:, None].repeat(32, 1)
    _put(data / "images" / "x.png", img)
    out = tmp_path / "out"
    assert main(["segment", str(data / "images" / "x.png"), "--checkpoint",
                 str(tmp_path / "net3.pt"), "--out", str(out)]) == 0
    with Image.open(out / "x_mask.png") as m:
        assert m.mode == "P"
        np.testing.assert_array_equal(np.array(m), want)
        rgb = np.array(m.convert("RGB"))
    # Each class has its own colour, background black, and it is the overlay's contour colour.
    colours = {i: tuple(rgb[want == i][0]) for i in range(3)}
    assert colours[0] == (0, 0, 0) and len(set(colours.values())) == 3
    edge = np.array(Image.open(out / "x_overlay.png"))
    assert tuple(edge[6, 0]) == colours[1] and tuple(edge[13, 0]) == colours[2]  # top rows
    # Read back as training reads masks: the same indices.
    (data / "masks").mkdir()
    shutil.copy(out / "x_mask.png", data / "masks" / "x_mask.png")
    pairs = load_mask_pairs(data, classes="background,cell,nucleus", report=None)
    np.testing.assert_array_equal(pairs.masks[0], want)
    # --resume --json reads the shares back from the palette mask.
    capsys.readouterr()
    assert main(["segment", str(data / "images" / "x.png"), "--checkpoint",
                 str(tmp_path / "net3.pt"), "--out", str(out), "--resume", "--json"]) == 0
    shares = [c["share"] for c in json.loads(capsys.readouterr().out)[0]["classes"]]
    assert shares == pytest.approx([6 / 20, 7 / 20, 7 / 20])
    # Two classes: 0/255 grey, as docs/segmentation.md says.
    _threshold_unet(tmp_path / "net2.pt", "elsewhere")
    assert main(["segment", str(data / "images" / "x.png"), "--checkpoint",
                 str(tmp_path / "net2.pt"), "--out", str(tmp_path / "two")]) == 0
    with Image.open(tmp_path / "two" / "x_mask.png") as m:
        assert m.mode == "L"
        np.testing.assert_array_equal(np.array(m), np.where(img >= 128, 255, 0))


def test_a_named_class_in_no_mask_is_named_at_training_and_evaluation(tmp_path, capsys):
    """A class named (--classes, classes.txt) that no mask holds scores Dice and IoU 1 while
    the net predicts none of it, and 0 once it predicts any (smp's convention), and counts in
    the foreground means: val_dice_nucleus 1.0 was logged without a word. Training and
    evaluate now say so in one note; classes inferred from the values keep their own note."""
    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    (data / "classes.txt").write_text("bg\ncell\nnucleus\n")
    img = np.repeat(np.array([0, 128], np.uint8), [16, 16])[:, None].repeat(32, 1)
    mask = (img > 0).astype(np.uint8)  # bg and cell; nucleus nowhere
    for i in range(3):
        _put(data / "images" / f"a{i}.png", img)
        _put(data / "masks" / f"a{i}.png", mask)
    assert main(["train", "unet", "--data", str(data), "--epochs", "1", "--crop", "32",
                 "--batch-size", "2", "--base-width", "4", "--precision", "fp32",
                 "--channels-last", "off", "--no-progress", "--no-tensorboard", "--out",
                 str(tmp_path / "run")]) == 0  # fmt: skip
    assert ("note: no mask holds class nucleus: its validation Dice and IoU are 1 while the net "
            "predicts none of it, 0 once it predicts any, and the foreground means (dice, iou) "
            "count it") in capsys.readouterr().err.splitlines()
    # Inferred classes (values 0 and 2, no classes.txt): load_mask_pairs's note names value 1.
    (data / "classes.txt").unlink()
    for i in range(3):
        _put(data / "masks" / f"a{i}.png", mask * 2)
    assert not load_segmentation(data).classes_named
    assert "but value 1 in no mask" in capsys.readouterr().err
    # evaluate: the threshold net predicts nucleus above 191 only; the masks hold bg and cell.
    _threshold_unet(tmp_path / "net3.pt", "elsewhere", classes=3)
    for i in range(3):
        _put(data / "masks" / f"a{i}.png", mask)
    scored = []
    for bright in (128, 255):  # 255: nucleus predicted on a0's 16 x 32 bright pixels
        _put(data / "images" / "a0.png", np.where(img > 0, bright, 0).astype(np.uint8))
        assert main(["evaluate", str(tmp_path / "net3.pt"), "--data", str(data), "--tile", "32",
                     "--json"]) == 0
        said = capsys.readouterr()
        scored.append((json.loads(said.out)["dice_nucleus"], said.err.strip()))
    assert scored == [
        (1, "note: no mask scored holds nucleus (Dice and IoU 1: the net predicts none of it); "
            "the foreground means (dice, iou) count them"),
        (0, "note: no mask scored holds nucleus (0: the net predicts 512 pixels of it); the "
            "foreground means (dice, iou) count them")]


def test_segment_into_an_out_that_holds_these_images_outputs(tmp_path, monkeypatch, capsys):
    """`cnnzoo segment` into an --out holding its masks of the same images (an earlier run,
    perhaps of another checkpoint) replaced them without a word, and a killed run could only
    start over. Now, as `cnnzoo train` treats its --out: refused in one line unless --resume
    (segment only the images without a mask and overlay) or --overwrite; masks of other
    images are left alone and do not stop it (a folder that collects batch after batch)."""
    import cnnzoo.segmentation.visual as visual

    _threshold_unet(tmp_path / "net.pt", "elsewhere")
    _pair_folder(tmp_path / "pairs", ["a", "b", "c"])
    images, out = tmp_path / "pairs" / "images", tmp_path / "out"
    args = ["segment", str(images), "--checkpoint", str(tmp_path / "net.pt"), "--out", str(out)]
    # Interrupted after its first image: it says how to go on.
    drawn = []

    def interrupted(img, mask):
        if drawn:
            raise KeyboardInterrupt
        drawn.append(img)
        return np.zeros((*img.shape[:2], 3), np.uint8)

    monkeypatch.setattr(visual, "overlay", interrupted)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert err.endswith(f"interrupted; {out} holds the masks finished so far: add --resume to "
                        "segment the rest\n")
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.png",
                                                     "b_mask.png"]  # b's overlay: never written
    first = (out / "a_overlay.png").read_bytes()  # (the stand-in's)
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"cnnzoo segment: error: {out} holds what an earlier run wrote for 2 of these 3 images "
        f"({out / 'a_mask.png'}): pass --resume to segment only the others, --overwrite to "
        "replace it, or another --out\n")
    assert main([*args, "--resume"]) == 0
    printed, err = capsys.readouterr()
    assert [line.split(":")[0] for line in printed.splitlines()] == [str(images / "b.png"),
                                                                     str(images / "c.png")]
    assert err == f"cnnzoo segment: note: resuming: 1 of 3 images already segmented in {out}\n"
    assert (out / "a_overlay.png").read_bytes() == first and len(list(out.iterdir())) == 6
    assert main([*args, "--resume"]) == 0
    assert "all 3 images given are segmented" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert (out / "a_overlay.png").read_bytes() != first
    assert main([*args, "--overwrite", "--resume"]) == 2
    assert "--overwrite replaces it: pass one" in capsys.readouterr().err
    # Another image into the same folder: its own outputs only, nothing in the way.
    _put(tmp_path / "more" / "d.png", np.full((16, 20), 100, np.uint8))
    assert main(["segment", str(tmp_path / "more"), "--checkpoint", str(tmp_path / "net.pt"),
                 "--out", str(out)]) == 0
    assert len(list(out.iterdir())) == 8


def test_segment_into_an_out_another_run_is_writing_into_is_refused(tmp_path, capsys):
    """Two segment runs into one --out (two batch jobs, a --resume started while the first
    still ran) both went ahead: the second took the images the first was segmenting as still
    to do, and the two wrote the same masks. --out is now held as `train` and `transfer` hold
    theirs: the second is refused in one line before writing anything, and a finished run
    leaves no lock behind."""
    import fcntl
    import os

    from cnnzoo.paths import LOCK_FILE

    _threshold_unet(tmp_path / "net.pt", "elsewhere")
    _pair_folder(tmp_path / "pairs", ["a", "b"])
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "pairs" / "images"), "--checkpoint",
            str(tmp_path / "net.pt"), "--out", str(out), "--json"]  # fmt: skip
    out.mkdir()
    other = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)  # the first run, still writing
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        assert main([*args, "--resume"]) == 2
    finally:
        os.close(other)  # the first run ends (the OS lets go of its lock however it ends)
    printed, err = capsys.readouterr()
    assert json.loads(printed) == {"error": err.strip(), "exit_status": 2}  # --json's failure
    assert err == (f"cnnzoo segment: error: --out {out}: another cnnzoo run is writing into "
                   "it: wait for it to end, or choose another --out\n")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing of this run's
    assert main([*args, "--resume"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.png",
                                                     "b_mask.png", "b_overlay.png"]


def test_segment_writes_the_outputs_of_an_image_whose_name_is_near_the_limit(tmp_path, capsys):
    """An image named with 240 bytes (a generated name; 'é' is two) has a legal name, but its
    `<name>_overlay.png` is past the file system's 255: the run ended in a traceback (exit 1,
    the status of an unreadable image) before segmenting any of the images given. Such a name
    is now cut, with a hash of the whole so that two such names stay apart, to fit with the
    temporary name it is written under; the others keep theirs."""
    from cnnzoo.commands.segment import output_stems

    _threshold_unet(tmp_path / "net.pt", "elsewhere")
    scans = tmp_path / "scans"
    long_a, long_b = "é" * 119 + "a", "é" * 119 + "b"
    for stem in (long_a, long_b, "short"):
        _put(scans / f"{stem}.png", np.tile(np.array([0, 200], np.uint8).repeat(8), (20, 2)))
    out = tmp_path / "out"
    args = ["segment", str(scans), "--checkpoint", str(tmp_path / "net.pt"), "--out", str(out),
            "--json"]  # fmt: skip
    assert main(args) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 3 and all("error" not in r for r in records)
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 6 and "short_mask.png" in written
    assert max(len(os.fsencode(n)) for n in written) <= 255 - 22  # and '.NAME.PID.8chars.tmp'
    stems = list(output_stems(sorted(scans.iterdir())).values())
    assert len(set(stems)) == 3 and sum(s.startswith("é" * 100) for s in stems) == 2
    assert {r["mask"] for r in records} == {str(out / f"{s}_mask.png") for s in stems}
    assert main([*args, "--resume"]) == 0  # the cut names are found again
    again = json.loads(capsys.readouterr().out)
    assert [r.pop("earlier_run") for r in again] == [True] * 3 and again == records


def test_segment_resume_refuses_another_checkpoints_masks(tmp_path, capsys):
    """`segment --resume` took any mask in --out as done: resumed with another checkpoint, the
    folder ended up half one net's masks and half the other's, and nothing said so. Each mask
    now carries its checkpoint's fingerprint (a PNG tEXt chunk) and --resume with another
    checkpoint is refused in one line; masks without it (older runs) still resume."""
    from PIL import Image

    from cnnzoo.commands.segment import MADE_BY, SOURCE_KEY
    from cnnzoo.paths import file_digest
    from cnnzoo.weights.files import weights_fingerprint

    _threshold_unet(tmp_path / "net.pt", "here")
    _threshold_unet(tmp_path / "other.pt", "elsewhere")  # another file: another fingerprint
    _pair_folder(tmp_path / "pairs", ["a", "b"])
    images, out = tmp_path / "pairs" / "images", tmp_path / "out"
    args = ["segment", str(images), "--out", str(out), "--resume"]
    assert main([*args, "--checkpoint", str(tmp_path / "net.pt")]) == 0
    with Image.open(out / "a_mask.png") as m:
        assert m.text == {MADE_BY: weights_fingerprint(tmp_path / "net.pt"),
                          SOURCE_KEY: file_digest(images / "a.png")}
    (out / "b_overlay.png").unlink()  # as a killed run leaves b: to be redone
    capsys.readouterr()
    assert main([*args, "--checkpoint", str(tmp_path / "other.pt")]) == 2
    assert capsys.readouterr().err == (
        f"cnnzoo segment: error: {out} holds masks another checkpoint wrote "
        f"({out / 'a_mask.png'}): --resume continues with the same --checkpoint only; pass "
        "--overwrite to segment every image again, or another --out\n")
    assert not (out / "b_overlay.png").exists()
    # The same checkpoint resumes; so does a mask with no record (written before there was one).
    assert main([*args, "--checkpoint", str(tmp_path / "net.pt")]) == 0
    assert (out / "b_overlay.png").is_file()
    for name in ("a_mask.png", "b_mask.png"):
        with Image.open(out / name) as m:
            plain = m.copy()
        plain.save(out / name)
    (out / "b_overlay.png").unlink()
    assert main([*args, "--checkpoint", str(tmp_path / "other.pt")]) == 0
    with Image.open(out / "b_mask.png") as m:
        assert m.text[MADE_BY] == weights_fingerprint(tmp_path / "other.pt")


@pytest.mark.skipif(not Path("/proc/self/io").is_file(), reason="counts bytes read (Linux)")
def test_segment_reads_its_checkpoint_once(tmp_path):
    """`segment` read the whole checkpoint to load it, then again for its SHA-256 (the
    fingerprint its masks record): 2x the file's bytes, a last.pt holding Adam's moments too.
    The checkpoint is now mapped, and only the hash reads it through."""
    import re

    from cnnzoo.engine.checkpoint import atomic_save
    from cnnzoo.paths import _file_digest

    def bytes_read() -> int:
        return int(re.search(r"rchar: (\d+)", Path("/proc/self/io").read_text()).group(1))

    _threshold_unet(tmp_path / "net.pt", "here")
    ckpt = torch.load(tmp_path / "net.pt", weights_only=True)
    ckpt["optimizer"] = {"state": {0: {"exp_avg": torch.ones(4_000_000)}}}  # 16 MB, as Adam's
    atomic_save(ckpt, tmp_path / "net.pt")
    size = (tmp_path / "net.pt").stat().st_size
    _pair_folder(tmp_path / "pairs", ["a"])
    args = ["segment", str(tmp_path / "pairs" / "images"), "--out", str(tmp_path / "out"),
            "--checkpoint", str(tmp_path / "net.pt"), "--no-progress", "--overwrite"]
    assert main(args) == 0  # (the modules it imports are read once, here)
    _file_digest.cache_clear()  # the hash is remembered per file: it is taken again below
    before = bytes_read()
    assert main(args) == 0
    assert size <= bytes_read() - before < 1.2 * size


def test_segment_resume_refuses_masks_of_another_tta(tmp_path, capsys):
    """A mask made with --tta is not the one made without: resumed with another --tta (or none),
    the folder would be half one kind and half the other. Refused in one line, as another
    checkpoint is; the same --tta resumes, and --overwrite redoes them all."""
    from cnnzoo.commands.segment import TTA_KEY

    _threshold_unet(tmp_path / "net.pt", "elsewhere")
    _pair_folder(tmp_path / "pairs", ["a", "b"])
    images, out = tmp_path / "pairs" / "images", tmp_path / "out"
    args = ["segment", str(images), "--checkpoint", str(tmp_path / "net.pt"), "--out", str(out)]
    assert main([*args, "--tta", "flip-shift"]) == 0
    (out / "b_overlay.png").unlink()  # as a killed run leaves b: to be redone
    for tta in ([], ["--tta"]):  # none, and flip
        capsys.readouterr()
        assert main([*args, "--resume", *tta]) == 2
        assert capsys.readouterr().err == (
            f"cnnzoo segment: error: {out} holds masks made with --tta flip-shift "
            f"({out / 'a_mask.png'}): "
            "--resume continues with the test-time augmentation they were made with (--tta "
            "flip-shift); pass --overwrite to segment every image again, or another --out\n")
        assert not (out / "b_overlay.png").exists()
    assert main([*args, "--resume", "--tta", "flip-shift"]) == 0
    assert (out / "b_overlay.png").is_file()
    assert main([*args, "--overwrite"]) == 0  # now plain masks: no record of a TTA
    with Image.open(out / "a_mask.png") as m:
        assert TTA_KEY not in m.text
    (out / "b_overlay.png").unlink()
    capsys.readouterr()
    assert main([*args, "--resume", "--tta", "flip"]) == 2
    err = capsys.readouterr().err
    assert f"{out} holds masks made without --tta ({out / 'a_mask.png'})" in err
    assert "made with (no --tta)" in err and err.count("\n") == 1
    assert main([*args, "--resume"]) == 0 and (out / "b_overlay.png").is_file()


def test_segment_resume_names_a_bad_checkpoint_before_the_masks(tmp_path, capsys):
    """With masks in --out, a mistyped --checkpoint, a run's folder or a classifier's
    checkpoint was judged by its 'fingerprint' (the path as written) and refused with --resume as
    'holds masks another checkpoint wrote', without --resume as a folder to --resume: the user
    was sent after masks when the checkpoint was the mistake. The checkpoint is read first."""
    from cnnzoo.engine.checkpoint import atomic_save

    _threshold_unet(tmp_path / "net.pt", "elsewhere")
    _pair_folder(tmp_path / "pairs", ["a"])
    images, out = tmp_path / "pairs" / "images", tmp_path / "out"
    assert main(["segment", str(images), "--checkpoint", str(tmp_path / "net.pt"),
                 "--out", str(out)]) == 0
    classifier = tmp_path / "lenet.pt"
    atomic_save({"model": {}, "meta": {"model": "lenet5", "task": "classification"}}, classifier)
    for checkpoint, said in ((tmp_path / "nett.pt", "does not exist"),
                             (tmp_path, "is a folder"),
                             (classifier, "is not a segmentation checkpoint")):
        for extra in ((), ("--resume",)):
            capsys.readouterr()
            assert main(["segment", str(images), "--checkpoint", str(checkpoint), "--out",
                         str(out), *extra]) != 0
            err = capsys.readouterr().err
            assert said in err and "masks" not in err and err.count("\n") == 1, err


def test_segment_tells_another_image_of_the_same_name_from_this_one(tmp_path, capsys):
    """One --out collecting batch after batch: day2/x.png where day1/x.png's x_mask.png already
    is was refused as 'what an earlier run wrote for this image', and --resume then skipped it
    ('all 1 image given are segmented ... nothing to do', exit 0): an image never segmented.
    The mask records its image's contents; another image's is refused even with --resume (only
    --overwrite replaces it), and the same image's (moved or copied) counts as done."""
    _threshold_unet(tmp_path / "net.pt", "elsewhere")
    for day, value in (("day1", 40), ("day2", 200)):
        _put(tmp_path / day / "x.png", np.full((16, 20), value, np.uint8))
    (tmp_path / "day3").mkdir()
    shutil.copy(tmp_path / "day1" / "x.png", tmp_path / "day3" / "x.png")
    out = tmp_path / "out"

    def segment(day: str, *extra: str) -> int:
        return main(["segment", str(tmp_path / day / "x.png"), "--checkpoint",
                     str(tmp_path / "net.pt"), "--out", str(out), *extra])  # fmt: skip

    assert segment("day1") == 0
    capsys.readouterr()
    for extra in ((), ("--resume",)):
        assert segment("day2", *extra) == 2
        assert capsys.readouterr().err == (
            f"cnnzoo segment: error: {out / 'x_mask.png'} is the mask of another image than "
            f"{tmp_path / 'day2' / 'x.png'} (the same name, other contents): segment into "
            "another --out, or pass --overwrite to replace it\n")
    assert segment("day3", "--resume") == 0  # the same bytes: segmented already
    assert "all 1 image given are segmented" in capsys.readouterr().err
    assert segment("day2", "--overwrite") == 0
    assert segment("day2", "--resume") == 0 and "nothing to do" in capsys.readouterr().err


def test_segment_and_evaluate_take_no_progress(tmp_path, monkeypatch):
    """segment drew a bar over the images (or one image's tiles) and evaluate one over the
    pairs, on a terminal, with no --no-progress to turn them off as train's are."""
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    _threshold_unet(tmp_path / "net.pt", "elsewhere")
    _pair_folder(tmp_path / "pairs", ["a", "b"])
    net = str(tmp_path / "net.pt")
    for quiet in (False, True):
        for i, argv in enumerate((
                ["segment", str(tmp_path / "pairs" / "images"), "--checkpoint", net],
                ["segment", str(tmp_path / "pairs" / "images" / "a.png"), "--checkpoint", net,
                 "--tile", "16"],  # one image: its tiles' bar
                ["evaluate", net, "--data", str(tmp_path / "pairs"), "--split", "all"])):
            term = Terminal()
            monkeypatch.setattr("sys.stderr", term)
            out = ["--out", str(tmp_path / f"out{i}{quiet}")] if argv[0] == "segment" else []
            assert main([*argv, *out, *(["--no-progress"] if quiet else [])]) == 0
            assert ("\r" in term.getvalue()) is not quiet, (argv, term.getvalue())


def test_segment_killed_while_writing_a_mask_keeps_the_earlier_one(tmp_path, monkeypatch):
    """`cnnzoo segment` run again into the same --out, and killed while PIL wrote a mask: the
    mask was written in place, so the earlier run's good one was left cut to its first bytes,
    a PNG nothing opens. The kill is simulated by PIL dying after a PNG's first bytes."""
    _threshold_unet(tmp_path / "net.pt", "elsewhere")
    _put(tmp_path / "x.png", np.tile(np.array([0, 200], np.uint8).repeat(8), (20, 2)))
    args = ["segment", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "net.pt"),
            "--out", str(tmp_path / "out")]
    assert main(args) == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def dying_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG\r\n")  # the process dies here
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", dying_save)
    assert main([*args, "--overwrite"]) == 130  # Ctrl-C's status
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == first


def test_segment_says_when_a_stack_had_only_its_first_frame_segmented(tmp_path, capsys):
    """A microscope's TIFF stack (time-lapse, z-stack) is decoded as its first frame: its other
    frames were left out without a word."""
    _threshold_unet(tmp_path / "net.pt", "elsewhere")
    frames = [Image.fromarray(np.full((12, 16), v, np.uint8)) for v in (200, 0, 0)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    frames[1].save(tmp_path / "one.tif")
    assert main(["segment", str(tmp_path / "stack.tif"), str(tmp_path / "one.tif"),
                 "--checkpoint", str(tmp_path / "net.pt"), "--out", str(tmp_path / "out")]) == 0
    assert (np.asarray(Image.open(tmp_path / "out" / "stack_mask.png")) == 255).all()  # frame 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"cnnzoo segment: note: {tmp_path / 'stack.tif'} holds 3 frames (a stack); only the "
        "first was segmented: save each frame as its own image to segment them all"]


# ----------------------------------------------------------------------------- evaluate


def _put(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    _png(path, arr)


def _evaluate_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["evaluate", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("data, precision", [("folder", "fp32"), ("cells", "bf16")])
def test_evaluate_repeats_the_runs_final_validation_scores(data, precision, tmp_path, capsys):
    """Truth: the run's own last metrics.jsonl row, written by the training loop's validation.

    That loop validates each (same-sized) image in one pass, the convolutions zero-padding its
    border; `evaluate` predicts as `segment` does, with mirrored context. With --margin 0 and a
    tile of the images' side the two are the same pass: every score must agree exactly (in bf16
    too: the same autocast). With `segment`'s default geometry only the border context differs."""
    if data == "folder":  # 8 pairs of 0/255 masks (255 = cell); 2 validate, drawn with the seed
        cells = make_cells(8, size=64, seed=3)
        src, side = tmp_path / "pairs", 64
        for i in range(8):
            _put(src / "images" / f"c{i}.png", cells.images[i])
            _put(src / "masks" / f"c{i}.png", cells.masks[i] * 255)
        source = ["--data", str(src), "--val-fraction", "0.25", "--seed", "5"]
    else:
        source, side = ["--data", "cells", "--cells", "6"], 256
    out = tmp_path / "run"
    assert main(["train", "unet", "--task", "segmentation", *source, "--epochs", "1",
                 "--crop", "32", "--batch-size", "4", "--base-width", "8", "--precision",
                 precision, "--channels-last", "off", "--no-progress", "--no-tensorboard",
                 "--out", str(out)]) == 0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    got = _evaluate_json(capsys, out / "last.pt", "--tile", side, "--margin", 0)
    assert got["split"] == "val" and got["images"] == (2 if data == "folder" else 1)
    assert got["pixels"] == got["images"] * side * side and got["ignored_pixels"] == 0
    scores = [k[4:] for k in last if k.startswith("val_") and k != "val_loss"]
    assert {"dice", "iou", "pixel_acc", "count_err"} <= set(scores) and len(scores) == 9
    for key in scores:  # per class (background, cell; '0', '1' for a folder) and the means
        assert got[key] == pytest.approx(last[f"val_{key}"], abs=1e-12), key
    # The default (overlap-tile, mirrored borders): the same images, border context aside.
    # Measured: |d Dice| 0.002 on 256-px cells; these nets of 1 epoch on 64 px are the worst
    # case (every pixel lies within the 96-px receptive radius of a border).
    tiled = _evaluate_json(capsys, out / "last.pt")
    assert tiled["pixels"] == got["pixels"] and tiled["tile"] == 512 and tiled["margin"] == 96
    assert abs(tiled["dice"] - last["val_dice"]) < 0.05
    if data == "cells":
        return
    # The folder changes (a pair removed): its drawn validation split would now hold training
    # pairs (c2, c5 of c1..c7 instead of c1, c4 of c0..c7).
    (src / "images" / "c0.png").unlink()
    (src / "masks" / "c0.png").unlink()
    assert main(["evaluate", str(out / "last.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has changed since the run was trained" in err[0]
    # A checkpoint that does not record its fraction: said, not guessed.
    from cnnzoo.engine.checkpoint import atomic_save

    ckpt = torch.load(out / "last.pt", weights_only=True)
    del ckpt["meta"]["val_fraction"]
    atomic_save(ckpt, tmp_path / "old.pt")
    assert main(["evaluate", str(tmp_path / "old.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be reproduced exactly" in err[0]


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_evaluate_tta_repeats_the_runs_final_tta_scores(padding, tmp_path, capsys):
    """`train unet --tta flip-shift` printed a TTA Dice at its end that `cnnzoo evaluate --tta`
    refused to compute ('--tta is for classifiers'). Evaluate now averages the same views per
    overlap tile: with the training's validation input as the one tile (the image's side and no
    context in 'same' mode; the image with the 94 px of mirrored context per side a 'valid' net
    validates 256-px cells with, a 444-px tile) every score is the training's, to the digit."""
    out = tmp_path / "run"
    width = ["--base-width", "8", "--crop", "32"] if padding == "same" else [
        "--base-width", "4", "--crop", "16"]
    assert main(["train", "unet", "--task", "segmentation", "--data", "cells", "--cells", "2",
                 "--epochs", "1", "--batch-size", "2", *width, "--padding", padding,
                 "--tta", "flip-shift", "--precision", "fp32", "--no-progress",
                 "--no-tensorboard", "--json", "--out", str(out)]) == 0
    final = json.loads(capsys.readouterr().out)
    tta, plain = final["final_tta"], final["final"]
    tile = ["--tile", 256, "--margin", 0] if padding == "same" else ["--tile", 444]
    got = _evaluate_json(capsys, out / "last.pt", *tile, "--tta", "flip-shift")
    assert got["tta"] == "flip-shift" and got["pixels"] == 256 * 256
    keys = [k for k in tta if k != "loss"]
    assert {"dice", "iou", "pixel_acc", "count_err"} <= set(keys)
    for key in keys:
        assert got[key] == pytest.approx(tta[key], abs=1e-12), key
    assert any(tta[k] != plain[k] for k in keys)  # the views changed the masks
    # The default geometry (512-px tiles with mirrored context): the same views per tile, the
    # border context aside (as without --tta).
    capsys.readouterr()
    assert main(["evaluate", str(out / "last.pt"), "--tta", "flip-shift"]) == 0
    text = capsys.readouterr().out
    assert "flip-shift TTA per tile" in text.splitlines()[0]
    dice = float(next(ln for ln in text.splitlines() if ln.startswith("cell "))
                 .split()[1])
    assert abs(dice - tta["dice"]) < 0.05


def _threshold_unet(path, dataset: str, classes: int = 2) -> None:
    """A U-Net checkpoint that predicts 'cell' exactly where a pixel is >= 128: every weight 0
    but the centre taps that carry the input to the head along the top level (ReLU keeps it,
    the lower levels give 0), and a head bias of -0.5 (mean 0, std 1: the input is x / 255).
    With `classes=3`, the head's logits are 0, x - 0.25 and 4x - 2.5 for x = pixel / 255:
    'background' below 0.25 (64 of 255), 'cell' up to 0.75 (191), 'nucleus' above."""
    from cnnzoo.engine.checkpoint import atomic_save

    kwargs = {"padding": "same", "base_width": 4, "batchnorm": False}
    net = create_model("unet", num_classes=classes, in_chans=1, **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.encoder.levels[0][0].weight[0, 0, 1, 1] = 1
        net.encoder.levels[0][2].weight[0, 0, 1, 1] = 1
        net.decoder.blocks[-1][0].weight[0, :, 1, 1] = 1  # the skip's channel 0, whichever half
        net.decoder.blocks[-1][2].weight[0, 0, 1, 1] = 1
        net.head.weight[1, 0] = 1
        net.head.bias[1] = -0.5
        if classes == 3:
            net.head.bias[1] = -0.25
            net.head.weight[2, 0], net.head.bias[2] = 4, -2.5
    names = ["background", "cell", "nucleus"][:classes]
    meta = {"task": "segmentation", "model": "unet", "model_kwargs": kwargs,
            "num_classes": classes, "in_chans": 1, "mean": [0.0], "std": [1.0],
            "class_names": names,
            "dataset": dataset, "binary_255": False, "count_instances": classes == 2}
    atomic_save({"format": "cnnzoo-checkpoint-1", "model": net.state_dict(),
                 "task": "segmentation", "meta": meta}, path)


def test_evaluate_scores_held_out_pairs_as_computed_by_hand(tmp_path, capsys):
    """Two pairs whose masks and predictions are known: the confusion matrix is recounted with
    numpy, the cell counts are known by construction."""
    # A (24 x 32): bright blocks R1, R2, R3 are predicted cells; the truth has R1, R2 and R4
    # (missed): 3 cells each, count error 0. Its last two rows are ignored (255).
    a_img = np.full((24, 32), 50, np.uint8)
    a_mask = np.zeros((24, 32), np.uint8)
    for y0, y1, x0, x1 in ((2, 8, 2, 8), (12, 20, 4, 10), (2, 6, 20, 30)):
        a_img[y0:y1, x0:x1] = 200
    for y0, y1, x0, x1 in ((2, 8, 2, 8), (12, 20, 4, 10), (14, 22, 20, 28)):
        a_mask[y0:y1, x0:x1] = 1
    a_mask[22:] = IGNORE_INDEX
    a_img[22:, :6] = 255  # bright but ignored: counts nowhere, not even as a predicted cell
    # B (17 x 21, another size): one predicted block; the truth has two cells, one inside the
    # block and one beside it: count error 1.
    b_img = np.full((17, 21), 127, np.uint8)  # 127: just below the threshold
    b_img[3:9, 3:12] = 128
    b_mask = np.zeros((17, 21), np.uint8)
    b_mask[3:9, 3:8] = 1
    b_mask[12:15, 10:18] = 1
    root = tmp_path / "held"
    _put(root / "images" / "a.png", a_img)
    _put(root / "masks" / "a.png", a_mask)
    _put(root / "test" / "images" / "b.png", b_img)
    _put(root / "test" / "masks" / "b.png", b_mask)
    _threshold_unet(tmp_path / "net.pt", str(tmp_path / "elsewhere"))

    def expected(pairs):
        cm = np.zeros((2, 2), np.int64)
        for img, truth in pairs:
            keep = truth != IGNORE_INDEX
            np.add.at(cm, (truth[keep], (img[keep] >= 128).astype(int)), 1)
        tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
        return cm, 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)

    # Another folder than the run's: all of its pairs (test/ too), whatever their sizes.
    got = _evaluate_json(capsys, tmp_path / "net.pt", "--data", root, "--tile", 64)
    cm, dice, iou = expected([(a_img, a_mask), (b_img, b_mask)])
    assert got["split"] == "all" and got["images"] == 2 and got["confusion"] == cm.tolist()
    assert got["ignored_pixels"] == 2 * 32 and got["pixels"] == 22 * 32 + 17 * 21
    assert got["dice"] == pytest.approx(dice, abs=1e-12) and got["dice_cell"] == got["dice"]
    assert got["iou"] == pytest.approx(iou, abs=1e-12)
    assert got["pixel_acc"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-12)
    bg = 2 * cm[0, 0] / (2 * cm[0, 0] + cm[0, 1] + cm[1, 0])
    assert got["dice_background"] == pytest.approx(bg, abs=1e-12)
    assert got["count_err"] == pytest.approx(0.5) and got["count_rel"] == pytest.approx(1 / 5)
    # --split test: DIR/test/ only; a CSV manifest's test rows the same way.
    got = _evaluate_json(capsys, tmp_path / "net.pt", "--data", root, "--split", "test")
    cm, dice, _ = expected([(b_img, b_mask)])
    assert got["images"] == 1 and got["confusion"] == cm.tolist()
    assert got["dice"] == pytest.approx(dice, abs=1e-12) and got["count_err"] == 1
    (tmp_path / "m.csv").write_text("image,mask,split\nheld/images/a.png,held/masks/a.png,train\n"
                                    "held/test/images/b.png,held/test/masks/b.png,test\n")
    got = _evaluate_json(capsys, tmp_path / "net.pt", "--data", tmp_path / "m.csv", "--split",
                         "test")
    assert got["images"] == 1 and got["confusion"] == cm.tolist()
    # The table: one line per class and the foreground mean.
    assert main(["evaluate", str(tmp_path / "net.pt"), "--data", str(root), "--split", "test",
                 "--confusion", str(tmp_path / "cm.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{root}, its test part: 1 image, 357 pixels scored")
    assert lines[3].split()[:2] == ["cell", f"{dice:.4f}"] and lines[4].startswith("foreground")
    assert "cell count error 1.00 per image" in lines[5] and (tmp_path / "cm.png").is_file()


def test_evaluate_of_a_held_out_pair_sheet_says_which_split_it_has(tmp_path, capsys):
    """A sheet of held-out pairs (every row marked test) scored with --split val said 'mark the
    pairs to train on train (or leave their split cell empty), and those to validate on val':
    training advice to someone scoring a net. It now says what to pass, as a classifier's
    evaluate does; --split test and all score its pairs as the folder of them scores."""
    b_img = np.full((17, 21), 100, np.uint8)
    b_img[3:9, 3:12] = 200
    b_mask = np.zeros((17, 21), np.uint8)
    b_mask[3:9, 3:8] = 1
    _put(tmp_path / "held" / "images" / "b.png", b_img)
    _put(tmp_path / "held" / "masks" / "b.png", b_mask)
    sheet = tmp_path / "held.csv"
    sheet.write_text("image,mask,split\nheld/images/b.png,held/masks/b.png,test\n")
    _threshold_unet(tmp_path / "net.pt", str(tmp_path / "elsewhere"))
    folder = _evaluate_json(capsys, tmp_path / "net.pt", "--data", tmp_path / "held")
    for split in ("test", "all"):
        got = _evaluate_json(capsys, tmp_path / "net.pt", "--data", sheet, "--split", split)
        assert (got["images"], got["confusion"]) == (1, folder["confusion"]), split
    assert main(["evaluate", str(tmp_path / "net.pt"), "--data", str(sheet), "--split",
                 "val"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"cnnzoo evaluate: error: {sheet} has no validation rows (none is marked val, and none "
        "trains to draw them from): use --split test or --split all")


def test_evaluate_json_counts_the_pairs_it_left_out(tmp_path, capsys):
    """A U-Net's evaluate --json said how many images it scored but not how many pairs it left
    out as unreadable (a classifier's says both since session 24, as `train --json` counts
    them): a folder with a broken image scored fewer pairs with exit status 0 and no key a script
    could read. It is the whole data's count, on every split, as training counts it."""
    root = tmp_path / "held"
    for part, names in (("", ("a", "b", "c")), ("val/", ("d", "e"))):
        for name in names:
            _put(root / f"{part}images" / f"{name}.png", np.full((16, 16), 200, np.uint8))
            _put(root / f"{part}masks" / f"{name}.png", np.ones((16, 16), np.uint8))
    (root / "images" / "b.png").write_bytes(b"not a png")
    (root / "val" / "masks" / "e.png").unlink()  # an image without its mask
    _threshold_unet(tmp_path / "net.pt", str(tmp_path / "elsewhere"))
    for split, images in (("all", 3), ("val", 1)):  # a, c, d; val/ holds d
        got = _evaluate_json(capsys, tmp_path / "net.pt", "--data", root, "--split", split)
        assert (got["split"], got["images"], got["skipped"]) == (split, images, 2)
        assert got["pixels"] == images * 16 * 16 and got["dice"] == 1.0
    # Nothing left out: 0, not a missing key.
    (root / "images" / "b.png").unlink()
    (root / "masks" / "b.png").unlink()
    (root / "val" / "images" / "e.png").unlink()
    assert _evaluate_json(capsys, tmp_path / "net.pt", "--data", root)["skipped"] == 0



def test_evaluate_held_out_masks_say_what_their_255_means(tmp_path, capsys):
    """A run read its own masks' 255 one way; other pairs are read as training reads a folder.
    Before, the run's reading was forced on them: a run on 0/1 masks scored on 0/255 ones
    ignored every cell pixel (Dice 0, 'save them with 1'), and a run on 0/255 masks counted
    the 'ignore' pixels of 0/1/255 masks as cells."""
    from cnnzoo.engine.checkpoint import atomic_save

    img = np.zeros((16, 24), np.uint8)
    img[2:9, 3:12] = 200  # predicted cell (the threshold net: >= 128)
    truth = np.zeros((16, 24), np.uint8)
    truth[4:10, 5:14] = 1
    ignore = np.zeros((16, 24), bool)
    ignore[12:, :] = True
    img[12:, :4] = 255  # predicted, but ignored in the 0/1/255 masks
    # The cell pixels recounted with numpy: 0/255 masks (255 = cell) and 0/1/255 masks.
    pred = img >= 128
    tp, fp = (pred & (truth == 1)).sum(), (pred & (truth == 0)).sum()
    fn = (~pred & (truth == 1)).sum()
    k = ~ignore
    tp_i, fp_i = (pred & (truth == 1) & k).sum(), (pred & (truth == 0) & k).sum()
    fn_i = (~pred & (truth == 1) & k).sum()
    white, grey = tmp_path / "white", tmp_path / "grey"
    for i in range(2):
        _put(white / "images" / f"a{i}.png", img)
        _put(white / "masks" / f"a{i}.png", truth * 255)
        _put(grey / "images" / f"a{i}.png", img)
        _put(grey / "masks" / f"a{i}.png", np.where(ignore, IGNORE_INDEX, truth).astype(np.uint8))
    _threshold_unet(tmp_path / "on01.pt", str(tmp_path / "elsewhere"))  # trained on 0/1 masks
    def evaluate(*args):
        capsys.readouterr()
        assert main(["evaluate", *map(str, args), "--tile", "64", "--json"]) == 0
        out, err = capsys.readouterr()
        return json.loads(out), err

    got, err = evaluate(tmp_path / "on01.pt", "--data", white)
    assert got["ignored_pixels"] == 0 and err == ""
    assert got["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
    ckpt = torch.load(tmp_path / "on01.pt", weights_only=True)
    ckpt["meta"]["binary_255"] = True  # a run on 0/255 masks
    atomic_save(ckpt, tmp_path / "on255.pt")
    got, err = evaluate(tmp_path / "on255.pt", "--data", grey)
    assert got["ignored_pixels"] == 2 * ignore.sum() and err == ""
    assert got["dice"] == pytest.approx(2 * tp_i / (2 * tp_i + fp_i + fn_i), abs=1e-12)
    # On the data a run trained on, its own reading: these 0/255 masks as a 0/1 run read them.
    ckpt["meta"]["binary_255"], ckpt["meta"]["dataset"] = False, str(white)
    atomic_save(ckpt, tmp_path / "own.pt")
    got, err = evaluate(tmp_path / "own.pt", "--split", "all")
    assert got["ignored_pixels"] == 2 * (truth == 1).sum()
    assert "255 means 'ignore' for the training masks" in err

def test_evaluate_mismatched_checkpoints_and_data_are_one_line(trained, tmp_path, capsys):
    from cnnzoo.engine.checkpoint import atomic_save

    atomic_save({"model": {}, "meta": {"model": "lenet5", "class_names": ["a", "b"]},
                 "task": "classification"}, tmp_path / "c.pt")
    pairs = tmp_path / "pairs"
    _pair_folder(pairs, ["p"])
    classes = tmp_path / "classes"
    for c in ("a", "b"):
        _put(classes / c / "x.png", np.zeros((8, 8), np.uint8))
    seg = str(trained / "last.pt")
    cases = [
        (["evaluate", str(tmp_path / "c.pt"), "--data", str(pairs)], "holds image/mask pairs"),
        (["evaluate", str(tmp_path / "c.pt"), "--data", "cells"], "holds image/mask pairs"),
        (["evaluate", seg, "--data", "digits"], "is a classification data set"),
        (["evaluate", seg, "--data", str(classes)], "has no images/ and masks/ folder"),
        (["evaluate", seg, "--data", str(pairs), "--split", "test"], "has no test part"),
        (["evaluate", str(tmp_path / "c.pt"), "--tile", "64"], "--tile is for segmentation"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (argv, err)


def test_data_cells_beside_a_folder_named_cells_says_which_it_reads(tmp_path, monkeypatch,
                                                                    caplog):
    """`cnnzoo data export cells cells`, then `train unet --data cells`: the run trained on the
    built-in synthetic set, not on the folder, without a word. A note now says so, and how to
    name the folder."""
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="cnnzoo.data"):
        load_segmentation("cells", cells=4)
        assert not caplog.records  # no such folder: nothing to say
        (tmp_path / "cells").mkdir()
        splits = load_segmentation("cells", cells=4)
    assert splits.source == "cells" and len(splits.train) + len(splits.val) > 0
    assert [r.getMessage() for r in caplog.records] == [
        "note: --data cells is the built-in synthetic set, not the folder cells/ here: give "
        "./cells for the folder"]
