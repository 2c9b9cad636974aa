"""One writer per folder: a live holder is named and refused, a stale lock is taken over, the lock is re-entrant
in one process and gone afterwards; a training into a folder another process is writing is refused."""
from __future__ import annotations

import json
import os
import socket

import pytest

from semiseg.data.folder_lock import LOCK_NAME, FolderBusy, FolderLock


def hold(folder, pid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "what": "train cps",
                                                "command": "semiseg train RUN --method cps"}))


def test_a_live_holder_is_named_and_refused(tmp_path):
    hold(tmp_path, os.getppid())  # a process that is alive
    with pytest.raises(FolderBusy, match=rf"busy: process {os.getppid()} .*train cps: semiseg train RUN --method cps"):
        with FolderLock(tmp_path):
            pass
    assert (tmp_path / LOCK_NAME).is_file()  # the holder's lock is left alone


def test_a_stale_lock_is_taken_over_and_the_lock_is_reentrant(tmp_path):
    hold(tmp_path, 2**22 + 12345)  # no such process
    with FolderLock(tmp_path, "outer"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        with FolderLock(tmp_path, "inner"):  # a training inside a self-training round
            pass
        assert (tmp_path / LOCK_NAME).is_file()
    assert not (tmp_path / LOCK_NAME).exists()


def test_training_into_a_busy_folder_is_refused(tmp_path):
    from semiseg.config import TrainConfig
    from semiseg.engine.trainer import DataSpec, train

    out = tmp_path / "model"
    hold(out, os.getppid())
    with pytest.raises(FolderBusy, match="busy"):
        train(None, TrainConfig(), DataSpec(tmp_path, []), out, progress=False)  # refused before anything is read
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
