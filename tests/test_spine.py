"""One source of truth from preset to run to notebook: a notebook opened on a finished study takes its
preset's values, reuses every run, evaluates again when only the evaluation changed, refuses to
retrain without `retrain`, and leaves finished runs alone when interrupted; parameter cells agree with
the declarations; a method's own study knob reaches it through the sweep and the notebook alike."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from absld_core import params, presets, study
from absld_core.study import ROOT, run_study

# the tiny study of test_study as a preset file: what a user's own preset looks like
TINY_PRESET = {
    "description": "a tiny study for the tests",
    "parameters": {"dataset": "digits", "train_per_class": 25, "val_per_class": 5, "test_per_class": 6, "epochs": 2,
                   "steps": 2, "width": 4, "batch_size": 32, "pad": 1, "eps_255": 16, "alpha_255": 4,
                   "eval_alpha_255": 4, "lr": 0.05, "test_attacks": "clean,fgsm,pgd20,cw5", "seeds": [0, 1],
                   "methods": "pgd_at,trades,rslad,absld,ham,absld_ham"},
    "per_notebook": {"01_smoothness_vs_fairness": {"reference_epochs": 1},
                     "02_teacher": {"teacher_epochs": 2, "teacher_width": 8},
                     "03_students": {"ham_early_steps": 1},
                     "05_temperature_explorer": {"finetune_epochs": 1}},
}


def write_preset(folder: Path, name: str = "tiny", notebooks=None, **over) -> Path:
    import yaml

    spec = json.loads(json.dumps(TINY_PRESET))
    for k, v in over.items():
        spec["parameters"][k] = v
    if notebooks:
        spec["notebooks"] = list(notebooks)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_records(root: Path) -> dict[str, str]:
    """Every record file of every run under root (config, history, checkpoints, metrics, per-image
    results, status), by path, with its content hash: a trained, retrained or deleted run changes it."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name in ("config.json", "history.jsonl", "last.pt", "best.pt", "fair_best.pt",
                                      "metrics.json", "per_image.npz", "status.json"):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("spine")
    preset = write_preset(out)
    assert run_study(str(preset), out_root=out, log=lambda *_: None) == 0
    return out, preset


@pytest.fixture
def study_copy(tiny_study, tmp_path):
    out, preset = tiny_study
    dst = tmp_path / "study"
    shutil.copytree(out, dst, symlinks=True)
    return dst, dst / preset.name


def _papermill(nb: str, out: Path, parameters: dict, dst: Path | None = None, src: Path | None = None):
    import papermill as pm

    return pm.execute_notebook(str(src or ROOT / "notebooks" / f"{nb}.ipynb"), str(dst or out / f"{nb}.out.ipynb"),
                               kernel_name="absld", parameters=parameters, cwd=str(out), progress_bar=False,
                               execution_timeout=600)


def _text(nb) -> str:
    return "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
                   for c in nb["cells"] for o in c.get("outputs", []))


# ------------------------------------------------------------------------------------ declarations
def test_parameter_cells_are_the_declarations_with_the_default_presets_values():
    """Written by `python -m absld_core.presets`; a parameter added to params.py (or a method's
    STUDY_PARAMS) and not to the cells, or a preset default changed, fails here."""
    want = presets.expected_cells()
    for nb in params.NOTEBOOKS:
        book = nbformat.read(ROOT / "notebooks" / f"{nb}.ipynb", as_version=4)
        cell = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
        assert cell.source == want[nb], f"{nb}: run python -m absld_core.presets"
        for line in cell.source.splitlines():  # every parameter has its comment
            assert "  # " in line and line.split("  # ", 1)[1].strip(), line
    smoke = presets.resolve_parameters(presets.load_preset("smoke"))
    assert smoke["03_students"]["test_attacks"] == "clean,fgsm,pgd20,cw30,aa:apgd-ce+apgd-t"
    assert "test_attacks = 'clean,fgsm,pgd20,cw30,aa:apgd-ce+apgd-t'" in want["03_students"]
    assert "retrain = False" in want["03_students"] and "eta = 0.1" in want["05_temperature_explorer"]


def test_every_declared_parameter_reaches_a_notebook_and_no_name_is_declared_twice():
    declared = params.declared()
    names = [p.name for p in params.CORE]
    assert len(names) == len(set(names))
    for name, p in declared.items():
        assert p.notebooks and set(p.notebooks) <= set(params.NOTEBOOKS), name
    # a method's knobs are declared on its options and reach notebook 03
    assert {"eta", "ham_start_fraction", "ham_early_steps", "trades_beta"} <= {p.name for p in params.for_notebook("03_students")}
    assert params.method_options("absld_ham", {"epochs": 10, "eta": 0.2}) == {
        "ham_start_epoch": 4, "ham_early_steps": 2, "eta": 0.2}


@pytest.mark.slow
def test_a_notebook_opened_by_hand_takes_the_preset_it_names(tmp_path, monkeypatch):
    """The cell's values are the default preset's; naming another preset takes all of that preset's
    values, and a value changed in the cell wins over the preset."""
    monkeypatch.chdir(tmp_path)
    cell = presets.resolve_parameters(presets.load_preset("smoke"))["03_students"]
    ns = dict(cell, preset="digits-paper")
    P = study.notebook_setup(ns, "03_students", log=lambda *_: None)
    assert P["epochs"] == 300 and ns["epochs"] == 300 and ns["run_root"] == "runs/digits-paper"
    assert ns["ham_paper_schedule"] is True and P.changes == {}
    ns = dict(cell, preset="digits-paper", epochs=7)
    P = study.notebook_setup(ns, "03_students", log=lambda *_: None)
    assert P["epochs"] == 7 and P.changes == {"epochs": 7} and P["seeds"] == [0, 1, 2, 3, 4]
    # another notebook of the same study sees the same change, under its own parameters
    assert P.of("02_teacher")["epochs"] == 7 and P.of("02_teacher")["teacher_epochs"] == 100


# ------------------------------------------------------------------------------------ notebooks on a study
@pytest.mark.slow
def test_executed_copy_of_04_reruns_from_where_papermill_wrote_it(study_copy, tmp_path):
    out, _ = study_copy
    before = run_records(out / "runs")
    copy_dir = out / "runs" / "tiny" / "notebooks"
    (out / "figures" / "tiny" / "per_seed.csv").unlink()
    _papermill("04_class_wise_robustness", copy_dir, {}, dst=tmp_path / "again.ipynb",
               src=copy_dir / "04_class_wise_robustness.ipynb")
    assert (out / "figures" / "tiny" / "per_seed.csv").is_file()
    assert not (copy_dir / "runs").exists() and not (copy_dir / "figures").exists()
    assert run_records(out / "runs") == before


@pytest.mark.slow
def test_changing_test_attacks_in_a_notebook_reevaluates_without_training(study_copy):
    out, preset = study_copy
    before = run_records(out / "runs")
    nb = _papermill("02_teacher", out, {"preset": str(preset), "test_attacks": "clean,pgd10"})
    after = run_records(out / "runs")
    for seed in (0, 1):
        t = f"tiny/s{seed}/teacher"
        for f in ("history.jsonl", "last.pt", "best.pt", "fair_best.pt"):
            assert after[f"{t}/{f}"] == before[f"{t}/{f}"], f  # no weight moved
        metrics = json.loads((out / "runs" / t / "metrics.json").read_text())["rows"]
        assert list(metrics) == ["clean", "pgd10"]
        cfg = json.loads((out / "runs" / t / "config.json").read_text())
        assert cfg["attack"]["test_attacks"] == ["clean", "pgd10"] and cfg["resolved"]["reevaluated"]["changed"] == [
            "attack.test_attacks"]
    assert "evaluated again" in _text(nb)
    untouched = {k: v for k, v in before.items() if "/teacher/" not in k}
    assert {k: after[k] for k in untouched} == untouched


@pytest.mark.slow
def test_a_notebook_without_retrain_refuses_to_train_a_changed_run_and_names_it(study_copy):
    import papermill as pm

    out, preset = study_copy
    before = run_records(out / "runs")
    with pytest.raises(pm.PapermillExecutionError) as e:
        _papermill("03_students", out, {"preset": str(preset), "lr": 0.02})
    assert e.value.ename == "RetrainRefused"
    assert "student-absld " in e.value.evalue and "optim.lr" in e.value.evalue and "retrain = True" in e.value.evalue
    assert run_records(out / "runs") == before
    # asked for, it trains the changed run again
    _papermill("03_students", out, {"preset": str(preset), "lr": 0.02, "methods": "pgd_at", "seeds": [0],
                                    "retrain": True})
    after = run_records(out / "runs")
    assert after["tiny/s0/student-pgd_at/history.jsonl"] != before["tiny/s0/student-pgd_at/history.jsonl"]
    assert after["tiny/s0/student-trades/history.jsonl"] == before["tiny/s0/student-trades/history.jsonl"]


@pytest.mark.slow
def test_an_interrupted_notebook_leaves_every_finished_run_as_it_was(study_copy):
    """Notebook 03 with a third seed trains new runs; killed while it trains, the finished runs of
    seeds 0 and 1 keep every record."""
    out, preset = study_copy
    before = run_records(out / "runs")
    script = textwrap.dedent(f"""
        import papermill as pm
        pm.execute_notebook({str(ROOT / 'notebooks' / '03_students.ipynb')!r}, {str(out / 'int.ipynb')!r},
                            kernel_name="absld", cwd={str(out)!r}, progress_bar=False,
                            parameters={{"preset": {str(preset)!r}, "seeds": [0, 1, 2], "methods": "pgd_at,trades",
                                        "epochs": 2}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = out / "runs" / "tiny" / "s2" / "student-pgd_at" / "config.json"
    deadline = time.time() + 240
    while time.time() < deadline and not marker.is_file() and proc.poll() is None:
        time.sleep(0.2)
    assert marker.is_file(), "the notebook never started training the new run"
    os.killpg(proc.pid, signal.SIGKILL)  # the runner (its kernel follows it: ipykernel watches its parent)
    proc.wait(timeout=30)
    time.sleep(3)
    after = run_records(out / "runs")
    assert {k: v for k, v in after.items() if not k.startswith("tiny/s2/")} == before


# ------------------------------------------------------------------------------------ a method's own knob
TOY = '''
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from absld_core import attacks as A
from absld_core.declare import Param
from absld_core.methods import Method, Options, StepOutput, register


@dataclass(frozen=True)
class ToyOptions(Options):
    gain: float = 1.0
    STUDY_PARAMS: ClassVar[tuple] = (Param("toy_gain", 1.0, "the toy's loss gain", ("03_students",), option="gain"),)


@register("toy_gain_at", options=ToyOptions, display="Toy", order=99)
class ToyAT(Method):
    def step(self, x, y, ctx):
        x_adv = A.pgd(ctx.raw, x, y, ctx.eps, ctx.alpha, ctx.steps, amp_dtype=ctx.attack_dtype, validate=False)
        with ctx.autocast():
            (z,) = ctx.forward(x_adv)
        return StepOutput(self.options.gain * F.cross_entropy(z.float(), y), y, adv_logits=z)
'''


@pytest.mark.slow
def test_a_study_knob_declared_in_a_method_file_reaches_it_through_the_sweep_and_the_notebook(tmp_path):
    """A toy method outside the package declares `toy_gain`; the preset sets it; `absld sweep` trains
    the run with gain 0.5, and notebook 03 then reuses that run (no retrain) with the same value."""
    plugin = tmp_path / "toy_method.py"
    plugin.write_text(TOY)
    preset = write_preset(tmp_path, "toy", notebooks=["03_students"], methods="toy_gain_at", seeds=[0], toy_gain=0.5)
    env = {**os.environ, "ABSLD_METHODS": str(plugin)}
    r = subprocess.run([str(Path(sys.executable).parent / "absld"), "sweep", "--preset", str(preset), "--out",
                        str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp_path / "runs" / "toy" / "s0" / "student-toy_gain_at"
    assert json.loads((run / "config.json").read_text())["method"]["gain"] == 0.5
    before = run_records(tmp_path / "runs")
    os.environ["ABSLD_METHODS"] = str(plugin)  # the kernel papermill starts inherits it
    try:
        nb = _papermill("03_students", tmp_path, {"preset": str(preset)})
    finally:
        del os.environ["ABSLD_METHODS"]
    assert run_records(tmp_path / "runs") == before
    assert "runs: 1 reused" in _text(nb)


def test_papermill_reads_every_parameter_of_every_cell():
    """papermill parses each line of the parameters cells (a comment it cannot parse drops the name)."""
    import papermill as pm

    for nb in params.NOTEBOOKS:
        got = set(pm.inspect_notebook(str(ROOT / "notebooks" / f"{nb}.ipynb")))
        assert got == {p.name for p in params.for_notebook(nb)}, nb
