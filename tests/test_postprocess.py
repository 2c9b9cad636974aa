from __future__ import annotations

import json

import numpy as np
import pytest

from semiseg.postprocess import (
    AxialRangeMask,
    BinaryClosing,
    DropSmallRelative,
    LargestComponent,
    Pipeline,
    RelabelEnclosed,
    RemoveSmallComponents,
    flare22_seed_recipe,
    min_class_volumes,
)

LABELS = {"background": 0, "liver": 1, "gallbladder": 2, "aorta": 3, "left_adrenal_gland": 4}
SP = (1.0, 1.0, 1.0)


def vol(shape=(5, 8, 8)) -> np.ndarray:
    return np.zeros(shape, np.uint8)


def test_min_class_volumes_per_case_whole_organ_minimum():
    a = vol()
    a[0, 0, :4] = 1  # liver 4 voxels
    a[1, 0, 0] = 2  # gallbladder 1 voxel (spacing 2 mm^3 -> 2)
    b = vol()
    b[0, 0, :3] = 1  # liver 3 voxels at 1 mm^3
    got = min_class_volumes([(a, (2.0, 1.0, 1.0)), (b, SP)], LABELS)
    assert got == {"liver": 3.0, "gallbladder": 2.0}
    with pytest.raises(ValueError, match=r"\[9\]"):
        min_class_volumes([(np.full((2, 2, 2), 9, np.uint8), SP)], LABELS)


def test_remove_small_components_uses_fraction_of_min_volume_in_mm3():
    seg = vol()
    seg[0, 0, 0:3] = 1  # liver, 3 voxels -> 6 mm^3 at spacing (2,1,1)
    seg[4, 7, 0:5] = 1  # liver, 5 voxels -> 10 mm^3
    seg[2, 4, 4] = 2  # gallbladder, 1 voxel -> 2 mm^3; no min volume given -> untouched
    step = RemoveSmallComponents(labels=LABELS, min_volumes={"liver": 14.0})  # threshold 7 mm^3
    before = seg.copy()
    out = step(seg, (2.0, 1.0, 1.0))
    expected = seg.copy()
    expected[0, 0, 0:3] = 0
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(seg, before)  # input untouched
    # exactly at threshold is kept (strictly lower is removed)
    out = RemoveSmallComponents(labels=LABELS, min_volumes={"liver": 12.0})(seg, (2.0, 1.0, 1.0))
    np.testing.assert_array_equal(out, seg)


def test_components_are_26_connected():
    seg = vol()
    seg[0, 0, 0] = 1
    seg[1, 1, 1] = 1  # diagonal neighbour: same component (2 voxels)
    out = RemoveSmallComponents(labels=LABELS, min_volumes={"liver": 4.0})(seg, SP)  # threshold 2
    np.testing.assert_array_equal(out, seg)


def test_binary_closing_fills_only_background():
    seg = vol((7, 7, 9))
    seg[2:5, 2:5, 1:4] = 4  # two adrenal blocks with a 1-voxel gap at x=4
    seg[2:5, 2:5, 5:8] = 4
    seg[3, 3, 4] = 1  # one gap voxel belongs to the liver: must stay liver
    out = BinaryClosing(labels=LABELS, classes=["left_adrenal_gland"], kernel=[3, 3, 3])(seg, SP)
    expected = seg.copy()
    expected[2:5, 2:5, 4] = 4
    expected[3, 3, 4] = 1
    np.testing.assert_array_equal(out, expected)


def test_binary_closing_at_image_border_does_not_erode():
    seg = vol((3, 3, 5))
    seg[:, :, 0:2] = 4
    seg[:, :, 3:5] = 4
    out = BinaryClosing(labels=LABELS, classes=["left_adrenal_gland"], kernel=[1, 1, 3])(seg, SP)
    np.testing.assert_array_equal(out, np.full((3, 3, 5), 4, np.uint8))


def test_axial_range_mask_keeps_union_range_of_anchors():
    labels = {"background": 0, "liver": 1, "aorta": 2, "inferior_vena_cava": 3, "esophagus": 4}
    seg = np.ones((8, 2, 2), np.uint8)  # liver everywhere
    seg[2, 0, 0] = 4  # esophagus first at z=2
    seg[5, 1, 1] = 2  # aorta last at z=5
    out = AxialRangeMask(labels=labels)(seg, SP)
    expected = seg.copy()
    expected[:2] = 0
    expected[6:] = 0
    np.testing.assert_array_equal(out, expected)
    liver_only = np.ones((4, 2, 2), np.uint8)
    np.testing.assert_array_equal(AxialRangeMask(labels=labels)(liver_only, SP), liver_only)


def test_relabel_enclosed_in_one_slice_only():
    seg = vol((3, 7, 7))
    seg[1, 1:6, 1:6] = 1  # liver ring on z=1
    seg[1, 3, 3] = 2  # gallbladder inside the ring on z=1 ...
    seg[0, 3, 3] = 2  # ... and above it (z=0, no liver): still enclosed on z=1 -> whole component
    seg[1, 0, 6] = 2  # separate gallbladder component outside the liver: stays
    out = RelabelEnclosed(labels=LABELS)(seg, SP)
    expected = seg.copy()
    expected[1, 3, 3] = 1
    expected[0, 3, 3] = 1
    np.testing.assert_array_equal(out, expected)


def test_relabel_enclosed_not_when_ring_open():
    seg = vol((1, 7, 7))
    seg[0, 1:6, 1:6] = 1
    seg[0, 2:5, 2:5] = 0
    seg[0, 3, 3] = 2
    seg[0, 3, 1] = 0  # gap in the ring: hole is open
    out = RelabelEnclosed(labels=LABELS)(seg, SP)
    np.testing.assert_array_equal(out, seg)
    seg[0, 3, 1] = 1
    seg[0, 3, 4] = 2  # component now 2 pixels (x 3..4), within the closed ring
    seg[0, 3, 3] = 2
    out = RelabelEnclosed(labels=LABELS)(seg, SP)
    assert (out == 2).sum() == 0 and out[0, 3, 3] == 1 and out[0, 3, 4] == 1


def test_drop_small_relative():
    seg = vol((1, 4, 30))
    seg[0, 0, 0:20] = 1  # liver 20
    seg[0, 2, 0:1] = 1  # liver 1 < 0.1 * 23 -> dropped
    seg[0, 2, 25:27] = 1  # liver 2 < 2.3 -> dropped
    seg[0, 3, 0:1] = 2  # gallbladder alone (100%) stays
    out = DropSmallRelative(labels=LABELS)(seg, SP)
    expected = seg.copy()
    expected[0, 2] = 0
    np.testing.assert_array_equal(out, expected)


def test_largest_component_only_for_chosen_classes():
    seg = vol((1, 4, 10))
    seg[0, 0, 0:3] = 1
    seg[0, 2, 0:5] = 1
    seg[0, 0, 8] = 2
    seg[0, 2, 8:10] = 2
    out = LargestComponent(labels=LABELS, classes=["liver"])(seg, SP)
    expected = seg.copy()
    expected[0, 0, 0:3] = 0
    np.testing.assert_array_equal(out, expected)


def test_pipeline_from_json_config_and_round_trip():
    config = json.loads(
        '[{"step": "largest_component", "classes": ["liver"]},'
        ' {"step": "drop_small_relative", "fraction": 0.5}]'
    )
    pipe = Pipeline.from_config(config, LABELS)
    seg = vol((1, 4, 10))
    seg[0, 0, 0:3] = 1
    seg[0, 2, 0:5] = 1
    seg[0, 3, 0:4] = 2
    seg[0, 1, 9] = 2
    out = pipe(seg, SP)
    expected = np.zeros_like(seg)
    expected[0, 2, 0:5] = 1
    expected[0, 3, 0:4] = 2
    np.testing.assert_array_equal(out, expected)
    again = Pipeline.from_config(json.loads(json.dumps(pipe.to_config())), LABELS)
    np.testing.assert_array_equal(again(seg, SP), expected)


def test_unknown_names_and_bad_config_raise():
    with pytest.raises(ValueError, match="spleen"):
        Pipeline.from_config([{"step": "largest_component", "classes": ["spleen"]}], LABELS)
    with pytest.raises(ValueError, match="unknown post-processing step"):
        Pipeline.from_config([{"step": "nope"}], LABELS)
    with pytest.raises(ValueError, match="kernal"):
        Pipeline.from_config([{"step": "binary_closing", "classes": ["liver"], "kernal": [3, 3, 3]}], LABELS)
    with pytest.raises(ValueError, match="background"):
        LargestComponent(labels=LABELS, classes=["background"])
    with pytest.raises(ValueError, match="3D"):
        LargestComponent(labels=LABELS)(np.zeros((4, 4), np.uint8), SP)
    with pytest.raises(ValueError, match="integer"):
        LargestComponent(labels=LABELS)(np.zeros((2, 2, 2), np.float32), SP)


def test_non_strict_skips_absent_classes():
    pipe = Pipeline.from_config(
        [{"step": "binary_closing", "classes": ["spleen"]}, {"step": "largest_component", "classes": ["liver", "spleen"]}],
        LABELS,
        strict=False,
    )
    assert [s.name for s in pipe.steps] == ["largest_component"]
    assert pipe.steps[0].classes == ("liver",)


def test_flare22_recipe_order_and_effect():
    labels = {
        "background": 0, "liver": 1, "gallbladder": 2, "aorta": 3, "inferior_vena_cava": 4,
        "esophagus": 5, "right_adrenal_gland": 6, "left_adrenal_gland": 7,
    }
    pipe = flare22_seed_recipe(labels, {"liver": 8.0, "gallbladder": 1.0})
    assert [s.name for s in pipe.steps] == [
        "remove_small_components", "binary_closing", "axial_range_mask", "relabel_enclosed", "drop_small_relative",
    ]
    seg = np.zeros((6, 9, 9), np.uint8)
    seg[1:5, 1:6, 1:6] = 1
    seg[2, 3, 3] = 2  # lesion inside the liver -> liver
    seg[1:5, 0, 0] = 3  # aorta spans z=1..4
    seg[0, 8, 8] = 1  # separate liver speck at z=0: removed by size (1 mm^3 < 4)
    seg[5, 3, 3] = 1  # touches the liver (so survives both size filters); removed by the axial mask
    out = pipe(seg, SP)
    expected = np.zeros_like(seg)
    expected[1:5, 1:6, 1:6] = 1
    expected[1:5, 0, 0] = 3
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="right_adrenal_gland"):
        flare22_seed_recipe({"background": 0, "liver": 1}, {})
    chaos = flare22_seed_recipe({"background": 0, "liver": 1}, {"liver": 1.0}, strict=False)
    assert [s.name for s in chaos.steps] == ["remove_small_components", "drop_small_relative"]


def test_relabel_enclosed_diagonal_gap_counts_as_open():
    seg = vol((1, 7, 7))
    seg[0, 1:6, 1:6] = 1
    seg[0, 2:5, 2:5] = 0
    seg[0, 3, 3] = 2
    seg[0, 1, 1] = 0  # missing corner: the interior leaks out diagonally through (1, 1)
    np.testing.assert_array_equal(RelabelEnclosed(labels=LABELS)(seg, SP), seg)
