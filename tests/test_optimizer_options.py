"""`cnnzoo train`'s optimizer options: which apply to which optimizer, and the default
learning rate on a small folder."""

from __future__ import annotations

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
