"""Image sources: where the pixels come from, decoded once into a uint8 cache.

Every source turns its files into a :class:`RawDataset`: per split a uint8 tensor of shape
(num_images, 3, H, W) and int64 labels, plus the class names in label order. Decoding
happens once; the result is stored as ``.npy`` files in a cache folder (outside the
repository) and later runs read those back in well under a second.

Sources are chosen with ``dataset.source._target_`` (see ``conf/dataset/``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rsnet.errors import RsnetError
from rsnet.progress import bar
from rsnet.fileio import probe_writable

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CACHE_VERSION = 1


@dataclass
class RawSplit:
    images: torch.Tensor  # uint8, (num_images, 3, H, W)
    labels: torch.Tensor  # int64, (num_images,), 0..C-1


@dataclass
class RawDataset:
    train: RawSplit
    test: RawSplit
    class_names: list[str]


def default_cache_dir() -> Path:
    """``$RSNET_CACHE``, else ``~/.cache/rsnet``."""
    return Path(os.environ.get("RSNET_CACHE", Path.home() / ".cache" / "rsnet"))


INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class ImageSize:
    """How images are sized once, when decoded: ``size`` x ``size`` pixels (None: the native
    size). Plain (``resize`` and ``interpolation`` None): shorter side to ``size``, centre crop
    (rsnet's own resize). Else torchvision's eval preprocessing on PIL images: shorter side to
    ``resize`` (default ``size``) with ``interpolation`` (default bilinear), centre crop."""

    size: int | None = None
    resize: int | None = None
    interpolation: str | None = None

    @property
    def plain(self) -> bool:
        return self.resize is None and self.interpolation is None

    def key(self) -> str:
        """Its part of a cache key: the size alone when plain, as before resize existed, so
        those caches are still read."""
        return str(self.size) if self.plain else \
            f"{self.size}:resize={self.resize}:{self.interpolation or 'bilinear'}"


def decode_image(data: bytes | Path, size: ImageSize) -> np.ndarray:
    """Decode one image file to uint8 (3, S, S), S = ``size.size`` (or its native size when
    that is None), sized as :class:`ImageSize` says."""
    img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data).convert("RGB")
    side = size.size
    if side is not None and not size.plain:
        img = resize_crop(img, size)
    elif side is not None and img.size != (side, side):
        w, h = img.size
        scale = side / min(w, h)
        img = img.resize((max(side, round(w * scale)), max(side, round(h * scale))),
                         Image.BILINEAR)
        w, h = img.size
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    return np.asarray(img).transpose(2, 0, 1)


def resize_crop(images: Image.Image | torch.Tensor, size: ImageSize
                ) -> Image.Image | torch.Tensor:
    """A PIL image, or uint8 (n, 3, h, w) images, sized as torchvision's eval transform does
    (``size`` not plain): shorter side to ``size.resize`` (antialiased), centre crop."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F
    mode = InterpolationMode(size.interpolation or "bilinear")
    resized = F.resize(images, [size.resize or size.size], interpolation=mode, antialias=True)
    return F.center_crop(resized, [size.size])


def _stack(items: list[tuple[str, int, np.ndarray]]) -> RawSplit:
    """Stack (sort_key, label, image) items in sorted key order (so file order never matters)."""
    if not items:
        raise RsnetError("a data split holds no images")
    items.sort(key=lambda t: t[0])
    shapes = {a.shape for _, _, a in items}
    if len(shapes) != 1:
        raise RsnetError(f"images of different sizes {sorted(shapes)[:3]}: set dataset.image_size")
    images = torch.from_numpy(np.stack([a for _, _, a in items]))
    labels = torch.tensor([lab for _, lab, _ in items], dtype=torch.int64)
    return RawSplit(images, labels)


# ----------------------------------------------------------------------------- cache

def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def _check_writable(cache_dir: Path) -> None:
    try:
        probe_writable(cache_dir)
    except OSError as e:
        raise RsnetError(f"the image cache {cache_dir} is not writable ({e.strerror}); set "
                         f"dataset.cache_dir (or $RSNET_CACHE) to a writable folder") from e


def cached(key: str, build, cache_dir: Path) -> RawDataset:
    """Return the dataset cached under ``key``, building (decoding) it on a miss.

    The cache is written to a temporary folder and renamed, so a killed decode leaves
    nothing that could be mistaken for a finished cache; parallel jobs decoding the same
    dataset (a sweep) each write their own copy and the first rename wins.
    """
    digest = hashlib.sha1(f"{CACHE_VERSION}:{key}".encode()).hexdigest()[:16]
    folder = cache_dir / digest
    unreadable = False
    if not (folder / "meta.json").exists():  # before the decode, not after it
        _check_writable(cache_dir)
    if (folder / "meta.json").exists():
        try:
            meta = json.loads((folder / "meta.json").read_text())
            splits = {
                s: RawSplit(torch.from_numpy(np.load(folder / f"{s}_images.npy")),
                            torch.from_numpy(np.load(folder / f"{s}_labels.npy")))
                for s in ("train", "test")
            }
            return RawDataset(splits["train"], splits["test"], meta["class_names"])
        except (OSError, ValueError, KeyError) as e:
            log.warning("cache %s unreadable (%s); decoding again", folder, e)
            unreadable = True
    raw = build()
    tmp = cache_dir / f".{digest}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for s in ("train", "test"):
        split = getattr(raw, s)
        np.save(tmp / f"{s}_images.npy", split.images.numpy())
        np.save(tmp / f"{s}_labels.npy", split.labels.numpy())
    (tmp / "meta.json").write_text(json.dumps({"key": key, "class_names": raw.class_names}))
    if unreadable or not (folder / "meta.json").exists():  # else a parallel job just made it
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
            log.info("cached decoded images in %s", folder)
        except OSError:  # a parallel job (a sweep) renamed its copy in between: keep that one
            if not (folder / "meta.json").exists():
                raise
    shutil.rmtree(tmp, ignore_errors=True)
    return raw


def _find(root: Path, folder: str) -> Path:
    """The extracted folder ``root/folder`` or the archive ``root/folder.tar.gz``."""
    for cand in (root / folder, root / f"{folder}.tar.gz", root / f"{folder}.tgz"):
        if cand.exists():
            return cand
    raise RsnetError(
        f"dataset not found: looked for {root / folder}/ and {root / folder}.tar.gz. "
        f"Put the data there, or set dataset.root (or $RSNET_DATA) to the folder holding it")


def _walk_files(path: Path, desc: str) -> Iterator[tuple[str, bytes]]:
    """Yield (relative path, bytes) of every file in a folder or a .tar.gz archive."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        for p in bar(files, desc=desc, unit="file"):
            yield p.relative_to(path).as_posix(), p.read_bytes()
        return
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in bar(tf, desc=desc, unit="file"):
                if m.isfile():
                    name = m.name.split("/", 1)[1] if "/" in m.name else m.name
                    yield name, tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError, TypeError, zlib.error) as e:  # all seen on corrupt gz
        raise RsnetError(f"cannot read archive {path} ({e}): it is corrupt or incomplete; "
                         f"replace it or point dataset.root elsewhere") from e


# ----------------------------------------------------------------------------- sources

class _FolderOrArchive(ABC):
    """A dataset shipped as ``<root>/<folder>/`` or ``<root>/<folder>.tar.gz``."""

    name: str
    folder: str

    def load(self, root: Path, cache_dir: Path, size: ImageSize) -> RawDataset:
        path = _find(root, self.folder)
        return cached(f"{self.name}:{_fingerprint(path)}:{size.key()}",
                      lambda: self._decode(path, size), cache_dir)

    @abstractmethod
    def _decode(self, path: Path, size: ImageSize) -> RawDataset:
        """Decode every image under ``path`` (a folder or an archive)."""


class Cifar10Jpeg(_FolderOrArchive):
    """CIFAR-10 re-encoded as JPEG (``cifar10-jpeg/{train,test}/<class>/NNNN.jpg``)."""

    name = "cifar10_jpeg"
    folder = "cifar10-jpeg"

    def _decode(self, path: Path, size: ImageSize) -> RawDataset:
        found: dict[str, list[tuple[str, str, np.ndarray]]] = {"train": [], "test": []}
        for rel, data in _walk_files(path, f"decoding {self.folder}"):
            parts = rel.split("/")
            if len(parts) == 3 and parts[0] in found and rel.lower().endswith(IMAGE_SUFFIXES):
                found[parts[0]].append((rel, parts[1], decode_image(data, size)))
        class_names = sorted({c for _, c, _ in found["train"]})
        index = {c: i for i, c in enumerate(class_names)}
        splits = [_stack([(r, index[c], a) for r, c, a in found[s]]) for s in ("train", "test")]
        return RawDataset(*splits, class_names)


class TinyImageNet(_FolderOrArchive):
    """Tiny-ImageNet-200 (CS231n layout); its labelled ``val`` split serves as the test set."""

    name = "tiny_imagenet"
    folder = "tiny-imagenet-200"

    def _decode(self, path: Path, size: ImageSize) -> RawDataset:
        train, val, wnids, words, val_ann = [], {}, None, {}, {}
        for rel, data in _walk_files(path, f"decoding {self.folder}"):
            parts = rel.split("/")
            if rel == "wnids.txt":
                wnids = data.decode().split()
            elif rel == "words.txt":
                words = dict(line.split("\t", 1) for line in data.decode().splitlines() if "\t" in line)
            elif rel == "val/val_annotations.txt":
                val_ann = {ln.split("\t")[0]: ln.split("\t")[1] for ln in data.decode().splitlines() if ln}
            elif parts[0] == "train" and len(parts) == 4 and rel.endswith(".JPEG"):
                train.append((rel, parts[1], decode_image(data, size)))
            elif parts[:2] == ["val", "images"] and rel.endswith(".JPEG"):
                val[parts[2]] = decode_image(data, size)
        if wnids is None or not val_ann:
            raise RsnetError(f"{path} lacks wnids.txt or val/val_annotations.txt: it is not a "
                             f"complete Tiny-ImageNet-200; replace it or change dataset.root")
        index = {w: i for i, w in enumerate(wnids)}
        names = [f"{w} ({words[w].strip().split(',')[0]})" if w in words else w for w in wnids]
        return RawDataset(
            _stack([(r, index[w], a) for r, w, a in train]),
            _stack([(f, index[val_ann[f]], a) for f, a in val.items()]),
            names)


class ImageFolderSource:
    """Any ImageFolder tree: ``<path>/<train_dir>/<class>/*.jpg`` and ``<path>/<test_dir>/...``.

    ``path`` is absolute or relative to the data root. Use ``dataset.image_size`` for images of
    mixed sizes (e.g. ImageNet); every image is resized and centre-cropped once when cached.
    """

    name = "imagefolder"

    def __init__(self, path: str, train_dir: str = "train", test_dir: str = "val"):
        self.path, self.train_dir, self.test_dir = path, train_dir, test_dir

    def load(self, root: Path, cache_dir: Path, size: ImageSize) -> RawDataset:
        base = Path(self.path) if Path(self.path).is_absolute() else root / self.path
        dirs = [base / self.train_dir, base / self.test_dir]
        for d in dirs:
            if not d.is_dir():
                raise RsnetError(f"image folder {d} not found: set dataset.source.path "
                                 f"(and train_dir/test_dir) to an ImageFolder tree")
        return cached(f"{self.name}:{_fingerprint(dirs[0])}:{_fingerprint(dirs[1])}:{size.key()}",
                      lambda: self._decode(dirs, size), cache_dir)

    @staticmethod
    def _decode(dirs: list[Path], size: ImageSize) -> RawDataset:
        class_names = sorted(p.name for p in dirs[0].iterdir() if p.is_dir())
        if not class_names:
            raise RsnetError(f"{dirs[0]} has no class folders; see dataset.source.path")
        index = {c: i for i, c in enumerate(class_names)}
        splits = []
        for d in dirs:
            files = sorted(p for c in class_names if (d / c).is_dir() for p in (d / c).iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES)
            found = {p.parent.name for p in files}
            empty = [c for c in class_names if c not in found]
            if empty and d == dirs[0]:  # a class nothing can be learnt from
                raise RsnetError(f"class folder(s) without images in {d}: {', '.join(empty[:10])}"
                                 f"{' ...' if len(empty) > 10 else ''}; add images or remove them")
            items, bad = [], []
            for p in bar(files, desc=f"decoding {d}", unit="img"):
                try:
                    items.append((p.relative_to(d).as_posix(), index[p.parent.name],
                                  decode_image(p, size)))
                except (OSError, ValueError) as e:  # every bad file named at once, not the first
                    bad.append(f"{p} ({e})")
            if bad:
                raise RsnetError(f"{len(bad)} image(s) cannot be decoded; remove or replace them: "
                                 + "; ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
            splits.append(_stack(items))
        return RawDataset(*splits, class_names)


class TorchvisionCifar:
    """The original CIFAR-10 / CIFAR-100 through torchvision (``download=True`` needs a network)."""

    def __init__(self, name: str = "CIFAR10", download: bool = False):
        if name not in ("CIFAR10", "CIFAR100"):
            raise RsnetError(f"dataset.source.name={name!r}: use CIFAR10 or CIFAR100")
        self.name, self.download = name, download

    def load(self, root: Path, cache_dir: Path, size: ImageSize) -> RawDataset:
        import torchvision

        cls = getattr(torchvision.datasets, self.name)
        try:
            sets = [cls(str(root), train=t, download=self.download) for t in (True, False)]
        except RuntimeError as e:
            raise RsnetError(f"torchvision {self.name} not found under {root} ({e}); set "
                             f"dataset.root to its folder or dataset.source.download=true") from e
        splits = []
        for ds in sets:
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            if size.size is not None and not size.plain:
                images = resize_crop(images, size)
            elif size.size is not None and size.size != images.shape[-1]:
                images = torch.nn.functional.interpolate(
                    images.float(), size=size.size, mode="bilinear", antialias=True
                ).round().clamp(0, 255).to(torch.uint8)
            splits.append(RawSplit(images, torch.tensor(ds.targets, dtype=torch.int64)))
        return RawDataset(*splits, list(sets[0].classes))


class Synthetic:
    """Seeded synthetic images, learnable: each class is a fixed random colour pattern plus noise.

    Needs no files; used by tests and for trying a configuration without data.
    """

    name = "synthetic"

    def __init__(self, num_classes: int = 10, train_per_class: int = 50, test_per_class: int = 20,
                 size: int = 32, noise: float = 40.0, seed: int = 0):
        self.num_classes, self.size, self.noise, self.seed = num_classes, size, noise, seed
        self.per_class = {"train": train_per_class, "test": test_per_class}

    def load(self, root: Path | None, cache_dir: Path | None, image_size: ImageSize) -> RawDataset:
        """Made at ``image_size.size`` (else ``size``) px; made at ``size`` and then resized and
        cropped when ``image_size`` is not plain."""
        plain = image_size.plain or image_size.size is None
        size = (image_size.size if plain else None) or self.size
        g = torch.Generator().manual_seed(self.seed)
        # Low-resolution class prototypes, upsampled: smooth patterns a small CNN can learn.
        protos = torch.rand(self.num_classes, 3, 4, 4, generator=g) * 255
        protos = torch.nn.functional.interpolate(protos, size=size, mode="bilinear")
        splits = []
        for split in ("train", "test"):
            n = self.per_class[split]
            labels = torch.arange(self.num_classes).repeat_interleave(n)
            noise = torch.randn(len(labels), 3, size, size, generator=g) * self.noise
            images = (protos[labels] + noise).round().clamp(0, 255).to(torch.uint8)
            splits.append(RawSplit(images if plain else resize_crop(images, image_size), labels))
        return RawDataset(*splits, [f"class{i}" for i in range(self.num_classes)])
