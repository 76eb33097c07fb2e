"""Command-line options outside what they can mean are one-line usage errors before any work."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from cnnzoo.cli import main

# (command line, the option's name in the error). Each of these used to be a traceback from
# deep in the engine, or was accepted and did something else (batch size 0 became 128).
BAD = [
    (["train", "lenet5", "--data", "digits", "--epochs", "0"], "--epochs"),
    (["train", "lenet5", "--data", "digits", "--batch-size", "0"], "--batch-size"),
    (["train", "lenet5", "--data", "digits", "--val-fraction", "1"], "--val-fraction"),
    (["train", "lenet5", "--data", "digits", "--val-fraction", "0"], "--val-fraction"),
    (["train", "lenet5", "--data", "digits", "--lr", "-1"], "--lr"),
    (["train", "lenet5", "--data", "digits", "--lr", "nan"], "--lr"),
    (["train", "lenet5", "--data", "digits", "--label-smoothing", "2"], "--label-smoothing"),
    (["train", "lenet5", "--data", "digits", "--erase", "-0.5"], "--erase"),
    (["train", "lenet5", "--data", "digits", "--grad-clip", "-1"], "--grad-clip"),
    (["train", "lenet5", "--data", "digits", "--img-size", "0"], "--img-size"),
    (["train", "lenet5", "--data", "digits", "--img-size", "100000"], "--img-size"),  # 5 TB
    (["transfer", "DIR", "--img-size", "5000"], "--img-size"),
    (["train", "lenet5", "--data", "digits", "--threads", "0"], "--threads"),
    (["train", "lenet5", "--data", "digits", "--patience", "x"], "--patience"),
    (["train", "lenet5", "--data", "digits", "--seed", "-1"], "--seed"),
    (["transfer", "DIR", "--seed", "-1"], "--seed"),
    # torch's generators take a signed 64-bit seed: a larger one was a traceback after the load.
    (["train", "lenet5", "--data", "digits", "--seed", str(2**63)], "--seed"),
    (["transfer", "DIR", "--seed", str(2**64)], "--seed"),
    (["train", "unet", "--task", "segmentation", "--data", "cells", "--crop", "0"], "--crop"),
    (["transfer", "DIR", "--lr-decay", "0"], "--lr-decay"),
    (["transfer", "DIR", "--epochs", "-2"], "--epochs"),
    (["transfer", "DIR", "--l2", "0"], "--l2"),
    (["segment", "a.png", "--checkpoint", "c.pt", "--batch-size", "0"], "--batch-size"),
    (["segment", "a.png", "--checkpoint", "c.pt", "--margin", "-5"], "--margin"),
    (["data", "export", "digits", "DIR", "--per-class", "-3"], "--per-class"),
    (["predict", "a.png", "--top", "abc"], "--top"),
    (["evaluate", "c.pt", "--batch-size", "0"], "--batch-size"),
    (["demo", "--per-class", "0"], "--per-class"),
]


@pytest.mark.parametrize(("argv", "option"), BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_out_of_range_options_are_usage_errors(argv, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}: must be" in last and argv[-1] in last
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


def test_ranges_keep_their_limits():
    from cnnzoo.commands.argtypes import FRACTION, LEARNING_RATE, real, whole

    assert whole(0)("0") == 0 and FRACTION("0.2") == 0.2 and LEARNING_RATE("3e-4") == 3e-4
    assert real(0, 1)("1") == 1.0 and real(0, 1)("0") == 0.0  # closed ends are allowed
    for parse, text in ((FRACTION, "1.0"), (real(0, 1), "1.01"), (whole(1), "1.5"),
                        (LEARNING_RATE, "inf")):  # fmt: skip
        with pytest.raises(Exception, match="must be"):
            parse(text)


def test_data_export_bad_destinations_and_classes(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["data", "export", "digits", str(afile)]) == 2
    # named as argparse names it (`cnnzoo data export: error: ...`), not `cnnzoo data`
    err = capsys.readouterr().err
    assert err.startswith("cnnzoo data export: error: ") and "is a file, not a folder" in err
    assert main(["data", "export", "digits", str(tmp_path / "d"), "--classes", ","]) == 2
    assert "names no class" in capsys.readouterr().err
    assert main(["data", "export", "cells", str(tmp_path / "c"), "--classes", "cell"]) == 2
    assert "leave out --classes" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    # The names training takes work here too: any case, aliases.
    assert main(["data", "export", "Digits", str(tmp_path / "d"), "--per-class", "1"]) == 0
    assert "wrote 10 digits train images" in capsys.readouterr().out


def test_segment_outputs_never_overwrite_each_other():
    from cnnzoo.commands.segment import output_stems

    flat = [Path("/t/a/x.png"), Path("/t/b/y.png")]
    assert list(output_stems(flat).values()) == ["x", "y"]  # the usual case: plain stems
    same = [Path("/t/a/x.png"), Path("/t/b/x.png")]
    assert list(output_stems(same).values()) == ["a/x", "b/x"]
    side = [Path("/t/a/x.png"), Path("/t/a/x.jpg")]
    assert list(output_stems(side).values()) == ["x_png", "x_jpg"]
    # Only the images that share a stem are renamed (b.png was b_png too, not b as documented).
    mixed = [Path("/t/a/x.png"), Path("/t/a/x.jpg"), Path("/t/a/b.png"), Path("/t/c/y.png"),
             Path("/t/d/y.png")]
    assert list(output_stems(mixed).values()) == ["x_png", "x_jpg", "b", "c/y", "d/y"]
    # A renamed one meeting another's own stem: still no two alike.
    clash = [Path("/t/a.png"), Path("/t/a.jpg"), Path("/t/a_png.gif")]
    assert len(set(output_stems(clash).values())) == 3


def test_predict_bundle_refuses_model_and_weights(tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    for extra in (["--model", "resnet18"], ["--weights", "r18.pth"]):
        assert main(["predict", str(img), "--bundle", str(tmp_path / "b"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith("leave out --model and --weights") and "\n" not in err
    assert main(["predict", str(img), "--bundle", str(tmp_path / "b"), "--classes", "a,b"]) == 2
    assert capsys.readouterr().err.strip().endswith("--bundle brings its own class names; "
                                                    "leave out --classes")


def test_transfer_without_pretrained_weights_points_to_train(tmp_path, capsys):
    assert main(["transfer", str(tmp_path), "--model", "resnet18", "--weights", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"cnnzoo train resnet18 --data {tmp_path}") and "\n" not in err


def test_demo_names_every_missing_extra_at_once(tmp_path, monkeypatch, capsys):
    """A core-only install: one line naming both extras, before anything is written."""
    import importlib.util

    from cnnzoo.errors import WeightsError
    from cnnzoo.weights import named

    real_find_spec = importlib.util.find_spec

    def no_skimage(name, *a, **k):
        return None if name == "skimage" else real_find_spec(name, *a, **k)

    def no_weights(entry):
        raise WeightsError("not installed")

    monkeypatch.setattr(importlib.util, "find_spec", no_skimage)
    monkeypatch.setattr(named, "resolve", no_weights)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert capsys.readouterr().err.strip().endswith("pip install 'cnnzoo[data,pretrained]'")
    assert not (tmp_path / "demo").exists()


def test_demo_with_a_read_only_home_runs_without_the_feature_cache(tmp_path, monkeypatch,
                                                                    capsys):
    """In a container whose HOME is read-only the demo stopped at step 3 with 'feature cache
    ...: not writable', naming --cache and --no-cache, options it does not have."""
    import cnnzoo.transfer
    from cnnzoo.errors import DataError

    (tmp_path / "afile").write_text("x")  # the cache's folder cannot be made: as read-only
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "afile" / "cache"))
    configs = []

    def transfer(data, *, config, **kw):  # the real one is minutes: its settings are the point
        configs.append(config)
        raise DataError("stop here")

    monkeypatch.setattr(cnnzoo.transfer, "transfer", transfer)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--per-class", "1",
                 "--test-per-class", "1", "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == "cnnzoo demo: error: stop here"
    assert [c.use_cache for c in configs] == [False]
    assert (f"note: feature cache {tmp_path / 'afile' / 'cache' / 'features'}: "
            f"{tmp_path / 'afile'} is a file, not a folder: the demo runs without it") in out


def test_model_arg_values_are_typed():
    from cnnzoo.commands.argtypes import model_arg

    # 'no' as a string would be truthy: batchnorm=no would have kept BatchNorm on.
    assert [model_arg(f"batchnorm={v}")[1] for v in ("no", "Off", "false", "yes", "on", "TRUE")] \
        == [False, False, False, True, True, True]
    assert model_arg("stages=3") == ("stages", 3) and model_arg("dropout=0.2") == ("dropout", 0.2)
    assert model_arg("padding=same") == ("padding", "same")


def test_train_refusals_before_any_work(tmp_path, monkeypatch, capsys):
    """Each of these used to be a traceback or a run without meaning: model options the data
    sets, a VGG stages value that first sized the images for it (stages=9: 512 px, 6.6 GB), no
    image left for validation (val_loss 0 every epoch), an --out that cannot be written (found
    after the first epoch)."""
    from PIL import Image

    for cls in ("a", "b"):  # one image per class: none left to validate on
        (tmp_path / "one" / cls).mkdir(parents=True)
        Image.new("L", (20, 20), 100).save(tmp_path / "one" / cls / "1.png")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p).name != "readonly"
                        and real_access(p, mode))  # fmt: skip
    (tmp_path / "readonly").mkdir()
    base = ["train", "lenet5", "--data", "digits", "--epochs", "1"]
    cases = [
        (base + ["--model-arg", "num_classes=5"], "num_classes: set by the data"),
        (["train", "vgg11", "--data", "digits", "--model-arg", "stages=9"],
         "vgg: stages must lie in 1..5, not 9"),
        (["train", "lenet5", "--data", str(tmp_path / "one")], "leaves no image for validation "
         "(one image per class): add images (at least 2 per class) or a val/ folder"),
        (base + ["--out", str(tmp_path / "readonly" / "run")], "readonly is not writable"),
        (["train", "lenet5", "--data", ""], "the data source is empty"),
        # transfer took both and ran (train and segment refuse them, one shared check)
        (base + ["--resume", "--overwrite"], "--overwrite replaces it: pass one"),
        (["transfer", str(tmp_path / "one"), "--resume", "--overwrite"],
         "--overwrite replaces it: pass one"),
    ]
    for argv, expect in cases:
        out = [] if "--out" in argv else ["--out", str(tmp_path / "run")]
        assert main(argv + out) == 2
        err = capsys.readouterr().err.strip()
        assert expect in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()
    # convert too: the checkpoint's head says its classes (a given count dropped the head).
    assert main(["convert", "a.pth", "b.safetensors", "--model", "resnet18", "--model-arg",
                 "num_classes=7"]) == 2
    assert "num_classes: set by the checkpoint itself" in capsys.readouterr().err


def test_a_full_disk_after_the_checkpoint_is_one_line_that_says_how_to_continue(
        tmp_path, monkeypatch, capsys):
    """The epoch's checkpoint is written, then metrics.jsonl meets a full disk: one line naming
    the file and the resume, not a traceback. Other OS errors (a bug's) keep their traceback."""
    import errno

    from cnnzoo.engine.logs import MetricsLog

    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(MetricsLog, "write", full)
    argv = ["train", "lenet5", "--data", "digits", "--epochs", "1", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (f"cnnzoo train: error: {tmp_path / 'metrics.jsonl'}: No space left on device: "
                   f"free some space and run it again; {tmp_path / 'last.pt'} holds the last "
                   "finished epoch: add --resume to continue")

    def broken(self, record):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(MetricsLog, "write", broken)
    with pytest.raises(OSError, match="Input/output"):
        main([*argv, "--overwrite"])

def test_an_interrupted_training_or_transfer_run_says_how_to_continue(tmp_path, monkeypatch, capsys):
    import cnnzoo.commands.train as train_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "run", interrupted)
    argv = ["train", "lenet5", "--data", "digits", "--out", str(tmp_path)]
    assert main(argv) == 130
    assert capsys.readouterr().err == "\ncnnzoo train: interrupted\n"  # no epoch saved yet
    (tmp_path / "last.pt").write_bytes(b"")
    assert main(argv) == 130
    assert capsys.readouterr().err == (f"\ncnnzoo train: interrupted; {tmp_path / 'last.pt'} "
                                       "holds the last finished epoch: add --resume to continue\n")

    # Transfer: its fine-tuning phases keep their checkpoints under OUT/finetune/.
    import cnnzoo.commands.transfer as transfer_command

    monkeypatch.setattr(transfer_command, "run", interrupted)
    argv = ["transfer", "digits", "--out", str(tmp_path / "t")]
    assert main(argv) == 130
    assert capsys.readouterr().err == "\ncnnzoo transfer: interrupted\n"
    (tmp_path / "t" / "finetune" / "head").mkdir(parents=True)
    (tmp_path / "t" / "finetune" / "head" / "last.pt").write_bytes(b"")
    assert main(argv) == 130
    assert capsys.readouterr().err == (f"\ncnnzoo transfer: interrupted; {tmp_path / 't' / 'finetune'}"
                                       " holds the fine-tuning's last finished epoch: add --resume "
                                       "to continue\n")
    # With --overwrite, a checkpoint from before this command is the replaced run's.
    import os

    os.utime(tmp_path / "t" / "finetune" / "head" / "last.pt", (1, 1))
    assert main([*argv, "--overwrite"]) == 130
    assert capsys.readouterr().err == "\ncnnzoo transfer: interrupted\n"


def test_ctrl_c_while_torch_is_being_imported_is_one_line(tmp_path, monkeypatch, capsys):
    """`python -m cnnzoo` and the `cnnzoo` script import the package before cli.main runs.
    It imported torch (seconds under load), so a Ctrl-C right after starting a command printed
    torch's 40-line import traceback; and the hint for an interrupted run imported the
    half-initialised torch again (a segfault or 'function already has a docstring')."""
    import subprocess
    import sys

    import cnnzoo.cli as cli

    code = ("import sys, cnnzoo, cnnzoo.cli; cnnzoo.cli.build_parser(); "
            "print('torch' in sys.modules, cnnzoo.list_models('lenet*')[0])")
    src = str(Path(cli.__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": src})
    assert out.stdout.split() == ["False", "lenet5"]  # lazy, and still there on first use

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["train", "lenet5", "--data", "digits"]) == 130
    assert capsys.readouterr().err == "\ncnnzoo: interrupted\n"
    monkeypatch.undo()
    # Interrupted inside the command while torch was still importing: no hint, no import.
    import argparse

    monkeypatch.delitem(sys.modules, "torch")
    (tmp_path / "last.pt").write_bytes(b"")  # an earlier run's
    args = argparse.Namespace(command="train", model="lenet5", out=str(tmp_path))
    assert cli._resume_hint(args, 0.0) == ""
def test_ctrl_c_while_numpy_is_being_imported_stops_the_command(tmp_path):
    """torch imports numpy and swallows whatever ends that import: a Ctrl-C then was lost (the
    command went on to the end, exit 0) or left numpy half-imported (a RecursionError or
    ImportError traceback later, exit 1; 3 of 15 Ctrl-Cs 0.7-1.3 s into `evaluate`). numpy is
    imported before the command, where the Ctrl-C ends it as any other: its line, exit 130.
    The Ctrl-C is a KeyboardInterrupt raised by the first attempt to import numpy."""
    import subprocess
    import sys

    import cnnzoo.cli as cli

    code = ("import sys\n"
            "class Stop:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'numpy' and not sys.meta_path.remove(self):\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Stop())\n"
            "import cnnzoo.cli\n"
            "raise SystemExit(cnnzoo.cli.main(['models', '--json']))")
    src = str(Path(cli.__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": src,
                                           "CNNZOO_CACHE": str(tmp_path)})
    assert (out.returncode, out.stderr) == (130, "\ncnnzoo models: interrupted\n"), out
    assert json.loads(out.stdout) == {"error": "cnnzoo models: interrupted", "exit_status": 130}


def test_a_terminated_run_says_so_and_how_to_continue(tmp_path, monkeypatch, capsys):
    """SIGTERM (a batch system's time limit, `docker stop`, `timeout`) killed a run with
    nothing in its log: now it ends as Ctrl-C does, with its own line and exit status 143, and
    SIGTERM's handler is put back after the command."""
    import signal

    import cnnzoo.commands.train as train_command

    def killed(args):
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # it would end pytest unannounced
            raise AssertionError("SIGTERM is not caught while a command runs")
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (the main) thread
        raise AssertionError("not reached: the signal ends the command")

    monkeypatch.setattr(train_command, "run", killed)
    (tmp_path / "last.pt").write_bytes(b"")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert main(["train", "lenet5", "--data", "digits", "--out", str(tmp_path)]) == 143
    assert capsys.readouterr().err == (
        f"\ncnnzoo train: terminated (SIGTERM); {tmp_path / 'last.pt'} holds the last finished "
        "epoch: add --resume to continue\n")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_tta_on_a_net_trained_without_flips_says_so(tmp_path, capsys, caplog):
    """Digits train without flips (a mirrored digit is no digit): averaging over mirrored
    images lowered the accuracy (0.997 -> 0.947) without a word."""
    note = "--tta averages over mirrored images, but the net trained without flips"
    out = tmp_path / "run"
    assert main(["train", "lenet5", "--data", "digits", "--epochs", "1", "--tta", "--no-progress",
                 "--no-tensorboard", "--out", str(out)]) == 0
    assert note in capsys.readouterr().err
    assert main(["evaluate", str(out / "last.pt"), "--tta"]) == 0
    assert any(note in m for m in caplog.messages)
    caplog.clear()
    assert main(["evaluate", str(out / "last.pt")]) == 0
    assert not any(note in m for m in caplog.messages)


def test_a_mirroring_augmentation_asked_for_on_digits_says_so(tmp_path, capsys):
    """--augment flip-crop on digits trained on mirrored digits without a word, where --tta
    said the same of mirrored views; it now gives the one-line note. The default (crop) gives
    none."""
    note = ("note: --augment flip-crop mirrors images, and a mirrored digit is another symbol "
            "or none: its accuracy may be lower, not higher (the default for digits is crop)")
    train = ["train", "lenet5", "--epochs", "1", "--no-progress", "--no-tensorboard",
             "--out", str(tmp_path / "run"), "--overwrite"]  # fmt: skip
    assert main([*train, "--data", "digits", "--augment", "flip-crop"]) == 0
    err = capsys.readouterr().err
    assert err.count(note) == 1 and f"\n{note}\n" in f"\n{err}"
    assert main([*train, "--data", "digits"]) == 0
    assert "mirrored digit" not in capsys.readouterr().err


def test_same_source_ignores_case_for_built_in_names_only(tmp_path, monkeypatch):
    from cnnzoo.paths import same_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "digfold").mkdir()
    (tmp_path / "DIGFOLD").mkdir()  # another folder (on a case-sensitive file system)
    assert same_source("Fashion-MNIST", "fashion-mnist")
    assert same_source("digfold", str(tmp_path / "digfold") + "/")
    assert not same_source("digfold", "DIGFOLD") or (tmp_path / "digfold").samefile("DIGFOLD")


def test_resume_names_every_changed_setting(tmp_path, capsys):
    """A smaller --batch-size rewinds the one-cycle schedule (more steps per epoch): it, the
    warm-up, label smoothing and the augmentation used to change without a word."""
    base = ["train", "lenet5", "--data", "digits", "--no-progress", "--no-tensorboard",
            "--out", str(tmp_path)]
    assert main([*base, "--epochs", "1"]) == 0
    capsys.readouterr()
    # A warm-up is the cosine schedule's (one-cycle, the run's, is refused it).
    assert main([*base, "--epochs", "2", "--resume", "--batch-size", "64", "--warmup-epochs",
                 "1", "--schedule", "cosine", "--label-smoothing", "0", "--augment", "none"]) == 0
    warning = next(ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln)
    for change in ("warmup_epochs (was 0.0, now 1.0)", "schedule (was onecycle, now cosine)",
                   "batch_size (was 128, now 64)",
                   "augment (was crop, now none)", "label_smoothing (was 0.1, now 0.0)"):
        assert change in warning, warning
    # --freeze-bn changes nothing for a net without BatchNorm: its resume is not refused.
    assert main([*base, "--epochs", "3", "--resume", "--freeze-bn"]) == 0


def test_every_option_with_a_default_says_it_in_help():
    """`--help` shows each option's default: `train --epochs`, `--seed`, `--val-fraction`,
    `transfer --batch-size`, `--precision` and others had none (no help at all), so a newcomer
    had to read the docs to learn that `train` runs 10 epochs."""
    import argparse

    from cnnzoo.cli import build_parser

    def options(parser, prog):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from options(sub, f"{prog} {name}")
            # `not in (None, False, [])` also let 0 and 0.0 by (0 == False): --erase said
            # '0: off' but not that it was the default.
            elif action.option_strings and action.default is not None \
                    and not isinstance(action.default, bool) and action.default != [] \
                    and action.help != argparse.SUPPRESS and not isinstance(
                        action, (argparse._HelpAction, argparse._VersionAction,
                                 argparse._StoreFalseAction)):
                yield prog, action

    silent = [f"{prog} {a.option_strings[-1]}" for prog, a in options(build_parser(), "cnnzoo")
              if "default" not in (a.help or "")]
    assert not silent


def test_command_summaries_name_multiply_adds_as_the_tables_do(capsys):
    """`cnnzoo --help` summed compare up as 'parameters, FLOPs, ...' while its table (and the
    README) gives multiply-adds, MMACs: half the FLOPs. Both summaries say multiply-adds."""
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "FLOPs" not in text
    assert "compare training runs: parameters, multiply-adds (MMACs)" in text
    assert "models list the architectures with parameters, multiply-adds (GMACs)" in text


def test_every_option_says_what_it_does_in_help():
    """`--no-progress` (train, transfer, demo) and `--no-tensorboard` had no help line at all;
    the options several commands share are added by one helper each, so they read alike."""
    import argparse

    from cnnzoo.cli import build_parser

    def actions(parser, prog):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from actions(sub, f"{prog} {name}")
            else:
                yield prog, action

    mute = [f"{prog} {(a.option_strings or [a.dest])[-1]}"
            for prog, a in actions(build_parser(), "cnnzoo") if not a.help]
    assert not mute
    threads = {prog: a.help for prog, a in actions(build_parser(), "cnnzoo")
               if "--threads" in a.option_strings and prog != "cnnzoo predict"}
    assert set(threads) == {f"cnnzoo {c}" for c in ("train", "transfer", "evaluate", "segment",
                                                    "demo")}
    assert len(set(threads.values())) == 1
    # --no-progress on every command that draws a bar (predict, evaluate, segment and data
    # info had none), in the same words.
    quiet = {prog: a.help for prog, a in actions(build_parser(), "cnnzoo")
             if "--no-progress" in a.option_strings}
    assert set(quiet) == {f"cnnzoo {c}" for c in ("train", "transfer", "demo", "predict",
                                                  "evaluate", "segment", "data info")}
    assert len(set(quiet.values())) == 1
    # Positional arguments are named in upper case in every usage line (IMAGE, RUN, DATA, IN
    # OUT), as in the docs: train's `model`, evaluate's `checkpoint` and data's `name dir` /
    # `source` were the lower-case exceptions.
    lower = [f"{prog} {a.metavar or a.dest}" for prog, a in actions(build_parser(), "cnnzoo")
             if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
             and not (a.metavar or a.dest).isupper()]
    assert not lower


def test_the_package_metadata_builds_without_a_deprecation():
    """`bash scripts/setup.sh` printed setuptools' warning three times: `license = { text =
    ... }` is deprecated and, it says, fails to build from 2027-02-18. An SPDX string needs
    setuptools 77."""
    import tomllib

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    assert "setuptools>=77" in meta["build-system"]["requires"]


def test_the_wheel_marks_its_type_hints_for_type_checkers():
    """No py.typed marker: a user's mypy said 'Skipping analyzing "cnnzoo": module is installed,
    but missing library stubs or py.typed marker' and took every cnnzoo name as Any. With it,
    the names `import cnnzoo` makes on first use must be visible to a checker too, or
    `cnnzoo.transfer(...)` read as calling the subpackage ('Module not callable')."""
    import ast
    import tomllib

    root = Path(__file__).parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["cnnzoo"]
    assert (root / "src" / "cnnzoo" / "py.typed").is_file()
    init = ast.parse((root / "src" / "cnnzoo" / "__init__.py").read_text())
    checked = next(node for node in init.body if isinstance(node, ast.If)
                   and ast.unparse(node.test) == "TYPE_CHECKING")  # fmt: skip
    seen = {alias.asname or alias.name for node in checked.body
            for alias in node.names}  # fmt: skip
    import cnnzoo

    assert seen == set(cnnzoo.__all__) - {"CnnzooError", "__version__"}


def test_the_version_is_set_in_one_place(capsys):
    """pyproject.toml and cnnzoo/__init__.py each spelt out "0.1.0": a release that bumped one
    left `cnnzoo --version` (and the version checkpoints record) saying another than the wheel.
    The package's __version__ is the one place; setuptools reads it from the source."""
    import tomllib

    import cnnzoo

    root = Path(__file__).parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cnnzoo.__version__"}
    expand = pytest.importorskip("setuptools.config.expand")
    # What a build puts in the wheel's metadata: read from the file, not imported.
    assert expand.read_attr("cnnzoo.__version__", {"": "src"}, root) == cnnzoo.__version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"cnnzoo {cnnzoo.__version__}\n"


def test_a_bare_tta_before_the_checkpoint_says_where_it_goes(capsys):
    """`--tta` takes an optional mode, so `cnnzoo evaluate --tta runs/a/best.pt` read the
    checkpoint as the mode: "invalid choice" alone left the newcomer puzzled."""
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--tta", "runs/a/best.pt"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'runs/a/best.pt' is not flip or flip-shift" in err
    assert "put it after the positional arguments" in err and err.count("\n") == 1


@pytest.mark.parametrize(("argv", "prog", "unknown"), [
    (["train", "lenet5", "--data", "digits", "--bogus"], "cnnzoo train", "--bogus"),
    (["evaluate", "runs/a/best.pt", "extra"], "cnnzoo evaluate", "extra"),
    (["data", "export", "digits", "DIR", "--bogus", "1"], "cnnzoo data export", "--bogus 1"),
    (["models", "--prec", "bf16"], "cnnzoo models", "--prec bf16"),
])
def test_an_unknown_option_is_named_by_its_command(argv, prog, unknown, capsys):
    """argparse left unrecognized arguments to the top-level parser: `cnnzoo: error:
    unrecognized arguments: --bogus (see `cnnzoo --help`)`, the one usage error that named no
    command and pointed to a help without the command's options."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"{prog}: error: unrecognized arguments: {unknown} (")
    assert f"(see `{prog} --help`)" in err


@pytest.mark.parametrize(("argv", "prog", "meant"), [
    (["predict", "--mode", "x", "a.jpg"], "cnnzoo predict", "--mode; did you mean --model?"),
    (["predict", "--mod=x", "a.jpg"], "cnnzoo predict", "--mod=x; did you mean --model?"),
    (["train", "lenet5", "--data", "digits", "--epoch", "1"], "cnnzoo train",
     "--epoch 1; did you mean --epochs?"),
    (["data", "export", "digits", "DIR", "--per", "3"], "cnnzoo data export",
     "--per 3; did you mean --per-class?"),
    (["segment", "a.png", "--checkpoint", "c.pt", "--t", "3"], "cnnzoo segment",
     "--t 3; did you mean --threads or --tile or --tta?"),
])
def test_options_are_not_abbreviated(argv, prog, meant, tmp_path, monkeypatch, capsys):
    """argparse's allow_abbrev read `predict --mode x` as --model x without a word (and a new
    option could change what an old script's prefix meant, or make it ambiguous). Every
    command now refuses a prefix, and names the options it begins."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"{prog}: error: unrecognized arguments: {meant} Options are not "
                          "abbreviated (see")
    assert list(tmp_path.iterdir()) == []


def test_a_bare_double_dash_is_not_taken_for_a_prefix_of_every_option(capsys):
    """`models -- --x` answered 'did you mean --channels or --help or --img-size or --json or
    --model-arg or --pattern?': '--' begins them all."""
    with pytest.raises(SystemExit):
        main(["models", "--", "--x"])
    err = capsys.readouterr().err
    assert err == ("cnnzoo models: error: unrecognized arguments: -- --x (see `cnnzoo models "
                   "--help`)\n")


@pytest.mark.parametrize(("argv", "prog", "option"), [
    (["--json", "models"], "cnnzoo models", "--json"),
    (["data", "--json", "info", "DIR"], "cnnzoo data info", "--json"),
    (["data", "--no-progress", "info", "DIR"], "cnnzoo data info", "--no-progress"),
])
def test_a_commands_option_given_before_its_name_says_where_it_goes(argv, prog, option,
                                                                     capsys):
    """`cnnzoo --json models` (or `cnnzoo data --json info DIR`) answered 'unrecognized
    arguments: --json; did you mean --json? Options are not abbreviated', on stderr and in the
    --json document on stdout: the option is the command's own, given before the command's
    name, where only the parser of that level saw it. After a '--' it is an argument, and no
    option is suggested."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    line = (f"{prog}: error: unrecognized arguments: {option}; {option} is an option of "
            f"`{prog}`: give it after `{prog}` (see `{prog} --help`)")
    assert err == line + "\n"
    if option == "--json":  # the document a script reads says the same
        assert json.loads(out) == {"error": line, "exit_status": 2}
    with pytest.raises(SystemExit):
        main(["data", "info", "DIR", "--", option])
    assert capsys.readouterr().err == (f"cnnzoo data info: error: unrecognized arguments: "
                                       f"{option} (see `cnnzoo data info --help`)\n")


@pytest.mark.parametrize(("argv", "prog", "given", "hint"), [
    (["--threads", "1", "train", "lenet5", "--data", "digits"], "cnnzoo train", "--threads 1",
     "--threads"),
    (["--threads=1", "--json", "evaluate", "run/last.pt"], "cnnzoo evaluate",
     "--threads=1 --json", "--threads"),
    (["data", "--per-class", "5", "export", "fashion-mnist", "DIR"], "cnnzoo data export",
     "--per-class 5", "--per-class"),
    (["--threads", "1", "models"], "cnnzoo models", "--threads 1", None),  # not one of its own
])
def test_an_option_with_a_value_given_before_the_commands_name_says_where_it_goes(
        argv, prog, given, hint, tmp_path, monkeypatch, capsys):
    """`cnnzoo --threads 1 train ...` answered "cnnzoo: error: argument COMMAND: invalid
    choice: '1'": argparse took the option's value for the command's name. It is refused as a
    switch given there is (`cnnzoo --json models`), by the command's parser, saying where it
    goes; one the command does not have is unrecognized, as it is after the name."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    where = f"; {hint} is an option of `{prog}`: give it after `{prog}`" if hint else ""
    line = f"{prog}: error: unrecognized arguments: {given}{where} (see `{prog} --help`)"
    assert err == line + "\n"
    assert json.loads(out) == {"error": line, "exit_status": 2} if "--json" in argv else not out
    assert list(tmp_path.iterdir()) == []


def test_no_parser_takes_abbreviations():
    import argparse

    from cnnzoo.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    found = list(parsers(build_parser()))
    assert len(found) > 10 and not [p.prog for p in found if p.allow_abbrev]


def test_no_command_is_a_usage_error_on_stderr(capsys):
    """`cnnzoo` alone exits 2, a usage error, but printed its help on stdout: `cnnzoo $CMD >
    out.txt` with an empty $CMD left the help in the results file."""
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage: cnnzoo" in err and "transfer" in err


def test_train_takes_model_and_transfer_data_as_the_other_commands_spell_them(
        tmp_path, monkeypatch, capsys):
    """predict, transfer and convert take `--model NAME`; train took its model only as its first
    argument, and `cnnzoo train --model lenet5 --data digits` was read as an abbreviation of
    --model-arg: "expected KEY=VALUE, got 'lenet5'". Likewise train and evaluate take `--data`,
    transfer only DATA. Each now takes both spellings, and says so when given two."""
    import cnnzoo.transfer
    from cnnzoo.errors import DataError

    seen = []

    def stop(name, *args, **kwargs):
        seen.append(name)
        raise DataError("stop here")

    monkeypatch.setattr("cnnzoo.engine.run.train_classifier", stop)
    for argv in (["train", "--model", "lenet5", "--data", "digits"],
                 ["train", "--data", "digits", "lenet5"],
                 ["train", "lenet5", "--model", "lenet5", "--data", "digits"]):
        assert main([*argv, "--out", str(tmp_path / "r")]) == 2
        assert seen.pop() == "lenet5" and "stop here" in capsys.readouterr().err
    assert main(["train", "lenet5", "--model", "resnet20", "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert "MODEL lenet5 and --model resnet20 say two different things" in err
    assert main(["train", "--data", "digits"]) == 2
    assert "required: MODEL" in capsys.readouterr().err

    def transfer(data, **kwargs):
        seen.append(str(data))
        raise DataError("stop here")

    monkeypatch.setattr(cnnzoo.transfer, "transfer", transfer)
    for argv in (["transfer", "--data", str(tmp_path)], ["transfer", str(tmp_path)]):
        assert main([*argv, "--mode", "features", "--out", str(tmp_path / "t")]) == 2
        assert seen.pop() == str(tmp_path) and "stop here" in capsys.readouterr().err
    assert main(["transfer"]) == 2
    err = capsys.readouterr().err
    assert "required: DATA" in err and err.count("\n") == 1


def test_transfer_json_prints_its_metrics_json_alone_on_stdout(tmp_path, monkeypatch, capsys):
    """models, predict, evaluate, compare and data info had --json, transfer none: a script
    read OUT/metrics.json after the run, or parsed the summary line. Its --json prints that
    document, and nothing else on stdout (the per-class table, a result in text mode, goes to
    stderr)."""
    import json
    from types import SimpleNamespace

    import cnnzoo.transfer

    metrics = {"features": {"val_acc": 0.75, "val_balanced_acc": 0.7}, "kept": "features",
               "val_acc": 0.75, "val_top5": 1.0, "val_balanced_acc": 0.7, "val_loss": 0.5,
               "val_macro_f1": 0.6}

    def transfer(data, *, show, **kwargs):
        show("class  precision  recall  support")
        return SimpleNamespace(metrics=metrics, timings={"features": 1.5})

    monkeypatch.setattr(cnnzoo.transfer, "transfer", transfer)
    argv = ["transfer", str(tmp_path), "--mode", "features", "--out", str(tmp_path / "t")]
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"model": "efficientnet_lite0", "out": str(tmp_path / "t"),
                               **metrics, "timings_s": {"features": 1.5}, "final": {
                                   "loss": 0.5, "acc": 0.75, "top5": 1.0, "balanced_acc": 0.7,
                                   "macro_f1": 0.6}}
    assert out.count("\n") == 1 and "class  precision" in err
    assert main(argv) == 0  # text: the table and the summary on stdout, as before
    out, err = capsys.readouterr()
    assert out.startswith("class  precision") and "validation accuracy features 0.750" in out


def test_transfer_label_smoothing_is_an_option_as_docs_transfer_advises(tmp_path, monkeypatch,
                                                                          capsys):
    """docs/transfer.md: a fine-tuned net's probabilities are softened by label smoothing, so
    for a fixed probability threshold 'fine-tune with --label-smoothing 0'. transfer had no such
    option: the command stopped with 'unrecognized arguments: --label-smoothing 0'."""
    import cnnzoo.transfer
    from cnnzoo.errors import DataError
    from cnnzoo.transfer import FinetuneConfig

    configs = []

    def transfer(data, *, config, **kw):  # its settings are the point, not minutes of training
        configs.append(config)
        raise DataError("stop here")

    monkeypatch.setattr(cnnzoo.transfer, "transfer", transfer)
    argv = ["transfer", str(tmp_path), "--out", str(tmp_path / "t")]
    assert main([*argv, "--label-smoothing", "0"]) == 2
    assert main(argv) == 2
    assert [c.finetune.label_smoothing for c in configs] == [0.0, FinetuneConfig.label_smoothing]
    assert capsys.readouterr().err.count("error: stop here") == 2
    # Fine-tuning's, as --sam is: a features run notes it unused; a value past 1 is refused.
    assert main([*argv, "--mode", "features", "--label-smoothing", "0"]) == 2
    assert "note: --label-smoothing only applies to fine-tuning" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--label-smoothing", "1"])


def test_train_json_prints_the_summary_alone_on_stdout(tmp_path, monkeypatch, capsys):
    """train had no --json: a script parsed 'lenet5: best val_loss 0.0412 at epoch 9; final
    validation ...'. Its --json is those numbers as one document, alone on stdout."""
    import json
    from types import SimpleNamespace

    def train_classifier(name, data, config, *, show, **kwargs):
        show("class  precision  recall  support")
        return SimpleNamespace(
            monitor="val_loss", best_value=0.25, best_epoch=3, stopped_early=True, skipped=1,
            history=[{"epoch": e} for e in (1, 2, 3, 4, 5)],
            final={"loss": 0.3, "acc": 0.9, "top5": 1.0, "balanced_acc": 0.8, "macro_f1": 0.7},
            final_tta={}, accumulator=SimpleNamespace(num_classes=3))

    monkeypatch.setattr("cnnzoo.engine.run.train_classifier", train_classifier)
    out = str(tmp_path / "r")
    assert main(["train", "lenet5", "--data", "digits", "--out", out, "--json"]) == 0
    printed, err = capsys.readouterr()
    assert json.loads(printed) == {
        "model": "lenet5", "model_args": None, "out": out, "monitor": "val_loss", "best": 0.25,
        "best_epoch": 3,
        "epochs": 5,  # those the run trained: a small folder's are raised (--min-steps)
        # read from the run's last.pt, which this stand-in for a run did not write
        "optimizer": None, "lr": None, "batch_size": None,
        "stopped_early": True, "skipped": 1, "final_tta": None,
        "final": {"loss": 0.3, "acc": 0.9, "top5": 1.0, "balanced_acc": 0.8, "macro_f1": 0.7}}
    assert printed.count("\n") == 1 and "class  precision" in err
    assert main(["train", "lenet5", "--data", "digits", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("class  precision") and "lenet5: best val_loss 0.2500" in printed


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal: where progress bars are drawn."""

    def isatty(self) -> bool:
        return True


def test_no_progress_turns_off_the_bars_of_predict_evaluate_and_data_info(tmp_path, monkeypatch,
                                                                         grey_classes):
    """predict, evaluate and data info drew progress bars (on a terminal) but had no
    --no-progress, which train, transfer and demo have: a terminal recorded with `script`, or
    a notebook's `!cnnzoo ...`, filled with bar updates. They take it now, alike (segment's:
    test_segmentation)."""
    from cnnzoo import create_model
    from cnnzoo.engine.checkpoint import atomic_save

    data = grey_classes
    run = tmp_path / "run"
    run.mkdir()
    meta = {"model": "lenet5", "model_kwargs": {}, "num_classes": 2, "in_chans": 1,
            "img_size": 32, "class_names": ["cat", "dog"], "mean": [0.5], "std": [0.25],
            "dataset": str(data), "val_fraction": 0.2, "seed": 0}
    net = create_model("lenet5", num_classes=2, in_chans=1)
    atomic_save({"format": "cnnzoo-checkpoint-1", "model": net.state_dict(),
                 "task": "classification", "meta": meta}, run / "best.pt")
    for argv in (["predict", str(data), "--weights", str(run / "best.pt"), "--batch-size", "2"],
                 ["evaluate", str(run / "best.pt"), "--data", str(data)],
                 ["data", "info", str(data)]):
        for quiet in (False, True):
            term = _Terminal()
            monkeypatch.setattr("sys.stderr", term)
            assert main([*argv, "--no-progress"] if quiet else argv) == 0
            drawn = "\r" in term.getvalue()  # how tqdm redraws its line
            assert drawn is not quiet, (argv[0], quiet, term.getvalue())


def test_a_closed_stdout_or_stderr_reads_as_dev_null(tmp_path, grey_classes, monkeypatch,
                                                     capsys):
    """A job started with stderr closed (`cnnzoo train ... --json 2>&-`, a service without one:
    Python's sys.stderr is None) ended with exit status 1 and nothing said, its progress bar
    writing to None; `predict --json >&-` wrote its document to None, a traceback after the
    work. Either stream closed now reads as /dev/null, as print() already treated it, and is
    put back as it was."""
    import json
    import sys

    run = tmp_path / "run"
    monkeypatch.setattr(sys, "stderr", None)
    assert main(["train", "lenet5", "--data", str(grey_classes), "--epochs", "1", "--precision",
                 "fp32", "--channels-last", "off", "--no-tensorboard", "--out", str(run),
                 "--json"]) == 0  # fmt: skip
    assert sys.stderr is None
    assert json.loads(capsys.readouterr().out)["model"] == "lenet5"
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["predict", str(grey_classes), "--weights", str(run / "best.pt"), "--json"]) == 0
    assert sys.stdout is None


def test_a_name_over_the_file_systems_limit_is_one_line(tmp_path, grey_classes, capsys):
    """A path with a name over 255 bytes (a garbled line of a generated list, a long run name
    in --out) ended every command in pathlib's OSError traceback, exit status 1 (the status of
    an unreadable image); `train --out` printed a second traceback from its own resume hint.
    Now it is one line, exit status 2; in predict's list it is that image's own error."""
    from cnnzoo.commands.predict import expand_paths

    long = "b" * 300
    for argv in (["train", "lenet5", "--data", str(grey_classes), "--epochs", "1",
                  "--out", str(tmp_path / long)],
                 ["evaluate", str(tmp_path / f"{long}.pt")],
                 ["compare", str(tmp_path / long)]):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.endswith("File name too long: a name in the path is longer than the file "
                            "system takes (255 bytes): give a shorter one\n")
    good = grey_classes / "cat" / "0.png"
    assert expand_paths([tmp_path / f"{long}.png", good]) == [tmp_path / f"{long}.png", good]
