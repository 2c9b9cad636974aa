"""Self-configuration: target spacing, patch size, topology, normalisation, the plan as data
(save/load, dotted overrides) and create_run writing it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from semiseg.config import NetworkConfig, Plan, TrainConfig, apply_overrides
from semiseg.data.dataset import RawDataset
from semiseg.data.plan import ANISOTROPY_THRESHOLD, fingerprint, make_plan, patch_size, target_spacing, topology
from semiseg.run import Run, create_run
from synthetic_data import make_dataset


# -- target spacing ---------------------------------------------------------------------------
def test_target_spacing_isotropic_is_median():
    spacings = np.array([[1.0, 0.8, 0.8], [1.2, 0.9, 0.9], [0.8, 0.7, 0.7], [1.1, 1.0, 1.0]])
    shapes = np.array([[100, 120, 120]] * 4)
    assert target_spacing(spacings, shapes) == pytest.approx(np.median(spacings, 0).tolist())


def test_target_spacing_anisotropic_uses_10th_percentile():
    z = [2.5, 4.0, 5.0, 5.0, 6.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    spacings = np.array([[s, 1.0, 1.0] for s in z])
    shapes = np.array([[20, 256, 256]] * len(z))  # few z voxels: 20 * 3 < 256
    t = target_spacing(spacings, shapes)
    assert t[1:] == pytest.approx([1.0, 1.0])
    assert t[0] == pytest.approx(np.percentile(z, 10))
    assert t[0] < np.median(z)


def test_target_spacing_anisotropic_spacing_but_many_voxels_keeps_median():
    z = [2.5, 4.0, 5.0, 6.0, 10.0]
    spacings = np.array([[s, 1.0, 1.0] for s in z])
    shapes = np.array([[100, 128, 128]] * len(z))  # 100 * 3 >= 128: voxels not anisotropic
    assert target_spacing(spacings, shapes)[0] == pytest.approx(np.median(z))


def test_target_spacing_percentile_never_finer_than_in_plane():
    z = [0.2, 0.2] + [5.0] * 8  # 10th percentile (0.2) would be finer than xy
    spacings = np.array([[s, 1.0, 1.0] for s in z])
    shapes = np.array([[20, 256, 256]] * len(z))
    t = target_spacing(spacings, shapes)
    assert 1.0 < t[0] < 1.001 and t[1:] == pytest.approx([1.0, 1.0])


def test_target_spacing_coarse_axis_not_first():
    """The rule applies to whichever axis is coarsest (here x)."""
    x = [2.5, 4.0, 5.0, 5.0, 6.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    spacings = np.array([[1.0, 1.0, s] for s in x])
    shapes = np.array([[256, 256, 20]] * len(x))
    assert target_spacing(spacings, shapes) == pytest.approx([1.0, 1.0, np.percentile(x, 10)])


# -- patch size -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "median, spacing, budget",
    [
        ([40, 200, 180], [3.0, 1.0, 1.0], 16 * 64 * 64),
        ([200, 200, 200], [1.0, 1.0, 1.0], 128**3),
        ([300, 90, 400], [0.8, 0.8, 0.8], 96**3),
        ([31, 256, 256], [7.7, 1.25, 1.25], 64**3),
        ([10, 20, 20], [1.0, 1.0, 1.0], 128**3),  # smaller than the budget: the whole median
    ],
)
def test_patch_size_within_budget_and_median(median, spacing, budget):
    p = patch_size(median, spacing, budget)
    assert len(p) == 3 and all(isinstance(v, int) for v in p)
    assert int(np.prod(p)) <= budget
    assert all(1 <= a <= m for a, m in zip(p, median))
    if np.prod(median) <= budget:
        assert p == median
    else:  # uses most of the budget (nnU-Net grows the patch as far as it can)
        assert np.prod(p) > 0.5 * budget


def test_patch_size_anisotropic_is_roughly_isotropic_in_mm():
    p = patch_size([40, 400, 400], [4.0, 1.0, 1.0], 32 * 96 * 96)
    mm = np.asarray(p) * [4.0, 1.0, 1.0]
    assert p[0] < p[1] and mm.max() / mm.min() < 2.0


# -- topology ---------------------------------------------------------------------------------
CASES = [
    ([16, 64, 64], [5.0, 1.0, 1.0]),
    ([32, 32, 32], [1.0, 1.0, 1.0]),
    ([20, 50, 37], [1.0, 0.8, 0.8]),
    ([40, 160, 160], [3.0, 0.7, 0.7]),
    ([24, 192, 160], [7.7, 1.25, 1.25]),
    ([8, 8, 8], [1.0, 1.0, 1.0]),
]


@pytest.mark.parametrize("patch, spacing", CASES)
def test_topology_strides_divide_patch(patch, spacing):
    kernels, strides, rounded = topology(patch, spacing)
    assert strides[0] == [1, 1, 1]
    assert len(kernels) == len(strides)
    assert all(s in (1, 2) for st in strides for s in st)
    assert all(k in (1, 3) for kk in kernels for k in kk)
    total = np.prod(np.asarray(strides), axis=0)
    assert all(r % t == 0 for r, t in zip(rounded, total)), (rounded, total)
    assert all(t <= r <= p for r, t, p in zip(rounded, total, patch))
    # every stage keeps at least min_feature_size (4) voxels on pooled axes
    assert all(r // t >= 4 or t == 1 for r, t in zip(rounded, total))


@pytest.mark.parametrize("patch, spacing", [c for c in CASES if max(c[1]) / min(c[1]) >= 2])
def test_topology_anisotropic_does_not_pool_coarse_axis_first(patch, spacing):
    kernels, strides, _ = topology(patch, spacing)
    coarse = int(np.argmax(spacing))
    assert strides[1][coarse] == 1 and all(strides[1][i] == 2 for i in range(3) if i != coarse)
    assert kernels[0][coarse] == 1  # 2D-like first stage ("dummy 2D" conv)
    assert any(st[coarse] == 2 for st in strides[2:])  # pooled later, once the others caught up


def test_topology_isotropic_pools_all_axes():
    kernels, strides, rounded = topology([64, 64, 64], [1.0, 1.0, 1.0], max_stages=5)
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 4 and rounded == [64, 64, 64]
    assert kernels == [[3, 3, 3]] * 5


# -- make_plan --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ct") / "CTset", ["a", "b", "c"], ["u"], shape=(10, 32, 32),
                        spacing_xyz=(0.8, 0.8, 2.5), channel_name="CT")


@pytest.fixture(scope="module")
def mr_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("mr") / "MRset", ["a", "b"], ["u"], shape=(8, 40, 40),
                        spacing_xyz=(1.0, 1.0, 5.0), channel_name="T2")


def test_make_plan_ct_normalisation_from_foreground(ct_root):
    ds = RawDataset.open(ct_root)
    fp = fingerprint(ds, progress=False)
    plan = make_plan(ds, fp, max_patch_voxels=8 * 32 * 32)
    assert plan.modality == "CT"
    (norm,) = plan.normalization
    assert norm["scheme"] == "ct"
    fg = fp.foreground_intensities[0]
    assert norm["lower"] == pytest.approx(np.percentile(fg, 0.5))
    assert norm["upper"] == pytest.approx(np.percentile(fg, 99.5))
    assert norm["mean"] == pytest.approx(fg.mean()) and norm["std"] == pytest.approx(fg.std())
    # foreground only: air (-1000) and soft-tissue background (~0) are below the organ intensities
    assert 50 < norm["lower"] < norm["mean"] < norm["upper"] < 300
    assert plan.labels == ds.labels and plan.num_classes == 3
    assert plan.target_spacing == pytest.approx([2.5, 0.8, 0.8])


def test_make_plan_mri_zscore_and_anisotropic_topology(mr_root):
    ds = RawDataset.open(mr_root)
    fp = fingerprint(ds, progress=False)
    assert fp.spacings.tolist() == [[5.0, 1.0, 1.0]] * 2
    plan = make_plan(ds, fp, max_patch_voxels=8 * 32 * 32, base_features=4, max_features=16)
    assert plan.modality == "T2"
    assert plan.normalization == [{"scheme": "zscore"}]
    assert plan.target_spacing == pytest.approx([5.0, 1.0, 1.0])
    net = plan.network
    assert len(net.features) == len(net.kernels) == len(net.strides)
    assert max(net.features) <= 16 and net.features[0] == 4
    assert net.strides[1][0] == 1 and net.kernels[0][0] == 1
    total = np.prod(np.asarray(net.strides), axis=0)
    assert all(p % t == 0 for p, t in zip(plan.patch_size, total))
    assert np.prod(plan.patch_size) <= 8 * 32 * 32
    assert all(p <= m for p, m in zip(plan.patch_size, plan.median_shape))


def test_make_plan_spacing_override_changes_median_shape(mr_root):
    ds = RawDataset.open(mr_root)
    fp = fingerprint(ds, progress=False)
    base = make_plan(ds, fp)
    coarse = make_plan(ds, fp, spacing=[5.0, 2.0, 2.0])
    assert coarse.target_spacing == [5.0, 2.0, 2.0]
    assert coarse.median_shape[1] == pytest.approx(base.median_shape[1] / 2, abs=1)


# -- the plan as data -------------------------------------------------------------------------
def small_plan() -> Plan:
    return Plan(
        dataset_name="x", modality="MRI", num_input_channels=1, labels={"background": 0, "organ": 1},
        target_spacing=[3.0, 1.0, 1.0], patch_size=[16, 32, 32],
        normalization=[{"scheme": "zscore"}],
        network=NetworkConfig(features=[4, 8, 16], kernels=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]]),
        median_shape=[20, 60, 60],
    )


def test_plan_save_load_round_trip(tmp_path, mr_root):
    plan = small_plan()
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan
    ds = RawDataset.open(mr_root)
    derived = make_plan(ds, fingerprint(ds, progress=False))
    derived.save(tmp_path / "derived.json")
    loaded = Plan.load(tmp_path / "derived.json")
    assert loaded == derived and isinstance(loaded.network, NetworkConfig)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_new_plans_keep_foreground_patches_inside_old_plan_files_keep_their_padding(tmp_path, mr_root):
    """Planning samples foreground patches as nnU-Net does (inside the volume); a plan file written before the
    field existed was trained with padded patches, so it must read back as False, not as the planner's choice."""
    ds = RawDataset.open(mr_root)
    assert make_plan(ds, fingerprint(ds, progress=False)).foreground_inside is True
    raw = dataclasses.asdict(small_plan())
    raw.pop("foreground_inside")
    (tmp_path / "old.json").write_text(json.dumps(raw))
    assert Plan.load(tmp_path / "old.json").foreground_inside is False


def test_train_config_round_trip(tmp_path):
    cfg = TrainConfig(method="cps", iterations=7, method_params={"lambda": 0.5})
    cfg.save(tmp_path / "t.json")
    assert TrainConfig.load(tmp_path / "t.json") == cfg


def test_apply_overrides_dotted_keys_and_copy():
    plan = small_plan()
    new = apply_overrides(plan, {"network.features": [8, 16, 32], "target_spacing": [2.0, 1.0, 1.0], "network.dropout": 0.1, "batch_size": 4})
    assert new.network.features == [8, 16, 32] and new.network.dropout == 0.1
    assert new.target_spacing == [2.0, 1.0, 1.0] and new.batch_size == 4
    # the original is untouched
    assert plan == small_plan()
    assert new.network.kernels == plan.network.kernels and new.patch_size == plan.patch_size


def test_apply_overrides_train_config():
    cfg = apply_overrides(TrainConfig(), {"iterations": 5, "method_params": {"x": 1}})
    assert cfg.iterations == 5 and cfg.method_params == {"x": 1} and TrainConfig().iterations == 1000


@pytest.mark.parametrize("key", ["nonexistent", "network.nonexistent", "network.features.extra"])
def test_apply_overrides_unknown_field_raises_keyerror(key):
    with pytest.raises(KeyError, match="unknown configuration field"):
        apply_overrides(small_plan(), {key: 1})


@pytest.mark.parametrize("key", ["netwrk.features", "save", "num_classes"])
def test_apply_overrides_non_field_raises_keyerror(key):
    with pytest.raises(KeyError):
        apply_overrides(small_plan(), {key: 1})


# -- create_run -------------------------------------------------------------------------------
def test_create_run_writes_plan_with_overrides(tmp_path, mr_root):
    out = tmp_path / "run"
    run = create_run(mr_root, out, overrides={"network.features": [4, 8, 16], "target_spacing": [4.0, 2.0, 2.0], "foreground_oversample": 0.5},
                     progress=False)
    assert isinstance(run, Run) and run.root == out
    raw = json.loads((out / "plan.json").read_text())
    assert raw["network"]["features"] == [4, 8, 16]
    assert raw["target_spacing"] == [4.0, 2.0, 2.0]
    assert raw["foreground_oversample"] == 0.5
    assert run.plan.network.features == [4, 8, 16]
    src = json.loads((out / "source.json").read_text())
    assert src == {"dataset": str(mr_root.resolve()), "split": None}
    assert run.dataset().labelled == ["a", "b"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_create_run_with_explicit_split(tmp_path, mr_root):
    split = tmp_path / "my_split.json"
    split.write_text(json.dumps({"labelled": ["b"], "unlabelled": ["a", "u"], "test": []}))
    run = create_run(mr_root, tmp_path / "run", split=split, progress=False)
    assert run.source["split"] == str(split.resolve())
    ds = run.dataset()
    assert ds.labelled == ["b"] and ds.unlabelled == ["a", "u"]
    assert dataclasses.asdict(run.plan)["dataset_name"] == "MRset"


def test_anisotropy_threshold_is_nnunets():
    assert ANISOTROPY_THRESHOLD == 3.0
