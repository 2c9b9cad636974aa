"""A run's recorded commit: ``-dirty`` for changed code, not for the results files a job beside it rewrites."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from semiseg.benchmark.results import git_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("table\n")
    (tmp_path / "benchmarks" / "results" / "bench.json").write_text("{}\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return tmp_path


def test_clean_checkout_is_its_commit(repo: Path) -> None:
    assert git_commit(repo) == _git(repo, "rev-parse", "HEAD")


def test_results_and_readme_table_changes_are_not_dirty(repo: Path) -> None:
    (repo / "benchmarks" / "results" / "bench.json").write_text('{"runs": []}\n')
    (repo / "README.md").write_text("table, regenerated\n")
    assert git_commit(repo) == _git(repo, "rev-parse", "HEAD")


def test_changed_code_is_dirty(repo: Path) -> None:
    (repo / "code.py").write_text("x = 2\n")
    assert git_commit(repo) == _git(repo, "rev-parse", "HEAD") + "-dirty"
