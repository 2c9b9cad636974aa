"""Bad inputs and misuses, as a new user makes them (issue 18): each one is refused with one line naming the file or
option (exit code 2, no traceback), and leaves nothing half-written (no temporaries, no partial outputs).

Parse-time cases need no data; the others use tiny synthetic datasets (tests/synthetic_data.py) and an untrained
tiny model, so the whole module runs in seconds on one thread."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_data import LABELS, make_dataset, synthetic_case, tiny_overrides, write_nifti

from semiseg.cli import main
from semiseg.config import TrainConfig
from semiseg.data.io import is_temporary
from semiseg.run import Run, create_run

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (12, 36, 36)
REPO = Path(__file__).resolve().parents[1]


# -- helpers ------------------------------------------------------------------------------------------
def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *named: str) -> str:
    """Run the CLI; assert exit 2 and one stderr line with no traceback naming every string in ``named``."""
    with pytest.raises(SystemExit) as e:  # argparse exits; a command returns
        raise SystemExit(main(["--quiet", *argv]))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    for word in named:
        assert word in err, f"{word!r} not in: {err}"
    return err


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and is_temporary(p)] if folder.exists() else []


def label_file(root: Path, case: str) -> Path:
    return root / "labelsTr" / f"{case}.nii.gz"


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("bad") / "raw", ["a", "b", "c"], ["u"], ["t"], shape=SHAPE)


@pytest.fixture(scope="module")
def run(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return create_run(raw, tmp_path_factory.mktemp("bad") / "run", overrides=tiny_overrides([8, 32, 32]), progress=False)


def save_untrained(run: Run, path: Path, seed: int = 0) -> Path:
    """A model file without training (prediction checks need a model, not a good one)."""
    from semiseg.networks import build_network
    from semiseg.networks.model_file import save_model

    plan = run.plan
    torch.manual_seed(seed)
    net = build_network(plan.network, plan.num_input_channels, plan.num_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, net, plan, plan.network, "supervised", {})
    return path


@pytest.fixture(scope="module")
def model(run: Run) -> Path:
    return save_untrained(run, run.root / "supervised" / "fold_all" / "model_final.pt")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """An input folder of two one-channel cases."""
    for i, case in enumerate(("p", "q")):
        write_nifti(synthetic_case(SHAPE, seed=20 + i)[0], tmp_path / "in" / f"{case}_0000.nii.gz")
    return tmp_path / "in"


# -- numeric and choice options, refused when the command line is parsed --------------------------------
@pytest.mark.parametrize("argv, option", [
    (["train", "RUN", "--iterations", "0"], "--iterations"),
    (["train", "RUN", "--iterations", "-5"], "--iterations"),
    (["train", "RUN", "--epochs", "0"], "--epochs"),
    (["train", "RUN", "--k", "0"], "--k"),
    (["train", "RUN", "--fold", "x"], "--fold"),
    (["train", "RUN", "--fold", "-1"], "--fold"),
    (["train", "RUN", "--seed", "-1"], "--seed"),
    (["train", "RUN", "--workers", "0"], "--workers"),
    (["preprocess", "RUN", "--workers", "0"], "--workers"),
    (["plan", "DS", "--out", "RUN", "--max-patch-voxels", "0"], "--max-patch-voxels"),
    (["plan", "DS", "--out", "RUN", "--spacing", "1", "0", "1"], "--spacing"),
    (["plan", "DS", "--out", "RUN", "--base-features", "-4"], "--base-features"),
    (["predict", "--model", "M", "--input", "I", "--output", "O", "--step", "0"], "--step"),
    (["predict", "--model", "M", "--input", "I", "--output", "O", "--step", "1.5"], "--step"),
    (["predict", "--model", "M", "--input", "I", "--output", "O", "--batch", "0"], "--batch"),
    (["evaluate", "--pred", "P", "--ref", "R", "--dataset", "D", "--out", "O", "--workers", "0"], "--workers"),
    (["selftrain", "RUN", "--k", "1"], "--k"),
    (["selftrain", "RUN", "--threshold", "2"], "--threshold"),
    (["benchmark", "CFG", "--jobs", "0"], "--jobs"),
    (["--threads", "0", "validate", "DS"], "--threads"),
    (["demo", "--iterations", "0"], "--iterations"),
])
def test_numeric_options_are_checked_at_parse_time(argv, option, tmp_path, capsys):
    refused([str(tmp_path / a) if a.isupper() else a for a in argv], capsys, option, "got")
    assert not list(tmp_path.iterdir())  # nothing started


def test_an_unknown_plan_set_field_is_named_before_the_dataset_is_scanned(tmp_path, capsys, monkeypatch):
    import semiseg.run

    monkeypatch.setattr(semiseg.run, "fingerprint", lambda *a, **k: pytest.fail("the dataset was scanned first"))
    refused(["plan", str(tmp_path / "DS"), "--out", str(tmp_path / "run"), "--set", "network.featurs=[8]"], capsys,
            "--set", "'network.featurs'", "NetworkConfig")
    assert not (tmp_path / "run").exists()


# -- training options and configuration files ------------------------------------------------------------
def test_fold_out_of_range_for_k_is_refused_before_any_work(run, capsys):
    before = sorted(p.name for p in run.root.iterdir())
    refused(["train", str(run.root), "--fold", "9", "--k", "2"], capsys, "--fold", "choose 0..1")
    refused(["train", str(run.root), "--fold", "0", "--k", "1"], capsys, "--k", "k >= 2")
    assert sorted(p.name for p in run.root.iterdir()) == before  # no cache, no folds, no model folder


@pytest.mark.parametrize("content, words", [
    ('{"iteratons": 5}', ["unknown TrainConfig field", "'iteratons'"]),
    ("[1, 2]", ["expected a mapping"]),
    ("{not json", ["cannot read configuration"]),
    ('{"iterations": 0}', ["iterations must be an integer >= 1"]),
    ('{"lr": -1}', ["lr must be > 0"]),
    ('{"grad_clip": "1.0e9"}', ["grad_clip must be a number >= 0", "'1.0e9'"]),  # what YAML makes of 1.0e9
])
def test_a_bad_config_file_is_named(run, tmp_path, capsys, content, words):
    cfg = tmp_path / "train.json"
    cfg.write_text(content)
    refused(["train", str(run.root), "--config", str(cfg)], capsys, str(cfg), *words)


@pytest.mark.parametrize("pair, words", [
    ("iterations", ["--set", "KEY=VALUE"]),
    ("iteratons=3", ["--set", "'iteratons'"]),
    ("iterations=0", ["--set", "iterations must be an integer >= 1"]),
    ("batch_size=-2", ["--set", "batch_size"]),
])
def test_a_bad_set_flag_is_named(run, capsys, pair, words):
    refused(["train", str(run.root), "--set", pair], capsys, *words)


def test_a_folder_that_is_not_a_run_is_named(tmp_path, capsys):
    refused(["train", str(tmp_path / "nope")], capsys, str(tmp_path / "nope"), "not a run folder")
    refused(["preprocess", str(tmp_path / "nope")], capsys, "not a run folder")


def _run_with_edited_plan(run, tmp_path, **fields):
    """A copy of the run (no cache, no models) whose plan.json has ``fields`` set, as a user editing it would."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run.root, copy, ignore=shutil.ignore_patterns("cache", "supervised"))
    plan = json.loads((copy / "plan.json").read_text())
    plan.update(fields)
    (copy / "plan.json").write_text(json.dumps(plan))
    return copy


def test_an_edited_plan_with_an_unknown_field_is_named(run, tmp_path, capsys):
    copy = _run_with_edited_plan(run, tmp_path, patch_sise=[8, 32, 32])
    refused(["train", str(copy), "--iterations", "1"], capsys, str(copy / "plan.json"), "'patch_sise'")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        main(["--quiet", "train", str(tmp_path / "nope"), "--debug"])


def test_train_config_refuses_bad_values_in_the_api():
    with pytest.raises(ValueError, match="iterations must be an integer >= 1, got 0"):
        TrainConfig(iterations=0)
    with pytest.raises(ValueError, match=r"x\.json: unknown TrainConfig field\(s\) 'seeds'"):
        TrainConfig.from_dict({"seeds": 1}, "x.json")


# -- label values, checked by plan and preprocess -------------------------------------------------------
def _dataset_with_label(tmp_path: Path, change, dtype=np.uint8, labels=None) -> Path:
    root = make_dataset(tmp_path / "ds", ["a", "b"], shape=SHAPE, labels=labels)
    lab = synthetic_case(SHAPE, seed=1)[1].astype(dtype)
    change(lab)
    write_nifti(lab, label_file(root, "b"))
    return root


@pytest.mark.parametrize("dtype, value, words", [
    (np.int16, 7, ["label values [7] are not declared"]),
    (np.int16, -1, ["label values [-1] are not declared"]),
    (np.float32, 1.5, ["non-integer values (e.g. 1.5)"]),
])
def test_plan_refuses_label_values_naming_the_file(tmp_path, capsys, dtype, value, words):
    def put(lab):
        lab[5, 18, 18] = value

    root = _dataset_with_label(tmp_path, put, dtype)
    refused(["plan", str(root), "--out", str(tmp_path / "run")], capsys, str(label_file(root, "b")), *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("labels, words", [
    ({"organ": 1, "lesion": 2}, ["background = 0"]),
    ({"background": 0, "organ": "one", "lesion": 2}, ["'organ' must map to one integer"]),
    ({"background": 0, "organ": 1, "lesion": 1}, ["distinct"]),
])
def test_plan_refuses_bad_dataset_json_labels(tmp_path, capsys, labels, words):
    root = make_dataset(tmp_path / "ds", ["a", "b"], shape=SHAPE, labels=labels)
    refused(["plan", str(root), "--out", str(tmp_path / "run")], capsys, str(root / "dataset.json"), *words)
    assert not (tmp_path / "run").exists()


def test_plan_refuses_a_dataset_whose_every_mask_is_empty(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", ["a", "b"], shape=SHAPE)
    for c in ("a", "b"):
        write_nifti(np.zeros(SHAPE, np.uint8), label_file(root, c))
    refused(["plan", str(root), "--out", str(tmp_path / "run")], capsys, str(root / "labelsTr"), "every labelled mask is empty")
    assert not (tmp_path / "run").exists()


def test_preprocess_refuses_a_label_changed_after_planning(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", ["a", "b"], shape=SHAPE)
    run = create_run(root, tmp_path / "run", overrides=tiny_overrides([8, 32, 32]), progress=False)
    lab = synthetic_case(SHAPE, seed=1)[1]
    lab[0, 0, 0] = 7
    write_nifti(lab, label_file(root, "b"))
    refused(["preprocess", str(run.root)], capsys, str(label_file(root, "b")), "[7]")
    assert not (run.cache / "b.json").exists() and not temporaries(run.root)


# -- network / patch compatibility, checked by plan ------------------------------------------------------
@pytest.mark.parametrize("sets, words", [
    (["patch_size=[8,30,32]"], ["axis y (30)", "multiple of 4", "[1, 2, 2]"]),
    (["patch_size=[6,32,32]", "network.strides=[[1,1,1],[2,2,2],[2,2,2]]"], ["axis z (6)", "multiple of 4"]),
    (["network.arch=vnet", "patch_size=[8,32,32]"], ["axis z (8)", "multiple of 16", "V-Net"]),
])
def test_plan_refuses_a_patch_the_network_cannot_pool(raw, tmp_path, capsys, sets, words):
    over = ["network.features=[4,8,16]", "network.kernels=[[3,3,3],[3,3,3],[3,3,3]]", "network.strides=[[1,1,1],[2,2,2],[2,2,2]]"]
    refused(["plan", str(raw), "--out", str(tmp_path / "run"), "--set", *over, *sets], capsys, "patch_size", *words)
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_plan_edited_to_a_patch_the_network_cannot_pool(run, tmp_path, capsys):
    copy = _run_with_edited_plan(run, tmp_path, patch_size=[8, 32, 30])
    refused(["train", str(copy), "--iterations", "1"], capsys, str(copy / "plan.json"), "axis x (30)")
    assert not (copy / "cache").exists() and not (copy / "supervised").exists()


# -- predict -------------------------------------------------------------------------------------------
def predict(model: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["--quiet", "predict", "--model", str(model), "--input", str(images), "--output", str(out), "--step", "1", *extra])


def test_predict_resumes_its_own_outputs_and_refuses_another_models(run, model, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(model, images, out) == 0
    first = (out / "p.nii.gz").stat().st_mtime_ns
    assert predict(model, images, out) == 0  # the same prediction: resumed, nothing redone
    assert (out / "p.nii.gz").stat().st_mtime_ns == first
    other = save_untrained(run, tmp_path / "other" / "model_final.pt", seed=1)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        raise SystemExit(predict(other, images, out))
    err = capsys.readouterr().err
    assert str(out) in err and "p.nii.gz" in err and "another model" in err and "--overwrite" in err and err.count("\n") == 1
    assert (out / "p.nii.gz").stat().st_mtime_ns == first  # untouched
    assert predict(other, images, out, "--overwrite") == 0
    assert (out / "p.nii.gz").stat().st_mtime_ns != first
    assert predict(other, images, out) == 0  # now vouched for by the new stamp
    assert not temporaries(out)


def test_predict_refuses_a_label_map_it_has_no_record_of(model, images, tmp_path, capsys):
    out = tmp_path / "out"
    write_nifti(np.zeros(SHAPE, np.uint8), out / "p.nii.gz")
    refused(["predict", "--model", str(model), "--input", str(images), "--output", str(out)], capsys, str(out), "p.nii.gz", "no record")
    assert sorted(p.name for p in out.iterdir()) == ["p.nii.gz"]


def test_predict_refuses_outputs_of_a_changed_input(model, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(model, images, out) == 0
    write_nifti(synthetic_case(SHAPE, seed=99)[0], images / "q_0000.nii.gz")
    refused(["predict", "--model", str(model), "--input", str(images), "--output", str(out), "--step", "1"], capsys, "q.nii.gz", "changed input")


def test_predict_refuses_a_channel_file_the_model_does_not_take(model, images, tmp_path, capsys):
    write_nifti(synthetic_case(SHAPE, seed=5)[0], images / "p_0001.nii.gz")
    out = tmp_path / "out"
    refused(["predict", "--model", str(model), "--input", str(images), "--output", str(out)], capsys,
            str(images / "p_0001.nii.gz"), "takes 1 channel")
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("under", ["afile/out", "afile"])
def test_predict_output_under_a_file_is_named(model, images, tmp_path, capsys, under):
    (tmp_path / "afile").write_text("x")
    err = refused(["predict", "--model", str(model), "--input", str(images), "--output", str(tmp_path / under)], capsys,
                  str(tmp_path / "afile"))
    assert "FileExistsError" not in err and "is a file, not a folder" in err


def test_predict_with_a_missing_model_is_named(images, tmp_path, capsys):
    refused(["predict", "--model", str(tmp_path / "none"), "--input", str(images), "--output", str(tmp_path / "o")], capsys,
            str(tmp_path / "none"), "no model_final.pt")


# -- evaluate ------------------------------------------------------------------------------------------
@pytest.fixture
def scored(raw: Path, tmp_path: Path) -> tuple[Path, Path]:
    lab = synthetic_case(SHAPE, seed=0)[1]
    for folder in ("pred", "ref"):
        for case in ("x", "y"):
            write_nifti(lab, tmp_path / folder / f"{case}.nii.gz")
    return tmp_path / "pred", tmp_path / "ref"


@pytest.mark.parametrize("which, what", [("ref", "reference"), ("pred", "prediction")])
def test_evaluate_refuses_undeclared_label_values(raw, scored, tmp_path, capsys, which, what):
    lab = synthetic_case(SHAPE, seed=0)[1]
    lab[1, 1, 1], lab[2, 2, 2] = 5, 9
    bad = tmp_path / which / "y.nii.gz"
    write_nifti(lab, bad)
    pred, ref = scored
    refused(["evaluate", "--pred", str(pred), "--ref", str(ref), "--dataset", str(raw), "--out", str(tmp_path / "m.json")], capsys,
            str(bad), what, "[5, 9]")
    assert not (tmp_path / "m.json").exists() and not temporaries(tmp_path)


def test_evaluate_out_under_a_file_is_named(raw, scored, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    pred, ref = scored
    refused(["evaluate", "--pred", str(pred), "--ref", str(ref), "--dataset", str(raw), "--out", str(tmp_path / "afile" / "m.json")],
            capsys, str(tmp_path / "afile"), "is a file")


# -- the preprocessing cache ------------------------------------------------------------------------------
@pytest.fixture
def cached(raw: Path, tmp_path: Path) -> Run:
    run = create_run(raw, tmp_path / "run", overrides=tiny_overrides([8, 32, 32]), progress=False)
    run.ensure_preprocessed(progress=False)
    return run


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif how == "dtype":
        np.save(path, np.load(path).astype(np.float64))
    elif how == "shape":
        np.save(path, np.load(path)[..., :-1])
    else:
        path.write_bytes(b"not an npy file at all")


@pytest.mark.parametrize("how, words", [("truncated", ["is truncated"]), ("dtype", ["float64", "float32"]),
                                        ("shape", ["its properties say"]), ("garbage", ["unreadable header"])])
def test_a_damaged_cache_array_is_named_when_read(cached, how, words):
    from semiseg.data.cache import CacheError
    from semiseg.data.sampling import open_cases

    path = cached.cache / "b.npy"
    _damage(path, how)
    case = next(c for c in open_cases(cached.cache, ["a", "b"], True) if c.name == "b")
    with pytest.raises(CacheError, match="b.npy: cached array") as e:
        case.load()
    assert all(w in str(e.value) for w in words) and "semiseg preprocess" in str(e.value)


def test_a_damaged_label_array_is_named_and_preprocess_redoes_it(cached, capsys):
    from semiseg.data.cache import CacheError, load_cached

    seg = cached.cache / "a_seg.npy"
    good = np.load(seg)
    _damage(seg, "truncated")
    with pytest.raises(CacheError, match="a_seg.npy: cached array is truncated"):
        load_cached(cached.cache, "a", with_label=True)
    assert main(["--quiet", "preprocess", str(cached.root)]) == 0
    assert "a_seg.npy: cached array is truncated" in capsys.readouterr().err  # said, then redone
    assert np.array_equal(np.load(seg), good)


def test_corrupt_cache_properties_are_named(cached):
    from semiseg.data.cache import CacheError, load_cached

    (cached.cache / "c.json").write_text("{trunc")
    with pytest.raises(CacheError, match=r"c\.json: corrupt cache properties"):
        load_cached(cached.cache, "c", with_label=True)


def test_preprocess_removes_temporaries_a_killed_writer_left(cached):
    stale = cached.cache / ".b.npy.k2j4.tmp.npy"
    stale.write_bytes(b"half")
    (cached.cache / "b.json").unlink()  # one case to redo, so preprocessing takes the lock and sweeps
    cached.ensure_preprocessed(progress=False)
    assert not stale.exists() and (cached.cache / "b.json").is_file()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_preprocess_workers_stop_when_their_parent_is_killed(tmp_path):
    root = make_dataset(tmp_path / "ds", [f"c{i}" for i in range(8)], shape=(24, 72, 72), spacing_xyz=(1.0, 1.0, 1.5))
    run = create_run(root, tmp_path / "run", overrides={**tiny_overrides([8, 32, 32]), "target_spacing": [1.0, 0.7, 0.7]}, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-m", "semiseg", "--quiet", "preprocess", str(run.root), "--workers", "2"],
                              cwd=REPO, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        workers: list[int] = []
        while time.time() < deadline and parent.poll() is None:
            workers = _children(parent.pid)
            if len(workers) >= 2 and [p for p in run.cache.glob("*.json") if p.name != "preprocessing.json"]:  # workers are writing
                break
            time.sleep(0.05)
        assert parent.poll() is None, "preprocessing finished before it could be killed"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert workers and not any(_alive(w) for w in workers), "workers kept running after their parent died"
        time.sleep(0.2)
        assert not temporaries(run.cache)
    finally:
        if parent.poll() is None:
            parent.kill()


MID_TASK_PARENT = """
import os, sys, time
from multiprocessing import get_context
from semiseg.data.preprocess import _worker_init
if __name__ == "__main__":
    with get_context("spawn").Pool(1, initializer=_worker_init, initargs=(os.getpid(),)) as pool:
        worker = pool.apply(os.getpid)  # the worker is up and initialised
        pool.apply_async(time.sleep, (120,))  # a long task: a worker left alone would run it to the end
        print(worker, flush=True)
        time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")
def test_a_preprocessing_worker_in_mid_task_dies_with_its_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(MID_TASK_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    try:
        worker = int(parent.stdout.readline())
        time.sleep(0.3)  # in its 120 s task
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 5
        while time.time() < deadline and _alive(worker):
            time.sleep(0.05)
        assert not _alive(worker), "the worker kept running its task after its parent was killed"
    finally:
        if parent.poll() is None:
            parent.kill()
