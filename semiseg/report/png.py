"""Writing a matplotlib figure as a PNG the way every report file is written: a unique temporary name in the
target folder, then a rename, so a reader never sees half a picture and two writers never share a temp file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def save_png(fig: Any, path: str | Path, dpi: int = 90) -> Path:
    """Save ``fig`` to ``path`` atomically and close it (pyplot figures are freed; plain Figures are unaffected)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        plt.close(fig)
    return path
