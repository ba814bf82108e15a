"""torchvision's pretrained weights (model.arch.weights), offline: a state dict placed where
torchvision's weights API reads it ($TORCH_HOME/hub/checkpoints), the weights' real class
names and preprocessing, and one clear error when the file is missing and cannot be fetched."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_cfg, network_reachable
from rsnet.data import build_data
from rsnet.data.sources import ImageFolderSource, ImageSize, decode_image
from rsnet.errors import RsnetError
from rsnet.models import build_model, pretrained_weights, untrained_config
from rsnet.models.torchvision_models import (resolve_weights, torchvision_model, weights_file,
                                             weights_preprocessing)
from rsnet.pipeline import fingerprint, use_weights_preprocessing

pytestmark = pytest.mark.usefixtures("one_thread")

# ImageNet-1k's labels of these names (torchvision's category order = sorted wnid folders)
TABBY, TIGER_CAT = 281, 282


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch cache: torchvision reads (and would download) weights under it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def place_weights(name: str, weights: str, seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
    """A seeded state dict of ``name`` saved where torchvision looks for ``weights``."""
    torch.manual_seed(seed)
    state = torchvision.models.get_model(name, num_classes=1000, **kwargs).state_dict()
    path = weights_file(resolve_weights(name, weights))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def weights_cfg(name: str, weights: str, *overrides: str):
    return compose_cfg("model=torchvision", f"model.arch.name={name}",
                       f"model.arch.weights={weights}", *overrides)


def test_the_weights_load_from_torchs_cache(torch_home):
    state = place_weights("squeezenet1_1", "IMAGENET1K_V1")
    assert weights_file(resolve_weights("squeezenet1_1", "DEFAULT")) == \
        torch_home / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    for name in ("IMAGENET1K_V1", "DEFAULT", "SqueezeNet1_1_Weights.IMAGENET1K_V1"):
        model = build_model(weights_cfg("squeezenet1_1", name).model, 1000)
        got = model.state_dict()
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


def test_googlenet_loads_without_its_aux_heads_and_its_untrained_twin_computes_alike(torch_home):
    place_weights("googlenet", "DEFAULT", aux_logits=True, init_weights=True)
    cfg = weights_cfg("googlenet", "DEFAULT").model
    model = build_model(cfg, 1000)
    assert model.aux1 is None and model.transform_input  # torchvision's pretrained settings
    with pytest.warns(UserWarning, match="auxiliary heads .* are NOT pretrained"):  # torchvision's
        assert torchvision_model("googlenet", weights="DEFAULT", aux_logits=True).aux1 is not None
    twin = build_model(untrained_config(cfg), 5)  # the network pruned weights are loaded into
    assert twin.transform_input and twin.aux1 is None and twin.fc.out_features == 5


@pytest.mark.parametrize("name, weights, message", [
    ("resnet50", "IMAGENET1K_V3", "use one of IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"),
    ("vgg16", "IMAGENET1K_FEATURES", "holds no classifier for vgg16; use one of IMAGENET1K_V1, DEFAULT"),
])
def test_unknown_weights_are_refused_with_the_valid_names(name, weights, message):
    with pytest.raises(RsnetError, match=f"model.arch.weights={weights}: .*{message}"):
        pretrained_weights(weights_cfg(name, weights).model)


def test_weights_of_another_label_space_are_refused(torch_home):
    place_weights("squeezenet1_1", "DEFAULT")
    with pytest.raises(RsnetError, match="has 1000 outputs but the dataset has 10 classes"):
        build_model(weights_cfg("squeezenet1_1", "DEFAULT").model, 10)


def test_a_missing_weights_file_is_one_clear_error(torch_home, monkeypatch):
    """Offline (as here) the real download fails; with a network the failure is simulated,
    so the test never downloads."""
    if network_reachable():
        def offline(url, *args, **kwargs):
            raise URLError("no network (simulated)")
        monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    weights = resolve_weights("squeezenet1_1", "DEFAULT")
    start = time.monotonic()
    with pytest.raises(RsnetError) as err:
        build_model(weights_cfg("squeezenet1_1", "DEFAULT").model, 1000)
    assert time.monotonic() - start < 120  # fails at once, no retries
    message = str(err.value)
    assert message.startswith("model.arch.weights=SqueezeNet1_1_Weights.IMAGENET1K_V1: cannot download")
    assert weights.url in message and str(weights_file(weights)) in message
    assert not weights_file(weights).exists()  # nothing half-written in the cache


def test_a_corrupt_cached_file_is_named(torch_home):
    path = weights_file(resolve_weights("squeezenet1_1", "DEFAULT"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a state dict")
    with pytest.raises(RsnetError, match=f"the cached file {path} is not squeezenet1_1's weights"):
        build_model(weights_cfg("squeezenet1_1", "DEFAULT").model, 1000)


# ----------------------------------------------------------------------------- class names

def synthetic_1000(*overrides: str):
    """ImageNet-1k's label space as tiny synthetic images (labels class0 .. class999)."""
    return weights_cfg("squeezenet1_1", "DEFAULT", "dataset=synthetic",
                       "dataset.source.num_classes=1000", "dataset.source.train_per_class=2",
                       "dataset.source.test_per_class=1", "dataset.source.size=8",
                       "dataset.val_fraction=0.5", *overrides)


def categories(cfg) -> list[str]:
    return list(pretrained_weights(cfg.model).meta["categories"])


def test_the_weights_name_the_labels_and_dataset_classes_picks_by_those_names():
    cfg = synthetic_1000("dataset.classes=[tabby,tiger cat]", "dataset.num_classes=3")
    names = categories(cfg)
    assert len(names) == 1000 and names[TABBY] == "tabby"  # torchvision's real metadata
    data = build_data(cfg.dataset, names)
    assert data.subset.classes == (TABBY, TIGER_CAT)
    assert data.class_names == ["misc", "tabby", "tiger cat"]
    in_scope = data.describe()["in_scope"]
    assert [(c["name"], c["folder"], c["original_label"]) for c in in_scope] == \
        [("tabby", "class281", TABBY), ("tiger cat", "class282", TIGER_CAT)]
    assert set(data.train.orig_labels[data.train.targets == 1].tolist()) == {TABBY}
    # the folder names still work
    by_folder = build_data(OmegaConf.merge(cfg.dataset, {"classes": ["class282", "tabby"]}), names)
    assert by_folder.subset.classes == (TIGER_CAT, TABBY)
    assert by_folder.class_names == ["misc", "tiger cat", "tabby"]
    with pytest.raises(RsnetError, match=r"unknown class names \['tabby cat'\]; known names "
                                         r"start with \['tench', 'goldfish'.*close to these: "
                                         r"\[.*'tabby'"):
        build_data(OmegaConf.merge(cfg.dataset, {"classes": ["tabby cat", "tabby"]}), names)


def test_weights_names_for_another_label_space_are_one_clear_error():
    cfg = weights_cfg("squeezenet1_1", "DEFAULT", "dataset=synthetic", "dataset.classes=[tabby]",
                      "dataset.num_classes=2")
    with pytest.raises(RsnetError, match="model.arch.weights names 1000 classes .* but "
                                         "dataset=synthetic has 10"):
        build_data(cfg.dataset, categories(cfg))


# ----------------------------------------------------------------------------- preprocessing

def test_the_weights_preprocessing_fills_the_data_and_input_settings():
    cfg = weights_cfg("resnet50", "IMAGENET1K_V2", "dataset=imagefolder", "dataset.source.path=x")
    use_weights_preprocessing(cfg)
    ds = cfg.dataset
    assert (ds.resize_size, ds.image_size, ds.interpolation) == (232, 224, "bilinear")
    assert list(ds.mean) == [0.485, 0.456, 0.406] and list(ds.std) == [0.229, 0.224, 0.225]
    assert cfg.model.input_size == 224
    inception = weights_cfg("inception_v3", "DEFAULT", "dataset=imagefolder", "dataset.source.path=x")
    use_weights_preprocessing(inception)  # the model group's input_size (224) follows the crop
    assert (inception.dataset.resize_size, inception.dataset.image_size,
            inception.model.input_size) == (342, 299, 299)
    bicubic = weights_cfg("efficientnet_b3", "DEFAULT", "dataset=imagefolder", "dataset.source.path=x")
    use_weights_preprocessing(bicubic)
    assert (bicubic.dataset.resize_size, bicubic.dataset.image_size,
            bicubic.dataset.interpolation) == (320, 300, "bicubic")


def test_given_preprocessing_settings_are_kept_with_a_warning(caplog):
    cfg = weights_cfg("resnet50", "IMAGENET1K_V2", "dataset=imagefolder", "dataset.source.path=x",
                      "dataset.image_size=160", "dataset.std=[0.5,0.5,0.5]")
    with caplog.at_level(logging.WARNING, logger="rsnet.pipeline"):
        use_weights_preprocessing(cfg)
    ds = cfg.dataset
    assert (ds.image_size, ds.resize_size, cfg.model.input_size) == (160, 166, 160)  # 232/224 kept
    assert list(ds.std) == [0.5, 0.5, 0.5] and list(ds.mean) == [0.485, 0.456, 0.406]
    assert "dataset.image_size=160 (the weights': 224)" in caplog.text
    assert "dataset.std=[0.5, 0.5, 0.5]" in caplog.text


def test_configs_without_the_new_settings_keep_their_fingerprint():
    """model.arch.weights, dataset.resize_size and dataset.interpolation at their defaults
    leave the fingerprint as it was before they existed, so old run directories resume."""
    base = compose_cfg("model=torchvision", "dataset=imagefolder", "dataset.source.path=x")
    old = OmegaConf.to_container(base, resolve=True)
    del old["model"]["arch"]["weights"], old["dataset"]["resize_size"], old["dataset"]["interpolation"]
    assert fingerprint(OmegaConf.create(old)) == fingerprint(base)
    assert fingerprint(compose_cfg("model=torchvision", "dataset=imagefolder", "dataset.source.path=x",
                                   "dataset.image_size=224", "dataset.resize_size=256")) != \
        fingerprint(compose_cfg("model=torchvision", "dataset=imagefolder", "dataset.source.path=x",
                                "dataset.image_size=224"))


def photo(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b3"])  # bilinear 232 -> 224; bicubic 320 -> 300
def test_decoding_matches_the_weights_transforms(tmp_path, name):
    weights = resolve_weights(name, "DEFAULT")
    pre = weights_preprocessing(weights)
    file = photo(tmp_path / "a.png", (411, 333))
    pixels = decode_image(file, ImageSize(pre.crop_size, pre.resize_size, pre.interpolation))
    ours = (torch.tensor(pixels).float() / 255 - torch.tensor(pre.mean)[:, None, None]) \
        / torch.tensor(pre.std)[:, None, None]
    theirs = weights.transforms()(Image.open(file).convert("RGB"))
    assert ours.shape == theirs.shape == (3, pre.crop_size, pre.crop_size)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_a_resize_is_part_of_the_decode_cache_key(tmp_path):
    assert ImageSize(227).key() == "227" and ImageSize().key() == "None"  # the keys of old caches
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "tree" / split / c).mkdir(parents=True)
            photo(tmp_path / "tree" / split / c / "1.png", (40, 30), seed=ord(c))
    source, cache = ImageFolderSource(str(tmp_path / "tree")), tmp_path / "cache"
    plain = source.load(tmp_path, cache, ImageSize(16))
    resized = source.load(tmp_path, cache, ImageSize(16, 24))
    assert len(list(cache.iterdir())) == 2  # two caches, not the first one read back
    assert resized.train.images.shape == plain.train.images.shape == (2, 3, 16, 16)
    assert not torch.equal(resized.train.images, plain.train.images)
    expected = decode_image(tmp_path / "tree" / "train" / "a" / "1.png", ImageSize(16, 24))
    assert np.array_equal(resized.train.images[0].numpy(), expected)


@pytest.mark.parametrize("overrides, message", [
    (["dataset.resize_size=256"], "set it too"),
    (["dataset.image_size=224", "dataset.resize_size=200"], "smaller than the crop"),
    (["dataset.image_size=224", "dataset.interpolation=lanczos"], "dataset.interpolation='lanczos'"),
])
def test_bad_resize_settings_are_refused(overrides, message):
    from rsnet.validate import validate
    with pytest.raises(RsnetError, match=message):
        validate(compose_cfg("dataset=imagefolder", "dataset.source.path=x", *overrides))


# ----------------------------------------------------------------------------- the pipeline

def test_a_pretrained_specialist_keeps_the_weights_rows_of_its_classes(torch_home, tmp_path):
    """ImageNet weights, two classes by name, no training: the N-way head is the pretrained
    head's rows of those classes (model.head=subset), the baseline is evaluated."""
    from rsnet.pipeline import run
    state = place_weights("squeezenet1_1", "DEFAULT")
    cfg = synthetic_1000("dataset.classes=[tabby,tiger cat]", "dataset.num_classes=3",
                         "dataset.image_size=32", "train.epochs=0", "train.latency_runs=0",
                         "train.precision=fp32", "train.channels_last=false", "progress=false")
    metrics = run(cfg, tmp_path / "run")
    assert (cfg.dataset.image_size, cfg.dataset.resize_size, cfg.model.input_size) == (32, 37, 32)  # 256/224
    assert metrics["data/num_outputs"] == 3 and "baseline/test/acc" in metrics
    saved = torch.load(tmp_path / "run" / "checkpoints" / "model.pt", weights_only=False)
    assert saved["class_names"] == ["misc", "tabby", "tiger cat"]
    head = saved["state_dict"]["classifier.1.weight"]
    assert torch.equal(head[1:], state["classifier.1.weight"][[TABBY, TIGER_CAT]])
    classes = json.loads((tmp_path / "run" / "classes.json").read_text())
    assert [c["name"] for c in classes["in_scope"]] == ["tabby", "tiger cat"]
