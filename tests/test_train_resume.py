"""Training engine on a tiny synthetic run: an interrupted-then-resumed run ends with exactly the weights
of an uninterrupted one; artefacts are written atomically; the k-fold split is sound."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from semiseg.config import TrainConfig
from semiseg.engine.trainer import DataSpec, load_model, train
from semiseg.networks.model_file import read_file
from semiseg.run import Run, create_run
from synthetic_data import make_dataset, tiny_overrides

LABELLED = [f"l{i}" for i in range(6)]
UNLABELLED = ["u0", "u1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    base = tmp_path_factory.mktemp("train")
    raw = make_dataset(base / "raw", LABELLED, UNLABELLED, shape=(8, 36, 36))
    r = create_run(raw, base / "run", overrides=tiny_overrides([8, 32, 32]), progress=False)
    r.ensure_preprocessed(labelled=True, unlabelled=True, progress=False)
    return r


def config(method: str = "supervised") -> TrainConfig:
    return TrainConfig(method=method, iterations=6, checkpoint_every=2, batch_size=2, unlabelled_batch_size=2, seed=7, num_workers=0)


def spec(run: Run) -> DataSpec:
    train_cases, _ = run.training_cases(0, k=3)
    return DataSpec(run.cache, train_cases, UNLABELLED)


def final_weights(path: Path) -> dict[str, torch.Tensor]:
    return read_file(path)["weights"]


def no_temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


def test_run_is_tiny(run):
    plan = run.plan
    assert plan.patch_size == [8, 32, 32] and plan.network.features == [4, 8, 16]
    assert all((run.cache / f"{c}.json").is_file() and (run.cache / f"{c}.npy").is_file() for c in LABELLED + UNLABELLED)
    assert not list(run.cache.glob("u*_seg.npy"))  # unlabelled cases are cached without labels


@pytest.mark.parametrize("method, params", [("supervised", {}), ("mean-teacher", {}), ("bcp", {"pretrain": 0.5}),
                                            ("unimatch", {"threshold": 0.0}), ("ad-mt", {"threshold": 0.0, "alternate_period": 2})])
def test_resume_gives_same_weights_as_uninterrupted(run, tmp_path, method, params):
    """BCP stops exactly at its pre-training boundary (step 3 of 6); AD-MT's teachers take turns across the stop."""
    plan, sp = run.plan, spec(run)
    cfg = TrainConfig(**{**config(method).__dict__, "method_params": params})
    full = train(plan, cfg, sp, tmp_path / "full", device="cpu", progress=False)
    assert full == tmp_path / "full" / "model_final.pt"

    out = tmp_path / "interrupted"
    ck = train(plan, cfg, sp, out, device="cpu", progress=False, stop_after=3)
    assert ck == out / "checkpoint.pt" and not (out / "model_final.pt").exists()
    first = read_file(ck)
    assert first["step"] == 3 and first["wall_time_s"] > 0
    resumed = train(plan, cfg, sp, out, device="cpu", progress=False)
    assert resumed == out / "model_final.pt"

    a, b = final_weights(full), final_weights(resumed)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), f"{method}: {k} differs after resume"
    ha = json.loads((tmp_path / "full" / "log.json").read_text())["history"]
    hb = json.loads((out / "log.json").read_text())["history"]
    assert [h["step"] for h in hb] == list(range(6))
    assert ha == hb  # the resumed log carries the steps before the interruption, with the same losses
    log = json.loads((out / "log.json").read_text())  # the time of both sessions, not only the resumed one
    assert log["wall_time_s"] == pytest.approx(first["wall_time_s"] + log["wall_time_this_session_s"], abs=0.05)

    for folder in (tmp_path / "full", out):
        for name in ("model_final.pt", "checkpoint.pt", "log.json", "curve.png", "plan.json", "train_config.json"):
            assert (folder / name).is_file(), name
        assert (folder / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert no_temp_files(folder) == []


def test_finished_run_is_not_retrained_and_loads(run, tmp_path):
    out = tmp_path / "done"
    final = train(run.plan, config(), spec(run), out, device="cpu", progress=False)
    stamp = final.stat().st_mtime_ns
    assert train(run.plan, config(), spec(run), out, device="cpu", progress=False) == final
    assert final.stat().st_mtime_ns == stamp
    net, plan = load_model(final)
    assert plan == run.plan
    with torch.no_grad():
        out_t = net(torch.zeros(1, 1, *plan.patch_size))
    assert out_t.shape == (1, plan.num_classes, *plan.patch_size)


@pytest.mark.parametrize("workers", [0, 1])
def test_earlier_trainings_in_the_process_leave_a_training_unchanged(run, tmp_path, workers):
    """Self-training trains its fold models and its final model in one process, and a benchmark compares that final
    model with a supervised run from a fresh one: no state may carry over from one training to the next."""
    cfg = TrainConfig(**{**config().__dict__, "num_workers": workers})
    first = train(run.plan, cfg, spec(run), tmp_path / "first", device="cpu", progress=False)
    other = DataSpec(run.cache, LABELLED[1:5], UNLABELLED)
    train(run.plan, TrainConfig(**{**cfg.__dict__, "seed": 3}), other, tmp_path / "other", device="cpu", progress=False)
    train(run.plan, TrainConfig(**{**cfg.__dict__, "seed": 3, "method": "mean-teacher"}), other, tmp_path / "mt",
          device="cpu", progress=False)
    again = train(run.plan, cfg, spec(run), tmp_path / "again", device="cpu", progress=False)
    a, b = final_weights(first), final_weights(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_batches_read_no_unlabelled_labels(run):
    from semiseg.data.sampling import open_cases

    cases = open_cases(run.cache, UNLABELLED, with_labels=False)
    assert all(c.seg_path is None and c.locations == {} for c in cases)
    with pytest.raises(ValueError, match="cached without labels"):
        open_cases(run.cache, UNLABELLED, with_labels=True)


# -- k-fold split -----------------------------------------------------------------------------
def check_folds(folds: list[dict[str, list[str]]], k: int) -> None:
    assert len(folds) == k
    vals = [set(f["val"]) for f in folds]
    for i in range(k):
        for j in range(i + 1, k):
            assert not vals[i] & vals[j]
    assert set().union(*vals) == set(LABELLED)
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        assert set(f["train"]) | set(f["val"]) == set(LABELLED)
        assert f["val"]
        assert not (set(f["train"]) | set(f["val"])) & set(UNLABELLED)
    sizes = sorted(len(v) for v in vals)
    assert sizes[-1] - sizes[0] <= 1


def test_folds_deterministic_disjoint_cover_labelled_only(run):
    path = run.root / "splits_final.json"
    path.unlink(missing_ok=True)
    f3 = run.folds(k=3)
    check_folds(f3, 3)
    assert json.loads(path.read_text()) == f3
    assert run.folds(k=3) == f3  # read back from splits_final.json
    path.unlink()
    assert run.folds(k=3) == f3  # recomputed: same seed, same split
    f2 = run.folds(k=2)
    check_folds(f2, 2)
    path.unlink()
    assert run.folds(k=2) == f2
    assert run.folds(k=3, seed=1) != f3 or run.folds(k=3, seed=2) != f3  # the seed matters
    path.unlink()
    train_cases, val = run.training_cases(1, k=3)
    assert (train_cases, val) == (f3[1]["train"], f3[1]["val"])
    assert run.training_cases("all") == (sorted(LABELLED), [])


def test_folds_need_enough_cases(run):
    with pytest.raises(ValueError, match="cannot make 7 folds"):
        run.folds(k=7)


def test_a_finished_or_interrupted_run_refuses_other_settings(run, tmp_path):
    plan, sp = run.plan, spec(run)
    out = tmp_path / "m"
    train(plan, config(), sp, out, device="cpu", progress=False, stop_after=2)  # interrupted
    with pytest.raises(ValueError, match=r"holds a training with other settings \(seed: 7 -> 8\)"):
        train(plan, TrainConfig(**{**config().__dict__, "seed": 8}), sp, out, device="cpu", progress=False)
    final = train(plan, config(), sp, out, device="cpu", progress=False)  # same settings: resumes and finishes
    with pytest.raises(ValueError, match=r"iterations: 6 -> 9"):
        train(plan, TrainConfig(**{**config().__dict__, "iterations": 9}), sp, out, device="cpu", progress=False)
    assert train(plan, TrainConfig(**{**config().__dict__, "num_workers": 1}), sp, out, device="cpu", progress=False) == final
    again = train(plan, TrainConfig(**{**config().__dict__, "seed": 8}), sp, out, device="cpu", progress=False, resume=False)
    assert again == final and json.loads((out / "train_config.json").read_text())["seed"] == 8  # --no-resume starts over


def test_stale_folds_and_bad_fold_numbers_are_refused(run, tmp_path):
    import shutil

    copy = Run(tmp_path / "run")
    shutil.copytree(run.root, copy.root, ignore=shutil.ignore_patterns("cache"))
    copy.folds(3)
    source = json.loads((copy.root / "source.json").read_text())
    split = {"labelled": LABELLED[:-1], "unlabelled": UNLABELLED, "test": [LABELLED[-1]]}  # a case moved to test
    (tmp_path / "split.json").write_text(json.dumps(split))
    (copy.root / "source.json").write_text(json.dumps({**source, "split": str(tmp_path / "split.json")}))
    with pytest.raises(ValueError, match=r"splits_final\.json: these folds were made for other labelled cases .*no longer labelled: \['l5'\]"):
        copy.training_cases(0, k=3)
    with pytest.raises(ValueError, match=r"fold 9: choose 0\.\.2"):
        run.training_cases(9, k=3)


def test_repeated_set_flags_accumulate():
    from semiseg.cli import build_parser

    a = build_parser().parse_args(["train", "RUN", "--fold", "all", "--set", "lr=0.1", "--set", "seed=3"])
    assert a.set == ["lr=0.1", "seed=3"]
