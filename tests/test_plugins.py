"""Methods from outside the package (ABSLD_METHODS): a name means one method in every entry point, a
file that cannot be loaded is one line naming it, and a run trained with such a method says where the
method lives when it is read without it."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from absld_core.config import ConfigError, OptimConfig, ScheduleWarning, TrainConfig
from absld_core.methods import registry
from train_helpers import tiny

PACKAGE = Path(registry.__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "absld_core.cli"]


def _copy_of_absld(override: bool = False) -> str:
    """absld.py as a user would copy it into a file of their own (class still named ABSLD), with a loss
    that cannot be mistaken for ABSLD's."""
    src = (PACKAGE / "methods" / "absld.py").read_text()
    src = src.replace("from ..", "from absld_core.").replace("from .", "from absld_core.methods.")
    if override:
        src = src.replace('@register("absld",', '@register("absld", override=True,')
        assert "override=True" in src
    return src + '''

import torch.nn.functional as _F
from absld_core.methods import StepOutput as _Out


def _plain_ce(self, x, y, ctx):
    with ctx.autocast():
        (z,) = ctx.forward(x)
    return _Out(_F.cross_entropy(z.float(), y), y, nat_logits=z)


ABSLD.step = _plain_ce
'''


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != registry.PLUGIN_ENV}
    env.update(extra)
    return env


def _cli(args, env, cwd=None, timeout=300):
    return subprocess.run(CLI + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def teacher(tmp_path):
    from absld_core import train
    return train(tiny("teacher", "trades", tmp_path / "runs", optim__epochs=1))


def _absld_cfg(tmp_path, teacher, name="student"):
    cfg = tiny(name, "absld", tmp_path / "runs", optim__epochs=1)
    cfg["method"]["teacher"] = {"checkpoint": str(teacher)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_plugin_that_reuses_a_built_in_name_is_refused_in_every_entry_point(tmp_path, teacher):
    plugin = tmp_path / "my_absld.py"
    plugin.write_text(_copy_of_absld())
    env = _env(**{registry.PLUGIN_ENV: str(plugin)})
    cfg = _absld_cfg(tmp_path, teacher)
    for args in (["methods"], ["train", "--config", str(cfg)]):
        r = _cli(args, env)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "already registered" in lines[0] and str(plugin) in lines[0] \
            and "override=True" in lines[0], r.stderr
    assert not (tmp_path / "runs" / "student").exists()     # nothing was trained under the clash


def test_an_override_replaces_the_built_in_for_every_caller_and_the_run_records_its_file(tmp_path, teacher):
    plugin = tmp_path / "my_absld.py"
    plugin.write_text(_copy_of_absld(override=True))
    env = _env(**{registry.PLUGIN_ENV: str(plugin)})
    # a fresh process asks for the class by name first (no listing before it): the plugin's
    probe = subprocess.run([sys.executable, "-c", "from absld_core.methods import registry; "
                            "import inspect; print(inspect.getfile(registry.get('absld')))"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()) == plugin.resolve()
    r = _cli(["train", "--config", str(_absld_cfg(tmp_path, teacher))], env)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "student"
    src = json.loads((run / "config.json").read_text())["resolved"]["method_source"]
    assert Path(src["file"]) == plugin.resolve() and len(src["sha256"]) == 16
    hist = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    # the plugin's step (plain cross-entropy on clean images) trained it, not ABSLD's adversarial one
    assert "class_risk_adv" not in hist[0] and "class_risk_nat" in hist[0]

    # read again without the variable, it would silently be the built-in ABSLD: refused, naming both
    with pytest.raises(ConfigError, match=rf"{registry.PLUGIN_ENV}=.*my_absld\.py"):
        TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    r = _cli(["train", "--config", str(run / "config.json"), "--resume"], _env())
    assert r.returncode == 2 and "my_absld.py" in r.stderr, r.stderr


def test_reading_a_run_of_a_plugin_method_without_the_variable_names_the_variable_and_file(tmp_path):
    plugin = tmp_path / "toy_at.py"
    plugin.write_text('''
from dataclasses import dataclass
import torch.nn.functional as F
from absld_core import attacks as A
from absld_core.methods import Method, Options, StepOutput, register

@dataclass(frozen=True)
class ToyOptions(Options):
    gain: float = 1.0

@register("toy_plugin_at", options=ToyOptions)
class ToyAT(Method):
    def step(self, x, y, ctx):
        x_adv = A.pgd(ctx.raw, x, y, ctx.eps, ctx.alpha, ctx.steps, validate=False)
        (z,) = ctx.forward(x_adv)
        return StepOutput(self.options.gain * F.cross_entropy(z.float(), y), y, adv_logits=z)
''')
    cfg = tiny("toy", "pgd_at", tmp_path / "runs", optim__epochs=1, method={"name": "toy_plugin_at"})
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(cfg))
    r = _cli(["train", "--config", str(tmp_path / "toy.yaml")], _env(**{registry.PLUGIN_ENV: str(plugin)}))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "toy"
    # --resume and the Python API, without ABSLD_METHODS
    r = _cli(["train", "--config", str(run / "config.json"), "--resume"], _env())
    assert r.returncode == 2 and registry.PLUGIN_ENV in r.stderr and str(plugin.resolve()) in r.stderr, r.stderr
    assert "toy_plugin_at" not in registry.names()
    with pytest.raises(ConfigError, match=rf"set {registry.PLUGIN_ENV}=.*toy_at\.py to read the run"):
        TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    # a config that never ran: the variable is named too
    with pytest.raises(ConfigError, match=rf"{registry.PLUGIN_ENV} \(unset now\)"):
        TrainConfig.from_dict(cfg)


@pytest.mark.parametrize("body, expect", [
    ("def broken(:\n", r"syntax error at line 1"),
    ("raise RuntimeError('no GPU here')\n", r"importing it raised RuntimeError: no GPU here"),
    ("import package_that_is_not_installed\n", r"imports 'package_that_is_not_installed', which is not installed"),
    ("from absld_core.methods import Method, register\n@register('bad_opts', options=dict)\n"
     "class Bad(Method):\n    pass\n", r"options=<class 'dict'> must be a dataclass"),
])
def test_a_plugin_file_that_cannot_load_is_one_line_naming_it(tmp_path, body, expect):
    plugin = tmp_path / "plugin_x.py"
    plugin.write_text(body)
    r = _cli(["methods"], _env(**{registry.PLUGIN_ENV: str(plugin)}))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "plugin_x.py" in lines[0] and __import__("re").search(expect, lines[0]), lines[0]


@pytest.mark.slow
def test_relative_plugin_and_preset_paths_survive_the_sweeps_change_of_directory(tmp_path):
    from test_spine import TOY, write_preset

    work = tmp_path / "work"
    (work / "mine").mkdir(parents=True)
    (work / "mine" / "toy_method.py").write_text(TOY)
    write_preset(work / "mine", "toyrel", notebooks=["03_students"], methods="toy_gain_at", seeds=[0], toy_gain=0.5)
    out = tmp_path / "elsewhere"
    out.mkdir()
    env = _env(**{registry.PLUGIN_ENV: os.path.join("mine", "toy_method.py")})
    r = _cli(["sweep", "--preset", os.path.join("mine", "toyrel.yaml"), "--out", str(out)], env, cwd=work,
             timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    run = out / "runs" / "toyrel" / "s0" / "student-toy_gain_at"
    assert json.loads((run / "config.json").read_text())["method"]["gain"] == 0.5


def test_a_schedule_whose_decays_collapse_on_a_short_run_says_so():
    with pytest.warns(ScheduleWarning, match=r"paper300 over 1 epoch\(s\) applies 3 of its lr decays at once "
                                             r"from epoch 1 \(lr x0\.001"):
        OptimConfig(epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleWarning)
        OptimConfig(epochs=300)             # 215, 260, 285: apart
        OptimConfig(epochs=20)              # 15, 18, 20: apart
        OptimConfig(epochs=2, schedule="constant")
