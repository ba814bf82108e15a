"""Datasets for rsnet: sources decoded once into a uint8 cache, class subsets with a misc
class, a seeded validation split, and fast in-memory batches.

``build_data`` is the stage function the pipeline calls.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from rsnet.config import AugmentConfig, DatasetConfig
from rsnet.data.loader import Split
from rsnet.data.sources import ImageSize, RawDataset, default_cache_dir
from rsnet.data.subsets import (ClassSubset, cap_per_class, choose_classes, hold_out_unseen,
                                requested_names, split_train_val, subset_indices)
from rsnet.errors import RsnetError

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DataBundle:
    """Train / val / test splits of one dataset (or of its class subset) and what describes them."""

    train: Split
    val: Split
    test: Split
    class_names: list[str]  # output names in label order (misc first when present)
    base_class_names: list[str]  # the dataset's full label space (C classes)
    subset: ClassSubset | None
    misc_composition: dict[str, dict[str, int]]  # split -> {original class name: misc images}
    mean: list[float]
    std: list[float]
    augment: AugmentConfig
    unseen: Split | None = None  # test images of the unseen out-of-scope classes (labelled misc)
    base_folders: list[str] | None = None  # the labels' folder names, where other names name them

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    @property
    def misc_label(self) -> int | None:
        return self.subset.misc_label if self.subset else None

    def describe(self) -> dict:
        """What was selected, for ``classes.json`` in the run directory."""
        return {
            "num_outputs": self.num_outputs, "num_base_classes": len(self.base_class_names),
            "class_names": self.class_names,
            "in_scope": None if self.subset is None else [
                {"label": self.class_names.index(self.base_class_names[c]), "name":
                 self.base_class_names[c], "original_label": c,
                 **({"folder": self.base_folders[c]} if self.base_folders else {})}
                for c in self.subset.classes],
            "misc_label": self.misc_label,
            "unseen": None if self.subset is None else [
                {"name": self.base_class_names[c], "original_label": c} for c in self.subset.unseen],
            "split_sizes": {s: len(getattr(self, s)) for s in ("train", "val", "test", "unseen")
                            if getattr(self, s) is not None},
            "misc_composition": self.misc_composition,
        }


def data_root(root: str | None) -> Path:
    """``dataset.root``, else ``$RSNET_DATA``, else ``./data``; then the workplace's ``../shared/data``."""
    given = root or os.environ.get("RSNET_DATA")
    if given:
        return Path(given).expanduser()
    for cand in (Path("data"), REPO_ROOT.parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return Path("data")


def _make_split(raw_images, raw_labels, idx, lookup) -> Split:
    orig = raw_labels[idx]
    return Split(raw_images[idx], lookup[orig], orig)


def build_data(cfg: DatasetConfig, base_names: Sequence[str] | None = None) -> DataBundle:
    """Load (decode or read the cache), select the class subset and make the three splits.

    ``base_names``: the labels' names in label order instead of the source's (folder) names: the
    categories of the pretrained weights ``model.arch.weights``, for a dataset with as many
    classes (ImageNet-1k's sorted class folders are in their order); ``dataset.classes`` may
    use either.
    """
    try:
        source = instantiate(cfg.source)
    except InstantiationException as e:
        raise RsnetError(f"dataset.source of dataset={cfg.name} is invalid: {e}") from e
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    size = ImageSize(cfg.image_size, cfg.resize_size, cfg.interpolation)
    raw: RawDataset = source.load(data_root(cfg.root), cache, size)
    base, folders, classes = raw.class_names, None, list(cfg.classes) if cfg.classes else None
    if base_names is not None and list(base_names) != base:
        if len(base_names) != len(base):
            raise RsnetError(
                f"model.arch.weights names {len(base_names)} classes (e.g. {list(base_names[:3])})"
                f" but dataset={cfg.name} has {len(base)}: pretrained weights need the dataset "
                f"they were trained on (ImageNet-1k: dataset=imagefolder on its "
                f"{len(base_names)} class folders); pick your classes from it with dataset.classes")
        folders, base = base, list(base_names)
        classes = requested_names(classes, folders, base) if classes else None
    subset = choose_classes(base, cfg.num_classes, cfg.misc, cfg.seed, classes)
    if subset is not None:
        subset = hold_out_unseen(subset, cfg.unseen_fraction, cfg.seed)
    elif cfg.unseen_fraction:
        raise RsnetError(f"dataset.unseen_fraction={cfg.unseen_fraction} needs a class subset "
                         f"(dataset.num_classes or dataset.classes)")
    if cfg.misc_test not in ("sampled", "all"):
        raise RsnetError(f"dataset.misc_test={cfg.misc_test!r}: use 'sampled' or 'all'")
    train_idx, val_idx = split_train_val(raw.train.labels, cfg.val_fraction, cfg.seed)
    train_idx = cap_per_class(raw.train.labels, train_idx, cfg.train_per_class, cfg.seed)
    splits, composition = {}, {}
    sources = {"train": (raw.train, train_idx), "val": (raw.train, val_idx),
               "test": (raw.test, torch.arange(len(raw.test.labels)))}
    for k, (name, (rs, idx)) in enumerate(sources.items()):
        lookup = subset.lookup() if subset else torch.arange(len(base))
        if subset:
            # Sub-select within the split; each split draws its misc images with its own seed.
            local, counts = subset_indices(rs.labels[idx], subset, cfg.misc_multiplier,
                                           cfg.seed * 7 + k, misc_all=name == "test" and cfg.misc_test == "all")
            idx = idx[local]
            composition[name] = {base[c]: n for c, n in sorted(counts.items())}
        splits[name] = _make_split(rs.images, rs.labels, idx, lookup)
    if len(splits["val"]) == 0:
        raise RsnetError("the validation split is empty: raise dataset.val_fraction")
    unseen = None
    if subset is not None and subset.unseen:  # all their test images, labelled misc
        idx = torch.isin(raw.test.labels, torch.tensor(subset.unseen)).nonzero().flatten()
        unseen = _make_split(raw.test.images, raw.test.labels, idx, subset.lookup())
    names = subset.names(base) if subset else list(base)
    log.info("data %s: %d outputs, train/val/test %d/%d/%d images", cfg.name, len(names),
             len(splits["train"]), len(splits["val"]), len(splits["test"]))
    return DataBundle(splits["train"], splits["val"], splits["test"], names, base, subset,
                      composition, list(cfg.mean), list(cfg.std), cfg.augment, unseen, folders)
