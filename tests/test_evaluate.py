import numpy as np
import pytest
import torch

from absld_core.evaluate import evaluate, load_table, parse_attack, save_table


def test_table_shape_invariants_and_roundtrip(trained_digits_model, digits, tmp_path):
    x, y = digits.test_x[:200], digits.test_y[:200]
    df = evaluate(trained_digits_model, x, y, ["clean", "fgsm", "pgd10", "cw10", "aa:apgd-ce"],
                  classes=digits.classes, eps=0.08, pgd_alpha=0.01, aa_opts={"n_iter": 5}, progress=False)
    assert list(df.index) == ["clean", "fgsm", "pgd10", "cw10", "aa:apgd-ce"]
    cls = df[digits.classes].to_numpy(float)
    counts = torch.bincount(y, minlength=10).numpy()
    # class-wise hits sum back to the overall accuracy: the class table accounts for every sample
    assert np.allclose((cls / 100 * counts).sum(1) / counts.sum() * 100, df["avg"].to_numpy(float))
    assert np.allclose(df["worst"], cls.min(1))
    assert np.allclose(df["nsd"], cls.std(1) / cls.mean(1))
    assert all(df.loc[a, "avg"] <= df.loc["clean", "avg"] for a in df.index)
    assert (cls[1:] <= cls[0] + 1e-9).all()  # robust <= clean in every class
    assert df.loc["pgd10", "avg"] < df.loc["clean", "avg"]
    assert df.loc["clean", "worst_class"] == digits.classes[int(cls[0].argmin())]
    for ext in ("json", "csv"):
        back = load_table(save_table(df, tmp_path / f"t.{ext}"))
        assert np.allclose(back[digits.classes].to_numpy(float), cls)
        assert list(back["worst_class"]) == list(df["worst_class"])


def test_parse_attack_and_errors(trained_digits_model, digits):
    assert parse_attack("pgd20").steps == 20 and parse_attack("cw").steps == 30
    assert parse_attack("aa:apgd-ce+square").aa_attacks == ("apgd-ce", "square")
    with pytest.raises(ValueError, match="unknown attack 'pgdx'"):
        parse_attack("pgdx")
    with pytest.raises(ValueError, match="unknown AutoAttack part"):
        parse_attack("aa:foo")
    with pytest.raises(ValueError, match="labels must lie"):
        evaluate(trained_digits_model, digits.test_x[:4], torch.tensor([0, 1, 2, 12]), ["clean"],
                 classes=digits.classes, progress=False)
