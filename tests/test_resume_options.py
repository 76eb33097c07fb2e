"""A bare `cnnzoo train ... --resume` (a batch queue's restart command) continues the run as it
was configured: every option left out is the run's own (`commands/resume_options.py`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cnnzoo.cli import Terminated, main
from cnnzoo.engine import loop
from cnnzoo.engine.checkpoint import load_checkpoint

FAST = ["--no-progress", "--precision", "fp32", "--channels-last", "off"]


def _folder(root: Path, n: int = 40) -> Path:
    """Two classes of n grey 32-px images each, with some texture for the crops to move."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for k, cls in enumerate(("dark", "light")):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            pixels = (torch.rand(32, 32, generator=g) * 60 + 40 + 120 * k).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / cls / f"{i}.png")
    return root


def _killed_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """The scheduler's SIGTERM right after `epoch`'s checkpoint is written (its epoch line)."""
    line = loop._epoch_line

    def killed(record, *args, **kwargs):
        if record["epoch"] == epoch:
            raise Terminated
        return line(record, *args, **kwargs)

    monkeypatch.setattr(loop, "_epoch_line", killed)


def _killed_and_resumed(base: list[str], recipe: list[str], tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[Path, str]:  # fmt: skip
    """`base + recipe` run whole (tmp_path/whole), and killed after epoch 1 (tmp_path/run) then
    restarted with the bare command, `base --resume`, as a queue restarts it; (the killed run's
    folder, the restart's stderr)."""
    assert main([*base, *recipe, "--out", str(tmp_path / "whole")]) == 0
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _killed_after_epoch(m, 1)
        assert main([*base, *recipe, "--out", str(run)]) == 128 + 15
    capsys.readouterr()
    assert main([*base, "--out", str(run), "--resume"]) == 0  # the queue's restart
    return run, capsys.readouterr().err


def _same_run(a: Path, b: Path) -> None:
    """Two runs' last.pt hold the same weights and the same metrics (but the timings)."""
    wa, wb = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "the weights differ"

    def rows(run: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items()
                 if k not in ("seconds", "images_per_s")}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert rows(a) == rows(b)


def test_a_bare_resume_of_a_killed_classifier_run_keeps_every_option(tmp_path, monkeypatch,
                                                                     capsys):
    """A run killed after epoch 1 and restarted with the bare command went on with defaults:
    early stopping off (its --patience 2 dropped, with a warning), and seed, validation
    fraction, schedule, warm-up, momentum, mixing, SAM, label smoothing, erasing,
    augmentation, progressive resizing and --model-arg all back at their defaults (another
    validation split, so images it had trained on were scored; a tanh net refused as another
    model). It now ends bit-identical to the uninterrupted run, with no warning."""
    data = _folder(tmp_path / "data")
    # 80 images at --val-fraction 0.25: 60 to train in batches of 15, 4 steps per epoch; the 2
    # epochs asked for are raised to 3 to make 12 steps, patience 2 -> 3, --progressive
    # 32:1 -> 32:2.
    recipe = ["--epochs", "2", "--min-steps", "12", "--patience", "2", "--seed", "3",
              "--val-fraction", "0.25", "--schedule", "cosine", "--warmup-epochs", "1",
              "--weight-decay", "1e-3", "--momentum", "0.8", "--no-nesterov", "--grad-clip", "1",
              "--mixup", "0.2", "--cutmix", "0.5", "--sam", "0.05", "--label-smoothing", "0.05",
              "--erase", "0.3", "--augment", "crop", "--img-size", "48", "--progressive",
              "32:1", "--model-arg", "act=tanh", "--no-tensorboard"]  # fmt: skip
    base = ["train", "lenet5", "--data", str(data), *FAST]
    run, err = _killed_and_resumed(base, recipe, tmp_path, monkeypatch, capsys)
    assert "warning" not in err and "resuming after epoch 1 of 3" in err, err
    _same_run(tmp_path / "whole", run)
    assert not (run / "tb").exists()  # --no-tensorboard kept too
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["config"]["patience"] == 3
    assert ckpt["meta"]["progressive"] == [32, 2] and ckpt["meta"]["model_kwargs"] == {
        "act": "tanh"}


def test_a_bare_resume_of_a_killed_unet_run_keeps_every_option(tmp_path, monkeypatch, capsys):
    """A U-Net run of 4 synthetic cells, base width 4, Dice loss, elastic 3, dropout 0.1,
    seed 2, killed after epoch 1 and restarted bare, was refused as another net (base_width=16)
    after loading 200 cells; with --base-width it went on with another loss, deformation,
    seed, validation split and 200 images. It now ends as the uninterrupted run."""
    recipe = ["--cells", "4", "--base-width", "4", "--loss", "dice", "--elastic", "3",
              "--crop", "32", "--batch-size", "2", "--seed", "2", "--val-fraction", "0.5",
              "--patience", "3", "--model-arg", "dropout=0.1", "--epochs", "2",
              "--no-tensorboard"]  # fmt: skip
    base = ["train", "unet", "--data", "cells", *FAST]
    run, err = _killed_and_resumed(base, recipe, tmp_path, monkeypatch, capsys)
    assert "warning" not in err and "resuming after epoch 1 of 2" in err, err
    _same_run(tmp_path / "whole", run)
    meta = load_checkpoint(run / "last.pt")["meta"]
    assert meta["images"] == {"train": 2, "val": 2} and meta["loss"] == "dice"
    assert meta["model_kwargs"] == {"padding": "same", "dropout": 0.1, "base_width": 4}


def test_the_warm_up_grows_with_epochs_raised_by_min_steps(tmp_path, monkeypatch, capsys):
    """--patience and --progressive grew when --min-steps raised the epochs, --warmup-epochs
    did not: 1 epoch of the 2 asked for stayed 1 of the 3 run. It is now 1.5 epochs of 4 steps,
    6 steps: the constant schedule's rate after epoch 1's 4th step is 4/6 of the peak (it was
    the peak), and a bare resume raises it the same way."""
    data = _folder(tmp_path / "data")  # 64 to train in batches of 16: 4 steps per epoch
    args = ["train", "lenet5", "--data", str(data), *FAST, "--no-tensorboard", "--out",
            str(tmp_path / "run"), "--epochs", "2", "--min-steps", "12", "--schedule",
            "constant", "--warmup-epochs", "1", "--lr", "0.04"]  # fmt: skip
    with monkeypatch.context() as m:
        _killed_after_epoch(m, 2)
        assert main(args) == 128 + 15
    capsys.readouterr()
    assert main(["train", "lenet5", "--data", str(data), "--out", str(tmp_path / "run"),
                 "--resume", "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err
    lrs = [json.loads(line)["lr"] for line in
           (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.04 * 4 / 6, 0.04, 0.04])
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["config"]["warmup_epochs"] == 1.5 and ckpt["meta"]["asked_warmup_epochs"] == 1


def test_growth_refuses_the_papers_lenet5_into_the_modern_one_and_back():
    """lenet5_classic -> lenet5 fits c1, c5, f6 and the head, and copied the paper's
    scaled-tanh weights into a ReLU net without a word (lenet5 act=tanh -> lenet5 is refused,
    as plain18 -> resnet34 is); refused now both ways, nothing copied. A classic run grows a
    classic net (a new run from its weights) as before."""
    from cnnzoo.engine.grow import grow_from
    from cnnzoo.errors import WeightsError
    from cnnzoo.models import create_model

    torch.manual_seed(0)
    classic, modern = create_model("lenet5_classic"), create_model("lenet5")
    tanh = create_model("lenet5", act="tanh")
    for source, name, target, kwargs in ((classic, "lenet5_classic", modern, {}),
                                         (classic, "lenet5_classic", tanh, {"act": "tanh"}),
                                         (modern, "lenet5", classic, {})):
        before = {k: v.clone() for k, v in target.state_dict().items()}
        with pytest.raises(WeightsError, match=rf"^the source checkpoint is {name}, the "
                                               r".*: its layers would compute other functions"):
            grow_from(target, source.state_dict(), source_meta={"model": name},
                      target_kwargs=kwargs)
        assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    again = create_model("lenet5_classic")
    report = grow_from(again, classic.state_dict(), source_meta={"model": "lenet5_classic"},
                       target_kwargs={})
    assert torch.equal(again.c1.weight, classic.c1.weight) and "c3.weight" in report.copied


def test_train_and_transfer_json_count_the_skipped_files_as_data_info_does(tmp_path, capsys,
                                                                           monkeypatch):
    """A folder with a file that is no image and one cut short: `data info --json` said
    "skipped": 2, while `train --json` and `transfer --json` left the count out, so a script
    could not tell the run lost two images (the warnings scroll by on stderr)."""
    from cnnzoo.models import create_model

    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "cache"))  # transfer's feature cache
    data = _folder(tmp_path / "data", n=20)
    (data / "dark" / "notes.png").write_bytes(b"not a png")
    (data / "light" / "cut.png").write_bytes((data / "light" / "0.png").read_bytes()[:60])
    counts = {}
    assert main(["data", "info", str(data), "--json"]) == 0
    counts["data info"] = json.loads(capsys.readouterr().out)["skipped"]
    assert main(["train", "lenet5", "--data", str(data), "--epochs", "1", "--json", *FAST,
                 "--no-tensorboard", "--out", str(tmp_path / "run")]) == 0
    counts["train"] = json.loads(capsys.readouterr().out)["skipped"]
    torch.save(create_model("resnet20", num_classes=10).state_dict(), tmp_path / "w.pt")
    assert main(["transfer", str(data), "--model", "resnet20", "--weights",
                 str(tmp_path / "w.pt"), "--mode", "features", "--img-size", "32", "--json",
                 "--no-progress", "--out", str(tmp_path / "transfer")]) == 0
    counts["transfer"] = json.loads(capsys.readouterr().out)["skipped"]
    assert counts == {"data info": 2, "train": 2, "transfer": 2}


def test_a_resume_with_no_checkpoint_says_it_starts_with_the_options_given(tmp_path, capsys):
    """A run killed in its first epoch has written nothing; the queue's bare restart then
    started a default run, said only as 'no checkpoint in DIR: starting a new run', which
    read as the killed run going on. The note says whose options it starts with."""
    data = _folder(tmp_path / "data", n=10)
    assert main(["train", "lenet5", "--data", str(data), "--epochs", "1", *FAST,
                 "--no-tensorboard", "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert (f"note: no checkpoint in {tmp_path / 'run'} (a run writes its first when epoch 1 "
            "ends): starting a new run with the options given here") in capsys.readouterr().err


def test_a_bare_resume_of_a_unet_keeps_its_encoder_and_weights_from_another_folder(
        tmp_path, monkeypatch, capsys):
    """A U-Net on a resnet18 encoder started from a weights file given by a relative path
    normalises with the weights' ImageNet mean and std; a bare resume (from another working
    folder, as a queue may run it) was refused as another net (no encoder), and given
    --encoder alone it normalised with the cells' own statistics without a word. It keeps the
    encoder, the file and so the normalisation."""
    from cnnzoo.models import create_model

    (tmp_path / "a").mkdir()
    torch.save(create_model("resnet18").state_dict(), tmp_path / "a" / "enc.pt")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "a")
    argv = ["train", "unet", "--data", "cells", "--cells", "3", "--crop", "32", "--batch-size",
            "2", "--encoder", "resnet18", "--encoder-weights", "enc.pt", "--epochs", "1",
            "--model-arg", "decoder_channels=8,8,8,8,8",
            *FAST, "--no-tensorboard", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    first = load_checkpoint(out / "last.pt")["meta"]
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", "unet", "--data", "cells", "--out", str(out), "--resume", "--epochs",
                 "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "resuming after epoch 1 of 2" in err
    assert "warning: resuming with different epochs (was 1, now 2) than" in err  # that alone
    meta = load_checkpoint(out / "last.pt")["meta"]
    assert meta["mean"] == first["mean"] == [pytest.approx((0.485 + 0.456 + 0.406) / 3)]
    assert meta["encoder_weights"] == str(tmp_path / "a" / "enc.pt")
    assert meta["model_kwargs"]["encoder_name"] == "resnet18"


def test_a_bare_resume_of_a_run_from_before_reads_its_raised_counts_back(tmp_path, monkeypatch,
                                                                        capsys):
    """Runs written before the meta kept the counts asked for recorded --patience 1 and
    --progressive 32:1 of 2 epochs raised to 3 as 2 and 32:2; taken as asked, a bare resume
    raised them again (3, 32:3) and warned. They are read back to 1 and 32:1 (the one count
    that rises to 2 and to 2 of 3), which rise to the same."""
    data = _folder(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["train", "lenet5", "--data", str(data), *FAST, "--no-tensorboard", "--out", str(run),
            "--epochs", "2", "--min-steps", "12", "--patience", "1", "--img-size", "48",
            "--progressive", "32:1"]  # fmt: skip
    with monkeypatch.context() as m:
        _killed_after_epoch(m, 1)
        assert main(argv) == 128 + 15
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert (ckpt["config"]["patience"], ckpt["meta"]["progressive"]) == (2, [32, 2])
    for key in ("asked_patience", "asked_warmup_epochs", "asked_progressive"):
        del ckpt["meta"][key]  # as a run of the version before wrote it
    torch.save(ckpt, run / "last.pt")
    capsys.readouterr()
    assert main(["train", "lenet5", "--data", str(data), "--out", str(run), "--resume",
                 "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["config"]["patience"], ckpt["meta"]["progressive"]) == (2, [32, 2])


def test_a_bare_resume_can_switch_back_what_a_killed_run_turned_off(tmp_path, monkeypatch,
                                                                   capsys):
    """A bare --resume keeps the run's --no-nesterov, --grad-clip 1, --no-tensorboard and --tta,
    and no flag turned them back: --nesterov, --tensorboard and --no-tta were unknown and
    --grad-clip 0 refused. Given, each applies to the epochs left, with the warning of any
    changed option (the two that change the result) or a note (TensorBoard: the logs only),
    and is recorded in the checkpoint; tb/ then holds every epoch, as metrics.jsonl does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = _folder(tmp_path / "data", n=20)  # 32 to train in batches of 8: 4 steps per epoch
    run = tmp_path / "run"
    base = ["train", "lenet5", "--data", str(data), *FAST, "--out", str(run)]
    with monkeypatch.context() as m:
        _killed_after_epoch(m, 1)
        assert main([*base, "--epochs", "2", "--no-nesterov", "--grad-clip", "1",
                     "--no-tensorboard", "--tta"]) == 128 + 15  # fmt: skip
    assert not (run / "tb").exists()
    capsys.readouterr()
    assert main([*base, "--resume", "--nesterov", "--grad-clip", "0", "--tensorboard",
                 "--no-tta"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert ("warning: resuming with different nesterov (was False, now True), grad_clip (was "
            "1.0, now None) than the checkpoint") in err
    assert (f"note: resuming with TensorBoard event files on (the run had them off): "
            f"{run / 'tb'} gets the epochs so far too") in err
    assert "TTA" not in out  # no 'final validation with flip TTA: ...'
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["optimizer"]["param_groups"][0]["nesterov"] is True
    assert {k: ckpt["config"][k] for k in ("nesterov", "grad_clip", "tensorboard", "tta")} == {
        "nesterov": True, "grad_clip": None, "tensorboard": True, "tta": False}
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [1, 2]
    losses = [json.loads(line)["val_loss"] for line in
              (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("val/loss")] == pytest.approx(losses)


def _fashion_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """5 classes x 8 real Fashion-MNIST images (30 to train, 10 to validate) in tmp_path/data,
    random lenet5 weights in tmp_path/lenet5.pt, and a feature cache of the test's own."""
    from cnnzoo.data import load_fashion_mnist
    from cnnzoo.data.folder import write_image_folder
    from cnnzoo.models import create_model

    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "cache"))
    write_image_folder(load_fashion_mnist("test").subset(
        per_class=8, classes=["tshirt", "pullover", "dress", "coat", "shirt"], seed=1),
        tmp_path / "data")  # fmt: skip
    torch.manual_seed(0)
    torch.save(create_model("lenet5").state_dict(), tmp_path / "lenet5.pt")
    return tmp_path / "data"


def _killed_in_fine_tuning(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`cnnzoo transfer` run as `argv` (one head epoch) and SIGTERM'd right after its first
    epoch of the whole net is checkpointed."""
    line, lines = loop._epoch_line, []

    def killed(record, *args, **kwargs):
        lines.append(record)
        if len(lines) == 2:  # the head's epoch, then the whole net's first
            raise Terminated
        return line(record, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(loop, "_epoch_line", killed)
        assert main(argv) == 128 + 15


def test_a_bare_resume_of_a_killed_transfer_run_keeps_every_option(tmp_path, monkeypatch,
                                                                   capsys):
    """`cnnzoo transfer DATA --out DIR --resume`, a queue's restart of a transfer run killed in
    fine-tuning, built the default efficientnet_lite0 with ImageNet weights and was refused as
    another net; given --model and --weights again it went on with every other option at its
    default (head, views, size, fit, epochs, rates, mixing, SAM, smoothing, class weights,
    batch size, seed, validation split, and the feature cache its --no-cache turned off). It now reads them all from OUT/finetune and ends with
    the bundle and metrics of the uninterrupted run, bit for bit, with no warning."""
    from safetensors.torch import load_file

    data = _fashion_folder(tmp_path, monkeypatch)
    recipe = ["--model", "lenet5", "--weights", str(tmp_path / "lenet5.pt"), "--head", "mlp",
              "--views", "1", "--img-size", "32", "--fit", "resize", "--epochs", "2",
              "--min-steps", "0", "--head-epochs", "1", "--lr", "3e-3", "--lr-decay", "0.5",
              "--patience", "2", "--keep-best", "--augment", "crop", "--label-smoothing", "0.05",
              "--mixup", "0.2", "--sam", "0.05", "--class-weight", "balanced", "--batch-size",
              "8", "--val-fraction", "0.25", "--seed", "3", "--precision", "fp32",
              "--no-cache"]  # fmt: skip
    base = ["transfer", str(data), "--no-progress"]
    assert main([*base, *recipe, "--out", str(tmp_path / "whole")]) == 0
    run = tmp_path / "run"
    _killed_in_fine_tuning([*base, *recipe, "--out", str(run)], monkeypatch)
    capsys.readouterr()
    assert main([*base, "--out", str(run), "--resume"]) == 0  # the queue's restart
    err = capsys.readouterr().err
    assert "warning" not in err and "resuming after epoch 1 of 2" in err, err
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((run / "metrics.json").read_text())
    for doc in (whole, resumed):
        doc.pop("timings_s")
    assert resumed == whole
    assert not (tmp_path / "cache" / "features").exists()  # --no-cache kept (read-only HOME)
    assert (run / "bundle" / "bundle.json").read_text() == (
        tmp_path / "whole" / "bundle" / "bundle.json").read_text()
    # (Tensor by tensor: the file's metadata is a Rust HashMap, written in either order.)
    wa, wb = (load_file(r / "bundle" / "model.safetensors") for r in (tmp_path / "whole", run))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    _same_run(tmp_path / "whole" / "finetune" / "full", run / "finetune" / "full")
    # Another mode given: the run's --keep-best (mode both alone) is not kept, not refused.
    assert main([*base, "--out", str(run), "--resume", "--mode", "finetune"]) == 0
    assert "mode (was both, now finetune), keep_best (was True, now False)" in \
        capsys.readouterr().err  # fmt: skip


def test_a_transfer_resume_warns_of_options_given_and_runs_from_before_resume_as_they_did(
        tmp_path, monkeypatch, capsys):
    """Options given to `transfer --resume` that differ from the run's are used and named in
    one warning, as `train --resume` does (the engine's own, such as --lr, by the engine):
    a weights file changed since the run began too. Checkpoints of a cnnzoo from before the
    record keep nothing: their bare --resume is refused as another net, as it was."""
    from cnnzoo.models import create_model

    data = _fashion_folder(tmp_path, monkeypatch)
    run = tmp_path / "run"
    argv = ["transfer", str(data), "--no-progress", "--out", str(run), "--img-size", "32",
            "--fit", "resize", "--views", "1", "--epochs", "2", "--min-steps", "0",
            "--head-epochs", "1", "--precision", "fp32"]  # fmt: skip
    _killed_in_fine_tuning([*argv, "--model", "lenet5", "--weights",
                            str(tmp_path / "lenet5.pt"), "--head", "mlp"], monkeypatch)
    before = tmp_path / "before"
    shutil.copytree(run, before)
    for phase in ("head", "full"):  # as a run of the version before wrote them
        ckpt = torch.load(before / "finetune" / phase / "last.pt", weights_only=True)
        record = ckpt["meta"].pop("transfer_run")
        torch.save(ckpt, before / "finetune" / phase / "last.pt")
    assert record["model"] == "lenet5" and record["config"]["head"] == "mlp"
    assert record["weights"]["source"] == str(tmp_path / "lenet5.pt")
    capsys.readouterr()
    assert main(["transfer", str(data), "--out", str(before), "--resume"]) == 2
    assert (f"{before} holds a fine-tuning of lenet5, not efficientnet_lite0: resume it with "
            "the --model lenet5 and --weights") in capsys.readouterr().err
    torch.manual_seed(1)  # other weights in the run's file
    torch.save(create_model("lenet5").state_dict(), tmp_path / "lenet5.pt")
    assert main(["transfer", str(data), "--out", str(run), "--resume", "--no-progress",
                 "--views", "2", "--batch-size", "4", "--lr", "0.01"]) == 0
    err = capsys.readouterr().err
    assert (f"warning: resuming with different weights ({tmp_path / 'lenet5.pt'} changed since "
            "the run began), views (was 1, now 2), batch_size (was 32, now 4) than the "
            "checkpoint; the result will differ from an uninterrupted run") in err, err
    assert "warning: resuming with different lr (was 0.001, now 0.01)" in err, err
    (tmp_path / "lenet5.pt").unlink()  # moved away: one line, before any work
    assert main(["transfer", str(data), "--out", str(run), "--resume"]) == 2
    assert capsys.readouterr().err == (
        f"cnnzoo transfer: error: the run in {run} began from --weights {tmp_path / 'lenet5.pt'}"
        ", which is gone: give --weights with that file where it is now, or start over with "
        "--overwrite\n")


def test_a_bare_transfer_resume_names_the_run_it_did_not_find(tmp_path, monkeypatch, capsys):
    """`cnnzoo transfer DATA --model efficientnet_lite1` writes runs/transfer-efficientnet_lite1;
    its bare restart, `cnnzoo transfer DATA --resume`, looked in the default model's
    runs/transfer-efficientnet_lite0, found nothing and began a new efficientnet_lite0 run with a
    note. It is refused, naming the folder it looked in and the --out that resumes the run."""
    monkeypatch.chdir(tmp_path)
    lite1 = Path("runs") / "transfer-efficientnet_lite1"
    (lite1 / "finetune" / "head").mkdir(parents=True)
    (lite1 / "finetune" / "head" / "last.pt").write_bytes(b"")  # (only its presence counts)
    (Path("runs") / "transfer-resnet18").mkdir()  # a folder without a fine-tuning: not named
    assert main(["transfer", str(tmp_path / "data"), "--resume"]) == 2
    lite0 = Path("runs") / "transfer-efficientnet_lite0"
    assert capsys.readouterr().err.splitlines() == [
        f"cnnzoo transfer: error: --resume without --out or --model continues {lite0}, the "
        "folder of efficientnet_lite0 (the model by default), which holds no fine-tuning to "
        f"resume; {lite1} holds one: add --out {lite1} (or, to start a new run in {lite0}, "
        "leave out --resume)"]
    assert not lite0.exists()


def test_a_bare_transfer_resume_with_nothing_to_resume_says_so_before_any_work(tmp_path,
                                                                            monkeypatch, capsys):
    """A transfer run killed before fine-tuning's first checkpoint (in its features or the
    head's first epoch) has recorded none of its options; the queue's bare restart ran the
    default efficientnet_lite0's features and head first, and only then said 'no checkpoint in
    OUT/finetune/head ... starting a new run' (again for OUT/finetune/full). It says so once,
    as its first line."""
    from cnnzoo.errors import UsageError
    from cnnzoo.transfer import transfer

    data = _fashion_folder(tmp_path, monkeypatch)
    run = tmp_path / "run"
    small = ["--img-size", "32", "--fit", "resize", "--views", "1", "--epochs", "1",
             "--min-steps", "0", "--head-epochs", "1", "--precision", "fp32", "--no-progress"]

    def killed(*args, **kwargs):
        raise Terminated

    with monkeypatch.context() as m:
        m.setattr(loop.Trainer, "_train_epoch", killed)  # the head's first epoch
        assert main(["transfer", str(data), *small, "--model", "lenet5", "--weights",
                     str(tmp_path / "lenet5.pt"), "--out", str(run)]) == 128 + 15
    assert not list(run.rglob("last.pt"))  # (a SIGKILL leaves OUT/finetune/head, empty)
    capsys.readouterr()
    # (--mode finetune: the features head, minutes on real data, is not the point here)
    resume = ["transfer", str(data), *small, "--out", str(run), "--resume", "--mode", "finetune"]
    assert main(resume) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"note: nothing to resume in {run}: a fine-tuning writes its first "
                      "checkpoint when the head's first epoch ends, and its options with it; "
                      "starting a new run of efficientnet_lite0 with the options given here")
    assert err[1].startswith("data: ") and not any("no checkpoint in" in e for e in err), err
    assert json.loads((run / "bundle" / "bundle.json").read_text())["model"] == \
        "efficientnet_lite0"  # fmt: skip
    # Its checkpoints are there now: a second resume continues them without the note.
    assert main(resume) == 0
    assert "nothing to resume" not in capsys.readouterr().err
    # Without a folder there is nothing to resume from: said before the features, too.
    with pytest.raises(UsageError, match="resume continues the interrupted fine-tuning in out"):
        transfer(data, model="lenet5", weights=None, resume=True, say=print)


def test_both_phases_of_a_transfer_resume_warn_of_a_split_drawn_otherwise(tmp_path,
                                                                          monkeypatch, capsys):
    """A transfer run killed in its whole-net phase, resumed with another --seed, validates on
    other images than it began with (some it trained on). The head's phase said so, 'validation
    images (the data splits otherwise now)'; the whole net's, which goes on training, did not:
    both phases shared one meta, into which the head's resume had put its checkpoint's
    validation files."""
    data = _fashion_folder(tmp_path, monkeypatch)
    run = tmp_path / "run"
    argv = ["transfer", str(data), "--no-progress", "--out", str(run), "--img-size", "32",
            "--fit", "resize", "--views", "1", "--epochs", "2", "--min-steps", "0",
            "--head-epochs", "1", "--precision", "fp32", "--model", "lenet5", "--weights",
            str(tmp_path / "lenet5.pt"), "--mode", "finetune"]  # fmt: skip
    _killed_in_fine_tuning(argv, monkeypatch)
    capsys.readouterr()
    assert main(["transfer", str(data), "--out", str(run), "--resume", "--seed", "3",
                 "--no-progress"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("warning: resuming with different")]
    engine = [w for w in warnings if "validation images (the data splits otherwise now)" in w]
    assert len(engine) == 2, warnings  # the head's phase and the whole net's


def test_a_transfer_killed_in_the_heads_phase_resumes_without_a_restart_note(tmp_path,
                                                                             monkeypatch,
                                                                             capsys):
    """A bare --resume of a transfer run killed after the head's first epoch (of two) went on
    with the head, then said at the whole net's phase 'note: no checkpoint in OUT/finetune/full
    ...: starting a new run with the options given here', as if the run's options were lost:
    that phase simply begins. The run ends as the uninterrupted one."""
    data = _fashion_folder(tmp_path, monkeypatch)
    argv = ["transfer", str(data), "--no-progress", "--img-size", "32", "--fit", "resize",
            "--views", "1", "--epochs", "1", "--min-steps", "0", "--head-epochs", "2",
            "--precision", "fp32", "--model", "lenet5", "--weights",
            str(tmp_path / "lenet5.pt"), "--mode", "finetune"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    run = tmp_path / "run"
    line = loop._epoch_line

    def killed(record, *args, **kwargs):
        raise Terminated  # after the head's first epoch is checkpointed

    with monkeypatch.context() as m:
        m.setattr(loop, "_epoch_line", killed)
        assert main([*argv, "--out", str(run)]) == 128 + 15
    assert loop._epoch_line is line
    capsys.readouterr()
    assert main(["transfer", str(data), "--out", str(run), "--resume", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "resuming after epoch 1 of 2" in err and "no checkpoint in" not in err, err
    whole, resumed = (json.loads((r / "metrics.json").read_text())
                      for r in (tmp_path / "whole", run))  # fmt: skip
    for doc in (whole, resumed):
        doc.pop("timings_s")
    assert resumed == whole
