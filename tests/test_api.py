"""The public Python API: README's example runs as written (at a tiny budget) on the embedded sample, and
``import semiseg`` stays light (no torch until a name that needs it is used)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README.md lost its API example"
    return block.group(1)


def test_readme_example_runs_on_the_embedded_sample(tmp_path, monkeypatch, capsys):
    import torch

    code = readme_example()
    assert "iterations=3000" in code
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code.replace("iterations=3000", "iterations=2"), "README.md", "exec"), {})
    finally:
        torch.set_num_threads(before)
    assert sorted(p.name for p in (tmp_path / "runs" / "api_example" / "pred").glob("*.nii.gz")) == [
        f"chaos_{i:03d}.nii.gz" for i in range(14, 20)]  # the sample's 6 test cases
    assert (tmp_path / "runs" / "api_example" / "metrics.json").is_file() and "DSC" in capsys.readouterr().out


def test_import_semiseg_is_light_and_names_resolve():
    out = subprocess.run([sys.executable, "-c", "import sys, semiseg; print('torch' in sys.modules); "
                          "print(semiseg.TrainConfig.__name__, 'torch' in sys.modules)"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "TrainConfig", "False"]  # config is torch-free too
    import semiseg

    assert {"create_run", "train_fold", "Predictor", "evaluate_folders", "run_selftrain", "run_benchmark"} <= set(dir(semiseg))
    for name in semiseg._API:  # every advertised name resolves (a wrong module path fails here)
        assert getattr(semiseg, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        semiseg.nope
