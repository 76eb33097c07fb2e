"""cnnzoo.data: image decoding, folders and manifests, built-in sets, batch augmentation, export.

Truth comes from outside the code under test: the real Fashion-MNIST files (published class
counts, first labels and pixel mean), scikit-learn's digits, images made here with PIL whose
pixels are known, and hand-computed geometry.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import logging
import os
import re
import shutil
import sys
import threading
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.cli import main
from cnnzoo.data import builtin
from cnnzoo.data.augment import (
    ColorJitter,
    HorizontalFlip,
    PadCrop,
    ProgressiveResize,
    RandomResizedCrop,
    default_augmentation,
    resize_batch,
)
from cnnzoo.data.builtin import load_dataset, load_digits, load_fashion_mnist, read_idx
from cnnzoo.data.dataset import ImageDataset, resolve_classes
from cnnzoo.data.export import ExportOptions, export_dataset
from cnnzoo.data.folder import load_csv, load_folder
from cnnzoo.data.images import (
    ImageSpec,
    center_crop,
    fit_image,
    load_image,
    resize_shorter,
    to_tensor_uint8,
)
from cnnzoo.data.loader import BatchLoader
from cnnzoo.errors import DataError, ImageError

# --- built-in data sets -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist_test() -> ImageDataset:
    return load_fashion_mnist("test")


def test_fashion_mnist_train_parses_real_files():
    ds = load_fashion_mnist("train")
    assert ds.images.shape == (60000, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.class_counts() == [6000] * 10  # the data set's README: 6,000 per class
    # First labels of the official file (ankle boot, T-shirt, T-shirt, dress, ...) and the
    # well-known normalisation mean 0.2860 of the training pixels.
    assert ds.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert ds.images.float().mean().item() / 255 == pytest.approx(0.2860, abs=1e-4)


def test_fashion_mnist_test_split(fmnist_test):
    assert fmnist_test.images.shape == (10000, 1, 28, 28)
    assert fmnist_test.class_counts() == [1000] * 10
    assert fmnist_test.labels[:5].tolist() == [9, 2, 1, 1, 6]


def test_read_idx_hand_made_and_truncated(tmp_path):
    # Header: 0, 0, type 0x08 (ubyte), 2 dims; dims 2 and 3 big-endian; then the 6 values.
    p = tmp_path / "x-idx2-ubyte"
    p.write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]))
    np.testing.assert_array_equal(read_idx(p), [[1, 2, 3], [4, 5, 6]])
    p.write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


def _no_local_fmnist(monkeypatch, tmp_path):
    monkeypatch.setattr(builtin, "SYSTEM_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "cache"))


def test_fashion_mnist_missing_says_how_to_get_it(monkeypatch, tmp_path):
    _no_local_fmnist(monkeypatch, tmp_path)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as exc:
        load_fashion_mnist("train", download=False)
    assert "\n" not in str(exc.value) and str(tmp_path / "cache" / "fashion-mnist") in str(
        exc.value
    )


def test_fashion_mnist_download_checks_md5_and_leaves_nothing(monkeypatch, tmp_path):
    """The real download code against a local HTTP server that serves Debian's re-compressed
    files: their MD5 differs from the published one, so the download is refused, cleanly."""
    served = tmp_path / "served"
    served.mkdir()
    for name in builtin.FASHION_MNIST_FILES:
        (served / name).symlink_to(builtin.SYSTEM_FASHION_MNIST / name)
    _no_local_fmnist(monkeypatch, tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    monkeypatch.setattr(
        builtin,
        "download_fashion_mnist",
        functools.partial(builtin.download_fashion_mnist, url=url),
    )
    try:
        with pytest.raises(DataError, match="download failed.*MD5.*apt-get"):
            load_fashion_mnist("test")
    finally:
        server.shutdown()
    cache = tmp_path / "cache" / "fashion-mnist"
    assert list(cache.iterdir()) == []  # no half-written or unverified file



def test_fashion_mnist_download_is_fsynced_and_clears_a_killed_ones_temp(monkeypatch, tmp_path):
    """Each file was renamed into place without an fsync (a power cut could leave an empty
    file that looks downloaded), and a killed download's '.part' file stayed for good. A local
    file:// address and four small files stand in for the network and the real ones."""
    import hashlib

    served = tmp_path / "served"
    served.mkdir()
    files = {}
    for i, name in enumerate(builtin.FASHION_MNIST_FILES):
        (served / name).write_bytes(bytes([i]) * 100)
        files[name] = hashlib.md5((served / name).read_bytes()).hexdigest()
    monkeypatch.setattr(builtin, "FASHION_MNIST_FILES", files)
    dest = tmp_path / "fmnist"
    dest.mkdir()
    first = next(iter(files))
    (dest / f".{first}.999999999.abcd1234.tmp").write_bytes(b"half")  # no such process
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    builtin.download_fashion_mnist(dest, url=served.as_uri() + "/")
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
    assert all((dest / n).read_bytes() == (served / n).read_bytes() for n in files)
    assert len(synced) == 4 and all(s.startswith(f".{n}.") for s, n in zip(synced, files, strict=True))


def test_digits_scaled_from_sklearn():
    from sklearn.datasets import load_digits as sk

    ref = sk()
    ds = load_digits()
    assert ds.images.shape == (1797, 1, 8, 8)
    # 0..16 -> 0..255: 16 -> 255, 0 -> 0, 8 -> 127.5 rounded to even 128.
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), np.rint(ref.images * 255 / 16))
    assert ds.images.max() == 255 and ds.labels.tolist() == ref.target.tolist()
    splits = load_dataset("digits")
    assert len(splits.train) + len(splits.val) == 1797
    assert splits.train.images.shape[1] == 1  # built-ins keep their grey channel by default


def test_load_dataset_builtin_with_spec_and_unknown_source(tmp_path):
    s = load_dataset("digits", ImageSpec(size=16, channels=3))
    assert s.train.images.shape[1:] == (3, 16, 16)
    # Grey repeated to RGB: the three channels are equal.
    assert torch.equal(s.train.images[:, 0], s.train.images[:, 2])
    with pytest.raises(DataError, match="neither a built-in"):
        load_dataset(str(tmp_path / "nope"))
    # One photo given as the data (the one a newcomer wants to classify) is named as such.
    _png(tmp_path / "cat.png", 0)
    with pytest.raises(DataError, match=r"cat.png is a single image: the data is a folder of "
                                        r"them, one sub-folder per class"):  # fmt: skip
        load_dataset(str(tmp_path / "cat.png"))


# --- the in-memory data set -------------------------------------------------------------------


def _toy(counts: list[int]) -> ImageDataset:
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    return ImageDataset(
        images.contiguous(), labels, [f"c{k}" for k in range(len(counts))],
        [f"img{i}" for i in range(len(labels))],
    )  # fmt: skip


def test_stratified_split_keeps_proportions():
    ds = _toy([50, 30, 20])
    train, val = ds.split(0.2, seed=1)
    assert val.class_counts() == [10, 6, 4] and train.class_counts() == [40, 24, 16]
    assert sorted(train.paths + val.paths) == sorted(ds.paths)  # disjoint and complete
    again, _ = ds.split(0.2, seed=1)
    other, _ = ds.split(0.2, seed=2)
    assert again.paths == train.paths and other.paths != train.paths
    # A class of 2 still gets one validation image; a class of 1 stays in training.
    tr, va = _toy([2, 1, 10]).split(0.2)
    assert va.class_counts() == [1, 0, 2] and tr.class_counts() == [1, 1, 8]


def test_subset_relabels_in_given_order():
    ds = _toy([5, 5, 5])
    sub = ds.subset(classes=["c2", 0], per_class=3, seed=0)
    assert sub.class_names == ["c2", "c0"] and sub.class_counts() == [3, 3]
    assert all(int(p[3:]) >= 10 for p in sub.paths[:3])  # the first three come from c2


def test_resolve_classes_loosely():
    names = ["tshirt", "trouser", "shirt", "ankle_boot"]
    assert resolve_classes(["T-shirt/top", "Ankle boot", "shirt", 1], names) == [0, 3, 2, 1]
    with pytest.raises(DataError, match="several"):
        resolve_classes(["t"], names)
    with pytest.raises(DataError, match="not a class"):
        resolve_classes(["hat"], names)


# --- image decoding ---------------------------------------------------------------------------


def _pixels(img: Image.Image) -> list[int]:
    return np.asarray(img).ravel().tolist()


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_every_mode_decodes_to_rgb_or_l(tmp_path):
    rgb = _save(Image.new("RGB", (3, 2), (10, 20, 30)), tmp_path / "rgb.png")
    assert load_image(rgb).getpixel((0, 0)) == (10, 20, 30)
    assert load_image(rgb, 1).getpixel((0, 0)) == round(0.299 * 10 + 0.587 * 20 + 0.114 * 30)

    grey = _save(Image.new("L", (3, 2), 77), tmp_path / "l.png")
    assert load_image(grey).getpixel((0, 0)) == (77, 77, 77)
    assert to_tensor_uint8(load_image(grey, 1)).shape == (1, 2, 3)

    # Alpha: half-transparent red over white is (255, 128, 128); fully transparent is white;
    # alpha="drop" keeps the stored colour.
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 128))
    rgba.putpixel((1, 0), (0, 0, 0, 0))
    p = _save(rgba, tmp_path / "rgba.png")
    img = load_image(p)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == pytest.approx((255, 127, 127), abs=1)
    assert img.getpixel((1, 0)) == (255, 255, 255)
    assert load_image(p, alpha="drop").getpixel((1, 0)) == (0, 0, 0)
    la = _save(Image.new("LA", (2, 2), (0, 0)), tmp_path / "la.png")
    assert load_image(la, 1).getpixel((0, 0)) == 255

    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    assert load_image(_save(pal, tmp_path / "p.png")).getpixel((0, 0)) == (0, 255, 0)
    pal.info["transparency"] = 0  # index 0 transparent -> white background
    assert (
        load_image(_save(pal, tmp_path / "pt.png", transparency=0)).getpixel((1, 0)) == (255,) * 3
    )

    cmyk = _save(Image.new("CMYK", (2, 2), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=100)
    r, g, b = load_image(cmyk).getpixel((0, 0))
    assert r > 240 and g < 15 and b < 15  # cyan-free, full magenta + yellow = red

    bilevel = _save(Image.new("1", (2, 2), 1), tmp_path / "one.png")
    assert load_image(bilevel, 1).getpixel((0, 0)) == 255


def test_16_bit_and_float_images_are_scaled(tmp_path):
    a = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    for name in ("g16.png", "g16.tif"):
        p = _save(Image.fromarray(a), tmp_path / name)
        assert Image.open(p).mode.startswith("I")
        # value / 257, rounded: 0, 1, 127.5 -> 128, 255 (PIL's convert("L") would clip to 255)
        assert _pixels(load_image(p, 1)) == [0, 1, 128, 255]
    f = np.array([[0.0, 0.25, 1.0]], dtype=np.float32)
    p = _save(Image.fromarray(f), tmp_path / "f.tif")
    assert _pixels(load_image(p, 1)) == [0, 64, 255]
    f = np.array([[-2.0, 0.0, 2.0]], dtype=np.float32)  # outside [0, 1]: min-max stretched
    assert _pixels(load_image(_save(Image.fromarray(f), tmp_path / "g.tif"), 1)) == [
        0,
        128,
        255,
    ]


def test_16_bit_images_of_12_bit_data_are_said_once(tmp_path, caplog, monkeypatch):
    """A line camera's 12-bit data in 16-bit PNGs read nearly black (values / 257: 4095 -> 16)
    without a word; one note per process now says so, and what to save instead."""
    import threading

    import cnnzoo.data.images as images

    monkeypatch.setattr(images, "_LOW_DEPTH_SAID", threading.Event())
    full = _save(Image.fromarray(np.array([[0, 40000]], np.uint16)), tmp_path / "full.png")
    low = _save(Image.fromarray(np.array([[0, 4095]], np.uint16)), tmp_path / "low.png")
    with caplog.at_level("WARNING", logger="cnnzoo.data"):
        assert _pixels(load_image(full, 1)) == [0, 156]
        assert not caplog.records  # the full range: nothing to say
        assert _pixels(load_image(low, 1)) == [0, 16]  # 4095 / 257, rounded
        load_image(low, 1)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "below 4096 (12-bit camera data?)" in said[0]


def test_16_bit_arrays_of_12_bit_data_are_said_too(caplog, monkeypatch):
    """bundle.predict(frame) on a camera's uint16 12-bit frame (tifffile, a grabber's SDK)
    read it as nearly black as its file without the note that the file gets."""
    import threading

    import cnnzoo.data.images as images
    from cnnzoo.weights import Preprocessing

    monkeypatch.setattr(images, "_LOW_DEPTH_SAID", threading.Event())
    pre = Preprocessing(crop_size=8, resize_size=8, mean=(0.5,), std=(0.5,), channels=1)
    with caplog.at_level("WARNING", logger="cnnzoo.data"):
        pre(np.array([[0, 40000], [7, 9]], np.uint16))
        assert not caplog.records  # the full range: nothing to say
        pre(np.array([[0, 4095], [7, 9]], np.uint16))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "below 4096 (12-bit camera data?)" in said[0]


def test_exif_orientation_is_applied(tmp_path):
    # Stored 3 wide x 2 high, red pixel at top-left; orientation 6 = "rotate 90 CW to display".
    img = Image.new("RGB", (3, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    p = _save(img, tmp_path / "rot.png", exif=exif.tobytes())
    out = load_image(p)
    assert out.size == (2, 3)  # displayed 2 wide x 3 high
    # Rotating 90 degrees clockwise takes the top-left pixel to the top-right.
    assert out.getpixel((1, 0)) == (255, 0, 0) and out.getpixel((0, 0)) == (0, 0, 0)


def test_unreadable_files_give_one_line_image_errors(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("not an image at all")
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        good, "JPEG"
    )
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    cases = {
        empty: "empty file",
        text: "not an image",
        truncated: "truncated",
        tmp_path / "missing.png": "no such file",
    }
    # A link whose file was moved said "no such file" of a file the user can see listed.
    (tmp_path / "link.jpg").symlink_to(tmp_path / "moved" / "photo.jpg")
    cases[tmp_path / "link.jpg"] = f"a link to a file that is not there ({tmp_path}/moved/photo.jpg)"
    for path, cause in cases.items():
        with pytest.raises(ImageError) as exc:
            load_image(path)
        msg = str(exc.value)
        assert msg.startswith(str(path)) and cause in msg and "\n" not in msg


def test_iphone_heic_and_avif_photos_in_a_folder_are_images_not_unknown_files(tmp_path, caplog):
    """HEIC photos were listed among the 'files without an image extension' (so a class of
    iPhone photos was 'a class folder with no images'), and AVIF ones, which PIL reads, too."""
    from PIL import features

    if not features.check("avif"):  # Pillow >= 11.3 reads AVIF
        pytest.skip("this Pillow has no AVIF support")
    (tmp_path / "dog").mkdir()
    for i in range(3):
        _png(tmp_path / "cat" / f"{i}.png", 10)
        _save(Image.new("L", (8, 8), 200), tmp_path / "dog" / f"{i}.AVIF")
    # An iPhone photo's first bytes: an ISO-BMFF 'ftyp' box of brand heic (no HEVC decoder here).
    heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64)
    (tmp_path / "dog" / "IMG_0001.HEIC").write_bytes(heic)
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        s = load_folder(tmp_path, ImageSpec(channels=1), progress=False)
    both = torch.cat([s.train.labels, s.val.labels])
    assert torch.bincount(both).tolist() == [3, 3] and len(s.skipped) == 1
    (line,) = [m for m in caplog.messages if "IMG_0001.HEIC" in m]
    assert "HEIC" in line and "convert it to JPEG" in line
    assert not any("without an image extension" in m for m in caplog.messages)


@pytest.mark.parametrize("side", [12, 20])  # PIL warns above the limit and raises above twice it
def test_decompression_bomb_refused(tmp_path, monkeypatch, side):
    p = _save(Image.new("L", (side, side)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the documented way to accept it
    assert load_image(p).size == (side, side)


def test_a_big_jpeg_to_be_shrunk_is_decoded_scaled_and_not_refused(tmp_path, monkeypatch):
    """A 12,000 x 9,000 camera JPEG (108 Mpx, over PIL's 89.5 Mpx) was skipped as a
    decompression bomb by every command, with no way to accept it on the command line. Here the
    limit is lowered to 1,000 pixels so that a 40 x 40 photo plays that part."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    jpg = _save(photo, tmp_path / "camera.jpg", quality=95)
    png = _save(photo, tmp_path / "scan.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for path in (jpg, png):  # decoded whole: refused, saying what to do
        with pytest.raises(ImageError, match="decompression bomb .*save a smaller copy"):
            load_image(path)
    assert load_image(jpg, shrink_to=8).size == (20, 20)  # libjpeg's 1/2 scale, >= 2 x 8
    assert ImageSpec(size=8).load(jpg).shape == (3, 8, 8)
    assert ImageSpec(size=6, method="crop", resize_size=8).load(jpg).shape == (3, 6, 6)
    from cnnzoo.weights.preprocess import Preprocessing  # what `cnnzoo predict` decodes with

    assert Preprocessing(crop_size=6, resize_size=8).load(jpg).shape == (3, 6, 6)
    with pytest.raises(ImageError, match="save a smaller copy"):  # a PNG has no scaled decoding
        ImageSpec(size=8).load(png)
    with pytest.raises(ImageError, match="save a smaller copy"):  # half of 40 < twice 11
        load_image(jpg, shrink_to=11)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert load_image(jpg, shrink_to=8).size == (40, 40)  # within the limit: decoded whole


def test_a_big_phone_jpeg_over_twice_the_limit_or_with_a_second_picture_is_decoded_scaled(
    tmp_path, monkeypatch
):
    """Two camera JPEGs the scaled decoding did not reach: one over twice the limit, which PIL
    refuses to open at all (a 200 Mpx phone photo, 16,320 x 12,240: refused with PIL's 'could
    be decompression bomb DOS attack'), and one holding a second picture (a phone's depth or
    HDR gain map), which PIL opens as an MPO, not a 'JPEG'. The limit is lowered to 1,000 px."""
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (40, 80, 3), dtype=np.uint8))  # 3,200 px > 2 x
    huge = _save(wide, tmp_path / "200mp.jpg", quality=95)
    photo = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    mpo = tmp_path / "depth.jpg"
    photo.save(mpo, format="MPO", save_all=True, append_images=[photo.convert("L").convert("RGB")])
    png = _save(wide, tmp_path / "scan.png")
    with Image.open(mpo) as im:
        assert im.format == "MPO"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_image(huge, shrink_to=8).size == (40, 20)  # libjpeg's 1/2 scale
    assert load_image(mpo, shrink_to=8).size == (20, 20)
    assert ImageSpec(size=6, method="crop", resize_size=8).load(huge).shape == (3, 6, 6)
    for path in (huge, png):  # decoded whole, or no scaled decoding: still refused
        with pytest.raises(ImageError, match="decompression bomb .*save a smaller copy"):
            load_image(path, shrink_to=None if path == huge else 8)


def test_a_folder_is_decoded_into_one_block_not_stacked_from_a_list(tmp_path, monkeypatch):
    """Each decoded image goes straight into the data set's tensor: a list of them stacked at
    the end held every image twice (5,000 files at 224 px: a peak of 2.4 GB for 0.72 GB of
    images, now 1.7 GB, and 5.7 s instead of 9.5 s). Rows, labels and paths stay aligned when
    a file in the middle is skipped."""
    for cls, values in (("a", (10, 20, 30)), ("b", (40, 50))):
        for v in values:
            _png(tmp_path / cls / f"{v}.png", v, (6, 6))
    (tmp_path / "a" / "25.png").write_bytes(b"not a png")  # sorted between 20 and 30

    def no_stack(*args, **kwargs):
        raise AssertionError("the images were stacked from a list: held twice")

    monkeypatch.setattr(torch, "stack", no_stack)
    s = load_folder(tmp_path, ImageSpec(channels=1), val_fraction=0.4, progress=False)
    monkeypatch.undo()
    both = [s.train, s.val]
    got = sorted((int(d.images[i].float().mean()), d.class_names[int(d.labels[i])],
                  Path(d.paths[i]).name) for d in both for i in range(len(d)))  # fmt: skip
    assert got == [(10, "a", "10.png"), (20, "a", "20.png"), (30, "a", "30.png"),
                   (40, "b", "40.png"), (50, "b", "50.png")]  # fmt: skip
    assert len(s.skipped) == 1 and "25.png" in s.skipped[0]
    from cnnzoo.data.folder import _image_block  # photos at their own size, too many of them

    with pytest.raises(DataError, match=r"the 1000000000 images in x at 4000x3000 px need "
                                        r"[\d.]+ GB of memory: give a smaller size"):
        _image_block(10**9, (3, 3000, 4000), Path("x"))


def test_resize_helpers():
    img = Image.new("RGB", (300, 200))
    assert resize_shorter(img, 100).size == (150, 100)
    assert resize_shorter(Image.new("RGB", (200, 300)), 100).size == (100, 150)
    assert fit_image(img, 224, method="crop", resize_size=256).size == (224, 224)
    assert fit_image(img, (10, 20)).size == (20, 10)  # (height, width) as in torch
    # Centre crop of a known pattern: columns 0..5 valued 0..5; the middle 2 are 2 and 3.
    pattern = Image.fromarray(np.tile(np.arange(6, dtype=np.uint8), (4, 1)))
    assert to_tensor_uint8(center_crop(pattern, (2, 2)))[0].tolist() == [[2, 3], [2, 3]]
    t = to_tensor_uint8(Image.new("RGB", (3, 2), (1, 2, 3)))
    assert t.shape == (3, 2, 3) and t[:, 0, 0].tolist() == [1, 2, 3]


def test_a_centre_crop_of_a_long_strip_resizes_only_what_it_keeps(monkeypatch):
    """A 1 x 30,000 px strip, resized so its shorter side is 256 before the 224 crop, was a
    256 x 7,680,000 image: 8 GB and 25 s for `cnnzoo predict` on a 300-byte PNG. Only the
    region the crop keeps is resized now, to the same pixels (within one grey level)."""
    made: list[int] = []
    resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, size, *a, **k: (
        made.append(size[0] * size[1]), resize(self, size, *a, **k))[1])  # fmt: skip
    strip = Image.fromarray(np.tile(np.arange(250, dtype=np.uint8), 12)[None])  # 1 x 3,000
    for img in (strip, strip.transpose(Image.Transpose.TRANSPOSE)):
        out = fit_image(img, 224, method="crop", resize_size=256)
        assert out.size == (224, 224) and max(made) <= 4 * 224 * 224
    rng = np.random.default_rng(0)
    for w, h, size, shorter in ((2000, 3, 224, 256), (5, 900, 64, 80), (40, 4000, 224, 200)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        want = np.asarray(center_crop(resize_shorter(img, shorter), size), dtype=int)
        got = np.asarray(fit_image(img, size, method="crop", resize_size=shorter), dtype=int)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1  # padded alike too


# --- folders and manifests --------------------------------------------------------------------


def _png(path, value: int, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_named_like_an_image_is_skipped_not_waited_on(tmp_path, caplog):
    """A named pipe called x.png (a tar from the web can hold one) hung `cnnzoo train` and
    `cnnzoo data info` for ever before any work: reading its header opened it, and opening a
    pipe waits for a writer. Decoding said 'empty file (0 bytes)'. Neither opens it now."""
    from cnnzoo.data.folder import seen_images
    from cnnzoo.data.images import frame_count, image_header

    for cls, value in (("cat", 10), ("dog", 200)):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", value)
    pipe = tmp_path / "cat" / "x.png"
    os.mkfifo(pipe)
    found: list[object] = []
    reader = threading.Thread(target=lambda: found.extend(
        [image_header(pipe), frame_count(pipe), seen_images(tmp_path)]), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # waiting on the pipe: let it go, then fail
        with open(pipe, "wb"):
            pass
        reader.join(10)
    assert found[:2] == [None, 1] and found[2].largest == 8
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        s = load_folder(tmp_path, ImageSpec(channels=1), progress=False)
    assert len(s.train) + len(s.val) == 6
    assert f"skipped {pipe}: a named pipe or a device, not an image file" in caplog.text


def test_folder_with_bad_files_loads_the_good_ones(tmp_path, caplog):
    for cls, value in (("cat", 10), ("dog", 200)):
        for i in range(5):
            _png(tmp_path / cls / f"{i}.png", value)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    (tmp_path / "dog" / "zero.png").write_bytes(b"")
    (tmp_path / "dog" / "notes.txt").write_text("a note")
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0\0")
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        s = load_folder(tmp_path, ImageSpec(size=6, channels=1), progress=False)
    assert s.class_names == ["cat", "dog"]
    assert len(s.train) + len(s.val) == 10 and s.train.images.shape[1:] == (1, 6, 6)
    lines = caplog.messages
    assert any("broken.jpg" in m and "skipped" in m for m in lines)
    assert any("zero.png" in m and "empty file" in m for m in lines)
    assert any("skipped 2 of 12" in m for m in lines)
    assert any("notes.txt" in m and "ignored 1 file" in m for m in lines)
    assert not any(".DS_Store" in m for m in lines)
    assert len(s.skipped) == 2
    # Labels follow the pixels: cats are dark, dogs bright.
    all_imgs = torch.cat([s.train.images, s.val.images])
    all_lbls = torch.cat([s.train.labels, s.val.labels])
    assert torch.equal(all_imgs[:, 0, 0, 0] > 100, all_lbls == 1)


def test_a_mac_zips_macosx_folder_is_neither_a_class_nor_hides_a_train_val_layout(tmp_path):
    """Unzipping a Mac's zip leaves __MACOSX/<class>/._x.jpg beside the classes: it stopped the
    run ("class folder __MACOSX has no images") and, beside train/ + val/, made those classes."""
    for part, n in (("train", 3), ("val", 1)):
        for cls, value in (("cat", 10), ("dog", 200)):
            for i in range(n):
                _png(tmp_path / part / cls / f"{i}.png", value)
    junk = tmp_path / "__MACOSX" / "train" / "cat"
    junk.mkdir(parents=True)
    (junk / "._0.png").write_bytes(b"\0\5\26\7" + b"\0" * 80)
    s = load_folder(tmp_path, ImageSpec(channels=1), progress=False)
    assert s.class_names == ["cat", "dog"] and (len(s.train), len(s.val)) == (6, 2)
    (tmp_path / "train" / "__MACOSX").mkdir()  # an empty one beside classes
    assert load_folder(tmp_path / "train", progress=False).class_names == ["cat", "dog"]


def test_images_beside_the_class_folders_are_named_as_such(tmp_path, caplog):
    """Images dropped next to the class folders have no class and are left out; the note
    called them files "without an image extension" (a.jpg), which sent the user looking for
    a wrong suffix."""
    for cls, value in (("cat", 10), ("dog", 200)):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", value)
    _png(tmp_path / "stray.png", 50)
    (tmp_path / "readme.txt").write_text("notes")
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        s = load_folder(tmp_path, ImageSpec(channels=1), progress=False)
    assert len(s.train) + len(s.val) == 6
    assert caplog.messages == [
        "ignored 1 image outside the class folders (stray.png): move each into its class's "
        "sub-folder to train on it",
        "ignored 1 file without an image extension (readme.txt)",
    ]
    # Beside train/ and val/ they were left out without a word.
    for part in ("train", "val"):
        for cls in ("cat", "dog"):
            _png(tmp_path / "split" / part / cls / "0.png", 10)
    _png(tmp_path / "split" / "stray.png", 50)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        s = load_folder(tmp_path / "split", ImageSpec(channels=1), progress=False)
    assert len(s.train) + len(s.val) == 4
    assert caplog.messages == [
        "ignored 1 image outside the class folders (stray.png): move each into its class's "
        "sub-folder to train on it"]


def test_class_folders_holding_only_sub_folders_are_named_in_a_note(tmp_path, caplog):
    """DATA/shoes/{boot,sandal} + DATA/shirts/{polo,tee} trained 2 classes from the images
    found recursively, without a word to a user who meant 4 classes (or one of the sets)."""
    root = tmp_path / "data"
    for group, kinds in (("shoes", ("boot", "sandal")), ("shirts", ("polo", "tee"))):
        for kind in kinds:
            for i in range(2):
                _png(root / group / kind / f"{i}.png", 10)
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        s = load_folder(root, ImageSpec(channels=1), progress=False)
    assert s.class_names == ["shirts", "shoes"]  # still trains: a real layout for some
    assert caplog.messages == [
        f"note: every class folder in {root} keeps its images in sub-folders (shirts/: polo, "
        f"tee; shoes/: boot, sandal): training 2 classes (shirts, shoes); if the sub-folders "
        f"are the classes, give one set ({root / 'shirts'}) or list the images with their "
        "labels in a CSV manifest"]
    # train/ and val/ inside each class: pooled and split again, so the note says where they go.
    caplog.clear()
    for cls in ("cat", "dog"):
        for part in ("train", "val"):
            _png(tmp_path / "parts" / cls / part / "0.png", 10)
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        load_folder(tmp_path / "parts", ImageSpec(channels=1), progress=False)
    (line,) = caplog.messages
    assert "hold their images in part folders (cat/: train, val; dog/: train, val)" in line
    assert line.endswith(f"put them above the classes ({tmp_path / 'parts' / 'train' / 'cat'})")
    # No note when a class folder holds images itself, or each has one sub-folder.
    caplog.clear()
    _png(root / "shoes" / "loose.png", 10)
    _png(tmp_path / "one" / "cat" / "cat" / "0.png", 10)
    _png(tmp_path / "one" / "dog" / "dog" / "0.png", 10)
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        load_folder(root, ImageSpec(channels=1), progress=False)
        load_folder(tmp_path / "one", ImageSpec(channels=1), progress=False)
    assert caplog.messages == []


def test_class_names_that_differ_only_in_case_are_named_in_a_note(tmp_path, caplog):
    """Cat/ and cat/ (a case-sensitive disk), or labels Cat and cat, were two classes without a
    word; a validation class spelt otherwise was 'a class that train does not have'."""
    for cls in ("Cat", "cat", "dog", "A", "a"):  # one-letter classes: letters, meant apart
        _png(tmp_path / "f" / cls / "0.png", 10)
        _png(tmp_path / "f" / cls / "1.png", 10)
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        s = load_folder(tmp_path / "f", ImageSpec(channels=1), progress=False)
    assert s.class_names == ["A", "Cat", "a", "cat", "dog"]  # still apart: they may be meant so
    assert caplog.messages == [
        f"note: classes 'Cat' and 'cat' in {tmp_path / 'f'} differ only in case, so they are "
        "separate classes; if they are one, move the images of one folder into the other"]
    caplog.clear()
    rows = ["path,label,split"] + [f"f/{c}/{i}.png,{c},train" for c in ("Cat", "dog")
                                   for i in range(2)]  # fmt: skip
    (tmp_path / "m.csv").write_text("\n".join([*rows, "f/cat/0.png,CAT,train"]) + "\n")
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        load_csv(tmp_path / "m.csv", ImageSpec(channels=1), progress=False)
    assert caplog.messages == [
        f"note: classes 'CAT' and 'Cat' in {tmp_path / 'm.csv'} differ only in case, so they "
        "are separate classes; if they are one, give their rows one label"]
    # A validation class spelt otherwise than its training class says how it is spelt there.
    (tmp_path / "m.csv").write_text("\n".join([*rows, "f/cat/0.png,cat,val"]) + "\n")
    with pytest.raises(DataError, match=r"has label 'cat', which no training row has \(they "
                       r"spell it 'Cat'\): fix the label"):  # fmt: skip
        load_csv(tmp_path / "m.csv", ImageSpec(channels=1), progress=False)
    for part, cls in (("train", "cat"), ("train", "dog"), ("val", "Cat"), ("val", "dog")):
        _png(tmp_path / "p" / part / cls / "0.png", 10)
    with pytest.raises(DataError) as err:
        load_folder(tmp_path / "p", ImageSpec(channels=1), progress=False)
    assert str(err.value) == (f"{tmp_path / 'p' / 'val' / 'Cat'} is a class that "
                              f"{tmp_path / 'p' / 'train'} does not have: rename it 'cat', as "
                              "the training folder spells it")  # fmt: skip


def test_linked_folders_inside_a_class_are_read_once_and_a_link_loop_ends(tmp_path):
    """A folder linked into a class folder holds that class's images, as a linked file or a
    linked class folder does; they vanished without a word (os.walk does not follow links)."""
    from cnnzoo.data.folder import image_files

    root, extra = tmp_path / "data", tmp_path / "phone_export"
    for i in range(3):
        _png(root / "cat" / f"{i}.png", 10)
        _png(root / "dog" / f"{i}.png", 200)
        _png(extra / f"x{i}.png", 200)
    (root / "dog" / "linked").symlink_to(extra, target_is_directory=True)
    (root / "dog" / "again").symlink_to(extra, target_is_directory=True)  # the same folder twice
    (extra / "up").symlink_to(root / "dog", target_is_directory=True)  # a loop back up
    (root / "dog" / "all").symlink_to(root, target_is_directory=True)  # the data folder itself
    (root / "cat" / "same.png").symlink_to(root / "cat" / "0.png")  # a photo and a link to it
    (root / "dog" / "x0.png").symlink_to(extra / "x0.png")  # one of the linked folder's
    s = load_folder(root, ImageSpec(size=6, channels=1), progress=False)
    assert len(s.train) + len(s.val) == 9  # 3 cats, 3 dogs and the 3 linked ones, once each
    counts = [t + v for t, v in zip(s.train.class_counts(), s.val.class_counts(), strict=True)]
    assert counts == [3, 6]  # no cat among the dogs through the link to the data folder
    assert len(image_files(root / "dog")) == 6  # what `cnnzoo predict` finds in the folder


@pytest.mark.parametrize("target", ["data", "above", "part"])
def test_a_class_folder_linked_to_a_folder_holding_the_data_is_refused(tmp_path, target):
    """A downloaded set whose class folder is a link to / (or to a folder above the data, or
    to the data folder itself) read every image on the disk, the other classes' among them,
    as that class: `cnnzoo data info` on a class folder linked to / listed 6,000 images of
    the machine's under it. One line says to remove the link."""
    root = tmp_path / "top" / "data"
    for i in range(2):
        _png(root / "cat" / f"{i}.png", 10)
        _png(root / "dog" / f"{i}.png", 200)
    if target == "part":  # a class folder of DATA/train/ linked above DATA
        for cls in ("cat", "dog"):
            shutil.move(root / cls, root / "val" / cls)
        (root / "train").mkdir()
        (root / "train" / "up").symlink_to(tmp_path / "top", target_is_directory=True)
    else:
        to = root if target == "data" else tmp_path / "top"
        (root / "zlink").symlink_to(to, target_is_directory=True)
    with pytest.raises(DataError, match=r"class folder .* leads to .*, which holds the data "
                                        r"folder .* itself: .*remove the link"):
        load_folder(root, ImageSpec(size=6, channels=1), progress=False)


def test_a_folder_of_only_unreadable_images_names_its_part_only_where_there_is_one(tmp_path):
    """A flat folder (what `cnnzoo evaluate --data` is given) said "none of the 2 train
    images"; a val/ folder or a manifest's rows name their part."""
    for cls in ("cat", "dog"):
        (tmp_path / "flat" / cls).mkdir(parents=True)
        (tmp_path / "flat" / cls / "1.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        load_folder(tmp_path / "flat", progress=False)
    assert str(err.value) == (f"none of the 2 images in {tmp_path / 'flat'} could be read "
                              "(see warnings)")
    for cls in ("cat", "dog"):
        _png(tmp_path / "split" / "train" / cls / "1.png", 0)
        (tmp_path / "split" / "val" / cls).mkdir(parents=True)
        (tmp_path / "split" / "val" / cls / "1.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"none of the 2 val images in .*split/val could be"):
        load_folder(tmp_path / "split", progress=False)


def test_folder_errors(tmp_path):
    _png(tmp_path / "a" / "1.png", 0)
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=r"class folder .*b has no images.*add images"):
        load_folder(tmp_path, progress=False)
    shutil.rmtree(tmp_path / "b")
    with pytest.raises(DataError, match="single class folder.*two or more"):
        load_folder(tmp_path, progress=False)
    # Unzipped one level too high (photos/photos/cat/...): "a single class folder ('photos')"
    # did not say that the classes are one level down.
    for cls in ("cat", "dog"):
        _png(tmp_path / "up" / "photos" / cls / "1.png", 0)
    with pytest.raises(DataError) as err:
        load_folder(tmp_path / "up", progress=False)
    assert str(err.value) == (f"{tmp_path / 'up'} holds a single folder, 'photos', whose "
                              "sub-folders (cat, dog) look like the data: give "
                              f"{tmp_path / 'up' / 'photos'} as the data folder")
    shutil.rmtree(tmp_path / "up")
    shutil.rmtree(tmp_path / "a")
    with pytest.raises(DataError, match="no images found"):
        load_folder(tmp_path, progress=False)
    _png(tmp_path / "loose.png", 0)
    with pytest.raises(DataError, match="no class sub-folders"):
        load_folder(tmp_path, progress=False)
    with pytest.raises(DataError, match="not a folder"):
        load_folder(tmp_path / "nowhere", progress=False)
    _png(tmp_path / "x" / "1.png", 0, (8, 8))
    _png(tmp_path / "y" / "1.png", 0, (9, 8))
    # The suggestion is the largest side (nothing lost), not 224 (3,000x the pixels of 8x8).
    with pytest.raises(DataError, match=r"different sizes.*give a size to resize them to "
                                        r"\(size=9, or --img-size 9\)$"):  # fmt: skip
        load_folder(tmp_path, progress=False)
    for part, side in (("train", 8), ("val", 12)):  # each part of one size, the parts not
        for cls in "xy":
            _png(tmp_path / "parts" / part / cls / "1.png", 0, (side, side))
    with pytest.raises(DataError, match=r"the train and validation images have different "
                                        r"sizes \(8x8 and 12x12 pixels\): .*\(size=12, or "
                                        r"--img-size 12\)$"):  # fmt: skip
        load_folder(tmp_path / "parts", progress=False)
    # A test/ part of another size was called the validation images too.
    for part, side in (("train", 8), ("val", 8), ("test", 12)):
        for cls in "xy":
            _png(tmp_path / "tvt" / part / cls / "1.png", 0, (side, side))
    with pytest.raises(DataError, match=r"^the train and test images have different sizes "
                                        r"\(8x8 and 12x12 pixels\)"):  # fmt: skip
        load_folder(tmp_path / "tvt", progress=False)


def test_folder_all_files_of_a_class_unreadable(tmp_path):
    _png(tmp_path / "a" / "1.png", 0)
    _png(tmp_path / "b" / "1.png", 0)
    (tmp_path / "b" / "1.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="class 'b'.*no readable image"):
        load_folder(tmp_path, progress=False)


def test_unreadable_class_error_comes_after_the_lines_naming_the_files(tmp_path, caplog):
    # The error says "(see warnings)": the skip lines must be there even though loading fails.
    _png(tmp_path / "f" / "good" / "1.png", 0)
    (tmp_path / "f" / "bad").mkdir()
    (tmp_path / "f" / "bad" / "a.png").write_text("not an image")
    (tmp_path / "f" / "bad" / "b.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        with pytest.raises(DataError, match="class 'bad'.*see warnings"):
            load_folder(tmp_path / "f", progress=False)
    assert any("a.png" in m and m.startswith("skipped") for m in caplog.messages)
    assert any("b.png" in m and "empty file" in m for m in caplog.messages)
    assert "skipped 2 of 3 images (each named above, with why)" in caplog.messages
    caplog.clear()
    manifest = tmp_path / "m.csv"
    manifest.write_text("f/good/1.png,good\nf/gone.png,gone\n")
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        with pytest.raises(DataError, match="class 'gone'.*see warnings"):
            load_csv(manifest, progress=False)
    assert any("gone.png" in m and "no such file" in m for m in caplog.messages)
    caplog.clear()
    manifest.write_text("f/bad/a.png,x\nf/bad/b.png,y\n")
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        with pytest.raises(DataError, match="none of the 2 train images.*see warnings"):
            load_csv(manifest, progress=False)
    assert sum("a.png" in m or "b.png" in m for m in caplog.messages) == 2


def test_csv_header_names_the_columns_in_any_order(tmp_path, caplog):
    for i in range(4):
        _png(tmp_path / f"cat{i}.png", 10)
        _png(tmp_path / f"dog{i}.png", 200)
    manifest = tmp_path / "m.csv"

    def write(header: str, row) -> None:
        lines = [header] if header else []
        for i in range(4):
            for cls in ("cat", "dog"):
                lines.append(row(f"{cls}{i}.png", cls, "val" if i == 3 else "train"))
        manifest.write_text("\n".join(lines) + "\n")

    def dark_is_cat(s) -> bool:
        imgs = torch.cat([s.train.images, s.val.images])[:, 0, 0, 0]
        labels = torch.cat([s.train.labels, s.val.labels])
        return torch.equal(imgs < 100, labels == s.class_names.index("cat"))

    write("label,path", lambda p, c, _: f"{c},{p}")
    s = load_csv(manifest, ImageSpec(channels=1), val_fraction=0.25, progress=False)
    assert s.class_names == ["cat", "dog"] and len(s.train) + len(s.val) == 8
    assert dark_is_cat(s)
    write("split,path,label", lambda p, c, sp: f"{sp},{p},{c}")
    s = load_csv(manifest, ImageSpec(channels=1), progress=False)
    assert s.train.class_counts() == [3, 3] and s.val.class_counts() == [1, 1]
    assert dark_is_cat(s)
    write("class,file", lambda p, c, _: f"{c},{p}")  # aliases other tools' manifests use
    assert dark_is_cat(load_csv(manifest, ImageSpec(channels=1), progress=False))
    # A spreadsheet's headings: any case, spaces or hyphens for underscores. "Image Path,Label"
    # was a data row, so "Label" became a third class (of the file "Image Path").
    for header in ("Image Path,Label", "File name,Class name", " File-Name , CLASS "):
        write(header, lambda p, c, _: f"{p},{c}")
        s = load_csv(manifest, ImageSpec(channels=1), progress=False)
        assert s.class_names == ["cat", "dog"] and not s.skipped and dark_is_cat(s), header
    # Headerless manifests keep the documented order path,label[,split].
    write("", lambda p, c, sp: f"{p},{c},{sp}")
    s = load_csv(manifest, ImageSpec(channels=1), progress=False)
    assert s.val.class_counts() == [1, 1] and dark_is_cat(s)
    # Columns nobody asked for (metadata) are ignored; a path column first with an unknown
    # second name takes it as the label (the older manifests' layout).
    write("filename,label,width", lambda p, c, _: f"{p},{c},28")
    assert dark_is_cat(load_csv(manifest, ImageSpec(channels=1), progress=False))
    write("file,klass", lambda p, c, _: f"{p},{c}")
    assert dark_is_cat(load_csv(manifest, ImageSpec(channels=1), progress=False))
    write("path,split", lambda p, c, sp: f"{p},{sp}")
    with pytest.raises(DataError, match="no label column"):
        load_csv(manifest, progress=False)
    write("split,path", lambda p, c, sp: f"{sp},{p}")  # in any order: still a header
    with pytest.raises(DataError, match="no label column"):
        load_csv(manifest, progress=False)
    write("label,split", lambda p, c, sp: f"{c},{sp}")
    with pytest.raises(DataError, match="no path column"):
        load_csv(manifest, progress=False)
    # A data row is not a header because a cell reads 'class' or 'image': a label 'class' and
    # files without an extension.
    for i in range(4):
        (tmp_path / f"image{i}").write_bytes((tmp_path / f"cat{i}.png").read_bytes())
    write("", lambda p, c, _: f"image{p[3:-4]},class" if c == "cat" else f"{p},{c}")
    s = load_csv(manifest, ImageSpec(channels=1), progress=False)
    assert s.class_names == ["class", "dog"] and len(s.train) + len(s.val) == 8
    # A row without a label in a header-ordered file names that order; an unknown split value
    # is one line for all its rows (50 rows marked 'holdout' used to be 50 lines).
    write("split,path,label", lambda p, c, sp: f"{sp},{p},{c}")
    manifest.write_text(manifest.read_text() + "train,cat0.png,\n"
                        + "holdout,cat0.png,cat\n" * 5)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        assert len(load_csv(manifest, progress=False).skipped) == 2
    assert any("line 10: expected `split,path,label`" in m for m in caplog.messages)
    assert f"skipped {manifest}: 5 rows with split 'holdout' (lines 11, 12, 13, ...): the split " \
        "is train, val or test" in caplog.messages
    assert "skipped 6 of 14 images (each named above, with why)" in caplog.messages  # rows
    # Only the validation rows unreadable: the error names that part.
    write("split,path,label", lambda p, c, sp: f"{sp},{p},{c}" if sp == "train" else
          f"{sp},gone{p},{c}")  # fmt: skip
    with pytest.raises(DataError, match=r"none of the 2 val images in .*m.csv could be read"):
        load_csv(manifest, progress=False)


def test_an_image_a_manifest_lists_twice_is_read_once(tmp_path, caplog, capsys):
    """Two manifests pasted together list images twice: each copy was read, so an image in
    both a train and a val row (or, without a split column, drawn to both sides) was validated
    on after being trained on, and the validation accuracy was that of training images. A
    repeat with another label (two people's labels) is named: the first row's label wins."""
    rows = ["path,label,split"]
    for i in range(4):
        for cls, v in (("cat", 10), ("dog", 200)):
            _png(tmp_path / "imgs" / f"{cls}{i}.png", v)
            rows.append(f"imgs/{cls}{i}.png,{cls},{'val' if i == 3 else 'train'}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows + ["imgs/cat0.png,cat,val", "./imgs/dog1.png,dog,train",
                                          f"{tmp_path}/imgs/dog2.png,cat,train"]) + "\n")
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        s = load_csv(manifest, progress=False)
    assert s.train.class_counts() == [3, 3] and s.val.class_counts() == [1, 1]
    assert f"skipped {manifest}: 3 rows list an image an earlier row lists (lines 10, 11, 12; " \
        "line 10 repeats line 2, imgs/cat0.png): each image is read once, from its first row; " \
        "1 of them gives another label (line 12 'cat', line 7 'dog'): remove the row that is " \
        "wrong" in caplog.messages  # it was not said: dog2 was read as a dog, silently
    assert "skipped 3 of 11 images (each named above, with why)" in caplog.messages

    from cnnzoo.cli import main

    assert main(["data", "info", str(manifest)]) == 0  # its count said 1: the warning lines
    assert capsys.readouterr().out.rstrip().endswith("3 files skipped")


def test_train_val_test_subfolders(tmp_path, caplog):
    for part, n in (("train", 4), ("valid", 2), ("test", 3)):
        for cls in ("x", "y"):
            for i in range(n):
                _png(tmp_path / part / cls / f"{i}.png", 0)
    s = load_folder(tmp_path, progress=False)
    assert (len(s.train), len(s.val), len(s.test)) == (8, 4, 6)
    assert "no validation part" not in caplog.text
    shutil.rmtree(tmp_path / "valid")  # test/ then serves as validation, and a note says so
    s = load_folder(tmp_path, progress=False)
    assert (len(s.train), len(s.val), s.test) == (8, 6, None)
    note = ("note: no validation part, so the 6 test images validate the run and are no "
            "held-out test; --val-fraction 0.2 draws the validation images from the training "
            "ones instead and keeps the test images apart (as a val/ folder, or rows marked "
            "val, does)")
    assert note in caplog.text
    # A fraction alone keeps the default (runs so far validated on test/): test/ validates.
    caplog.clear()
    s = load_folder(tmp_path, val_fraction=0.5, progress=False)
    assert (len(s.train), len(s.val), s.test, s.val_drawn) == (8, 6, None, False)
    assert note in caplog.text
    # Held out (`--val-fraction` given): 4 per class in train/, round(4 * 0.5) = 2 of each
    # drawn to validate, and test/'s 3 per class stay the test part, without the note.
    caplog.clear()
    s = load_folder(tmp_path, val_fraction=0.5, progress=False, hold_out_test=True)
    assert (s.train.class_counts(), s.val.class_counts(), s.test.class_counts(),
            s.val_drawn) == ([2, 2], [2, 2], [3, 3], True)
    assert {Path(p).parent.parent.name for p in s.test.paths} == {"test"}
    assert {Path(p).parent.parent.name for p in s.val.paths} == {"train"}
    assert "no validation part" not in caplog.text
    # 'train' among other class folders is a class, not a part.
    _png(tmp_path / "bus" / "1.png", 0)
    assert "train" in load_folder(tmp_path, ImageSpec(size=8), progress=False).class_names


def test_csv_manifest(tmp_path):
    rows = ["path,label,split"]
    for i in range(6):
        for cls, v in (("2", 0), ("10", 255)):
            _png(tmp_path / "imgs" / f"{cls}_{i}.png", v)
            rows.append(f"imgs/{cls}_{i}.png,{cls},{'val' if i >= 4 else 'train'}")
    rows.append("imgs/missing.png,2,train")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    s = load_csv(manifest, progress=False)
    assert s.class_names == ["2", "10"]  # integer labels sort as numbers
    assert s.train.class_counts() == [4, 4] and s.val.class_counts() == [2, 2]
    assert len(s.skipped) == 1 and "missing.png" in s.skipped[0]
    assert load_dataset(manifest, progress=False).train.class_counts() == [4, 4]
    # Without a split column and header: a stratified split.
    manifest.write_text("\n".join(r.rsplit(",", 1)[0] for r in rows[1:-1]) + "\n")
    s = load_csv(manifest, val_fraction=0.5, progress=False)
    assert s.train.class_counts() == [3, 3] and s.val.class_counts() == [3, 3]
    # Written on Windows: backslashes separate the folders (here they would be file names).
    manifest.write_text("\n".join(r.rsplit(",", 1)[0].replace("/", "\\") for r in rows[1:-1]))
    assert load_csv(manifest, val_fraction=0.5, progress=False).train.class_counts() == [3, 3]
    # Excel where the decimal mark is a comma writes ';' between cells; some tools a tab. Each
    # row was one cell: a line per row "expected path,label", then no image at all.
    for sep in (";", "\t"):
        manifest.write_text("\n".join(r.replace(",", sep) for r in rows) + "\n")
        s = load_csv(manifest, progress=False)
        assert s.train.class_counts() == [4, 4] and s.val.class_counts() == [2, 2]
    # Every path written from elsewhere (the current folder, a PC's C:\Users\...): one line
    # naming the CSV's folder, where it was one "no such file" line per row.
    manifest.write_text("\n".join(f"C:\\Users\\anna\\{r.split(',')[0]},{r.split(',')[1]}"
                                  for r in rows[1:]) + "\n")
    with pytest.raises(DataError) as err:
        load_csv(manifest, progress=False)
    assert str(err.value) == (f"none of the 13 files {manifest} lists is there (the first: "
                              f"{tmp_path}/C:\\Users\\anna\\imgs/2_0.png): write the paths "
                              f"relative to the CSV's folder, {tmp_path} (or absolute)")
    manifest.write_text("a.png,cat\n")
    with pytest.raises(DataError, match="two or more"):
        load_csv(manifest, progress=False)


def test_a_manifest_excel_saved_in_the_windows_code_page_is_a_one_line_error(tmp_path):
    """Excel's plain "CSV" is cp1252 ('Würfel' holds the byte 0xfc): reading it as UTF-8 ended
    in a UnicodeDecodeError traceback. Its UTF-8 save (BOM, CRLF, ';', quotes) loads."""
    rows = []
    for i in range(3):
        for cls, v in (("Würfel", 10), ("Kugel", 200)):
            _png(tmp_path / "imgs" / f"{cls} {i}.png", v)
            rows.append(f'"imgs\\{cls} {i}.png";{cls};;')
    manifest = tmp_path / "m.csv"
    text = "\r\n".join(["Filename;Class;Notes;", *rows]) + "\r\n"
    manifest.write_bytes(text.encode("cp1252"))
    with pytest.raises(DataError, match=r"m.csv is not UTF-8 text \(byte 0xfc on line 2\): save "
                       r"it as UTF-8 \(Excel: Save As > CSV UTF-8\)"):
        load_csv(manifest, progress=False)
    assert main(["data", "info", str(manifest)]) == 2  # one line, no traceback
    manifest.write_bytes(text.encode("utf-8-sig"))
    s = load_csv(manifest, val_fraction=1 / 3, progress=False)
    assert s.class_names == ["Kugel", "Würfel"] and not s.skipped
    assert s.train.class_counts() == [2, 2] and s.val.class_counts() == [1, 1]


def test_a_manifest_excel_saved_as_unicode_text_is_read(tmp_path, capsys):
    """Excel's "Unicode Text" export is UTF-16 (little-endian, with its byte-order mark),
    tab-separated, named .txt: refused as 'not UTF-8 text (byte 0xff on line 1)', and as a .txt
    'neither a built-in data set nor an image folder or CSV manifest: check the path'. Renamed
    .csv it is read as its UTF-8 save is; the .txt gets one line saying to rename it."""
    rows = []
    for i in range(3):
        for cls, v in (("Würfel", 10), ("Kugel", 200)):
            _png(tmp_path / "imgs" / f"{cls} {i}.png", v)
            rows.append(f"imgs/{cls} {i}.png\t{cls}")
    text = "\r\n".join(["Filename\tClass", *rows]) + "\r\n"
    for codec, name in (("utf-16", "le16.csv"), ("utf-16-be", "be16.csv"), ("utf-32", "w32.csv")):
        manifest = tmp_path / name
        bom = b"\xfe\xff" if codec == "utf-16-be" else b""  # utf-16 and utf-32 write their own
        manifest.write_bytes(bom + text.encode(codec))
        s = load_csv(manifest, val_fraction=1 / 3, progress=False)
        assert s.class_names == ["Kugel", "Würfel"] and not s.skipped, name
        assert s.train.class_counts() == [2, 2] and s.val.class_counts() == [1, 1]
    (tmp_path / "m.txt").write_bytes(text.encode("utf-16"))
    assert main(["data", "info", str(tmp_path / "m.txt")]) == 2
    assert capsys.readouterr().err == (
        f"cnnzoo data info: error: {tmp_path / 'm.txt'}: a manifest's name ends in .csv (rows "
        "`path,label`; tabs or ';' between the cells are read too): rename it m.csv\n")
    (tmp_path / "cut.csv").write_bytes(text.encode("utf-16")[:-1])  # an odd number of bytes
    with pytest.raises(DataError, match=r"cut.csv is damaged UTF-16 text \(byte \d+\): save it "
                       r"again, as UTF-8 \(Excel: Save As > CSV UTF-8\)$"):
        load_csv(tmp_path / "cut.csv", progress=False)


def test_accented_names_in_a_macs_and_in_windows_unicode_form_are_one_class_and_file(tmp_path):
    """A Mac writes 'ü' in file names as 'u' + a combining mark (NFD), Windows as one character
    (NFC). train/Würfel from a Mac and val/Würfel typed on Windows was 'a class that train does
    not have'; a manifest mixing both labels made two classes that print alike; and a manifest
    naming a file in the other form said 'no such file'."""
    import unicodedata

    from cnnzoo.engine.run import evaluation_images

    nfc, nfd = (functools.partial(unicodedata.normalize, f) for f in ("NFC", "NFD"))
    for part, form, n in (("train", nfd, 3), ("val", nfc, 1)):
        for cls, v in (("Würfel", 10), ("Kugel", 200)):
            for i in range(n):
                _png(tmp_path / "d" / part / form(cls) / f"{i}.png", v)
    s = load_folder(tmp_path / "d", progress=False)
    assert s.class_names == ["Kugel", nfc("Würfel")]
    assert s.train.class_counts() == [3, 3] and s.val.class_counts() == [1, 1]
    rows = ["path,label"] + [f"{nfc(f'd/train/{c}/{i}.png')},{(nfc, nfd)[i % 2](c)}"
                             for c in ("Würfel", "Kugel") for i in range(3)]  # fmt: skip
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    s = load_csv(tmp_path / "m.csv", val_fraction=1 / 3, progress=False)
    assert s.class_names == ["Kugel", nfc("Würfel")] and not s.skipped
    assert s.train.class_counts() == [2, 2] and s.val.class_counts() == [1, 1]
    # A model trained before names were composed keeps the Mac's form: still its class.
    ds = evaluation_images(str(tmp_path / "d" / "val"), ImageSpec(), "all", [nfd("Würfel"), "Kugel"])
    assert ds.labels.tolist() == [1, 0] and ds.images[:, 0, 0, 0].tolist() == [200, 10]


def test_names_that_are_not_utf8_and_output_that_is_not_either(tmp_path, monkeypatch):
    """Files named in Latin-1 on an old machine ('é' the one byte 0xe9) arrive with surrogate
    escapes: `cnnzoo train` on such a folder ended in a UnicodeEncodeError traceback (the
    validation split's digest), and after a fix there in matplotlib's, drawing the class name.
    And results printed to an ASCII stdout (PYTHONIOENCODING=ascii, a Latin-1 locale) ended
    in one when a class name had an accent."""
    root = tmp_path / "d"
    try:
        for i in range(3):
            for cls, v in ((b"caf\xe9", 10), (b"plain", 200)):
                folder = os.fsencode(root) + b"/" + cls
                os.makedirs(folder, exist_ok=True)
                Image.new("L", (8, 8), v).save(os.fsdecode(folder + b"/img%d\xe9.png" % i))
    except (OSError, UnicodeError):  # a file system that holds only UTF-8 names (macOS)
        pytest.skip("this file system refuses names that are not UTF-8")
    s = load_folder(root, val_fraction=1 / 3, progress=False)
    assert s.class_names == ["caf\\xe9", "plain"] and not s.skipped
    assert s.train.class_counts() == [2, 2]
    assert len(s.val.files_digest(root)) == 16

    (tmp_path / "w" / "Würfel").mkdir(parents=True)
    (tmp_path / "w" / "Kugel").mkdir()
    for i in range(2):
        _png(tmp_path / "w" / "Würfel" / f"{i}.png", 10)
        _png(tmp_path / "w" / "Kugel" / f"{i}.png", 200)
    raw = io.BytesIO()
    monkeypatch.setattr("sys.stdout", io.TextIOWrapper(raw, encoding="ascii"))
    assert main(["data", "info", str(tmp_path / "w")]) == 0
    sys.stdout.flush()
    assert b"W\\xfcrfel" in raw.getvalue()


def test_a_single_class_folder_named_the_macs_way_is_one_line_not_a_traceback(tmp_path):
    """The class name is composed (NFC) but a Mac's folder is not: the single-class check
    listed the folder by its composed name, which does not exist on Linux, and stopped in a
    FileNotFoundError traceback (one such folder, alone or unzipped a level too high)."""
    import unicodedata

    nfd = unicodedata.normalize("NFD", "Würfel")
    for cls in ("a", "b"):
        _png(tmp_path / "high" / nfd / cls / "0.png", 10)
    _png(tmp_path / "one" / nfd / "0.png", 10)
    with pytest.raises(DataError, match="whose sub-folders \\(a, b\\) look like the data: give "
                       + re.escape(str(tmp_path / "high" / nfd)) + " as the data folder"):
        load_folder(tmp_path / "high", progress=False)
    with pytest.raises(DataError, match="has a single class folder"):
        load_folder(tmp_path / "one", progress=False)


def test_manifest_delimiter_is_the_one_every_row_is_split_by(tmp_path):
    # Not the first line alone: a ';' manifest whose first file name holds a comma (quoted or
    # not), a tab one whose first name holds a comma and a ';', keep their delimiter.
    for i in range(4):
        for label in ("cat", "dog"):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{label}{i}.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "a,b;c.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "a,b.png")
    manifest = tmp_path / "m.csv"
    for sep, first in ((";", '"a,b;c.png";cat'), (";", "a,b.png;cat"), ("\t", "a,b;c.png\tcat")):
        rows = [first] + [f"{lab}{i}.png{sep}{lab}" for i in range(4) for lab in ("cat", "dog")]
        manifest.write_text("\n".join(rows) + "\n")
        s = load_csv(manifest, val_fraction=0.25, progress=False)
        assert s.class_names == ["cat", "dog"] and not s.skipped, first
        assert len(s.train) + len(s.val) == 9, first



def test_excels_sep_line_names_the_delimiter_and_is_not_a_row(tmp_path, caplog):
    """Excel reads (and hides) a first line `sep=;`, and exports meant for Excel in a German
    locale write it: it was read as the first row, so the header `Filename;Label` under it was
    data, a class 'Label' whose file 'Filename' does not exist (an error), and an image/mask
    manifest was not recognised as one."""
    for i in range(3):
        for label, v in (("Hose", 10), ("Tasche", 200)):
            _png(tmp_path / "bilder" / f"{label}{i}.png", v)
    rows = ["sep=;", "Filename;Label;Notiz"]
    rows += [f"bilder\\{lab}{i}.png;{lab};x, y" for i in range(3) for lab in ("Hose", "Tasche")]
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode())
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        s = load_csv(manifest, val_fraction=1 / 3, progress=False)
    assert s.class_names == ["Hose", "Tasche"] and not s.skipped and not caplog.records
    assert s.train.class_counts() == [2, 2] and s.val.class_counts() == [1, 1]
    # Each image keeps its row's label: the dark ones (10) are Hose.
    for part in (s.train, s.val):
        assert part.images[:, 0, 0, 0].tolist() == [(10, 200)[y] for y in part.labels.tolist()]

    from cnnzoo.data.masks import holds_mask_pairs, read_manifest

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("sep=,\nimage,mask\nbilder/Hose0.png,bilder/Tasche0.png\n")
    assert holds_mask_pairs(pairs)
    assert [(r[1].name, r[2].name) for r in read_manifest(pairs)] == [("Hose0.png", "Tasche0.png")]



def test_a_header_of_unknown_names_or_paths_in_another_column_is_one_line(tmp_path, caplog):
    """A German Excel's header `Dateiname;Klasse` was read as a row: a class 'Klasse' of a
    missing file 'Dateiname', refused as 'has no readable image: add readable images'; rows
    `Klasse;Datei` without a header took every label for a missing file ('none of the files
    is there'). Each is now one line that says to name the columns."""
    for i in range(2):
        for label, v in (("Hose", 10), ("Tasche", 200)):
            _png(tmp_path / "bilder" / f"{label}{i}.png", v)
    rows = [(f"bilder/{lab}{i}.png", lab) for i in range(2) for lab in ("Hose", "Tasche")]
    manifest = tmp_path / "m.csv"
    cases = (("Dateiname;Klasse", rows, "line 1 ('Dateiname', 'Klasse') looks like a header, but "
              "names no path column: name the columns path"),
             ("Klasse;Dateiname", [r[::-1] for r in rows], "line 1 ('Klasse', 'Dateiname') looks "
              "like a header"),
             (None, [r[::-1] for r in rows], "the image files are in column 2 (line 1: 'Hose', "
              "'bilder/Hose0.png'), but without a header the first column is the path"))
    for header, body, message in cases:
        lines = ([header] if header else []) + [";".join(r) for r in body]
        manifest.write_text("\n".join(lines) + "\n")
        with pytest.raises(DataError, match=re.escape(message)):
            load_csv(manifest, progress=False)
    # What is data stays data: a first row whose file is missing (skipped, named), and rows
    # of files without an extension, which give nothing to tell a header by.
    manifest.write_text("bilder/gone.png;Hose\n" + "\n".join(";".join(r) for r in rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        s = load_csv(manifest, val_fraction=0.5, progress=False)
    assert s.train.class_counts() == [1, 1] and s.val.class_counts() == [1, 1]
    assert f"skipped {tmp_path / 'bilder' / 'gone.png'}: no such file" in caplog.text
    for png in (tmp_path / "bilder").glob("*.png"):
        png.rename(png.with_suffix(""))
    manifest.write_text("\n".join(f"bilder/{lab}{i};{lab}" for i in range(2)
                                   for lab in ("Hose", "Tasche")) + "\n")
    s = load_csv(manifest, val_fraction=0.5, progress=False)
    assert s.train.class_counts() == [1, 1] and s.val.class_counts() == [1, 1]



def test_a_manifests_rows_sorted_in_the_sheet_split_the_same(tmp_path):
    """The rows' order is no part of the data: sorting the sheet by label drew other validation
    images for the same seed, so a run's own manifest, sorted, was refused by `evaluate` as
    'changed since the run was trained' (and a resumed run validated on images it trained on).
    Runs from before, which drew in row order, are still scored on their own split."""
    import random

    from cnnzoo.data.images import ImageSpec
    from cnnzoo.engine.run import evaluation_images

    names = [f"{lab}{i:02d}.png" for lab in ("hose", "tasche") for i in range(10)]
    for n in names:
        _png(tmp_path / "bilder" / n, 10 if n.startswith("hose") else 200)
    shuffled = random.Random(1).sample(names, len(names))
    manifest = tmp_path / "m.csv"

    def write(order):
        manifest.write_text("path,label\n" + "".join(f"bilder/{n},{n[:-6]}\n" for n in order))
        return load_csv(manifest, val_fraction=0.25, progress=False)

    got = {}
    for key, order in (("sorted", sorted(names)), ("shuffled", shuffled),
                       ("by label desc", sorted(names, reverse=True))):
        s = write(order)
        got[key] = sorted(os.path.basename(p) for p in s.val.paths)
        assert s.val.class_counts() == [2, 2] and len(s.train) == 16
    assert got["shuffled"] == got["sorted"] == got["by label desc"]

    # A run from before drew from the rows in their order: ImageDataset.split over them.
    s = write(shuffled)
    pool = ImageDataset(torch.cat([s.train.images, s.val.images]),
                        torch.cat([s.train.labels, s.val.labels]), s.class_names,
                        [*s.train.paths, *s.val.paths])
    rows = [pool.paths.index(str(tmp_path / "bilder" / n)) for n in shuffled]
    old_val = pool.select(rows).split(0.25, 0)[1]
    assert sorted(old_val.paths) != sorted(s.val.paths)  # (else this checks nothing)
    ds = evaluation_images(str(manifest), ImageSpec(), None, s.class_names,
                           trained_on=str(manifest), val_fraction=0.25, seed=0,
                           val_files=old_val.files_digest(manifest), progress=False)
    assert sorted(ds.paths) == sorted(old_val.paths)
    write(sorted(names))  # its rows sorted since: that split cannot be told any more
    with pytest.raises(DataError, match="has changed since the run was trained .*or its rows "
                       "reordered, for a run from before rows were read in path order"):
        evaluation_images(str(manifest), ImageSpec(), None, s.class_names,
                          trained_on=str(manifest), val_fraction=0.25, seed=0,
                          val_files=old_val.files_digest(manifest), progress=False)



def test_a_manifest_from_windows_names_files_in_any_case(tmp_path, caplog):
    """Windows and macOS disks ignore case: a manifest listing 'bilder\\img_000.png' for the
    camera's Bilder/IMG_000.PNG worked where it was written, and here every row was 'no such
    file'. A name that matches one file in any case names it; one matching two does not."""
    for i in range(3):
        _png(tmp_path / "Bilder" / f"IMG_00{i}.PNG", 10)
        _png(tmp_path / "Bilder" / f"Würfel_{i}.png", 200)
    _png(tmp_path / "Bilder" / "twin.png", 10)
    _png(tmp_path / "Bilder" / "TWIN.png", 200)
    rows = [f"bilder\\img_00{i}.png,dunkel" for i in range(3)]
    rows += [f"BILDER/{unicodedata.normalize('NFD', 'WÜRFEL')}_{i}.PNG,hell" for i in range(3)]
    rows += ["bilder/Twin.png,hell"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        s = load_csv(manifest, val_fraction=1 / 3, progress=False)
    assert s.class_names == ["dunkel", "hell"]
    assert s.train.class_counts() == [2, 2] and s.val.class_counts() == [1, 1]
    for part in (s.train, s.val):  # each row read the file it names: dark ones dunkel
        assert part.images[:, 0, 0, 0].tolist() == [(10, 200)[y] for y in part.labels.tolist()]
    assert sorted(os.path.basename(p) for p in s.train.paths + s.val.paths) == \
        sorted([f"IMG_00{i}.PNG" for i in range(3)] + [f"Würfel_{i}.png" for i in range(3)])
    assert f"skipped {tmp_path / 'bilder/Twin.png'}: no such file" in caplog.messages



def test_a_spreadsheet_workbook_is_one_line_saying_to_save_it_as_csv(tmp_path, capsys):
    """`--data labels.xlsx` said 'neither a built-in data set nor an image folder or CSV
    manifest: check the path' (the path was right); renamed .csv, 'not UTF-8 text (byte 0x..)';
    as `predict --files-from`, 'the list is NUL-separated (find -print0)'."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "labels.xlsx", "w") as z:  # what an .xlsx is: a zip
        z.writestr("[Content_Types].xml", "<Types/>")
    shutil.copy(tmp_path / "labels.xlsx", tmp_path / "renamed.csv")
    (tmp_path / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504))
    for name in ("labels.xlsx", "renamed.csv", "old.xls"):
        for argv in (["data", "info", str(tmp_path / name)],
                     ["predict", "--files-from", str(tmp_path / name)]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"{tmp_path / name} is a spreadsheet workbook, not " \
                "CSV text: save the sheet as CSV (Excel: Save As > CSV UTF-8" in err, err



def test_two_manifests_pasted_together_keep_no_second_header(tmp_path, caplog):
    """`cat a.csv b.csv > all.csv` (or one sheet's rows pasted under another's, header and
    all): the second header was read as a row, a class 'label' of a missing file 'path', and
    the run stopped ('class 'label' has no readable image'). It is a header, not data."""
    from cnnzoo.data.folder import manifest_image_paths
    from cnnzoo.data.masks import read_manifest

    for i in range(4):
        for label, v in (("cat", 10), ("dog", 200)):
            _png(tmp_path / "imgs" / f"{label}{i}.png", v)
    half = [[f"imgs/{lab}{i}.png,{lab}" for lab in ("cat", "dog")] for i in range(4)]
    a, b = sum(half[:2], []), sum(half[2:], [])
    manifest = tmp_path / "all.csv"
    for text in ("\n".join(["path,label", *a, "path,label", *b]),  # two with headers
                 "\n".join([*a, "Filename,Class", *b]),  # a header only on the second
                 "\n".join(["Label,File", *[",".join(r.split(",")[::-1]) for r in a],
                            "Label,File", *[",".join(r.split(",")[::-1]) for r in b]])):
        manifest.write_text(text + "\n")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
            s = load_csv(manifest, val_fraction=0.25, progress=False)
        assert s.class_names == ["cat", "dog"] and not caplog.records, text
        assert s.train.class_counts() == [3, 3] and s.val.class_counts() == [1, 1]
    assert [p.name for p in manifest_image_paths(manifest)] == \
        [f"{lab}{i}.png" for i in range(4) for lab in ("cat", "dog")]  # fmt: skip
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image,mask\nimgs/cat0.png,imgs/dog0.png\nimage,mask\n"
                     "imgs/cat1.png,imgs/dog1.png\n")
    assert [r[1].name for r in read_manifest(pairs)] == ["cat0.png", "cat1.png"]



def test_paths_written_relative_to_the_current_folder_are_named_as_such(tmp_path, monkeypatch):
    """A manifest written beside the data (`find proj -name '*.png'`) and saved into proj/:
    'none of the files is there' named the CSV's folder but not why; it now says that they
    are there relative to the current folder."""
    for i in range(2):
        for label, v in (("cat", 10), ("dog", 200)):
            _png(tmp_path / "proj" / "imgs" / f"{label}{i}.png", v)
    manifest = tmp_path / "proj" / "m.csv"
    manifest.write_text("".join(f"proj/imgs/{lab}{i}.png,{lab}\n" for i in range(2)
                                for lab in ("cat", "dog")))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        load_csv("proj/m.csv", progress=False)
    assert str(err.value) == ("none of the 4 files proj/m.csv lists is there (the first: "
                              "proj/proj/imgs/cat0.png); they are there relative to the current "
                              "folder (proj/imgs/cat0.png is): write the paths relative to the "
                              "CSV's folder, proj (or absolute)")



def test_one_number_written_two_ways_is_two_classes_in_a_fixed_order(tmp_path, caplog):
    """Labels '7' and '07' sorted by their number alone came in the order of a set's, which
    changes with each process's hash seed: a run's classes were in another order when it
    resumed. They now sort by number, then text, and a note names them."""
    labels = ["7", "07", "1", "007"]
    for i in range(2):
        for k in range(len(labels)):
            _png(tmp_path / f"{k}_{i}.png", 40 * k)
    manifest = tmp_path / "m.csv"
    manifest.write_text("".join(f"{k}_{i}.png,{label}\n" for i in range(2)
                                for k, label in enumerate(labels)))
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        s = load_csv(manifest, val_fraction=0.5, progress=False)
    assert s.class_names == ["1", "007", "07", "7"]
    for part in (s.train, s.val):  # each image has its row's label
        assert part.images[:, 0, 0, 0].tolist() == \
            [40 * labels.index(s.class_names[y]) for y in part.labels.tolist()]  # fmt: skip
    assert f"note: labels '007', '07' and '7' in {manifest} are one number written in two " \
        "ways, so they are separate classes; if they are one, give their rows one label" \
        in caplog.messages



def test_a_row_with_more_cells_than_the_header_is_refused(tmp_path):
    """A CSV written by a script without quotes: 'a.png,Hose, lang' under `path,label` was
    the class 'Hose' (' lang' an ignored cell), and so was 'Hose, kurz': two classes merged
    without a word. Quoted, they are two classes; cells Excel pads rows with are fine."""
    labels = ["Hose, lang", "Hose, kurz", "Tasche"]
    for i in range(2):
        for k in range(3):
            _png(tmp_path / f"{k}_{i}.png", 60 * k)
    manifest = tmp_path / "m.csv"
    rows = [(f"{k}_{i}.png", label) for i in range(2) for k, label in enumerate(labels)]
    manifest.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    with pytest.raises(DataError) as err:
        load_csv(manifest, progress=False)
    assert str(err.value) == (f"{manifest} line 2 has more cells than the header names (3: "
                              "'0_0.png', 'Hose', ' lang'): put a label or file name holding a "
                              "comma in quotes (\"T-Shirt, kurz\"), and name each column in the "
                              "header")
    manifest.write_text("path,label\n" + "".join(f'{p},"{lab}",,\n' for p, lab in rows))
    s = load_csv(manifest, val_fraction=0.5, progress=False)
    assert s.class_names == sorted(labels) and s.train.class_counts() == [1, 1, 1]


# --- augmentation -----------------------------------------------------------------------------


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_horizontal_flip_of_a_known_pattern():
    x = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4).repeat(16, 1, 1, 1)
    mask = torch.arange(12).view(1, 3, 4).repeat(16, 1, 1)
    y, m = HorizontalFlip(p=1.0)(x, mask, _g())
    assert y[0, 0, 0].tolist() == [3, 2, 1, 0] and m[0, 0].tolist() == [3, 2, 1, 0]
    y, m = HorizontalFlip(p=0.5)(x, mask, _g(3))
    flipped = (y != x).flatten(1).any(1)
    assert 0 < flipped.sum() < 16  # some, not all: one draw per sample
    assert torch.equal(y[flipped], x[flipped].flip(-1)) and torch.equal(y[~flipped], x[~flipped])
    assert torch.equal(m.float(), y[:, 0])  # the mask moved with its image
    labels = torch.arange(16)
    assert torch.equal(HorizontalFlip()(x, labels, _g())[1], labels)  # labels pass through


def test_pad_crop_keeps_content_and_moves_masks():
    n, h, w, p = 16, 5, 7, 2
    x = torch.rand(n, 3, h, w)
    mask = torch.arange(h * w).view(1, h, w).repeat(n, 1, 1)
    for mode in ("zeros", "reflect"):
        y, m = PadCrop(p, mode=mode)(x, mask, _g(1))
        padded = torch.nn.functional.pad(
            x, (p, p, p, p), mode="reflect" if mode == "reflect" else "constant"
        )
        mpad = torch.nn.functional.pad(
            mask.unsqueeze(1).float(),
            (p, p, p, p),
            mode="reflect" if mode == "reflect" else "constant",
        )
        shifts = set()
        for i in range(n):
            # Each output is exactly one window of the padded image, and its mask the same window.
            hits = [
                (dy, dx)
                for dy in range(2 * p + 1)
                for dx in range(2 * p + 1)
                if torch.equal(y[i], padded[i, :, dy : dy + h, dx : dx + w])
            ]
            assert len(hits) == 1
            dy, dx = hits[0]
            assert torch.equal(m[i].float(), mpad[i, 0, dy : dy + h, dx : dx + w])
            shifts.add(hits[0])
        assert len(shifts) > 3  # per-sample offsets, not one per batch


def test_random_resized_crop_masks_follow_images():
    n, k, s = 8, 4, 32
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    mask = ((yy // 8 + xx // 8) % k).expand(n, s, s).clone()  # a checkerboard of 4 classes
    onehot = torch.nn.functional.one_hot(mask, k).permute(0, 3, 1, 2).float()
    y, m = RandomResizedCrop(24, scale=(0.2, 0.8))(onehot, mask, _g(2))
    assert y.shape == (n, k, 24, 24) and m.shape == (n, 24, 24) and m.dtype == mask.dtype
    # Where the bilinear image is exactly one-hot, all four source pixels had that class, so the
    # nearest-sampled mask must agree there.
    pure = y.max(1).values == 1.0
    assert pure.float().mean() > 0.5
    assert torch.equal(m[pure], y.argmax(1)[pure])
    assert not torch.equal(y[0], y[1])  # a different crop per sample


def test_same_seed_same_batch_and_loader_replay():
    x = torch.rand(8, 3, 16, 16)
    aug = default_augmentation("photo", 12)
    a, _ = aug(x.clone(), torch.zeros(8), _g(5))
    b, _ = aug(x.clone(), torch.zeros(8), _g(5))
    c, _ = aug(x.clone(), torch.zeros(8), _g(6))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (8, 3, 12, 12)
    images = (torch.rand(20, 1, 28, 28) * 255).to(torch.uint8)
    loader = BatchLoader(
        images, torch.arange(20), batch_size=8, shuffle=True,
        transform=default_augmentation("flip-crop", 32), seed=3,
    )  # fmt: skip
    loader.set_epoch(1)
    first = [xb for xb, _ in loader]
    loader.set_epoch(1)
    assert all(torch.equal(p, q) for p, q in zip(first, [xb for xb, _ in loader], strict=True))
    assert first[0].shape == (8, 1, 32, 32)
    with pytest.raises(DataError):
        default_augmentation("mixup", 32)
    # Reflect padding needs a pad below the side: 2-px images pad by 1 (was a traceback), 1-px
    # ones not at all.
    for side in (1, 2, 3):
        tiny = torch.arange(2 * side * side, dtype=torch.float32).view(2, 1, side, side)
        out, _ = default_augmentation("flip-crop", side)(tiny.clone(), torch.zeros(2), _g(0))
        assert out.shape == tiny.shape
        assert set(out.flatten().tolist()) <= set(tiny.flatten().tolist())  # pixels moved only


def test_progressive_resize_shrinks_only_the_first_epochs():
    """Epochs before `epochs` get the full-size batch resized (antialiased bilinear) to the
    small size; later epochs, and an epoch set directly as after a resume, are untouched."""
    images = (torch.rand(24, 1, 28, 28) * 255).to(torch.uint8)

    def loader(transform):
        return BatchLoader(images, torch.arange(24), batch_size=8, shuffle=True,
                           transform=transform, mean=(0.3,), std=(0.2,), seed=4)  # fmt: skip

    full = loader(default_augmentation("flip-crop", 28))
    prog = loader(ProgressiveResize(default_augmentation("flip-crop", 28), 20, epochs=2))
    for epoch in (0, 1, 2, 5, 1):
        full.set_epoch(epoch)
        prog.set_epoch(epoch)
        for (a, ya), (b, yb) in zip(full, prog, strict=True):
            assert torch.equal(ya, yb)
            if epoch < 2:
                # Normalisation is affine per channel and resizing a convex combination, so
                # normalise-then-resize equals resize-then-normalise up to rounding.
                assert b.shape == (8, 1, 20, 20)
                assert torch.allclose(b, resize_batch(a, 20)[0], atol=1e-4)
            else:
                assert torch.equal(a, b)


def test_color_jitter_is_per_sample_and_grey_safe():
    x = torch.full((6, 3, 4, 4), 0.5)
    y, labels = ColorJitter(brightness=0.5, contrast=0.0, saturation=0.0)(x, torch.arange(6), _g())
    per_image = y.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image))  # uniform within
    assert per_image[:, 0].unique().numel() == 6  # one factor per sample
    assert ((per_image[:, 0] >= 0.25) & (per_image[:, 0] <= 0.75)).all()
    grey = torch.rand(6, 1, 4, 4).expand(6, 3, 4, 4).contiguous()
    y, _ = ColorJitter()(grey, labels, _g())
    assert torch.allclose(y[:, 0], y[:, 1], atol=1e-6) and torch.allclose(
        y[:, 1], y[:, 2], atol=1e-6
    )
    y1, _ = ColorJitter()(grey[:, :1], labels, _g())
    assert y1.shape == (6, 1, 4, 4) and y1.min() >= 0 and y1.max() <= 1
    mask = torch.randint(0, 3, (6, 4, 4))
    assert torch.equal(ColorJitter()(grey, mask, _g())[1], mask)  # photometric: masks untouched


def test_resize_batch_images_and_masks():
    x = torch.rand(2, 1, 28, 28)
    mask = torch.randint(0, 5, (2, 28, 28))
    y, m = resize_batch(x, 32, mask)
    assert y.shape == (2, 1, 32, 32) and m.shape == (2, 32, 32)
    assert set(m.unique().tolist()) <= set(mask.unique().tolist())
    assert resize_batch(x, (28, 28))[0] is x


# --- export -----------------------------------------------------------------------------------


def test_export_fashion_mnist_loads_back(tmp_path, fmnist_test):
    out = tmp_path / "fm"
    msg = export_dataset(
        "fashion-mnist",
        out,
        ExportOptions(["sneaker", "tshirt", "bag"], per_class=10, split="test"),
    )
    assert "wrote 30" in msg
    s = load_folder(out, ImageSpec(channels=1), progress=False)
    assert s.class_names == ["bag", "sneaker", "tshirt"]  # folder names, sorted
    total = [a + b for a, b in zip(s.train.class_counts(), s.val.class_counts(), strict=True)]
    assert total == [10, 10, 10]
    # PNG is lossless: a written file equals the original test image it is named after.
    path = sorted((out / "bag").iterdir())[0]
    index = int(path.stem.split("_")[1])
    assert fmnist_test.labels[index] == 8
    assert torch.equal(to_tensor_uint8(load_image(path, 1)), fmnist_test.images[index])
    with pytest.raises(DataError, match="not empty"):
        export_dataset("fashion-mnist", out, ExportOptions(per_class=1))


@pytest.mark.parametrize("name", ["digits", "cells"])
def test_an_export_killed_mid_file_leaves_no_half_written_image(tmp_path, monkeypatch, name):
    """`cnnzoo data export` killed while writing (3 of 9 kills of a Fashion-MNIST export)
    left an empty PNG among the finished ones, which every later run reported as unreadable;
    the segmentation set (`cells`: an image, its mask, its instances) did so after the others
    were mended. The kill is simulated by PIL dying after half the bytes of the third file."""
    from PIL import Image

    real_save = Image.Image.save
    saved = []

    def dying_save(self, fp, *args, **kwargs):
        saved.append(fp)
        if len(saved) == 3:
            with open(fp, "wb") as f:
                f.write(b"\x89PNG\r\n")  # the process dies here
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dying_save)
    options = ExportOptions(per_class=2, classes=["0", "1"] if name == "digits" else None)
    with pytest.raises(KeyboardInterrupt):
        export_dataset(name, tmp_path / "d", options)
    files = sorted(p for p in (tmp_path / "d").rglob("*") if p.is_file())
    assert len(files) == 2  # the two finished ones, and nothing else
    for f in files:
        assert not f.name.startswith(".")
        with Image.open(f) as im:
            im.load()


def test_data_cli(tmp_path, capsys):
    assert main(["data", "export", "digits", str(tmp_path / "d"), "--per-class", "3",
                 "--classes", "0,7"]) == 0  # fmt: skip
    assert "wrote 6 digits" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["0", "7"]
    assert main(["data", "info", str(tmp_path / "d"), "--channels", "3"]) == 0
    assert "2 classes, images 3x8x8" in capsys.readouterr().out
    # Without --channels, the data's own, as `cnnzoo train` reads them (it said 3x8x8).
    assert main(["data", "info", str(tmp_path / "d")]) == 0
    assert "2 classes, images 1x8x8" in capsys.readouterr().out
    # --json, as the other commands that print results have it: the table, for scripts.
    (tmp_path / "d" / "7" / "bad.png").write_bytes(b"not a png")
    assert main(["data", "info", str(tmp_path / "d"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)  # one document, nothing else on stdout
    assert got["classes"] == ["0", "7"] and got["shape"] == [1, 8, 8] and got["skipped"] == 1
    assert {k: sum(v) for k, v in got["counts"].items()} == got["images"]
    assert sum(got["images"].values()) == 6
    fm = tmp_path / "fm"
    assert main(["data", "export", "fashion-mnist", str(fm), "--classes", "tshirt,Ankle boot",
                 "--per-class", "4"]) == 0  # fmt: skip
    assert "wrote 8 Fashion-MNIST train images" in capsys.readouterr().out
    assert {p.name: len(list(p.iterdir())) for p in fm.iterdir()} == {"tshirt": 4,
                                                                      "ankle_boot": 4}
    assert main(["data", "export", "nosuch", str(tmp_path / "e")]) == 2
    assert "no built-in data set 'nosuch'" in capsys.readouterr().err


def test_shards_cover_every_validation_image_once_and_training_shards_are_even():
    x = torch.zeros(359, 1, 2, 2, dtype=torch.uint8)
    y = torch.arange(359)
    val = [torch.cat([b[1] for b in BatchLoader(x, y, batch_size=50, shard=(r, 2))])
           for r in (0, 1)]
    assert sorted(torch.cat(val).tolist()) == list(range(359))  # 180 + 179, none lost
    train = [BatchLoader(x, y, batch_size=50, shuffle=True, seed=4, shard=(r, 2)) for r in (0, 1)]
    got = [torch.cat([b[1] for b in loader]) for loader in train]
    assert len(got[0]) == len(got[1]) == 179 and len(train[0]) == len(train[1]) == 4
    assert not set(got[0].tolist()) & set(got[1].tolist())  # disjoint: each reads its shard


def test_random_erasing_boxes_follow_the_paper():
    from cnnzoo.data.augment import Compose, RandomErasing

    n, h, w = 2000, 28, 28
    x = torch.zeros(n, 1, h, w)
    labels = torch.arange(n)
    y, out_labels = RandomErasing(0.5)(x, labels, _g(4))
    assert torch.equal(out_labels, labels)  # labels pass through
    erased = (y != 0).flatten(1).any(1)
    assert 0.45 < erased.float().mean() < 0.55  # probability p
    area = (y != 0).flatten(1).float().mean(1)[erased]  # noise is nonzero almost surely
    # 2-40 % of the image, up to the rounding of the box sides to whole pixels
    assert area.min() >= 0.01 and area.max() <= 0.45 and 0.18 < area.mean() < 0.24
    for i in erased.nonzero().flatten()[:50].tolist():  # each erased region is one rectangle
        rows, cols = (y[i, 0] != 0).nonzero().unbind(1)
        box = y[i, 0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert (box != 0).float().mean() > 0.99
    assert torch.equal(RandomErasing(0.5)(x, labels, _g(4))[0], y)  # replayable
    aug = default_augmentation("flip-crop", 28, erase=0.5)
    assert isinstance(aug, Compose) and isinstance(aug.transforms[-1], RandomErasing)
    assert not any(isinstance(t, RandomErasing)
                   for t in default_augmentation("flip-crop", 28).transforms)
    with pytest.raises(DataError):
        RandomErasing(1.5)


def test_uint8_batches_take_the_same_geometry_as_float_batches():
    from cnnzoo.data.augment import Compose, RandomCrop, RandomRot90, VerticalFlip

    x8 = torch.randint(0, 256, (24, 3, 20, 20), generator=_g(1), dtype=torch.uint8)
    for aug in (default_augmentation("flip-crop", 20), default_augmentation("crop", 20),
                Compose([PadCrop(3, mode="zeros"), VerticalFlip(), RandomCrop(16),
                         RandomRot90()])):
        a, _ = aug(x8.clone(), torch.zeros(24), _g(7))
        b, _ = aug(x8.float().div(255), torch.zeros(24), _g(7))
        assert a.dtype == torch.uint8  # every step was exact: no float copy was made
        assert torch.equal(a.float().div(255), b)
    # The first step that is not exact gets a float batch in [0, 1].
    a, _ = default_augmentation("flip-crop", 20, erase=1.0)(x8.clone(), torch.zeros(24), _g(7))
    assert a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    a, _ = default_augmentation("none", 24)(x8.clone(), torch.zeros(24), _g(7))
    assert a.dtype == torch.float32 and a.shape[-1] == 24  # resizing needs float


def test_loader_normalises_uint8_and_can_emit_channels_last():
    x8 = torch.randint(0, 256, (10, 3, 6, 6), generator=_g(2), dtype=torch.uint8)
    y = torch.arange(10)
    mean, std = [0.2, 0.4, 0.6], [0.3, 0.2, 0.1]
    loader = BatchLoader(x8, y, batch_size=10, transform=default_augmentation("none", 6),
                         mean=mean, std=std)
    xb, yb = next(iter(loader))
    ref = (x8.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1)
    assert torch.allclose(xb, ref, atol=1e-5) and torch.equal(yb, y)
    assert xb.is_contiguous()
    loader.channels_last = True
    xc, _ = next(iter(loader))
    assert xc.is_contiguous(memory_format=torch.channels_last) and torch.equal(xc, xb)
    # Without a transform the images are kept channels_last and normalised in that layout.
    bare = BatchLoader(x8, y, batch_size=4, shuffle=True, mean=mean, std=std, seed=1,
                       channels_last=True)
    plain = BatchLoader(x8, y, batch_size=4, shuffle=True, mean=mean, std=std, seed=1)
    for (a, ya), (b, yb) in zip(bare, plain, strict=True):
        assert a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous()
        assert torch.allclose(a, b, atol=1e-5) and torch.equal(ya, yb)


def test_a_segmentation_folder_is_not_read_as_classes(tmp_path):
    """images/ + masks/ (+ instances/) as three 'classes' would train a classifier to tell
    photos from masks; it is one line pointing to the U-Net instead."""
    for sub in ("images", "masks", "instances"):
        for i in range(3):
            _png(tmp_path / sub / f"{i}.png", 40 * i)
    with pytest.raises(DataError, match=r"is a segmentation set \(images/ \+ masks/\).*unet"):
        load_folder(tmp_path, progress=False)
    for sub in ("images", "masks", "instances"):  # named on Windows: trained as 3 classes
        (tmp_path / sub).rename(tmp_path / sub.capitalize())
    with pytest.raises(DataError, match=r"is a segmentation set \(images/ \+ masks/\).*unet"):
        load_folder(tmp_path, progress=False)
    for sub in ("images", "masks"):  # its val/ part beside them: trained as 4 classes
        _png(tmp_path / "val" / sub / "0.png", 40)
    with pytest.raises(DataError, match=r"is a segmentation set \(images/ \+ masks/\).*unet"):
        load_folder(tmp_path, progress=False)
    # The built-in segmentation set by name: 'neither a built-in data set (fashion-mnist,
    # digits)' said cnnzoo had no 'cells', which `cnnzoo train unet --data cells` trains on.
    with pytest.raises(DataError) as err:
        load_dataset("cells")
    assert str(err.value) == ("'cells' is the built-in segmentation set (image/mask pairs), not "
                              "one class per folder: train a U-Net on it (cnnzoo train unet "
                              "--data cells)")
    # Its manifest too: read as path,label it made each mask file a class, and stopped at the
    # first validation row with "has label 'masks\\0.png', which no training row has".
    rows = [f"images\\{i}.png;masks\\{i}.png;{'val' if i == 2 else 'train'}" for i in range(3)]
    (tmp_path / "pairs.csv").write_text("\n".join(["Image;Mask;Split", *rows]) + "\n")
    with pytest.raises(DataError, match=r"pairs.csv lists image/mask pairs for segmentation .*: "
                       r"train a U-Net on it \(cnnzoo train unet --data .*pairs.csv\)"):
        load_dataset(tmp_path / "pairs.csv")



def test_a_segmentation_set_is_named_for_the_u_net_as_the_shell_takes_it(tmp_path):
    """'train a U-Net on it (cnnzoo train unet --data Zellen 2024)' pasted as printed gave
    --data 'Zellen' and a stray argument: the folder (and a manifest) are shell-quoted now."""
    import shlex

    root = tmp_path / "Zellen 2024"
    for sub in ("images", "masks"):
        _png(root / sub / "0.png", 40)
    (root / "pairs list.csv").write_text("image,mask\nimages/0.png,masks/0.png\n")
    for data in (root, root / "pairs list.csv"):
        with pytest.raises(DataError) as err:
            load_dataset(data)
        command = str(err.value).split("(cnnzoo train unet --data ")[1].rstrip(")")
        assert shlex.split(command) == [str(data)]


def test_class_names_with_a_bidi_mark_are_read_and_printed_escaped(tmp_path, capsys):
    """Escaping bidi controls in printed names also made the class-folder check refuse them:
    a Hebrew class with a right-to-left mark ('\u05d0 2\u200f') stopped training with
    'holds a control character: rename the folder', though such names were read before. They
    are read again; `data info` prints the mark escaped, and the label is the real name."""
    names = ["\u05d0 2\u200f", "\u0642\u0637\u0629"]
    for value, cls in enumerate(names):
        for i in range(2):
            _png(tmp_path / "d" / cls / f"{i}.png", 100 * value + i)
    assert main(["data", "info", str(tmp_path / "d"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "\u05d0 2\\u200f" in out and "\u0642\u0637\u0629" in out
    splits = load_folder(tmp_path / "d", val_fraction=0.5, progress=False)
    assert sorted(splits.class_names) == sorted(names)


def test_class_names_with_control_characters_are_refused_and_skip_lines_escaped(tmp_path,
                                                                                caplog, capsys):
    """A class folder named 'e\\x1b[2J...' (a downloaded set's, or a '\\r' from a list written
    on Windows) trained and went into every checkpoint, bundle and report, and printing it
    cleared the screen: it is refused in one line that shows it escaped, as is such a manifest
    label. A file with a newline in its name is no class: its skip line is one line."""
    evil = "e\x1b[2Jvil"
    for cls, value in (("cat", 10), (evil, 200)):
        for i in range(2):
            _png(tmp_path / "d" / cls / f"{i}.png", value)
    assert main(["data", "info", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err == (f"cnnzoo data info: error: class folder 'e\\x1b[2Jvil' in {tmp_path / 'd'} "
                   "holds a control character: rename the folder\n")
    rows = [f"d/cat/{i}.png,cat" for i in range(2)]
    rows += [f'd/{evil}/{i}.png,"dog\rx"' for i in range(2)]  # a trailing '\r' is stripped
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", newline="")
    with pytest.raises(DataError, match=r"^label 'dog\\rx' of .*m\.csv holds a control "):
        load_csv(tmp_path / "m.csv", progress=False)
    from cnnzoo.data.masks import load_mask_pairs

    _png(tmp_path / "s" / "images" / "a.png", 0)
    _png(tmp_path / "s" / "masks" / "a.png", 0)
    (tmp_path / "s" / "classes.txt").write_text(f"background\n{evil}\n")  # a U-Net's classes
    with pytest.raises(DataError, match=r"^class 'e\\x1b\[2Jvil' in .*classes\.txt holds a "):
        load_mask_pairs(tmp_path / "s")
    os.rename(tmp_path / "d" / evil, tmp_path / "d" / "dog")
    (tmp_path / "d" / "dog" / "x\nPrediction: cat.png").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        splits = load_folder(tmp_path / "d", val_fraction=0.5, progress=False)
    assert splits.class_names == ["cat", "dog"] and "\n" in splits.skipped[0]  # kept as it is
    assert [r.getMessage() for r in caplog.records][0] == \
        f"skipped {tmp_path / 'd' / 'dog'}/x\\nPrediction: cat.png: not an image (PIL does " \
        "not recognise the format)"


def test_data_info_counts_a_folder_of_mixed_sizes(tmp_path, capsys):
    """Photos come in many sizes, and `data info` on such a folder (the one `cnnzoo transfer`
    reads without a word) stopped with an error whose advice, --img-size of the largest side,
    took 5 GB and 18 s for 200 small photos with one 2000x200 image among them. It now reads
    them at 224 px (or their largest side, if smaller) and says so in a note."""
    from cnnzoo.cli import main

    for cls, size in (("a", (8, 8)), ("b", (300, 20))):
        for i in range(2):
            _png(tmp_path / "photos" / cls / f"{i}.png", 10 * i, size)
    assert main(["data", "info", str(tmp_path / "photos")]) == 0
    out, err = capsys.readouterr()
    assert "2 classes, images 1x224x224" in out
    assert "cnnzoo data info: note: the images differ in size (up to 300 px): read at 224x224" in err
    for i in range(2):
        _png(tmp_path / "small" / "a" / f"{i}.png", 0, (8, 8))
        _png(tmp_path / "small" / "b" / f"{i}.png", 0, (9, 8))
    assert main(["data", "info", str(tmp_path / "small"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["shape"] == [1, 9, 9]  # not raised to 224
    assert "read at 9x9 here, their largest side" in err
    # From Python (no size given), the error's advice is that size too, not the 300 px side.
    with pytest.raises(DataError, match=r"\(size=224, or --img-size 224\)$"):
        load_folder(tmp_path / "photos", progress=False)
    assert main(["data", "info", str(tmp_path / "small"), "--img-size", "16"]) == 0
    out, err = capsys.readouterr()
    assert "images 1x16x16" in out and "note" not in err  # a size given: no note


@pytest.mark.parametrize("parts", [("train", "test"), ("train", "val", "test")])
def test_data_info_counts_a_test_part_of_another_size(tmp_path, capsys, parts):
    """A camera swapped for the test shots: train/ (and val/) of 8x8 images, test/ of 12x12.
    `cnnzoo train` reads such a folder (it resizes every part), but `data info`, which counts
    the test part too, stopped with 'the train and test images have different sizes': its
    mixed-sizes note looked at the training and validation images only. It now reads every
    part it counts at one size, as it does for photos of several sizes."""
    from cnnzoo.cli import main

    for part in parts:
        for cls in ("a", "b"):
            _png(tmp_path / "d" / part / cls / "0.png", 0, (12, 12) if part == "test" else (8, 8))
    assert main(["data", "info", str(tmp_path / "d"), "--json"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["shape"] == [1, 12, 12]  # the largest side of all three parts, below 224
    assert sum(sum(v) for v in doc["counts"].values()) == 2 * len(parts)
    assert "the images differ in size (up to 12 px): read at 12x12 here, their largest side" in err


def test_a_manifest_of_test_rows_only_says_so(tmp_path):
    """A sheet whose rows were all marked test (the held-out images, listed apart) was '0 class
    among its training rows: a classifier needs two or more labels' in train, of a sheet with
    two labels: it now says that no row trains, and what to do. An evaluation's load (min
    classes 1) reads its rows as marked (test_heldout scores one)."""
    for n, v in (("a", 10), ("b", 200)):
        _png(tmp_path / f"{n}.png", v)
    manifest = tmp_path / "held.csv"
    manifest.write_text("path,label,split\na.png,hose,test\nb.png,tasche,TEST\n")
    with pytest.raises(DataError) as info:
        builtin.load_dataset(str(manifest), ImageSpec(), progress=False)  # training's load
    assert str(info.value) == (f"every row of {manifest} is marked test, and none is a "
                               "training row: mark the images to train on train (or leave "
                               "their split cell empty)")
    # An evaluation's load (a held-out set to score on) takes its rows as its test part.
    s = builtin.load_dataset(str(manifest), ImageSpec(), min_classes=1, progress=False)
    assert (s.class_names, len(s.train), len(s.val), s.test.labels.tolist()) == (
        ["hose", "tasche"], 0, 0, [0, 1])
    # As advised: without the split, every row is read (and two labels train).
    manifest.write_text("path,label\na.png,hose\nb.png,tasche\n")
    s = builtin.load_dataset(str(manifest), ImageSpec(), min_classes=1, val_fraction=0.5,
                             progress=False)  # fmt: skip
    assert s.class_names == ["hose", "tasche"] and len(s.train) + len(s.val) == 2
