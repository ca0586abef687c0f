"""What a method did on a fixed seed: per-epoch losses, class risks, temperatures, class weights, the
kept fraction and a fingerprint of the final weights. tests/data/method_reference*.json hold these
traces, each for the kinds of CPU it names (`cpu_kinds`): method_reference.json as recorded from the code
before the one-file-method refactor (commit 527798c); test_method_contract.py checks that every method
still produces them. The traces depend on the CPU's kernels (torch's vectorised kernels, and oneDNN/MKL,
which choose their code by vendor and ISA), so a kind without one is skipped there; record one with
`python tests/method_trace.py` from code that reproduces an existing reference on a CPU that has one."""
import json
import platform
from pathlib import Path

import torch

from absld_core import train
from absld_core.precision import cpu_info
from absld_core.runs import RunDir
from train_helpers import tiny

# name -> (method name, method options, extra overrides); every variant of the pre-refactor methods
VARIANTS = {
    "natural_smoothed": ("natural", {"label_smoothing": [0.0, 0.1, 0.2, 0.3]}, {}),
    "pgd_at": ("pgd_at", {}, {}),
    "trades": ("trades", {"beta": 3.0}, {}),
    "rslad": ("rslad", {}, {}),
    "absld": ("absld", {"eta": 0.3}, {"optim__schedule": "milestones", "optim__milestones": [1]}),
    "absld_coupled_fair": ("absld", {"eta": 0.2, "coupled_temperatures": True, "fair_reweight": True,
                                     "tau_init_adv": [1.0, 1.5, 2.0, 1.0]}, {}),
    "absld_table": ("absld", {"temperature_schedule": "table", "tau_table_adv": [[1, 2, 3, 4], [2, 2, 2, 2]]}, {}),
    "ham": ("ham", {"ham_start_epoch": 2}, {}),
    "ham_hardness": ("ham", {"ham_weighting": "hardness", "label_smoothing": 0.1}, {}),
    "absld_ham": ("absld_ham", {"eta": 0.2}, {}),
    "absld_ham_fair": ("absld_ham", {"fair_reweight": True, "ham_start_epoch": 2}, {}),
}
KEYS = ("loss", "class_risk_adv", "class_risk_nat", "tau_adv", "tau_nat", "eta", "class_weights",
        "class_mean_steps", "kept_fraction")


DATA = Path(__file__).parent / "data"


def cpu_kind(cpuinfo="/proc/cpuinfo") -> str:
    """The facts that choose this CPU's fp32 kernels: torch's capability, the vendor (MKL and oneDNN
    dispatch on it) and AMX (oneDNN's top ISA level), e.g. "AVX512 AuthenticAMD", "AVX512 GenuineIntel AMX"."""
    info = cpu_info(cpuinfo)
    return " ".join([torch.backends.cpu.get_cpu_capability(), info.get("vendor_id", platform.processor() or "unknown")]
                    + (["AMX"] if "amx_tile" in info["flags"] else []))


def references() -> dict[str, Path]:
    """CPU kind -> the recorded file of traces for it."""
    found = {}
    for path in sorted(DATA.glob("method_reference*.json")):
        for kind in json.loads(path.read_text()).get("cpu_kinds", []):
            found[kind] = path
    return found


def trace(variant: str, out_dir, teacher_dir) -> dict:
    name, opts, over = VARIANTS[variant]
    method = {"name": name, **({"ham_early_steps": 2} if "ham" in name else {}), **opts}
    if name in ("rslad", "absld", "absld_ham"):
        method["teacher"] = {"checkpoint": str(teacher_dir)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # recorded on one thread: the reduction order (and rounding) of every CPU kernel
    try:
        run = train(tiny(variant, name, out_dir, method=method, **over))
    finally:
        torch.set_num_threads(threads)
    hist = RunDir(run).history()
    weights = torch.load(run / "last.pt", weights_only=True)["model"]
    return {"history": [{k: h[k] for k in KEYS if k in h} for h in hist],
            "weight_sum": float(sum(v.double().sum() for k, v in weights.items() if v.is_floating_point())),
            "weight_abs": float(sum(v.double().abs().sum() for k, v in weights.items() if v.is_floating_point()))}


def teacher(out_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(tiny("teacher", "natural", out_dir, optim__epochs=3))
    finally:
        torch.set_num_threads(threads)


def record(out_dir) -> Path:
    """Record every variant's trace for this CPU kind, into a new file (an existing kind is refused)."""
    import subprocess
    kind, recorded = cpu_kind(), references()
    if kind in recorded:
        raise SystemExit(f"traces for {kind!r} are recorded already in {recorded[kind].name}")
    out_dir = Path(out_dir)
    teacher_dir = teacher(out_dir / "teacher")
    traces = {v: trace(v, out_dir / v, teacher_dir) for v in sorted(VARIANTS)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=DATA).stdout.strip()
    path = DATA / f"method_reference_{kind.lower().replace(' ', '_')}.json"
    model = cpu_info().get("model name", platform.processor())
    path.write_text(json.dumps({"recorded_at_commit": commit, "cpu_kinds": [kind], "cpu": model,
                                "torch": torch.__version__, "traces": traces}, indent=1) + "\n")
    return path


if __name__ == "__main__":  # python tests/method_trace.py: record this CPU kind's traces
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        print(f"recorded {record(tmp)}")
