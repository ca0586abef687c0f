import numpy as np
import pytest
import torch

from absld_core import train
from absld_core.replay import ReplaySettings, effective, replay, risks_from_history, soft_labels
from absld_core.runs import RunDir
from train_helpers import tiny


def test_replay_with_the_runs_settings_reproduces_its_temperatures(tmp_path):
    t = train(tiny("t", "natural", tmp_path, optim__epochs=2))
    run = train(tiny("a", "absld", tmp_path, optim__epochs=3, optim__schedule="milestones", optim__milestones=[2],
                     method={"name": "absld", "teacher": {"checkpoint": str(t)}, "eta": 0.4, "tau_min": 0.8}))
    hist = RunDir(run).history()
    ra, rn = risks_from_history(hist)
    ta, tn = replay(ra, rn, ReplaySettings(eta=0.4, tau_min=0.8, decay_epochs=(2,)))
    assert np.allclose(ta[1:], [h["tau_adv"] for h in hist], atol=1e-6)
    assert np.allclose(tn[1:], [h["tau_nat"] for h in hist], atol=1e-6)
    assert np.allclose(ta[0], 1.0)
    other, _ = replay(ra, rn, ReplaySettings(eta=0.9, tau_min=0.8, decay_epochs=(2,)))
    assert not np.allclose(other, ta)


def test_effective_and_soft_labels():
    ta, tn = np.array([[1.0, 2.0]]), np.array([[3.0, 0.5]])
    a, n = effective(ta, tn, coupled=True)
    assert np.allclose(a, [[3.0, 1.0]]) and np.allclose(a, n)
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    sharp = soft_labels(z, torch.tensor([0, 1]), [0.5, 0.5])
    smooth = soft_labels(z, torch.tensor([0, 1]), [4.0, 4.0])
    assert sharp[0, 0] > smooth[0, 0] > 0.5 and np.allclose(sharp.sum(1), 1)
    with pytest.raises(ValueError, match="tau_min < tau_max"):
        ReplaySettings(tau_min=2, tau_max=1)
