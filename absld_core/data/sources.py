"""Readers for every dataset the project knows, each returning uint8 N x C x H x W arrays.

No torchvision: CIFAR pickles, SVHN .mat files and image folders (plain or tar archives) are read
here directly. Every reader raises DatasetError with the file that was missing or broken and how
to obtain it.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import warnings
import lzma
import zlib
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .download import OFFICIAL, DatasetError, ensure_files, md5_of

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _check_official(path: Path, expected_md5: str | None, what: str) -> None:
    """Accept a local copy that differs from the official release, but say so."""
    if expected_md5 is None:
        return
    got = md5_of(path)
    if got != expected_md5:
        warnings.warn(
            f"{path} is not byte-identical to the official {what} (md5 {got}, official "
            f"{expected_md5}); using it anyway. Results on it may differ from published numbers.",
            stacklevel=4,  # the line in load_dataset that called the reader
        )


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100 (python pickles)
# The only globals the official CIFAR batches (and numpy arrays pickled by numpy 1.x or 2.x) refer to.
# A pickle may name any callable, which then runs while it loads: everything else is refused.
_CIFAR_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Admits dicts, lists, strings, bytes, numbers and numpy arrays with their dtypes; nothing else."""

    def find_class(self, module, name):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR batch holds (a CIFAR "
                                     f"batch is a dict of numpy arrays, lists and strings); it was not loaded, "
                                     f"since a pickle can run code")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DatasetError(f"{path} is corrupted or not a CIFAR python pickle ({e}); "
                           f"delete it and download the official archive again") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch (a dict)")
    return obj


def _pixels_u8(a, where: str) -> np.ndarray:
    """Pixel values as stored in the official files: uint8. Another dtype is refused (a cast would turn
    floats in [0, 1] into black images and wrap values above 255), naming the dtype and range found."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        rng = f"{a.min()}..{a.max()}" if a.size and np.issubdtype(a.dtype, np.number) else "n/a"
        raise DatasetError(f"{where}: pixel values are {a.dtype} (range {rng}); the official files hold uint8 "
                           f"0..255: convert them (np.uint8, scaled to 0..255) or download the official archive")
    return a


def _cifar_arrays(batches: list[dict], label_key: str, names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, b in enumerate(batches):
        where = f"CIFAR batch {names[i] if names else i}"
        if not isinstance(b, dict) or "data" not in b or label_key not in b:
            raise DatasetError(f"{where} has no 'data' and {label_key!r} entries: not an official CIFAR batch")
        a = _pixels_u8(b["data"], f"{where} 'data'")
        if a.ndim != 2 or a.shape[1] != 3 * 32 * 32:
            raise DatasetError(f"{where}: 'data' has shape {a.shape}; the official batches hold N x 3072 "
                               f"(3 x 32 x 32 pixels per row)")
        labels = np.asarray(b[label_key])
        if labels.shape != (len(a),):
            raise DatasetError(f"{where}: {len(a)} images but {labels.shape} labels")
        xs.append(a.reshape(-1, 3, 32, 32))
        ys.append(labels.astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _official_folder(name: str, root: Path, download: bool, verify: bool, what: str) -> Path:
    """The folder of the official files (downloaded if asked), each compared with the release."""
    folder = ensure_files(name, root, download)
    if verify:
        for fname, md5 in OFFICIAL[name]["files"].items():
            _check_official(folder / fname, md5, f"{what} file {fname}")
    return folder


def read_cifar(name: str, root: Path, download: bool = False, verify: bool = True):
    folder = _official_folder(name, root, download, verify, name)
    if name == "cifar10":
        train_files, test_files = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        classes = _unpickle(folder / "batches.meta")["label_names"]
        key = "labels"
    else:
        train_files, test_files = ["train"], ["test"]
        classes = _unpickle(folder / "meta")["fine_label_names"]
        key = "fine_labels"
    train = [_unpickle(folder / f) for f in train_files]
    test = [_unpickle(folder / f) for f in test_files]
    for part, batch in (("train", train), ("test", test)):
        for b in batch:
            if "data" not in b or key not in b:
                raise DatasetError(f"{name} {part} pickle in {folder} lacks 'data' or '{key}': "
                                   f"not an official {name} python batch")
    xtr, ytr = _cifar_arrays(train, key, [str(folder / f) for f in train_files])
    xte, yte = _cifar_arrays(test, key, [str(folder / f) for f in test_files])
    return xtr, ytr, xte, yte, list(classes)


# ---------------------------------------------------------------- SVHN (.mat, cropped digits)
def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        m = loadmat(path)
    except Exception as e:  # scipy raises several types for broken files
        raise DatasetError(f"{path} is corrupted or not an SVHN .mat file ({e})") from e
    if "X" not in m or "y" not in m:
        raise DatasetError(f"{path} has no 'X'/'y' arrays: not an official SVHN cropped-digits file")
    X = _pixels_u8(m["X"], f"{path} 'X'")
    if X.ndim != 4 or X.shape[2] != 3:
        raise DatasetError(f"{path}: 'X' has shape {X.shape}; the official SVHN files hold 32 x 32 x 3 x N")
    x = np.ascontiguousarray(np.transpose(X, (3, 2, 0, 1)))
    y = m["y"].astype(np.int64).reshape(-1)
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    return x, y


def read_svhn(root: Path, download: bool = False, verify: bool = True):
    folder = _official_folder("svhn", root, download, verify, "SVHN")
    xtr, ytr = _read_svhn_mat(folder / "train_32x32.mat")
    xte, yte = _read_svhn_mat(folder / "test_32x32.mat")
    return xtr, ytr, xte, yte, [str(i) for i in range(10)]


# ---------------------------------------------------------------- image folders and their archives
def _decode(data: bytes, origin: str, mode: str | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert(mode or ("RGB" if im.mode not in ("L", "1") else "L"))
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:
        raise DatasetError(f"cannot decode image {origin} ({e})") from e
    return arr[None] if arr.ndim == 2 else np.transpose(arr, (2, 0, 1))


def _iter_folder(root: Path):
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            yield p.relative_to(root).as_posix(), p.read_bytes()


def _iter_tar(path: Path):
    try:
        with tarfile.open(path, "r:*") as tar:
            all_members = tar.getmembers()
            _check_tar_end(tar, path)
            members = sorted((m for m in all_members
                              if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES),
                             key=lambda m: m.name)
            for m in members:
                data = tar.extractfile(m).read()
                if len(data) != m.size:
                    raise DatasetError(f"archive {path} is truncated: {m.name} has {len(data)} of its "
                                       f"{m.size} bytes; copy or download the archive again")
                yield m.name, data
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise DatasetError(f"archive {path} is corrupted or not a tar archive ({type(e).__name__}: {e}); "
                           f"copy or download it again") from e


def _check_tar_end(tar: tarfile.TarFile, path: Path) -> None:
    """tarfile stops quietly at a header cut off by truncation, so a short archive would lose its last
    images without a word. A whole archive has the end-of-archive marker (zero blocks) right after
    its last member: anything else is a truncated file."""
    tar.fileobj.seek(tar.offset)
    tail = tar.fileobj.read(tarfile.BLOCKSIZE)
    if len(tail) < tarfile.BLOCKSIZE or tail.count(0) != tarfile.BLOCKSIZE:
        last = tar.members[-1].name if tar.members else "(none)"
        raise DatasetError(f"archive {path} is truncated or corrupted: it ends without the tar end-of-archive marker after "
                           f"{len(tar.members)} members (the last one read: {last}); copy or download it again")


def _split_parts(rel: str) -> tuple[str, str] | None:
    """'<prefix>/train/<class>/file.jpg' -> ('train', '<class>'), or None when not in the layout."""
    parts = rel.split("/")
    for i, p in enumerate(parts[:-2]):
        if p in ("train", "test", "val") and i + 2 == len(parts) - 1:
            return ("test" if p == "val" else p), parts[i + 1]
    return None


def _cache_path(source: Path, mode: str | None) -> Path:
    st = source.stat()
    key = hashlib.sha1(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{mode}".encode()).hexdigest()[:16]
    base = Path(os.environ.get("ABSLD_CACHE", Path.home() / ".cache" / "absld"))
    return base / f"imagefolder-{source.name}-{key}.npz"


def read_imagefolder(root: Path, mode: str | None = None, cache: bool = True):
    """A folder or .tar/.tar.gz laid out as train/<class>/*, test/<class>/* (val/ counts as test)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"image folder or archive {root} does not exist; expected a directory or "
                           f".tar/.tar.gz with train/<class>/* and test/<class>/* inside")
    cache_file = _cache_path(root, mode) if cache and root.is_file() else None
    if cache_file is not None and cache_file.exists():
        with np.load(cache_file, allow_pickle=False) as z:
            return (z["train_x"], z["train_y"], z["test_x"], z["test_y"], [str(c) for c in z["classes"]])
    items = _iter_folder(root) if root.is_dir() else _iter_tar(root)
    found: dict[str, list[tuple[str, np.ndarray]]] = {"train": [], "test": []}
    for rel, data in items:
        where = _split_parts(rel)
        if where is not None:
            found[where[0]].append((where[1], _decode(data, f"{root}:{rel}", mode)))
    for part in ("train", "test"):
        if not found[part]:
            raise DatasetError(f"{root} holds no images under {part}/<class>/; expected the layout "
                               f"train/<class>/*.jpg and test/<class>/*.jpg")
    classes = sorted({c for part in found.values() for c, _ in part})
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for part in ("train", "test"):
        shapes = {a.shape for _, a in found[part]}
        if len(shapes) != 1:
            channels, sizes = {sh[0] for sh in shapes}, {sh[1:] for sh in shapes}
            if len(channels) > 1:
                what = (f"mix channel counts {sorted(channels)} (gray, RGB, RGBA): give "
                        f"data.options.mode=RGB (or L) to convert every image")
                if len(sizes) > 1:
                    what += f", and differ in size {sorted(sizes)[:3]}: resize them to one size"
            else:
                what = f"differ in size ({sorted(sizes)[:3]}...): resize them to one size first"
            raise DatasetError(f"images in {root}/{part} {what}")
        out.append(np.stack([a for _, a in found[part]]))
        out.append(np.array([index[c] for c, _ in found[part]], dtype=np.int64))
    result = (out[0], out[1], out[2], out[3], classes)
    if cache_file is not None:
        _write_cache(cache_file, result)
    return result


def _write_cache(path: Path, result) -> None:
    try:
        atomic_write(path, lambda f: np.savez(f, train_x=result[0], train_y=result[1], test_x=result[2],
                                              test_y=result[3], classes=np.array(result[4])))
    except OSError as e:  # a read-only cache is not fatal, only slower next time
        warnings.warn(f"could not write the decode cache {path} ({e})", stacklevel=2)


# ---------------------------------------------------------------- offline and synthetic data
def read_digits(test_fraction: float = 0.25, seed: int = 0, folds: int | None = None, fold: int = 0):
    """scikit-learn's 1,797 8x8 handwritten digits, scaled to uint8, split class-balanced.

    folds=k: a class-stratified k-fold split instead (one permutation per class from `seed`); fold i
    is the test split. Over folds 0..k-1 every image is a test image exactly once."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise ValueError(f"folds must be an integer >= 2 (or None for test_fraction), got {folds!r}")
    if folds is not None and (isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds):
        raise ValueError(f"fold must be an integer in [0, {folds - 1}] for {folds} folds, got {fold!r}")
    if folds is None and not 0 < float(test_fraction) < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        if folds is None:
            test_mask[idx[: int(round(len(idx) * test_fraction))]] = True
        else:
            test_mask[np.array_split(idx, folds)[fold]] = True
    return x[~test_mask], y[~test_mask], x[test_mask], y[test_mask], [str(i) for i in range(10)]


def read_synthetic(num_classes: int = 10, train_per_class: int = 64, test_per_class: int = 32,
                   image_size: int = 16, channels: int = 3, seed: int = 0, noise: float = 40.0,
                   class_noise: list | None = None):
    """Seeded, learnable toy images: each class is a fixed random template plus Gaussian noise
    (std `noise`, or class_noise[c] for class c, which makes chosen classes harder)."""
    for name, v, lo in (("num_classes", num_classes, 2), ("train_per_class", train_per_class, 1),
                        ("test_per_class", test_per_class, 1), ("image_size", image_size, 1),
                        ("channels", channels, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise DatasetError(f"data.options.{name}={v!r} is invalid: an integer >= {lo}")
    rng = np.random.default_rng(seed)
    templates = rng.uniform(40, 215, size=(num_classes, channels, image_size, image_size))

    std = np.full(num_classes, float(noise)) if class_noise is None else np.asarray(class_noise, dtype=float)
    if std.shape != (num_classes,) or (std < 0).any():
        raise ValueError(f"class_noise needs {num_classes} non-negative values, got {class_noise}")

    def make(per_class):
        y = np.repeat(np.arange(num_classes), per_class)
        x = templates[y] + rng.normal(0, 1, size=(len(y), channels, image_size, image_size)) * std[y, None, None, None]
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), y.astype(np.int64)

    xtr, ytr = make(train_per_class)
    xte, yte = make(test_per_class)
    return xtr, ytr, xte, yte, [f"class{i}" for i in range(num_classes)]
