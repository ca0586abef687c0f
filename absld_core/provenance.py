"""What a run records about the code and the machine that made its numbers: the torch version, the
intra-op thread count (bf16 on a CPU gives other weights with another count), the package's code hash,
the git commit where there is one, and the file that defined the run's method."""
from __future__ import annotations

import functools
import hashlib
import inspect
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """sha256 (16 hex digits) over the package's .py files, paths included."""
    h = hashlib.sha256()
    for f in sorted((ROOT / "absld_core").rglob("*.py")):
        h.update(f.relative_to(ROOT).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit, with '+dirty' when tracked files differ from it; None outside a git checkout."""
    if not (ROOT / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                                "absld_core"], capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def method_source(method_cls: type) -> dict:
    """The module and file that define a method class, and the file's content hash."""
    module = method_cls.__module__
    try:
        path = Path(inspect.getfile(method_cls)).resolve()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except (TypeError, OSError):
        path, digest = None, None
    return {"module": module, "file": str(path) if path else None, "sha256": digest}


def record(method=None) -> dict:
    """The provenance fields of a run's config.json `resolved` block."""
    import torch

    out = {"torch": torch.__version__, "intra_op_threads": torch.get_num_threads(), "code_hash": code_hash(),
           "git_commit": git_commit()}
    if method is not None:
        out["method_source"] = method_source(type(method))
    return out
