"""One writer per folder: a live holder is named and refused (or waited for, where asked), a lock dies with its process (no stale locks, no
reused pids mistaken for holders), re-entrant in one process; a training into a busy folder is refused."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from semiseg.data.folder_lock import LOCK_NAME, FolderBusy, FolderLock

HOLD = """
import sys, time
from semiseg.data.folder_lock import FolderLock
with FolderLock(sys.argv[1], "train cps"):
    print("held", flush=True)
    time.sleep(60)
"""


def holder_process(folder):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_live_holder_is_named_and_refused_and_its_lock_dies_with_it(tmp_path):
    p = holder_process(tmp_path)
    try:
        with pytest.raises(FolderBusy, match=rf"busy: process {p.pid} .*\(train cps: "):
            with FolderLock(tmp_path):
                pass
    finally:
        p.kill()  # killed, not released: the kernel drops its lock
        p.wait()
    with FolderLock(tmp_path, "next"):
        assert '"what": "next"' in (tmp_path / LOCK_NAME).read_text()


def test_the_lock_is_reentrant_and_released(tmp_path):
    with FolderLock(tmp_path, "outer"):
        with FolderLock(tmp_path, "inner"):  # a training inside a self-training round
            pass
        assert '"outer"' in (tmp_path / LOCK_NAME).read_text()
    assert not (tmp_path / LOCK_NAME).exists()  # released: nothing left in the folder
    p = holder_process(tmp_path)  # and another process can take it
    p.kill()
    p.wait()


def test_training_into_a_busy_folder_is_refused(tmp_path):
    from semiseg.config import TrainConfig
    from semiseg.engine.trainer import DataSpec, train

    out = tmp_path / "model"
    p = holder_process(out)
    try:
        with pytest.raises(FolderBusy, match="busy"):
            train(None, TrainConfig(), DataSpec(tmp_path, []), out, progress=False)  # refused before anything is read
        assert sorted(q.name for q in out.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        p.kill()
        p.wait()


def ending(p, after_s=0.5):
    """Kill ``p`` after a while, in a timer thread; the event is set just before the kill (the lock cannot be
    free before it), so a test can tell whether it got the lock while the holder lived."""
    killed = threading.Event()

    def end():
        killed.set()
        p.kill()

    ender = threading.Timer(after_s, end)
    ender.start()
    return ender, killed


def test_a_waiting_taker_names_the_holder_and_gets_the_lock_when_it_ends(tmp_path, capsys):
    p = holder_process(tmp_path)
    ender, killed = ending(p)  # the holder ends while the taker waits
    try:
        with FolderLock(tmp_path, "preprocess", wait=True):
            assert killed.is_set()  # taken only once the holder was gone
            assert '"what": "preprocess"' in (tmp_path / LOCK_NAME).read_text()
    finally:
        ender.cancel()
        p.kill()
        p.wait()
    assert f"process {p.pid} " in capsys.readouterr().err  # it said whom it waited for
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_second_preprocessing_waits_for_the_first_instead_of_failing(tmp_path, monkeypatch):
    from semiseg.data import preprocess

    out = tmp_path / "cache"
    p = holder_process(out)  # another process preprocesses into the folder, as a benchmark started beside this one
    ender, killed = ending(p)
    # cases left to write while the other writer lives; none once it is done (it wrote them)
    monkeypatch.setattr(preprocess, "_todo", lambda *a: [] if killed.is_set() else [("case",)])

    def write(todo, *a):
        assert not todo, "cases the other writer wrote were written again"

    monkeypatch.setattr(preprocess, "_preprocess_all", write)
    try:
        preprocess.preprocess_dataset(tmp_path, None, None, {"case": True}, out, progress=False)  # waits, then finds it done
    finally:
        ender.cancel()
        p.kill()
        p.wait()
    assert not (out / LOCK_NAME).exists()
