import os
from pathlib import Path

import pytest
import torch

if "OMP_NUM_THREADS" not in os.environ:  # respect a caller that limits threads
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR_JPEG = SHARED / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Keep decode caches out of the user's home during tests."""
    monkeypatch.setenv("ABSLD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def digits():
    from absld_core.data import load_dataset
    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_digits_model(digits):
    """A small CNN trained naturally on the digits for a few epochs (about 97% clean accuracy)."""
    from absld_core.data import BatchIterator
    from absld_core.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", 10, in_channels=1, width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    it = BatchIterator(digits.train_x, digits.train_y, 64, shuffle=True, seed=0)
    model.train()
    for epoch in range(6):
        it.set_epoch(epoch)
        for xb, yb in it:
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model
