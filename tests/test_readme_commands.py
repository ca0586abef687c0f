"""The README's commands work as written: every `absld` line of its shell blocks parses with the real
command line (flags and values), every file it names exists or is made by a line before it, and the
quick ones run, in order, in a fresh folder (the trainings with one epoch and two test attacks
appended, which `--set` allows on any of them)."""
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _absld_lines() -> list[list[str]]:
    out, lang = [], None
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            lang = line[3:].strip() or "text" if lang is None else None
            continue
        if lang in ("bash", "sh", "shell"):
            line = line.split("  #")[0].strip()
            if line.startswith("absld "):
                out.append(shlex.split(line)[1:])
    return out


def test_every_absld_line_of_the_readme_parses_and_names_files_that_exist_or_come_before():
    from absld_core.cli import build_parser

    lines = _absld_lines()
    assert len(lines) >= 8 and {a[0] for a in lines} >= {"train", "eval", "methods", "study", "sweep", "summary"}
    made = set()
    for args in lines:
        ns = build_parser().parse_args(args)  # SystemExit on an unknown flag or a bad value
        for flag in ("--config", "--checkpoint"):
            if flag in args:
                path = args[args.index(flag) + 1]
                assert (ROOT / path).exists() or any(path.startswith(m) for m in made), f"{args}: {path} does not exist"
        if args[0] == "train":
            cfg = args[args.index("--config") + 1]
            name = next((a.split("=", 1)[1] for a in args if a.startswith("name=")), None)
            if cfg.startswith("presets/"):
                import yaml
                name = name or yaml.safe_load((ROOT / cfg).read_text())["name"]
            made.add(f"runs/train/{name}")
        assert ns is not None


@pytest.mark.slow
def test_the_readmes_training_and_evaluation_lines_run_in_order_on_a_fresh_folder(tmp_path):
    (tmp_path / "presets").symlink_to(ROOT / "presets")
    quick = {"train", "eval", "methods"}
    tiny = ["--set", "optim.epochs=1", "--set", "attack.test_attacks=clean,fgsm"]
    ran = []
    for args in _absld_lines():
        if args[0] not in quick:
            continue
        cmd = [sys.executable, "-m", "absld_core.cli", *args]
        if args[0] == "train":
            cmd += tiny
        if args[0] == "eval":
            cmd[cmd.index("--attacks") + 1] = "clean,fgsm"
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{' '.join(args)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        ran.append(args[0])
    assert ran.count("train") >= 3 and "eval" in ran and "methods" in ran
    assert (tmp_path / "runs" / "train" / "absld" / "metrics.json").is_file()
