"""Agreement with the releases where they are the reference, and the fixes a new user needs: the
CIFAR-100 KD scale, checkpoint selection, HAM under DDP, history after a kill, configs passed back."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from absld_core import train
from absld_core.cli import main as cli_main
from absld_core.config import MethodConfig, TrainConfig, load_config
from absld_core.engine import EpochTotals, MultiView, train_step, validates, zero_loss_fn
from absld_core.experiments import summary_table
from absld_core.methods import StepContext, StepOutput, build_method
from absld_core.models import build_model, load_checkpoint
from absld_core.runs import RunDir
from train_helpers import tiny

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ defaults
def test_kd_scale_follows_the_number_of_classes_and_is_recorded(tmp_path):
    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8), torch.arange(8) % 4
    student = build_model("small_cnn", 100, width=4)
    teacher = build_model("small_cnn", 100, width=4).eval()
    ctx = StepContext(raw=student, forward=MultiView(student), eps=8 / 255, alpha=2 / 255, steps=0, epoch=1,
                      num_classes=100, teacher=teacher)
    losses = {}
    for scale in (None, 1.0):
        m = build_method(MethodConfig.from_dict({"name": "rslad", "teacher": {"checkpoint": "x"}, "kd_scale": scale}), 100, torch.device("cpu"))
        torch.manual_seed(1)
        losses[scale] = m.step(x, y, ctx).loss.item()
        assert m.resolved() == {"kd_scale": 10.0 if scale is None else 1.0}
    assert losses[None] == pytest.approx(10 * losses[1.0], rel=1e-6)  # CIFAR-100: the release's x10
    ten = build_method(MethodConfig.from_dict({"name": "absld", "teacher": {"checkpoint": "x"}}), 10, torch.device("cpu"))
    assert ten.resolved() == {"kd_scale": 1.0}
    t = train(tiny("t", "natural", tmp_path, optim__epochs=1))
    run = train(tiny("s", "rslad", tmp_path, optim__epochs=1, method={"name": "rslad", "teacher": {"checkpoint": str(t)}}))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"]["kd_scale"] is None and cfg["resolved"]["method"] == {"kd_scale": 1.0}


def test_validation_every_epoch_from_the_first_lr_decay():
    # the ABSLD and RSLAD releases: `(epoch % 10 == 0 and epoch < 215) or epoch >= 215`, the lr x0.1 after
    # epoch 215 (`if epoch in [215, 260, 285]` after the epoch's validation)
    release = [e for e in range(1, 301) if (e % 10 == 0 and e < 215) or e >= 215]
    paper = TrainConfig.from_dict({"eval_every": 10, "optim": {"epochs": 300}})
    assert [e for e in range(1, 301) if validates(paper, e)] == release
    five = TrainConfig.from_dict({"eval_every": 5, "optim": {"epochs": 300}})
    done = [e for e in range(1, 301) if validates(five, e)]
    assert done == list(range(5, 215, 5)) + list(range(215, 301))
    sparse = TrainConfig.from_dict({"eval_every": 5, "eval_every_epoch_after_decay": False, "optim": {"epochs": 300}})
    assert [e for e in range(1, 301) if validates(sparse, e)] == list(range(5, 301, 5))
    const = TrainConfig.from_dict({"eval_every": 3, "optim": {"epochs": 10, "schedule": "constant"}})
    assert [e for e in range(1, 11) if validates(const, e)] == [3, 6, 9, 10]


def test_selection_on_the_test_set_is_explicit_and_named(tmp_path):
    with pytest.raises(Exception, match="selection='validation' needs a validation split"):
        TrainConfig.from_dict({"data": {"val_per_class": 0}})
    run = train(tiny("sel", "natural", tmp_path, optim__epochs=1, selection="test", data__val_per_class=0))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["attrs"]["selection"] == "test"
    assert load_checkpoint(run / "fair_best.pt")["meta"]["selected_on"] == "test"
    table = summary_table({"natural": run})
    assert list(table.index) == ["natural (test-selected)"]


# ------------------------------------------------------------------------------------------ HAM
def _ham_setup(seed=0):
    """A BatchNorm student whose classifier always predicts class 0 with a wide margin: labels 0 are easy
    (still right after M steps), labels 1 hard (already wrong)."""
    torch.manual_seed(seed)
    model = build_model("small_cnn", 4, width=4)
    with torch.no_grad():
        model.classifier.weight.mul_(0.01)
        model.classifier.bias.copy_(torch.tensor([20.0, 0.0, 0.0, 0.0]))
    return model


def _ham_step(model, x, y, ctx_kw):
    cfg = MethodConfig.from_dict({"name": "ham", "ham_early_steps": 1, "ham_start_epoch": 1})
    method = build_method(cfg, 4, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    totals = EpochTotals(4, torch.device("cpu"))
    model.train()
    # a negligible radius: each process draws its own random start, so only then are the adversarial
    # images (nearly) those of one process; the classifier's bias decides which examples are hard
    out, _ = train_step(method, x, y, StepContext(raw=model, eps=1e-6, alpha=1e-6, steps=3, epoch=1, num_classes=4,
                                                  **ctx_kw), opt, totals)
    return out, opt, totals


def _ddp_rank(rank, world, init_file, batches, result_file):
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = _ham_setup()
    fwd = DDP(MultiView(model), broadcast_buffers=False)

    def sum_all(v):
        t = torch.tensor(float(v), dtype=torch.float64)
        dist.all_reduce(t)
        return t.item()

    x, y = batches[rank]
    bn_before = model.features[1].running_mean.clone()
    out, opt, totals = _ham_step(model, x, y, {"forward": fwd, "world_size": world, "sum_all": sum_all,
                                                "zero_loss": zero_loss_fn(model, fwd)})
    torch.save({"params": {k: v.detach().clone() for k, v in model.named_parameters()},
                "bn_moved": not torch.equal(bn_before, model.features[1].running_mean),
                "stepped": bool(opt.state), "kept": int(out.kept.sum()),
                "loss_sum": float(totals.loss_sum), "n_loss": float(totals.n_loss)}, f"{result_file}.{rank}")
    dist.destroy_process_group()


def _run_ddp(tmp_path, batches, name):
    init = tmp_path / f"{name}.init"
    out = tmp_path / name
    mp.start_processes(_ddp_rank, args=(2, str(init), batches, str(out)), nprocs=2, start_method="spawn")
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]


def test_ham_under_ddp_with_an_empty_hard_set_on_one_rank_equals_one_process(tmp_path):
    torch.manual_seed(3)
    x = torch.rand(16, 3, 8, 8)
    easy, hard = torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)
    batches = [(x[:8], easy), (x[8:], hard)]
    ranks = _run_ddp(tmp_path, batches, "mixed")
    assert [r["kept"] for r in ranks] == [0, 8]
    single = _ham_setup()
    out, opt, totals = _ham_step(single, x, torch.cat([easy, hard]), {"forward": MultiView(single),
                                                                      "zero_loss": zero_loss_fn(single, MultiView(single))})
    assert int(out.kept.sum()) == 8 and opt.state
    for r in ranks:  # both processes took the global batch's step: the weights of one process
        assert r["stepped"]
        for k, v in single.named_parameters():
            assert torch.allclose(r["params"][k], v.detach(), atol=1e-6, rtol=1e-5), k
    assert not ranks[0]["bn_moved"] and ranks[1]["bn_moved"]  # no BatchNorm statistic from the empty rank
    # the logged loss: a mean over the global hard set, as in one process
    assert sum(r["n_loss"] for r in ranks) == float(totals.n_loss) == 8
    assert sum(r["loss_sum"] for r in ranks) == pytest.approx(float(totals.loss_sum), rel=1e-5)


def test_ham_under_ddp_skips_the_step_everywhere_when_no_rank_has_a_hard_example(tmp_path):
    torch.manual_seed(3)
    x = torch.rand(16, 3, 8, 8)
    easy = torch.zeros(8, dtype=torch.long)
    ranks = _run_ddp(tmp_path, [(x[:8], easy), (x[8:], easy)], "easy")
    start = dict(_ham_setup().named_parameters())
    for r in ranks:
        assert not r["stepped"] and not r["bn_moved"] and r["kept"] == 0
        assert all(torch.equal(r["params"][k], v.detach()) for k, v in start.items())


def test_ham_logs_the_mean_loss_over_the_examples_it_trained_on():
    w = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([w], lr=0.0)
    totals = EpochTotals(2, torch.device("cpu"))
    y = torch.zeros(10, dtype=torch.long)
    # two batches of 10: a loss of 1 averaged over 2 hard examples, a loss of 4 averaged over 8
    for loss, n in ((1.0, 2), (4.0, 8)):
        totals.add(StepOutput(w + loss, y[:n], adv_logits=torch.zeros(n, 2)), y)
    assert float(totals.loss_sum / totals.n_loss) == pytest.approx((1 * 2 + 4 * 8) / 10)


# ------------------------------------------------------------------------------------------ records
def test_history_agrees_with_the_checkpoint_after_a_kill_between_the_two_writes(tmp_path, monkeypatch):
    from absld_core import engine

    cfg = tiny("k", "natural", tmp_path, optim__epochs=2)
    real_save = engine.atomic_torch_save

    def killed(obj, path):  # the process dies after history.jsonl got epoch 1 and before last.pt exists
        raise SystemExit("killed")

    monkeypatch.setattr(engine, "atomic_torch_save", killed)
    with pytest.raises(SystemExit):
        train(cfg)
    run = RunDir(tmp_path / "k")
    assert [r["epoch"] for r in run.history()] == [1] and not run.last.exists()
    monkeypatch.setattr(engine, "atomic_torch_save", real_save)
    train({**cfg, "resume": True})
    assert [r["epoch"] for r in run.history()] == [1, 2] and run.finished()
    # the other order: last.pt of epoch 1 written, its history line lost
    cfg2 = tiny("k2", "natural", tmp_path, optim__epochs=2, stop_after=1)
    train(cfg2)
    run2 = RunDir(tmp_path / "k2")
    full = run2.history()[0]
    run2.history_file.write_text("")
    train({**cfg2, "resume": True, "stop_after": None})
    hist = run2.history()
    assert [r["epoch"] for r in hist] == [1, 2] and hist[0]["loss"] == full["loss"]


def test_a_runs_config_json_trains_the_same_weights_again(tmp_path, capsys):
    first = train(tiny("first", "pgd_at", tmp_path, optim__epochs=2))
    saved = json.loads((first / "config.json").read_text())
    assert "resolved" in saved
    assert cli_main(["train", "--config", str(first / "config.json"), "--set", "name=again"]) == 0
    a, b = load_checkpoint(first / "last.pt"), load_checkpoint(tmp_path / "again" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    fn_cfg = {**saved, "method": {**saved["method"], "tau_function": "<function f>"}}
    with pytest.raises(Exception, match="cannot hold a function"):
        TrainConfig.from_dict(fn_cfg)


def test_example_training_configs_validate_and_the_help_names_only_files_that_exist():
    examples = sorted((ROOT / "presets" / "train").glob("*.yaml"))
    assert {p.stem for p in examples} >= {"teacher", "absld", "ham"}
    for p in examples:
        load_config(p)
    import absld_core.cli as cli

    named = set(re.findall(r"presets/train/[\w-]+\.yaml", cli.__doc__ + (ROOT / "README.md").read_text()))
    assert named and all((ROOT / n).is_file() for n in named), named


def test_study_kernels_do_not_print_the_tcp_warning(tmp_path):
    """The study's notebooks run over IPC: ipykernel's 'running over TCP without encryption' warning
    does not appear, and a notebook's own warnings still do."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import warnings; warnings.warn('a real warning'); print(x + 1)")]
    nb.metadata["kernelspec"] = {"name": "absld", "display_name": "Python (absld)", "language": "python"}
    nbformat.write(nb, tmp_path / "t.ipynb")
    code = ("import papermill as pm\nfrom absld_core.study import KERNEL, _kernel_options\n"
            f"pm.execute_notebook({str(tmp_path / 't.ipynb')!r}, {str(tmp_path / 'o.ipynb')!r}, kernel_name=KERNEL,"
            " progress_bar=False, log_output=False, **_kernel_options())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "without encryption" not in out.stderr + out.stdout
    outputs = nbformat.read(tmp_path / "o.ipynb", as_version=4).cells[1].outputs
    assert any("a real warning" in o.get("text", "") for o in outputs) and any(o.get("text") == "2\n" for o in outputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.ipynb", "t.ipynb"]  # no socket files left here
