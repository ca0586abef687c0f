import pickle
import tarfile

import numpy as np
import pytest
import torch

from absld_core.data import BatchIterator, DatasetError, augment_batch, balanced_indices, load_dataset
from conftest import CIFAR_JPEG


def _write_cifar10(root, n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        data = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": data, "labels": [j % 10 for j in range(n_train)]}, f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                     "labels": [j % 10 for j in range(n_test)]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return d


def test_cifar10_pickles_load_with_non_official_warning(tmp_path):
    _write_cifar10(tmp_path)
    with pytest.warns(UserWarning, match="not byte-identical to the official"):
        ds = load_dataset("cifar10", root=tmp_path)
    assert ds.train_x.shape == (100, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (10, 3, 32, 32) and ds.test_y.dtype == torch.int64
    assert ds.classes == [f"c{i}" for i in range(10)]
    # pixel layout: first row of the pickle is the red plane of image 0
    raw = pickle.load(open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb"))
    assert torch.equal(ds.train_x[0, 0].reshape(-1), torch.from_numpy(raw["data"][0, :1024]))


def test_cifar100_pickles_load(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(1)
    for part, n in (("train", 200), ("test", 100)):
        with open(d / part, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": [j % 100 for j in range(n)]}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)]}, f)
    with pytest.warns(UserWarning):
        ds = load_dataset("cifar100", root=tmp_path)
    assert ds.num_classes == 100 and len(ds.train_y) == 200 and len(ds.test_y) == 100


def test_svhn_mat_loads_and_maps_label_10_to_0(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    for part, n in (("train", 30), ("test", 20)):
        X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([(j % 10) + 1 for j in range(n)], dtype=np.uint8)[:, None]  # labels 1..10
        savemat(tmp_path / f"{part}_32x32.mat", {"X": X, "y": y})
    with pytest.warns(UserWarning):
        ds = load_dataset("svhn", root=tmp_path)
    assert ds.train_x.shape == (30, 3, 32, 32)
    assert set(ds.train_y.tolist()) == set(range(10))
    assert ds.train_y[9] == 0  # the 10th image had label 10


def _write_imagefolder(root, classes=("cat", "dog", "emu"), n=3, size=8):
    from PIL import Image

    rng = np.random.default_rng(3)
    for part in ("train", "test"):
        for c in classes:
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / part / c / f"{i}.png")
    return root


def test_imagefolder_and_tarball_agree(tmp_path):
    folder = _write_imagefolder(tmp_path / "imgs")
    ds = load_dataset("imagefolder", root=folder)
    assert ds.classes == ["cat", "dog", "emu"] and ds.train_x.shape == (9, 3, 8, 8)
    tgz = tmp_path / "imgs.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname="imgs")
    ds2 = load_dataset("imagefolder", root=tgz)
    assert torch.equal(ds.train_x, ds2.train_x) and torch.equal(ds.test_y, ds2.test_y)
    ds3 = load_dataset("imagefolder", root=tgz)  # from the decode cache
    assert torch.equal(ds2.train_x, ds3.train_x)


def test_digits_and_synthetic():
    d = load_dataset("digits")
    assert d.train_x.shape[1:] == (1, 8, 8) and d.num_classes == 10
    assert len(d.train_y) + len(d.test_y) == 1797
    s1 = load_dataset("synthetic", num_classes=4, train_per_class=5, seed=3)
    s2 = load_dataset("synthetic", num_classes=4, train_per_class=5, seed=3)
    assert torch.equal(s1.train_x, s2.train_x) and s1.num_classes == 4


@pytest.mark.skipif(not CIFAR_JPEG.exists(), reason="../shared/data/cifar10-jpeg.tar.gz not present")
def test_cifar10_jpeg_copy():
    ds = load_dataset("imagefolder", root=CIFAR_JPEG)
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10


def test_validation_split_is_balanced_and_disjoint():
    ds = load_dataset("synthetic", num_classes=5, train_per_class=20, test_per_class=8)
    sp = ds.split_validation(per_class=4, seed=1)
    assert torch.bincount(sp.val_y).tolist() == [4] * 5
    assert len(sp.train_y) == 80
    merged = torch.cat([sp.train_x, sp.val_x]).reshape(100, -1)
    assert len(torch.unique(merged, dim=0)) == 100  # no image in both
    xs, ys = ds.test_subset(3)
    assert torch.bincount(ys).tolist() == [3] * 5


# ---------------------------------------------------------------- errors
def test_unknown_dataset_lists_known():
    with pytest.raises(DatasetError, match="known datasets: cifar10, cifar100, svhn, imagefolder, digits, synthetic"):
        load_dataset("mnist")


def test_missing_root_and_files(tmp_path):
    with pytest.raises(DatasetError, match="needs root="):
        load_dataset("cifar10")
    with pytest.raises(DatasetError, match=r"missing data_batch_1.*download=True"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DatasetError, match=r"missing train_32x32.mat"):
        load_dataset("svhn", root=tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("imagefolder", root=tmp_path / "nope")


def test_corrupted_archive_and_pickle(tmp_path):
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"\x1f\x8b this is not gzip data")
    with pytest.raises(DatasetError, match="corrupted"):
        load_dataset("imagefolder", root=bad)
    d = _write_cifar10(tmp_path / "c")
    (d / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="data_batch_3 is corrupted"):
        load_dataset("cifar10", root=tmp_path / "c", verify=False)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DatasetError, match="corrupted"):
        load_dataset("cifar10", root=tmp_path)


def test_labels_out_of_range(tmp_path):
    d = _write_cifar10(tmp_path)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((10, 3072), np.uint8), "labels": [12] + list(range(9))}, f)
    with pytest.raises(DatasetError, match=r"labels must lie in \[0, 9\].*12"):
        load_dataset("cifar10", root=tmp_path, verify=False)


def test_split_with_missing_class(tmp_path):
    folder = _write_imagefolder(tmp_path / "imgs")
    import shutil
    shutil.rmtree(folder / "test" / "emu")
    with pytest.raises(DatasetError, match=r"test split has no images of class\(es\) \['emu'\]"):
        load_dataset("imagefolder", root=folder)
    ds = load_dataset("synthetic", num_classes=3, train_per_class=4)
    with pytest.raises(DatasetError, match="too few images for 10 per class"):
        ds.split_validation(per_class=10)


# ---------------------------------------------------------------- batches and augmentation
def test_augment_is_a_shifted_crop_or_flip():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, pad=2, flip=True, generator=g)
    assert out.shape == x.shape
    for i in range(2):
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        cands = [padded[:, a:a + 6, b:b + 6] for a in range(5) for b in range(5)]
        cands += [c.flip(2) for c in cands]
        assert any(torch.equal(out[i], c) for c in cands)


def test_batch_iterator_deterministic_and_complete():
    ds = load_dataset("synthetic", num_classes=3, train_per_class=10)
    a = BatchIterator(ds.train_x, ds.train_y, 7, augment=True, seed=5)
    b = BatchIterator(ds.train_x, ds.train_y, 7, augment=True, seed=5)
    a.set_epoch(2); b.set_epoch(2)
    ba, bb = list(a), list(b)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(ba, bb))
    assert sum(len(y) for _, y in ba) == 30 and len(ba) == len(a) == 5
    assert all(((x >= 0) & (x <= 1)).all() for x, _ in ba)
    ys = torch.cat([y for _, y in BatchIterator(ds.train_x, ds.train_y, 7, shuffle=True, seed=1)])
    assert torch.equal(torch.sort(ys).values, torch.sort(ds.train_y).values)


def test_balanced_indices_errors():
    y = torch.tensor([0, 0, 1])
    with pytest.raises(DatasetError, match="positive integer"):
        balanced_indices(y, 0, 2)


def test_download_and_verify_with_a_local_url(tmp_path, monkeypatch):
    """The online path (fetch, checksum, extract) against a file:// URL; a wrong checksum is refused."""
    from absld_core.data import download

    src = tmp_path / "src"
    _write_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    spec = {**download.OFFICIAL["cifar10"], "url": archive.as_uri(), "archive_md5": download.md5_of(archive)}
    monkeypatch.setitem(download.OFFICIAL, "cifar10", spec)
    with pytest.warns(UserWarning, match="not byte-identical"):
        ds = load_dataset("cifar10", root=tmp_path / "dl", download=True)
    assert len(ds.train_y) == 100 and (tmp_path / "dl" / "cifar-10-python.tar.gz").is_file()
    monkeypatch.setitem(download.OFFICIAL, "cifar10", {**spec, "archive_md5": "0" * 32})
    with pytest.raises(DatasetError, match="has md5 .* expected 0000"):
        load_dataset("cifar10", root=tmp_path / "dl2", download=True)
    assert not list((tmp_path / "dl2").glob("*.part"))  # no half-written file left behind
