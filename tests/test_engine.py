"""The training engine: accuracy on real data, bit-identical resume after SIGKILL, VGG growth,
NaN stop, atomic checkpoints, optimizer groups and the precision chooser."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.cli import main
from cnnzoo.data import builtin
from cnnzoo.data.loader import BatchLoader
from cnnzoo.engine.checkpoint import atomic_save, load_checkpoint
from cnnzoo.engine.grow import grow_from
from cnnzoo.engine.loop import TTA_MODES, TrainConfig, Trainer, tta_views
from cnnzoo.engine.mixing import BatchMixer
from cnnzoo.engine.optim import StepSchedule, build_optimizer
from cnnzoo.engine.precision import Precision, choose_precision
from cnnzoo.engine.run import DataOptions, make_loaders, train_classifier
from cnnzoo.engine.task import ClassificationTask
from cnnzoo.errors import (
    DamagedCheckpointError,
    DataError,
    ModelOptionError,
    TrainingError,
    UsageError,
    WeightsError,
)
from cnnzoo.models import create_model
from cnnzoo.models.base import AuxOutputs
from cnnzoo.models.vgg import VGG_DENSE_LAYERS, vgg_conv_layers
from cnnzoo.transfer import FinetuneConfig

FP32 = {"precision": "fp32", "channels_last": "off", "progress": False, "tensorboard": False}


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine is shared; one thread is faster than two oversubscribed ones and keeps
    # results reproducible between the processes the resume test compares.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    return env


def _tiny_loader(n: int = 64, classes: int = 3, size: int = 8, batch: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    y = torch.randint(0, classes, (n,), generator=g)
    return BatchLoader(x, y, batch_size=batch, shuffle=True, mean=[0.5], std=[0.25], seed=seed)


class _TinyNet(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


# --------------------------------------------------------------------------- task


def test_the_classification_task_and_accumulator_print_in_a_line():
    """`bundle.evaluate(...)` in a notebook showed `accumulator=<cnnzoo.engine.task.
    ClassificationAccumulator object at 0x7f...>`, and a task `<... object at 0x...>`, where
    the segmentation ones print a line."""
    from cnnzoo.engine.task import ClassificationAccumulator

    acc = ClassificationAccumulator(3)
    assert repr(acc) == "ClassificationAccumulator(3 classes, 0 images)"
    acc.update(torch.eye(3)[[0, 1, 2, 1]], torch.tensor([0, 1, 2, 0]), torch.tensor(0.5))
    assert repr(acc) == "ClassificationAccumulator(3 classes, 4 images, acc 0.750)"
    assert repr(ClassificationTask(10, label_smoothing=0.1)) == (
        "ClassificationTask(10 classes, label_smoothing=0.1, monitor='loss')")
    assert repr(ClassificationTask(2, class_weights=[1.0, 3.0])) == (
        "ClassificationTask(2 classes, label_smoothing=0, class_weights, monitor='loss')")


def test_classification_task_against_hand_computed_values(tmp_path):
    task = ClassificationTask(3, label_smoothing=0.0)
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [0.0, 1.0, 0.5]])
    y = torch.tensor([0, 1, 0, 2])
    loss = task.loss(logits, y)
    lse = logits.exp().sum(1).log()
    expected = (lse - logits[torch.arange(4), y]).mean()
    assert torch.allclose(loss, expected)
    acc = task.metrics()
    acc.update(logits[:2], y[:2], task.loss(logits[:2], y[:2]))
    acc.update(logits[2:], y[2:], task.loss(logits[2:], y[2:]))
    m = acc.compute()
    assert m["acc"] == 0.5  # rows 0 and 1 right, 2 and 3 wrong
    assert abs(m["loss"] - float(expected)) < 1e-6  # a sample-weighted mean, not batch means
    assert acc.confusion.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 0]]
    pc = acc.per_class()
    assert pc["precision"] == [1.0, 0.5, 0.0] and pc["recall"] == [0.5, 1.0, 0.0]
    # per_class.csv quotes a class name with a comma: a CSV reader gets the table back.
    import csv

    from cnnzoo.engine.report import write_per_class_csv

    path = write_per_class_csv(acc, ["red, large", "b", "c"], tmp_path / "pc.csv")
    assert list(csv.reader(path.open())) == [
        ["class", "precision", "recall", "support"], ["red, large", "1.0000", "0.5000", "2"],
        ["b", "0.5000", "1.0000", "1"], ["c", "0.0000", "0.0000", "1"]]
    # The printed table: a class without an image (here 'd') has no recall, and says so.
    from cnnzoo.engine.report import per_class_table
    from cnnzoo.engine.task import ClassificationAccumulator

    four = ClassificationAccumulator(4)
    four.confusion[:3, :3] = acc.confusion
    assert per_class_table(four, ["a", "b", "c", "d"]) == [
        "class     precision  recall  support", "a             1.000   0.500        2",
        "b             0.500   1.000        1", "c             0.000   0.000        1",
        "d                 -       -        0", "(no image of d among these: not measured)",
        # recall (0.5 + 1 + 0) / 3; F1 a 2/3, b 2/3, c 0 (d has no image and no prediction)
        "balanced accuracy 0.500 (the mean recall), macro F1 0.444"]
    # Neither predicted nor present: no precision either (0/0; it read 0.000). A class with
    # images that is never predicted keeps scikit-learn's 0 ('c' above: each was missed).
    assert four.per_class()["recall"][3] is None and four.per_class()["precision"][3] is None
    rows = list(csv.reader(write_per_class_csv(four, list("abcd"), tmp_path / "4.csv").open()))
    assert rows[4] == ["d", "", "", "0"]
    # Label smoothing eps: (1 - eps) * CE + eps * mean over classes of -log p.
    smooth = ClassificationTask(3, label_smoothing=0.3).loss(logits, y)
    logp = logits.log_softmax(1)
    hand = (0.7 * -logp[torch.arange(4), y] + 0.3 * -logp.mean(1)).mean()
    assert torch.allclose(smooth, hand)
    # GoogLeNet-style auxiliary heads: main + aux_weight * sum(aux).
    aux = AuxOutputs(logits, logits.flip(0), logits * 2, 0.3)
    want = task.loss(logits, y) + 0.3 * (task.loss(logits.flip(0), y) + task.loss(logits * 2, y))
    assert torch.allclose(task.loss(aux, y), want)



def test_class_names_with_control_characters_print_escaped_and_are_kept_in_files(tmp_path):
    """A checkpoint's class named '\x1b[2J' cleared the screen in `cnnzoo evaluate`'s and
    train's per-class table, and one named 'a\nb' split its row in two. The table shows them
    escaped (`text.shown`); per_class.csv keeps the real names, the csv module quoting them."""
    import csv

    from cnnzoo.engine.report import per_class_table, write_per_class_csv
    from cnnzoo.engine.task import ClassificationAccumulator
    from cnnzoo.text import shown

    assert shown("e\x1b[2J\r\t\x7f\x9b\u2028caf\udce9 Würfel") == \
        "e\\x1b[2J\\r\\t\\x7f\\x9b\\u2028caf\udce9 Würfel"  # surrogates stay bytes
    acc = ClassificationAccumulator(2)
    acc.confusion[0, 0] = acc.confusion[1, 1] = 1
    names = ["e\x1b[2Jvil", "a\nb"]
    assert per_class_table(acc, names)[1:3] == ["e\\x1b[2Jvil      1.000   1.000        1",
                                                 "a\\nb             1.000   1.000        1"]
    rows = list(csv.reader(write_per_class_csv(acc, names, tmp_path / "pc.csv").open()))
    assert [r[0] for r in rows[1:]] == names


def test_bidi_controls_in_names_print_escaped_and_emoji_joiners_stay():
    """A file or class named 'invoice\u202egnp.exe' printed as 'invoiceexe.png': the right-to-
    left override reorders what follows ("Trojan Source"). Unicode's 12 Bidi_Control
    characters are escaped as the control characters are; other format characters are not
    (the zero-width joiner U+200D builds emoji and Indic letters)."""
    from cnnzoo.engine.report import per_class_table
    from cnnzoo.engine.task import ClassificationAccumulator
    from cnnzoo.text import shown

    bidi = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    assert shown(bidi) == "".join(f"\\u{ord(c):04x}" for c in bidi)
    assert shown("invoice\u202egnp.exe") == "invoice\\u202egnp.exe"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert shown(family) == family and shown("\u0915\u094d\u200d\u0937") == "\u0915\u094d\u200d\u0937"
    acc = ClassificationAccumulator(2)
    acc.confusion[0, 0] = acc.confusion[1, 1] = 1
    assert per_class_table(acc, ["cat\u202etac", "dog"])[1].startswith("cat\\u202etac  ")


def test_per_class_csv_writes_formula_like_class_names_as_text(tmp_path):
    """A class (a folder name, a manifest label) named '=HYPERLINK("http://x","y")' went into
    per_class.csv as it was, and Excel or LibreOffice opened it as a live formula. Names that
    begin with = + - @ tab or CR get a leading "'" (OWASP's advice); other names, the numbers
    and the printed table are as they were."""
    import csv

    from cnnzoo.engine.report import per_class_table, write_per_class_csv
    from cnnzoo.engine.task import ClassificationAccumulator
    from cnnzoo.text import spreadsheet_text

    names = ['=HYPERLINK("http://x","y")', "+A1", "-cat", "@SUM(A1)", "\tx", "\ry", "a=b", "'q"]
    acc = ClassificationAccumulator(len(names))
    for i in range(len(names)):
        acc.confusion[i, i] = 1
    rows = list(csv.reader(write_per_class_csv(acc, names, tmp_path / "pc.csv").open(newline="")))
    assert [r[0] for r in rows[1:]] == [
        '\'=HYPERLINK("http://x","y")', "'+A1", "'-cat", "'@SUM(A1)", "'\tx", "'\ry", "a=b", "'q"]
    assert all(r[1:] == ["1.0000", "1.0000", "1"] for r in rows[1:])
    assert spreadsheet_text("plain") == "plain" and spreadsheet_text("") == ""
    assert per_class_table(acc, names)[1].startswith('=HYPERLINK("http://x","y")  ')


def test_per_class_csv_keeps_class_names_that_are_numbers_as_numbers(tmp_path):
    """A binary set labelled -1 and +1 (folders '-1', '+1') had per_class.csv rows "'-1" and
    "'+1": a spreadsheet showed that text, neither the class's name nor a number, though a
    plain number is never run as a formula. Plain numbers are written as they are; a name that
    only starts like one ('-1+cmd', '-', '+1 cat') still gets the "'"."""
    import csv

    from cnnzoo.engine.report import write_per_class_csv
    from cnnzoo.engine.task import ClassificationAccumulator

    names = ["-1", "+1", "-0.5", "+.5", "-2e3", "-1+2", "-", "+1 cat", "-1e", "=1"]
    acc = ClassificationAccumulator(len(names))
    for i in range(len(names)):
        acc.confusion[i, i] = 1
    rows = list(csv.reader(write_per_class_csv(acc, names, tmp_path / "pc.csv").open(newline="")))
    assert [r[0] for r in rows[1:]] == [
        "-1", "+1", "-0.5", "+.5", "-2e3", "'-1+2", "'-", "'+1 cat", "'-1e", "'=1"]


def test_a_locale_that_is_not_utf8_writes_and_prints_every_class_name(tmp_path):
    """Under an ASCII or Latin-1 locale without Python's UTF-8 mode (PYTHONUTF8=0 LC_ALL=C
    here), `cnnzoo train` on a class named 'Würfel' ended in a UnicodeEncodeError traceback
    writing per_class.csv (in the locale's encoding), and `cnnzoo data info` / `evaluate` in
    one printing the class name to stdout."""
    from PIL import Image

    for cls in ("Würfel", "Kugel"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / "d" / cls / f"{i}.png")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cnnzoo.cli import main\n"
        "from cnnzoo.engine.report import write_per_class_csv\n"
        "from cnnzoo.engine.task import ClassificationAccumulator\n"
        "acc = ClassificationAccumulator(2)\n"
        "acc.confusion[0, 0] = acc.confusion[1, 1] = 1\n"
        "write_per_class_csv(acc, ['W\\xfcrfel', '\\u732b'], Path(sys.argv[1]) / 'pc.csv')\n"
        "sys.exit(main(['data', 'info', sys.argv[2]]))\n")
    env = dict(_env(), PYTHONUTF8="0", LC_ALL="C")
    env.pop("PYTHONIOENCODING", None)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(tmp_path / "d")],
                          env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-600:]
    assert (tmp_path / "pc.csv").read_text("utf-8").splitlines()[1:] == [
        "Würfel,1.0000,1.0000,1", "猫,1.0000,1.0000,1"]
    assert b"W\\xfcrfel" in done.stdout

def test_tied_logits_count_as_argmax_predicts_and_top5_never_below_top1():
    # bf16 logits tie often (8 bits of mantissa; 14 of 1,797 digits for an unsure LeNet-5).
    # topk's order among ties is unspecified: it took the other class of a tie for the
    # confusion matrix, so `evaluate` disagreed with the argmax of the same logits (scikit-learn,
    # `cnnzoo predict`, a bundle), and a top-1 hit could be a top-5 miss.
    from sklearn.metrics import accuracy_score, confusion_matrix

    from cnnzoo.engine.task import ClassificationAccumulator

    g = torch.Generator().manual_seed(0)
    for classes in (3, 7, 12):
        logits = torch.randint(0, 3, (400, classes), generator=g).float()  # full of ties
        y = torch.randint(0, classes, (400,), generator=g)
        acc = ClassificationAccumulator(classes)
        acc.update(logits, y, torch.tensor(0.0))
        pred = logits.numpy().argmax(1)  # numpy's argmax: the first of equal maxima
        assert acc.confusion.tolist() == confusion_matrix(y, pred, labels=range(classes)).tolist()
        assert acc.compute()["acc"] == accuracy_score(y, pred)
        # top-5 with ties broken the same way: the target's place in a stable descending sort.
        order = torch.sort(logits, dim=1, descending=True, stable=True).indices
        place = (order == y[:, None]).float().argmax(1)
        assert acc.compute()["top5"] == float((place < 5).double().mean())
    # Eight equal logits, the target the first of them: a hit at top-1, so at top-5 too.
    acc = ClassificationAccumulator(8)
    acc.update(torch.zeros(1, 8), torch.tensor([0]), torch.tensor(0.0))
    assert acc.compute()["acc"] == acc.compute()["top5"] == 1.0
    # A NaN output is no hit at top-5.
    acc = ClassificationAccumulator(8)
    acc.update(torch.full((1, 8), float("nan")), torch.tensor([3]), torch.tensor(0.0))
    assert acc.compute()["top5"] == 0.0


def test_class_weighted_loss_against_hand_computed_values_and_scikit_learns_weights():
    """--class-weight balanced: scikit-learn's n / (K n_k), applied as torch's
    CrossEntropyLoss(weight=): sum of w_y * CE over sum of w_y (also with label smoothing)."""
    from sklearn.utils.class_weight import compute_class_weight

    from cnnzoo.engine.task import balanced_weights, class_weights

    labels = torch.tensor([0] * 30 + [1] * 3 + [2] * 5)
    w = class_weights("balanced", labels, 3)
    sk = compute_class_weight("balanced", classes=labels.unique().numpy(), y=labels.numpy())
    assert torch.allclose(w, torch.as_tensor(sk)) and w.tolist()[1] == pytest.approx(38 / 9)
    assert class_weights("none", labels, 3) is None and class_weights(None, labels, 3) is None
    assert balanced_weights([4, 0, 4]).tolist() == [1.0, 0.0, 1.0]  # a class with no image
    with pytest.raises(UsageError, match=r"class_weight \(--class-weight\) must be one of none, "
                                         r"balanced, not 'auto'"):
        class_weights("auto", labels, 3)
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [0.0, 1.0, 0.5]])
    y = torch.tensor([0, 1, 0, 2])
    weights = [0.5, 4.0, 2.0]
    ce = logits.exp().sum(1).log() - logits[torch.arange(4), y]
    wy = torch.tensor([0.5, 4.0, 0.5, 2.0])
    task = ClassificationTask(3, class_weights=weights)
    assert torch.allclose(task.loss(logits, y), (wy * ce).sum() / wy.sum())
    assert not torch.allclose(task.loss(logits, y), ClassificationTask(3).loss(logits, y))
    logp = logits.log_softmax(1)
    per_class = -logp * torch.tensor(weights)  # smoothing's uniform part weighs each class
    hand = (0.7 * wy * ce + 0.3 * per_class.mean(1)).sum() / wy.sum()
    assert torch.allclose(ClassificationTask(3, label_smoothing=0.3,
                                             class_weights=weights).loss(logits, y), hand)
    with pytest.raises(ValueError, match="one weight per class"):
        ClassificationTask(3, class_weights=[1.0, 2.0])


def test_balanced_accuracy_and_macro_f1_agree_with_scikit_learn():
    """Accuracy hides a net that never finds the rare classes; the final reports add the mean
    recall and macro F1, as scikit-learn computes them."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from cnnzoo.engine.task import ClassificationAccumulator

    # 300 good parts, 12 of each defect: always 'good' is 0.89 accurate, balanced 0.25.
    y = torch.tensor([0] * 300 + [1] * 12 + [2] * 12 + [3] * 12)
    acc = ClassificationAccumulator(4)
    acc.update(F.one_hot(torch.zeros_like(y), 4).float(), y, torch.tensor(0.0))
    assert acc.compute()["acc"] == pytest.approx(300 / 336)
    assert acc.balanced()["balanced_acc"] == 0.25
    assert acc.summary()["macro_f1"] == pytest.approx(f1_score(y, y * 0, average="macro",
                                                               zero_division=0))
    g = torch.Generator().manual_seed(0)
    for classes in (2, 5, 9):
        y = torch.randint(0, classes - 1, (300,), generator=g)  # the last class has no image,
        logits = torch.randn(300, classes, generator=g)  # but is predicted now and then
        acc = ClassificationAccumulator(classes)
        acc.update(logits, y, torch.tensor(0.0))
        pred = logits.argmax(1)
        with warnings.catch_warnings():  # "y_pred contains classes not in y_true": meant
            warnings.simplefilter("ignore", UserWarning)
            want = balanced_accuracy_score(y, pred)
        assert acc.balanced()["balanced_acc"] == pytest.approx(want)
        assert acc.balanced()["macro_f1"] == pytest.approx(
            f1_score(y, pred, average="macro", zero_division=0))


# --------------------------------------------------------------------------- optimiser


def test_no_decay_on_norms_and_biases_frozen_left_out_and_group_lrs_keep_their_ratio():
    net = _TinyNet()
    net.conv.weight.requires_grad_(False)
    opt = build_optimizer(net, lr=0.1, weight_decay=1e-3,
                          groups=[{"params": net.bn.parameters(), "lr": 0.01}])
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert id(net.conv.weight) not in by_id
    assert by_id[id(net.fc.weight)]["weight_decay"] == 1e-3
    for p in (net.conv.bias, net.fc.bias, net.bn.weight, net.bn.bias):
        assert by_id[id(p)]["weight_decay"] == 0.0
    assert by_id[id(net.bn.weight)]["lr"] == 0.01 and by_id[id(net.fc.weight)]["lr"] == 0.1
    sched = StepSchedule(opt, 20, schedule="onecycle")
    for _ in range(7):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert abs(lrs["group0"] / lrs["rest"] - 0.1) < 1e-12


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_lenet5_reaches_95_percent_on_digits(tmp_path):
    cfg = TrainConfig(epochs=8, lr=0.05, **FP32)
    data = DataOptions("digits", batch_size=32)
    result = train_classifier("lenet5", data, cfg, out_dir=tmp_path, say=lambda m: None)
    assert result.final["acc"] >= 0.95, result.history
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == list(range(1, 9))
    for name in ("curves.png", "confusion.png", "per_class.csv", "best.pt", "last.pt"):
        assert (tmp_path / name).stat().st_size > 0
    # The confusion matrix counts every validation image once (359 of digits' 1,797).
    assert int(result.accumulator.confusion.sum()) == 359


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cnnzoo", "train", "lenet5", "--data", "digits", "--epochs",
            "5", "--batch-size", "32", "--lr", "0.05", "--precision", "fp32", "--channels-last",
            "off", "--threads", "1", "--no-progress", "--no-tensorboard", "--out", str(out),
            *extra]


@pytest.mark.slow
def test_a_small_folder_trains_in_batches_of_a_quarter_of_its_images(tmp_path, capsys):
    """`cnnzoo train` on a folder of a few dozen images took batches of 128: one step per
    epoch, ten in a run (150 exported shoes, LeNet-5: 0.43 validation accuracy, 0.77 in batches
    of 32). The default batch is now at most a quarter of the training images (at least 8),
    with SGD's default lr scaled by sqrt(batch / 128), said in a note; a resumed run keeps its
    batch and lr, and a --batch-size or --lr given is used as given."""
    from PIL import Image

    from cnnzoo.data.loader import small_set_batch
    from cnnzoo.engine.run import default_batch_size

    assert [small_set_batch(128, n) for n in (5, 20, 64, 400, 1000)] == [5, 8, 16, 100, 128]
    assert default_batch_size(64) == 16 and default_batch_size(60000) == 128
    data = tmp_path / "data"
    for cls, value in (("dark", 20), ("light", 220)):
        (data / cls).mkdir(parents=True)
        for i in range(40):
            Image.new("L", (32, 32), value + i).save(data / cls / f"{i}.png")
    out = tmp_path / "run"
    args = ["train", "lenet5", "--data", str(data), "--out", str(out), "--no-progress",
            "--epochs", "1"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    # SGD's default lr goes with it, by the square-root rule: 0.1 x sqrt(16 / 128).
    assert ("note: batches of 16 and lr 0.035 (0.1 x sqrt(16/128)) for 64 training images: 4 "
            "steps per epoch, where batches of 128 made 1; --batch-size N, --lr X (batch_size=, "
            "lr=) for others") in err
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["meta"]["batch_size"] == 16
    assert ckpt["config"]["lr"] == pytest.approx(0.1 * (16 / 128) ** 0.5, rel=1e-12)
    assert main([*args[:-1], "2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "batch_size" not in err and "note: batches" not in err  # no change, no note
    assert "lr (was" not in err  # nor in the learning rate (epochs do: 1, now 2)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["meta"]["batch_size"] == 16
    assert ckpt["config"]["lr"] == pytest.approx(0.1 * (16 / 128) ** 0.5, rel=1e-12)
    assert main([*args, "--overwrite", "--batch-size", "64"]) == 0
    assert "note: batches" not in capsys.readouterr().err
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["meta"]["batch_size"] == 64 and ckpt["config"]["lr"] == 0.1  # as given: as is
    # Resumed without --batch-size, it goes on in its batch at its own lr, not at the rate of
    # a default batch of 64 (0.1 x sqrt(64/128)) that it never had.
    assert main([*args[:-1], "2", "--resume"]) == 0
    assert "lr (was" not in capsys.readouterr().err
    assert load_checkpoint(out / "last.pt")["config"]["lr"] == 0.1
    assert main([*args, "--overwrite", "--lr", "0.2"]) == 0  # a chosen lr is not scaled
    assert "note: batches of 16 for 64" in capsys.readouterr().err
    assert load_checkpoint(out / "last.pt")["config"]["lr"] == 0.2



def test_a_small_folder_trains_for_at_least_min_steps(two_class_folder, tmp_path, capsys):
    """A default run on a folder of a few hundred images was 10 epochs of a handful of steps:
    120 training shoes made 40 steps in all. Without --epochs the epochs are now raised to
    make DEFAULT_MIN_STEPS steps (or --min-steps), said in a note, and patience with them;
    --epochs alone is exact; a bare --resume goes on for the run's own epochs."""
    from cnnzoo.data.loader import epoch_steps, epochs_for_steps
    from cnnzoo.engine.run import DEFAULT_MIN_STEPS

    assert [epoch_steps(n, 16) for n in (8, 16, 17, 64, 70)] == [1, 1, 1, 4, 4]
    assert epochs_for_steps(10, 300, 4) == 75 and epochs_for_steps(10, 30, 4) == 10
    with pytest.raises(SystemExit):  # --help names the default (written there, not imported)
        main(["train", "--help"])
    assert f"(default {DEFAULT_MIN_STEPS} without --epochs" in " ".join(
        capsys.readouterr().out.split())
    data = two_class_folder()  # 64 training images: batches of 16, 4 steps

    class Said(Exception):
        pass

    def say(line: str) -> None:
        if line.startswith("note: ") and " epochs of " in line:
            raise Said(line)  # the note and the config are all this part needs: no training

    with pytest.raises(Said) as said:
        train_classifier("lenet5", DataOptions(str(data)), TrainConfig(progress=False),
                         out_dir=None, say=say, min_steps=None)
    epochs = -(-DEFAULT_MIN_STEPS // 4)
    assert str(said.value) == (f"note: {epochs} epochs of 4 steps instead of 10, to make at "
                               f"least {DEFAULT_MIN_STEPS} steps; --epochs N for exactly N")
    out = tmp_path / "run"
    args = ["train", "lenet5", "--data", str(data), "--out", str(out), "--no-progress",
            "--no-tensorboard", "--precision", "fp32", "--channels-last", "off"]  # fmt: skip
    assert main([*args, "--epochs", "2", "--min-steps", "20", "--patience", "1"]) == 0
    # --epochs was given: the way to exactly N leaves out --min-steps; the note says what grew
    # (a QA run read "not improved for 15 epochs" after --patience 2 without knowing why)
    assert ("note: 5 epochs of 4 steps instead of 2, to make at least 20 steps (--patience 1 "
            "as 3); --epochs N without --min-steps for exactly N") in capsys.readouterr().err
    ckpt = load_checkpoint(out / "last.pt")
    # patience 1 of the 2 epochs asked for is 3 of the 5 run (ceil(1 x 5 / 2))
    assert ckpt["config"]["epochs"] == 5 and ckpt["config"]["patience"] == 3
    assert ckpt["meta"]["min_steps"] == 20
    assert main([*args, "--overwrite", "--epochs", "3"]) == 0  # --epochs alone: exactly
    assert " epochs of " not in capsys.readouterr().err
    assert len(load_checkpoint(out / "last.pt")["history"]) == 3
    # A bare --resume of a finished run goes on for its own 3 epochs (it took 10, the default,
    # and trained 7 more), and adds no steps.
    assert main([*args, "--resume"]) == 0
    assert "nothing left to train" in capsys.readouterr().err
    assert len(load_checkpoint(out / "last.pt")["history"]) == 3


def test_a_bare_resume_counts_patience_and_progressive_in_the_epochs_asked_for(
        two_class_folder, tmp_path, capsys):
    """A run raised from 10 epochs to 15 ran --patience 2 as 3; resumed with the same command
    and --resume, the 2 was taken as 2 of the 15 (a warning, and a run that stopped sooner
    than it would have). A --resume with --min-steps cut a run of 6 epochs to the default 10
    raised; and a run of 12 resumed with its --progressive 32:10 was refused as covering all
    10 epochs. Without --epochs, a resumed run's epochs are its own in each case."""
    data = two_class_folder()  # 64 training images: batches of 16, 4 steps
    out = tmp_path / "run"
    args = ["train", "lenet5", "--data", str(data), "--out", str(out), "--no-progress",
            "--no-tensorboard", "--precision", "fp32", "--channels-last", "off"]  # fmt: skip
    assert main([*args, "--min-steps", "60", "--patience", "2"]) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["config"]["epochs"] == 15 and ckpt["config"]["patience"] == 3
    assert ckpt["meta"]["asked_epochs"] == 10
    capsys.readouterr()
    assert main([*args, "--patience", "2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "warning: resuming" not in err and " epochs of " not in err
    assert load_checkpoint(out / "last.pt")["config"]["patience"] == 3

    assert main([*args, "--overwrite", "--epochs", "6"]) == 0
    capsys.readouterr()
    assert main([*args, "--resume", "--min-steps", "20"]) == 0  # 6 x 4 steps: 20 are made
    err = capsys.readouterr().err
    assert "warning: resuming" not in err and "nothing left to train" in err
    assert len(load_checkpoint(out / "last.pt")["history"]) == 6

    size = ["--img-size", "64", "--progressive", "32:10"]
    assert main([*args, *size, "--overwrite", "--epochs", "12"]) == 0
    capsys.readouterr()
    assert main([*args, *size, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "warning: resuming" not in err and "nothing left to train" in err


def test_the_small_set_batch_note_under_torchrun_counts_each_process_images(tmp_path):
    """Under torchrun (2 processes, 160 training images) the note read 'batches of 20 for 80
    training images' under a data line of train=160, as if half the images were lost: the
    batch and the count are each process's, and the note now says so."""
    from PIL import Image

    from cnnzoo.engine.distributed import DistContext

    for cls, value in (("dark", 20), ("light", 220)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(40):
            Image.new("L", (32, 32), value + i).save(tmp_path / "data" / cls / f"{i}.png")

    class Said(Exception):
        pass

    def say(line: str) -> None:
        if line.startswith("note: batches"):
            raise Said(line)  # the note is all this test needs: no process group to train in

    config = TrainConfig(epochs=1, progress=False)
    for world, words in ((1, "for 64 training images"),
                         (2, "for each process's 32 training images (2 processes)")):
        with pytest.raises(Said) as said:
            train_classifier("lenet5", DataOptions(str(tmp_path / "data")), config,
                             out_dir=None, dist=DistContext(rank=0, world=world), say=say)
        batch = 16 if world == 1 else 8
        assert str(said.value).startswith(f"note: batches of {batch} {words}: 4 steps per epoch")


def test_sigkill_then_resume_gives_bit_identical_weights(tmp_path):
    ref = subprocess.Popen(_train_cmd(tmp_path / "ref"), env=_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    killed = subprocess.Popen(_train_cmd(tmp_path / "run"), env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and killed.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            killed.send_signal(signal.SIGKILL)  # mid-way through epoch 3
            break
        time.sleep(0.05)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = load_checkpoint(tmp_path / "run" / "last.pt")["epoch"]
    assert 2 <= done < 5
    resumed = subprocess.run(_train_cmd(tmp_path / "run", "--resume"), env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {done}" in resumed.stderr
    assert ref.wait(timeout=300) == 0
    a = load_checkpoint(tmp_path / "ref" / "last.pt")
    b = load_checkpoint(tmp_path / "run" / "last.pt")
    assert a["epoch"] == b["epoch"] == 5
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(),
                      strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # One metrics line per epoch, also after the kill.
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2, 3, 4, 5]


class _NaNAfter(ClassificationTask):
    """Cross-entropy that turns NaN after `good` training steps (a diverging run)."""

    def __init__(self, good: int) -> None:
        super().__init__(3)
        self.calls, self.good = 0, good

    def loss(self, outputs, targets):
        loss = super().loss(outputs, targets)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls > self.good:
                return loss * float("nan")
        return loss


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    loader = _tiny_loader()  # 4 steps per epoch
    net = _TinyNet()
    cfg = TrainConfig(epochs=4, lr=0.05, log_every=1, **FP32)
    trainer = Trainer(net, _NaNAfter(good=6), loader, config=cfg, out_dir=tmp_path)
    with pytest.raises(TrainingError) as err:
        trainer.fit()
    msg = str(err.value)
    assert "\n" not in msg and "NaN/inf" in msg and "epoch 2" in msg and "last.pt" in msg
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path):
    # A NaN in epoch 1: no empty metrics.jsonl or tb/, not even the folder.
    cfg = TrainConfig(epochs=2, lr=0.05, log_every=1, **{**FP32, "tensorboard": True})
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="no checkpoint was written$"):
        Trainer(_TinyNet(), _NaNAfter(good=2), _tiny_loader(), config=cfg, out_dir=out).fit()
    assert not out.exists()

    # Into a folder that holds a run (Trainer replaces by default): the old run is untouched
    # until the new one has a checkpoint, then none of its files (old tb events) remain.
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=out).fit()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    old_events = sorted((out / "tb").iterdir())
    with pytest.raises(TrainingError, match=f"the run already in {out} is left as it was"):
        Trainer(_TinyNet(), _NaNAfter(good=2), _tiny_loader(), config=cfg, out_dir=out).fit()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted((out / "tb").iterdir()) == old_events
    cfg.epochs = 1
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=out).fit()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    events = sorted((out / "tb").iterdir())
    assert len(events) == 1 and events[0] not in old_events
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_a_folder_holding_a_run_is_refused_without_overwrite(tmp_path):
    cfg = TrainConfig(epochs=1, lr=0.05, **FP32)
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=tmp_path).fit()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(TrainingError) as err:
        Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
                out_dir=tmp_path).fit(overwrite=False)  # fmt: skip
    # The library's spelling too: a notebook's fit() was told of --resume and --overwrite alone.
    assert str(err.value) == (f"{tmp_path} holds a run (last.pt): pass --resume (resume=True) to "
                              "continue it, --overwrite (overwrite=True) to replace it, or another "
                              "--out")  # fmt: skip
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # Resuming it is fine; so is a new folder.
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
            out_dir=tmp_path).fit(resume=True, overwrite=False)  # fmt: skip
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
            out_dir=tmp_path / "new").fit(overwrite=False)  # fmt: skip
    # A run kept as best.pt and its log only (last.pt deleted to save space) is a run too,
    # and it cannot be resumed.
    (tmp_path / "new" / "last.pt").unlink()
    kept = {p.name: p.read_bytes() for p in (tmp_path / "new").iterdir() if p.is_file()}
    for resume, message in ((False, "holds a run's files (best.pt, metrics.jsonl) but no "
                                    "last.pt to resume: pass --overwrite (overwrite=True)"),
                            (True, "has no last.pt to resume (it holds best.pt, metrics.jsonl")):
        with pytest.raises(TrainingError, match=re.escape(message)):
            Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
                    out_dir=tmp_path / "new").fit(resume=resume, overwrite=False)  # fmt: skip
    assert {p.name: p.read_bytes() for p in (tmp_path / "new").iterdir() if p.is_file()} == kept
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(UsageError, match="afile is a file, not a folder: choose another"):
            Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
                    out_dir=out).fit()  # fmt: skip


def test_an_out_folder_behind_a_link_to_nothing_is_one_line(tmp_path):
    """runs -> /scratch/runs with the scratch disk not mounted (or its folder removed): every
    command's first write made the folder, and mkdir's FileExistsError traceback came after
    the work (transfer: after its features). Refused first, naming the link."""
    (tmp_path / "runs").symlink_to(tmp_path / "scratch" / "runs")
    cfg = TrainConfig(epochs=1, lr=0.05, **FP32)
    for out in (tmp_path / "runs", tmp_path / "runs" / "a"):
        with pytest.raises(UsageError) as err:
            Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
                    out_dir=out).fit()  # fmt: skip
        assert str(err.value) == (
            f"--out {out}: {tmp_path / 'runs'} is a link to {tmp_path / 'scratch' / 'runs'}, "
            "which does not exist: create that folder (or mount its disk), or choose another "
            "folder")  # fmt: skip
    (tmp_path / "scratch" / "runs").mkdir(parents=True)  # mounted: the run goes there
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
            out_dir=tmp_path / "runs" / "a").fit()  # fmt: skip
    assert (tmp_path / "scratch" / "runs" / "a" / "last.pt").is_file()


def test_a_folder_another_run_is_writing_into_is_refused_and_a_finished_run_frees_it(
        tmp_path):
    """Two batch jobs given one --out both passed the 'holds a run' check while the folder was
    empty, then wrote, renamed and deleted each other's checkpoints; one died with 'cannot
    write best.pt (No such file or directory): free some space'. The second is now refused at
    its first write, in one line, before writing anything."""
    import fcntl

    from cnnzoo.paths import LOCK_FILE

    cfg = TrainConfig(epochs=1, lr=0.05, **FP32)
    out = tmp_path / "run"
    out.mkdir()
    # The other run: any process holding the lock (an open file of its own, as a job's is).
    other = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)
    with pytest.raises(UsageError) as err:
        Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
                out_dir=out).fit()  # fmt: skip
    assert str(err.value) == (f"--out {out}: another cnnzoo run is writing into it: wait for "
                              "it to end, or choose another --out")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing of this run's
    os.close(other)  # the other run ended (the OS lets go of its lock however it ends)
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=out).fit()
    assert "last.pt" in {p.name for p in out.iterdir()}
    assert not (out / LOCK_FILE).exists()  # a finished run leaves no lock behind
    # A run into the folder that finished while this one started is refused like any other.
    late = Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=out)
    (out / "last.pt").rename(tmp_path / "last.pt")  # as it was when `late` checked ...
    import cnnzoo.engine.loop as loop

    real_hold = loop.hold_folder

    def finished_meanwhile(folder):  # ... and is again when it first writes
        (tmp_path / "last.pt").rename(out / "last.pt")
        real_hold(folder)

    loop.hold_folder = finished_meanwhile
    try:
        with pytest.raises(TrainingError, match="holds a run"):
            late.fit(overwrite=False)
    finally:
        loop.hold_folder = real_hold
    assert not (out / LOCK_FILE).exists()


def test_a_file_system_without_locks_is_left_without_the_lock_file(tmp_path, monkeypatch):
    """Where flock fails (NFS without its lock daemon: ENOLCK) the run goes unguarded, and
    left its .cnnzoo.lock behind for good: in a finished run's folder, and as the only file
    of a folder the run made and wrote nothing into (a NaN in epoch 1)."""
    import errno
    import fcntl

    from cnnzoo.paths import LOCK_FILE

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "run"
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(),
            config=TrainConfig(epochs=1, lr=0.05, **FP32), out_dir=out).fit()  # fmt: skip
    assert "last.pt" in {p.name for p in out.iterdir()}
    assert not (out / LOCK_FILE).exists()
    diverging = TrainConfig(epochs=1, lr=float("inf"), **FP32)
    with pytest.raises(TrainingError, match="NaN"):
        Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=diverging,
                out_dir=tmp_path / "nan").fit()  # fmt: skip
    assert not (tmp_path / "nan").exists()


def test_a_run_that_writes_nothing_leaves_no_folder_it_made_nor_their_parents(tmp_path):
    """The --out lock makes its folder with its parents; a run that failed before writing (a
    NaN in epoch 1) removed the folder but left the parents it had made: runs/ of runs/a, and
    transfer's OUT/finetune/ of OUT/finetune/head, which then refused the retry."""
    diverging = TrainConfig(epochs=1, lr=float("inf"), **FP32)
    with pytest.raises(TrainingError, match="NaN"):
        Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=diverging,
                out_dir=tmp_path / "runs" / "a").fit()  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_a_run_in_a_folder_named_in_latin1_is_read_back_by_evaluate_and_convert(tmp_path):
    """A run written into a folder named in Latin-1 bytes: its checkpoints were written, but
    `evaluate` and `compare` map them (torch.load mmap=True), which takes only UTF-8 names:
    'cannot read checkpoint r\udce9s/last.pt (UnicodeEncodeError): is it a file written by
    `cnnzoo train`?'. Its `convert` output (.safetensors) was not readable either."""
    from cnnzoo.weights.files import read_checkpoint, save_safetensors, stored_metadata

    out = tmp_path / os.fsdecode(b"r\xe9s")
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(),
            config=TrainConfig(epochs=1, lr=0.05, **FP32), out_dir=out).fit()  # fmt: skip
    ckpt = load_checkpoint(out / "last.pt", mmap=True)
    assert ckpt["epoch"] == 1
    weights = {k: v.clone() for k, v in ckpt["model"].items()}
    save_safetensors(weights, out / "w.safetensors", {"format": "cnnzoo", "model": "tiny"})
    assert stored_metadata(out / "w.safetensors")["model"] == "tiny"
    read = read_checkpoint(out / "w.safetensors").tensors
    assert all(torch.equal(read[k], v) for k, v in weights.items())


def test_sam_steps_with_the_gradient_at_the_worst_nearby_point():
    """--sam RHO: one SGD step moves w by -lr times the gradient at w + RHO * g / ||g||, g the
    gradient at w (Foret et al. 2021), computed here by hand with autograd; and the weights
    it steps from are w, not the perturbed ones."""
    loader = _tiny_loader(n=16, batch=16)
    x, y = next(iter(loader))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    w0 = [p.detach().clone() for p in net.parameters()]

    def loss_at(w):
        return F.cross_entropy(x.flatten(1) @ w[0].T + w[1], y)

    w = [t.clone().requires_grad_() for t in w0]
    g = torch.autograd.grad(loss_at(w), w)
    norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
    worst = [(t + 0.05 * gi / norm).requires_grad_() for t, gi in zip(w0, g, strict=True)]
    g_worst = torch.autograd.grad(loss_at(worst), worst)
    lr = 0.5
    want = [t - lr * gi for t, gi in zip(w0, g_worst, strict=True)]
    plain = [t - lr * gi for t, gi in zip(w0, g, strict=True)]
    cfg = TrainConfig(epochs=1, optimizer="sgd", lr=lr, momentum=0.0, nesterov=False,
                      weight_decay=0.0, schedule="constant", sam=0.05, **FP32)
    Trainer(net, ClassificationTask(3), loader, config=cfg).fit()
    got = [p.detach() for p in net.parameters()]
    for a, b, c in zip(got, want, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(a, c, rtol=1e-5, atol=1e-6)  # not the plain step
    # BatchNorm's running statistics average the batches once, as without SAM: the pass at the
    # perturbed weights leaves them be.
    stats = []
    for rho in (0.0, 0.05):
        torch.manual_seed(0)
        bn_net = _TinyNet()
        cfg = TrainConfig(epochs=1, optimizer="sgd", lr=lr, momentum=0.0, nesterov=False,
                          weight_decay=0.0, schedule="constant", sam=rho, **FP32)
        Trainer(bn_net, ClassificationTask(3), _tiny_loader(n=16, batch=16), config=cfg).fit()
        stats.append((bn_net.bn.running_mean.clone(), bn_net.bn.running_var.clone()))
        assert bn_net.bn.momentum == 0.1  # put back
    torch.testing.assert_close(stats[0], stats[1])
    with pytest.raises(ValueError, match="sam is a radius >= 0"):
        TrainConfig(sam=-0.1)


def test_a_checkpoint_of_a_newer_cnnzoo_says_to_upgrade(tmp_path, capsys):
    """The format tag of a checkpoint was never read: one of a newer format (which this cnnzoo
    might misread) was resumed, evaluated and predicted with as if it were its own, and
    `--resume` on a file it could not read said to start the run again with --overwrite."""
    import cnnzoo
    from cnnzoo.engine.run import training_checkpoint

    out, data = tmp_path / "run", tmp_path / "data"
    _photo_folder(data)
    (data / "empty").rmdir()
    train = ["train", "lenet5", "--data", str(data), "--epochs", "1", "--batch-size", "8",
             "--precision", "fp32", "--channels-last", "off", "--no-progress",
             "--no-tensorboard", "--out", str(out)]  # fmt: skip
    assert main(train) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert (ckpt["format"], ckpt["cnnzoo_version"]) == ("cnnzoo-checkpoint-1", cnnzoo.__version__)
    for name in ("last.pt", "best.pt"):
        atomic_save({**torch.load(out / name, weights_only=True), "format": "cnnzoo-checkpoint-2",
                     "cnnzoo_version": "9.0.0"}, out / name)  # fmt: skip
    kept = (out / "last.pt").read_bytes()
    capsys.readouterr()
    says = (f"was written by cnnzoo 9.0.0 in format cnnzoo-checkpoint-2; this cnnzoo "
            f"({cnnzoo.__version__}) reads cnnzoo-checkpoint-1: upgrade cnnzoo to use it")
    for argv in (["evaluate", str(out / "best.pt")],
                 [*(a if a != "1" else "2" for a in train), "--resume"],
                 ["predict", str(data / "cat" / "0.png"), "--weights", str(out / "best.pt")],
                 ["convert", str(out / "best.pt"), str(tmp_path / "w.safetensors")]):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        errors = [ln for ln in err.splitlines() if "error:" in ln]
        assert len(errors) == 1 and errors[0].endswith(says), errors
        assert "data:" not in err  # said before the data load, slow for a big folder
    with pytest.raises(WeightsError, match=re.escape(says)):
        training_checkpoint(out / "best.pt")
    assert (out / "last.pt").read_bytes() == kept
    # Other tags are read as before: the format of a file written by this cnnzoo, or none.
    atomic_save({**torch.load(out / "best.pt", weights_only=True), "format":
                 "cnnzoo-checkpoint-1"}, out / "best.pt")  # fmt: skip
    assert main(["evaluate", str(out / "best.pt")]) == 0


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """A real `cnnzoo train` checkpoint of lenet5 on a tiny folder, for tests that edit it."""
    from PIL import Image

    root = tmp_path_factory.mktemp("lenet_run")
    data, out = root / "data", root / "run"
    for cls, level in (("cat", 50), ("dog", 190)):
        (data / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (12, 12), level + i).save(data / cls / f"{i}.png")
    assert main(["train", "lenet5", "--data", str(data), "--epochs", "1", "--batch-size", "4",
                 "--precision", "fp32", "--channels-last", "off", "--no-progress",
                 "--no-tensorboard", "--out", str(out)]) == 0  # fmt: skip
    return out / "best.pt", data


@pytest.mark.parametrize("edit, says", [
    (lambda c: c.update(meta=[1, 2]), "its meta must be a dict, not [1, 2]"),
    (lambda c: c.update(model=[1]), "its model must be a state_dict"),
    (lambda c: c.update(precision="bf16"), "its precision must be a dict with dtype bf16 or fp32"),
    (lambda c: c["meta"].update(img_size="x"), "meta img_size must be a whole number >= 1"),
    (lambda c: c["meta"].update(img_size=10**9), "meta img_size must be at most 4096"),
    (lambda c: c["meta"].update(mean="abc"), "meta mean must be a list of numbers"),
    (lambda c: c["meta"].update(std=[float("nan")]), "meta std must be a list of numbers"),
    (lambda c: c["meta"].update(model_kwargs=[1]), "meta model_kwargs must be a dict"),
    (lambda c: c["meta"].update(class_names=[{}, {}]), "meta class_names must be a list of names"),
    (lambda c: c["meta"].update(model=5), "meta model must be a string"),
    (lambda c: c["meta"].update(mean=[0.5] * 3), "meta mean must be a list of numbers, one per "
                                                "channel (1), not [0.5, 0.5, 0.5]"),
    (lambda c: c["meta"].update(class_names=["cat"]), "meta class_names lists 1 class, its "
                                                      "num_classes is 2"),
    # Fits its weights only when built: compared on the meta device, no 10^6-channel conv made.
    (lambda c: (c["meta"].update(in_chans=10**6), c["meta"].pop("mean"), c["meta"].pop("std")),
     "does not fit the model its meta describes: 0 missing, 0 unexpected, 1 mis-shaped"),
])  # fmt: skip
def test_a_checkpoint_with_a_damaged_meta_is_one_line_everywhere(lenet_run, tmp_path, capsys,
                                                                 edit, says):  # fmt: skip
    """A checkpoint from elsewhere (downloaded, sent, edited) is read with weights_only, but
    its meta was trusted: a list for the meta, a string for the image size or a list for the
    model options ended in a traceback in evaluate, predict and convert (AttributeError,
    TypeError, ValueError; an image size of 10^9 a MemoryError; 10^6 input channels
    load_state_dict's RuntimeError). Each is one line naming the file and the field."""
    from PIL import Image

    best, data = lenet_run
    ckpt = torch.load(best, weights_only=True)
    edit(ckpt)
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    img = tmp_path / "x.png"
    Image.new("L", (12, 12), 90).save(img)
    for argv in (["evaluate", str(bad), "--data", str(data)],
                 ["predict", str(img), "--weights", str(bad)],
                 ["convert", str(bad), str(tmp_path / "w.safetensors")]):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0] and says in err[0], (argv, err)


def test_resume_warns_when_the_data_splits_into_other_validation_images(tmp_path, capsys):
    """As many images as before, but other ones in validation (a manifest read in another
    order, a training image swapped for another): resuming said nothing, and the remaining
    epochs validated on images the first ones trained on."""
    meta = {"model": "tiny", "model_kwargs": {"width": 4}, "dataset": "m.csv",
            "class_names": ["a", "b", "c"], "num_classes": 3, "in_chans": 1, "loss": "ce",
            "val_files": "0123abcd"}
    cfg = TrainConfig(epochs=1, lr=0.05, **FP32)
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=tmp_path,
            meta=meta).fit()  # fmt: skip
    capsys.readouterr()
    cfg.epochs = 2
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=tmp_path,
            meta={**meta, "val_files": "4567ef01"}).fit(resume=True)  # fmt: skip
    assert ("warning: resuming with different epochs (was 1, now 2), validation images (the "
            "data splits otherwise now) than the checkpoint") in capsys.readouterr().err
    cfg.epochs = 3  # the same split: no word of it
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=tmp_path,
            meta=meta).fit(resume=True)  # fmt: skip
    assert "validation images" not in capsys.readouterr().err


def test_resume_refuses_another_model_data_or_options_and_warns_of_another_loss(tmp_path,
                                                                               capsys):
    meta = {"model": "tiny", "model_kwargs": {"width": 4}, "dataset": "digits",
            "class_names": ["a", "b", "c"], "num_classes": 3, "in_chans": 1, "loss": "ce"}
    cfg = TrainConfig(epochs=1, lr=0.05, **FP32)
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=tmp_path,
            meta=meta).fit()  # fmt: skip
    kept = (tmp_path / "last.pt").read_bytes()
    cases = [
        ({"model": "wide"}, "is tiny, not wide: resume it as `cnnzoo train tiny ... --resume`"),
        ({"model_kwargs": {"width": 8}}, "was trained with other model options (width=4, not "
                                         "width=8): resume with the checkpoint's options"),
        ({"dataset": "fashion-mnist"}, "was trained on digits, not fashion-mnist: resume on "
                                       "digits"),
        ({"class_names": ["a", "b", "d"]}, "was trained on the classes a, b, c, and the data "
                                           "now has a, b, d: resume with the data it was "
                                           "trained on"),
    ]
    for change, why in cases:
        with pytest.raises(TrainingError) as err:
            Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
                    out_dir=tmp_path, meta={**meta, **change}).fit(resume=True)  # fmt: skip
        assert str(err.value) == (f"the checkpoint in {tmp_path} {why}, or start a new run with "
                                  "another --out")
    # A model the meta cannot tell apart: still one line, not load_state_dict's traceback.
    with pytest.raises(TrainingError) as err:
        Trainer(_TinyNet(classes=5), ClassificationTask(5), _tiny_loader(classes=5), config=cfg,
                out_dir=tmp_path, meta={}).fit(resume=True)  # fmt: skip
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"the checkpoint in {tmp_path} does not fit this "
                                              "model (Error(s) in loading state_dict")
    assert (tmp_path / "last.pt").read_bytes() == kept  # nothing trained or written
    capsys.readouterr()
    cfg.epochs = 2
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=tmp_path,
            meta={**meta, "loss": "dice"}).fit(resume=True)  # fmt: skip
    assert ("warning: resuming with different epochs (was 1, now 2), loss (was ce, now dice) "
            "than the checkpoint") in capsys.readouterr().err
    # A new --lr / weight decay is what the resumed epochs use (loading the optimizer's state
    # used to bring back the old ones, while the warning named the new); another optimizer is
    # refused in one line, as its state cannot continue.
    cfg.epochs, cfg.lr, cfg.weight_decay, cfg.schedule = 3, 0.001, 0.1, "constant"
    run = Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
                  out_dir=tmp_path, meta=meta).fit(resume=True)  # fmt: skip
    assert run.history[-1]["lr"] == pytest.approx(0.001)
    groups = load_checkpoint(tmp_path / "last.pt")["optimizer"]["param_groups"]
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(0.001, 0.1), (0.001, 0.0)]
    cfg.epochs, cfg.optimizer = 4, "adamw"
    with pytest.raises(TrainingError, match="was trained with optimizer=sgd, and its optimizer "
                                            "state cannot continue with optimizer=adamw"):
        Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=tmp_path,
                meta=meta).fit(resume=True)  # fmt: skip


def test_resuming_with_other_erasing_or_progressive_resizing_warns(tmp_path):
    """--erase and --progressive change what the remaining epochs train on, as --augment does,
    but a resume with other values went on without the warning the other settings give."""
    meta = {"model": "tiny", "erase": 0.0, "progressive": None}
    cfg = TrainConfig(epochs=1, lr=0.05, **FP32)
    lines: list[str] = []
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=tmp_path,
            meta=meta).fit()  # fmt: skip
    cfg.epochs = 2
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=tmp_path,
            meta={**meta, "erase": 0.5, "progressive": [16, 1]}, say=lines.append
            ).fit(resume=True)  # fmt: skip
    assert ("warning: resuming with different epochs (was 1, now 2), erase (was 0.0, now 0.5), "
            "progressive (was off, now 16:1) than the checkpoint; the result will differ from an "
            "uninterrupted run") in lines
    # A U-Net's recipe (the engine sees only the meta): elastic deformation, jitter.
    meta = {"model": "tiny", "elastic": 0.0, "jitter": 0.1}
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
            out_dir=tmp_path / "seg", meta=meta).fit()  # fmt: skip
    cfg.epochs = 3
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
            out_dir=tmp_path / "seg", meta={**meta, "elastic": 0.5}, say=lines.append
            ).fit(resume=True)  # fmt: skip
    assert any("epochs (was 2, now 3), elastic (was 0.0, now 0.5) than" in line
               for line in lines), lines


def test_a_precision_given_on_resume_is_used_and_warned_of(tmp_path):
    """`--resume --precision bf16` on an fp32 run printed 'precision: fp32 NCHW (checkpoint)'
    and trained on in fp32 without a word. A choice given explicitly now applies to the
    remaining epochs, with the warning other changed settings get; 'auto' keeps the run's."""
    lines: list[str] = []
    cfg = TrainConfig(epochs=1, lr=0.05, **FP32)

    def fit(**change):
        Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(),
                config=TrainConfig(**{**cfg.to_dict(), **change}), out_dir=tmp_path,
                say=lines.append).fit(resume=True)  # fmt: skip
        return load_checkpoint(tmp_path / "last.pt")["precision"]

    fit()
    lines.clear()
    saved = fit(epochs=2, precision="bf16", channels_last="auto")
    assert (saved["dtype"], saved["channels_last"]) == ("bf16", False)
    assert ("warning: resuming with different epochs (was 1, now 2), precision (was fp32 NCHW, "
            "now bf16 NCHW) than the checkpoint; the result will differ from an uninterrupted "
            "run") in lines
    assert "precision: bf16 NCHW (forced)" in lines
    lines.clear()
    saved = fit(epochs=3, precision="auto", channels_last="on")
    assert (saved["dtype"], saved["channels_last"]) == ("bf16", True)
    assert any("precision (was bf16 NCHW, now bf16 channels_last)" in ln for ln in lines)
    lines.clear()
    saved = fit(epochs=3, precision="auto", channels_last="auto")  # nothing left: kept as is
    assert (saved["dtype"], saved["channels_last"]) == ("bf16", True)
    assert "precision: bf16 channels_last (checkpoint)" in lines
    assert not any(ln.startswith("warning") for ln in lines)


def test_a_damaged_last_pt_says_how_to_go_on(tmp_path):
    """A last.pt cut short (copied from a full disk, written by an older version without the
    atomic write) asked 'is it a file written by `cnnzoo train`?' of the run's own file, and
    said nothing of what to do."""
    cfg = TrainConfig(epochs=1, lr=0.05, **FP32)
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=tmp_path).fit()
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:500])
    cfg.epochs = 2
    with pytest.raises(TrainingError) as err:
        Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
                out_dir=tmp_path).fit(resume=True)  # fmt: skip
    assert str(err.value) == (f"cannot read {last}, so the run cannot be resumed: start it "
                              "again with --overwrite, or train into another --out")



def _forge_rng_python(c):
    c["rng"]["python"] = (3, (1, 2), None)


@pytest.mark.parametrize("forge, says", [
    (lambda c: c["optimizer"].update(param_groups=c["optimizer"]["param_groups"][:1]),
     "its optimizer state has 1 parameter group, the resumed run's optimizer 2"),
    (lambda c: c["optimizer"]["state"][0].update(momentum_buffer=torch.zeros(3)),
     "its optimizer's momentum_buffer for a parameter of shape (4, 1, 3, 3) has shape (3,)"),
    (lambda c: c["optimizer"]["state"][0].update(momentum_buffer=torch.zeros(4, 1, 3, 3).log()),
     "its optimizer's momentum_buffer holds NaN or inf"),
    (lambda c: c["optimizer"]["state"].update({99: {}}),
     "its optimizer state names parameter 99, which none of its parameter groups lists"),
    (lambda c: c["rng"].update(torch=c["rng"]["torch"].long()),
     "its RNG states (torch, Python, NumPy) are not ones they can take"),
    (lambda c: c["rng"].update(torch=c["rng"]["torch"][:10]),
     "its RNG states (torch, Python, NumPy) are not ones they can take"),
    (_forge_rng_python, "its RNG states (torch, Python, NumPy) are not ones they can take"),
    (lambda c: c.update(history=["a"]),
     "its history must be a list of dicts of numbers, one per epoch"),
    (lambda c: c["history"][0].update(val_loss="x"),
     "its history must be a list of dicts of numbers, one per epoch"),
    (lambda c: c.update(epoch=10**12), "its history has 1 epoch, its epoch is 1000000000000"),
    (lambda c: c.update(best="x"), "its best must be a number, not 'x'"),
    (lambda c: c.update(scheduler="x"), "its scheduler must be a dict, not 'x'"),
    (lambda c: c.pop("precision"), "its precision must be a dict, not None"),
])
def test_a_damaged_run_state_is_one_line_before_anything_is_resumed(forge, says, tmp_path):
    """A last.pt damaged or forged in what --resume continues (optimizer state, RNG states,
    history, epoch) ended in a traceback from torch, random or numpy (another group count,
    an RNG state of the wrong size or dtype, a history row that is a string), or resumed
    wrongly without a word (an epoch of 10^12: 'nothing left to train'; a momentum of NaN)."""
    cfg = TrainConfig(epochs=1, lr=0.05, **FP32)
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg, out_dir=tmp_path).fit()
    last = tmp_path / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    forge(ckpt)
    torch.save(ckpt, last)
    kept = last.read_bytes()
    cfg.epochs = 2
    with pytest.raises(TrainingError) as err:  # the run's own last.pt: how to go on
        Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
                out_dir=tmp_path).fit(resume=True)  # fmt: skip
    assert str(err.value) == (f"{last}: {says}: the checkpoint is damaged or was not written by "
                              "`cnnzoo train`, so the run cannot be resumed: start it again "
                              "with --overwrite, or train into another --out")
    with pytest.raises(DamagedCheckpointError, match=re.escape(f"{last}: {says}: ")):
        Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg,
                out_dir=tmp_path / "other").fit(resume=last)  # a file given: its own error
    assert last.read_bytes() == kept  # nothing trained or written


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")  # the process dies while writing
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    ckpt = load_checkpoint(path)  # still the complete old one, loadable with weights_only
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_report_figure_killed_mid_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    """curves.png, confusion.png and top_losses.png were written in place: a run killed while
    matplotlib wrote one (SIGTERM at a time limit) left a truncated PNG instead of the last
    epoch's good one. The kill is simulated by savefig dying after a PNG's first bytes."""
    from matplotlib.figure import Figure
    from PIL import Image

    import cnnzoo.engine.report as report

    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1}]
    curves = report.plot_curves(history, tmp_path / "curves.png")
    before = curves.read_bytes()

    def dying_savefig(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG\r\n")  # the process dies here
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", dying_savefig)
    with pytest.raises(KeyboardInterrupt):
        report.plot_curves(history * 2, curves)
    assert curves.read_bytes() == before
    with Image.open(curves) as im:
        im.load()
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_report_figures_under_a_home_that_cannot_be_written_say_nothing(tmp_path):
    """A batch job or container with a read-only or missing HOME: matplotlib could not make
    ~/.config/matplotlib and printed two lines on every run ('mkdir -p failed ...', 'created a
    temporary cache directory ... highly recommended to set the MPLCONFIGDIR'). Its folder is
    now cnnzoo's cache, else a temporary one, without a word; the user's own MPLCONFIGDIR
    stays theirs."""
    (tmp_path / "a-file").write_text("")
    env = {k: v for k, v in _env().items()
           if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "CNNZOO_CACHE")}
    env["HOME"] = str(tmp_path / "a-file" / "home")  # no folder can be made there
    script = ("import os, sys; from cnnzoo.engine.report import plot_curves; "
              "plot_curves([{'epoch': 1, 'train_loss': 1.0}], sys.argv[1]); "
              "print(os.environ['MPLCONFIGDIR'])")

    def draw(**more: str) -> str:
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "curves.png")],
                              env={**env, **more}, capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stderr) == (0, "")
        assert (tmp_path / "curves.png").stat().st_size > 0
        return done.stdout.strip()

    assert draw(CNNZOO_CACHE=str(tmp_path / "cache")) == str(tmp_path / "cache" / "matplotlib")
    assert Path(draw()).name.startswith("cnnzoo-matplotlib-")  # no cache either
    assert not Path(draw()).exists()  # removed at exit
    assert draw(MPLCONFIGDIR=str(tmp_path / "mine")) == str(tmp_path / "mine")


def test_report_figures_leave_the_callers_matplotlib_backend_alone(tmp_path):
    """Drawing a report called matplotlib.use("Agg"): in a notebook, a transfer() or fit()
    switched the inline backend to Agg for the rest of the session, and the user's own plots
    showed nothing after it. The report's figures are now drawn outside pyplot."""
    import matplotlib
    import matplotlib.pyplot as plt

    import cnnzoo.engine.report as report

    before = matplotlib.get_backend()
    plt.switch_backend("svg")  # stands for the notebook's inline backend
    try:
        report.plot_curves([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1}],
                           tmp_path / "curves.png")  # fmt: skip
        report.plot_confusion(torch.eye(3, dtype=torch.long), ["a", "b", "c"],
                              tmp_path / "confusion.png")  # fmt: skip
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == []  # nothing for the notebook to show under the cell
    finally:
        plt.switch_backend(before)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_log_rewritten_on_resume_in_one_step(tmp_path, monkeypatch):
    """A resumed run rewrites metrics.jsonl from its checkpoint's history; a kill during that
    rewrite left the log empty or cut, every epoch's line lost. The kill is simulated by the
    write dying after half the text."""
    from cnnzoo.engine.logs import MetricsLog

    history = [{"epoch": e, "train_loss": 1.0 / e} for e in range(1, 4)]
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in history))
    before = log.read_text()

    def dying_write_text(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])  # the process dies here
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", dying_write_text)
    with pytest.raises(KeyboardInterrupt):
        MetricsLog(tmp_path, tensorboard=False, history=history[:2])
    assert log.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_a_checkpoint_write_clears_what_a_killed_one_left(tmp_path):
    """SIGKILL (or the OOM killer) during a write leaves the hidden temporary file, as large as a
    checkpoint (1 GB for a VGG-11's last.pt), and it stayed there for good; the next write of
    the same file removes it, and nothing else."""
    stale = [tmp_path / ".last.pt.jtejg_rv.tmp", tmp_path / ".last.pt.x1.tmp"]
    kept = [tmp_path / ".best.pt.q2.tmp", tmp_path / "last.pt.tmp", tmp_path / ".last.pt.x"]
    for p in stale + kept:
        p.write_bytes(b"part of a checkpoint")
    atomic_save({"model": {"w": torch.ones(3)}, "epoch": 1}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last.pt"] + [p.name for p in kept])



def test_in_a_container_a_killed_runs_own_pid_temp_goes_from_the_folder_the_run_holds(tmp_path):
    """In a container every run is process 1: the temporary last.pt a killed run left was named
    with the next run's own id, taken for its write in progress, and kept for good. In the
    folder the run holds (no other cnnzoo run writes there) it goes, unless this process has
    it open; elsewhere (a cache two containers' process 1 may share) it stays."""
    from cnnzoo.paths import folders_released, hold_folder, remove_stale_temps

    pid = os.getpid()
    run, cache = tmp_path / "run", tmp_path / "cache"
    for folder in (run, cache):
        folder.mkdir()
        for name in (f".last.pt.{pid}.abcd1234.tmp", f".bundle.{pid}.old.tmp"):
            (folder / name).write_bytes(b"part of a checkpoint")
        (folder / f".bundle.{pid}.old.tmp").unlink()
        (folder / f".bundle.{pid}.old.tmp").mkdir()
    atomic_save({"model": {"w": torch.ones(3)}, "epoch": 1}, cache / "last.pt")
    assert (cache / f".last.pt.{pid}.abcd1234.tmp").exists()  # not held: kept
    open_one = run / f".best.pt.{pid}.efgh5678.tmp"
    open_one.write_bytes(b"being written")
    with folders_released(), open(open_one, "rb"):
        hold_folder(run)
        atomic_save({"model": {"w": torch.ones(3)}, "epoch": 1}, run / "last.pt")
        remove_stale_temps(run / "bundle")
        remove_stale_temps(run / "best.pt")
        assert sorted(p.name for p in run.iterdir()) == sorted(
            [".cnnzoo.lock", "last.pt", open_one.name])  # the open one stays


@pytest.mark.parametrize("torch_error", ["oserror", "zip-writer"])
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_keeps_the_old_one(
        tmp_path, monkeypatch, torch_error):
    """A full disk while saving: torch.save raised OSError, or (its zip writer, on a real full
    tmpfs) RuntimeError('unexpected pos ...') from it, and `cnnzoo train` printed a traceback."""
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(3)}, "epoch": 1}, path)

    def full_disk(obj, f, *a, **k):
        f.write(b"part of a checkpoint")
        full = OSError(28, "No space left on device")
        if torch_error == "oserror":
            raise full
        try:
            raise full
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "98240 vs 98136") from None

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrainingError) as err:
        atomic_save({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    assert str(err.value) == (f"cannot write {path} (No space left on device): free some space "
                              "or choose another --out; the last.pt there before is unchanged")
    with pytest.raises(TrainingError, match=r"cannot write .*best\.pt \(No space left on device\): "
                                            r"free some space or choose another --out$"):
        atomic_save({"model": {"w": torch.zeros(3)}, "epoch": 2}, tmp_path / "best.pt")
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_early_stopping_restores_the_best_weights(tmp_path):
    # Random labels: validation loss rises as the net memorises the training set.
    train = _tiny_loader(n=64, seed=1)
    val = _tiny_loader(n=64, seed=2)
    net = _TinyNet()
    cfg = TrainConfig(epochs=30, lr=0.5, schedule="constant", patience=2, weight_decay=0,
                      **FP32)
    result = Trainer(net, ClassificationTask(3), train, val, cfg, out_dir=tmp_path).fit()
    assert result.stopped_early and len(result.history) == result.best_epoch + 2
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == result.best_epoch
    for k, v in net.state_dict().items():
        assert torch.equal(v, best["model"][k]), k
    assert abs(result.final["loss"] - result.best_value) < 1e-9


class _CountedPasses(BatchLoader):
    """A loader that counts the passes made over it."""

    passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


@pytest.mark.parametrize("patience", [None, 1])
def test_the_final_scores_are_the_last_epochs_validation_without_a_second_pass(patience):
    """fit() went over the validation set once more after the last epoch, with the weights that
    epoch had just scored: a whole validation epoch for the same numbers. The final scores are
    that epoch's (its loss, accuracy and confusion matrix), and restored best weights of an
    earlier epoch are still scored anew."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (48, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 3, (48,), generator=g)
    val = _CountedPasses(x, y, batch_size=16, mean=[0.5], std=[0.25])
    torch.manual_seed(0)
    # lr 0.5 on random labels: the validation loss rises after its first epochs, so patience 1
    # stops the run and restores an earlier epoch's weights.
    cfg = TrainConfig(epochs=6, lr=0.5, schedule="constant", weight_decay=0, patience=patience,
                      **FP32)
    result = Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(n=64, seed=1), val,
                     cfg).fit()
    epochs = len(result.history)
    if patience is None:  # the weights the last epoch scored
        assert epochs == 6 and val.passes == 6
        last = result.history[-1]
        scored = last
    else:  # an earlier epoch's weights restored: scored again, with that epoch's scores
        assert result.stopped_early and result.best_epoch < epochs
        assert val.passes == epochs + 1
        scored = result.history[result.best_epoch - 1]
    # (with the final pass's balanced accuracy and macro F1, which the epochs' log leaves out)
    assert result.final == {**{k[4:]: v for k, v in scored.items() if k.startswith("val_")},
                            **result.accumulator.balanced()}
    assert int(result.accumulator.confusion.sum()) == 48


def test_fit_result_final_has_balanced_accuracy_and_macro_f1_as_train_json_does():
    """`train --json`'s `final` had balanced_acc and macro_f1; the FitResult that
    Trainer.fit() and train_classifier() return lacked them, so a notebook on imbalanced data
    read accuracy alone. Checked against scikit-learn on the model's own predictions, with
    test-time augmentation's final too."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (40, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.tensor([0] * 28 + [1] * 6 + [2] * 6)  # imbalanced: accuracy alone hides it
    val = BatchLoader(x, y, batch_size=16, mean=[0.5], std=[0.25])
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, lr=0.05, tta="flip", **FP32)
    net = _TinyNet()
    result = Trainer(net, ClassificationTask(3), _tiny_loader(n=48, seed=2), val, cfg).fit()
    with torch.no_grad():
        inputs = torch.cat([xb for xb, _ in val])
        logits = net(inputs)
        flipped = (logits.float() + net(inputs.flip(-1)).float()) / 2
    for final, out in ((result.final, logits), (result.final_tta, flipped)):
        pred = out.argmax(1)
        with warnings.catch_warnings():  # a class never predicted: meant
            warnings.simplefilter("ignore", UserWarning)
            want = balanced_accuracy_score(y, pred)
        assert final["balanced_acc"] == pytest.approx(want)
        assert final["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro",
                                                           zero_division=0))
        assert final["acc"] == pytest.approx(float((pred == y).float().mean()))


def test_fit_hands_the_model_back_ready_to_predict_and_save(tmp_path):
    """Training turns the net channels-last (where faster) and to train mode, and fit() left it
    so: safetensors refused to save it ('non contiguous tensor'), and predicting normalised with
    each batch's own BatchNorm statistics."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 3, (32,), generator=g)
    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    train = BatchLoader(x, y, batch_size=16, shuffle=True, **norm)
    val = BatchLoader(x, y, batch_size=16, **norm)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    cfg = TrainConfig(epochs=1, precision="bf16", channels_last="on", progress=False,
                      tensorboard=False)  # fmt: skip
    result = Trainer(net, ClassificationTask(3), train, val, cfg).fit()
    assert result.precision.channels_last  # trained channels-last
    assert not net.training and all(p.is_contiguous() for p in net.parameters())
    assert not train.channels_last and not val.channels_last
    save_file(net.state_dict(), tmp_path / "net.safetensors")
    # Also when training fails (a NaN loss here; an interrupt takes the same way out).
    net.train()
    with pytest.raises(TrainingError, match="loss became NaN/inf"):
        Trainer(net, _NaNAfter(good=0), train, val, cfg).fit()
    assert not net.training and all(p.is_contiguous() for p in net.parameters())
    assert not train.channels_last and not val.channels_last


def test_a_task_and_model_of_other_class_counts_is_one_line():
    """Was torch's 'IndexError: Target 8 is out of bounds' (or, with fewer labels than
    outputs, a run whose confusion matrix silently dropped the extra classes)."""
    for task_classes, net_classes in ((5, 3), (3, 5)):
        with pytest.raises(TrainingError, match=rf"the model outputs \(16, {net_classes}\) for "
                           rf"a {task_classes}-class task: build it with "
                           rf"num_classes={task_classes}$"):  # fmt: skip
            Trainer(_TinyNet(classes=net_classes), ClassificationTask(task_classes),
                    _tiny_loader(classes=3), config=TrainConfig(epochs=1, **FP32)).fit()


def test_a_resumed_early_stopped_run_stays_finished(tmp_path):
    train, val = _tiny_loader(n=64, seed=1), _tiny_loader(n=64, seed=2)
    cfg = TrainConfig(epochs=30, lr=0.5, schedule="constant", patience=2, weight_decay=0,
                      **FP32)
    first = Trainer(_TinyNet(), ClassificationTask(3), train, val, cfg, out_dir=tmp_path).fit()
    assert first.stopped_early
    last = (tmp_path / "last.pt").read_bytes()
    net = _TinyNet()
    again = Trainer(net, ClassificationTask(3), train, val, cfg, out_dir=tmp_path).fit(
        resume=True)
    assert again.stopped_early and again.history == first.history  # no epoch trained
    assert (again.best_epoch, again.best_value) == (first.best_epoch, first.best_value)
    assert (tmp_path / "last.pt").read_bytes() == last
    best = load_checkpoint(tmp_path / "best.pt")["model"]
    for k, v in net.state_dict().items():  # the best weights, restored as at the stop
        assert torch.equal(v, best[k]), k
    # A larger patience continues the run, as more epochs continue a finished one.
    cfg.patience = 3
    more = Trainer(_TinyNet(), ClassificationTask(3), train, val, cfg, out_dir=tmp_path).fit(
        resume=True)
    assert len(more.history) > len(first.history)


def _global_rng() -> tuple:
    """The caller's global random states (torch, NumPy, Python), comparable with ==."""
    import random

    import numpy as np

    name, keys, pos, gauss, cached = np.random.get_state()
    return (torch.get_rng_state().tolist(), (name, keys.tolist(), pos, gauss, cached),
            random.getstate())


def test_fit_leaves_the_callers_random_streams_as_they_were(tmp_path):
    """fit() seeded the global torch RNG (and a resume set all three from its checkpoint), so a
    notebook's own random draws after a run changed with it; the run's numbers must not."""
    import random

    import numpy as np

    train, val = _tiny_loader(n=32, seed=1), _tiny_loader(n=32, seed=2)
    cfg = TrainConfig(epochs=1, report=False, **FP32)
    histories = []
    for seed in (123, 7):
        torch.manual_seed(0)  # the same net each time
        net = nn.Sequential(nn.Dropout(0.5), _TinyNet())  # dropout draws from the global RNG
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
        before = _global_rng()
        res = Trainer(net, ClassificationTask(3), train, val, cfg, out_dir=tmp_path / str(seed)
                      ).fit()
        assert _global_rng() == before
        histories.append([{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")}
                          for r in res.history])
    assert histories[0] == histories[1]  # seeded by the config, not by the caller's state
    # A resumed run sets the RNGs from its checkpoint, and gives the caller's back too.
    net = nn.Sequential(nn.Dropout(0.5), _TinyNet())
    np.random.seed(99), random.seed(99)
    before = _global_rng()
    cfg.epochs = 2
    Trainer(net, ClassificationTask(3), train, val, cfg, out_dir=tmp_path / "7").fit(resume=True)
    assert _global_rng() == before


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_the_logged_lr_is_the_one_the_epochs_last_step_used(schedule):
    """The epoch line (and metrics.jsonl) showed `get_last_lr()`, the rate of the step after
    the epoch: a one-step one-cycle epoch logged the peak 0.1, which no step used (the step
    ran at 0.1 / 25), and a run's last epoch the value after its final step."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    used: list[float] = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    try:
        for n, epochs in ((16, 1), (64, 3)):  # 1 step per epoch, then 4
            used.clear()
            cfg = TrainConfig(epochs=epochs, lr=0.1, schedule=schedule, report=False, **FP32)
            res = Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(n=n, batch=16), None,
                          cfg).fit()  # fmt: skip
            per_epoch = len(used) // epochs
            assert [r["lr"] for r in res.history] == pytest.approx(used[per_epoch - 1::per_epoch])
    finally:
        hook.remove()
    assert used[-1] < 0.1  # the last step of a one-cycle or cosine run is not at the peak


def test_patience_zero_means_no_early_stopping():
    # "0 epochs without improvement" would stop after the first epoch: it means off, as the
    # transfer command's --patience 0 always did; a negative count is an error.
    train, val = _tiny_loader(n=64, seed=1), _tiny_loader(n=64, seed=2)
    cfg = TrainConfig(epochs=4, lr=0.5, schedule="constant", patience=0, **FP32)
    assert cfg.patience is None
    result = Trainer(_TinyNet(), ClassificationTask(3), train, val, cfg).fit()
    assert not result.stopped_early and len(result.history) == 4
    with pytest.raises(ValueError, match="patience must be"):
        TrainConfig(patience=-1)


@pytest.mark.parametrize("command", [["train", "lenet5", "--data", "digits"], ["transfer", "x"]])
def test_negative_patience_is_a_usage_error(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--patience", "-1"])
    assert exc.value.code == 2
    assert "--patience: must be a number of epochs (0: off), not -1" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["20", "20:0", "a:3", "20:8:1", ":8"])
def test_progressive_needs_size_and_epochs(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "lenet5", "--data", "digits", "--progressive", value])
    assert exc.value.code == 2
    assert f"--progressive: must be SIZE:EPOCHS, e.g. 20:8, not {value!r}" in capsys.readouterr().err


def test_progressive_size_must_be_below_the_training_size():
    splits = builtin.load_dataset("digits", val_fraction=0.2)
    opts = DataOptions("digits", progressive=(32, 2))
    with pytest.raises(DataError, match="size below the training size 32, not 32"):
        make_loaders(splits, 32, opts, seed=0, mean=[0.5], std=[0.2])
    train, _ = make_loaders(splits, 32, DataOptions("digits", progressive=(16, 2)), seed=0,
                            mean=[0.5], std=[0.2])  # fmt: skip
    train.set_epoch(1)
    assert next(iter(train))[0].shape[-2:] == (16, 16)
    train.set_epoch(2)
    assert next(iter(train))[0].shape[-2:] == (32, 32)
    # The log says which epochs trained small (the epoch lines looked alike before).
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    res = Trainer(net, ClassificationTask(10), train, config=TrainConfig(epochs=3, **FP32)).fit()
    assert [r.get("train_px") for r in res.history] == [16, 16, None]
    from cnnzoo.engine.loop import _epoch_line
    from cnnzoo.engine.report import logged_metrics

    assert logged_metrics(res.history) == ["acc", "loss", "top5"]  # curves.png: no 'px' panel

    assert _epoch_line(res.history[0], 3).startswith("epoch 1/3  at 16 px  lr ")
    assert " px " not in _epoch_line(res.history[2], 3)


@pytest.mark.parametrize(("value", "expect"), [
    ("24:1", "--progressive 24:1: lenet5 takes inputs of at least 32 px"),
    ("36:3", "--progressive 36:3 covers all 3 epochs, so the net would never train at its full"),
    # It named --epochs as the thing to change to a user who had given none (10 by default).
    ("36:3", "give --progressive fewer than 3 epochs, or --epochs more (10 when not given)"),
])
def test_progressive_sizes_and_epochs_the_net_cannot_use(value, expect, tmp_path, capsys):
    assert main(["train", "lenet5", "--data", "digits", "--epochs", "3", "--progressive", value,
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and "\n" not in err and not (tmp_path / "run").exists()


def test_frozen_bn_keeps_running_statistics(tmp_path):
    torch.manual_seed(0)
    net = _TinyNet()
    before = {k: v.clone() for k, v in net.bn.state_dict().items()}
    cfg = TrainConfig(epochs=1, freeze_bn=True, **FP32)
    Trainer(net, ClassificationTask(3), _tiny_loader(), config=cfg).fit()
    for k, v in net.bn.state_dict().items():  # statistics and affine weight/bias as they were
        assert torch.equal(v, before[k]), k
    torch.manual_seed(0)
    conv_before = _TinyNet().conv.weight  # same seed as `net` was built with
    assert not torch.equal(net.conv.weight, conv_before)  # the rest trained

    # BN scale/shift listed in a parameter group train; the running statistics still stay put.
    torch.manual_seed(0)
    net = _TinyNet()
    groups = [{"params": list(net.bn.parameters()), "lr": 0.1, "name": "bn"}]
    Trainer(net, ClassificationTask(3), _tiny_loader(), config=cfg, param_groups=groups).fit()
    assert not torch.equal(net.bn.weight, before["weight"])
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(net.bn.state_dict()[k], before[k]), k
    # Without freeze_bn, the same run moves the statistics (the test above can fail).
    torch.manual_seed(0)
    net = _TinyNet()
    Trainer(net, ClassificationTask(3), _tiny_loader(),
            config=TrainConfig(epochs=1, **FP32)).fit()
    assert not torch.equal(net.bn.running_mean, before["running_mean"])


# --------------------------------------------------------------------------- growth


def test_vgg11_grows_into_vgg13_by_the_papers_rule():
    kw = {"num_classes": 4, "width_mult": 0.125, "fc_dim": 32, "pool_size": 1}
    a = create_model("vgg11", in_chans=1, **kw)
    x = torch.randint(0, 256, (32, 1, 32, 32), dtype=torch.uint8)
    y = torch.arange(32) % 4
    loader = BatchLoader(x, y, batch_size=16, shuffle=True, mean=[0.5], std=[0.25])
    Trainer(a, ClassificationTask(4), loader, config=TrainConfig(epochs=1, lr=0.01, **FP32)).fit()
    source = a.state_dict()

    torch.manual_seed(7)
    b = create_model("vgg13", in_chans=1, **kw)
    fresh = {k: v.clone() for k, v in b.state_dict().items()}
    report = grow_from(b, source, source_meta={"model": "vgg11"})

    # Sec. 3.1: the first four convs of A -- places (stage, index) (0,0) (1,0) (2,0) (2,1) --
    # and the three dense layers; in VGG-13 those places sit at other indices of `features`.
    a_convs = vgg_conv_layers(a)[:4]
    assert [(c.stage, c.index) for c in a_convs] == [(0, 0), (1, 0), (2, 0), (2, 1)]
    b_place = {(c.stage, c.index): c.conv for c in vgg_conv_layers(b)}
    expected = {}
    for c in a_convs:
        for t in ("weight", "bias"):
            expected[f"{b_place[(c.stage, c.index)]}.{t}"] = f"{c.conv}.{t}"
    for p in VGG_DENSE_LAYERS:
        expected.update({f"{p}.weight": f"{p}.weight", f"{p}.bias": f"{p}.bias"})
    assert report.copied == expected
    assert b_place[(1, 0)] == "features.5" and expected["features.5.weight"] == "features.3.weight"
    state = b.state_dict()
    for k, v in state.items():
        if k in expected:
            assert torch.equal(v, source[expected[k]]), k
        else:  # the new middle layers and A's later convs: fresh initialisation, untouched
            assert torch.equal(v, fresh[k]), k
    assert len(report.fresh) == len(state) - len(expected)
    # What `cnnzoo train vgg13 --init-from` prints: the copied layers with their source places.
    lines = report.lines()
    assert lines[0] == "copied 14 tensors (7 layers):"
    assert "  features.5 <- features.3" in lines and "  classifier.6" in lines
    assert lines[8].startswith("freshly initialised 12 tensors (6 layers): features.2, ")


def test_growth_of_resnets_copies_every_shared_place():
    a = create_model("resnet20", num_classes=10)
    b = create_model("resnet32", num_classes=10)
    report = grow_from(b, a.state_dict())
    assert "layer1.2.conv1.weight" in report.copied and "layer1.3.conv1.weight" in report.fresh
    assert set(report.copied) == {k for k in a.state_dict() if k in b.state_dict()
                                  and not k.endswith("num_batches_tracked")} | {
        k for k in a.state_dict() if k.endswith("num_batches_tracked") and k in b.state_dict()}


def test_other_model_options_read_as_what_an_option_left_out_builds():
    """Resuming a VGG of three stages without the option said '(stages=3, not stages unset)';
    it names what the net would be, and an option given at its default is no conflict."""
    from cnnzoo.engine.loop import resume_conflict

    old = {"model": "vgg11", "model_kwargs": {"stages": 3}}
    assert resume_conflict(old, {"model": "vgg11", "model_kwargs": {}}) == (
        "was trained with other model options (stages=3, not all five stages): resume with the "
        "checkpoint's options")
    assert resume_conflict({"model": "vgg11", "model_kwargs": {"act": "relu"}},
                           {"model": "vgg11", "model_kwargs": {}}) is None  # fmt: skip


def test_stages_5_resumes_a_vgg_trained_without_stages_and_back():
    """A VGG trained without `stages` (all five) and resumed with --model-arg stages=5, the
    same net, was refused: 'other model options (all five stages, not stages=5)'. Both build
    one net, so neither way round is a conflict; stages=4 still is."""
    from cnnzoo.engine.loop import resume_conflict

    left_out = {"model": "vgg11_bn", "model_kwargs": {"width_mult": 0.125}}
    given = {"model": "vgg11_bn", "model_kwargs": {"width_mult": 0.125, "stages": 5}}
    assert resume_conflict(left_out, given) is None
    assert resume_conflict(given, left_out) is None
    small = {"width_mult": 0.125, "fc_dim": 8, "pool_size": 1}
    assert create_model("vgg11_bn", stages=5, **small).state_dict().keys() == \
        create_model("vgg11_bn", **small).state_dict().keys()
    assert resume_conflict(left_out, {"model": "vgg11_bn",
                                      "model_kwargs": {"width_mult": 0.125, "stages": 4}}) == (
        "was trained with other model options (all five stages, not stages=4): resume with the "
        "checkpoint's options")


def test_growth_refuses_a_deeper_source_for_a_shallower_net():
    """vgg13 -> vgg11 copied two convs (the paper's rule) and the dense layers, and left the
    rest unused, without a word; the docs grow a deeper net from a shallower one. It is one
    line now, and nothing is copied; a run's own net (a new run from its weights) still is."""
    kw = {"num_classes": 10, "width_mult": 0.125, "fc_dim": 32, "pool_size": 1}
    small = create_model("vgg11", **kw)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        grow_from(small, create_model("vgg13", **kw).state_dict(), source_meta={"model": "vgg13"})
    assert str(err.value) == (
        "the source checkpoint is vgg13 (10 conv layers), deeper than vgg11 (8): --init-from "
        "grows a deeper net from a shallower one (vgg11 → vgg13 → vgg16 → vgg19); train vgg11 "
        "from scratch, or grow a net at least as deep from this checkpoint")
    assert all(torch.equal(v, before[k]) for k, v in small.state_dict().items())
    with pytest.raises(WeightsError, match=r"is resnet32 \(31 conv layers\), deeper than "
                                           r"resnet20 \(19\): --init-from grows a deeper net "
                                           r"from a shallower one; train resnet20"):
        grow_from(create_model("resnet20"), create_model("resnet32").state_dict(),
                  source_meta={"model": "resnet32"})  # fmt: skip
    same = grow_from(create_model("vgg11", **kw), small.state_dict(), source_meta={"model": "vgg11"},
                     rule="all")  # fmt: skip
    assert not same.fresh and not same.unused


def test_growth_into_fewer_stages_names_the_stages_not_the_depth():
    """A full vgg11 (8 convs) grown into vgg16 stages=3 (7 convs) was refused as 'vgg11 ...
    deeper than vgg16': true of the counts, but the cause is the stages, which it now names,
    with the option to pass."""
    kw = {"num_classes": 10, "width_mult": 0.125, "fc_dim": 32, "pool_size": 1}
    source = create_model("vgg11", **kw).state_dict()
    target = create_model("vgg16", stages=3, **kw)
    with pytest.raises(WeightsError) as err:
        grow_from(target, source, source_meta={"model": "vgg11", "model_kwargs": kw},
                  target_kwargs={**kw, "stages": 3})  # fmt: skip
    assert str(err.value) == (
        "the source checkpoint's vgg11 was built with all five stages (8 conv layers), this "
        "vgg16 with stages=3 (7): grow with the source's stages (leave out --model-arg stages)")
    three = create_model("vgg13", stages=3, **kw).state_dict()  # 6 convs into vgg16 stages=2's 4
    with pytest.raises(WeightsError, match=r"built with stages=3 \(6 conv layers\), this vgg16 "
                                           r"with stages=2 \(4\): .*\(--model-arg stages=3\)$"):
        grow_from(create_model("vgg16", stages=2, **kw), three,
                  source_meta={"model": "vgg13", "model_kwargs": {**kw, "stages": 3}},
                  target_kwargs={**kw, "stages": 2})  # fmt: skip


def test_growth_refuses_a_plain_net_into_a_residual_one_and_back():
    """plain18 -> resnet34 fits every shape and was copied without a word, though the plain
    net's layers were trained without the shortcuts resnet34 adds to them (resnet20
    shortcut=none -> resnet32 was refused); plain18 carries 'none' in its name, not its options.
    Built on the meta device: only names and shapes matter here."""
    with torch.device("meta"):
        plain18, res18 = create_model("plain18"), create_model("resnet18")
        plain34, res34 = create_model("plain34"), create_model("resnet34")
    for source, name, target in ((plain18, "plain18", res34), (res18, "resnet18", plain34)):
        with pytest.raises(WeightsError, match=rf"^the source checkpoint is {name}, with .*"
                                               r"shortcuts.*: its layers would compute other "
                                               r"functions here; grow a plain net into a plain "
                                               r"one \(plain18 -> plain34\)"):
            grow_from(target, source.state_dict(), source_meta={"model": name, "model_kwargs": {}},
                      target_kwargs={})  # fmt: skip
    same = grow_from(plain34, plain18.state_dict(), source_meta={"model": "plain18"},
                     target_kwargs={})  # fmt: skip
    assert "layer1.0.conv1.weight" in same.copied


def test_growth_refuses_options_that_change_what_layers_compute():
    """A resnet20 trained with tanh grew into a ReLU resnet32 without a word (every shape fits;
    validation loss 140 after growth); shortcut 'A' against 'none' fits too."""
    a = create_model("resnet20", num_classes=10, act="tanh")
    b = create_model("resnet32", num_classes=10)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    meta = {"model": "resnet20", "model_kwargs": {"act": "tanh"}}
    with pytest.raises(WeightsError, match=r"built with act=tanh, this model with act=relu: .*"
                                           r"\(--model-arg act=tanh\)"):
        grow_from(b, a.state_dict(), source_meta=meta, target_kwargs={})
    assert all(torch.equal(v, before[k]) for k, v in b.state_dict().items())  # nothing copied
    with pytest.raises(WeightsError, match="shortcut=none, this model with shortcut=A"):
        grow_from(b, create_model("resnet20", shortcut="none").state_dict(),
                  source_meta={"model": "resnet20", "model_kwargs": {"shortcut": "none"}},
                  target_kwargs={})  # fmt: skip
    # act='relu' given on one side and left out on the other agree (it is the default).
    grow_from(b, create_model("resnet20").state_dict(),
              source_meta={"model": "resnet20", "model_kwargs": {"act": "relu"}}, target_kwargs={})
    tanh32 = create_model("resnet32", num_classes=10, act="tanh")
    assert grow_from(tanh32, a.state_dict(), source_meta=meta, target_kwargs={"act": "tanh"}).copied


def test_growth_between_googlenets_with_and_without_reductions_says_what_to_pass():
    """The 1x1 lesson's nets have other layers: --init-from between reductions=true and false,
    or between the "5x5" kernels, is refused in one line naming what builds the source's net
    (it said "(--model-arg)" and left the student to work out which option and value)."""
    kw = {"num_classes": 10, "in_chans": 1, "aux_logits": False}
    cases = [({}, {"reductions": False}, "leave out --model-arg reductions"),
             ({"reductions": False}, {}, "--model-arg reductions=False"),
             ({"paper_5x5": True}, {"reductions": True}, "--model-arg paper_5x5=True"),
             ({"reductions": False, "paper_5x5": True}, {"paper_5x5": False},
              "--model-arg paper_5x5=True; --model-arg reductions=False")]
    for src, tgt, hint in cases:
        source = create_model("googlenet", **kw, **src)
        target = create_model("googlenet", **kw, **tgt)
        before = {k: v.clone() for k, v in target.state_dict().items()}
        with pytest.raises(WeightsError) as err:
            grow_from(target, source.state_dict(), target_kwargs={"aux_logits": False, **tgt},
                      source_meta={"model": "googlenet",
                                   "model_kwargs": {"aux_logits": False, **src}})  # fmt: skip
        said = str(err.value)
        assert "\n" not in said and said.endswith(f"grow with the source's options ({hint})")
        assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_growth_copies_whole_layers_and_refuses_other_widths_or_families():
    kw = {"num_classes": 10, "in_chans": 1, "fc_dim": 64, "pool_size": 1}
    a = create_model("vgg11", width_mult=0.125, **kw)
    wide = create_model("vgg13", width_mult=0.25, **kw)
    state = {k: v.clone() for k, v in wide.state_dict().items()}
    src_meta = {"model": "vgg11", "model_kwargs": {"width_mult": 0.125, "fc_dim": 64,
                                                   "pool_size": 1}}
    with pytest.raises(WeightsError) as err:
        grow_from(wide, a.state_dict(), source_meta=src_meta,
                  target_kwargs={"width_mult": 0.25, "fc_dim": 64, "pool_size": 1})
    assert str(err.value) == (
        "the source checkpoint's layers do not fit this model: the source was built with "
        "width_mult=0.125, this model with width_mult=0.25 (features.0: 8x1x3x3 in the source, "
        "16x1x3x3 here); grow with the source's options (--model-arg width_mult=0.125)")
    for k, v in wide.state_dict().items():  # not half a copy: nothing changed
        assert torch.equal(v, state[k]), k
    with pytest.raises(WeightsError, match=r"features.0: 8x1x3x3 in the source, 16x1x3x3 here"):
        grow_from(wide, a.state_dict(), source_meta={"model": "vgg11"})  # no options stored
    # An option left out reads as what it builds: VGG's stages=None is all five ("this model
    # with stages unset" said nothing), and fc_dim its default 4096.
    few = create_model("vgg11", width_mult=0.125, stages=2, **kw)
    with pytest.raises(WeightsError, match=r"built with stages=2, this model with all five "
                                           r"stages \(classifier.0: "):
        grow_from(create_model("vgg13", width_mult=0.125, **kw), few.state_dict(),
                  source_meta={"model": "vgg11", "model_kwargs": {**src_meta["model_kwargs"],
                                                                  "stages": 2}},
                  target_kwargs=src_meta["model_kwargs"])  # fmt: skip
    with pytest.raises(WeightsError, match=r"built with fc_dim=64, this model with "
                                           r"fc_dim=4096 \(classifier.0: "):
        grow_from(create_model("vgg13", width_mult=0.125, num_classes=10, in_chans=1,
                               pool_size=1), a.state_dict(), source_meta=src_meta,
                  target_kwargs={"width_mult": 0.125, "pool_size": 1})  # fmt: skip
    with pytest.raises(WeightsError) as err:
        grow_from(wide, create_model("lenet5").state_dict(), source_meta={"model": "lenet5"})
    assert str(err.value).startswith("the source checkpoint is lenet5, not a VGG; growth goes "
                                     "vgg11 → vgg13 → vgg16")
    with pytest.raises(WeightsError, match="is lenet5, not a resnet model"):
        grow_from(create_model("resnet32"), create_model("lenet5").state_dict(),
                  source_meta={"model": "lenet5"})
    # Conv weights trained with BatchNorm after them, into a net without it (or the reverse):
    # they were copied, the BN layers listed as unused.
    bn = create_model("vgg11_bn", width_mult=0.125, **kw)
    for target, source, src in ((create_model("vgg13", width_mult=0.125, **kw), bn, "vgg11_bn"),
                                (create_model("vgg13_bn", width_mult=0.125, **kw), a, "vgg11")):
        with pytest.raises(WeightsError, match="has BatchNorm and .* does not: grow between"):
            grow_from(target, source.state_dict(), source_meta={**src_meta, "model": src},
                      target_kwargs=src_meta["model_kwargs"])
    # The same options, but a grey source for colour data: the channels are named (this read
    # "built with , this model with" before), for VGG and for ResNet alike.
    for small, deep, kwargs in (("vgg11", "vgg13", {"width_mult": 0.125, "fc_dim": 64,
                                                    "pool_size": 1}),
                                ("resnet20", "resnet32", {})):  # fmt: skip
        grey = create_model(small, in_chans=1, num_classes=10, **kwargs)
        with pytest.raises(WeightsError, match=r"other channels \(grey vs colour\)"):
            grow_from(create_model(deep, in_chans=3, num_classes=10, **kwargs),
                      grey.state_dict(), source_meta={"model": small, "model_kwargs": kwargs},
                      target_kwargs=kwargs)
    # Another number of classes: the head stays fresh, weight and bias alike, and is reported.
    b = create_model("vgg13", width_mult=0.125, **{**kw, "num_classes": 4})
    head = {k: v.clone() for k, v in b.classifier[6].state_dict().items()}
    report = grow_from(b, a.state_dict(), source_meta=src_meta,
                       target_kwargs=src_meta["model_kwargs"])
    assert not any(k.startswith("classifier.6.") for k in report.copied)
    assert {"classifier.6.weight", "classifier.6.bias"} <= set(report.fresh)
    for k, v in b.classifier[6].state_dict().items():
        assert torch.equal(v, head[k]), k
    assert report.lines()[-1] == ("not copied, their shapes differ from the source's (1 layer): "
                                  "classifier.6")
    # As many classes, but others: the head's rows would score the wrong ones, so it stays fresh
    # too (it was copied without a word); the same classes copy it.
    c = create_model("vgg13", width_mult=0.125, **kw)
    head = {k: v.clone() for k, v in c.classifier[6].state_dict().items()}
    names = [f"c{i}" for i in range(kw["num_classes"])]
    report = grow_from(c, a.state_dict(), source_meta={**src_meta, "class_names": names},
                       target_kwargs=src_meta["model_kwargs"],
                       target_classes=["bag", *names[1:]])  # fmt: skip
    assert all(torch.equal(v, head[k]) for k, v in c.classifier[6].state_dict().items())
    assert any(line.startswith("the head is not copied: the source was trained on other "
                               "classes (c0, c1, ") for line in report.lines())
    report = grow_from(c, a.state_dict(), source_meta={**src_meta, "class_names": names},
                       target_kwargs=src_meta["model_kwargs"], target_classes=names)
    assert torch.equal(c.classifier[6].weight, a.classifier[6].weight)


# --------------------------------------------------------------------------- precision


def test_precision_choice_is_measured_cached_and_leaves_model_and_rng_alone(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path))
    net = _TinyNet()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    batch = (torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,)))
    task = ClassificationTask(3)
    forced = choose_precision(net, task, batch, precision="bf16", channels_last="on")
    assert forced == Precision("bf16", True, "forced")
    rng = torch.get_rng_state()
    chosen = choose_precision(net, task, batch)
    assert chosen.source == "measured"
    assert (chosen.dtype, chosen.channels_last) in {("fp32", False), ("fp32", True),
                                                    ("bf16", True)}
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    again = choose_precision(net, task, batch)
    assert again.source == "cached" and again.dtype == chosen.dtype
    assert (tmp_path / "precision.json").exists()


@pytest.mark.parametrize("cache", ["[1, 2]", "null", "{KEY: 5}", '{KEY: {"dtype": "fp16"}}'])
def test_a_precision_cache_of_another_shape_is_measured_again(tmp_path, monkeypatch, cache):
    """Valid JSON that is not the cache's dict of entries (edited by hand, another version's
    layout) ended the run in an AttributeError/KeyError traceback."""
    from cnnzoo.engine.precision import _cache_key

    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path))
    net, batch = _TinyNet(), (torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,)))
    key = json.dumps(_cache_key(net, tuple(batch[0].shape)) + "|auto|auto")
    (tmp_path / "precision.json").write_text(cache.replace("KEY", key))
    chosen = choose_precision(net, ClassificationTask(3), batch)
    assert chosen.source == "measured"
    assert choose_precision(net, ClassificationTask(3), batch).source == "cached"


# --------------------------------------------------------------------------- distributed


def test_processes_share_the_cores_they_may_run_on_not_the_machines(monkeypatch):
    """Launched with one process per node (torchrun then leaves OMP_NUM_THREADS unset) on a
    node whose job may use 2 of its 64 cores (taskset, Slurm's CPU set), each process took
    os.cpu_count() = 64 threads on those 2 cores."""
    from cnnzoo.engine import distributed

    for key, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_WORLD_SIZE", "1")):
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)  # no process group
    monkeypatch.setattr(distributed.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: {3, 7}, raising=False)
    before = torch.get_num_threads()
    try:
        assert distributed.init_distributed().world == 2
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes on the node: one core each
        distributed.init_distributed()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _fake_cgroup(root: Path, files: dict[str, str], membership: str) -> tuple[Path, Path]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "self-cgroup").write_text(membership)
    return root, root / "self-cgroup"


@pytest.mark.parametrize("files, membership, cores", [
    ({"cpu.max": "200000 100000\n"}, "0::/\n", 2),  # docker --cpus=2, cgroup v2
    ({"cpu.max": "150000 100000\n"}, "0::/\n", 2),  # --cpus=1.5: rounded up
    ({"cpu.max": "max 100000\n"}, "0::/\n", 64),  # no quota
    ({"user.slice/cpu.max": "max 100000\n", "cpu.max": "300000 100000\n"},
     "0::/user.slice\n", 3),  # a host's process under its own group, a parent's quota
    ({"cpu,cpuacct/docker/ab/cpu.cfs_quota_us": "50000\n",
      "cpu,cpuacct/docker/ab/cpu.cfs_period_us": "100000\n"},
     "5:memory:/docker/ab\n4:cpu,cpuacct:/docker/ab\n", 1),  # cgroup v1, on the host's mount
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/\n", 64),  # v1, no quota
    ({}, "", 64),  # nothing to read: not Linux, or no cgroup mounted
])  # fmt: skip
def test_threads_stay_within_a_containers_cpu_quota(tmp_path, monkeypatch, files, membership,
                                                    cores):
    """`docker run --cpus=2` on a 64-core host: the container's affinity holds all 64 cores, so
    every command ran 64 torch threads on 2 cores' worth of time, each throttled most of every
    100 ms period. The quota (cgroup v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us)
    rounded up now caps the cores counted."""
    from cnnzoo.engine import distributed

    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(64)),
                        raising=False)  # fmt: skip
    root, self_cgroup = _fake_cgroup(tmp_path, files, membership)
    assert distributed.usable_cores(root, self_cgroup) == cores


def test_a_command_runs_no_more_threads_than_the_cpu_quota(tmp_path, monkeypatch):
    """Without --threads or OMP_NUM_THREADS a command keeps torch's default (the affinity) but
    no more than the quota; --threads still says how many."""
    from cnnzoo.engine import distributed

    root, self_cgroup = _fake_cgroup(tmp_path / "cg", {"cpu.max": "100000 100000"}, "0::/")
    monkeypatch.setattr(distributed, "CGROUP", root)
    monkeypatch.setattr(distributed, "MEMBERSHIP", self_cgroup)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    args = ["train", "lenet5", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]
    assert main(args) == 2  # no such data: after the threads are set
    assert threads == [1]
    threads.clear()
    assert main([*args, "--threads", "3"]) == 2
    assert threads == [3]
    threads.clear()
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert threads == [1]
    threads.clear()
    # evaluate takes --threads as train, transfer, segment and predict do (it was refused as an
    # unrecognized argument, so a script passing --threads 1 to every command stopped there).
    assert main(["evaluate", str(tmp_path / "missing.pt"), "--threads", "2"]) == 2
    assert threads == [2]


def test_library_callers_get_threads_within_the_cpu_quota_once_unless_they_chose(tmp_path,
                                                                               monkeypatch):
    """A Python caller of `transfer()`, `Trainer.fit` or `load_bundle` kept torch's default, the
    affinity's cores (64 in a container given 2 CPUs of a 64-core host: each thread throttled
    most of the time). The library caps them as the commands do, once per process, unless the
    caller chose: OMP_NUM_THREADS, or torch.set_num_threads to another count."""
    from cnnzoo import load_bundle, transfer
    from cnnzoo.engine import distributed

    root, self_cgroup = _fake_cgroup(tmp_path / "cg", {"cpu.max": "200000 100000"}, "0::/")
    monkeypatch.setattr(distributed, "CGROUP", root)
    monkeypatch.setattr(distributed, "MEMBERSHIP", self_cgroup)
    monkeypatch.setattr(distributed, "_affinity_cores", lambda: 64)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = [64]
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads[0])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: threads.__setitem__(0, n))
    cfg = TrainConfig(epochs=1, lr=0.05, **FP32)
    entries = [
        lambda: Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=cfg).fit(),
        lambda: pytest.raises(DataError, transfer, tmp_path / "missing", weights=None),
        lambda: pytest.raises(WeightsError, load_bundle, tmp_path / "missing"),
    ]
    for entry in entries:
        monkeypatch.setattr(distributed, "_threads_set", False)
        threads[0] = 64
        entry()
        assert threads[0] == 2
        threads[0] = 64  # the caller's own choice afterwards: kept (capped once)
        entry()
        assert threads[0] == 64
    monkeypatch.setattr(distributed, "_threads_set", False)
    threads[0] = 8  # set by the caller: kept
    entries[0]()
    assert threads[0] == 8
    monkeypatch.setattr(distributed, "_threads_set", False)
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    threads[0] = 64
    entries[0]()
    assert threads[0] == 64


def test_library_threads_are_capped_on_a_host_with_hyperthreads(tmp_path, monkeypatch):
    """Torch built with MKL starts with the affinity's physical cores, not its logical CPUs: 32
    threads in a container given 2 CPUs of a 64-vCPU host with hyperthreads. `library_threads`
    took only the logical count for torch's default, so it read 32 as the caller's choice and
    never capped; the physical cores (from sysfs' topology) count as the default too."""
    from cnnzoo.engine import distributed

    root, self_cgroup = _fake_cgroup(tmp_path / "cg", {"cpu.max": "200000 100000"}, "0::/")
    monkeypatch.setattr(distributed, "CGROUP", root)
    monkeypatch.setattr(distributed, "MEMBERSHIP", self_cgroup)
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(64)),
                        raising=False)  # fmt: skip
    for cpu in range(64):  # CPUs n and n + 32 are the two threads of core n
        topology = tmp_path / "cpu" / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{cpu % 32}\n")
    monkeypatch.setattr(distributed, "CPUS", tmp_path / "cpu", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = [32]
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads[0])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: threads.__setitem__(0, n))
    monkeypatch.setattr(distributed, "_threads_set", False)
    distributed.library_threads()
    assert threads[0] == 2
    assert distributed._physical_cores() == 32
    threads[0] = 12  # the caller's own count: kept
    monkeypatch.setattr(distributed, "_threads_set", False)
    distributed.library_threads()
    assert threads[0] == 12


_DDP_WORKER = '''
import sys
import torch
from cnnzoo.cli import main
from cnnzoo.data.loader import BatchLoader
from cnnzoo.engine.distributed import cleanup, init_distributed, wrap_model
from cnnzoo.engine.loop import TTA_MODES, TrainConfig, Trainer, tta_views
from cnnzoo.engine.task import ClassificationTask
from cnnzoo.models import create_model

out = sys.argv[1]
ctx = init_distributed()
g = torch.Generator().manual_seed(11)
x = torch.randint(0, 256, (64, 1, 32, 32), generator=g, dtype=torch.uint8)
y = torch.randint(0, 4, (64,), generator=g)

def loader():
    # Each process reads its own shard: every 2nd sample of the epoch's shuffled order.
    return BatchLoader(x, y, batch_size=8, shuffle=True, seed=3, mean=[0.5], std=[0.25],
                       shard=ctx.shard)

torch.manual_seed(0)
model = create_model("lenet5", num_classes=4, in_chans=1)
net = wrap_model(model, ctx)
task = ClassificationTask(4)
xb, yb = next(iter(loader()))
task.loss(net(xb), yb).backward()  # DDP all-reduces (averages) the gradients here
grads = {n: p.grad.clone() for n, p in model.named_parameters()}

torch.manual_seed(0)
model = create_model("lenet5", num_classes=4, in_chans=1)
cfg = TrainConfig(epochs=2, lr=0.05, precision="fp32", channels_last="off", progress=False,
                  verbose=False, tensorboard=False, report=False)
result = Trainer(model, task, loader(), loader(), cfg, dist=ctx).fit()
torch.save({"grads": grads, "batch": yb, "model": model.state_dict(),
            "val_count": int(result.accumulator.count)}, f"{out}/rank{ctx.rank}.pt")
cleanup()
'''


def test_torchrun_ddp_averages_gradients_like_one_process_on_the_global_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)

    def launch(port: int) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(port), str(script),
               str(tmp_path)]
        return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)

    port = 29500 + os.getpid() % 1000
    done = launch(port)
    if done.returncode != 0 and "SIGABRT" in done.stderr:
        # gloo's C++ teardown aborted both ranks once in CI ("terminate called without an
        # active exception"; not reproduced in 60 local runs): one retry, reported as a warning.
        warnings.warn(f"torchrun aborted, retried once: {done.stderr[-500:]}", stacklevel=1)
        done = launch(port + 1)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    # One process, the same global batch of 16: the two shards' first batches together.
    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, 256, (64, 1, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 4, (64,), generator=g)

    def loader(batch):
        return BatchLoader(x, y, batch_size=batch, shuffle=True, seed=3, mean=[0.5], std=[0.25])

    xb, yb = next(iter(loader(16)))
    assert sorted(yb.tolist()) == sorted(ranks[0]["batch"].tolist() + ranks[1]["batch"].tolist())
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=4, in_chans=1)
    task = ClassificationTask(4)
    task.loss(model(xb), yb).backward()
    for name, p in model.named_parameters():
        for r in ranks:  # every process holds the average: the single process's gradient
            assert torch.allclose(r["grads"][name], p.grad, rtol=1e-5, atol=1e-7), name
    # Rank 0's shard alone (even positions of the global batch) gives another gradient: the
    # equality above is the all-reduce's doing, not a coincidence.
    assert torch.equal(yb[0::2], ranks[0]["batch"])
    torch.manual_seed(0)
    alone = create_model("lenet5", num_classes=4, in_chans=1)
    task.loss(alone(xb[0::2]), yb[0::2]).backward()
    assert not all(torch.allclose(a.grad, p.grad, rtol=1e-3)
                   for a, p in zip(alone.parameters(), model.parameters(), strict=True))

    # Two epochs of the engine: same weights as one process stepping on the global batches,
    # and the validation metrics count every validation image once across the two processes.
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=4, in_chans=1)
    cfg = TrainConfig(epochs=2, lr=0.05, verbose=False, report=False, **FP32)
    result = Trainer(model, task, loader(16), loader(16), cfg).fit()
    for k, v in model.state_dict().items():
        assert torch.allclose(ranks[0]["model"][k], v, rtol=1e-4, atol=1e-6), k
        assert torch.equal(ranks[0]["model"][k], ranks[1]["model"][k]), k
    assert ranks[0]["val_count"] == int(result.accumulator.count) == 64


_DDP_BN_WORKER = """
import os
import sys
import torch
import cnnzoo.engine.loop as loop
from cnnzoo.data.loader import BatchLoader
from cnnzoo.engine.distributed import cleanup, init_distributed
from cnnzoo.engine.loop import TrainConfig, Trainer
from cnnzoo.engine.precision import Precision
from cnnzoo.engine.task import ClassificationTask
from cnnzoo.errors import DataError
from cnnzoo.models import create_model

out, mode = sys.argv[1], sys.argv[2]
ctx = init_distributed()
if mode == "fail":  # a data error on rank 1 alone, in the 2nd epoch, through the command line
    orig = loop.Trainer._train_epoch
    def failing(self, net, opt, sch, epoch):
        if epoch == 1 and ctx.rank == 1:
            raise DataError("rank 1 cannot read its images")
        return orig(self, net, opt, sch, epoch)
    loop.Trainer._train_epoch = failing
    from cnnzoo.cli import main
    sys.exit(main(["train", "lenet5", "--data", "digits", "--epochs", "3", "--out",
                   f"{out}/run", "--no-progress", "--no-tensorboard", "--precision", "fp32"]))
# 'auto' precision timed on each process can differ: rank 1 would pick bf16 here.
loop.choose_precision = lambda *a, **k: Precision("bf16" if ctx.rank else "fp32", False)
g = torch.Generator().manual_seed(5)
x = torch.randint(0, 256, (96, 1, 16, 16), generator=g, dtype=torch.uint8)
y = torch.randint(0, 3, (96,), generator=g)
def loader(sl):
    return BatchLoader(x[sl], y[sl], batch_size=16, shuffle=False, mean=[0.5], std=[0.25],
                       shard=ctx.shard)
torch.manual_seed(0)
model = create_model("resnet20", num_classes=3, in_chans=1)
cfg = TrainConfig(epochs=1, lr=0.3, progress=False, verbose=False, tensorboard=False,
                  report=False)
trainer = Trainer(model, ClassificationTask(3), loader(slice(0, 64)), loader(slice(64, 96)),
                  cfg, dist=ctx)
result = trainer.fit()
torch.save({"model": model.state_dict(), "final": result.final,
            "precision": trainer.precision.dtype}, f"{out}/rank{ctx.rank}.pt")
cleanup()
"""


def test_torchrun_ranks_validate_one_model_and_a_one_rank_error_ends_the_run(tmp_path):
    """Under torchrun every process scores its validation shard with rank 0's BatchNorm
    statistics and precision (those the checkpoint holds), so the metrics equal a single
    process's evaluation of rank 0's model; an error on one rank ends the run, no hang."""
    script = tmp_path / "worker.py"
    script.write_text(_DDP_BN_WORKER)
    port = 29500 + (os.getpid() + 500) % 1000

    def launch(mode: str, port: int) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(port), str(script),
               str(tmp_path), mode]
        return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)

    done = launch("fit", port)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["precision"] == ranks[1]["precision"] == "fp32"
    for k, v in ranks[0]["model"].items():
        assert torch.equal(v, ranks[1]["model"][k]), k
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (96, 1, 16, 16), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 3, (96,), generator=g)
    model = create_model("resnet20", num_classes=3, in_chans=1)
    model.load_state_dict(ranks[0]["model"])
    val = BatchLoader(x[64:], y[64:], batch_size=16, shuffle=False, mean=[0.5], std=[0.25])
    task = ClassificationTask(3)
    alone = Trainer(model, task, val, val, TrainConfig(epochs=1, **FP32)).evaluate(val).compute()
    for k, v in alone.items():
        assert ranks[0]["final"][k] == pytest.approx(v, rel=1e-5), k

    # A DataError on rank 1 alone: it exits at once (no barrier its peer never reaches), with
    # one line, and torchrun stops rank 0.
    done = launch("fail", port + 1)
    assert done.returncode != 0
    assert done.stderr.count("cnnzoo train: error: rank 1 cannot read its images") == 1
    assert "closed by peer" not in done.stderr  # rank 0: no gloo traceback


def test_under_torchrun_an_error_every_rank_meets_is_said_once(tmp_path, monkeypatch, capsys):
    """Bad data under torchrun printed its one line once per process: every rank loads the
    same folder and fails alike before the ranks first meet. An error after they met may be a
    rank's own (its shard: the test above) and is said by that rank; a NaN loss stops every
    rank together and is said once."""
    from PIL import Image

    from cnnzoo.engine import distributed
    from cnnzoo.engine.distributed import DistContext

    (tmp_path / "one" / "cat").mkdir(parents=True)
    for i in range(4):
        Image.new("L", (8, 8), 10 * i).save(tmp_path / "one" / "cat" / f"{i}.png")
    ranks = [DistContext(rank=r, world=2, local_rank=r, local_world=2) for r in (0, 1)]
    for ctx, lines in zip(ranks, (1, 0), strict=True):  # each process of a 2-process torchrun
        monkeypatch.setattr(distributed, "init_distributed", lambda ctx=ctx: ctx)
        with pytest.raises(SystemExit) as stop:
            sys.exit(main(["train", "lenet5", "--data", str(tmp_path / "one"), "--out",
                           str(tmp_path / "run")]))
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.count("cnnzoo train: error: ") == lines, err
        assert lines == 0 or "has a single class folder ('cat')" in err
    # After the ranks have met: a rank's own error is said by it, a NaN loss by local rank 0.
    monkeypatch.setattr(distributed, "_met", True)
    said_elsewhere = distributed.said_elsewhere
    assert not said_elsewhere(DataError("rank 1 cannot read its images"), ranks[1])
    trainer = Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), None,
                      TrainConfig(**FP32))  # fmt: skip
    with pytest.raises(TrainingError) as nan:
        trainer._diverged(0, 3, StepSchedule(build_optimizer(_TinyNet(), lr=0.1), 10))
    assert said_elsewhere(nan.value, ranks[1]) and not said_elsewhere(nan.value, ranks[0])


def test_under_torchrun_only_rank_0_reports_a_command_line_mistake(monkeypatch, capsys):
    for rank, lines in (("1", 0), ("0", 1)):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as stop:
            main(["train", "lenet5", "--data", "digits", "--epochs", "0"])
        assert stop.value.code == 2
        assert capsys.readouterr().err.count("--epochs") == lines


# --------------------------------------------------------------------------- command line


def _photo_folder(root: Path) -> None:
    """Two classes told apart by brightness, in PNG and JPEG, 24x20 pixels, plus the usual mess:
    a corrupt JPEG, a zero-byte PNG, a .txt note and an empty class folder."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for cls, level in (("cat", 50), ("dog", 190)):
        (root / cls).mkdir(parents=True)
        for i in range(12):
            a = (torch.randn(20, 24, 3, generator=g) * 20 + level).clamp(0, 255).to(torch.uint8)
            Image.fromarray(a.numpy()).save(root / cls / f"{i}.{'jpg' if i % 2 else 'png'}")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off here")
    (root / "dog" / "zero.png").write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("where these came from")
    (root / "empty").mkdir()


def test_cli_trains_on_a_messy_folder_and_evaluates(tmp_path, capsys, caplog):
    data, out = tmp_path / "imgs", tmp_path / "run"
    _photo_folder(data)
    args = ["train", "lenet5", "--data", str(data), "--epochs", "4", "--batch-size", "8",
            "--lr", "0.05", "--precision", "fp32", "--channels-last", "off", "--no-progress",
            "--erase", "0.25", "--tta", "--out", str(out)]
    train_args = args
    assert main(args) == 2  # the empty class folder: one line, nothing trained
    err = capsys.readouterr().err.strip()
    assert err == (f"cnnzoo train: error: class folder {data / 'empty'} has no images: add "
                   "images to it or remove it")
    assert not out.exists()

    (data / "empty").rmdir()
    caplog.clear()
    assert main(args) == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "cnnzoo.data"]
    assert warnings == [
        f"skipped {data / 'cat' / 'broken.jpg'}: truncated or corrupt image data "
        "(Truncated File Read)",
        f"skipped {data / 'dog' / 'zero.png'}: empty file (0 bytes)",
        "skipped 2 of 26 images (each named above, with why)",
        "ignored 1 file without an image extension (notes.txt)",
    ]
    err = capsys.readouterr().err
    assert "Splits(2 classes, train=20, val=4, 3x32x32)" in err  # all 24 good images, colour
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr",
            "images_per_s"} <= set(records[-1])
    assert list((out / "tb").glob("events.out.tfevents.*"))  # TensorBoard logs
    for name in ("curves.png", "confusion.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_class = (out / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,precision,recall,support"
    assert [ln.split(",")[0] for ln in per_class[1:]] == ["cat", "dog"]
    assert sum(int(ln.split(",")[3]) for ln in per_class[1:]) == 4

    # evaluate: by default the run's own validation split (4 images), its numbers as trained.
    capsys.readouterr()
    assert main(["evaluate", str(out / "last.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(map(sum, report["confusion"])) == 4
    assert abs(report["acc"] - records[-1]["val_acc"]) < 1e-9
    assert abs(report["top5"] - records[-1]["val_top5"]) < 1e-9
    assert main(["evaluate", str(out / "last.pt"), "--json", "--tta"]) == 0  # flip averaging
    assert sum(map(sum, json.loads(capsys.readouterr().out)["confusion"])) == 4
    # (its loss is plain cross-entropy; the training log's val_loss includes label smoothing)
    # Another folder is a held-out set: all of its images count.
    assert main(["evaluate", str(out / "last.pt"), "--data", str(data), "--split", "all"]) == 0
    text = capsys.readouterr().out
    # The first line names the images scored: it said only "24 images", the same words as
    # for the run's validation split (4 of them), so which one was scored went unsaid.
    assert text.startswith(f"{data}, all its images, the training ones too: 24 images, accuracy ")
    assert main(["evaluate", str(out / "last.pt"), "--data", str(data)]) == 0
    assert capsys.readouterr().out.startswith(f"{data}, the run's validation split: 4 images, "
                                              "accuracy ")  # fmt: skip
    assert main(["evaluate", str(out / "last.pt"), "--json", "--split", "all"]) == 0
    assert {k: v for k, v in json.loads(capsys.readouterr().out).items()
            if k in ("data", "split")} == {"data": str(data), "split": "all"}  # fmt: skip
    assert "confusion matrix (rows: true class, columns: predicted)" in text
    assert main(["evaluate", str(tmp_path / "nothing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # A held-out folder of one class is scored (a training folder needs two).
    import shutil

    shutil.copytree(data / "dog", tmp_path / "held" / "dog")
    assert main(["evaluate", str(out / "last.pt"), "--data", str(tmp_path / "held")]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'held'}, all its images: 12 images, "
                                              "accuracy ")  # fmt: skip
    (tmp_path / "one" / "dog").mkdir(parents=True)
    shutil.copy(data / "dog" / "0.png", tmp_path / "one" / "dog")
    assert main(["evaluate", str(out / "last.pt"), "--data", str(tmp_path / "one")]) == 0
    assert ": 1 image, accuracy " in capsys.readouterr().out  # not "1 images"
    # One line each, before anything is predicted: a folder for the checkpoint, a --confusion
    # matplotlib cannot write, a class the model does not know.
    for args, expect in [
        ([str(out)], f"{out} is a folder: give a checkpoint file, e.g. {out / 'best.pt'}"),
        ([str(out / "last.pt"), "--confusion", str(tmp_path / "cm.txt")],
         "give a picture file name ending in .png"),
        ([str(out / "last.pt"), "--data", "digits"], "has classes the model was not trained on"),
    ]:
        assert main(["evaluate", *args]) == 2
        captured = capsys.readouterr()
        assert expect in captured.err and captured.err.count("\n") == 1 and not captured.out
    # Images added since training move the split: "the validation split" would now hold
    # training images, so it is refused; the same folder as a held-out set (--split all) is not.
    shutil.copy(data / "dog" / "0.png", data / "dog" / "new.png")
    assert main(["evaluate", str(out / "last.pt")]) == 2
    captured = capsys.readouterr()
    assert "has changed since the run was trained" in captured.err and not captured.out
    assert main(["evaluate", str(out / "last.pt"), "--split", "all"]) == 0
    # Resumed on the changed folder: the checkpoints keep the split the run started with.
    longer = [a if a != "4" else "5" for a in train_args]
    assert main([*longer, "--resume"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out / "last.pt")]) == 2
    assert "has changed since the run was trained" in capsys.readouterr().err
    (data / "dog" / "new.png").unlink()  # as trained again: scored again
    assert main(["evaluate", str(out / "last.pt")]) == 0


def test_cli_refuses_to_replace_or_mix_runs_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "lenet5", "--data", "digits", "--epochs", "1", "--precision", "fp32",
            "--channels-last", "off", "--no-progress", "--no-tensorboard", "--out", str(out)]
    assert main(base) == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    def error(args: list[str]) -> str:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "Traceback" not in "\n".join(err)
        return err[-1]

    assert error(base) == (f"cnnzoo train: error: {out} holds a run (last.pt): pass --resume "
                           "(resume=True) to continue it, --overwrite (overwrite=True) to replace "
                           "it, or another --out")  # fmt: skip
    assert error(["train", "resnet20", *base[2:], "--resume"]) == (
        f"cnnzoo train: error: the checkpoint in {out} is lenet5, not resnet20: resume it as "
        "`cnnzoo train lenet5 ... --resume`, or start a new run with another --out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # the run as it was
    (tmp_path / "afile").write_text("")
    assert error([*base[:-1], str(tmp_path / "afile")]) == (
        f"cnnzoo train: error: --out {tmp_path / 'afile'}: {tmp_path / 'afile'} is a file, not a "
        "folder: choose another folder")
    # unet defaults to --task segmentation; asked to classify, it is refused before any work.
    assert error(["train", "unet", "--task", "classification", *base[2:-1],
                  str(tmp_path / "u")]) == (
        "cnnzoo train: error: unet is a segmentation model: train it with --task segmentation "
        "(data: 'cells', or a folder with images/ and masks/)")
    assert error(["train", "unet", *base[2:-1], str(tmp_path / "u")]).endswith(
        "digits is neither a folder with images/ and masks/ nor a .csv manifest.")
    assert not (tmp_path / "u").exists()
    # An input size the model cannot take, in the option's words (not "resize the images").
    assert error([*base[:-1], str(tmp_path / "small"), "--img-size", "28"]) == (
        "cnnzoo train: error: --img-size 28 (img_size=): lenet5 takes inputs of at least 32 px")
    # A run inside its own data folder: the next run would read its curves.png as a class
    # 'run'. Refused before any work. (A segmentation folder reads only images/ and masks/:
    # DIR/runs/ is allowed there.)
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    inside = tmp_path / "imgs" / "run"
    assert error(["train", "lenet5", "--data", str(tmp_path / "imgs"), "--out",
                  str(inside)]).endswith(f"lies inside the data folder {tmp_path / 'imgs'}: the "
                                         "next run would read its files as images; choose an "
                                         "output folder outside it")  # fmt: skip
    assert not inside.exists()


def test_segmentation_resume_checks_model_options_and_encoder_errors_read_cleanly(
        tmp_path, monkeypatch):
    from cnnzoo.errors import WeightsError
    from cnnzoo.segmentation.training import build_model, train

    said: list[str] = []  # the engine's lines (resume warnings) go to `say` too
    opts = dict(cells=4, crop=32, batch_size=2, epochs=1, base_width=4, progress=False,
                tensorboard=False, report=False, precision="fp32", channels_last="off",
                say=said.append)
    train("cells", out_dir=tmp_path, **opts)
    kept = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(TrainingError) as err:
        train("cells", out_dir=tmp_path, resume=True, **{**opts, "base_width": 8})
    assert str(err.value) == (
        f"the checkpoint in {tmp_path} was trained with other model options (base_width=4, not "
        "base_width=8): resume with the checkpoint's options, or start a new run with another "
        "--out")
    with pytest.raises(TrainingError, match="holds a run"):
        train("cells", out_dir=tmp_path, **opts)
    assert (tmp_path / "last.pt").read_bytes() == kept
    said.clear()
    train("cells", out_dir=tmp_path, resume=True, loss="dice", **{**opts, "epochs": 2})
    assert any("loss (was ce+dice, now dice)" in line for line in said), said
    # Another --cells is other data of the same name: warned, with the old counts.
    train("cells", out_dir=tmp_path, resume=True, loss="dice",
          **{**opts, "epochs": 3, "cells": 6})  # fmt: skip
    assert any("images (was train 3, val 1, now train 5, val 1)" in line for line in said)

    with pytest.raises(UsageError, match="^--encoder-weights needs --encoder NAME"):
        build_model(2, 1, encoder_weights="imagenet")
    # base_width as a --model-arg lost to --base-width's default (a 16-wide net was trained).
    for option, flag in (("base_width", "--base-width"), ("padding", "--padding")):
        with pytest.raises(UsageError, match=f"^{option} has an option of its own: use {flag}"):
            build_model(2, 1, model_kwargs={option: 8})
    missing = tmp_path / "nothing.pth"
    with pytest.raises(WeightsError) as err:
        build_model(2, 1, encoder_name="resnet18", encoder_weights=str(missing))
    assert str(err.value) == f"{missing}: no such weights file"  # no 'bad model option' prefix
    for var in ("CNNZOO_CACHE", "TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "empty"))
    with pytest.raises(WeightsError) as err:
        build_model(2, 1, encoder_name="resnet18", encoder_weights="imagenet")
    msg = str(err.value)
    assert msg.startswith("resnet18 weights 'imagenet' are not on this machine")
    assert "(--encoder-weights path/resnet18-" in msg and "CLI --weights" not in msg


def test_vgg_stages_option_builds_the_small_fashion_mnist_vgg():
    # The accuracy benchmark's net: VGG-13 (configuration B) at half width, first three stages.
    m = create_model("vgg13_bn", num_classes=10, in_chans=1, stages=3, width_mult=0.5,
                     fc_dim=256, pool_size=4, dropout=0.0)
    assert m.config == [64, 64, "M", 128, 128, "M", 256, 256, "M"]
    convs = [(1, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
    hand = sum(i * 9 * o + o + 2 * o for i, o in convs)  # conv weight + bias, BN scale + shift
    hand += (128 * 4 * 4 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)
    assert sum(p.numel() for p in m.parameters()) == hand == 880_234
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="stages must lie in 1..5"):
        create_model("vgg11", stages=6)
    # One multiplier per stage, as --model-arg passes it: a narrower first stage.
    m = create_model("vgg13_bn", num_classes=10, in_chans=1, stages=3,
                     width_mult="0.375,0.5,0.5", fc_dim=256, pool_size=3, dropout=0.0)
    convs = [(1, 24), (24, 24), (24, 64), (64, 64), (64, 128), (128, 128)]
    hand = sum(i * 9 * o + o + 2 * o for i, o in convs)
    hand += (128 * 3 * 3 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)
    assert sum(p.numel() for p in m.parameters()) == hand
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ModelOptionError, match=r"width_mult needs 3 multipliers, one per stage \(or"):
        create_model("vgg13_bn", stages=3, width_mult=[0.5, 0.5])
    with pytest.raises(ModelOptionError, match="width_mult must be positive, not 0$"):
        create_model("vgg13_bn", stages=3, width_mult=0)  # it said "3 positive ..., not 3"
    # What the model's name decides, and a word where a number belongs: one line each.
    with pytest.raises(ModelOptionError, match="lenet5 sets classic itself, so it is not one of "
                                               "its options; the lenet models are lenet5, "
                                               "lenet5_classic"):  # fmt: skip
        create_model("lenet5", classic=True)
    with pytest.raises(ModelOptionError, match=r"alexnet: dropout is a probability, a number in "
                                               r"\[0, 1\), not 'none'$"):  # fmt: skip
        create_model("alexnet", dropout="none")
    with pytest.raises(ModelOptionError, match="one number per stage separated by commas"):
        create_model("vgg13_bn", stages=3, width_mult="0.5;0.5;0.5")


def test_a_bad_model_option_is_one_line_on_the_command_line(tmp_path, capsys):
    code = main(["train", "vgg13_bn", "--data", "digits", "--model-arg", "stages=3",
                 "--model-arg", "width_mult=0.25,0.5", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1] == ("cnnzoo train: error: vgg13_bn: bad model option in stages=3 "
                       "width_mult=0.25,0.5: width_mult needs 3 multipliers, one per stage (or "
                       "one for all), not 2: [0.25, 0.5]")


def test_vgg_min_size_follows_stages_so_fashion_mnist_trains_at_28px():
    from cnnzoo.engine.run import default_image_size
    from cnnzoo.errors import InputSizeError
    from cnnzoo.models import get_config, min_input_size

    assert min_input_size("vgg13_bn") == get_config("vgg13_bn").min_size == 32
    for stages in (1, 3, 4):
        m = create_model("vgg11_bn", num_classes=10, in_chans=1, stages=stages,
                         width_mult=0.25, fc_dim=16, pool_size=1).eval()
        size = min_input_size("vgg11_bn", stages=stages, width_mult=0.25)
        assert size == m.default_cfg.min_size == 2**stages
        # min_size is the true minimum: one pixel less leaves an empty map after the last pool.
        assert m.forward_head(m.forward_features(torch.zeros(1, 1, size, size))).shape == (1, 10)
        with pytest.raises(RuntimeError):
            m.forward_head(m.forward_features(torch.zeros(1, 1, size - 1, size - 1)))
    m = create_model("vgg11_bn", num_classes=10, stages=3, width_mult=0.25, fc_dim=16).eval()
    with pytest.raises(InputSizeError, match="at least 8x8"):
        m(torch.zeros(1, 3, 7, 7))
    cfg = get_config("vgg13_bn")
    assert default_image_size("fashion-mnist", cfg) == 32
    assert default_image_size("fashion-mnist", cfg, min_input_size("vgg13_bn", stages=3)) == 28
    # 8-pixel digits go back to the 32 px of the bitmaps they were averaged from.
    assert default_image_size("digits", cfg, min_input_size("vgg13_bn", stages=3)) == 32


def test_a_folder_of_small_images_trains_at_their_own_size_and_colour(tmp_path, capsys):
    """Upsampling 28-px images to a VGG's 224 px adds no detail for 64x the compute (161 s an
    epoch for vgg13_bn stages=3 on an exported Fashion-MNIST folder). Tiny images go up to 32
    (resnet20 on 8-px digit files: 0.275 against 0.55 at 32 px); grey images train a 1-channel
    net and colour ones a 3-channel one, as the built-ins do."""
    from PIL import Image

    from cnnzoo.data.images import image_header, load_image
    from cnnzoo.engine.run import image_size_choice
    from cnnzoo.models import get_config, min_input_size

    def folder(root: Path, sizes: list[tuple[int, int]], mode: str = "L") -> Path:
        for i, (w, h) in enumerate(sizes):  # (width, height) per image, two classes
            (root / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
            Image.new(mode, (w, h), (60 + 80 * (i % 2),) * len(mode)).save(
                root / "ab"[i % 2] / f"{i}.png")
        return root

    vgg, residual = get_config("vgg13_bn"), get_config("residual_net")
    three_pools = min_input_size("vgg13_bn", stages=3)
    assert (three_pools, vgg.min_size, vgg.input_size[1], residual.input_size[1]) == (8, 32, 224, 28)

    def choice(data: Path, cfg=vgg, least=three_pools) -> tuple[int, str]:
        return image_size_choice(str(data), cfg, least)

    assert choice(folder(tmp_path / "s48", [(48, 48)] * 4)) == (48, "the images' own size")
    mixed = folder(tmp_path / "mixed", [(40, 40)] * 3 + [(48, 48)])
    assert choice(mixed) == (48, "the images' largest side")
    assert choice(folder(tmp_path / "wide", [(40, 30)] * 4)) == (
        40, "the images' own size; non-square images are squashed to a square")
    small = folder(tmp_path / "small", [(28, 28)] * 10)
    (small / "a" / "broken.png").write_bytes(b"not a png")  # no header: skipped later
    assert choice(small) == (32, "the images are 28 px, raised to 32, the least cnnzoo trains "
                                 "small images at")  # fmt: skip
    assert choice(small, least=32) == (32, "the images are 28 px, raised to 32, vgg13_bn's "
                                           "minimum")  # fmt: skip
    assert choice(folder(tmp_path / "big", [(300, 300)] * 2 + [(40, 40)] * 2)) == (224, "")
    # Only the parts training reads decide: a test/ part of larger images does not.
    parts = tmp_path / "parts"
    folder(parts / "train", [(40, 40)] * 4)
    folder(parts / "val", [(44, 44)] * 2)
    folder(parts / "test", [(300, 300)] * 2)
    assert choice(parts) == (44, "the images' largest side")
    manifest = tmp_path / "list.csv"  # a manifest is sized by the images it lists
    manifest.write_text("".join(f"{q.relative_to(tmp_path)},{q.parent.name}\n"
                                for q in sorted(mixed.rglob("*.png"))))
    assert choice(manifest) == (48, "the images' largest side")
    # residual_net is built for one size: its default, and how to build it for the images'.
    assert choice(small, residual, 28) == (28, "the images' own size; residual_net is built "
                                               "for it")  # fmt: skip
    assert choice(mixed, residual, 28) == (
        28, "residual_net is built for 28 px, the images are up to 48 px: --model-arg "
            "img_size=48 builds it for theirs")  # fmt: skip
    # A phone held upright stores 30x20 with EXIF orientation 6; it decodes as 20x30.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (30, 20)).save(tmp_path / "turned.jpg", exif=exif)
    assert image_header(tmp_path / "turned.jpg") == (20, 30, False)
    assert load_image(tmp_path / "turned.jpg").size == (20, 30)

    out = tmp_path / "run"
    args = ["train", "vgg11_bn", "--model-arg", "stages=3", "--model-arg", "width_mult=0.25",
            "--model-arg", "fc_dim=16", "--data", str(small), "--epochs", "1", "--batch-size",
            "4", "--precision", "fp32", "--channels-last", "off", "--no-progress",
            "--no-tensorboard", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "1x32x32), training at 32x32 (the images are 28 px, raised to 32, the least cnnzoo " \
           "trains small images at; --img-size N, img_size=N, for another)" in err
    meta = load_checkpoint(out / "last.pt")["meta"]
    assert (meta["img_size"], meta["in_chans"]) == (32, 1)
    # create_model builds it with the options the run recorded (stages=3, ...), not defaults;
    # so do convert and transfer, and their outputs record them (they did not, and did not load).
    again = create_model("vgg11_bn", weights=str(out / "last.pt"))
    assert again.weights_info.preprocessing.crop_size == 32 and len(again.features) < 20
    from cnnzoo import load_bundle, transfer
    from cnnzoo.weights import convert_file

    convert_file(out / "last.pt", tmp_path / "vgg.safetensors", "vgg11_bn")
    assert len(create_model("vgg11_bn", weights=str(tmp_path / "vgg.safetensors")).features) < 20
    said: list[str] = []
    transfer(str(small), model="vgg11_bn", weights=str(out / "last.pt"), mode="features",
             out=tmp_path / "tr", say=said.append, progress=False)  # fmt: skip
    bundle = load_bundle(tmp_path / "tr" / "bundle")
    assert bundle.extra["model_kwargs"] == meta["model_kwargs"]
    # ... and squash the images whole, as the run did (transfer cropped them by default).
    assert bundle.fit == "resize" and "as these weights were trained: fit resize" in said[0]
    assert len(bundle.predict(sorted(small.rglob("[0-9]*.png"))).classes) == 10
    # A larger colour image added: resumed, the run keeps the size and channels it began with.
    Image.new("RGB", (100, 100), (200, 30, 30)).save(small / "a" / "big.png")
    assert choice(small)[0] == 100
    assert main([*(a if a != "1" else "2" for a in args), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "1x32x32), training at 32x32" in err and "different img_size" not in err
    assert load_checkpoint(out / "last.pt")["meta"]["img_size"] == 32
    # Colour images train a 3-channel LeNet-5 (grey by default); --channels decides.
    colour = folder(tmp_path / "colour", [(32, 32)] * 10, mode="RGB")
    for extra, chans in (([], 3), (["--channels", "1"], 1)):
        assert main(["train", "lenet5", "--data", str(colour), "--epochs", "1", "--batch-size",
                     "4", "--precision", "fp32", "--channels-last", "off", "--no-progress",
                     "--no-tensorboard", "--overwrite", "--out", str(tmp_path / "lenet"),
                     *extra]) == 0  # fmt: skip
        assert f"{chans}x32x32), training at 32x32" in capsys.readouterr().err


def test_a_vgg_cut_for_small_images_hears_about_its_imagenet_head():
    from cnnzoo.engine.run import say_head_note

    said: list[str] = []
    for kwargs in ({"stages": 3, "width_mult": 0.25}, {"stages": 3, "fc_dim": 256}, {}):
        with torch.device("meta"):
            net = create_model("vgg11_bn", num_classes=10, in_chans=1, **kwargs)
        say_head_note("vgg11_bn", net, kwargs, said.append)
    with torch.device("meta"):
        net = create_model("resnet20", num_classes=10)
    say_head_note("resnet20", net, {"stages": 3}, said.append)
    # By hand: the last stage has 256 / 4 = 64 channels, so the head is 7*7*64*4096 + 4096
    # + 4096*4096 + 4096 + 4096*10 + 10 = 29,671,434.
    assert said == ["note: vgg11_bn with stages=3 keeps the ImageNet head: 29,671,434 of its "
                    "29,732,010 parameters; --model-arg fc_dim=256 --model-arg pool_size=3 fit "
                    "small images (docs/training.md)"]


def test_a_vgg_whose_last_map_is_smaller_than_its_pool_hears_which_pool_size_fits():
    """`cnnzoo train vgg11_bn --data digits` (32 px) pools the 1x1 map of its fifth stage to the
    7x7 grid of the ImageNet net: 49 copies of each feature into fc6, 25088 x 4096 weights that
    then step 49 times too far. With the default recipe the loss went to 213 in epoch 1
    (validation loss 2e14) and NaN in epoch 2, with no word about the pool; pool_size=1 trained
    (loss 2.13). The run now says which pool_size the map fits."""
    from cnnzoo.engine.run import say_head_note

    said: list[str] = []
    for kwargs, size in (({}, 32), ({}, 224), ({"pool_size": 1}, 32), ({}, 100),
                         ({"stages": 3, "fc_dim": 256, "pool_size": 3}, 28)):  # fmt: skip
        with torch.device("meta"):
            net = create_model("vgg11_bn", num_classes=10, in_chans=1, **kwargs)
        say_head_note("vgg11_bn", net, kwargs, said.append, size=size)
    assert said == [
        "note: at 32 px vgg11_bn's last feature map is 1x1, which pool_size=7 spreads over 7x7 "
        "for the first dense layer (its weights then step as if 49 times as wide); "
        "--model-arg pool_size=1 fits it",
        "note: at 100 px vgg11_bn's last feature map is 3x3, which pool_size=7 spreads over 7x7 "
        "for the first dense layer (its weights then step as if 5 times as wide); "
        "--model-arg pool_size=3 fits it",
    ]


def test_accumulator_counts_and_flip_tta_averages_logits():
    acc = ClassificationTask(4).metrics()
    logits = torch.tensor([[4.0, 3, 2, 1], [1, 4, 3, 2], [1, 2, 3, 4], [4, 1, 2, 3]])
    targets = torch.tensor([0, 2, 0, 3])
    acc.update(logits, targets, torch.tensor(0.5))
    acc.update(logits[:2], targets[:2], torch.tensor(1.5))
    # hits: top-1 rows 0 (twice); top-5 of 4 classes: everything; loss mean of batch means
    assert acc.compute() == {"loss": (0.5 * 4 + 1.5 * 2) / 6, "acc": 2 / 6, "top5": 1.0}
    assert int(acc.correct) == 2 and int(acc.confusion.sum()) == 6

    class Asym(nn.Module):  # logits from the left half only: a flip changes them
        def forward(self, x):
            return x[..., :2].flatten(1)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 2, 4, generator=g)
    loader = [(x, torch.arange(6) % 4)]
    trainer = Trainer(Asym(), ClassificationTask(4), loader, config=TrainConfig(**FP32))
    plain = trainer.evaluate(loader).compute()
    tta = trainer.evaluate(loader, tta=True).compute()
    avg = (x[..., :2].flatten(1) + x.flip(-1)[..., :2].flatten(1)) / 2
    want = torch.nn.functional.cross_entropy(avg, torch.arange(6) % 4).item()
    assert abs(tta["loss"] - want) < 1e-6 and tta != plain


def test_flip_tta_mirrors_dense_outputs_back():
    from cnnzoo.segmentation.task import SegmentationTask

    torch.manual_seed(0)
    net = nn.Conv2d(1, 2, 1)  # per-pixel, so a mirrored input gives exactly the mirrored map
    x = torch.rand(3, 1, 5, 6)
    masks = (torch.rand(3, 5, 6) > 0.5).long()
    loader = [(x, masks)]
    trainer = Trainer(net, SegmentationTask(2, loss="ce"), loader, config=TrainConfig(**FP32))
    plain = trainer.evaluate(loader).compute()
    tta = trainer.evaluate(loader, tta=True).compute()
    # Averaging the map with its mirror-back is the map itself; unaligned it would not be.
    assert plain.keys() == tta.keys()
    assert all(abs(plain[k] - tta[k]) < 1e-6 for k in plain)


def test_flip_shift_tta_views_and_their_undo():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5)
    assert len(tta_views(x, True)) == 2 and len(tta_views(x, "flip-shift")) == 10
    views = tta_views(x, "flip-shift")
    # The third view is x shifted by (-1, -1): view[i, j] = x[i - 1, j - 1], reflected at the
    # top-left edge (row -1 is row 1); the fifth is shifted by (-1, +1).
    v = views[2][0]
    assert torch.equal(v[..., 1:, 1:], x[..., :-1, :-1])
    assert torch.equal(v[..., 0, 1:], x[..., 1, :-1])
    assert torch.equal(views[4][0][..., 1:, :-1], x[..., :-1, 1:])
    assert torch.equal(views[3][0], v.flip(-1))
    # Dense outputs go back into place: a per-pixel map of each view, undone, equals the map
    # of x away from the one-pixel border the shifts fill by reflection.
    torch.manual_seed(0)
    net = nn.Conv2d(1, 2, 1)
    ref = net(x)
    for view, undo in views:
        back = undo(net(view))
        assert back.shape == ref.shape
        assert torch.allclose(back[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5)
    # Class logits are left alone.
    logits = torch.randn(2, 3)
    assert all(torch.equal(undo(logits), logits) for _, undo in views)
    with pytest.raises(ValueError, match="flip-shift"):
        tta_views(x, "rotate")
    # The CLI spells the modes out (no torch import while parsing): they must agree.
    import argparse

    from cnnzoo.commands.train import add_tta_argument

    p = argparse.ArgumentParser()
    add_tta_argument(p, "tta")
    assert tuple(p._option_string_actions["--tta"].choices) == TTA_MODES


def test_flip_shift_tta_undoes_outputs_smaller_than_the_input():
    """A 'valid' U-Net's output is its input less a trimmed border: `train unet --padding valid
    --tta flip-shift` ended, after its last epoch, in a traceback (torch.stack of 260- and
    262-px maps), as the undo cropped each shifted map to the input's size."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 12, 14)

    def net(v: torch.Tensor) -> torch.Tensor:  # a per-pixel map, 3 px trimmed per side
        return torch.cat([v, 1 - v], 1)[..., 3:-3, 3:-3]

    ref = net(x)
    for view, undo in tta_views(x, "flip-shift"):
        back = undo(net(view))
        assert back.shape == ref.shape
        # In place, away from the one-pixel rim the shifts fill.
        assert torch.equal(back[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])


def test_flip_shift_tta_of_one_pixel_images():
    """A net trained at --img-size 1 (resnet20 takes it) with --tta flip-shift trained, then
    ended in a RuntimeError traceback from reflect padding before writing its report, and
    `cnnzoo evaluate --tta flip-shift` did the same."""
    dot = torch.arange(6.0).view(2, 3, 1, 1)
    views = tta_views(dot, "flip-shift")
    assert len(views) == 10 and all(torch.equal(v, dot) for v, _ in views)  # nothing to shift
    row = torch.arange(10.0).view(2, 1, 1, 5)  # 1 px high: the columns still shift
    views = tta_views(row, "flip-shift")
    assert all(v.shape == row.shape for v, _ in views)
    assert torch.equal(views[2][0][..., 1:], row[..., :-1])


# --------------------------------------------------------------------------- mixup / CutMix


def _distinct_images(n: int = 6, size: int = 8) -> torch.Tensor:
    # Image i is the constant i + 1, so every pixel tells which image it came from.
    return torch.arange(1.0, n + 1).view(n, 1, 1, 1).expand(n, 2, size, size).contiguous()


def test_mixup_blends_each_image_with_its_partner_reproducibly_per_epoch():
    x = _distinct_images()
    mixer = BatchMixer(mixup=0.4, seed=3)
    mixer.set_epoch(2)
    mixed, mix = mixer(x)
    assert sorted(mix.perm.tolist()) == list(range(6)) and 0.0 <= mix.lam <= 1.0
    expected = mix.lam * x + (1 - mix.lam) * x[mix.perm]
    torch.testing.assert_close(mixed, expected)
    assert torch.equal(x, _distinct_images())  # the batch itself is left alone
    again = BatchMixer(mixup=0.4, seed=3)
    again.set_epoch(2)  # what a resumed run does at the start of the epoch
    mixed2, mix2 = again(x)
    assert torch.equal(mixed, mixed2) and torch.equal(mix.perm, mix2.perm)
    again.set_epoch(3)
    assert again(x)[1].lam != mix.lam
    with pytest.raises(ValueError, match="mixup alpha must be >= 0"):
        BatchMixer(mixup=-0.1)


def test_cutmix_pastes_one_box_and_lam_is_the_share_left():
    x = _distinct_images(n=8, size=16)
    mixer = BatchMixer(cutmix=1.0, seed=0)
    for _ in range(10):
        mixed, mix = mixer(x)
        for i in range(8):
            own = mixed[i] == x[i]
            partner = mixed[i] == x[mix.perm[i]]
            assert bool((own | partner).all())  # pixels are copied, never blended
            if mix.perm[i] == i:
                continue
            pasted = (~own[0]).nonzero()
            share = float(own[0].double().mean())
            assert share == pytest.approx(mix.lam)
            if len(pasted):  # one axis-aligned box, the same in every channel
                (y0, x0), (y1, x1) = pasted.min(0).values, pasted.max(0).values
                assert len(pasted) == (y1 - y0 + 1) * (x1 - x0 + 1)
                assert torch.equal(own[0], own[1])
    # Both on: each batch is one or the other, about half each.
    both = BatchMixer(mixup=0.4, cutmix=1.0, seed=0)
    kinds = []
    for _ in range(40):
        mixed, mix = both(x)
        copied = bool(((mixed == x) | (mixed == x[mix.perm])).all())
        kinds.append(copied)
    assert 10 <= sum(kinds) <= 30


def test_a_mixup_step_is_cross_entropy_against_the_mixed_soft_targets():
    # Independent truth: F.cross_entropy with probability targets lam*onehot(y) +
    # (1-lam)*onehot(y[perm]) on the mixed batch, stepped by plain SGD by hand.
    loader = _tiny_loader(n=16, batch=16)  # one step
    net = _TinyNet()
    ref = _TinyNet()
    ref.load_state_dict(net.state_dict())
    cfg = TrainConfig(epochs=1, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0,
                      schedule="constant", mixup=0.4, seed=5, **FP32)
    Trainer(net, ClassificationTask(3), loader, config=cfg).fit()

    loader.set_epoch(0)
    x, y = next(iter(loader))
    mixer = BatchMixer(mixup=0.4, seed=5)
    mixed, mix = mixer(x)
    assert 0.05 < mix.lam < 0.95  # a real blend, so that the check below means something
    soft = mix.lam * F.one_hot(y, 3).float() + (1 - mix.lam) * F.one_hot(y[mix.perm], 3).float()
    ref.train()
    F.cross_entropy(ref(mixed), soft).backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.1 * p.grad
    for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


class _DiesAtEpoch:
    """A loader that raises (a killed process) when epoch `die` starts, once."""

    def __init__(self, loader, die: int) -> None:
        self.loader, self.die = loader, die

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)

    def set_epoch(self, epoch):
        if epoch == self.die:
            self.die = -1
            raise KeyboardInterrupt
        self.loader.set_epoch(epoch)


def test_a_resumed_mixup_run_mixes_as_the_uninterrupted_one(tmp_path):
    cfg = TrainConfig(epochs=3, lr=0.05, mixup=0.4, cutmix=1.0, seed=1, **FP32)
    init = _TinyNet().state_dict()
    whole, killed, resumed = _TinyNet(), _TinyNet(), _TinyNet()
    for net in (whole, killed):
        net.load_state_dict(init)
    Trainer(whole, ClassificationTask(3), _tiny_loader(), config=cfg).fit()
    dying = _DiesAtEpoch(_tiny_loader(), die=2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(killed, ClassificationTask(3), dying, config=cfg, out_dir=tmp_path).fit()
    Trainer(resumed, ClassificationTask(3), _tiny_loader(), config=cfg,
            out_dir=tmp_path).fit(resume=True)  # fmt: skip
    assert not torch.equal(whole.fc.weight, torch.as_tensor(init["fc.weight"]))
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    # And the mixing mattered: the same run without it ends elsewhere.
    plain = _TinyNet()
    plain.load_state_dict(init)
    Trainer(plain, ClassificationTask(3), _tiny_loader(),
            config=TrainConfig(epochs=3, lr=0.05, seed=1, **FP32)).fit()  # fmt: skip
    assert not torch.equal(plain.fc.weight, whole.fc.weight)


def test_mixing_is_refused_for_segmentation_and_parsed_from_the_command_line(capsys):
    from cnnzoo.cli import build_parser
    from cnnzoo.commands import train as train_cmd
    from cnnzoo.commands import transfer as transfer_cmd
    from cnnzoo.segmentation.task import SegmentationTask

    with pytest.raises(TrainingError, match="the segmentation task has none"):
        Trainer(_TinyNet(), SegmentationTask(2), _tiny_loader(), config=TrainConfig(mixup=0.2))
    args = build_parser().parse_args(["train", "lenet5", "--data", "digits", "--mixup", "0.2",
                                      "--cutmix", "1"])  # fmt: skip
    cfg = train_cmd.config_from_args(args)
    assert (cfg.mixup, cfg.cutmix) == (0.2, 1.0)
    args = build_parser().parse_args(["transfer", "x", "--cutmix", "0.5"])
    ft = transfer_cmd.config_from_args(args).finetune
    assert ft.cutmix == 0.5 and ft.mixup == FinetuneConfig.mixup
    with pytest.raises(SystemExit):
        build_parser().parse_args(["transfer", "x", "--mixup", "-1"])
    assert "--mixup: must be an alpha >= 0 (0: off), e.g. 0.4, not '-1'" in capsys.readouterr().err


def test_built_in_names_in_any_spelling_are_the_built_in_sets(tmp_path, monkeypatch):
    """Sizing and augmentation read a data source's name as load_dataset does: 'FMNIST' was
    taken for a folder (224 px for a VGG, 60,000 images resized in memory), and a folder named
    'digits' for the built-in set."""
    from cnnzoo.engine.run import DataOptions, augment_kind, default_image_size
    from cnnzoo.models import get_config

    cfg = get_config("vgg13_bn")
    assert default_image_size("FMNIST", cfg, 8) == default_image_size("fashion-mnist", cfg, 8) == 28
    assert augment_kind(DataOptions("Digits")) == "crop"  # no flips for digits
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()  # now 'digits' is that folder, as load_dataset reads it
    assert augment_kind(DataOptions("digits")) == "flip-crop"
    assert default_image_size("digits", cfg) == 224


def test_residual_net_is_built_for_the_size_it_trains_at(tmp_path, capsys):
    """Its dense layer sees the flattened map, so it takes one input size. Digits train at 32 px
    (the net's default is 28), or at its img_size option; both were errors that named the
    Python API."""
    from cnnzoo.engine.checkpoint import load_checkpoint

    base = ["train", "residual_net", "--data", "digits", "--epochs", "1", "--precision", "fp32",
            "--channels-last", "off", "--no-progress", "--no-tensorboard", "--overwrite"]
    for extra, size in (([], 32), (["--model-arg", "img_size=12"], 12)):
        assert main([*base, *extra, "--out", str(tmp_path / str(size))]) == 0
        meta = load_checkpoint(tmp_path / str(size) / "last.pt")["meta"]
        assert meta["img_size"] == meta["model_kwargs"]["img_size"] == size
    capsys.readouterr()
    assert main([*base, "--img-size", "16", "--model-arg", "img_size=12", "--out",
                 str(tmp_path / "x")]) == 2  # fmt: skip
    assert "residual_net is built for the size it trains at" in capsys.readouterr().err
    # Its size option is checked as --img-size is, before any image is loaded; and it cannot
    # start small (--progressive).
    for extra, message in ((["--model-arg", "img_size=100000"], "a whole number from 2 to 4096"),
                           (["--model-arg", "img_size=abc"], "a whole number from 2 to 4096"),
                           (["--img-size", "32", "--progressive", "28:1", "--epochs", "2"],
                            "cannot start at a smaller one")):  # fmt: skip
        assert main([*base, *extra, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_errors_a_python_caller_hits_name_the_keywords_too():
    """Trainer.fit() and train_classifier() are called from notebooks, where "use --batch-size
    2 or more", "lower --lr or set --grad-clip" and "--img-size 28" named options of a command
    the caller never ran: each names the keyword it was given as, beside the option."""
    from cnnzoo.engine.run import DataOptions, train_classifier

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0])
    # an 8x8 convolution leaves 1x1 maps: a batch of one is one value per channel for BatchNorm
    net = nn.Sequential(nn.Conv2d(1, 4, 8), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 3))
    one = BatchLoader(x, y, batch_size=1, mean=[0.5], std=[0.25])
    with pytest.raises(TrainingError, match=r"use --batch-size 2 or more \(batch_size=2\), or "
                                            r"larger images \(--img-size, img_size=;"):
        Trainer(net, ClassificationTask(3), one, config=TrainConfig(epochs=1, **FP32)).fit()
    diverging = TrainConfig(epochs=1, lr=math.inf, schedule="constant", **FP32)
    with pytest.raises(TrainingError, match=r"lower --lr or set --grad-clip \(TrainConfig lr=, "
                                            r"grad_clip=\)"):
        Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=diverging).fit()
    with pytest.raises(UsageError, match=r"^--img-size 28 \(img_size=\): lenet5 takes inputs "
                                         r"of at least 32 px$"):
        train_classifier("lenet5", DataOptions("digits", img_size=28), TrainConfig(epochs=1),
                         out_dir=None)


@pytest.mark.parametrize("precision", [["--precision", "fp32", "--channels-last", "off"], []])
def test_one_image_batches_into_1x1_batchnorm_maps_are_one_line(tmp_path, capsys, precision):
    """resnet18 at 32 px ends in 1x1 maps: with --batch-size 1 its BatchNorm sees one value
    per channel, a torch ValueError deep in the first step (or in the precision measurement)."""
    out = tmp_path / "run"
    assert main(["train", "resnet18", "--data", "digits", "--img-size", "32", "--batch-size",
                 "1", "--epochs", "1", *precision, "--no-progress", "--no-tensorboard",
                 "--out", str(out)]) == 2  # fmt: skip
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("cnnzoo train: error: a batch of one image reaches a BatchNorm layer as 1x1 "
                    "maps, which it cannot normalise: use --batch-size 2 or more (batch_size=2), "
                    "or larger images (--img-size, img_size=; --crop for segmentation)")
    assert not (out / "last.pt").exists()


def test_learning_curves_mark_whole_epochs(tmp_path, monkeypatch):
    """Two epochs drew ticks at 1.0, 1.2, ... 2.0: an epoch is counted, not measured."""
    import cnnzoo.engine.report as report

    ticks: list[float] = []
    save = report.save_figure

    def spy(fig, path, dpi=110):
        ticks.extend(t for ax in fig.axes for t in ax.get_xticks())
        return save(fig, path, dpi)

    monkeypatch.setattr(report, "save_figure", spy)
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1},
               {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7}]
    report.plot_curves(history, tmp_path / "curves.png")
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    # One epoch, and a segmentation class named '$100_to_$200' in a panel's title (mathtext
    # failed on it after training, leaving the run without its report).
    ticks.clear()
    report.plot_curves([{"epoch": 1, "train_dice_$100_to_$200": 0.4,
                         "val_dice_$100_to_$200": 0.5}], tmp_path / "one.png")  # fmt: skip
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_given_val_folder_may_grow_after_training(tmp_path, capsys):
    """Only a validation part drawn from the training images can take training images when the
    folder changes; more held-out images in val/ were refused as 'changed' all the same."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", 6), ("val", 2)):
        for cls, level in (("dark", 40), ("light", 200)):
            (tmp_path / "d" / part / cls).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(level, 20, (32, 32)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "d" / part / cls / f"{i}.png")
    out = tmp_path / "run"
    assert main(["train", "lenet5", "--data", str(tmp_path / "d"), "--epochs", "1",
                 "--precision", "fp32", "--channels-last", "off", "--no-progress",
                 "--no-tensorboard", "--out", str(out)]) == 0  # fmt: skip
    Image.new("L", (32, 32), 30).save(tmp_path / "d" / "val" / "dark" / "new.png")
    capsys.readouterr()
    assert main(["evaluate", str(out / "last.pt"), "--json"]) == 0
    assert sum(map(sum, json.loads(capsys.readouterr().out)["confusion"])) == 5


def test_a_project_moved_whole_still_resumes_and_evaluates_its_own_split(tmp_path, capsys,
                                                                         monkeypatch):
    """A project folder holding its data and its runs, moved (another name, another machine):
    the run's recorded absolute data path is gone. `--resume` was refused as 'trained on
    OLD/data, not NEW/data: resume on OLD/data', which no longer existed, and `evaluate --data
    data` scored every image, the training ones too. The run also records its data relative to
    itself, and finds it there."""
    import shutil

    old = tmp_path / "project"
    _photo_folder(old / "data")
    (old / "data" / "empty").rmdir()
    monkeypatch.chdir(old)  # relative paths, as a user types them
    args = ["train", "lenet5", "--data", "data", "--epochs", "1", "--batch-size", "8",
            "--precision", "fp32", "--channels-last", "off", "--no-progress", "--no-tensorboard",
            "--out", "runs/a"]  # fmt: skip
    assert main(args) == 0
    assert main(["evaluate", "runs/a/last.pt", "--json"]) == 0
    capsys.readouterr()
    new = tmp_path / "moved"
    shutil.move(old, new)
    monkeypatch.chdir(new)
    for extra in ([], ["--data", "data"], ["--data", str(new / "data")]):
        assert main(["evaluate", "runs/a/last.pt", "--json", *extra]) == 0
        assert sum(map(sum, json.loads(capsys.readouterr().out)["confusion"])) == 4  # val only
    assert main([*(a if a != "1" else "2" for a in args), "--resume"]) == 0
    assert [json.loads(ln)["epoch"] for ln in
            Path("runs/a/metrics.jsonl").read_text().splitlines()] == [1, 2]  # fmt: skip
    # Changed since, it is refused as before; and other data is still other data.
    (new / "data" / "dog" / "0.png").rename(new / "data" / "dog" / "renamed.png")
    assert main(["evaluate", "runs/a/last.pt"]) == 2
    assert "has changed since the run was trained" in capsys.readouterr().err
    shutil.copytree(new / "data", tmp_path / "other")
    assert main([*args[:-1], "runs/a", "--data", str(tmp_path / "other"), "--resume"]) == 2
    assert f"was trained on {new / 'data'}, not {tmp_path / 'other'}" in capsys.readouterr().err


def test_a_run_written_through_a_linked_folder_finds_its_data_after_the_project_moves(
        tmp_path):
    """An --out given through a link (a cluster's /home/u -> /gpfs/u, `--out $PWD/runs/a`)
    with the data recorded with links resolved: the path from the run to its data climbed out
    through the link's target (../../../../real/project/data), so a copy of the project
    elsewhere still looked for the old one, and resume and evaluate said the data was gone."""
    from cnnzoo.paths import from_run, run_data

    (tmp_path / "real" / "project" / "data").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    run = tmp_path / "link" / "project" / "runs" / "a"
    run.mkdir(parents=True)
    data = (tmp_path / "real" / "project" / "data").resolve()  # as the run records it
    rel = from_run(str(data), run)
    assert rel == os.path.join("..", "..", "data")
    (tmp_path / "link").unlink()
    (tmp_path / "real").rename(tmp_path / "copy")  # the project, elsewhere; the old one gone
    moved = tmp_path / "copy" / "project"
    assert run_data(str(data), rel, moved / "runs" / "a") == str((moved / "data").resolve())


def test_growing_across_channels_names_the_flag_that_fixes_it():
    """A grey source and data read as colour (a run from before channels followed the data, on
    a copied folder): the fix is --channels, which the message now says."""
    opts = {"stages": 2, "width_mult": 0.25, "fc_dim": 8, "pool_size": 1}
    src = create_model("vgg11", num_classes=3, in_chans=1, **opts)
    dst = create_model("vgg13", num_classes=3, in_chans=3, **opts)
    with pytest.raises(WeightsError, match=r"other channels \(grey vs colour\); grow on data of "
                                           r"the same kind, or pass --channels 1$"):  # fmt: skip
        grow_from(dst, src.state_dict(), source_meta={"model": "vgg11", "model_kwargs": opts},
                  target_kwargs=opts)


def test_resume_into_a_new_folder_still_grows_from_init_from(tmp_path, capsys):
    """--resume where there is no run yet starts afresh; with --init-from that fresh start
    skipped the growth without a word (`not resume` was the test)."""
    common = ["--data", "digits", "--epochs", "1", "--batch-size", "256", "--precision", "fp32",
              "--channels-last", "off", "--no-progress", "--no-tensorboard"]
    assert main(["train", "resnet20", *common, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main(["train", "resnet32", *common, "--init-from", str(tmp_path / "a" / "last.pt"),
                 "--resume", "--out", str(tmp_path / "b")]) == 0
    assert f"initialised from {tmp_path / 'a' / 'last.pt'}:" in capsys.readouterr().err
    # Once the run exists, --init-from has nothing to do: said, not dropped without a word.
    assert main(["train", "resnet32", *common, "--init-from", str(tmp_path / "a" / "last.pt"),
                 "--resume", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert (f"note: --init-from {tmp_path / 'a' / 'last.pt'} is not used: the run resumes "
            f"from its own {tmp_path / 'b' / 'last.pt'}") in err and "initialised" not in err


def test_a_run_folder_given_for_a_checkpoint_file_says_which_file(tmp_path, monkeypatch,
                                                                  capsys):
    """`--init-from runs/vgg11` (the folder, as --resume and compare take it) said the folder
    'does not exist', and only after the data load (slow for a big folder), as did a path
    with a typo: both are refused before any image is read."""
    import cnnzoo.engine.run as run_module

    def no_data(*args, **kwargs):
        raise AssertionError("the data were loaded before --init-from was read")

    monkeypatch.setattr(run_module, "load_splits", no_data)
    run = tmp_path / "vgg11"
    atomic_save({"model": {"w": torch.ones(1)}}, run / "best.pt")
    with pytest.raises(WeightsError, match=f"^{re.escape(str(run))} is a folder: give a "
                                           f"checkpoint file, e.g. {re.escape(str(run))}/best.pt$"):
        load_checkpoint(run)
    for given, message in ((run, f"{run} is a folder: give a checkpoint file, e.g. "
                                 f"{run}/best.pt"),
                           (run / "bset.pt", f"checkpoint {run}/bset.pt does not exist: pass the "
                                             "file written by `cnnzoo train`")):
        assert main(["train", "vgg13", "--data", "digits", "--init-from", str(given),
                     "--out", str(tmp_path / "vgg13")]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"cnnzoo train: error: {message}"


def test_a_weights_file_given_for_a_run_checkpoint_says_where_it_goes(tmp_path, capsys):
    """A plain state_dict or a .safetensors file (a `cnnzoo convert` output) has no run: it
    said "not a cnnzoo training checkpoint (no 'model' entry)" and nothing about what to do."""
    from safetensors.torch import save_file

    plain, safe = tmp_path / "resnet20.pth", tmp_path / "resnet20.safetensors"
    torch.save(create_model("resnet20").state_dict(), plain)
    save_file(create_model("resnet20").state_dict(), safe)
    for path in (plain, safe):
        assert main(["evaluate", str(path), "--data", "digits"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"cnnzoo evaluate: error: {path} holds weights only, not a "
                              "`cnnzoo train` checkpoint") and "\n" not in err
        assert err.endswith("weights files go to `cnnzoo predict --weights` and `cnnzoo "
                            "transfer --weights`")


def test_epoch_lines_show_top5_only_above_5_classes():
    """Top-5 accuracy of 5 classes or fewer is 1 by definition: the demo's lines read
    'train_top5 1 ... val_top5 1' every epoch. metrics.jsonl keeps it."""
    from cnnzoo.engine.loop import _epoch_line

    record = {"epoch": 2, "lr": 0.1, "train_loss": 0.5, "train_acc": 0.75, "train_top5": 1.0,
              "val_loss": 0.25, "val_acc": 0.5, "val_top5": 1.0, "seconds": 1.5,
              "images_per_s": 1000.0}  # fmt: skip
    assert _epoch_line(record, 3, 5) == ("epoch 2/3  lr 0.1  train_loss 0.5  train_acc 0.75  "
                                         "val_loss 0.25  val_acc 0.5  1.5s 1,000 img/s")
    assert "train_top5 1  val_loss 0.25  val_acc 0.5  val_top5 1  1.5s" in _epoch_line(record, 3, 6)


def test_epoch_lines_say_how_long_the_remaining_epochs_take():
    """A 10-minute fine-tuning said nothing of how long it would take: each epoch line but the
    last now estimates the rest from the last epochs' pace."""
    from cnnzoo.engine.loop import _epoch_line
    from cnnzoo.text import duration

    record = {"epoch": 1, "lr": 0.1, "seconds": 40.0, "images_per_s": 10.0}
    assert _epoch_line(record, 4, left=3 * 43.0).endswith("40.0s 10 img/s  about 2 min left")
    assert _epoch_line(record, 1).endswith("img/s")  # nothing left: no estimate
    assert [duration(s) for s in (4.4, 89, 91, 5399, 5401, 9000)] == \
        ["4 s", "89 s", "2 min", "90 min", "1.5 h", "2.5 h"]
    # A 60-image folder's epoch took 0.1 s: 'about 0 s left' said that nothing was left.
    assert [duration(s) for s in (0.1, 0.49, 0.5, 1.4)] == ["1 s", "1 s", "1 s", "1 s"]
    assert _epoch_line(record, 3, left=0.2).endswith("img/s  about 1 s left")
    said: list[str] = []
    Trainer(_TinyNet(), ClassificationTask(3), _tiny_loader(), config=TrainConfig(epochs=3, **FP32),
            say=said.append).fit()  # fmt: skip
    lines = [line for line in said if line.startswith("epoch ")]
    assert len(lines) == 3 and all(" left" in line for line in lines[:2])
    assert " left" not in lines[2]


def test_demo_scratch_reports_the_validation_accuracy_of_the_weights_it_tests(tmp_path,
                                                                              monkeypatch):
    """The demo's scratch run restores the epoch of the lowest validation loss and scores it
    on the test images; it printed the highest validation accuracy of any epoch instead (0.45
    here, when the weights it tested scored 0.375). LeNet-5 stands in for its EfficientNet."""
    from cnnzoo.commands import demo
    from cnnzoo.data import load_fashion_mnist
    from cnnzoo.data.folder import write_image_folder

    classes = ["tshirt", "pullover", "dress", "coat", "shirt"]
    for part, split, n, seed in (("train", "train", 16, 0), ("val", "train", 8, 5),
                                 ("test", "test", 8, 0)):  # fmt: skip
        write_image_folder(load_fashion_mnist(split).subset(classes=classes, per_class=n,
                                                            seed=seed), tmp_path / "d" / part)
    lines: list[str] = []
    monkeypatch.setattr(demo, "MODEL", "lenet5")
    monkeypatch.setattr(demo, "_say", lines.append)
    # fp32 on every CPU (the demo takes bf16 where it is native), so the run is the same.
    monkeypatch.setattr("cnnzoo.transfer.features.inference_dtype", lambda *a, **k: "fp32")
    monkeypatch.setattr("cnnzoo.engine.report.write_report", lambda *a: ([], []))  # 3 s of plots
    demo._scratch(tmp_path / "d", 32, 6, tmp_path / "out", False)
    history = [json.loads(r) for r in (tmp_path / "out" / "metrics.jsonl").open()]
    tested = min(history, key=lambda r: r["val_loss"])
    assert max(r["val_acc"] for r in history) > tested["val_acc"]  # the case that misled
    said = float(re.search(r"validation accuracy (\d\.\d+)", lines[0])[1])
    assert said == round(tested["val_acc"], 3)
    assert f"epoch {tested['epoch']} of 6" in lines[0]


def test_demo_scratch_is_scored_on_the_views_the_transfer_bundles_get(tmp_path, monkeypatch):
    """Step 5 of the demo scores the transfer bundles on each test image and its mirror (their
    2 views); the scratch net it compares them with was scored on the image alone."""
    from cnnzoo.commands import demo
    from cnnzoo.data import load_fashion_mnist
    from cnnzoo.data.folder import write_image_folder
    from cnnzoo.engine.loop import Trainer

    for part, split in (("train", "train"), ("val", "train"), ("test", "test")):
        write_image_folder(load_fashion_mnist(split).subset(classes=[0, 1], per_class=4),
                           tmp_path / "d" / part)  # fmt: skip
    scored = []
    evaluate = Trainer.evaluate

    def spy(self, loader, model=None, *, tta=False):
        scored.append(tta)
        return evaluate(self, loader, model, tta=tta)

    monkeypatch.setattr(Trainer, "evaluate", spy)
    monkeypatch.setattr(demo, "MODEL", "lenet5")
    monkeypatch.setattr(demo, "_say", lambda line: None)
    monkeypatch.setattr("cnnzoo.transfer.features.inference_dtype", lambda *a, **k: "fp32")
    monkeypatch.setattr("cnnzoo.engine.report.write_report", lambda *a: ([], []))
    for views, tta in ((2, "flip"), (1, False)):
        acc = demo._scratch(tmp_path / "d", 32, 1, tmp_path / f"out{views}", False, views=views)
        assert scored[-1] == tta and 0.0 <= acc <= 1.0  # the test images, after validation


def test_demo_scratch_checkpoints_are_read_by_evaluate_and_compare(tmp_path, monkeypatch,
                                                                   capsys):
    """The demo's scratch run left runs/demo/scratch/best.pt without a meta: `cnnzoo evaluate`
    (and predict, compare) refused it, 'does not say which model it holds: evaluate checkpoints
    written by `cnnzoo train`'. It now records what `cnnzoo train` records, and evaluate on the
    test images repeats the accuracy the demo reported for them."""
    from cnnzoo.commands import demo
    from cnnzoo.data import load_fashion_mnist
    from cnnzoo.data.folder import write_image_folder

    for part, split in (("train", "train"), ("val", "train"), ("test", "test")):
        write_image_folder(load_fashion_mnist(split).subset(classes=[0, 1], per_class=4),
                           tmp_path / "d" / part)  # fmt: skip
    monkeypatch.setattr(demo, "MODEL", "lenet5")
    monkeypatch.setattr(demo, "_say", lambda line: None)
    monkeypatch.setattr("cnnzoo.transfer.features.inference_dtype", lambda *a, **k: "fp32")
    monkeypatch.setattr("cnnzoo.engine.report.write_report", lambda *a: ([], []))
    out = tmp_path / "scratch"
    acc = demo._scratch(tmp_path / "d", 32, 2, out, False, views=1)
    capsys.readouterr()
    assert main(["evaluate", str(out / "best.pt"), "--data", str(tmp_path / "d"), "--split",
                 "test", "--json", "--no-progress"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["acc"] == pytest.approx(acc)
    assert main(["compare", str(out), "--json"]) == 0
    [run] = json.loads(capsys.readouterr().out)["runs"]
    assert run["model"] == "lenet5" and run["input"] == "1x32"
    # Next to a `cnnzoo train` run on the same folder, only the recipes' real differences are
    # listed: the demo weighted no class, as train's default, and trained on the same images
    # (its None and its missing image counts were listed as a class weighting and data of
    # their own).
    assert main(["train", "lenet5", "--data", str(tmp_path / "d"), "--epochs", "1", "--out",
                 str(tmp_path / "train"), "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["compare", str(out), str(tmp_path / "train")]) == 0
    printed = capsys.readouterr().out
    assert "differ in" in printed and "optimizer: adamw (scratch), sgd (train)" in printed
    assert "class weights" not in printed and "data:" not in printed


def test_a_trainers_own_checkpoint_without_meta_is_one_line_in_every_command(tmp_path, capsys):
    """The engine as a library (docs/training.md) writes runs/x/best.pt with no meta unless
    given one. `cnnzoo transfer DATA --weights runs/x/best.pt` ended in a KeyError traceback
    ('model'); it now reads the file as plain weights, as the weights loader and `--model` do,
    and says which model they fit. predict / evaluate / convert said 'evaluate checkpoints
    written by `cnnzoo train`', evaluate's words in every command."""
    from cnnzoo.data import load_fashion_mnist
    from cnnzoo.data.folder import write_image_folder

    data = tmp_path / "d"
    write_image_folder(load_fashion_mnist("test").subset(classes=[0, 1], per_class=4), data)
    x, y = torch.rand(8, 1, 32, 32), torch.arange(8) % 2
    Trainer(create_model("lenet5", num_classes=2), ClassificationTask(2),
            BatchLoader(x, y, batch_size=4), None,
            TrainConfig(epochs=1, precision="fp32", channels_last="off", progress=False,
                        verbose=False, tensorboard=False),
            out_dir=tmp_path / "x").fit()  # fmt: skip
    ckpt = str(tmp_path / "x" / "last.pt")
    capsys.readouterr()
    assert main(["transfer", str(data), "--weights", ckpt, "--mode", "features", "--out",
                 str(tmp_path / "t"), "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "looks like lenet5's weights" in err
    for args in (["predict", str(data), "--weights", ckpt], ["evaluate", ckpt],
                 ["convert", ckpt, str(tmp_path / "x.safetensors")]):  # fmt: skip
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err == (f"cnnzoo {args[0]}: error: {ckpt} does not say which model it holds: "
                       "give a checkpoint written by `cnnzoo train` (last.pt or best.pt)\n")


def test_final_lines_leave_out_top5_of_5_classes_or_fewer(tmp_path, capsys):
    """The TTA line repeated 'top5 1.0000' for 3 classes, which the line above it leaves out."""
    from cnnzoo.data import load_fashion_mnist
    from cnnzoo.data.folder import write_image_folder

    data = tmp_path / "d"
    write_image_folder(load_fashion_mnist("test").subset(classes=[0, 1, 2], per_class=8), data)
    assert main(["train", "lenet5", "--data", str(data), "--epochs", "1", "--batch-size", "8",
                 "--tta", "--precision", "fp32", "--channels-last", "off", "--no-progress",
                 "--no-tensorboard", "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    tta = [line for line in out.splitlines() if line.startswith("final validation with flip")]
    assert len(tta) == 1 and "acc " in tta[0] and "top5" not in out


def _imbalanced_folder(root: Path) -> Path:
    """12 good parts and 4 of each of two defects (real Fashion-MNIST images, 28 px)."""
    from cnnzoo.data import load_fashion_mnist
    from cnnzoo.data.folder import write_image_folder

    ds = load_fashion_mnist("test").subset(classes=[7, 5, 9], per_class=12)
    keep = [i for c in range(3) for i in torch.nonzero(ds.labels == c).flatten().tolist()
            [: 12 if c == 0 else 4]]
    ds = ds.select(keep)
    ds.class_names = ["good", "crack", "dent"]
    write_image_folder(ds, root)
    return root


def test_class_weight_is_recorded_and_a_resumed_run_keeps_it(tmp_path, capsys):
    """--class-weight balanced weighs the loss, is recorded in the run, and `--resume` without
    the option goes on weighting: the resumed run ends bit-identical to an uninterrupted one.
    Another value given on resume is used and warned of, as other recipe changes are."""
    data = _imbalanced_folder(tmp_path / "parts")
    # A constant rate: a run cut after one epoch then trains as the whole one (one-cycle's
    # rate depends on --epochs).
    common = ["train", "lenet5", "--data", str(data), "--batch-size", "8", "--lr", "0.05",
              "--schedule", "constant", "--precision", "fp32", "--channels-last", "off",
              "--no-progress", "--no-tensorboard"]  # fmt: skip

    def run(out: str, epochs: int, *extra: str) -> dict:
        assert main([*common, "--epochs", str(epochs), "--out", str(tmp_path / out),
                     *extra]) == 0  # fmt: skip
        return load_checkpoint(tmp_path / out / "last.pt")

    whole = run("whole", 2, "--class-weight", "balanced")
    out, err = capsys.readouterr()
    # The final lines name what accuracy hides; the per-class table (and the balanced accuracy
    # under it) is a result, on stdout before them, as `cnnzoo evaluate` prints it: it went to
    # stderr, among the per-epoch lines.
    assert out.splitlines()[0].split() == ["class", "precision", "recall", "support"]
    assert re.search(r"final validation loss [0-9.]+, acc [0-9.]+, balanced_acc [0-9.]+, "
                     r"macro_f1 [0-9.]+$", out, re.M)
    assert re.search(r"^balanced accuracy [0-9.]+ \(the mean recall\), macro F1 [0-9.]+$", out,
                     re.M)
    assert "balanced accuracy" not in err and "precision  recall" not in err
    # n / (K n_k) of the 16 training images: 16 / (3 x 10) for good, 16 / (3 x 3) for crack
    assert "class weights (balanced, on the loss): crack 1.78, dent 1.78, good 0.533" in err
    assert whole["meta"]["class_weight"] == "balanced"
    run("cut", 1, "--class-weight", "balanced")
    resumed = run("cut", 2, "--resume")
    err = capsys.readouterr().err
    assert resumed["meta"]["class_weight"] == "balanced" and "class_weight (was" not in err
    assert "class weights (balanced, on the loss)" in err
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    plain = run("plain", 2)  # the default is unweighted, and the weights mattered
    assert plain["meta"]["class_weight"] == "none" and "class weights" not in capsys.readouterr().err
    assert not torch.equal(plain["model"]["fc.weight"], whole["model"]["fc.weight"])
    changed = run("cut", 3, "--resume", "--class-weight", "none")
    assert changed["meta"]["class_weight"] == "none"
    assert "class_weight (was balanced, now none)" in capsys.readouterr().err
    # Segmentation has its own class balancing.
    assert main(["train", "unet", "--data", "cells", "--class-weight", "balanced"]) == 2
    assert "--class-weight is for classification; segmentation balances its classes' pixels " \
           "with --loss weighted_ce" in capsys.readouterr().err


def test_a_bad_model_arg_is_refused_before_the_data_load(tmp_path, monkeypatch, capsys):
    """An option the model does not take, a probability given as yes (True, which built
    Dropout(p=1.0)) or 1, a value outside an option's choices: one line before any image is
    read (the data load is replaced by a failure here), in create_model's words."""
    import cnnzoo.engine.run as run

    def no_data(*args, **kwargs):
        raise AssertionError("the data were loaded before the options were checked")

    monkeypatch.setattr(run, "load_splits", no_data)
    cases = [
        ("alexnet", ["bogus=1"], "alexnet has no option 'bogus': its options are dropout, act"),
        ("alexnet", ["dropout=yes"], "alexnet: dropout is a probability, a number in [0, 1), "
                                     "not True"),
        ("densenet121", ["drop_rate=1"], "densenet121: drop_rate is a probability, a number in "
                                         "[0, 1), not 1"),
        ("resnet20", ["shortcut=C"], "resnet20: shortcut must be one of A, B, none, not 'C'"),
        ("lenet5", ["act=softplus"], "lenet5: act must be one of relu, tanh, sigmoid, gelu, "
                                     "silu, leaky_relu, not 'softplus'"),
    ]
    for model, args, message in cases:
        argv = ["train", model, "--data", "digits", "--out", str(tmp_path / "run")]
        for arg in args:
            argv += ["--model-arg", arg]
        assert main(argv) == 2, model
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"cnnzoo train: error: {message}"


def test_a_growth_source_of_another_family_is_refused_before_the_data_load(
        tmp_path, monkeypatch, capsys):
    """`cnnzoo train vgg11 --init-from <a lenet5 run>` loaded the whole data set, printed its
    batch and epoch notes, built vgg11 and only then said the source was no VGG: the family
    is in the checkpoint's meta, read before the data."""
    import cnnzoo.engine.run as run_module

    def no_data(*args, **kwargs):
        raise AssertionError("the data were loaded before --init-from's family was checked")

    monkeypatch.setattr(run_module, "load_splits", no_data)
    lenet = atomic_save({"model": create_model("lenet5").state_dict(),
                         "meta": {"model": "lenet5"}}, tmp_path / "lenet5.pt")
    for model, words in (("vgg11", "not a VGG; growth goes vgg11 → vgg13"),
                         ("resnet32", "not a resnet model: grow from a trained shallower")):
        assert main(["train", model, "--data", "digits", "--init-from", str(lenet),
                     "--out", str(tmp_path / model)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"cnnzoo train: error: the source checkpoint is lenet5, {words}")
        assert not any(line.startswith(("data:", "note:")) for line in err)


def test_a_resume_the_run_cannot_take_is_refused_before_the_data_load(tmp_path, monkeypatch,
                                                                       capsys):
    """`--resume` of a lenet5 run with --optimizer adamw, --channels 3 or as resnet20 loaded
    and decoded the whole data set first, then said the checkpoint could not go on so: each
    is now said before any image is read, in the same words."""
    import cnnzoo.engine.run as run_module

    out = tmp_path / "run"
    assert main(["train", "lenet5", "--data", "digits", "--epochs", "1", "--batch-size", "256",
                 "--precision", "fp32", "--channels-last", "off", "--no-progress",
                 "--no-tensorboard", "--out", str(out)]) == 0
    capsys.readouterr()

    def no_data(*args, **kwargs):
        raise AssertionError("the data were loaded before the resume was checked")

    monkeypatch.setattr(run_module, "load_splits", no_data)
    cases = [
        (["lenet5", "--optimizer", "adamw"], "was trained with optimizer=sgd, and its optimizer "
         "state cannot continue with optimizer=adamw: resume with the run's optimizer, or start "
         "a new run from its weights (--init-from)"),
        (["lenet5", "--channels", "3"], "has in_chans=1, not 3: resume with the data it was "
         "trained on (or --channels 1), or start a new run with another --out"),
        (["resnet20"], "is lenet5, not resnet20: resume it as `cnnzoo train lenet5 ... "
         "--resume`, or start a new run with another --out"),
    ]
    for args, words in cases:
        assert main(["train", *args, "--data", "digits", "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"cnnzoo train: error: the checkpoint in {out} {words}"], args


def test_a_channel_flat_in_every_training_image_is_not_scaled_up(tmp_path, capsys):
    """Images whose blue channel is 0 everywhere (two-stain microscopy saved as RGB), or all
    black: the channel's std was stored as 1e-6, so a new image with blue at 2 of 255 fed the
    net a value of about 8,000 and its prediction flipped to 100 % of one class."""
    import numpy as np
    from PIL import Image

    from cnnzoo.engine.run import channel_stats

    flat = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    flat[:, 0] = torch.arange(4 * 64).view(4, 8, 8) % 200
    flat[:, 1] = 90  # constant, but not zero
    mean, std = channel_stats(flat)
    assert std[1:] == [1.0, 1.0] and 0.2 < std[0] < 0.3
    assert mean[1] == pytest.approx(90 / 255) and mean[2] == 0.0

    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "data" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            a = np.zeros((32, 32, 3), np.uint8)
            a[..., c] = rng.integers(100, 255, (32, 32))
            Image.fromarray(a).save(tmp_path / "data" / f"c{c}" / f"{i}.png")
    out = tmp_path / "run"
    assert main(["train", "lenet5", "--data", str(tmp_path / "data"), "--epochs", "1",
                 "--no-progress", "--no-tensorboard", "--out", str(out)]) == 0  # fmt: skip
    assert load_checkpoint(out / "best.pt")["meta"]["std"][2] == 1.0
    a = np.zeros((32, 32, 3), np.uint8)
    a[..., 0] = 180
    Image.fromarray(a).save(tmp_path / "red.png")
    a[..., 2] = 2  # one JPEG artefact's worth of blue
    Image.fromarray(a).save(tmp_path / "red_blue2.png")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "red.png"), str(tmp_path / "red_blue2.png"),
                 "--weights", str(out / "best.pt"), "--json", "--top", "2"]) == 0  # fmt: skip
    plain, blue = json.loads(capsys.readouterr().out)
    p = {r["class"]: r["probability"] for r in plain["predictions"]}
    q = {r["class"]: r["probability"] for r in blue["predictions"]}
    assert p == pytest.approx(q, abs=0.01)


def test_a_confusion_matrix_of_long_class_names_or_many_classes_stays_readable(tmp_path,
                                                                               monkeypatch):
    """200-character folder names were drawn whole: the matrix shrank into a corner and the
    labels ran off the figure; 120 classes' labels were drawn over one another."""
    from cnnzoo.engine import report

    figures: list = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path, dpi=110: figures.append(fig))

    def drawn(names: list[str]) -> tuple:
        report.plot_confusion(torch.eye(len(names), dtype=torch.long) * 3, names,
                              tmp_path / "c.png")  # fmt: skip
        fig = figures.pop()
        fig.canvas.draw()
        renderer, ax = fig.canvas.get_renderer(), fig.axes[0]
        return fig, ax, [t.get_window_extent(renderer) for t in ax.get_yticklabels()], \
            [t.get_window_extent(renderer) for t in ax.get_xticklabels()], renderer

    long_names = ["x" * 190 + f"{i:010d}" for i in range(25)]
    fig, ax, ys, xs, renderer = drawn(long_names)
    whole = fig.bbox
    for box in ys + xs:  # every label inside the picture
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= whole.x1 and box.y1 <= whole.y1
    assert ax.get_window_extent(renderer).width > 0.5 * whole.width
    texts = [t.get_text() for t in ax.get_yticklabels()]
    assert texts[7].endswith("0000000007") and len(set(texts)) == 25  # still told apart

    fig, ax, ys, xs, _ = drawn([f"class{i:03d}" for i in range(120)])
    ys = sorted(ys, key=lambda b: b.y0)
    assert all(a.y1 <= b.y0 + 0.5 for a, b in zip(ys, ys[1:], strict=False))  # no overlap

    from cnnzoo.transfer import report as transfer_report  # the top-losses grid's titles

    monkeypatch.setattr(transfer_report, "save_figure", lambda fig, path, dpi=100:
                        figures.append(fig))  # fmt: skip
    transfer_report.plot_top_losses(torch.zeros(1, 1, 8, 8, dtype=torch.uint8),
                                    torch.tensor([[0.2, 0.8]]), torch.tensor([0]),
                                    long_names[:2], tmp_path / "t.png")  # fmt: skip
    fig = figures.pop()
    title = fig.axes[0].get_title()
    assert "0000000000 (0.20)" in title and max(map(len, title.splitlines())) <= 50

    assert report.short_labels(["a" * 40 + "1", "a" * 40 + "2", "b"]) == [
        "a" * 16 + "…" + "a" * 14 + "1", "a" * 16 + "…" + "a" * 14 + "2", "b"]
    assert report.short_labels(["a" * 20 + "X" + "b" * 20, "a" * 20 + "Y" + "b" * 20])[1] \
        .startswith("1: ")  # alike once shortened: numbered
