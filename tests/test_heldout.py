"""--val-fraction on a folder with train/ and test/ but no val/ (or a manifest with test rows
and no val rows): validation is drawn from train/, test/ stays held out, and the run's
evaluate, resume and compare read it so. Counts are hand-counted on real Fashion-MNIST files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnzoo.cli import main
from cnnzoo.data.export import ExportOptions, export_dataset
from cnnzoo.data.folder import load_csv

CLASSES = ["ankle_boot", "sandal", "sneaker"]


@pytest.fixture(scope="module")
def shoes(tmp_path_factory) -> Path:
    """7 training and 4 test images per class: --val-fraction 0.3 draws round(7 * 0.3) = 2 of
    each class's 7 to validate, leaving 5 to train on, and the 4 test images apart."""
    root = tmp_path_factory.mktemp("heldout") / "shoes"
    for split, n in (("train", 7), ("test", 4)):
        export_dataset("fashion-mnist", root / split,
                       ExportOptions(classes=CLASSES, per_class=n, split=split))
    return root


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_data_info_holds_test_out_with_a_fraction(shoes, capsys):
    assert main(["data", "info", str(shoes), "--json", "--no-progress"]) == 0
    assert _json(capsys)["counts"] == {"train": [7, 7, 7], "val": [4, 4, 4]}  # test/ validates
    assert main(["data", "info", str(shoes), "--val-fraction", "0.3", "--json",
                 "--no-progress"]) == 0
    assert _json(capsys)["counts"] == {"train": [5, 5, 5], "val": [2, 2, 2], "test": [4, 4, 4]}


def test_manifest_with_test_rows_holds_them_out(shoes, tmp_path):
    rows = ["path,label,split"] + [
        f"{p},{p.parent.name},{p.parent.parent.name}" for p in sorted(shoes.rglob("*.png"))]
    manifest = tmp_path / "shoes.csv"
    manifest.write_text("\n".join(rows) + "\n")
    s = load_csv(manifest, val_fraction=0.3, progress=False, hold_out_test=True)
    assert (s.train.class_counts(), s.val.class_counts(), s.test.class_counts(),
            s.val_drawn) == ([5, 5, 5], [2, 2, 2], [4, 4, 4], True)
    assert all("/test/" in p for p in s.test.paths)
    assert not any("/test/" in p for p in s.val.paths)
    s = load_csv(manifest, val_fraction=0.3, progress=False)  # the default: test rows validate
    assert (s.val.class_counts(), s.test, s.val_drawn) == ([4, 4, 4], None, False)


def _meta(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True, mmap=True)["meta"]


COMMON = ["--epochs", "1", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def held(shoes, tmp_path_factory) -> Path:
    """A lenet5 run on `shoes` with --val-fraction 0.3 given."""
    out = tmp_path_factory.mktemp("runs") / "held"
    assert main(["train", "lenet5", "--data", str(shoes), "--out", str(out),
                 "--val-fraction", "0.3", *COMMON]) == 0
    return out


def test_train_evaluate_resume_compare_keep_test_held_out(shoes, held, tmp_path, capsys):
    meta = _meta(held)
    assert (meta["hold_out_test"], meta["val_drawn"], meta["images"]) == (
        True, True, {"train": 15, "val": 6, "test": 12})
    # evaluate: by default the 6 drawn validation images, --split test the 12 held out.
    capsys.readouterr()
    for split, n in ((None, 6), ("test", 12)):
        assert main(["evaluate", str(held / "best.pt"), "--json", "--no-progress",
                     *(["--split", split] if split else [])]) == 0
        assert _json(capsys)["images"] == n
    # A bare --resume draws the same split (the run's fraction and choice, not test/ again).
    assert main(["train", "lenet5", "--data", str(shoes), "--out", str(held), "--resume",
                 "--epochs", "2", "--no-progress"]) == 0
    resumed = _meta(held)
    assert (resumed["hold_out_test"], resumed["images"], resumed["val_files"]) == (
        True, meta["images"], meta["val_files"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "resuming with" in line]
    assert warnings == ["warning: resuming with different epochs (was 1, now 2) than the "
                        "checkpoint; the result will differ from an uninterrupted run"]
    # Without --val-fraction test/ validates, as before, and compare tells the runs apart.
    old = tmp_path / "old"
    assert main(["train", "lenet5", "--data", str(shoes), "--out", str(old), *COMMON]) == 0
    assert (_meta(old)["hold_out_test"], _meta(old)["images"]) == (False, {"train": 21, "val": 12})
    capsys.readouterr()
    assert main(["compare", str(old), str(held)]) == 0
    out = capsys.readouterr().out
    assert "(21 training, 12 validation) (old)" in out
    assert "(15 training, 6 validation, 12 test held out) (held)" in out


def test_transfer_keeps_test_held_out_through_resume_and_evaluate(shoes, held, tmp_path, capsys):
    out = tmp_path / "transfer"
    run = ["transfer", str(shoes), "--model", "lenet5", "--weights", str(held / "best.pt"),
           "--mode", "finetune", "--out", str(out), "--head-epochs", "1", "--min-steps", "1",
           "--no-progress"]
    assert main([*run, "--val-fraction", "0.3", "--epochs", "1"]) == 0
    assert ("data: 15 training and 6 validation images (12 test images held out)"
            in capsys.readouterr().err)
    bundle = json.loads((out / "bundle" / "bundle.json").read_text())
    assert (bundle["data"]["hold_out_test"], bundle["data"]["val_fraction"]) == (True, 0.3)
    for split, n in ((None, 6), ("test", 12)):
        assert main(["evaluate", "--bundle", str(out / "bundle"), "--json", "--no-progress",
                     *(["--split", split] if split else [])]) == 0
        assert _json(capsys)["images"] == n
    # A bare --resume draws the run's split again (it validated on test/ before: 12 images).
    assert main([*run, "--epochs", "2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "data: 15 training and 6 validation images (12 test images held out)" in err
    assert "validation images (the data splits otherwise now)" not in err


def test_evaluate_does_not_advise_an_option_it_has_not(shoes, tmp_path, capsys, caplog):
    """A run that validated on test/ (no --val-fraction) is told so when it trains, with the
    --val-fraction that keeps test/ apart. `evaluate` of it, reading its data again, said the
    same note each time, advising an option evaluate does not have (nor could use: the run
    split its data so), also with --split all, where no part validates."""
    run = tmp_path / "old"
    assert main(["train", "lenet5", "--data", str(shoes), "--out", str(run), *COMMON]) == 0
    assert "--val-fraction 0.2 draws the validation images" in caplog.text
    for split, n in ((None, 12), ("all", 33)):
        caplog.clear()
        assert main(["evaluate", str(run / "best.pt"), "--no-progress",
                     *(["--split", split] if split else [])]) == 0
        out, err = capsys.readouterr()
        assert "--val-fraction" not in caplog.text + err, caplog.text
        assert f": {n} images, accuracy" in out


def test_evaluate_scores_a_held_out_sheet_of_test_rows(shoes, held, tmp_path, capsys):
    """Held-out images listed apart in a CSV, every row marked test, were refused by `evaluate
    --data` even with --split test ('none is a training row: leave the split cells empty to
    score every row'): the sheet now scores as the folder of the same images does, whole or as
    its test part; its validation part, which it has not, is one line."""
    sheet = tmp_path / "held_out.csv"
    rows = [f"{p},{p.parent.name},test" for p in sorted((shoes / "test").rglob("*.png"))]
    sheet.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    capsys.readouterr()
    assert main(["evaluate", str(held / "best.pt"), "--data", str(shoes / "test"), "--json",
                 "--no-progress"]) == 0  # fmt: skip
    folder = _json(capsys)
    assert folder["images"] == 12
    for split in ([], ["--split", "test"], ["--split", "all"]):
        assert main(["evaluate", str(held / "best.pt"), "--data", str(sheet), "--json",
                     "--no-progress", *split]) == 0  # fmt: skip
        scored = _json(capsys)
        assert {k: scored[k] for k in ("images", "acc", "confusion")} == {
            k: folder[k] for k in ("images", "acc", "confusion")}, split
        assert scored["loss"] == pytest.approx(folder["loss"], rel=1e-6)
    assert main(["evaluate", str(held / "best.pt"), "--data", str(sheet), "--split", "val",
                 "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"cnnzoo evaluate: error: {sheet} has no validation rows (none is marked val, and "
        "none trains to draw them from): use --split test or --split all")


def test_a_resume_warns_only_of_the_split_settings_that_split_the_data(shoes, tmp_path, capsys):
    """A run given val/ was resumed with 'warning: resuming with different val_fraction (was
    0.2, now 0.4), hold_out_test (was False, now True)': neither chose any image. The
    fraction is named only when it drew both sessions' validation images, hold_out_test only
    where it moved test/ out of validation."""
    import shutil

    given_val = tmp_path / "given_val"  # train/ + val/: nothing is drawn
    shutil.copytree(shoes / "train", given_val / "train")
    shutil.copytree(shoes / "test", given_val / "val")
    train_only = tmp_path / "train_only"  # drawn from train/ either way
    shutil.copytree(shoes / "train", train_only)
    warned = {}
    for name, data in (("given_val", given_val), ("train_and_test", shoes),
                       ("train_only", train_only)):
        out = tmp_path / "runs" / name
        fast = ["--precision", "fp32", "--no-tensorboard"]  # (no timing trial, no event files)
        assert main(["train", "lenet5", "--data", str(data), "--out", str(out), *COMMON,
                     *fast]) == 0
        capsys.readouterr()
        assert main(["train", "lenet5", "--data", str(data), "--out", str(out), "--resume",
                     "--epochs", "2", "--val-fraction", "0.4", "--no-progress", *fast]) == 0
        warned[name] = [line for line in capsys.readouterr().err.splitlines()
                        if line.startswith("warning: resuming with")]
    assert warned["given_val"] == ["warning: resuming with different epochs (was 1, now 2) than "
                                   "the checkpoint; the result will differ from an "
                                   "uninterrupted run"]
    # train/ + test/: test/ validated the first session, a drawn 40 % of train/ the second
    (line,) = warned["train_and_test"]
    assert "hold_out_test (was False, now True)" in line and "val_fraction" not in line
    (line,) = warned["train_only"]
    assert "val_fraction (was 0.2, now 0.4)" in line and "hold_out_test" not in line
