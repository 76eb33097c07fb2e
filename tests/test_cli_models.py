"""`cnnzoo models`: the table's numbers against the published ones."""

from __future__ import annotations

import json

import pytest

from cnnzoo.cli import main

# torchvision's model tables (GFLOPS, one multiply-add per operation) at 224x224.
PUBLISHED_GFLOPS = {
    "alexnet": 0.71,
    "vgg11": 7.61,
    "vgg16": 15.47,
    "vgg19": 19.63,
    "googlenet": 1.50,
    "resnet18": 1.81,
    "resnet50": 4.09,
    "resnet152": 11.51,
    "densenet121": 2.83,
    "densenet201": 4.29,
}
PUBLISHED_PARAMS = {
    "alexnet": 61_100_840,
    "vgg16": 138_357_544,
    "resnet50": 25_557_032,
    "densenet121": 7_978_856,
    "efficientnet_lite0": 4_652_008,
    "efficientnet_lite2": 6_092_072,
    "resnet20": 269_722,
    "densenet_bc_100_k12": 769_162,
}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The table as counted now: an empty cache, so no stored number is checked."""
    import contextlib
    import io

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("CNNZOO_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert main(["models", "--json"]) == 0
    return {row["name"]: row for row in json.loads(out.getvalue())}


def test_counts_are_kept_and_counted_again_when_the_zoo_changes(tmp_path, monkeypatch):
    from cnnzoo.models.flops import table_counts

    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path))
    assert table_counts(["lenet5"]) == {"lenet5": (61_706, 416_520)}
    stored = json.loads((tmp_path / "models.json").read_text())
    stored["counts"]["lenet5"] = [1, 2]
    (tmp_path / "models.json").write_text(json.dumps(stored))
    assert table_counts(["lenet5"]) == {"lenet5": (1, 2)}  # read, not counted
    stored["key"] = "another zoo"
    (tmp_path / "models.json").write_text(json.dumps(stored))
    assert table_counts(["lenet5", "resnet20"])["lenet5"] == (61_706, 416_520)
    (tmp_path / "models.json").write_text("{half a fi")  # damaged: counted again
    assert table_counts(["lenet5"]) == {"lenet5": (61_706, 416_520)}
    stored = json.loads((tmp_path / "models.json").read_text())
    for bad in ([1], None, ["1", 2]):  # the right key, a damaged entry
        stored["counts"]["lenet5"] = bad
        (tmp_path / "models.json").write_text(json.dumps(stored))
        assert table_counts(["lenet5"]) == {"lenet5": (61_706, 416_520)}


def test_without_a_home_folder_caches_are_skipped_or_one_line(tmp_path, monkeypatch, capsys):
    """No $HOME and a user id without a home (`env -i`, `docker run --user 1234` in some
    set-ups): pathlib's 'Could not determine home directory' was a traceback from `cnnzoo
    models` and from `cnnzoo train`'s precision cache. Optional caches now go without; the
    feature cache, which a transfer run needs, is one line saying what to set."""
    from pathlib import Path

    from cnnzoo.data import builtin
    from cnnzoo.engine import precision

    for var in ("HOME", "CNNZOO_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)

    def no_home(cls):
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", classmethod(no_home))
    assert main(["models", "--pattern", "lenet5"]) == 0
    assert capsys.readouterr().out.startswith("model")
    precision._write_cache("key", {"dtype": "bf16", "channels_last": True})
    assert precision._read_cache() == {}
    if builtin.SYSTEM_FASHION_MNIST.is_dir():  # found where it is, without a cache to look in
        assert builtin.load_fashion_mnist("test").images.shape == (10_000, 1, 28, 28)
    assert main(["transfer", str(tmp_path / "data"), "--mode", "features"]) == 2
    assert capsys.readouterr().err == (
        "cnnzoo transfer: error: cnnzoo cannot tell where its cache goes: $HOME is not set and "
        "this user has no home folder: set $CNNZOO_CACHE (or $HOME) to a writable folder\n")


def test_gflops_match_torchvision_tables(table):
    for name, gflops in PUBLISHED_GFLOPS.items():
        assert table[name]["gflops"] == pytest.approx(gflops, abs=0.006), name


def test_models_and_compare_name_the_multiply_adds_alike(table, capsys):
    """`models --json` called them `gflops` and its table GFLOPs, while `compare --json` said
    `macs` and its table MFLOPs, for the same multiply-adds (torchvision's naming; a FLOP is
    half a multiply-add). `gmacs` is the name now, `gflops` the same number kept for scripts
    that read it, and both tables say MACs."""
    from cnnzoo.models import count_macs

    for row in table.values():
        assert row["gmacs"] == row["gflops"]
    assert round(table["resnet20"]["gmacs"] * 1e9) == count_macs("resnet20")
    assert main(["models", "--pattern", "resnet20"]) == 0
    header, *_ = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["model", "params", "GMACs"]


def test_lenet5_operations_counted_by_hand(table):
    """32x32 grey input: C1 6x28x28x25 = 117,600; C3 16x10x10x150 = 240,000; C5 120x400 =
    48,000; F6 120x84 = 10,080; output 84x10 = 840. The classic C3 reads 60 of the 96 input
    maps (Table I): 60x25x100 = 150,000, not the dense 240,000 it is computed as."""
    assert round(table["lenet5"]["gflops"] * 1e9) == 416_520
    assert round(table["lenet5_classic"]["gflops"] * 1e9) == 416_520 - 90_000


def test_params_match_published(table):
    for name, params in PUBLISHED_PARAMS.items():
        assert table[name]["params"] == params, name


def test_every_family_is_listed(table):
    for name in ["lenet5", "alexnet", "vgg11_bn", "googlenet", "plain34", "resnet110",
                 "densenet161", "unet", "efficientnet_lite0", "efficientnet_lite2",
                 "residual_net"]:
        assert name in table


def test_pattern_filters_and_prints_a_table(capsys):
    assert main(["models", "--pattern", "vgg1?"]) == 0
    out = capsys.readouterr().out
    lines = [ln.split()[0] for ln in out.splitlines()[2:] if ln.startswith("vgg")]
    assert lines == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert "138,357,544" in out
    assert main(["models", "--pattern", "VGG1?"]) == 0  # names are lower case; patterns any
    assert capsys.readouterr().out == out


def test_unknown_pattern_says_so(capsys):
    assert main(["models", "--pattern", "nosuchnet*"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnzoo models: error: no model matches") and "\n" not in err
    assert main(["models", "--pattern", "resnet"]) == 2  # a name part, not a pattern
    assert "'*resnet*' matches names that contain it" in capsys.readouterr().err
    assert main(["models", "--pattern", "alexnet"]) == 0
    assert "\n1 model. GMACs" in capsys.readouterr().out
    # --json too: it printed [] with exit status 0, so a script's typo passed as "no models".
    # Its document is now the error (test_json_output), not a list.
    assert main(["models", "--pattern", "nosuchnet*", "--json"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("cnnzoo models: error: no model matches")
    assert json.loads(out) == {"error": err.strip(), "exit_status": 2}


def test_a_closed_pipe_is_not_a_traceback():
    """`cnnzoo models | head -1`: the reader leaves before the table is written."""
    import subprocess
    import sys

    code = ("import os, sys\n"
            "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
            "from cnnzoo.cli import main\n"
            "sys.exit(main(['models']))\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 141 and done.stderr == ""


def test_json_gives_each_option_its_default_and_choices(table):
    """Besides the option names (kept as they were), `option_defaults` holds the default each is
    built with -- checked against the built nets -- and `option_choices` the values of the
    options with a fixed set (shortcut, act, padding, the bools)."""
    import torch

    from cnnzoo import create_model
    from cnnzoo.models.base import ACTIVATIONS

    for name, row in table.items():
        assert list(row["option_defaults"]) == row["options"], name
        assert set(row["option_choices"]) <= set(row["options"]), name
    r20 = table["resnet20"]
    assert r20["options"] == ["shortcut", "act"]
    assert r20["option_defaults"] == {"shortcut": "A", "act": "relu"}
    assert r20["option_choices"] == {"shortcut": ["A", "B", "none"], "act": list(ACTIVATIONS)}
    assert table["residual_net"]["option_defaults"]["shortcut"] == "B"
    assert table["unet"]["option_choices"]["padding"] == ["valid", "same"]
    assert table["googlenet"]["option_choices"]["aux_logits"] == [True, False]
    assert "dropout" not in table["alexnet"]["option_choices"]  # a number, not a fixed set
    with torch.device("meta"):
        for name, attr in (("efficientnet_lite0", "_dropout"), ("efficientnet_lite2", "_dropout"),
                           ("googlenet", "dropout")):  # fmt: skip
            built = getattr(create_model(name), attr).p
            assert table[name]["option_defaults"]["dropout"] == built, name
        assert table["alexnet"]["option_defaults"]["dropout"] == create_model(
            "alexnet").classifier[0].p == 0.5
        assert table["vgg11"]["option_defaults"]["fc_dim"] == create_model(
            "vgg11").classifier[0].out_features == 4096
    assert table["efficientnet_lite2"]["option_defaults"]["dropout"] == 0.3


def test_count_macs_builds_a_fixed_size_net_for_the_size_asked():
    """count_macs('residual_net', (1, 32, 32)) raised 'built for 28x28 inputs ... build it with
    create_model(img_size=32)': the net takes one size, so it is built for the one asked. By
    hand at 1x32x32: conv1 32*9*1024, conv2 32*32*9*1024, the 1x1 projection 32*1024, fc1
    32*16*16*128, fc2 128*10."""
    from cnnzoo.models import count_macs

    by_hand = 294_912 + 9_437_184 + 32_768 + 1_048_576 + 1_280
    assert count_macs("residual_net", (1, 32, 32)) == by_hand == 10_814_720


def test_counts_at_another_input_size(capsys):
    """`--img-size 28 --channels 1`: what a Fashion-MNIST run costs. ResNet-20 by hand at
    1x28x28: stem 16*9*784 = 112,896; stage 1 six 16->16 convs at 28x28, 6 * 1,806,336; stage 2
    903,168 (16->32, stride 2) + 5 * 1,806,336 at 14x14; stage 3 the same at 7x7; the head 640.
    Option-A shortcuts and BatchNorm add no multiply-adds."""
    assert main(["models", "--pattern", "resnet20", "--img-size", "28", "--channels", "1",
                 "--json"]) == 0  # fmt: skip
    (row,) = json.loads(capsys.readouterr().out)
    by_hand = 112_896 + 6 * 1_806_336 + 2 * (903_168 + 5 * 1_806_336) + 640
    assert round(row["gmacs"] * 1e9) == by_hand == 30_821_248
    assert row["params"] == 269_722 - 16 * 2 * 9 and row["input"] == "1x28x28"
    assert main(["models", "--pattern", "lenet5", "--img-size", "28"]) == 0  # LeNet takes 32
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("lenet5 "))
    assert line.split()[2] == "-" and "3x28x28" not in line and "1x28x28" in line
    # 224 is not one of the valid-padding U-Net's sizes (it stopped the whole table).
    assert main(["models", "--pattern", "unet", "--img-size", "224", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["gmacs"] is None
    assert main(["models", "--channels", "1"]) == 2
    assert "--channels goes with --img-size" in capsys.readouterr().err


def test_models_counts_a_net_built_with_model_args(capsys):
    """The 1x1 lesson in one command: GoogLeNet without its reductions, counted as `train
    --model-arg` builds it; a pattern that takes in models without the option is refused, as
    their rows would be the nets without it."""
    import torch

    from cnnzoo import create_model
    from cnnzoo.models import count_macs

    argv = ["models", "--pattern", "googlenet", "--model-arg", "reductions=false",
            "--model-arg", "aux_logits=no"]
    assert main([*argv, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        built = create_model("googlenet", reductions=False, aux_logits=False)
    assert row["params"] == sum(p.numel() for p in built.parameters()) == 18_389_512
    assert round(row["gmacs"] * 1e9) == count_macs("googlenet", reductions=False,
                                                   aux_logits=False)
    assert row["gmacs"] > 2 * 1.50  # the published 1.50 G with the reductions
    assert row["model_args"] == {"reductions": False, "aux_logits": False}
    assert main(argv) == 0
    assert "googlenet reductions=False aux_logits=False  " in capsys.readouterr().out
    assert main(["models", "--pattern", "g*", "--model-arg", "reductions=false", "--img-size",
                 "32", "--channels", "1", "--json"]) == 0
    (small,) = json.loads(capsys.readouterr().out)
    assert small["input"] == "1x32x32" and small["model_args"] == {"reductions": False}
    assert main(["models", "--model-arg", "reductions=false"]) == 2
    err = capsys.readouterr().err
    assert "alexnet" in err and "have no option 'reductions'" in err and "googlenet" in err
    # Several take it: 'resnet*' named resnet20 alone, as if the other CIFAR nets had none.
    from cnnzoo.models import get_config, list_models

    takers = [n for n in list_models("resnet*") if "shortcut" in get_config(n).options]
    assert takers == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
    assert main(["models", "--pattern", "resnet*", "--model-arg", "shortcut=B"]) == 2
    assert capsys.readouterr().err.strip() == (
        "cnnzoo models: error: --model-arg shortcut: resnet18, resnet34, resnet50 ... have no "
        "option 'shortcut'; resnet20, resnet32, resnet44, ... have it (--pattern 'resnet20' "
        "counts resnet20 with it)")


def test_a_unet_on_imagenet_weights_is_built_once_for_both_counts(capsys, caplog):
    """Its one-channel default sums Lite0's RGB stem kernels, and that note came twice: the net
    was built for the parameters and again for the multiply-adds. The counts are those of the
    net built and run on its own."""
    import torch

    from cnnzoo import create_model
    from cnnzoo.models import count_macs

    options = {"encoder_name": "efficientnet_lite0", "encoder_weights": "imagenet"}
    argv = ["models", "--pattern", "unet", "--json",
            *(a for k, v in options.items() for a in ("--model-arg", f"{k}={v}"))]
    with caplog.at_level("WARNING", logger="cnnzoo.weights"):
        assert main(argv) == 0
    (row,) = json.loads(capsys.readouterr().out)
    notes = [m for m in caplog.messages if m.startswith("note: ")]
    assert notes == ["note: convs reading the image (_conv_stem.weight): 3-channel kernels "
                     "summed over their input channels for in_chans=1"]
    with torch.device("meta"):
        built = create_model("unet", **options)
    assert row["params"] == sum(p.numel() for p in built.parameters())
    assert round(row["gmacs"] * 1e9) == count_macs("unet", **options)


def test_models_names_an_option_given_as_1_as_the_net_takes_it(capsys):
    """`--model-arg paper_5x5=1` builds the paper's 5x5 net (1 == True; 1.58 GMACs, not 1.50)
    and the row said 'paper_5x5=1'; dropout=0 is the float 0.0 the net is built with."""
    argv = ["models", "--pattern", "googlenet", "--model-arg", "paper_5x5=1", "--model-arg",
            "dropout=0"]
    assert main(argv) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.split()[:5] == ["googlenet", "paper_5x5=True", "dropout=0.0", "13,385,816", "1.58"]
    assert main([*argv, "--json"]) == 0
    (got,) = json.loads(capsys.readouterr().out)
    assert got["model_args"] == {"paper_5x5": True, "dropout": 0.0}
    assert type(got["model_args"]["paper_5x5"]) is bool


def test_models_says_what_a_mistyped_option_meant(capsys):
    """`--model-arg reduction=false` (the lesson's option is reductions) said only that
    googlenet has no such option, where `train` says 'did you mean reductions?'."""
    assert main(["models", "--pattern", "googlenet", "--model-arg", "reduction=false"]) == 2
    assert capsys.readouterr().err.strip() == (
        "cnnzoo models: error: --model-arg reduction: googlenet has no option 'reduction': did "
        "you mean reductions? its options are aux_logits, transform_input, dropout, dropout_aux, "
        "reductions, paper_5x5")
    # num_classes is not an option: the table counts each model's own head.
    assert main(["models", "--pattern", "googlenet", "--model-arg", "num_classes=10"]) == 2
    assert "num_classes: models counts each net with its own head" in capsys.readouterr().err
    assert main(["models", "--pattern", "resnet[25]0", "--model-arg", "shortcuts=none"]) == 2
    assert capsys.readouterr().err.strip() == (
        "cnnzoo models: error: --model-arg shortcuts: resnet20, resnet50 have no option "
        "'shortcuts'; did you mean shortcut? `cnnzoo models --json` lists each model's options")


@pytest.mark.parametrize(("pattern", "key", "said"), [
    ("resnet18", "in_chans", "the input's channels are --channels, with --img-size"),
    ("unet", "in_chans", "the input's channels are --channels, with --img-size"),
    ("resnet18", "num_classes", "models counts each net with its own head"),
])
def test_models_model_arg_of_the_input_or_head_names_the_option_for_it(pattern, key, said,
                                                                        capsys):
    """`models --pattern resnet18 --model-arg in_chans=1` said 'resnet18 has no option
    'in_chans': it has none besides num_classes and in_chans', and unet's list of options left
    in_chans out, though create_model takes it from every net: the line now names --channels
    (or, for num_classes, that each net is counted with its own head)."""
    assert main(["models", "--pattern", pattern, "--model-arg", f"{key}=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cnnzoo models: error: --model-arg {key}: {said}"), err
    assert "has no option" not in err
