"""Scores after post-processing: the benchmark's ``postprocess`` steps applied to each run's saved test
predictions, evaluated again, and kept beside the raw scores.

The raw predictions are what a method learned; post-processing (the FLARE22 self-learning paper's
organ-aware clean-up, here any ``semiseg.postprocess`` pipeline) is a fixed function of them, so it is
applied after the fact, to old and new runs alike, and never enters a piece's key: changing the steps
rescores every piece without retraining anything. Stray far-away blobs dominate HD95 and ASD of an
undertrained model; these numbers show how much of that a clean-up removes.
"""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from semiseg.data.cases import IMAGE_ENDINGS
from semiseg.data.io import atomic_write_json, read_array, write_segmentation

KEY = "test_postprocessed"


def build_pipeline(steps: Sequence[Mapping[str, Any]], dataset: Path) -> Any:
    """The pipeline of a config's ``postprocess`` list, resolved against the dataset's labels."""
    from semiseg.evaluation.evaluate import read_dataset_json
    from semiseg.postprocess import Pipeline

    labels, _ = read_dataset_json(dataset / "dataset.json")
    return Pipeline.from_config(list(steps), labels)


def postprocess_folder(pred_dir: Path, out_dir: Path, pipeline: Any) -> list[Path]:
    """Apply ``pipeline`` to every label map in ``pred_dir``; written atomically under ``out_dir``."""
    files = sorted(p for p in pred_dir.iterdir() if p.name.endswith(IMAGE_ENDINGS))
    if not files:
        raise FileNotFoundError(f"{pred_dir}: no predictions to post-process")
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a previous pipeline's outputs; never mixed with this one's
    out_dir.mkdir(parents=True)
    written = []
    for f in files:
        seg, geo = read_array(f)
        write_segmentation(pipeline(seg, geo.spacing_zyx), geo, out_dir / f.name)
        written.append(out_dir / f.name)
    return written


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path``: benchmark processes running side by side score a piece once."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one process per benchmark there
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_current(piece: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]) -> bool:
    return piece.get(KEY, {}).get("steps") == [dict(s) for s in steps]


def score_piece(piece_path: Path, steps: Sequence[Mapping[str, Any]], dataset: Path, progress: bool = False) -> bool:
    """Add (or refresh) the post-processed scores of one finished piece; False when already current.

    Uses the test predictions and references the piece recorded; the piece file is rewritten atomically."""
    with _locked(piece_path):
        return _score_piece(piece_path, [dict(s) for s in steps], dataset, progress)


def _score_piece(piece_path: Path, steps: list[dict[str, Any]], dataset: Path, progress: bool) -> bool:
    from semiseg.evaluation.evaluate import evaluate_folders

    piece = json.loads(piece_path.read_text())
    if is_current(piece, steps):
        return False
    test = piece["test"]
    pred_dir, ref_dir = Path(test["pred_dir"]), Path(test["ref_dir"])
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{piece_path}: its test predictions {pred_dir} are gone; rerun the piece to rescore it")
    out_dir = pred_dir.with_name(pred_dir.name + "_postprocessed")
    postprocess_folder(pred_dir, out_dir, build_pipeline(steps, dataset))
    eval_file = out_dir.with_suffix(".json")
    evaluate_folders(out_dir, ref_dir, dataset / "dataset.json", eval_file, progress=progress)
    result = json.loads(eval_file.read_text())
    piece[KEY] = {k: result[k] for k in ("cases", "mean", "foreground_mean")} | {"steps": steps, "pred_dir": str(out_dir)}
    atomic_write_json(piece_path, piece)
    return True
