"""semiseg.atomic: the one place files are written through a temporary name, linked or copied."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from semiseg.atomic import link_or_copy, replacing, save_png


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_link_or_copy_makes_the_kind_of_file_asked_for(tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_text("a")
    link_or_copy(src, tmp_path / "hard.txt")
    link_or_copy(src, tmp_path / "sym.txt", how="symbolic")
    link_or_copy(src, tmp_path / "copy.txt", how="copy")
    assert os.stat(tmp_path / "hard.txt").st_ino == os.stat(src).st_ino
    assert (tmp_path / "sym.txt").is_symlink() and os.readlink(tmp_path / "sym.txt") == str(src)
    assert not (tmp_path / "copy.txt").is_symlink() and os.stat(tmp_path / "copy.txt").st_ino != os.stat(src).st_ino
    src.write_text("b")  # a copy is independent of later changes to the source
    assert (tmp_path / "copy.txt").read_text() == "a" and (tmp_path / "sym.txt").read_text() == "b"
    assert _leftovers(tmp_path) == []


def test_link_or_copy_keeps_an_existing_target_and_refuses_unknown_kinds(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.txt", tmp_path / "dst.txt"
    src.write_text("new")
    dst.write_text("old")
    link_or_copy(src, dst, how="copy")
    assert dst.read_text() == "old"
    with pytest.raises(ValueError, match="'hard', 'symbolic' or 'copy'"):
        link_or_copy(src, tmp_path / "x.txt", how="move")


@pytest.mark.parametrize("how", ["hard", "symbolic", "copy"])
def test_link_or_copy_refuses_a_missing_source_and_leaves_nothing(tmp_path: Path, how: str) -> None:
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        link_or_copy(tmp_path / "absent.txt", tmp_path / "dst.txt", how=how)
    assert not (tmp_path / "dst.txt").is_symlink() and not (tmp_path / "dst.txt").exists() and _leftovers(tmp_path) == []


def test_a_symbolic_link_from_a_relative_source_points_at_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "src.txt").write_text("a")
    monkeypatch.chdir(tmp_path)
    link_or_copy("src.txt", tmp_path / "sub" / "link.txt", how="symbolic")
    assert (tmp_path / "sub" / "link.txt").read_text() == "a"


def test_replacing_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(target, ".json") as tmp:
            Path(tmp).write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


def test_save_png_writes_a_png_and_keeps_the_old_one_on_failure(tmp_path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    FigureCanvasAgg(fig)
    fig.subplots().plot([0, 1], [1, 0])
    out = save_png(fig, tmp_path / "sub" / "f.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    class Broken:
        def savefig(self, *a: object, **k: object) -> None:
            Path(a[0]).write_bytes(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_png(Broken(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and _leftovers(out.parent) == []
