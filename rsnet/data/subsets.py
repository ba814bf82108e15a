"""Class subsets with a miscellaneous class, and the seeded validation split (method.md section 7).

An application needs N outputs: N-1 classes of interest plus one *misc* class (label 0,
as in the thesis) that stands for every other class. Its images are m x (images per
in-scope class) images drawn at random from the out-of-scope classes only.
"""

from __future__ import annotations

from collections import Counter
from difflib import get_close_matches
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rsnet.errors import RsnetError

MISC_NAME = "misc"


@dataclass(frozen=True)
class ClassSubset:
    """The in-scope classes (original label indices, in new-label order) and whether misc exists.

    New labels: with misc, misc = 0 and in-scope class k -> k + 1; without misc, k -> k.
    ``unseen``: out-of-scope classes held out of every misc training and validation image, so
    that misc detection can be judged on classes the model never saw (their test images
    are labelled misc).
    """

    classes: tuple[int, ...]
    misc: bool
    num_base_classes: int
    unseen: tuple[int, ...] = ()

    @property
    def num_outputs(self) -> int:
        return len(self.classes) + int(self.misc)

    @property
    def misc_label(self) -> int | None:
        return 0 if self.misc else None

    def lookup(self) -> torch.Tensor:
        """Map original label -> new label (-1 for out-of-scope classes without misc)."""
        table = torch.full((self.num_base_classes,), 0 if self.misc else -1, dtype=torch.int64)
        offset = int(self.misc)
        for k, c in enumerate(self.classes):
            table[c] = k + offset
        return table

    def names(self, base_names: list[str]) -> list[str]:
        return ([MISC_NAME] if self.misc else []) + [base_names[c] for c in self.classes]


def requested_names(requested: Sequence[str], folders: list[str], names: list[str]) -> list[str]:
    """``dataset.classes`` entries as label ``names`` (which name the labels instead of their
    ``folders``): a label name as it is, a folder name translated (n02123045 -> tabby)."""
    by_folder = dict(zip(folders, names))
    return [r if r in names else by_folder.get(r, r) for r in requested]


def choose_classes(base_names: list[str], num_classes: int | None, misc: bool, seed: int,
                   names: list[str] | None = None) -> ClassSubset | None:
    """Pick the in-scope classes: the given ``names``, else a seeded random choice.

    ``num_classes`` counts every output, the misc class included. None (and no names)
    means the whole label space, no subset.
    """
    total = len(base_names)
    if names:
        unknown = [n for n in names if n not in base_names]
        if unknown:
            close = sorted({c for n in unknown for c in get_close_matches(n, base_names, n=3)})
            raise RsnetError(f"dataset.classes: unknown class names {unknown[:5]}; "
                             f"known names start with {base_names[:5]}"
                             + (f"; close to these: {close[:10]}" if close else ""))
        chosen = [base_names.index(n) for n in names]
        twice = sorted({n for n in names if list(names).count(n) > 1})
        if twice:
            raise RsnetError(f"dataset.classes lists {', '.join(twice)} more than once")
        if num_classes is not None and num_classes != len(chosen) + int(misc):
            raise RsnetError(f"dataset.num_classes={num_classes} but dataset.classes names "
                             f"{len(chosen)} classes (+ misc={misc}); make them agree")
    elif num_classes is None:
        return None
    else:
        wanted = num_classes - int(misc)
        limit = total - 1 if misc else total
        if wanted < 1 or wanted > limit:
            raise RsnetError(
                f"dataset.num_classes={num_classes} is impossible for a dataset with {total} "
                f"classes{' and a misc class' if misc else ''}: use {1 + int(misc)}.."
                f"{limit + int(misc)}")
        g = torch.Generator().manual_seed(seed)
        chosen = sorted(torch.randperm(total, generator=g)[:wanted].tolist())
    if misc and len(chosen) >= total:
        raise RsnetError("dataset.misc=true needs at least one class outside dataset.classes")
    return ClassSubset(tuple(chosen), misc, total)


def hold_out_unseen(subset: ClassSubset, fraction: float, seed: int) -> ClassSubset:
    """The subset with a seeded share of its out-of-scope classes marked unseen.

    round(fraction x out-of-scope classes) classes are drawn; at least one out-of-scope class
    stays seen, so misc still has training images.
    """
    if not 0 <= fraction < 1:
        raise RsnetError(f"dataset.unseen_fraction={fraction} must be in [0, 1)")
    if fraction == 0:
        return subset
    if not subset.misc:
        raise RsnetError("dataset.unseen_fraction > 0 needs a misc class (dataset.misc=true): "
                         "unseen classes are judged by misc detection")
    chosen = set(subset.classes)
    others = [c for c in range(subset.num_base_classes) if c not in chosen]
    n = round(fraction * len(others))
    if n >= len(others):
        raise RsnetError(f"dataset.unseen_fraction={fraction} leaves no out-of-scope class for "
                         f"misc training ({len(others)} exist); lower it")
    g = torch.Generator().manual_seed(seed * 13 + 5)
    unseen = sorted(others[i] for i in torch.randperm(len(others), generator=g)[:n].tolist())
    return ClassSubset(subset.classes, subset.misc, subset.num_base_classes, tuple(unseen))


def split_train_val(labels: torch.Tensor, val_fraction: float, seed: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, seeded split of indices into (train, val); every class keeps its share."""
    if not 0 <= val_fraction < 1:
        raise RsnetError(f"dataset.val_fraction={val_fraction} must be in [0, 1)")
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = round(len(idx) * val_fraction)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def cap_per_class(labels: torch.Tensor, idx: torch.Tensor, limit: int | None, seed: int
                  ) -> torch.Tensor:
    """At most ``limit`` of ``idx`` per class of ``labels[idx]``, drawn seeded; sorted."""
    if limit is None:
        return idx
    if limit < 1:
        raise RsnetError(f"dataset.train_per_class={limit} must be a positive number of images")
    g = torch.Generator().manual_seed(seed)
    kept = []
    for c in labels[idx].unique().tolist():
        members = idx[labels[idx] == c]
        kept.append(members[torch.randperm(len(members), generator=g)[:limit]])
    return torch.cat(kept).sort().values


def subset_indices(labels: torch.Tensor, subset: ClassSubset, misc_multiplier: float,
                   seed: int, misc_all: bool = False) -> tuple[torch.Tensor, Counter]:
    """Indices of one split's subset: every in-scope image plus the sampled misc images.

    misc size = round(misc_multiplier x mean in-scope images per class), drawn without
    replacement from the out-of-scope images of seen classes only (or all of them with
    ``misc_all``); images of ``subset.unseen`` classes are never drawn. Returns the sorted indices and the misc composition {original label: count}.
    """
    in_scope = torch.isin(labels, torch.tensor(subset.classes))
    keep = in_scope.nonzero().flatten()
    composition: Counter = Counter()
    if subset.misc:
        seen_misc = ~in_scope & ~torch.isin(labels, torch.tensor(subset.unseen, dtype=torch.long))
        pool = seen_misc.nonzero().flatten()
        per_class = len(keep) / len(subset.classes)
        n_misc = len(pool) if misc_all else round(misc_multiplier * per_class)
        if n_misc > len(pool):
            raise RsnetError(
                f"dataset.misc_multiplier={misc_multiplier} asks for {n_misc} misc images but "
                f"only {len(pool)} out-of-scope images exist; lower it to at most "
                f"{len(pool) / per_class:.2f}")
        g = torch.Generator().manual_seed(seed)
        misc_idx = pool[torch.randperm(len(pool), generator=g)[:n_misc]]
        composition = Counter(labels[misc_idx].tolist())
        keep = torch.cat([keep, misc_idx])
    return keep.sort().values, composition
