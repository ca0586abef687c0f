"""The study: every notebook through papermill with tiny parameters, skipping, refusals, failures."""
import json
import os

import pandas as pd

import nbformat
import pytest

from absld_core.study import NOTEBOOKS, ROOT, StudyError, load_preset, resolve_parameters, run_study

TINY = ["train_per_class=25", "val_per_class=5", "test_per_class=6", "epochs=2", "steps=2", "width=4",
        "batch_size=32", "test_attacks=clean,fgsm,pgd20,cw5", "01_smoothness_vs_fairness.reference_epochs=1",
        "02_teacher.teacher_epochs=2", "02_teacher.teacher_width=8", "03_students.ham_early_steps=1",
        "05_temperature_explorer.finetune_epochs=1", "seeds=[0,1]"]


def test_notebooks_are_committed_without_outputs_and_parameterised():
    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), name
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        assert nb.metadata["kernelspec"]["name"] == "absld"


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    log = []
    rc = run_study("smoke", TINY, out_root=out, log=log.append)
    return out, rc, log


@pytest.mark.slow
def test_every_notebook_runs_and_leaves_runs_and_figures(smoke_study):
    out, rc, log = smoke_study
    assert rc == 0, "\n".join(log)
    runs, figs = out / "runs" / "smoke", out / "figures" / "smoke"
    for name in NOTEBOOKS:
        nb = nbformat.read(runs / "notebooks" / f"{name}.ipynb", as_version=4)
        assert all(o.get("output_type") != "error" for c in nb.cells for o in c.get("outputs", [])), name
    for seed in (0, 1):
        for run in ("reference", "ssd-kd", "dsd-kd", "ssd-ls", "dsd-ls", "teacher", "student-pgd_at", "student-trades",
                    "student-rslad", "student-absld", "student-ham", "student-absld_ham"):
            metrics = json.loads((runs / f"s{seed}" / run / "metrics.json").read_text())["rows"]
            for row in metrics.values():
                assert 0 <= row["avg"] <= 100 and 0 <= row["worst"] <= row["avg"] + 1e-9
            assert metrics["pgd20"]["avg"] <= metrics["clean"]["avg"]
            assert (runs / f"s{seed}" / run / "per_image.npz").is_file()
    for f in ("01_smoothness_temperature.png", "01_smoothness_label_smoothing.png", "02_teacher.png",
              "04_class_bars.png", "04_heatmap.png", "04_temperatures.png", "04_kept_fraction.png",
              "explorer_schedule.png", "explorer_soft_labels.png", "summary.md", "summary.csv", "per_seed.csv"):
        assert (figs / f).is_file() and (figs / f).stat().st_size > 500, f
    summary = (figs / "summary.md").read_text()
    assert "| ABSLD+HAM |" in summary and "absld_ham" not in summary  # display names in what people read
    assert "## pgd20: mean over seeds [95% interval]" in summary
    assert "absld_ham" in set(pd.read_csv(figs / "summary.csv")["method"])  # ids in the tidy CSVs
    assert "(b) ABSLD beats RSLAD on the worst class and NSD" in summary and "95% CI" in summary
    per_seed = pd.read_csv(figs / "per_seed.csv")
    assert list(per_seed.columns[:7]) == ["method", "seed", "attack", "avg", "worst", "worst_class", "nsd"]
    assert set(per_seed["seed"]) == {0, 1} and "absld" in set(per_seed["method"])
    assert (figs / "class_wise_pgd20.csv").is_file()
    hist = [json.loads(l) for l in (runs / "s0" / "student-absld" / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 2 and len(hist[-1]["tau_adv"]) == 10
    # the explorer's fine-tune (recorded settings) trains with the temperatures the run ended at
    ft = [json.loads(l) for l in (runs / "s0" / "student-absld-finetune" / "history.jsonl").read_text().splitlines()]
    assert ft[0]["tau_adv"] == pytest.approx(hist[-1]["tau_adv"], abs=1e-6)
    assert ft[0]["tau_nat"] == pytest.approx(hist[-1]["tau_nat"], abs=1e-6)
    nb1 = nbformat.read(runs / "notebooks" / "01_smoothness_vs_fairness.ipynb", as_version=4)
    text = "".join(o.get("data", {}).get("text/markdown", "") for c in nb1.cells for o in c.get("outputs", []))
    # the statements are computed from paired differences over both seeds, one per smoothness kind
    assert text.count("DSD (temperature) - SSD (temperature), worst-class PGD-20") == 1
    assert text.count("DSD (label smoothing) - SSD (label smoothing), worst-class PGD-20") == 1
    assert text.count("2 seeds") >= 6
    assert "**Holds**" not in text  # two seeds are too few for a plain verdict
    out = {}
    for name in NOTEBOOKS:
        nb = nbformat.read(runs / "notebooks" / f"{name}.ipynb", as_version=4)
        out[name] = "".join(o.get("data", {}).get("text/markdown", "") + o.get("data", {}).get("text/html", "")
                            + o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    # 04: Avg / Worst / NSD for every attack the study evaluated, and a computed conclusion
    for attack in ("clean", "FGSM", "PGD-20", "CW-5"):
        assert f"### {attack}: mean over seeds [95% interval]" in out["04_class_wise_robustness"], attack
    assert "Over 2 seed(s) (2 seeds: too few retrainings for a plain verdict)" in out["04_class_wise_robustness"]
    # 03: clean and PGD-20 with the teacher's row, and a leader stated from paired differences
    assert "### clean on the test set" in out["03_students"] and "### PGD-20 on the test set" in out["03_students"]
    assert "teacher" in out["03_students"] and "Paired differences" in out["03_students"]
    # 05: the fine-tune's before/after table (the smoke preset's fine-tune is shown, not only its folder)
    assert "after - before [95% CI]" in out["05_temperature_explorer"]


@pytest.mark.slow
def test_notebooks_opened_from_the_notebooks_folder_find_the_study_runs(smoke_study, tmp_path, monkeypatch):
    """JupyterLab starts the kernel in notebooks/; a relative run_root must still mean the study root's
    runs/ folder (the repository's, where `make study` writes), not notebooks/runs/."""
    import papermill as pm

    from absld_core import study

    out, rc, _ = smoke_study
    assert rc == 0
    monkeypatch.chdir(ROOT / "notebooks")
    assert study.notebook_setup({}, "04_class_wise_robustness", log=lambda *_: None)["run_root"] == "runs/smoke"
    assert os.getcwd() == str(ROOT)
    kernel_home = out / "notebooks"  # a notebooks/ folder beside the study's runs/, as in the repository
    kernel_home.mkdir(exist_ok=True)
    for nb in ("04_class_wise_robustness", "05_temperature_explorer"):
        dst = tmp_path / f"{nb}.ipynb"
        pm.execute_notebook(str(ROOT / "notebooks" / f"{nb}.ipynb"), str(dst), kernel_name="absld",
                            parameters={"run_root": "runs/smoke", "figure_dir": str(tmp_path / "figs"),
                                        "seeds": [0, 1], "interactive": False},
                            cwd=str(kernel_home), progress_bar=False, execution_timeout=300)
    assert (tmp_path / "figs" / "per_seed.csv").is_file() and (tmp_path / "figs" / "explorer_schedule.png").is_file()
    assert not (kernel_home / "runs").exists()


@pytest.mark.parametrize("nb", ["04_class_wise_robustness", "05_temperature_explorer"])
def test_reading_notebooks_say_how_to_make_runs_when_there_are_none(tmp_path, nb):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(ROOT / "notebooks" / f"{nb}.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="absld",
                            parameters={"run_root": str(tmp_path / "empty"), "figure_dir": str(tmp_path / "f"),
                                        "interactive": False}, cwd=str(tmp_path), progress_bar=False)
    assert e.value.ename == "StudyError" and "run notebooks 01-03 first, or `make study`" in e.value.evalue


@pytest.mark.slow
def test_rerun_skips_unchanged_and_says_why_it_reruns(smoke_study):
    out, rc, _ = smoke_study
    log = []
    assert run_study("smoke", TINY, out_root=out, log=log.append) == 0
    assert sum("unchanged, skipped" in line for line in log) == len(NOTEBOOKS)
    log = []
    changed = [t for t in TINY if not t.startswith("05_")] + ["05_temperature_explorer.finetune_epochs=0",
                                                              "05_temperature_explorer.eta=0.3"]
    assert run_study("smoke", changed, out_root=out, log=log.append) == 0
    assert any("05_temperature_explorer: running (parameters changed: eta, finetune_epochs)" in l for l in log), log
    assert sum("unchanged, skipped" in line for line in log) == 4


@pytest.mark.slow
def test_failing_notebook_stops_the_batch_and_keeps_finished_outputs(tmp_path):
    log = []
    bad = TINY + ["02_teacher.teacher_method=bogus"]
    assert run_study("smoke", bad, out_root=tmp_path, log=log.append) == 1
    assert any("02_teacher: FAILED in cell" in l and "bogus" in l for l in log), log
    assert (tmp_path / "runs" / "smoke" / "notebooks" / "01_smoothness_vs_fairness.ipynb").is_file()
    assert not (tmp_path / "runs" / "smoke" / "notebooks" / "03_students.ipynb").exists()
    state = json.loads((tmp_path / "runs" / "smoke" / "study_state.json").read_text())
    assert state["01_smoothness_vs_fairness"]["status"] == "ok" and state["02_teacher"]["status"] == "failed"


def test_invalid_preset_and_parameters_are_refused_before_work(tmp_path):
    with pytest.raises(StudyError, match="unknown preset 'nope'; known presets: cifar10-cpu, digits-paper, gpu-check, paper, smoke"):
        run_study("nope", out_root=tmp_path)
    with pytest.raises(StudyError, match=r"unknown parameter\(s\) \['epochz'\]"):
        run_study("smoke", ["epochz=3"], out_root=tmp_path)
    with pytest.raises(StudyError, match="optim.epochs=0 is invalid"):
        run_study("smoke", ["epochs=0"], out_root=tmp_path)
    with pytest.raises(StudyError, match=r"notebook 02_teacher has no parameter\(s\) \['eta'\]"):
        run_study("smoke", ["02_teacher.eta=0.1"], out_root=tmp_path)
    with pytest.raises(StudyError, match=r"unknown notebook\(s\) \['06_extra'\]"):
        run_study("smoke", ["06_extra.eta=0.1"], out_root=tmp_path)
    with pytest.raises(StudyError, match="must look like name=value"):
        run_study("smoke", ["epochs"], out_root=tmp_path)
    with pytest.raises(StudyError, match="attack.eps"):
        run_study("smoke", ["eps_255=300"], out_root=tmp_path)
    assert not (tmp_path / "runs").exists()


def test_presets_resolve():
    for name in ("smoke", "digits-paper", "cifar10-cpu", "paper"):
        per_nb = resolve_parameters(load_preset(name))
        assert set(per_nb) == set(NOTEBOOKS)


@pytest.mark.slow
def test_explorer_in_interactive_mode_does_not_wait_for_input(smoke_study, tmp_path):
    import papermill as pm

    out, rc, _ = smoke_study
    assert rc == 0
    dst = tmp_path / "explorer.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "05_temperature_explorer.ipynb"), str(dst), kernel_name="absld",
                        parameters={"run_root": str(out / "runs" / "smoke"), "interactive": True,
                                    "figure_dir": str(tmp_path)}, execution_timeout=180, progress_bar=False,
                        cwd=str(out))
    nb = nbformat.read(dst, as_version=4)
    views = [o for c in nb.cells for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, "the sliders were not displayed"
