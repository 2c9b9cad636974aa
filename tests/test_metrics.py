"""Hand-computed checks of the surface-distance algorithm and the FLARE metric rules."""
from __future__ import annotations

import math

import numpy as np
import pytest

from semiseg.evaluation.metrics import (
    FlareMetric,
    binary_metrics,
    canonical_name,
    evaluate_case,
    summarize,
    tolerance_for,
)
from semiseg.evaluation.surface import (
    compute_average_surface_distance,
    compute_robust_hausdorff,
    compute_surface_dice_at_tolerance,
    compute_surface_distances,
    neighbour_code_to_surface_area,
    surface_area,
)


def box(shape: tuple[int, int, int], lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


def marching_cubes_box_area(n: tuple[int, int, int], a: float, b: float, c: float) -> float:
    """Area of the marching-cubes surface of an n[0] x n[1] x n[2] voxel box with spacing (a, b, c).

    The surface runs through voxel-face midpoints: flat faces span (n-1) voxel centres, the 12 edges
    are bevels of width |(half spacing, half spacing)|, the 8 corners are triangles.
    """
    l0, l1, l2 = (k - 1 for k in n)
    faces = 2 * (l1 * b * l2 * c + l0 * a * l2 * c + l0 * a * l1 * b)
    bevels = 4 * (l0 * a * math.hypot(b / 2, c / 2) + l1 * b * math.hypot(a / 2, c / 2) + l2 * c * math.hypot(a / 2, b / 2))
    corners = 8 * 0.5 * math.sqrt((b * c / 4) ** 2 + (a * c / 4) ** 2 + (a * b / 4) ** 2)
    return faces + bevels + corners


# ---------------------------------------------------------------- surface areas


def test_cube_surface_area_matches_marching_cubes_geometry() -> None:
    cube = box((14, 14, 14), (2, 2, 2), (12, 12, 12))
    area = surface_area(cube, (1.0, 1.0, 1.0))
    assert area == pytest.approx(marching_cubes_box_area((10, 10, 10), 1, 1, 1), rel=1e-9)  # 564.0996
    # Cut edges and corners make it a little less than the 600 mm^2 of the voxel faces.
    assert 0.9 * 600 < area < 600


def test_anisotropic_surface_area_scales_each_axis() -> None:
    cube = box((14, 14, 14), (2, 2, 2), (12, 12, 12))
    assert surface_area(cube, (2.0, 1.0, 1.0)) == pytest.approx(marching_cubes_box_area((10, 10, 10), 2, 1, 1), rel=1e-9)
    slab = box((14, 14, 14), (2, 3, 1), (5, 12, 13))  # 3 x 9 x 12 voxels: axis order matters
    expected = marching_cubes_box_area((3, 9, 12), 0.5, 1.5, 3.0)
    assert surface_area(slab, (0.5, 1.5, 3.0)) == pytest.approx(expected, rel=1e-9)
    assert surface_area(slab, (3.0, 1.5, 0.5)) != pytest.approx(expected, rel=1e-3)


def test_area_table_single_corner_and_flat_face() -> None:
    table = neighbour_code_to_surface_area((1.0, 1.0, 1.0))
    assert table.shape == (256,)
    assert table[0] == 0 and table[255] == 0
    assert table[1] == pytest.approx(math.sqrt(3) / 8)  # corner triangle with legs of sqrt(0.5)
    assert table[0b00001111] == pytest.approx(1.0)  # a flat quad across the cell
    # The flat quad 0b00001111 separates array axis 0; its area is spacing[1] * spacing[2].
    assert neighbour_code_to_surface_area((5.0, 2.0, 3.0))[0b00001111] == pytest.approx(6.0)


def test_touching_the_image_border_counts_as_background() -> None:
    full = np.ones((10, 10, 10), dtype=bool)
    assert surface_area(full, (1, 1, 1)) == pytest.approx(marching_cubes_box_area((10, 10, 10), 1, 1, 1))


# ---------------------------------------------------------------- distances


def test_single_voxel_offset_along_z_uses_z_spacing() -> None:
    ref = box((10, 10, 10), (5, 5, 5), (6, 6, 6))
    pred = box((10, 10, 10), (7, 5, 5), (8, 6, 6))
    # Ref corners lie at z 5 and 6, pred corners at z 7 and 8 (same y, x): distances 1 and 2 voxels in z.
    for spacing, sz in (((1, 1, 1), 1.0), ((3, 1, 1), 3.0), ((1, 3, 1), 1.0), ((1, 1, 3), 1.0)):
        sd = compute_surface_distances(ref, pred, spacing)
        np.testing.assert_allclose(sd.distances_gt_to_pred, [sz] * 4 + [2 * sz] * 4)
        assert compute_robust_hausdorff(sd, 95) == pytest.approx(2 * sz)
        assert compute_average_surface_distance(sd) == pytest.approx((1.5 * sz, 1.5 * sz))


def test_hausdorff_of_shifted_cube_is_shift_in_mm() -> None:
    ref = box((20, 16, 16), (2, 3, 3), (12, 13, 13))
    pred = box((20, 16, 16), (4, 3, 3), (14, 13, 13))
    assert compute_robust_hausdorff(compute_surface_distances(ref, pred, (1, 1, 1)), 100) == pytest.approx(2.0)
    assert compute_robust_hausdorff(compute_surface_distances(ref, pred, (2.5, 1, 1)), 100) == pytest.approx(5.0)
    assert compute_robust_hausdorff(compute_surface_distances(ref, pred, (1, 1, 2.5)), 100) == pytest.approx(2.0)


def test_distances_are_sorted_and_empty_masks_give_inf_or_nothing() -> None:
    ref = box((12, 12, 12), (2, 2, 2), (8, 8, 8))
    pred = box((12, 12, 12), (3, 4, 2), (9, 10, 7))
    sd = compute_surface_distances(ref, pred, (1.2, 0.7, 0.9))
    assert np.all(np.diff(sd.distances_gt_to_pred) >= 0) and np.all(np.diff(sd.distances_pred_to_gt) >= 0)
    one_empty = compute_surface_distances(ref, np.zeros_like(ref), (1, 1, 1))
    assert np.all(np.isinf(one_empty.distances_gt_to_pred)) and one_empty.distances_pred_to_gt.size == 0
    both_empty = compute_surface_distances(np.zeros_like(ref), np.zeros_like(ref), (1, 1, 1))
    assert both_empty.surfel_areas_gt.size == 0 and math.isnan(compute_surface_dice_at_tolerance(both_empty, 1))


def test_nsd_of_concentric_cubes_switches_at_their_separation() -> None:
    outer = box((20, 20, 20), (4, 4, 4), (16, 16, 16))
    inner = box((20, 20, 20), (6, 6, 6), (14, 14, 14))
    sd = compute_surface_distances(outer, inner, (1, 1, 1))
    # Every surfel is at least 2 mm from the other surface; the farthest (outer corner) is sqrt(12).
    assert sd.distances_gt_to_pred.min() == pytest.approx(2.0)
    assert sd.distances_gt_to_pred.max() == pytest.approx(math.sqrt(12))
    assert compute_surface_dice_at_tolerance(sd, 1.9) == 0.0
    assert compute_surface_dice_at_tolerance(sd, 3.5) == 1.0
    m = binary_metrics(inner, outer, (1, 1, 1), tolerance_mm=1.9)
    assert m["DSC"] == pytest.approx(2 * 512 / (512 + 1728)) and m["NSD"] == 0.0


def test_nsd_of_concentric_spheres() -> None:
    z, y, x = np.mgrid[:32, :32, :32] - 15.5
    r = np.sqrt(z**2 + y**2 + x**2)
    big, small = r <= 12, r <= 8  # 4 mm apart
    assert binary_metrics(small, big, (1, 1, 1), tolerance_mm=2.0)["NSD"] == 0.0
    assert binary_metrics(small, big, (1, 1, 1), tolerance_mm=6.0)["NSD"] == 1.0
    # Halving the spacing halves the gap to 2 mm: NSD at 3 mm becomes perfect.
    assert binary_metrics(small, big, (0.5, 0.5, 0.5), tolerance_mm=3.0)["NSD"] == 1.0


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_agrees_with_monai_subvoxel_surface_dice() -> None:
    """An independent implementation (KD-tree distances) of the same definition."""
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_surface_dice
    from scipy import ndimage

    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.random((24, 30, 28)), 3) > 0.5
    b = ndimage.gaussian_filter(rng.random((24, 30, 28)), 3) > 0.5
    spacing = (3.0, 0.8, 1.1)
    ours = compute_surface_dice_at_tolerance(compute_surface_distances(a, b, spacing), 2.0)
    as_t = lambda m: torch.tensor(m, dtype=torch.float32)[None, None]  # noqa: E731
    theirs = compute_surface_dice(as_t(b), as_t(a), [2.0], include_background=True, spacing=spacing, use_subvoxels=True)
    assert ours == pytest.approx(float(theirs), abs=1e-5)


# ---------------------------------------------------------------- metrics and FLARE rules


def test_cubes_offset_by_one_voxel_dsc_iou() -> None:
    ref = box((14, 14, 14), (2, 2, 2), (12, 12, 12))
    pred = box((14, 14, 14), (3, 2, 2), (13, 12, 12))  # overlap 9 x 10 x 10 = 900 of 1000 each
    m = binary_metrics(pred, ref, (1, 1, 1), tolerance_mm=2)
    assert m["DSC"] == pytest.approx(0.9)
    assert m["IoU"] == pytest.approx(900 / 1100)
    assert m["NSD"] == pytest.approx(1.0)  # 1 mm shift, 2 mm tolerance
    assert m["HD95"] == pytest.approx(1.0)


@pytest.mark.parametrize("pred_empty, ref_empty", [(True, True), (True, False), (False, True)])
def test_empty_rules(pred_empty: bool, ref_empty: bool) -> None:
    cube = box((8, 8, 8), (2, 2, 2), (5, 5, 5))
    empty = np.zeros_like(cube)
    m = binary_metrics(empty if pred_empty else cube, empty if ref_empty else cube, (1, 1, 1), tolerance_mm=2)
    if pred_empty and ref_empty:
        assert m == {"DSC": 1.0, "IoU": 1.0, "NSD": 1.0, "HD95": 0.0, "ASD": 0.0}
    else:
        assert (m["DSC"], m["IoU"], m["NSD"]) == (0.0, 0.0, 0.0)
        assert math.isnan(m["HD95"]) and math.isnan(m["ASD"])


def test_nsd_is_zeroed_when_dsc_below_threshold() -> None:
    ref = box((14, 14, 14), (2, 2, 2), (12, 12, 12))
    pred = box((14, 14, 14), (5, 5, 5), (7, 7, 7))  # DSC = 16 / 1008
    m = binary_metrics(pred, ref, (1, 1, 1), tolerance_mm=100)
    assert m["DSC"] == pytest.approx(16 / 1008) and m["NSD"] == 0.0
    assert binary_metrics(pred, ref, (1, 1, 1), tolerance_mm=100, nsd_zero_below_dsc=None)["NSD"] == 1.0
    assert binary_metrics(pred, ref, (1, 1, 1), tolerance_mm=100, nsd_zero_below_dsc=0.01)["NSD"] == 1.0


def tube(z0: int, z1: int, x0: int = 4, x1: int = 8) -> np.ndarray:
    lab = np.zeros((20, 12, 12), dtype=np.uint8)
    lab[z0:z1, 4:8, x0:x1] = 1
    return lab


@pytest.mark.parametrize("name", ["aorta", "Aorta", "inferior_vena_cava", "IVC", "Esophagus"])
def test_vessels_are_scored_on_reference_slices_only(name: str) -> None:
    ref, pred = tube(5, 15), tube(0, 20)  # prediction runs on beyond the annotated z-range
    m = evaluate_case(pred, ref, (2.0, 1.0, 1.0), {"background": 0, name: 1})[name]
    assert (m["DSC"], m["NSD"], m["HD95"]) == (1.0, 1.0, 0.0)


def test_other_organs_and_in_plane_excess_are_penalised() -> None:
    ref, pred = tube(5, 15), tube(0, 20)
    assert evaluate_case(pred, ref, (1, 1, 1), {"liver": 1})["liver"]["DSC"] == pytest.approx(2 * 10 / 30)
    # Restriction is along z (array axis 0) only: excess along x still counts for the aorta.
    wide = tube(5, 15, 4, 12)
    assert evaluate_case(wide, ref, (1, 1, 1), {"aorta": 1})["aorta"]["DSC"] == pytest.approx(2 * 4 / 12)
    assert evaluate_case(pred, ref, (1, 1, 1), {"aorta": 1}, slice_restricted=())["aorta"]["DSC"] < 1


def test_flare_exclusive_upper_slice_option() -> None:
    ref, pred = tube(5, 15), tube(5, 14)  # prediction misses the last reference slice
    assert evaluate_case(pred, ref, (1, 1, 1), {"aorta": 1})["aorta"]["DSC"] == pytest.approx(2 * 9 / 19)
    assert evaluate_case(pred, ref, (1, 1, 1), {"aorta": 1}, exclusive_upper_slice=True)["aorta"]["DSC"] == 1.0


def test_evaluate_case_all_classes_and_label_checks() -> None:
    ref = np.zeros((10, 10, 10), dtype=np.uint8)
    ref[1:4, 1:4, 1:4], ref[6:9, 6:9, 6:9] = 1, 2
    pred = ref.copy()
    pred[pred == 2] = 0
    out = evaluate_case(pred, ref, (1, 1, 1), {"background": 0, "liver": 1, "spleen": 2, "pancreas": 3})
    assert list(out) == ["liver", "spleen", "pancreas"]
    assert out["liver"]["DSC"] == 1.0 and out["spleen"]["DSC"] == 0.0 and out["pancreas"]["NSD"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(pred[:5], ref, (1, 1, 1), {"liver": 1})
    with pytest.raises(ValueError, match="region"):
        evaluate_case(pred, ref, (1, 1, 1), {"liver": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(pred, ref, (1, 1), {"liver": 1})


def test_tolerances_match_names_loosely() -> None:
    assert canonical_name("Right_Kidney") == canonical_name("right kidney") == canonical_name("RK")
    assert tolerance_for("right_kidney") == 3.0
    assert tolerance_for("Inferior Vena Cava") == tolerance_for("IVC") == 2.0
    assert tolerance_for("duodenum") == 7.0 and tolerance_for("Liver") == 5.0
    assert tolerance_for("left-adrenal-gland") == 2.0 and tolerance_for("left kidney") == 3.0
    assert tolerance_for("left_atrium") == 2.0  # unknown -> default
    assert tolerance_for("left_atrium", default=4.0) == 4.0
    assert tolerance_for("LIVER", {"liver": 1.0}) == 1.0


def test_summarize_and_metric_protocol() -> None:
    per_case = {
        "a": {"liver": {"DSC": 1.0, "HD95": 2.0}, "spleen": {"DSC": 0.0, "HD95": math.nan}},
        "b": {"liver": {"DSC": 0.5, "HD95": 4.0}, "spleen": {"DSC": 1.0, "HD95": 1.0}},
    }
    mean, fg = summarize(per_case)
    assert mean["liver"] == {"DSC": 0.75, "HD95": 3.0}
    assert mean["spleen"] == {"DSC": 0.5, "HD95": 1.0}  # NaN skipped
    assert fg == {"DSC": 0.625, "HD95": 2.0}

    metric = FlareMetric({"liver": 1})
    lab = tube(5, 15)
    metric(lab, lab, (1, 1, 1))
    metric(np.zeros_like(lab), lab, (1, 1, 1))
    assert metric.aggregate()["liver"]["DSC"] == 0.5
    metric.reset()
    assert metric.aggregate() == {}
