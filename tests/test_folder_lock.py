"""One writer per folder: a live holder is named and refused, a lock dies with its process (no stale locks, no
reused pids mistaken for holders), re-entrant in one process; a training into a busy folder is refused."""
from __future__ import annotations

import subprocess
import sys
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
