"""One way to write a file so that a reader never sees half of it: write a temporary file beside it
(a unique name, never a fixed one), flush it to disk, then rename it over the target. On any failure
the temporary file is removed and the target is left as it was. Imports nothing from the package."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, IO


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True,
                 suffix: str = ".tmp") -> Path:
    """write(f) fills the open temporary file f; then it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
