"""The GPU check's one command, rehearsed on the CPU (`bash bench/gpu/run.sh --rehearse`): every stage runs
on the same code paths, tiny; the CUDA tests are skipped with their reason; the comparison is trained
through `absld sweep` and summarised by `absld summary`; at most 8 files come back; the carry is
measured against the device tool's 64 MiB. So the script cannot rot between GPUs."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_the_gpu_check_rehearses_every_stage_on_the_cpu(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "GPU_WORK": str(work)}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "run.sh"), "--rehearse"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"run.log", "stages.txt", "speed.json", "comparison.md", "cuda_tests.log"} <= set(files)
    stages = dict(line.split() for line in (out / "stages.txt").read_text().splitlines())
    assert stages == {"setup": "0", "cuda_tests": "0", "speed": "0", "comparison": "0"}, stages
    assert "SKIPPED" in (out / "cuda_tests.log").read_text() and "no CUDA device" in (out / "cuda_tests.log").read_text()
    speed = json.loads((out / "speed.json").read_text())
    assert speed and all("ours" in v for v in speed.values())
    comparison = (out / "comparison.md").read_text()
    assert "## pgd20: mean over seeds [95% interval]" in comparison and "| ABSLD |" in comparison
    assert "(b) ABSLD beats RSLAD" in comparison and "per_seed.csv" in comparison
    log = (out / "run.log").read_text()
    m = re.search(r"carry: total\s+([\d.]+) MiB of the 64 MiB limit", log)
    assert m and float(m.group(1)) <= 64, log[-2000:]
