"""Pairwise-Dice uncertainty, case selection, CSV and selection reports, on hand-computed examples."""
from __future__ import annotations

import csv
from itertools import combinations

import numpy as np
import pytest

from semiseg.selftrain import uncertainty as U
from semiseg.selftrain.selection_report import plot_quality_scatter, plot_uncertainty, pseudo_label_quality
from semiseg.selftrain.uncertainty import (
    PairwiseDiceAccumulator,
    SelectionConfig,
    pairwise_dice_matrix,
    read_uncertainty_csv,
    select_cases,
    selection_cutoff,
    uncertainty_score,
    write_uncertainty_csv,
)

# Three (1, 2, 4) masks. Label 7 is not scored and must be ignored.
M0 = np.array([[[1, 1, 2, 0], [0, 0, 0, 7]]], dtype=np.int16)
M1 = np.array([[[1, 0, 2, 2], [0, 0, 0, 0]]], dtype=np.int16)
M2 = np.array([[[1, 1, 0, 0], [3, 0, 7, 0]]], dtype=np.int16)
# Columns are pairs (0,1), (0,2), (1,2).
# class 1: sizes 2,1,2; intersections 1,2,1 -> 2/3, 1, 2/3
# class 2: sizes 1,2,0; (0,1) inter 1 -> 2/3; (0,2),(1,2) one empty -> 0
# class 3: sizes 0,0,1; (0,1) both empty -> 1; the others one empty -> 0
EXPECTED = np.array([[2 / 3, 1.0, 2 / 3], [2 / 3, 0.0, 0.0], [1.0, 0.0, 0.0]])


def _naive_matrix(masks: list[np.ndarray], class_ids: list[int]) -> np.ndarray:
    """Straightforward boolean-volume reference, independent of the bincount implementation."""
    cols = []
    for i, j in combinations(range(len(masks)), 2):
        col = []
        for c in class_ids:
            a, b = masks[i] == c, masks[j] == c
            denom = a.sum() + b.sum()
            col.append(1.0 if denom == 0 else 2.0 * (a & b).sum() / denom)
        cols.append(col)
    return np.array(cols).T


def test_matrix_hand_computed_including_empty_rules() -> None:
    m = pairwise_dice_matrix([M0, M1, M2], [1, 2, 3])
    assert m.shape == (3, 3)
    np.testing.assert_allclose(m, EXPECTED, rtol=0, atol=1e-12)


def test_matrix_row_order_follows_class_ids() -> None:
    m = pairwise_dice_matrix([M0, M1, M2], [3, 1])
    np.testing.assert_allclose(m, EXPECTED[[2, 0]], atol=1e-12)


def test_pair_order_is_lexicographic() -> None:
    base = np.zeros((2, 2, 2), dtype=np.uint8)
    base[0] = 1
    odd = np.zeros_like(base)  # mask 3 disagrees completely with the other three
    odd[1] = 1
    m = pairwise_dice_matrix([base, base, base, odd], [1])
    # pairs: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    np.testing.assert_array_equal(m, [[1, 1, 0, 1, 0, 0]])


def test_large_and_unscored_labels_are_ignored() -> None:
    a = np.array([[[1, 1000, 2]]], dtype=np.int32)
    b = np.array([[[1, 2, 5000]]], dtype=np.int32)
    m = pairwise_dice_matrix([a, b], [1, 2])
    np.testing.assert_allclose(m, [[1.0], [0.0]])


@pytest.mark.parametrize("chunk", [7, 1 << 22])
def test_accumulator_equals_batch_and_reference(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(U, "_CHUNK", chunk)  # small chunk exercises the chunked counting
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 5, size=(4, 5, 6)).astype(np.uint8) for _ in range(5)]
    masks[2][masks[2] == 4] = 0  # class 4 empty in one model
    acc = PairwiseDiceAccumulator([1, 2, 3, 4])
    for mk in masks:
        acc.add(mk)
    assert len(acc) == 5
    batch = pairwise_dice_matrix(masks, [1, 2, 3, 4])
    assert batch.shape == (4, 10)
    np.testing.assert_array_equal(acc.matrix(), batch)
    np.testing.assert_allclose(batch, _naive_matrix(masks, [1, 2, 3, 4]), atol=1e-12)


def test_accumulator_keeps_uint8_masks() -> None:
    acc = PairwiseDiceAccumulator([1, 2])
    acc.add(M0.astype(np.int64))
    acc.add(M1.astype(np.int64))
    assert all(m.dtype == np.uint8 and m.size == M0.size for m in acc._masks)


@pytest.mark.parametrize(
    "masks, class_ids, match",
    [
        ([M0], [1], "at least 2 masks"),
        ([M0, M1[..., :2]], [1], "shape"),
        ([M0.astype(float), M1], [1], "integer"),
        ([M0 - 2, M1], [1], "negative"),
        ([M0, M1], [], "empty"),
        ([M0, M1], [1, 1], "duplicates"),
        ([M0, M1], [0, 1], "positive"),
    ],
)
def test_matrix_bad_input(masks: list[np.ndarray], class_ids: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pairwise_dice_matrix(masks, class_ids)


HAND = np.array([[1.0, 0.8, 0.6], [0.9, 0.9, 0.9]])  # pair means 0.8, 0.9; pair mins 0.6, 0.9


@pytest.mark.parametrize(
    "pair, cls, expected",
    [("mean", "min", 0.8), ("mean", "mean", 0.85), ("min", "mean", 0.75), ("min", "min", 0.6)],
)
def test_score_reductions(pair: str, cls: str, expected: float) -> None:
    cfg = SelectionConfig(pair_reduction=pair, class_reduction=cls)  # type: ignore[arg-type]
    assert uncertainty_score(HAND, cfg) == pytest.approx(expected, abs=1e-12)


def test_default_config_is_papers_criterion() -> None:
    cfg = SelectionConfig()
    assert (cfg.threshold, cfg.pair_reduction, cfg.class_reduction, cfg.enabled) == (0.9, "mean", "min", True)
    # pair means per class: 7/9, 2/9, 1/3 -> min is class 2
    assert uncertainty_score(EXPECTED, cfg) == pytest.approx(2 / 9, abs=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"pair_reduction": "max"}, "pair_reduction"), ({"class_reduction": "median"}, "class_reduction"), ({"threshold": 1.5}, "threshold")],
)
def test_config_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SelectionConfig(**kwargs)


def test_score_bad_matrix() -> None:
    with pytest.raises(ValueError, match="2D"):
        uncertainty_score(np.ones(3), SelectionConfig())
    with pytest.raises(ValueError, match="NaN"):
        uncertainty_score(np.array([[np.nan, 1.0]]), SelectionConfig())


def test_select_threshold_boundary_and_sorting() -> None:
    scores = {"c": 0.8999999, "b": 0.9, "a": 0.95, "d": 0.1}
    assert select_cases(scores, SelectionConfig(threshold=0.9)) == ["a", "b"]
    assert select_cases(scores, SelectionConfig(threshold=0.9, enabled=False)) == ["a", "b", "c", "d"]
    assert select_cases({}, SelectionConfig()) == []
    with pytest.raises(ValueError, match="'x'"):
        select_cases({"x": float("nan")}, SelectionConfig())


def test_select_top_fraction_is_relative_and_breaks_ties_by_id() -> None:
    scores = {"c": 0.5, "b": 0.7, "a": 0.7, "d": 0.2, "e": 0.1}
    # ceil(0.4 * 5) = 2 best: the 0.7 pair, whatever the threshold says
    assert select_cases(scores, SelectionConfig(threshold=0.99, top_fraction=0.4)) == ["a", "b"]
    # ceil(0.5 * 5) = 3; a tie at the cut goes to the smaller case id
    assert select_cases(scores, SelectionConfig(top_fraction=0.5)) == ["a", "b", "c"]
    assert select_cases({"x": 0.1, "y": 0.3, "z": 0.2}, SelectionConfig(top_fraction=0.34)) == ["y", "z"]
    assert select_cases(scores, SelectionConfig(top_fraction=1.0)) == ["a", "b", "c", "d", "e"]
    assert select_cases(scores, SelectionConfig(top_fraction=0.4, enabled=False)) == ["a", "b", "c", "d", "e"]
    assert selection_cutoff(scores, SelectionConfig(top_fraction=0.4)) == 0.7
    assert selection_cutoff(scores, SelectionConfig(threshold=0.8)) == 0.8
    for bad in (0.0, 1.5, "half"):
        with pytest.raises(ValueError, match="top_fraction"):
            SelectionConfig(top_fraction=bad)


def test_quality_uses_selection_over_all_scores() -> None:
    # the top half of the four scored cases is {c, d}
    cfg = SelectionConfig(top_fraction=0.5)
    q = pseudo_label_quality(SCORES, TRUE, cfg)
    assert q["n_selected"] == 2 and q["mean_dice_selected"] == pytest.approx(0.6)
    partial_truth = {"a": 0.1, "b": 0.2, "c": 0.3}  # d (the best score) has no truth: c alone is kept
    q = pseudo_label_quality(SCORES, partial_truth, cfg)
    assert q["n_selected"] == 1 and q["mean_dice_selected"] == pytest.approx(0.3)


def test_csv_round_trip(tmp_path) -> None:
    exact = np.array([[1.0, 0.5, 0.75], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])  # score exactly 0.75
    matrices = {"case_b": EXPECTED, "case_a": exact, "case_c": np.ones((3, 3))}
    cfg = SelectionConfig(threshold=0.75)
    path = tmp_path / "uncertainty.csv"
    write_uncertainty_csv(path, matrices, ["liver", "spleen", "kidney"], cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uncertainty.csv"]  # no temp file left behind
    scores = read_uncertainty_csv(path)
    assert scores == {c: uncertainty_score(m, cfg) for c, m in matrices.items()}  # exact float round trip
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["case_a", "case_b", "case_c"]
    assert [r["selected"] for r in rows] == ["1", "0", "1"]  # scores 0.75 (== threshold), 2/9, 1
    assert float(rows[1]["liver"]) == pytest.approx(7 / 9)
    assert float(rows[1]["spleen"]) == pytest.approx(2 / 9)
    assert float(rows[1]["kidney"]) == pytest.approx(1 / 3)


def test_csv_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="class_names"):
        write_uncertainty_csv(tmp_path / "u.csv", {"a": EXPECTED}, ["liver"], SelectionConfig())
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match="'case' and 'score'"):
        read_uncertainty_csv(bad)
    with pytest.raises(ValueError, match="not found"):
        read_uncertainty_csv(tmp_path / "missing.csv")


SCORES = {"a": 0.5, "b": 0.7, "c": 0.9, "d": 0.95}
TRUE = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.9, "e": 0.5}  # monotone but not linear; "e" has no score


def test_quality_monotone_example() -> None:
    q = pseudo_label_quality(SCORES, TRUE, SelectionConfig(threshold=0.9))
    assert q["spearman_rho"] == pytest.approx(1.0)
    assert q["n"] == 4 and q["n_selected"] == 2 and q["n_rejected"] == 2
    assert q["mean_dice_selected"] == pytest.approx(0.6)
    assert q["mean_dice_rejected"] == pytest.approx(0.15)
    reversed_truth = {c: 1 - v for c, v in TRUE.items()}
    assert pseudo_label_quality(SCORES, reversed_truth)["spearman_rho"] == pytest.approx(-1.0)


def test_quality_needs_three_paired_cases() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        pseudo_label_quality({"a": 0.5, "b": 0.6}, {"a": 0.5, "b": 0.6})


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 100 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_written(tmp_path) -> None:
    cfg = SelectionConfig(threshold=0.9)
    plot_uncertainty(SCORES, cfg, tmp_path / "sub" / "ranking.png")
    plot_uncertainty(SCORES, SelectionConfig(enabled=False), tmp_path / "unfiltered.png")
    plot_quality_scatter(SCORES, TRUE, cfg, tmp_path / "quality.png")
    plot_uncertainty(SCORES, SelectionConfig(top_fraction=0.5), tmp_path / "top.png")
    for name in ("sub/ranking.png", "unfiltered.png", "quality.png", "top.png"):
        assert _is_png(tmp_path / name)
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    with pytest.raises(ValueError, match="empty"):
        plot_uncertainty({}, cfg, tmp_path / "empty.png")
