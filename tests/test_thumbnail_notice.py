"""Images drawn from a dataset carry its terms: the NOTICE beside each benchmark's thumbnails."""
from __future__ import annotations

import json
from pathlib import Path

from semiseg.benchmark.thumbnails import NOTICE, data_notice, write_data_notice

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _dataset(root: Path, **meta: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"name": "Toy", "labels": {"background": 0, "organ": 1}, **meta}))
    return root


def test_the_notice_states_the_datasets_provenance_and_follows_it(tmp_path):
    data = _dataset(tmp_path / "data", provenance="Toy challenge, licence CC BY-NC-SA 4.0")
    path = write_data_notice(tmp_path / "thumbs", data)
    assert path == tmp_path / "thumbs" / NOTICE
    text = path.read_text()
    assert "Toy" in text and "CC BY-NC-SA 4.0" in text
    assert write_data_notice(tmp_path / "thumbs", data).read_text() == text  # idempotent
    _dataset(tmp_path / "data", provenance="Toy challenge, licence CC BY 4.0")
    assert "CC BY 4.0" in write_data_notice(tmp_path / "thumbs", data).read_text()  # follows the dataset


def test_no_notice_where_the_dataset_states_no_terms(tmp_path):
    data = _dataset(tmp_path / "data")
    assert data_notice(data) is None
    assert write_data_notice(tmp_path / "thumbs", data) is None
    assert not (tmp_path / "thumbs").exists()


def test_committed_chaos_thumbnails_carry_the_cc_by_nc_sa_notice():
    folders = sorted(p for p in RESULTS.glob("**/chaos*_thumbnails") if any(p.glob("*.png")))
    assert folders, "the committed CHAOS-SSL results keep thumbnails"
    for folder in folders:
        notice = folder / NOTICE
        assert notice.is_file(), f"{folder.name} has CHAOS images but no {NOTICE}"
        assert "CC BY-NC-SA 4.0" in notice.read_text(), folder.name
