from collections import Counter

import pytest
import torch

from rsnet.config import DatasetConfig
from rsnet.data import build_data
from rsnet.data.loader import BatchLoader, Split, random_crop_flip
from rsnet.data.sources import ImageSize, Synthetic
from rsnet.data.subsets import cap_per_class, choose_classes, split_train_val, subset_indices
from rsnet.errors import RsnetError
from omegaconf import OmegaConf


SYNTHETIC = {"_target_": "rsnet.data.sources.Synthetic", "num_classes": 10, "train_per_class": 40,
             "test_per_class": 20, "size": 8}
CIFAR = {"_target_": "rsnet.data.sources.Cifar10Jpeg"}


def synthetic_cfg(source=SYNTHETIC, **kw) -> DatasetConfig:
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig(name="test", source=source)), kw)


def test_subset_has_n_minus_1_classes_plus_misc_and_misc_is_out_of_scope():
    data = build_data(synthetic_cfg(num_classes=5, misc_multiplier=2.0, seed=3))
    assert data.num_outputs == 5 and data.class_names[0] == "misc"
    chosen = torch.tensor(data.subset.classes)
    assert len(chosen) == 4
    for split in (data.train, data.val, data.test):
        is_misc = split.targets == 0
        # a misc image never belongs to an in-scope class ...
        assert not torch.isin(split.orig_labels[is_misc], chosen).any()
        # ... and every in-scope image carries its class's new label
        lookup = {c: k + 1 for k, c in enumerate(data.subset.classes)}
        assert [lookup[o] for o in split.orig_labels[~is_misc].tolist()] == split.targets[~is_misc].tolist()
        per_class = (~is_misc).sum().item() / 4
        assert is_misc.sum().item() == round(2.0 * per_class)
    # the composition recorded for the run matches the images
    comp = data.describe()["misc_composition"]["test"]
    counts = Counter(data.test.orig_labels[data.test.targets == 0].tolist())
    assert comp == {data.base_class_names[c]: n for c, n in sorted(counts.items())}


def test_subset_is_seeded():
    a = build_data(synthetic_cfg(num_classes=4, seed=1))
    b = build_data(synthetic_cfg(num_classes=4, seed=1))
    c = build_data(synthetic_cfg(num_classes=4, seed=2))
    assert a.subset == b.subset and torch.equal(a.train.orig_labels, b.train.orig_labels)
    assert torch.equal(a.train.images, b.train.images)
    assert a.subset != c.subset


def test_named_classes_and_plain_subset_without_misc():
    data = build_data(synthetic_cfg(classes=["class7", "class2"], misc=False))
    assert data.class_names == ["class7", "class2"] and data.misc_label is None
    assert set(data.test.orig_labels.tolist()) == {7, 2}
    assert (data.test.targets == (data.test.orig_labels == 2).long()).all()


def test_misc_all_takes_every_out_of_scope_test_image():
    data = build_data(synthetic_cfg(num_classes=3, misc_test="all"))
    assert len(data.test) == 10 * 20  # every test image: 2 classes in scope, the rest misc
    assert (data.test.targets == 0).sum() == 8 * 20


@pytest.mark.parametrize("n, misc", [(11, True), (1, True), (11, False), (0, False)])
def test_impossible_class_counts_name_the_setting(n, misc):
    with pytest.raises(RsnetError, match="dataset.num_classes"):
        choose_classes([f"c{i}" for i in range(10)], n, misc, seed=0)


def test_too_many_misc_images_is_an_error():
    with pytest.raises(RsnetError, match="misc_multiplier"):
        subset_indices(torch.arange(10).repeat_interleave(5), choose_classes(
            [f"c{i}" for i in range(10)], 6, True, 0), misc_multiplier=6.0, seed=0)


def test_train_val_split_is_stratified_disjoint_and_complete():
    labels = torch.arange(5).repeat_interleave(20)
    train, val = split_train_val(labels, 0.25, seed=0)
    assert len(set(train.tolist()) & set(val.tolist())) == 0
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    assert Counter(labels[val].tolist()) == {c: 5 for c in range(5)}


def test_train_per_class_caps_each_class_seeded_within_the_given_indices():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 8)
    idx = torch.arange(1, 21)  # image 0 is not a candidate (e.g. held out for validation)
    kept = cap_per_class(labels, idx, 4, seed=1)
    assert Counter(labels[kept].tolist()) == {0: 4, 1: 3, 2: 4}
    assert set(kept.tolist()) <= set(idx.tolist()) and kept.tolist() == sorted(kept.tolist())
    assert torch.equal(kept, cap_per_class(labels, idx, 4, seed=1))
    assert not torch.equal(kept, cap_per_class(labels, idx, 4, seed=2))
    assert torch.equal(cap_per_class(labels, idx, None, seed=1), idx)
    with pytest.raises(RsnetError, match="train_per_class"):
        cap_per_class(labels, idx, 0, seed=1)
    full = build_data(synthetic_cfg(num_classes=3, seed=0))
    small = build_data(synthetic_cfg(num_classes=3, seed=0, train_per_class=2))
    assert Counter(small.train.targets.tolist()) == {0: 2, 1: 2, 2: 2}  # misc sized from it
    assert torch.equal(small.val.orig_labels, full.val.orig_labels)  # val and test untouched
    assert torch.equal(small.test.orig_labels, full.test.orig_labels)


def test_missing_data_names_where_it_looked(tmp_path):
    cfg = synthetic_cfg(CIFAR, root=str(tmp_path))
    with pytest.raises(RsnetError, match=r"dataset.root.*RSNET_DATA|RSNET_DATA"):
        build_data(cfg)


def test_crop_and_flip_match_a_per_image_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, 2, True, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # replay the same random draws one image at a time
    oy, ox = torch.randint(0, 5, (6,), generator=g), torch.randint(0, 5, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        ref = padded[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8]
        assert torch.equal(out[i], ref.flip(2) if flip[i] else ref)


def test_loader_normalises_and_is_deterministic_per_epoch():
    raw = Synthetic(num_classes=3, train_per_class=10, size=8).load(None, None, ImageSize()).train
    split = Split(raw.images, raw.labels, raw.labels)
    loader = BatchLoader(split, 8, mean=[0.5] * 3, std=[0.25] * 3, shuffle=True, crop_padding=2,
                         flip=True, seed=1)
    plain = BatchLoader(split, 30, mean=[0.5] * 3, std=[0.25] * 3)
    x, _ = next(iter(plain))
    assert torch.allclose(x, (raw.images.float() / 255 - 0.5) / 0.25, atol=1e-5)
    loader.set_epoch(3)
    first = [b[1] for b in loader]
    loader.set_epoch(3)
    assert all(torch.equal(a, b[1]) for a, b in zip(first, loader))
    loader.set_epoch(4)
    assert not all(torch.equal(a, b[1]) for a, b in zip(first, loader))
    assert sum(len(b) for b in first) == 30


@pytest.mark.integration
def test_cifar10_jpeg_loads_with_official_split_sizes(data_dir):
    cfg = synthetic_cfg(CIFAR, root=str(data_dir), val_fraction=0.1)
    data = build_data(cfg)
    assert data.class_names[:3] == ["airplane", "automobile", "bird"]
    assert (len(data.train), len(data.val), len(data.test)) == (45_000, 5_000, 10_000)
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (3, 32, 32)
    assert Counter(data.test.targets.tolist()) == {c: 1000 for c in range(10)}


def _jpeg(rgb, size=(12, 10)) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_imagefolder_source_decodes_and_resizes(tmp_path):
    for split in ("train", "val"):
        for c, rgb in (("cats", (200, 10, 10)), ("dogs", (10, 10, 200))):
            (tmp_path / "folder" / split / c).mkdir(parents=True)
            for i in range(3):
                (tmp_path / "folder" / split / c / f"{i}.jpg").write_bytes(_jpeg(rgb))
    cfg = synthetic_cfg({"_target_": "rsnet.data.sources.ImageFolderSource", "path": "folder"},
                        root=str(tmp_path), image_size=8, val_fraction=0.34, cache_dir=str(tmp_path / "c"))
    data = build_data(cfg)
    assert data.class_names == ["cats", "dogs"]
    assert data.test.images.shape == (6, 3, 8, 8) and len(data.train) + len(data.val) == 6
    red = data.test.images[data.test.targets == 0].float().mean((0, 2, 3))
    assert red[0] > 150 and red[2] < 60  # the cats images are red, channel order kept


def test_tiny_imagenet_layout_is_parsed_from_an_archive(tmp_path):
    import io
    import tarfile

    files = {"tiny-imagenet-200/wnids.txt": b"n02\nn01\n",
             "tiny-imagenet-200/words.txt": b"n01\tgoldfish, Carassius auratus\nn02\tshark\n",
             "tiny-imagenet-200/val/val_annotations.txt":
                 b"val_0.JPEG\tn01\t0 0 1 1\nval_1.JPEG\tn02\t0 0 1 1\n",
             "tiny-imagenet-200/val/images/val_0.JPEG": _jpeg((250, 0, 0), (8, 8)),
             "tiny-imagenet-200/val/images/val_1.JPEG": _jpeg((0, 0, 250), (8, 8))}
    for w, rgb in (("n01", (250, 0, 0)), ("n02", (0, 0, 250))):
        for k in range(2):
            files[f"tiny-imagenet-200/train/{w}/images/{w}_{k}.JPEG"] = _jpeg(rgb, (8, 8))
        files[f"tiny-imagenet-200/train/{w}/{w}_boxes.txt"] = b""
    with tarfile.open(tmp_path / "tiny-imagenet-200.tar.gz", "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = __import__("rsnet.data.sources", fromlist=["TinyImageNet"]).TinyImageNet().load(
        tmp_path, tmp_path / "cache", ImageSize())
    assert raw.class_names == ["n02 (shark)", "n01 (goldfish)"]  # wnids.txt order
    assert raw.train.labels.tolist() == [1, 1, 0, 0]
    assert raw.test.labels.tolist() == [1, 0]  # val_0 is n01 -> label 1
    assert raw.test.images[0, 0].float().mean() > 200  # val_0 is the red one


def test_a_corrupt_archive_is_a_clear_error(tmp_path):
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(RsnetError, match="corrupt"):
        build_data(synthetic_cfg(CIFAR, root=str(tmp_path), cache_dir=str(tmp_path / "c")))


def test_torchvision_cifar_without_files_says_how_to_get_them(tmp_path):
    with pytest.raises(RsnetError, match="download=true"):
        build_data(synthetic_cfg({"_target_": "rsnet.data.sources.TorchvisionCifar"},
                                 root=str(tmp_path)))


@pytest.mark.slow
def test_tiny_imagenet_loads(data_dir):
    cfg = synthetic_cfg({"_target_": "rsnet.data.sources.TinyImageNet"}, root=str(data_dir),
                        num_classes=10)
    data = build_data(cfg)
    assert len(data.base_class_names) == 200 and data.test.images.shape[1:] == (3, 64, 64)
    assert (data.test.targets != 0).sum() == 9 * 50  # 9 in-scope classes x 50 val images


def test_a_corrupt_image_in_a_folder_names_the_file(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "f" / split / "a").mkdir(parents=True)
        (tmp_path / "f" / split / "a" / "0.jpg").write_bytes(_jpeg((1, 2, 3)))
    (tmp_path / "f" / "val" / "a" / "1.jpg").write_bytes(b"no image here")
    cfg = synthetic_cfg({"_target_": "rsnet.data.sources.ImageFolderSource", "path": "f"},
                        root=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(RsnetError, match="1.jpg"):
        build_data(cfg)


def _raw(value: int):
    from rsnet.data.sources import RawDataset, RawSplit
    split = RawSplit(torch.full((2, 3, 4, 4), value, dtype=torch.uint8), torch.tensor([0, 1]))
    return RawDataset(split, split, ["a", "b"])


def test_cache_survives_a_parallel_job_and_replaces_a_corrupt_one(tmp_path):
    from rsnet.data.sources import cached
    calls = []

    def build_while_another_job_finishes():  # a sweep's parallel job caches the same data first
        calls.append(1)
        cached("k", lambda: _raw(7), tmp_path)
        return _raw(7)

    assert cached("k", build_while_another_job_finishes, tmp_path).train.images[0, 0, 0, 0] == 7
    assert cached("k", lambda: pytest.fail("decoded again"), tmp_path).class_names == ["a", "b"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    (folder,) = [p for p in tmp_path.iterdir()]
    (folder / "train_images.npy").write_bytes(b"garbage")
    assert cached("k", lambda: _raw(9), tmp_path).train.images[0, 0, 0, 0] == 9
    assert cached("k", lambda: pytest.fail("decoded again"), tmp_path).train.images[0, 0, 0, 0] == 9
