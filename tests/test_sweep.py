"""The study plan and the sweep: dependencies, seeds and folds, a killed worker resumed, submitit."""
import os
import signal
import threading
import time

import pytest
import torch

from absld_core import plan as P
from absld_core.plan import PlanError
from absld_core.runs import RunDir
from absld_core.sweep import sweep

TINY = ["train_per_class=20", "val_per_class=4", "test_per_class=5", "epochs=2", "steps=2", "width=4",
        "batch_size=32", "test_attacks=clean,pgd20", "val_attacks=clean,pgd5", "02_teacher.teacher_epochs=2",
        "02_teacher.teacher_width=4", "03_students.methods=pgd_at,absld", "03_students.ham_early_steps=1",
        "01_smoothness_vs_fairness.reference_epochs=1"]


def tiny_plan(root, *extra, notebooks=("02_teacher", "03_students")):
    return P.study_plan("smoke", TINY + [f"run_root={root}/runs/smoke", "seeds=[0,1]", *extra], notebooks=notebooks)


def test_the_plan_has_every_seed_and_its_dependencies(tmp_path):
    jobs = P.study_plan("smoke", TINY + [f"run_root={tmp_path}", "seeds=[3,5]"])
    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys))
    by = {j.key: j for j in jobs}
    for s in (3, 5):
        assert by[f"s{s}/teacher"].deps == ()
        assert by[f"s{s}/student-absld"].deps == (f"s{s}/teacher",)  # its own seed's teacher
        assert by[f"s{s}/student-pgd_at"].deps == ()                  # no teacher needed
        assert by[f"s{s}/dsd-kd"].deps == (f"s{s}/reference",)
        assert by[f"s{s}/student-absld"].config["seed"] == s
        assert by[f"s{s}/student-absld"].run_dir == tmp_path / f"s{s}" / "student-absld"
        assert by[f"s{s}/student-absld"].config["method"]["teacher"]["checkpoint"] == str(tmp_path / f"s{s}" / "teacher")


def test_test_folds_rotate_with_the_seed_and_cover_the_data(tmp_path):
    from absld_core.config import TrainConfig
    from absld_core.engine import prepare_data

    jobs = [j for j in P.study_plan("smoke", TINY + [f"run_root={tmp_path}", "seeds=[7,8,9]", "test_folds=3",
                                                    "test_per_class=null", "train_per_class=null"])
            if j.label == "teacher"]
    seen = []
    for j in jobs:
        ds = prepare_data(TrainConfig.from_dict(j.config))
        seen.append(ds.test_y.numel())
    assert sum(seen) == 1797  # every image is a test image exactly once over the three seeds


@pytest.mark.parametrize("over, match", [
    (["seeds=[0,0]"], "distinct"), (["seeds=[]"], "non-empty"), (["seeds=[-1]"], "non-negative"),
    (["test_folds=1"], "test_folds must be an integer >= 2"),
    (["dataset=synthetic", "test_folds=3"], "rotates the held-out fold of the digits"),
    (["03_students.methods=absld,nope"], "unknown"),
])
def test_bad_plans_are_refused_with_what_is_allowed(tmp_path, over, match):
    with pytest.raises((PlanError, ValueError), match=match):
        P.study_plan("smoke", TINY + [f"run_root={tmp_path}"] + over)


def test_local_sweep_two_workers_respects_dependencies_and_skips_finished(tmp_path):
    jobs = tiny_plan(tmp_path)
    lines = []
    res = sweep(jobs, "local", workers=2, threads=1, log_root=tmp_path / "logs", log=lines.append, poll=0.1)
    assert res.ok, res.summary()
    assert res.count("done") == len(jobs) == 6
    order = [l.split()[:2] for l in lines if l.strip().startswith(("start", "done"))]
    for s in (0, 1):
        teacher_done = order.index(["done", f"s{s}/teacher"])
        assert order.index(["start", f"s{s}/student-absld"]) > teacher_done
    assert max(sum(1 for o in order[:i + 1] if o[0] == "start") - sum(1 for o in order[:i + 1] if o[0] == "done")
               for i in range(len(order))) <= 2  # never more than two workers at once
    assert all(RunDir(j.run_dir).finished() for j in jobs)
    assert (tmp_path / "logs" / "s0" / "student-absld.log").is_file()
    again = sweep(jobs, "local", workers=2, log_root=tmp_path / "logs", log=lambda *_: None)
    assert again.count("skipped") == 6 and again.count("done") == 0


def test_a_failed_job_is_reported_and_its_dependents_wait(tmp_path):
    jobs = tiny_plan(tmp_path)
    bad_teacher = (tmp_path / "runs" / "smoke" / "s1" / "teacher")
    bad_teacher.mkdir(parents=True)
    (bad_teacher / "mine.txt").write_text("a user's file: the run refuses to overwrite this directory")
    (bad_teacher / "config.json").write_text("{}")
    res = sweep(jobs, "local", workers=2, log_root=tmp_path / "logs", log=lambda *_: None, poll=0.1)
    assert not res.ok
    assert res.outcomes["s1/teacher"].state == "failed"
    assert res.outcomes["s1/teacher"].log.endswith("s1/teacher.log")
    assert res.outcomes["s1/student-absld"].state == "waiting"
    assert res.outcomes["s0/student-absld"].state == "done"
    assert "1 failed" in res.summary() and str(bad_teacher) in res.summary()


def test_a_killed_worker_is_resumed_by_the_next_sweep_and_equals_an_uninterrupted_run(tmp_path):
    long = ["03_students.epochs=25", "03_students.methods=absld"]
    jobs = tiny_plan(tmp_path / "killed", *long, "seeds=[0]")
    student = [j for j in jobs if j.label == "absld"][0]
    killed = []

    def killer():
        hist = student.run_dir / "history.jsonl"
        while not killed:
            if hist.is_file() and len(hist.read_text().splitlines()) >= 3 and (student.run_dir / "last.pt").is_file():
                pid = int((student.run_dir / "run.lock").read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    first = sweep(jobs, "local", workers=1, log_root=tmp_path / "logs", log=lambda *_: None, poll=0.05)
    killed.append(None)
    assert first.outcomes[student.key].state == "failed" and "signal 9" in first.outcomes[student.key].error
    assert not RunDir(student.run_dir).finished()
    second = sweep(jobs, "local", workers=1, log_root=tmp_path / "logs", log=lambda *_: None, poll=0.05)
    assert second.outcomes[student.key].state == "done" and second.outcomes["s0/teacher"].state == "skipped"
    whole = tiny_plan(tmp_path / "whole", *long, "seeds=[0]")
    assert sweep(whole, "local", workers=1, log_root=tmp_path / "logs2", log=lambda *_: None).ok
    a = torch.load(student.run_dir / "last.pt", weights_only=True)["model"]
    b = torch.load([j for j in whole if j.label == "absld"][0].run_dir / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_submitit_local_executor_runs_the_same_plan(tmp_path):
    pytest.importorskip("submitit")
    jobs = tiny_plan(tmp_path)
    res = sweep(jobs, "submitit", log_root=tmp_path / "logs", slurm={"cluster": "local", "timeout_min": 10},
                log=lambda *_: None, poll=0.2)
    assert res.ok, res.summary()
    assert res.count("done") == 6 and all(RunDir(j.run_dir).finished() for j in jobs)
    assert list((tmp_path / "logs" / "submitit").glob("*/*_log.err"))  # submitit's own per-job logs
    assert sweep(jobs, "submitit", log_root=tmp_path / "logs", slurm={"cluster": "local"}, log=lambda *_: None).count("skipped") == 6


def test_compare_eta_scaling_adds_one_absld_run_with_the_papers_travel(tmp_path):
    """The study's eta comparison: a second ABSLD run per seed, after the same teacher, whose eta makes
    the temperatures travel as far as the paper's 300 epochs; notebook 04 reads it under its label."""
    from absld_core.plan import finished_runs
    from absld_core.presets import notebook_parameters
    from absld_core.config import OptimConfig
    from absld_core.schedule import eta_for_paper_travel

    jobs = P.study_plan("smoke", TINY + [f"run_root={tmp_path}", "seeds=[0,1]", "03_students.compare_eta_scaling=true"],
                        notebooks=("02_teacher", "03_students"))
    by = {j.key: j for j in jobs}
    for s in (0, 1):
        plain, scaled = by[f"s{s}/student-absld"], by[f"s{s}/student-absld-eta-scaled"]
        assert scaled.label == P.ETA_SCALED and scaled.deps == plain.deps == (f"s{s}/teacher",)
        assert plain.config["method"]["eta"] == pytest.approx(0.1)
        assert scaled.config["method"]["eta"] == pytest.approx(eta_for_paper_travel(OptimConfig(epochs=2), 0.1))
        assert {k: v for k, v in scaled.config.items() if k not in ("name", "method")} == \
               {k: v for k, v in plain.config.items() if k not in ("name", "method")}
    assert not any("eta-scaled" in k for k in (j.key for j in P.study_plan(
        "smoke", TINY + [f"run_root={tmp_path}"], notebooks=("02_teacher", "03_students"))))  # off by default
    # notebook 04's reader picks the finished run up under the same label
    for s in (0, 1):
        d = by[f"s{s}/student-absld-eta-scaled"].run_dir
        d.mkdir(parents=True)
        (d / "status.json").write_text('{"state": "finished"}')
        (d / "metrics.json").write_text("{}")
        (d / "per_image.npz").write_bytes(b"")
    runs = finished_runs(notebook_parameters("smoke", "04_class_wise_robustness", {
        "run_root": str(tmp_path), "seeds": [0, 1], "methods": "pgd_at,absld", "compare_eta_scaling": True}))
    assert runs == {P.ETA_SCALED: {0: tmp_path / "s0" / "student-absld-eta-scaled", 1: tmp_path / "s1" / "student-absld-eta-scaled"}}


def test_sweep_list_prints_the_plan_and_the_temperature_budgets(tmp_path, capsys):
    from absld_core.cli import main

    assert main(["sweep", "--preset", "smoke", "--out", str(tmp_path), "--list",
                 "--set", "03_students.compare_eta_scaling=true"] + sum((["--set", t] for t in TINY), [])) == 0
    out = capsys.readouterr().out
    assert "new        s0/student-absld " in out and "after s0/teacher" in out
    assert "temperatures of absld: 2 epochs: 2 temperature updates" in out
    assert "temperatures of absld_eta_scaled: 2 epochs" in out and "100% of it" in out
