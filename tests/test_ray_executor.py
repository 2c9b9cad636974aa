"""Self-training over Ray (semiseg.selftrain.executor): the same selections and pseudo-labels as in this
process, and a worker killed in the middle of a pseudo-labelling shard is retried without leaving a
half-written case or redoing a finished one.

Ray runs locally on two CPUs (``ray.init(num_cpus=2)``) on the tiny synthetic data of test_selftrain
(k = 2 models of 3 steps, 4 unlabelled cases); the module skips when Ray is not installed."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'semiseg[ray]')")

import semiseg.data.cache as C  # noqa: E402  (writes each cache entry's completion mark)
import semiseg.selftrain.pipeline as P  # noqa: E402
from semiseg.networks.model_file import read_model  # noqa: E402
from semiseg.run import Run, create_run  # noqa: E402
from semiseg.selftrain.cli import executor_from_args, register_cli  # noqa: E402
from semiseg.selftrain.executor import InProcessExecutor, RayExecutor, Task  # noqa: E402
from semiseg.selftrain.pipeline import SelfTrainConfig, run_selftrain  # noqa: E402
from semiseg.selftrain.uncertainty import SelectionConfig  # noqa: E402
from synthetic_data import make_dataset, tiny_overrides  # noqa: E402

LABELLED = ["lab_0", "lab_1", "lab_2"]
UNLABELLED = ["unl_0", "unl_1", "unl_2", "unl_3"]
CFG = SelfTrainConfig(method="uncertainty", rounds=2, k=2, iterations=3, predict_step=1.0, evaluate_quality=False,
                      selection=SelectionConfig(threshold=0.5))

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; Ray tasks take one thread each too


@pytest.fixture(scope="module")
def ray_local() -> Any:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> tuple[Run, Run]:
    """The same two-round self-training twice: in this process, and as Ray tasks (one case a shard)."""
    ds = make_dataset(tmp_path_factory.mktemp("ds") / "raw", LABELLED, UNLABELLED, shape=(24, 48, 48))
    done = []
    for name, executor in (("local", InProcessExecutor()), ("ray", RayExecutor(cases_per_shard=1))):
        run = create_run(ds, tmp_path_factory.mktemp(name) / "run", base_features=4, overrides=tiny_overrides(), progress=False)
        run_selftrain(run, CFG, progress=False, executor=executor)
        done.append(run)
        if isinstance(executor, RayExecutor):
            names = sorted(t.name for t in executor.timings)
            assert names.count("train round_0/fold_0") == 1 and len([n for n in names if "shard" in n]) == 2 * len(UNLABELLED)
    return done[0], done[1]


def _root(run: Run) -> Path:
    return P.selftrain_dir(run, CFG.method)


def test_ray_and_in_process_give_identical_selections_and_pseudo_labels(runs: tuple[Run, Run]) -> None:
    local, distributed = (_root(r) for r in runs)
    for r in ("round_0", "round_1"):
        a, b = (json.loads((root / r / "selected.json").read_text()) for root in (local, distributed))
        assert a == b
        assert (local / r / "uncertainty.csv").read_text() == (distributed / r / "uncertainty.csv").read_text()
        for c in UNLABELLED:
            np.testing.assert_array_equal(np.load(local / r / "pseudo" / f"{c}_seg.npy"), np.load(distributed / r / "pseudo" / f"{c}_seg.npy"))
            pa, pb = (json.loads((root / r / "pseudo" / f"{c}.json").read_text()) for root in (local, distributed))
            assert pa["pairwise_dice"] == pb["pairwise_dice"]
    wa, wb = (read_model(root / "final" / "model_final.pt")["weights"] for root in (local, distributed))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def dying_pseudo_label(marker: Path, *args: Any, **kw: Any) -> Any:
    """:func:`pseudo_label` whose first attempt is killed (SIGKILL, as the OOM killer or a lost node
    would) while writing its second case's completion mark; the retry first records what it finds."""
    attempt = len(list(marker.glob("attempt_*")))
    (marker / f"attempt_{attempt}").touch()
    out = Path(args[3])
    if attempt == 0:
        real, marks = C.atomic_write_json, []

        def write_then_die(path: Any, obj: Any) -> None:
            path = Path(path)
            if path.parent == out:
                marks.append(path)
                if len(marks) == 2:
                    (out / f".{path.name}.cut.tmp.json").write_text(json.dumps(obj)[:40])  # a write cut short
                    os.kill(os.getpid(), signal.SIGKILL)
            real(path, obj)

        C.atomic_write_json = write_then_die
    else:
        found = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
        (marker / f"found_by_attempt_{attempt}.json").write_text(json.dumps(found))
    return P.pseudo_label(*args, **kw)


def test_a_worker_killed_mid_shard_is_retried_and_leaves_no_half_written_case(runs: tuple[Run, Run], tmp_path: Path) -> None:
    local_run = runs[0]
    reference = _root(local_run) / "round_0" / "pseudo"
    models = [_root(local_run) / "round_0" / f"fold_{f}" / "model_final.pt" for f in range(CFG.k)]
    out, marker = tmp_path / "pseudo", tmp_path / "marker"
    marker.mkdir()
    shard = UNLABELLED[:3]  # one shard of three cases: killed at the second
    executor = RayExecutor(max_retries=2)
    [matrices] = executor.run([Task(dying_pseudo_label, (marker, local_run, models, shard, out, CFG), {"progress": False}, "shard")], progress=False)
    assert sorted(p.name for p in marker.glob("attempt_*")) == ["attempt_0", "attempt_1"]  # killed once, retried once
    found = json.loads((marker / "found_by_attempt_1.json").read_text())
    first, second = shard[0], shard[1]
    assert {f"{first}.json", f"{first}_seg.npy", f"{second}_seg.npy", f".{second}.json.cut.tmp.json"} <= set(found)
    assert f"{second}.json" not in found  # no completion mark: the case counts as unfinished, and is redone
    # the finished case was not redone; the cut write is gone; every case is complete and as in this process
    assert (out / f"{first}.json").stat().st_mtime_ns == found[f"{first}.json"]
    assert (out / f"{first}_seg.npy").stat().st_mtime_ns == found[f"{first}_seg.npy"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert list(matrices) == shard
    for c in shard:
        np.testing.assert_array_equal(np.load(out / f"{c}_seg.npy"), np.load(reference / f"{c}_seg.npy"))
        assert json.loads((out / f"{c}.json").read_text())["pairwise_dice"] == json.loads((reference / f"{c}.json").read_text())["pairwise_dice"]


def always_dies() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def raises_value_error(marker: Path) -> None:
    (marker / f"attempt_{len(list(marker.glob('attempt_*')))}").touch()
    raise ValueError("a bad input")


def test_a_task_that_keeps_dying_fails_and_its_own_errors_are_not_retried(ray_local: Any, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="failed after 0 retries"):
        RayExecutor(max_retries=0).run([Task(always_dies, name="dies")], progress=False)
    with pytest.raises(ValueError, match="a bad input"):
        RayExecutor(max_retries=2).run([Task(raises_value_error, (tmp_path,), name="bug")], progress=False)
    assert len(list(tmp_path.glob("attempt_*"))) == 1


def test_cli_options_build_the_ray_executor_and_a_restart_redoes_nothing(runs: tuple[Run, Run], capsys: pytest.CaptureFixture[str]) -> None:
    ap = argparse.ArgumentParser()
    register_cli(ap.add_subparsers())
    a = ap.parse_args(["selftrain", "RUN", "--executor", "ray", "--address", "auto", "--gpus-per-task", "0.5", "--cpus-per-task", "4",
                       "--cases-per-shard", "25", "--max-retries", "1"])
    ex = executor_from_args(a)
    assert isinstance(ex, RayExecutor) and (ex.address, ex.gpus_per_task, ex.cpus_per_task, ex.cases_per_shard, ex.max_retries) == ("auto", 0.5, 4, 25, 1)
    assert ex.shard_count(2000) == 80 and ex.shard_count(3) == 1
    assert isinstance(executor_from_args(ap.parse_args(["selftrain", "RUN"])), InProcessExecutor)
    with pytest.raises(ValueError, match="--address needs --executor ray"):
        executor_from_args(ap.parse_args(["selftrain", "RUN", "--address", "auto"]))
    # the whole command again over Ray (the running local instance): every model and case is finished
    root = _root(runs[1])
    done = {p: p.stat().st_mtime_ns for p in [*root.rglob("*.pt"), *root.rglob("*_seg.npy"), *root.rglob("pseudo/*.json")]}
    a = ap.parse_args(["selftrain", str(runs[1].root), "--executor", "ray", "--cases-per-shard", "1", "--rounds", "2", "--k", "2",
                       "--iterations", "3", "--threshold", "0.5", "--step", "1.0", "--no-quality"])
    assert a.func(a) == 0
    assert {p: p.stat().st_mtime_ns for p in done} == done
    assert "round_1:" in capsys.readouterr().out
