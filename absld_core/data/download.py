"""Official sources, checksums and the download-and-verify step for users who are online."""
from __future__ import annotations

import hashlib
import lzma
import tarfile
import zlib
import urllib.request
from pathlib import Path

from ..atomic import atomic_write


# how to ask for the official files, in each place one can ask
DOWNLOAD_HINT = ("fetch the official release with download=True (absld eval: --download; a training config: "
                 "data.options.download: true)")


class DatasetError(ValueError):
    """A dataset could not be found, read or used; the message says what and how to fix it."""


OFFICIAL = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "archive_md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
        "files": {
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "archive_md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
        "files": {
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
    },
    "svhn": {
        "urls": {
            "train_32x32.mat": "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
            "test_32x32.mat": "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
        },
        "folder": "svhn",
        "files": {
            "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
            "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
        },
    },
}


def md5_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path, md5: str) -> None:
    """Download to a temporary file, verify the checksum, then move into place."""
    def download(f):
        h = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                for block in iter(lambda: r.read(1 << 20), b""):
                    h.update(block)
                    f.write(block)
        except OSError as e:
            raise DatasetError(f"could not download {url} ({e}); without a network, copy the file to "
                               f"{dest} by hand") from e
        if h.hexdigest() != md5:
            raise DatasetError(f"download of {url} has md5 {h.hexdigest()}, expected {md5}: the file is "
                               f"corrupted or not the official release; try again")

    atomic_write(dest, download, suffix=".part")


def _safe_extract(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise DatasetError(f"archive {archive} is corrupted ({type(e).__name__}: {e}); delete it and download "
                           f"again") from e


def ensure_files(name: str, root: Path, download: bool) -> Path:
    """Return the folder that holds the official files of `name` under `root`, downloading if asked.

    Accepted layouts: root/<official folder>/<files>, root/<files>, or the official .tar.gz in root
    (it is extracted next to itself).
    """
    spec = OFFICIAL[name]
    root = Path(root)
    candidates = [root / spec["folder"], root]
    for folder in candidates:
        if all((folder / f).is_file() for f in spec["files"]):
            return folder
    if "url" in spec:  # CIFAR: one archive holding all files
        archive = root / Path(spec["url"]).name
        if not archive.is_file() and download:
            _fetch(spec["url"], archive, spec["archive_md5"])
        if archive.is_file():
            _safe_extract(archive, root)
            folder = root / spec["folder"]
            if all((folder / f).is_file() for f in spec["files"]):
                return folder
            raise DatasetError(f"archive {archive} does not contain {spec['folder']}/ with "
                               f"{', '.join(spec['files'])}; it is not the official {name} archive")
        how = f"{DOWNLOAD_HINT}, or download {spec['url']} into {root}"
    else:  # SVHN: one file per split
        if download:
            folder = root / spec["folder"]
            for fname, url in spec["urls"].items():
                if not (folder / fname).is_file():
                    _fetch(url, folder / fname, spec["files"][fname])
            return folder
        how = f"{DOWNLOAD_HINT}, or download " + " and ".join(spec["urls"].values()) + f" into {root}"
    missing = [f for f in spec["files"] if not (candidates[0] / f).is_file()]
    raise DatasetError(f"{name}: missing {', '.join(missing)} under {candidates[0]} (or {root}); {how}")
