"""`cnnzoo compare`: the table of training runs and what differed between them."""

from __future__ import annotations

import json

import pytest
import torch

from cnnzoo.cli import main
from cnnzoo.engine.checkpoint import atomic_save
from cnnzoo.engine.compare import differences, summarize_runs
from cnnzoo.errors import UsageError

TRAIN = ["--data", "digits", "--epochs", "2", "--batch-size", "64", "--precision", "fp32",
         "--channels-last", "off", "--no-progress", "--no-tensorboard"]  # fmt: skip


def _fake_run(folder, *, model="resnet20", kwargs=None, size=28, task="classification",
              history=None, machine=None, **settings):  # fmt: skip
    """A run folder whose last.pt holds what `cnnzoo train` records (no weights needed)."""
    meta = {"model": model, "model_kwargs": kwargs or {}, "num_classes": 10, "in_chans": 1,
            "img_size": size, "dataset": "fashion-mnist", "val_fraction": 0.2, "seed": 0,
            "images": {"train": 48000, "val": 12000}, "augment": "flip-crop",
            "batch_size": 128, "label_smoothing": 0.1}  # fmt: skip
    config = {"epochs": 2, "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4,
              "schedule": "onecycle", "mixup": 0.0, "cutmix": 0.0, "freeze_bn": False, "seed": 0}
    for key, value in settings.items():
        (config if key in config else meta)[key] = value
    history = history or [
        {"epoch": 1, "train_loss": 1.5, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.7,
         "seconds": 10.0, "images_per_s": 100.0},
        {"epoch": 2, "train_loss": 0.9, "train_acc": 0.8, "val_loss": 0.8, "val_acc": 0.65,
         "seconds": 12.5, "images_per_s": 300.0},
    ]  # fmt: skip
    folder.mkdir(parents=True)
    atomic_save({"format": "cnnzoo-checkpoint-1", "model": {}, "task": task, "meta": meta,
                 "config": config, "history": history, "epoch": len(history),
                 **({"machine": machine} if machine else {})}, folder / "last.pt")  # fmt: skip
    return folder


def test_the_table_reads_each_run_and_counts_its_net(tmp_path):
    """Parameters and multiply-adds are counted for the run's net (options, classes, channels,
    input), the time is the sum of the epochs, best is the best epoch's validation accuracy."""
    a = _fake_run(tmp_path / "a")
    b = _fake_run(tmp_path / "b", kwargs={"shortcut": "none"})
    runs = summarize_runs([a, b])
    # ResNet-20 is 269,722 parameters for 3 channels and 10 classes (the paper's 0.27 M); one
    # input channel has 2 x 16 x 3 x 3 = 288 fewer; option-A shortcuts have no parameters, so
    # the plain net has as many.
    assert [r.params for r in runs] == [269_722 - 288, 269_722 - 288]
    # 40.8 M multiply-adds at 32 px and 3 channels; at 28 px about (28/32)^2 of that.
    assert runs[0].macs == pytest.approx(40.8e6 * (28 / 32) ** 2, rel=0.03)
    assert runs[0].train_seconds == 22.5 and runs[0].images_per_s == 200.0
    assert (runs[0].final, runs[0].best, runs[0].best_epoch) == (0.65, 0.7, 1)
    assert [r.label for r in runs] == ["a", "b"] and runs[1].name == "resnet20 shortcut=none"
    assert differences(runs) == []


def test_runs_of_one_project_before_and_after_it_moved_read_the_same_data(tmp_path):
    """Run a trained before the project folder moved records the old absolute path; run b,
    trained after, the new one. Both find the data beside them (`paths.run_data`), so the
    data are not named as a difference (they were, the two paths side by side)."""
    (tmp_path / "project" / "data").mkdir(parents=True)
    moved = {"dataset_from_run": "../../data", "val_files": "0123456789abcdef"}
    a = _fake_run(tmp_path / "project" / "runs" / "a", dataset=str(tmp_path / "old" / "data"),
                  **moved)  # fmt: skip
    b = _fake_run(tmp_path / "project" / "runs" / "b", dataset=str(tmp_path / "project" / "data"),
                  **moved)  # fmt: skip
    assert differences(summarize_runs([a, b])) == []
    c = _fake_run(tmp_path / "c", dataset=str(tmp_path / "old" / "data"), **moved)  # nothing there
    assert differences(summarize_runs([a, c]))[0].startswith(
        f"data: {tmp_path / 'project' / 'data'} (48000 training, 12000 validation) (a), "
        f"{tmp_path / 'old' / 'data'} ")  # fmt: skip


def test_differences_besides_the_model_are_named(tmp_path):
    a = _fake_run(tmp_path / "a", model="lenet5", size=32)
    b = _fake_run(tmp_path / "b", augment="none", lr=0.05)
    c = _fake_run(tmp_path / "c", seed=1, val_fraction=0.1)
    got = differences(summarize_runs([a, b, c]))
    assert got == [
        "validation images: not the same (a, b; c)",
        "input: 1x32 (a), 1x28 (b, c)",
        "augmentation: flip-crop (a, c), none (b)",
        "learning rate: 0.1 (a, c), 0.05 (b)",
        "seed: 0 (a, b), 1 (c)",
    ]
    d = _fake_run(tmp_path / "d", dataset="digits", images={"train": 1438, "val": 359})
    got = differences(summarize_runs([a, d]))
    # Other data have other validation images: the data line says it, once.
    assert got[0] == ("data: fashion-mnist (48000 training, 12000 validation) (a), "
                      "digits (1438 training, 359 validation) (d)")
    assert not any(line.startswith("validation images") for line in got)


def test_the_cpu_and_threads_the_times_were_measured_with_are_named(tmp_path):
    """Two runs of one recipe, one trained on 1 thread and one on 2, read as one net being
    twice as fast as the other unless the table says where their seconds came from."""
    epyc = "AMD EPYC 9R14"
    a = _fake_run(tmp_path / "a", machine={"cpu": epyc, "threads": 1, "processes": 1})
    b = _fake_run(tmp_path / "b", machine={"cpu": epyc, "threads": 2, "processes": 1})
    c = _fake_run(tmp_path / "c", machine={"cpu": "Intel Xeon", "threads": 1, "processes": 2})
    old = _fake_run(tmp_path / "old")  # before runs recorded it
    assert differences(summarize_runs([a, b, c, old])) == [
        f"CPU (train s, img/s): {epyc} (a, b), Intel Xeon (c), not recorded (old)",
        "threads (train s, img/s): 1 (a), 2 (b), 2 processes x 1 thread (c), not recorded (old)",
    ]
    same = _fake_run(tmp_path / "same", machine={"cpu": epyc, "threads": 1, "processes": 1})
    assert differences(summarize_runs([a, same])) == []


def test_compare_json_gives_threads_and_processes_as_numbers(tmp_path, capsys):
    """--json gave `threads` as the table's words ("2", "2 processes x 1 thread") where every
    other count is a number: now threads per process and processes, numbers as recorded (null
    for a run that did not record them); the table keeps its words."""
    b = _fake_run(tmp_path / "b", machine={"cpu": "x", "threads": 2, "processes": 1})
    c = _fake_run(tmp_path / "c", machine={"cpu": "x", "threads": 1, "processes": 2})
    old = _fake_run(tmp_path / "old")
    assert main(["compare", str(b), str(c), str(old), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [(r["settings"]["threads"], r["settings"]["processes"]) for r in runs] == [
        (2, 1), (1, 2), (None, None)]
    assert main(["compare", str(b), str(c), str(old)]) == 0
    assert ("  threads (train s, img/s): 2 (b), 2 processes x 1 thread (c), not recorded (old)"
            in capsys.readouterr().out.splitlines())


def test_runs_that_cannot_be_compared_are_one_line(tmp_path):
    a = _fake_run(tmp_path / "a")
    seg = _fake_run(tmp_path / "seg", model="unet", task="segmentation",
                    kwargs={"base_width": 8, "padding": "same"})
    with pytest.raises(UsageError, match="different tasks"):
        summarize_runs([a, seg])
    with pytest.raises(UsageError, match="holds no run"):
        summarize_runs([a, tmp_path])
    with pytest.raises(UsageError, match=f"^{a} and {a / 'last.pt'} name one run"):
        summarize_runs([a, a / "last.pt"])
    atomic_save({"format": "cnnzoo-checkpoint-1", "model": {}, "history": [{"epoch": 1}],
                 "meta": {"model": "resnet18", "transfer": True}}, tmp_path / "ft.pt")
    with pytest.raises(UsageError, match="transfer fine-tuning checkpoint"):
        summarize_runs([tmp_path / "ft.pt"])
    (tmp_path / "tr" / "bundle").mkdir(parents=True)  # a `cnnzoo transfer --out` folder
    (tmp_path / "tr" / "bundle" / "bundle.json").write_text("{}")
    with pytest.raises(UsageError, match=r"tr is a transfer run: its validation metrics are in "
                                         r".*tr/bundle/bundle.json"):
        summarize_runs([tmp_path / "tr"])
    atomic_save({"format": "cnnzoo-checkpoint-1", "model": {}, "history": [{"epoch": 1}],
                 "meta": {"model": "resnet18"}}, tmp_path / "lib.pt")  # the engine as a library
    with pytest.raises(UsageError, match="does not record its model and input"):
        summarize_runs([tmp_path / "lib.pt"])
    # Two runs that share a folder name are told apart by their parents.
    b = _fake_run(tmp_path / "x" / "a")
    assert [r.label for r in summarize_runs([a, b])] == [f"{tmp_path.name}/a", "x/a"]


def test_compare_two_real_runs_from_the_command_line(tmp_path, capsys):
    """Two `cnnzoo train` runs on digits: LeNet-5 with ReLU and max-pooling against the paper's
    tanh and subsampling. The table shows their published sizes (61,706 and 60,850
    parameters) and names the one setting that differs besides the net."""
    out_a, out_b = tmp_path / "relu", tmp_path / "classic"
    assert main(["train", "lenet5", *TRAIN, "--out", str(out_a)]) == 0
    assert main(["train", "lenet5_classic", *TRAIN, "--augment", "none", "--erase", "0.5",
                 "--out", str(out_b)]) == 0  # fmt: skip
    capsys.readouterr()
    png = tmp_path / "curves" / "compare.png"
    assert main(["compare", str(out_a), str(out_b), "--plot", str(png)]) == 0
    text, err = capsys.readouterr()
    # The file written is a note, on stderr as train's "learning curves:" line (it was the
    # last line of the table on stdout).
    assert f"learning curves: {png}" in err and "learning curves" not in text
    assert "61,706" in text and "60,850" in text and png.stat().st_size > 0
    assert "  augmentation: crop (relu), none (classic)" in text
    # Multiply-adds, as `cnnzoo models` names them (the header said MFLOPs).
    assert text.splitlines()[0].split()[3] == "MMACs"
    assert "MMACs: millions of multiply-adds of one image" in text
    # Label smoothing 0.1 (the default) over 10 classes: the smoothed targets' entropy,
    # -(0.91 ln 0.91 + 9 x 0.01 ln 0.01) = 0.500, is the least the training loss can read.
    assert ("train loss: against targets with the run's label smoothing, which it cannot go "
            "below (0.1 over 10 classes: 0.50)") in text
    assert main(["compare", str(out_a), str(out_b / "last.pt"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    ckpt = torch.load(out_a / "last.pt", weights_only=True)
    hist = ckpt["history"]
    # Where its seconds were measured: this process's threads (the tests' own CPU).
    assert ckpt["machine"]["threads"] == torch.get_num_threads()
    assert ckpt["machine"]["processes"] == 1 and ckpt["machine"]["cpu"]
    row = got["runs"][0]
    assert row["best"] == max(h["val_acc"] for h in hist) and row["epochs"] == 2
    assert row["train_seconds"] == pytest.approx(sum(h["seconds"] for h in hist))
    assert got["differences"] == ["augmentation: crop (relu), none (classic)",
                                  "random erasing: 0 (relu), 0.5 (classic)"]  # (not recorded)
    assert main(["compare", str(out_a), "--plot", str(tmp_path / "c.txt")]) == 2
    assert "--plot" in capsys.readouterr().err


def test_the_rest_of_the_recipe_and_unfinished_runs(tmp_path):
    """Settings the first version did not read (momentum, clipping, warm-up) or runs did not
    record (erasing, progressive resizing, growth): a run with them was 'the same recipe'."""
    a = _fake_run(tmp_path / "a", epochs=5, momentum=0.9)
    b = _fake_run(tmp_path / "b", momentum=0.5, grad_clip=1.0, erase=0.5, progressive=[16, 1],
                  init_from="/runs/r20/best.pt")  # fmt: skip
    runs = summarize_runs([a, b])
    assert differences(runs) == [
        "initialised from: scratch (a), /runs/r20/best.pt (b)",
        "epochs: 5 (a), 2 (b)",
        "random erasing: 0 (a), 0.5 (b)",
        "progressive resizing: off (a), 16 px for 1 epoch (b)",
        "momentum: 0.9 (a), 0.5 (b)",
        "gradient clipping: off (a), 1 (b)",
    ]
    assert (runs[0].epochs, runs[0].planned) == (2, 5)  # killed after 2 of 5 epochs


def test_labels_and_entries_that_are_not_runs(tmp_path):
    a = _fake_run(tmp_path / "a")
    atomic_save(torch.load(a / "last.pt", weights_only=True), a / "best.pt")
    # best.pt and last.pt of one run: told apart by the file, not by a full path with '//'.
    assert [r.label for r in summarize_runs([a / "best.pt", a])] == ["a/best.pt", "a"]
    (tmp_path / "failed").mkdir()
    (tmp_path / "train.log").write_text("epoch 1\n")
    said: list[str] = []
    runs = summarize_runs([a, tmp_path / "failed", tmp_path / "train.log"], skip=said.append)
    assert [r.label for r in runs] == ["a"] and len(said) == 2
    assert said[0].startswith(f"skipped {tmp_path / 'failed'}: ") and "holds no run" in said[0]
    with pytest.raises(UsageError, match="none of these is a run"):
        summarize_runs([tmp_path / "failed"], skip=said.append)


def test_compare_json_says_why_when_every_run_was_skipped(tmp_path, capsys):
    """`compare empty log --json` failed with "none of these is a run of `cnnzoo train` (see
    the lines above)": the document a script reads held no reason, which went to stderr
    only. The line holds the first path's reason and how many more were skipped."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "train.log").write_text("epoch 1\n")
    assert main(["compare", str(tmp_path / "empty"), str(tmp_path / "train.log"),
                 "--json"]) == 2
    out, err = capsys.readouterr()
    line = (f"cnnzoo compare: error: none of these is a run of `cnnzoo train`: skipped "
            f"{tmp_path / 'empty'}: {tmp_path / 'empty'} holds no run (no last.pt or best.pt): "
            "give the --out folder of a `cnnzoo train` run (and 1 more, on stderr)")
    assert json.loads(out) == {"error": line, "exit_status": 2}
    assert err.splitlines()[-1] == line and err.count("skipped ") == 3  # 2 lines, and the error


def test_a_run_that_does_not_exist_is_a_usage_error(tmp_path, capsys):
    """`cnnzoo compare runs/a runs/typo` printed 'skipped runs/typo: ...' and the table of a
    alone, exit status 0: a script went on with half a comparison. A path that is not there
    was typed (a glob names what exists), so it stops the command, before any run is read;
    entries of runs/* that hold no run are still left out with a line."""
    a = _fake_run(tmp_path / "a")
    (tmp_path / "failed").mkdir()
    typo, gone = tmp_path / "typo", tmp_path / "gone.pt"
    assert main(["compare", str(a), str(typo), str(tmp_path / "failed"), str(gone)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (f"cnnzoo compare: error: {typo}, {gone}: no such run folder "
                                 "or checkpoint\n")
    assert main(["compare", str(a), str(tmp_path / "failed")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("run ") and err.startswith(f"skipped {tmp_path / 'failed'}: ")


def test_a_best_pt_is_not_called_an_interrupted_run(tmp_path, capsys):
    """A best.pt holds the weights of its run's best epoch (here 2 of 5), not a run cut short:
    the table's N/M note says so, and calls only a last.pt with fewer epochs interrupted."""
    killed = _fake_run(tmp_path / "killed", epochs=5)
    ckpt = torch.load(killed / "last.pt", weights_only=True)
    atomic_save({**ckpt, "optimizer": {"state": {}, "param_groups": []}}, killed / "last.pt")
    finished = _fake_run(tmp_path / "finished", epochs=5)
    ckpt = torch.load(finished / "last.pt", weights_only=True)
    atomic_save(ckpt, finished / "best.pt")  # what the Trainer writes: no optimizer state
    runs = summarize_runs([finished / "best.pt", killed])
    assert [(r.epochs, r.planned, r.weights_only) for r in runs] == [(2, 5, True), (2, 5, False)]
    interrupted = "N/M epochs: N of the M the run was to train (interrupted, or stopped early)"
    assert main(["compare", str(finished / "best.pt")]) == 0
    text = capsys.readouterr().out
    assert "2/5" in text and interrupted not in text
    assert "N/M epochs of a best.pt: the weights and scores of epoch N" in text
    assert main(["compare", str(killed), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["weights_only"] is False
    assert main(["compare", str(killed)]) == 0
    text = capsys.readouterr().out
    assert interrupted in text and "of a best.pt" not in text


def test_a_training_loss_with_auxiliary_heads_is_said_to_be_one(tmp_path, capsys):
    """GoogLeNet's training loss adds 0.3 x each aux head's: the table says so for that run
    (and not for the one built without them), instead of showing a worse fit."""
    aux = _fake_run(tmp_path / "aux", model="googlenet", size=32)
    plain = _fake_run(tmp_path / "plain", model="googlenet", size=32,
                      kwargs={"aux_logits": False})
    r20 = _fake_run(tmp_path / "r20", size=32)
    assert [r.aux_loss for r in summarize_runs([aux, plain, r20])] == [True, False, False]
    assert main(["compare", str(aux), str(plain), str(r20)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "auxiliary" in line]
    assert notes == ["train loss of aux: the main head's plus 0.3 times each auxiliary "
                     "classifier's (GoogLeNet's training loss), higher than the main "
                     "head's loss alone; compare accuracies"]  # fmt: skip


def test_the_label_smoothing_floor_is_the_runs_own(tmp_path, capsys):
    """The footer gave the floor of 0.1 over 10 classes (0.50) whatever the runs were: five
    kinds of parts smoothed by 0.1 cannot go below 0.39, not 0.50, and 100 classes 0.78. It
    now gives each run's, the entropy of its smoothed targets (1 - e + e/K for the true class,
    e/K for each other one)."""
    parts = _fake_run(tmp_path / "parts", num_classes=5)
    many = _fake_run(tmp_path / "many", num_classes=100)
    plain = _fake_run(tmp_path / "plain", label_smoothing=0.0)
    assert main(["compare", str(parts), str(many), str(plain)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "smoothing" in line]
    # -(0.92 ln 0.92 + 4 x 0.02 ln 0.02) = 0.3897; -(0.901 ln 0.901 + 99 x 0.001 ln 0.001) = 0.7778
    assert notes[0] == ("train loss: against targets with the run's label smoothing, which it "
                        "cannot go below (parts: 0.1 over 5 classes, 0.39; many: 0.1 over 100 "
                        "classes, 0.78)")
    assert main(["compare", str(parts), str(plain)]) == 0  # one run smooths: its own words
    notes = [line for line in capsys.readouterr().out.splitlines() if "smoothing" in line]
    assert notes[0] == ("train loss: against targets with the run's label smoothing, which it "
                        "cannot go below (0.1 over 5 classes: 0.39)")


def test_the_plot_says_a_training_loss_has_auxiliary_heads_too(tmp_path, capsys, monkeypatch):
    """The plot's training-loss panel drew GoogLeNet's (main + 0.3 x each aux head's) over
    the others' with no word; it now carries the table's note under the panels, and a plot
    of nets without aux heads none."""
    from cnnzoo.engine import report

    texts = []

    def keep_texts(fig, path, dpi=110):
        texts.append([t.get_text() for t in fig.texts])
        return path

    monkeypatch.setattr(report, "save_figure", keep_texts)
    aux = _fake_run(tmp_path / "aux", model="googlenet", size=32)
    r20 = _fake_run(tmp_path / "r20", size=32)
    assert main(["compare", str(aux), str(r20), "--plot", str(tmp_path / "c.png")]) == 0
    note = next(line for line in capsys.readouterr().out.splitlines() if "auxiliary" in line)
    assert len(texts) == 1 and " ".join(texts[0][0].split("\n")) == note
    assert main(["compare", str(r20), "--plot", str(tmp_path / "d.png")]) == 0
    assert texts[1] == []


def test_runs_of_one_net_are_not_said_to_compare_nets(tmp_path, capsys):
    """Two runs of one net with one recipe repeat one another (the table used to say 'the nets
    are what differs'); runs of one net with other seeds compare the seeds, not nets."""
    a, b = _fake_run(tmp_path / "a"), _fake_run(tmp_path / "b")
    c = _fake_run(tmp_path / "c", seed=1)
    assert main(["compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[-1] == ("same net (resnet20), data, validation images, input and "
                                     "training recipe: the runs repeat one another")
    assert main(["compare", str(a), str(c)]) == 0
    text = capsys.readouterr().out
    assert "these runs of resnet20 differ in:\n" in text and "  seed: 0 (a), 1 (c)" in text
    assert "compares more than the nets" not in text


def test_an_option_the_runs_differ_in_is_named_in_every_row_at_its_default_too(tmp_path, capsys):
    """A student's dropout=0 against VGG's default 0.5 read 'vgg11_bn dropout=0.0' beside a
    bare 'vgg11_bn': the row of the run with dropout did not say it had any. An option that runs
    of one model differ in is named in each row; one they share at its default is not."""
    a = _fake_run(tmp_path / "a")  # ResNet-20's defaults: option-A shortcuts, ReLU
    b = _fake_run(tmp_path / "b", kwargs={"shortcut": "none"})
    c = _fake_run(tmp_path / "c", kwargs={"act": "tanh", "shortcut": "A"})
    assert main(["compare", str(a), str(b), str(c)]) == 0
    rows = [line.split()[1:4] for line in capsys.readouterr().out.splitlines()[1:4]]
    assert rows == [["resnet20", "act=relu", "shortcut=A"], ["resnet20", "act=relu", "shortcut=none"],
                    ["resnet20", "act=tanh", "shortcut=A"]]  # fmt: skip
    assert main(["compare", str(a), str(b)]) == 0  # act=relu in both: not named
    rows = [line.split()[1:4] for line in capsys.readouterr().out.splitlines()[1:3]]
    assert rows == [["resnet20", "shortcut=A", "269,434"], ["resnet20", "shortcut=none", "269,434"]]
    assert summarize_runs([a])[0].name == "resnet20"  # alone, a net is named by what it changes


def test_an_option_given_as_1_or_0_is_the_same_net_as_given_as_a_bool_or_float(tmp_path, capsys):
    """`--model-arg paper_5x5=1` builds what paper_5x5=true builds (1 == True), and
    dropout=0 what dropout=0.0 builds; the table named them 'paper_5x5=1' and 'paper_5x5=True'
    and said 'the nets are what differs' of two runs of one net (equal training losses)."""
    gn1 = _fake_run(tmp_path / "gn1", model="googlenet", size=32, kwargs={"paper_5x5": 1})
    gnt = _fake_run(tmp_path / "gnt", model="googlenet", size=32, kwargs={"paper_5x5": True})
    assert main(["compare", str(gn1), str(gnt)]) == 0
    text = capsys.readouterr().out
    assert [line.split()[1:3] for line in text.splitlines()[1:3]] == [
        ["googlenet", "paper_5x5=True"]] * 2
    assert text.splitlines()[-1] == ("same net (googlenet paper_5x5=True), data, validation "
                                     "images, input and training recipe: the runs repeat one "
                                     "another")  # fmt: skip
    assert main(["compare", str(gn1), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["runs"]
    assert row["model_kwargs"] == {"paper_5x5": True}
    # A run records the options as the net takes them: a tiny VGG trained with dropout=0.
    out = tmp_path / "vgg"
    assert main(["train", "vgg11_bn", *TRAIN, "--epochs", "1", "--out", str(out),
                 *(a for kv in ("stages=1", "width_mult=0.125", "fc_dim=8", "pool_size=1",
                                "dropout=0") for a in ("--model-arg", kv))]) == 0  # fmt: skip
    dropout = torch.load(out / "last.pt", weights_only=True)["meta"]["model_kwargs"]["dropout"]
    assert type(dropout) is float and dropout == 0.0


def test_what_had_no_effect_is_not_a_difference_and_what_did_is(tmp_path):
    # AdamW has no momentum, one-cycle its own warm-up: such settings changed nothing.
    a = _fake_run(tmp_path / "a", optimizer="adamw", momentum=0.9, warmup_epochs=0.0)
    b = _fake_run(tmp_path / "b", optimizer="adamw", momentum=0.5, warmup_epochs=1.0)
    assert differences(summarize_runs([a, b])) == []
    # Two runs on one folder that validated on other images stay named when a third run's data
    # differ (the data line hid them).
    c = _fake_run(tmp_path / "c", val_files="digest-1")
    d = _fake_run(tmp_path / "d", val_files="digest-2")
    e = _fake_run(tmp_path / "e", dataset="digits")
    got = differences(summarize_runs([c, d, e]))
    assert got[0].startswith("data: fashion-mnist") and got[1] == \
        "validation images: not the same (c; d; e)"
    # The precision a run used (auto picks it per model) is recorded at the top level.
    ckpt = torch.load(c / "last.pt", weights_only=True)
    ckpt["precision"] = {"dtype": "bf16", "channels_last": True}
    atomic_save(ckpt, c / "last.pt")
    assert "precision: bf16 (c), - (d)" in differences(summarize_runs([c, d]))
    # The model column leaves out options at their defaults (act=relu is resnet20 itself).
    f = _fake_run(tmp_path / "f", kwargs={"act": "relu", "shortcut": "none"})
    assert summarize_runs([f])[0].name == "resnet20 shortcut=none"
    # A hand-made file is skipped with a line, not a traceback: its meta of the wrong kind
    # (load_checkpoint says), or a history that is not one.
    atomic_save({"model": {}, "meta": 5, "history": [{"epoch": 1}]}, tmp_path / "odd.pt")
    atomic_save({"model": {}, "meta": {}, "history": 5}, tmp_path / "odd2.pt")
    said: list[str] = []
    assert len(summarize_runs([f, tmp_path / "odd.pt", tmp_path / "odd2.pt"],
                              skip=said.append)) == 1  # fmt: skip
    assert "its meta must be a dict, not 5: the checkpoint is damaged" in said[0]
    assert "is not laid out as `cnnzoo train` writes checkpoints" in said[1]


def test_the_validation_score_is_of_the_weights_the_run_ended_with(tmp_path):
    """Early stopping restores the epoch of the best validation loss: a finished run's score is
    that epoch's, not the last one's; an unfinished run still holds its last epoch's weights."""
    history = [
        {"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "val_loss": loss, "val_acc": acc,
         "seconds": 1.0, "images_per_s": 100.0}
        for e, loss, acc in [(1, 1.0, 0.6), (2, 0.7, 0.75), (3, 0.9, 0.8), (4, 0.95, 0.7)]
    ]  # fmt: skip

    def run(name, *, patience=2, restore=None, bad=2, epochs=10):
        folder = _fake_run(tmp_path / name, history=history)
        ckpt = torch.load(folder / "last.pt", weights_only=True)
        ckpt["config"].update(patience=patience, restore_best=restore, epochs=epochs)
        ckpt.update(best=0.7, best_epoch=2, bad_epochs=bad)
        atomic_save(ckpt, folder / "last.pt")
        return folder

    got = {r.label: (r.final, r.final_epoch, r.best, r.best_epoch) for r in summarize_runs(
        [run("stopped"), run("all_epochs", bad=1, epochs=4), run("killed", bad=1),
         run("no_restore", restore=False), run("no_patience", patience=None),
         run("restore_alone", patience=None, restore=True, epochs=4)])}
    assert got == {"stopped": (0.75, 2, 0.8, 3), "all_epochs": (0.75, 2, 0.8, 3),
                   "killed": (0.7, 4, 0.8, 3), "no_restore": (0.7, 4, 0.8, 3),
                   "no_patience": (0.7, 4, 0.8, 3),
                   "restore_alone": (0.75, 2, 0.8, 3)}  # fmt: skip


def test_patience_and_restoring_the_best_weights_are_differences(tmp_path, capsys):
    """Runs apart only in --patience (or restore_best) were said to 'repeat one another',
    though they ended with other epochs' weights: 0.75 (epoch 2, restored) against 0.7."""
    history = [
        {"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "val_loss": loss, "val_acc": acc,
         "seconds": 1.0, "images_per_s": 100.0}
        for e, loss, acc in [(1, 1.0, 0.6), (2, 0.7, 0.75), (3, 0.9, 0.8), (4, 0.95, 0.7)]
    ]  # fmt: skip

    def run(name, *, patience, restore=None):
        folder = _fake_run(tmp_path / name, history=history)
        ckpt = torch.load(folder / "last.pt", weights_only=True)
        ckpt["config"].update(patience=patience, restore_best=restore, epochs=4)
        ckpt.update(best=0.7, best_epoch=2, bad_epochs=2)
        atomic_save(ckpt, folder / "last.pt")
        return folder

    stopped, off, kept_last = run("p2", patience=2), run("off", patience=None), \
        run("kept_last", patience=2, restore=False)  # fmt: skip
    runs = summarize_runs([stopped, off])
    assert [r.final for r in runs] == [0.75, 0.7]
    assert differences(runs) == ["early stopping patience: 2 (p2), off (off)",
                                 "best epoch's weights restored: True (p2), False (off)"]
    assert differences(summarize_runs([stopped, kept_last])) == [
        "best epoch's weights restored: True (p2), False (kept_last)"]
    # restore_best=True given where patience turns it on anyway: the same run.
    assert differences(summarize_runs([stopped, run("said", patience=2, restore=True)])) == []
    assert main(["compare", str(stopped), str(off)]) == 0
    out = capsys.readouterr().out
    assert "repeat one another" not in out and "early stopping patience: 2 (p2), off (off)" in out


def test_an_early_stopped_run_compares_with_the_score_train_reported(tmp_path, capsys):
    out = tmp_path / "stopped"
    assert main(["train", "lenet5", *TRAIN, "--epochs", "12", "--patience", "1", "--out",
                 str(out)]) == 0  # fmt: skip
    said = capsys.readouterr().out
    final_acc = float(said.split("final validation loss ")[1].split("acc ")[1].split(",")[0])
    assert main(["compare", str(out), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["runs"][0]
    assert round(row["final"], 4) == final_acc
    assert main(["compare", str(out)]) == 0
    # The table marks a score that is not the last epoch's.
    marked = "val acc (E): of epoch E's weights, the best epoch's, which the run restored at " \
             "the end" in capsys.readouterr().out
    assert marked == (row["final_epoch"] != row["epochs"])


def test_runs_validated_on_a_given_part_are_not_named_for_their_seeds(tmp_path):
    """Two seeds of GoogLeNet on a folder with a val/ part read 'validation images: not the
    same': the seed and --val-fraction choose the validation images only where they are drawn
    from the training images (`Splits.val_drawn`, recorded since), not from a val/ part or
    Fashion-MNIST's test set. digits draws them."""
    from cnnzoo.data.builtin import load_dataset

    a = _fake_run(tmp_path / "a", val_drawn=False)
    b = _fake_run(tmp_path / "b", val_drawn=False, seed=1, val_fraction=0.1)
    assert differences(summarize_runs([a, b])) == ["seed: 0 (a), 1 (b)"]
    c = _fake_run(tmp_path / "c", dataset="digits", val_drawn=True)
    d = _fake_run(tmp_path / "d", dataset="digits", val_drawn=True, val_fraction=0.1)
    assert differences(summarize_runs([c, d])) == ["validation images: not the same (c; d)"]
    assert load_dataset("digits").val_drawn


def test_compare_json_lists_the_paths_it_left_out(tmp_path, capsys):
    """`compare runs/* --json` left out a U-Net among classifiers and an empty folder with a
    line each on stderr, and its JSON held only the runs read: a script saw one run of three
    and no word of why. `skipped_runs` holds those lines."""
    a = _fake_run(tmp_path / "a")
    seg = _fake_run(tmp_path / "seg", model="unet", task="segmentation",
                    kwargs={"base_width": 8, "padding": "same"})
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(a), str(seg), str(tmp_path / "empty"), "--json"]) == 0
    out, err = capsys.readouterr()
    got = json.loads(out)
    assert [r["label"] for r in got["runs"]] == ["a"]
    assert got["skipped_runs"] == err.splitlines() == [
        f"skipped {tmp_path / 'empty'}: {tmp_path / 'empty'} holds no run (no last.pt or "
        "best.pt): give the --out folder of a `cnnzoo train` run",
        "skipped seg: a segmentation run among classification runs"]
