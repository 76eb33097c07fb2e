"""`cnnzoo train`'s optimizer options: which apply to which optimizer, and the default
learning rate on a small folder."""

from __future__ import annotations

import json

import pytest

from cnnzoo.cli import main
from cnnzoo.engine.checkpoint import load_checkpoint


@pytest.mark.parametrize("cmd", [
    ["lenet5", "--optimizer", "adamw", "--momentum", "0.5"],
    ["lenet5", "--optimizer", "adamw", "--momentum", "0.9"],
    ["lenet5", "--optimizer", "adamw", "--no-nesterov"],
    ["lenet5", "--optimizer", "adamw", "--nesterov"],
    ["unet", "--momentum", "0.5"],  # a U-Net's default is adamw
])
def test_sgd_options_are_refused_with_adamw(two_class_folder, cmd, tmp_path, capsys):
    # AdamW has no momentum: `--optimizer adamw --momentum 0.5` was the default AdamW run,
    # without a word.
    data = "cells" if cmd[0] == "unet" else str(two_class_folder(8))
    out = tmp_path / "run"
    rc = main(["train", *cmd, "--data", data, "--epochs", "1", "--out", str(out),
               "--no-progress", "--no-tensorboard"])
    err = capsys.readouterr().err.strip().splitlines()
    flag = next((f for f in ("--nesterov", "--no-nesterov") if f in cmd), "--momentum")
    default = "" if "--optimizer" in cmd else " (unet's default)"
    assert rc == 2 and err == [f"cnnzoo train: error: {flag} is for --optimizer sgd; "
                               f"adamw{default} has no momentum to set (its betas are 0.9, "
                               "0.999): leave it out, or add --optimizer sgd"]
    assert not out.exists()  # before any work


@pytest.mark.parametrize("cmd", [["lenet5", "--warmup-epochs", "2"],
                                 ["lenet5", "--optimizer", "adamw", "--warmup-epochs", "0.5"],
                                 ["unet", "--warmup-epochs", "1"]])
def test_a_warm_up_is_refused_with_one_cycle(two_class_folder, cmd, tmp_path, capsys):
    # One-cycle (the default schedule) rises on its own and never read --warmup-epochs.
    data = "cells" if cmd[0] == "unet" else str(two_class_folder(8))
    out = tmp_path / "run"
    rc = main(["train", *cmd, "--data", data, "--epochs", "1", "--out", str(out),
               "--no-progress", "--no-tensorboard"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["cnnzoo train: error: --warmup-epochs is for --schedule cosine or "
                               "constant; onecycle (the default) warms up on its own, rising "
                               "over the first quarter of the steps (a U-Net's first 15 %): "
                               "leave it out, or add --schedule cosine"]
    assert not out.exists()


def test_a_resumed_runs_own_optimizer_and_schedule_refuse_what_they_cannot_use(
        two_class_folder, tmp_path, capsys):
    """An AdamW run (one-cycle) resumed with --momentum 0.5 or --warmup-epochs 1 went on as
    before, warning of a momentum or warm-up 'now' changed that AdamW and one-cycle never read:
    the refusals looked at the defaults only, and a resumed run's are its own."""
    out = tmp_path / "run"
    base = ["train", "lenet5", "--data", str(two_class_folder(8)), "--out", str(out),
            "--no-progress", "--no-tensorboard", "--precision", "fp32", "--channels-last", "off"]
    assert main([*base, "--epochs", "1", "--optimizer", "adamw"]) == 0
    capsys.readouterr()
    before = (out / "last.pt").read_bytes()
    for extra, line in (
            (["--momentum", "0.5"], "--momentum is for --optimizer sgd; adamw (the run's "
             "optimizer) has no momentum to set (its betas are 0.9, 0.999): leave it out, or "
             "add --optimizer sgd"),
            (["--warmup-epochs", "1"], "--warmup-epochs is for --schedule cosine or constant; "
             "onecycle (the run's) warms up on its own, rising over the first quarter of the "
             "steps (a U-Net's first 15 %): leave it out, or add --schedule cosine")):
        assert main([*base, "--epochs", "2", "--resume", *extra]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"cnnzoo train: error: {line}"]
        assert (out / "last.pt").read_bytes() == before  # nothing trained


def test_sgd_and_schedule_options_given_are_the_runs(two_class_folder, tmp_path):
    """With SGD (the default) --momentum and --no-nesterov reach the optimizer, and without them
    it is Nesterov's momentum 0.9 (read back from the optimizer state the run saved); the
    cosine schedule takes its --warmup-epochs."""
    data = two_class_folder()  # 64 to train: batches of 16, 4 steps an epoch
    base = ["train", "lenet5", "--data", str(data), "--epochs", "2", "--no-progress",
            "--no-tensorboard", "--precision", "fp32", "--channels-last", "off"]
    peak = 0.1 * (16 / 128) ** 0.5
    for extra, momentum, nesterov in (([], 0.9, True),
                                      (["--momentum", "0.5", "--no-nesterov", "--schedule",
                                        "cosine", "--warmup-epochs", "1"], 0.5, False)):
        out = tmp_path / f"run{momentum}"
        assert main([*base, "--out", str(out), *extra]) == 0
        groups = load_checkpoint(out / "last.pt")["optimizer"]["param_groups"]
        assert {(g["momentum"], g["nesterov"]) for g in groups} == {(momentum, nesterov)}
    # The lr of each epoch's last step: step 3 ends the 4-step warm-up at the peak; step 7 is
    # 3/4 of the way down the cosine's 4 steps, 0.5 (1 + cos(3 pi / 4)) of it.
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([peak, peak * 0.5 * (1 - 0.5 ** 0.5)], rel=1e-9)


def test_train_json_names_the_optimizer_lr_and_batch_the_run_used(two_class_folder, tmp_path,
                                                                   capsys):
    """`train --json` left out the learning rate and batch: on a small folder the defaults
    choose both from the data (SGD's lr scaled by sqrt(batch / 128)), said only on stderr.
    AdamW's default lr is not scaled (measured: docs/training.md)."""
    data = two_class_folder()  # 80 images: 64 to train, batches of 16
    base = ["train", "lenet5", "--data", str(data), "--epochs", "1", "--no-progress",
            "--no-tensorboard", "--precision", "fp32", "--channels-last", "off", "--json"]
    for i, (extra, optimizer, lr, model_args) in enumerate((
            ([], "sgd", 0.1 * (16 / 128) ** 0.5, {}),  # 0.0354
            (["--optimizer", "adamw", "--model-arg", "act=tanh"], "adamw", 2e-3,
             {"act": "tanh"}))):
        assert main([*base, "--out", str(tmp_path / f"run{i}"), *extra]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["optimizer"] == optimizer and printed["batch_size"] == 16
        # Which net it was (googlenet with or without reductions): the JSON said 'googlenet'.
        assert printed["model_args"] == model_args
        assert printed["lr"] == pytest.approx(lr, rel=1e-12)
