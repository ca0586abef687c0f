"""Datasets as uint8 tensors: one entry point, class-balanced splits, and an on-device batch iterator.

    ds = load_dataset("cifar10", root="~/data")         # official pickles (download=True when online)
    ds = load_dataset("imagefolder", root="../shared/data/cifar10-jpeg.tar.gz")
    ds = load_dataset("digits")                          # offline default, ships with scikit-learn
    train, val = ds.split_validation(per_class=100, seed=0)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .download import DOWNLOAD_HINT, OFFICIAL, DatasetError
from .loader import BatchIterator, augment_batch
from .sources import read_cifar, read_digits, read_imagefolder, read_svhn, read_synthetic

KNOWN = ("cifar10", "cifar100", "svhn", "imagefolder", "digits", "synthetic")
__all__ = ["load_dataset", "Dataset", "DatasetError", "BatchIterator", "augment_batch", "KNOWN",
           "balanced_indices", "OFFICIAL"]


@dataclass
class Dataset:
    """Train and test splits as uint8 N x C x H x W tensors with int64 labels."""
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def split_validation(self, per_class: int, seed: int = 0) -> "Dataset":
        """Hold `per_class` training images of every class out as a class-balanced validation split."""
        idx = balanced_indices(self.train_y, per_class, self.num_classes, seed, what="training split")
        keep = torch.ones(len(self.train_y), dtype=torch.bool)
        keep[idx] = False
        if not keep.any():
            raise DatasetError(f"validation split of {per_class} per class leaves no training images")
        return Dataset(self.name, self.train_x[keep], self.train_y[keep], self.test_x, self.test_y,
                       self.classes, self.train_x[idx], self.train_y[idx],
                       {**self.info, "val_per_class": per_class, "val_seed": seed})

    def test_subset(self, per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A class-balanced subset of the test set, `per_class` images of every class."""
        idx = balanced_indices(self.test_y, per_class, self.num_classes, seed, what="test split")
        return self.test_x[idx], self.test_y[idx]

    def train_subset(self, per_class: int, seed: int = 0) -> "Dataset":
        """Keep `per_class` training images of every class (for CPU-sized experiments)."""
        idx = balanced_indices(self.train_y, per_class, self.num_classes, seed, what="training split")
        return Dataset(self.name, self.train_x[idx], self.train_y[idx], self.test_x, self.test_y,
                       self.classes, self.val_x, self.val_y, {**self.info, "train_per_class": per_class})


def balanced_indices(y: torch.Tensor, per_class: int, num_classes: int, seed: int = 0,
                     what: str = "split") -> torch.Tensor:
    """Sorted indices of `per_class` random samples of each class; errors name a short class."""
    if not isinstance(per_class, int) or per_class < 1:
        raise DatasetError(f"per_class must be a positive integer, got {per_class!r}")
    counts = torch.bincount(y, minlength=num_classes)
    short = [c for c in range(num_classes) if counts[c] < per_class]
    if short:
        raise DatasetError(f"{what} has too few images for {per_class} per class: class(es) {short} have "
                           f"{[int(counts[c]) for c in short]}; the largest possible is {int(counts.min())}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    ys = y[order]
    # stable sort by label keeps the random order within each class; take the first per_class of each
    by_class = order[torch.sort(ys, stable=True).indices]
    starts = torch.cumsum(counts, 0) - counts
    pick = (starts[:, None] + torch.arange(per_class)[None]).reshape(-1)
    return torch.sort(by_class[pick]).values


def _validate(name, xtr, ytr, xte, yte, classes) -> None:
    c = len(classes)
    for part, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        if x.ndim != 4 or x.dtype != np.uint8:
            raise DatasetError(f"{name} {part} images must be uint8 N x C x H x W, got {x.dtype} {x.shape}")
        if len(x) != len(y):
            raise DatasetError(f"{name} {part}: {len(x)} images but {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= c):
            raise DatasetError(f"{name} {part} labels must lie in [0, {c - 1}] for {c} classes; found "
                               f"values from {int(y.min())} to {int(y.max())}")
        missing = sorted(set(range(c)) - set(np.unique(y).tolist()))
        if missing:
            raise DatasetError(f"{name} {part} split has no images of class(es) "
                               f"{[classes[m] for m in missing]}; every class must appear in both splits")


def load_dataset(name: str, root: str | os.PathLike | None = None, *, download: bool = False,
                 verify: bool = True, **opts) -> Dataset:
    """Load a dataset by name: cifar10, cifar100, svhn, imagefolder, digits or synthetic.

    root: folder of the official files (cifar10/cifar100/svhn) or the image folder/archive
    (imagefolder). download: fetch and checksum the official files when absent (online users).
    opts go to the reader (digits: test_fraction, seed; synthetic: num_classes, train_per_class,
    test_per_class, image_size, channels, seed; imagefolder: mode='RGB'|'L', cache).
    """
    key = str(name).lower()
    if key not in KNOWN:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN)}")
    if key in ("cifar10", "cifar100", "svhn", "imagefolder") and root is None:
        raise DatasetError(f"dataset {key!r} needs root=: the folder holding its files"
                           + (" (or an archive)" if key == "imagefolder" else
                              f"; or {DOWNLOAD_HINT}"))
    root_path = Path(root).expanduser() if root is not None else None
    try:
        if key in ("cifar10", "cifar100"):
            parts = read_cifar(key, root_path, download=download, verify=verify)
        elif key == "svhn":
            parts = read_svhn(root_path, download=download, verify=verify)
        elif key == "imagefolder":
            parts = read_imagefolder(root_path, **opts)
        elif key == "digits":
            parts = read_digits(**opts)
        else:
            parts = read_synthetic(**opts)
    except TypeError as e:
        raise DatasetError(f"invalid option for dataset {key!r}: {e}") from e
    _validate(key, *parts)
    xtr, ytr, xte, yte, classes = parts
    t = torch.from_numpy
    return Dataset(key, t(np.ascontiguousarray(xtr)), t(ytr), t(np.ascontiguousarray(xte)), t(yte),
                   list(classes), info={"root": str(root_path) if root_path else None, **opts})
