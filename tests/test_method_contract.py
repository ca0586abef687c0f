"""The method contract: one file per method, the registry as the only list, and the same numbers as
before the refactor that introduced it (traces recorded from the code at commit 527798c)."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from absld_core.methods import registry
from method_trace import DATA, VARIANTS, cpu_kind, references, teacher, trace

# The traces depend on the CPU's kernels (AVX-512 and AVX2 round differently, a PGD sign flips, and an
# Intel Xeon with AMX moves natural_smoothed's loss by 2e-3): one reference per kind of CPU, found by the
# kinds each file lists (method_trace.cpu_kind).
CPU_KIND = cpu_kind()
_RECORDED = references()
REFERENCE = json.loads(_RECORDED[CPU_KIND].read_text())["traces"] if CPU_KIND in _RECORDED else None
PACKAGE = Path(__file__).resolve().parents[1] / "absld_core"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return teacher(tmp_path_factory.mktemp("teacher"))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_method_computes_what_it_did_before_the_refactor(variant, teacher_dir, tmp_path):
    """Losses, class risks, temperatures, Fair-ARD weights, kept fractions and the final weights of every
    variant of the pre-refactor methods, on fixed seeds in fp32, equal the recorded ones (float
    rounding). RSLAD no longer records its constant temperatures of 1 and its unused eta."""
    if REFERENCE is None:
        pytest.skip(f"no recorded traces for this kind of CPU ({CPU_KIND}); recorded: {', '.join(_RECORDED)} "
                    "(python tests/method_trace.py records one)")
    ref, new = REFERENCE[variant], trace(variant, tmp_path, teacher_dir)
    assert len(new["history"]) == len(ref["history"])
    for r, n in zip(ref["history"], new["history"]):
        dropped = {"tau_adv", "tau_nat", "eta"} if VARIANTS[variant][0] == "rslad" else set()
        assert set(r) - dropped == set(n), (set(r), set(n))
        if dropped and "tau_adv" in r:  # the 527798c traces have them; later recordings do not
            assert np.allclose(r["tau_adv"], 1.0) and np.allclose(r["tau_nat"], 1.0)
        for key in n:
            np.testing.assert_allclose(n[key], r[key], rtol=1e-5, atol=1e-7, err_msg=f"{variant}: {key}")
    assert new["weight_sum"] == pytest.approx(ref["weight_sum"], rel=1e-6)
    assert new["weight_abs"] == pytest.approx(ref["weight_abs"], rel=1e-6)


def test_the_cpu_kind_names_vendor_and_amx_and_each_kind_has_one_reference(tmp_path, monkeypatch):
    """Two CPUs with the same torch capability but another vendor or AMX are different kinds, so a trace
    recorded on one is never held against the other; no kind is listed by two files."""
    import torch
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    info = tmp_path / "cpuinfo"
    info.write_text("vendor_id\t: GenuineIntel\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_kind(info) == "AVX512 GenuineIntel AMX"
    info.write_text("vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert cpu_kind(info) == "AVX512 AuthenticAMD"
    listed = [k for p in sorted(DATA.glob("method_reference*.json")) for k in json.loads(p.read_text())["cpu_kinds"]]
    assert len(listed) == len(set(listed)) and {"AVX512 AuthenticAMD", "AVX2 AuthenticAMD"} <= set(listed)


def _method_files():
    return {name: Path(registry.get(name).__module__.replace(".", "/") + ".py").name for name in registry.names()}


def test_each_method_name_is_written_in_its_own_file_only():
    """The registry finds methods; no other module of the package names one (as a string literal)."""
    files = _method_files()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for name, own in files.items():
            if path.name == own and path.parent.name == "methods":
                assert re.search(rf"register\(\s*[\"']{name}[\"']", text), f"{name} is not registered in {own}"
                continue
            # the program's own name (command, kernel, cache folder) is not the method's
            text = re.sub(r'prog="absld"|KERNEL = "absld"|"\.cache" / "absld"', "", text)
            hits = re.findall(rf"[\"']{re.escape(name)}[\"']", text)
            assert not hits, f"{path.relative_to(PACKAGE)} names the method {name!r}"


def test_every_method_declares_its_options_and_teacher_need():
    from dataclasses import fields, is_dataclass
    for name in registry.names():
        cls = registry.get(name)
        assert cls.name == name and is_dataclass(cls.options_class)
        assert isinstance(cls.needs_teacher, bool)
        for f in fields(cls.options_class):  # every option has a default
            assert f.default is not f.default_factory or f.default_factory is not None, (name, f.name)


def _readme_example() -> str:
    text = (PACKAGE.parent / "README.md").read_text()
    section = text.split("## Adding a method", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def _package_fingerprint() -> dict:
    import hashlib
    return {str(p.relative_to(PACKAGE)): hashlib.sha256(p.read_bytes()).hexdigest() for p in PACKAGE.rglob("*.py")}


def test_a_method_of_ones_own_is_one_file_outside_the_package(tmp_path, monkeypatch):
    """The README's example, saved as one file elsewhere: trained through `absld train` (its own process)
    and through the study's student list, then removed; no file of the package changes."""
    import os
    import subprocess
    import sys

    import yaml

    from absld_core.experiments import run_or_resume, student_configs, student_methods
    from absld_core.runs import RunDir
    from train_helpers import tiny

    before = _package_fingerprint()
    plugin = tmp_path / "weighted_at.py"
    plugin.write_text(_readme_example())
    assert "weighted_at" not in registry.names()

    # 1. the command line, in a fresh process that finds the file through ABSLD_METHODS
    cfg = tiny("cli", "pgd_at", tmp_path / "runs", optim__epochs=1, method={"name": "weighted_at", "hard_weight": 3.0})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "ABSLD_METHODS": str(plugin)}
    done = subprocess.run([sys.executable, "-m", "absld_core.cli", "train", "--config", str(tmp_path / "cfg.yaml")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    hist = RunDir(tmp_path / "runs" / "cli").history()
    assert 0 <= hist[0]["hard_class"] < 4 and "class_risk_adv" in hist[0]
    bad = subprocess.run([sys.executable, "-m", "absld_core.cli", "train", "--config", str(tmp_path / "cfg.yaml"),
                          "--set", "method.hard_weight=50", "--overwrite"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "method.hard_weight=50 is invalid" in bad.stderr

    # 2. the study's student list, in this process
    monkeypatch.setenv("ABSLD_METHODS", str(plugin))
    try:
        assert "weighted_at" in student_methods()
        base = tiny("student", "pgd_at", tmp_path / "study", optim__epochs=1)
        base["method"] = {}
        configs = student_configs(base, tmp_path / "no-teacher-needed")
        assert set(configs) == set(student_methods())
        run = run_or_resume(configs["weighted_at"])
        assert (run / "metrics.json").is_file() and "hard_class" in RunDir(run).history()[0]
    finally:
        registry.unregister("weighted_at")
        monkeypatch.delenv("ABSLD_METHODS")
    assert "weighted_at" not in registry.names() and "weighted_at" not in student_methods()
    assert _package_fingerprint() == before
