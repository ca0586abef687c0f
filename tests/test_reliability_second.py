"""Reliability, second pass (part): inputs that used to be read silently as something else are refused
with one line naming the field, the value and what is allowed."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from absld_core import attacks as A
from absld_core.config import ConfigError, TrainConfig
from absld_core.data.download import DatasetError
from absld_core.data import sources


@pytest.mark.parametrize("over, field", [
    ({"data": {"augment": "false"}}, "data.augment"),
    ({"compile": "maybe"}, "compile"),
    ({"progress": "no"}, "progress"),
    ({"resume": "no"}, "resume"),
    ({"eval_every_epoch_after_decay": 2}, "eval_every_epoch_after_decay"),
    ({"method": {"name": "cfa", "fawa": "no"}}, "method.fawa"),
    ({"method": {"name": "frl", "release_bn_passes": 1}}, "method.release_bn_passes"),
])
def test_a_boolean_is_true_or_false_or_refused(over, field):
    with pytest.raises(ConfigError, match=rf"^{field}=.* is invalid: must be true or false"):
        TrainConfig.from_dict(over)


@pytest.mark.parametrize("which", ["fair-best", "worst", "best_fair"])
def test_the_teachers_checkpoint_name_is_checked(which):
    cfg = {"method": {"name": "absld", "teacher": {"checkpoint": "runs/t", "which": which}}}
    with pytest.raises(ConfigError, match=r"method\.teacher\.which=.* is invalid: one of fair_best, best, last, averaged"):
        TrainConfig.from_dict(cfg)
    with pytest.raises(ConfigError, match=r"method\.teacher\.width=-4 is invalid"):
        TrainConfig.from_dict({"method": {"name": "absld", "teacher": {"checkpoint": "runs/t", "width": -4}}})


@pytest.mark.parametrize("over, field", [
    ({"method": "absld"}, "method"), ({"data": "digits"}, "data"), ({"attack": 0.03}, "attack"),
    ({"method": {"name": "absld", "teacher": "runs/run"}}, "method.teacher"), ({"data": {"options": [1, 2]}}, "data.options"),
])
def test_a_value_where_a_section_belongs_is_one_line(over, field):
    with pytest.raises(ConfigError, match=rf"^{field}=.* is invalid: it is a section"):
        TrainConfig.from_dict(over)


def test_cifar_and_svhn_pixels_that_are_not_uint8_are_refused_with_dtype_and_range():
    floats = {"data": np.random.default_rng(0).random((2, 3072)).astype(np.float32), "labels": [0, 1]}
    with pytest.raises(DatasetError, match=r"float32 \(range 0\.0.*\.\.0\.9.*official files hold uint8"):
        sources._cifar_arrays([floats], "labels")
    wide = {"data": np.full((1, 3072), 300, dtype=np.int16), "labels": [0]}
    with pytest.raises(DatasetError, match=r"int16 \(range 300\.\.300\)"):
        sources._cifar_arrays([wide], "labels")
    ok = {"data": np.zeros((1, 3072), dtype=np.uint8), "labels": [3]}
    x, y = sources._cifar_arrays([ok], "labels")
    assert x.shape == (1, 3, 32, 32) and y.tolist() == [3]


@pytest.mark.parametrize("tflops", ["-5", "nan", "0"])
def test_the_rehearsals_tflops_must_be_a_positive_number(tflops):
    r = subprocess.run([sys.executable, "-m", "absld_core.cli", "study", "--preset", "smoke", "--rehearse",
                        "--tflops", tflops], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--tflops" in lines[0] and "positive number" in lines[0], r.stderr


def test_pgd_kl_refuses_negative_probabilities_and_a_nan_radius():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(4, 3, 2, 2)
    bad = torch.tensor([[1.2, -0.2, 0.0]] * 4)
    with pytest.raises(ValueError, match="target_probs must be probabilities"):
        A.pgd_kl(model, x, bad, 0.03, 0.01, 2)
    eps = torch.full((4, 1, 1, 1), 0.03)
    eps[1] = float("nan")
    with pytest.raises(ValueError, match=r"per-sample eps must lie in \(0, 1\].*NaN"):
        A.pgd_kl(model, x, torch.full((4, 3), 1 / 3), eps, 0.01, 2)
    out = A.pgd_kl(model, x, torch.full((4, 3), 1 / 3), torch.full((4, 1, 1, 1), 0.03), 0.01, 2)
    assert torch.isfinite(out).all()
