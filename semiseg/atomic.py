"""Atomic file writes: a temporary name beside the target, then a rename, so a crash never leaves half a
file and a reader never sees one. The bottom floor of the package: everything that writes results,
caches or configuration uses these (numpy only)."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def replacing(path: str | Path, suffix: str) -> Iterator[str]:
    """A temporary file name beside ``path`` (ending in ``suffix``, for writers that go by the ending) that
    is renamed onto ``path`` when the block ends without error, and removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def is_temporary(path: Path) -> bool:
    """Whether a file name is one of :func:`replacing`'s temporaries (``.<name>.<random>.tmp<suffix>``)."""
    return path.name.startswith(".") and ".tmp" in path.name and path.name.count(".") >= 3


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries a killed writer left in ``folder``; call only while no writer is live there (under
    its folder lock). Returns what was removed."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and is_temporary(p):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def make_folder(path: str | Path, what: str = "output folder") -> Path:
    """Create a folder (and its parents), or say which part of its path is a file: ``mkdir`` would raise a bare
    FileExistsError / NotADirectoryError naming neither."""
    path = Path(path)
    for part in [path, *path.parents]:
        if part.exists():
            if not part.is_dir():
                raise ValueError(f"{path}: cannot make the {what}: {part} is a file, not a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{path}: cannot make the {what}: {e.strerror or e}") from None
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    with replacing(path, Path(path).suffix) as tmp:
        Path(tmp).write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with replacing(path, Path(path).suffix) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> None:
    with replacing(path, ".npy") as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def link_or_copy(src: str | Path, dst: str | Path, how: str = "hard") -> None:
    """Make ``dst`` a hard link to ``src`` (no extra disk; ``how="hard"``), a symbolic link (``"symbolic"``: the
    target stays where it is) or a copy (``"copy"``: an independent file); a link falls back to a copy across file
    systems. Written under a temporary name then renamed; an existing target is kept."""
    if how not in ("hard", "symbolic", "copy"):
        raise ValueError(f"link_or_copy: how must be 'hard', 'symbolic' or 'copy', not {how!r}")
    dst = Path(dst)
    if dst.exists():
        return
    if not Path(src).is_file():  # a symbolic link would not notice, and leave a dangling one
        raise FileNotFoundError(f"{src}: no such file to link or copy to {dst}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    try:
        if how == "copy":
            shutil.copyfile(src, tmp)
        else:
            try:
                if how == "hard":
                    os.link(src, tmp)
                else:  # absolute: a relative target would be read from dst's folder
                    os.symlink(os.path.abspath(src), tmp)
            except OSError:
                shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def save_png(fig: Any, path: str | Path, dpi: int = 90) -> Path:
    """Save a matplotlib figure to ``path`` through :func:`replacing`, then close it if pyplot manages it (a plain
    ``Figure`` on its own canvas has no manager: pyplot, and its global backend, are never imported for it)."""
    path = Path(path)
    try:
        with replacing(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None and getattr(getattr(fig, "canvas", None), "manager", None) is not None:
            plt.close(fig)
    return path
