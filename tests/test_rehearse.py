"""The rehearsal: the paper and cifar10-cpu presets end to end on a CPU, and the cost report."""
import re

import pytest

from absld_core import rehearse as R
from absld_core.data import load_dataset


def test_cifar10_fixture_is_read_as_the_official_files(tmp_path):
    root = R.write_cifar10_fixture(tmp_path / "c10", train_per_class=3, test_per_class=2, source=None)
    names = {p.name for p in (root / "cifar-10-batches-py").iterdir()}
    assert names == {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"}
    with pytest.warns(UserWarning, match="not byte-identical to the official"):  # the real reader, checksums and all
        ds = load_dataset("cifar10", root)
    assert ds.train_x.shape == (30, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)
    assert ds.classes[0] == "airplane" and sorted(ds.train_y.bincount().tolist()) == [3] * 10


# Two students prove the rehearsal's plumbing (every notebook, the cost table, the fixtures); every method
# through every notebook is tests/test_study.py's. With all nine, the paper rehearsal took 1,027 s on a
# 2-core CPU with 64-channel ResNet-18s (711 s of it notebook 03's students), 268 s at 16 channels.
STUDENTS = "methods=pgd_at,absld"


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["paper", "cifar10-cpu"])
def test_rehearsal_runs_every_notebook_and_reports_the_cost(tmp_path, preset):
    lines = []
    assert R.rehearse(preset, [STUDENTS], out_root=tmp_path, log=lines.append) == 0, "\n".join(lines[-30:])
    text = "\n".join(lines)
    figs = tmp_path / "rehearse" / "figures" / preset
    for f in ("01_smoothness_temperature.png", "02_teacher.png", "04_heatmap.png", "04_class_bars.png",
              "explorer_schedule.png", "summary.md", "per_seed.csv"):
        assert (figs / f).is_file(), f
    assert "Cost of the real run" in text and "estimate_hours is an ESTIMATE" in text
    report = text[text.index("Cost of the real run"):text.index("rehearsal of")]
    teacher = [l for l in report.splitlines() if l.startswith("s0/teacher ")][0]
    student = [l for l in report.splitlines() if l.startswith("s0/student-absld ")][0]
    if preset == "paper":
        assert "wrn w10" in teacher and "resnet18" in student
        assert " 300 " in student and " 100 " in teacher  # the real epochs, not the rehearsal's
        summary = (figs / "summary.md").read_text()
        assert "## aa: mean over seeds" in summary  # standard AutoAttack ran in the rehearsal
    total = re.search(r"total: ([\d.]+) PFLOP", report)
    assert total and float(total.group(1)) > 0


def test_the_rehearsal_narrows_sizes_not_architectures_and_costs_the_real_ones():
    """paper: ResNet-18 students at 16 first-stage channels (1/16 of the FLOPs; the same layers) and the WRN-34
    teacher at widen factor 1; cifar10-cpu: small CNNs at 8 channels; the cost table keeps the real sizes."""
    from absld_core import plan, study

    assert R._narrow_widths(study.load_preset("paper", [])) == ["channels=16", "02_teacher.teacher_width=1"]
    assert R._narrow_widths(study.load_preset("cifar10-cpu", [])) == ["width=8", "02_teacher.teacher_width=8"]
    assert R._narrow_widths(study.load_preset("gpu-check", [])) == ["channels=16", "02_teacher.teacher_channels=16"]
    # an external teacher keeps its own size; a size already at or under the rehearsal's is kept
    assert R._narrow_widths(study.load_preset("paper", ["teacher_checkpoint=t.pt", "channels=8"])) == []
    shrunk = {j.key: j.config["model"] for j in plan.study_plan("gpu-check", R._narrow_widths(study.load_preset("gpu-check", [])))}
    assert shrunk["s0/student-absld"]["channels"] == 16 and shrunk["s0/teacher"]["channels"] == 16
    assert {j.config["model"]["channels"] for j in plan.study_plan("paper", [])} == {None}  # the cost table's: 64


@pytest.mark.parametrize("method", ["pgd_at", "trades", "frl", "cfa"])
def test_a_counted_step_is_per_image_and_leaves_the_per_epoch_work_out(method):
    """The cost table counts one training step as an epoch of one batch less an epoch of none: FLOPs per
    image do not depend on the probe's batch (FRL and CFA validate every epoch: that work cancels)."""
    cfg = {"name": "p", "out_dir": "unused", "progress": False,
           "data": {"dataset": "synthetic", "val_per_class": 2, "options": {"num_classes": 4}},
           "model": {"arch": "small_cnn", "width": 8}, "attack": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 3},
           "method": {"name": method}, "optim": {"epochs": 1, "batch_size": 2}}
    two, four = (R.step_cost(cfg, None, 4, (3, 16, 16), probe=p) for p in (2, 4))
    assert two["flops_per_image"] > 0 and two["flops_per_image"] == pytest.approx(four["flops_per_image"], rel=1e-6)
    assert two["saved_bytes_per_image"] > four["saved_bytes_per_image"] > 0  # the saved weights spread over more images
