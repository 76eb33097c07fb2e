"""What a script reads from --json. A command that fails still prints one JSON document on
stdout: {"error": the line it said on stderr, "exit_status": its exit status} (stdout was
empty, and a script's json.loads(stdout) raised on "" instead of reading why). The same fact
has the same key in every command."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnzoo import cli
from cnnzoo.cli import main

SRC = str(Path(cli.__file__).resolve().parents[1])


def _failure(capsys) -> tuple[dict, str]:
    """The one JSON document on stdout, and the last line on stderr."""
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err.strip().splitlines()[-1]


def test_an_error_of_a_command_is_its_stderr_line_as_json(tmp_path, capsys):
    assert main(["models", "--pattern", "zzz", "--json"]) == 2
    doc, err = _failure(capsys)
    assert err.startswith("cnnzoo models: error: no model matches 'zzz'")
    assert doc == {"error": err, "exit_status": 2}
    # predict's result is a list of records; its failure is the one object, not a list
    assert main(["predict", str(tmp_path / "a.png"), "--weights", str(tmp_path / "none.pt"),
                 "--json"]) == 2  # fmt: skip
    doc, err = _failure(capsys)
    assert doc == {"error": err, "exit_status": 2} and "none.pt" in err
    # without --json stdout stays empty, as before
    assert main(["models", "--pattern", "zzz"]) == 2
    assert capsys.readouterr().out == ""


def test_a_mistake_in_the_options_is_json_once_the_command_is_known(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "lenet5", "--data", "digits", "--epochs", "x", "--json"])
    assert e.value.code == 2
    doc, err = _failure(capsys)
    assert doc == {"error": err, "exit_status": 2}
    assert err.startswith("cnnzoo train: error: argument --epochs: must be a whole number")
    with pytest.raises(SystemExit):  # an unknown option, said by the command's own parser
        main(["data", "info", "digits", "--json", "--bogus"])
    doc, err = _failure(capsys)
    assert doc == {"error": err, "exit_status": 2} and "--bogus" in err
    # no JSON where none was asked for, or the command has none (demo), or is unknown
    for argv in (["train", "lenet5", "--epochs", "x"], ["demo", "--per-class", "0", "--json"],
                 ["trian", "--json"], ["models", "--", "--json"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert capsys.readouterr().out == "", argv


@pytest.mark.parametrize(("raised", "status", "words"), [
    (OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl"), 2,
     "cnnzoo compare: error: runs/x/metrics.jsonl: No space left on device: free some space"),
    (KeyboardInterrupt(), 130, "cnnzoo compare: interrupted"),
    (cli.Terminated(), 143, "cnnzoo compare: terminated (SIGTERM)"),
])
def test_every_way_a_command_ends_early_is_json(raised, status, words, monkeypatch, capsys):
    """The handled file errors, Ctrl-C and SIGTERM are said in the same one place as errors."""
    import cnnzoo.commands.compare

    def run(args):
        raise raised

    monkeypatch.setattr(cnnzoo.commands.compare, "run", run)
    assert main(["compare", "runs/x", "--json"]) == status
    doc, err = _failure(capsys)
    assert doc == {"error": err, "exit_status": status} and err.startswith(words)


def test_ctrl_c_or_sigterm_while_the_command_line_is_parsed_is_json_too(monkeypatch, capsys):
    """Stopped before the command began (its modules being imported to build the parser),
    a --json command said so on stderr only (Ctrl-C), or was killed without a line (SIGTERM,
    whose handler was set only after the parse): both now end as they do later, with the
    line on stderr and the one JSON document on stdout."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["compare", "runs/x", "--json"]) == 130
    doc, err = _failure(capsys)
    assert doc == {"error": "cnnzoo: interrupted", "exit_status": 130} and err == doc["error"]
    assert main(["compare", "runs/x"]) == 130  # none asked for: none given
    assert capsys.readouterr().out == ""
    # SIGTERM in a process of its own: were it not caught, it would end pytest.
    code = ("import os, signal, time, cnnzoo.cli as c\n"
            "def parser():\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(30)\n"
            "c.build_parser = parser\nraise SystemExit(c.main(['compare', 'runs/x', '--json']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": SRC})
    assert out.returncode == 143, out
    assert json.loads(out.stdout) == {"error": "cnnzoo: terminated (SIGTERM)", "exit_status": 143}
    assert out.stderr == "\ncnnzoo: terminated (SIGTERM)\n"


@pytest.mark.parametrize("raised", [RuntimeError("boom"), OSError(errno.EIO, "boom")])
def test_a_bug_keeps_its_traceback_and_is_json_too(raised, monkeypatch, capsys):
    """A bug is a traceback and exit status 1, as before; stdout was empty, which a script
    could not tell from predict's exit 1 (some images unreadable, their records printed)."""
    import cnnzoo.commands.compare

    def run(args):
        raise raised

    monkeypatch.setattr(cnnzoo.commands.compare, "run", run)
    with pytest.raises(type(raised)):
        main(["compare", "runs/x", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_status"] == 1
    assert doc["error"].startswith(f"cnnzoo compare: internal error: {type(raised).__name__}: ")
    assert doc["error"].endswith("boom (a bug: see the traceback)")
    with pytest.raises(type(raised)):
        main(["compare", "runs/x"])
    assert capsys.readouterr().out == ""


def test_a_script_reads_the_failure_from_a_real_process(tmp_path):
    """As a CI script sees it: exit status 2, and stdout that json.loads reads."""
    env = {**os.environ, "PYTHONPATH": SRC, "CNNZOO_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "cnnzoo", "data", "info", str(tmp_path / "no"),
                           "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    doc = json.loads(done.stdout)
    assert doc == {"error": done.stderr.strip(), "exit_status": 2}
    assert "neither a built-in data set" in doc["error"]


def test_train_and_transfer_json_give_the_same_facts_under_the_same_keys(tmp_path, capsys,
                                                                         monkeypatch):
    """train --json said `model`, `out` and the final validation metrics under `final` (as
    evaluate names them); transfer --json had no `model` or `out`, and its metrics only as
    `val_acc`, `val_loss`, ... at the top: a script reading both needed two parsers. Transfer's
    `final` is what `cnnzoo evaluate --bundle` scores on the same validation images; evaluate
    counts `images` and `skipped` as data info, train and transfer do."""
    from PIL import Image

    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    g = torch.Generator().manual_seed(0)
    for k, cls in enumerate(("dark", "light")):
        (data / cls).mkdir(parents=True)
        for i in range(12):
            pixels = (torch.rand(32, 32, generator=g) * 60 + 40 + 120 * k).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(data / cls / f"{i}.png")
    quiet = ["--no-progress", "--precision", "fp32"]
    run, moved = tmp_path / "run", tmp_path / "moved"
    assert main(["train", "lenet5", "--data", str(data), "--epochs", "1", "--json", *quiet,
                 "--no-tensorboard", "--out", str(run)]) == 0  # fmt: skip
    trained = json.loads(capsys.readouterr().out)
    assert main(["transfer", str(data), "--weights", str(run / "best.pt"), "--mode",
                 "features", "--json", *quiet, "--out", str(moved)]) == 0  # fmt: skip
    moved_doc = json.loads(capsys.readouterr().out)
    for doc, out in ((trained, run), (moved_doc, moved)):
        assert doc["model"] == "lenet5" and doc["out"] == str(out) and doc["skipped"] == 0
    names = ("loss", "acc", "top5", "balanced_acc", "macro_f1")  # (top5 was train's alone)
    assert set(trained["final"]) == set(moved_doc["final"]) == set(names)
    assert main(["evaluate", "--bundle", str(moved / "bundle"), "--data", str(data),
                 "--json", "--no-progress"]) == 0  # fmt: skip
    scored = json.loads(capsys.readouterr().out)
    assert moved_doc["final"] == pytest.approx({k: scored[k] for k in names})
    # evaluate counted neither the images it scored nor the unreadable ones it left out: a held
    # out folder of 24 images and 2 broken files scored 24 with exit status 0 and no word of it
    held = tmp_path / "held"
    shutil.copytree(data, held)
    (held / "dark" / "notes.png").write_bytes(b"not a png")
    (held / "light" / "cut.png").write_bytes((held / "light" / "0.png").read_bytes()[:60])
    assert main(["data", "info", str(held), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2
    for given in (["--bundle", str(moved / "bundle")], [str(run / "best.pt")]):
        assert main(["evaluate", *given, "--data", str(held), "--json", "--no-progress"]) == 0
        scored = json.loads(capsys.readouterr().out)
        assert (scored["images"], scored["skipped"]) == (24, 2), given
        assert scored["images"] == sum(map(sum, scored["confusion"]))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_failure_whose_json_cannot_be_written_is_still_its_one_line(tmp_path):
    """stdout on a full disk (`> out.json`): the JSON of a failure cannot be written either;
    the line on stderr and exit status 2 stay, without a traceback of the second failure."""
    env = {**os.environ, "PYTHONPATH": SRC, "CNNZOO_CACHE": str(tmp_path / "cache")}
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "cnnzoo", "models", "--pattern", "zzz",
                               "--json"], stdout=full, stderr=subprocess.PIPE, text=True,
                              env=env, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("cnnzoo models: error: no model matches 'zzz'")
    assert done.stderr.count("\n") == 1


def test_an_unwritable_stdout_without_a_file_descriptor_is_no_traceback(monkeypatch, capsys):
    """The same from Python (a notebook's stdout has no file descriptor to point elsewhere)."""
    import io

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sys, "stdout", Full())
    assert main(["models", "--pattern", "zzz", "--json"]) == 2
    assert capsys.readouterr().err.startswith("cnnzoo models: error: no model matches 'zzz'")


def test_train_json_final_loss_is_the_plain_cross_entropy_evaluate_gives(tmp_path, capsys,
                                                                        monkeypatch):
    """train --json's `final` is named as `evaluate --json` names its metrics, but its `loss`
    was the log's val_loss, with the run's label smoothing (0.1 by default): 0.77 where
    `evaluate` of the same weights on the same images said 0.72. It is now the plain
    cross-entropy evaluate gives, with and without TTA; `best` stays the monitored val_loss."""
    from PIL import Image

    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    g = torch.Generator().manual_seed(0)
    for k, cls in enumerate(("dark", "mid", "light")):
        (data / cls).mkdir(parents=True)
        for i in range(10):
            pixels = (torch.rand(32, 32, generator=g) * 40 + 20 + 90 * k).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(data / cls / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "lenet5", "--data", str(data), "--epochs", "4", "--tta", "--json",
                 "--precision", "fp32", "--no-progress", "--no-tensorboard", "--out",
                 str(run)]) == 0  # fmt: skip
    trained = json.loads(capsys.readouterr().out)
    assert trained["best_epoch"] == 4  # (no early stopping: the final weights are last.pt's)
    for tta, final in (([], trained["final"]), (["--tta"], trained["final_tta"])):
        assert main(["evaluate", str(run / "last.pt"), "--json", "--no-progress", *tta]) == 0
        scored = json.loads(capsys.readouterr().out)
        assert final["acc"] == scored["acc"]
        assert final["loss"] == pytest.approx(scored["loss"], rel=1e-5), tta
    # the log's val_loss, against smoothed targets, is another number
    assert abs(trained["best"] - trained["final"]["loss"]) > 1e-3
