"""``semiseg predict --shard i/n``: n jobs of any scheduler, one output folder, every case predicted once."""
from __future__ import annotations

from pathlib import Path

import pytest

from semiseg.cli import main
from semiseg.data.cases import parse_shard, shard_of
from synthetic_data import make_dataset, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CASES = [f"c{i}" for i in range(5)]


def test_shards_partition_the_sorted_cases_whatever_the_input_order() -> None:
    names = [f"case_{i:03d}" for i in range(11)]
    for n in (1, 2, 3, 4, 11, 12):
        shards = [shard_of(list(reversed(names)), i, n) for i in range(n)]
        assert sum(shards, []) == names  # contiguous blocks of the sorted names, each case once
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shard_of(names, 0, 3) == shard_of(sorted(names, key=hash), 0, 3)


@pytest.mark.parametrize("text", ["2/2", "-1/3", "0/0", "1", "a/b", "1/2/3", ""])
def test_a_bad_shard_is_refused_with_the_rule(text: str) -> None:
    with pytest.raises(ValueError, match="i/n|0 <= i < n"):
        parse_shard(text)
    assert parse_shard(" 3 / 4 ") == (3, 4)


def test_predict_shards_write_disjoint_case_sets_covering_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from semiseg.run import create_run

    ds = make_dataset(tmp_path / "raw", ["lab_0", "lab_1"], test=CASES)
    run = create_run(ds, tmp_path / "run", base_features=4, overrides=tiny_overrides(), progress=False)
    assert main(["--quiet", "train", str(run.root), "--fold", "all", "--iterations", "1"]) == 0
    model, inp, out = run.root / "supervised" / "fold_all", tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for c in CASES:
        (inp / f"{c}_0000.nii.gz").symlink_to(ds / "imagesTr" / f"{c}_0000.nii.gz")
    seen: list[set[str]] = []
    for i in range(3):
        before = {p.name for p in out.glob("*.nii.gz")}
        assert main(["--quiet", "predict", "--model", str(model), "--input", str(inp), "--output", str(out), "--step", "1.0",
                     "--shard", f"{i}/3"]) == 0
        seen.append({p.name for p in out.glob("*.nii.gz")} - before)
    assert [len(s) for s in seen] == [1, 2, 2] and set().union(*seen) == {f"{c}.nii.gz" for c in CASES}
    capsys.readouterr()
    assert main(["--quiet", "predict", "--model", str(model), "--input", str(inp), "--output", str(out), "--shard", "3/3"]) == 2
    assert "0 <= i < n" in capsys.readouterr().err


def test_a_record_never_vouches_for_a_map_another_prediction_rewrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Model A into OUT, then B over shard 0 with --overwrite, then A again: A's record still names shard 0's files,
    but they now hold B's labels, so A must refuse them (it would otherwise keep B's maps as its own)."""
    from semiseg.run import create_run

    ds = make_dataset(tmp_path / "raw", ["lab_0", "lab_1"], test=CASES)
    run = create_run(ds, tmp_path / "run", base_features=4, overrides=tiny_overrides(), progress=False)
    for name, seed in (("a", "0"), ("b", "1")):
        assert main(["--quiet", "train", str(run.root), "--fold", "all", "--iterations", "1", "--name", name, "--seed", seed]) == 0
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for c in CASES:
        (inp / f"{c}_0000.nii.gz").symlink_to(ds / "imagesTr" / f"{c}_0000.nii.gz")

    def predict(model: str, *extra: str) -> int:
        return main(["--quiet", "predict", "--model", str(run.root / model / "fold_all"), "--input", str(inp), "--output", str(out),
                     "--step", "1.0", *extra])

    assert predict("a") == 0
    assert predict("b", "--overwrite", "--shard", "0/2") == 0
    capsys.readouterr()
    assert predict("a") == 2
    assert "another model or other options" in capsys.readouterr().err
    assert predict("a", "--overwrite") == 0 and predict("a") == 0  # replaced, then resumable again
