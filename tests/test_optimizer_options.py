"""`cnnzoo train`'s optimizer options: which apply to which optimizer, and the default
learning rate on a small folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cnnzoo.cli import main
from cnnzoo.engine.checkpoint import load_checkpoint


def _two_class_folder(root: Path, n: int = 40) -> Path:
    for cls, value in (("dark", 20), ("light", 220)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (32, 32), value + i).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("cmd", [
    ["lenet5", "--optimizer", "adamw", "--momentum", "0.5"],
    ["lenet5", "--optimizer", "adamw", "--momentum", "0.9"],
    ["lenet5", "--optimizer", "adamw", "--no-nesterov"],
    ["unet", "--momentum", "0.5"],  # a U-Net's default is adamw
])
def test_sgd_options_are_refused_with_adamw(cmd, tmp_path, capsys):
    # AdamW has no momentum: `--optimizer adamw --momentum 0.5` was the default AdamW run,
    # without a word.
    data = "cells" if cmd[0] == "unet" else str(_two_class_folder(tmp_path / "data", 8))
    out = tmp_path / "run"
    rc = main(["train", *cmd, "--data", data, "--epochs", "1", "--out", str(out),
               "--no-progress", "--no-tensorboard"])
    err = capsys.readouterr().err.strip().splitlines()
    flag = "--no-nesterov" if "--no-nesterov" in cmd else "--momentum"
    default = "" if "--optimizer" in cmd else " (unet's default)"
    assert rc == 2 and err == [f"cnnzoo train: error: {flag} is for --optimizer sgd; "
                               f"adamw{default} has no momentum to set (its betas are 0.9, "
                               "0.999): leave it out, or add --optimizer sgd"]
    assert not out.exists()  # before any work


def test_sgd_options_given_are_the_optimizers(tmp_path):
    """With SGD (the default) --momentum and --no-nesterov reach the optimizer, and without them
    it is Nesterov's momentum 0.9 (read back from the optimizer state the run saved)."""
    data = _two_class_folder(tmp_path / "data")
    base = ["train", "lenet5", "--data", str(data), "--epochs", "1", "--no-progress",
            "--no-tensorboard", "--precision", "fp32", "--channels-last", "off"]
    for extra, momentum, nesterov in (([], 0.9, True),
                                      (["--momentum", "0.5", "--no-nesterov"], 0.5, False)):
        out = tmp_path / f"run{momentum}"
        assert main([*base, "--out", str(out), *extra]) == 0
        groups = load_checkpoint(out / "last.pt")["optimizer"]["param_groups"]
        assert {(g["momentum"], g["nesterov"]) for g in groups} == {(momentum, nesterov)}


def test_train_json_names_the_optimizer_lr_and_batch_the_run_used(tmp_path, capsys):
    """`train --json` left out the learning rate and batch: on a small folder the defaults
    choose both from the data (SGD's lr scaled by sqrt(batch / 128)), said only on stderr.
    AdamW's default lr is not scaled (measured: docs/training.md)."""
    data = _two_class_folder(tmp_path / "data")  # 80 images: 64 to train, batches of 16
    base = ["train", "lenet5", "--data", str(data), "--epochs", "1", "--no-progress",
            "--no-tensorboard", "--precision", "fp32", "--channels-last", "off", "--json"]
    for i, (extra, optimizer, lr) in enumerate((
            ([], "sgd", 0.1 * (16 / 128) ** 0.5),  # 0.0354
            (["--optimizer", "adamw"], "adamw", 2e-3))):
        assert main([*base, "--out", str(tmp_path / f"run{i}"), *extra]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["optimizer"] == optimizer and printed["batch_size"] == 16
        assert printed["lr"] == pytest.approx(lr, rel=1e-12)
