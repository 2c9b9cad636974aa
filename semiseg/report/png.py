"""Writing a matplotlib figure as a PNG the way every report file is written: through semiseg.atomic's
``replacing`` (a unique temporary name in the target folder, then a rename), so a reader never sees half a
picture and two writers never share a temp file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from semiseg.atomic import replacing


def save_png(fig: Any, path: str | Path, dpi: int = 90) -> Path:
    """Save ``fig`` to ``path`` atomically and close it (pyplot figures are freed; plain Figures are unaffected)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with replacing(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return path
