"""One writer per folder: a lock naming its holder, so two trainings (or preprocessings) never write into the
same folder at once (one would die on the other's rename, or leave a model of one configuration beside the
train_config.json of the other).

The lock is an advisory ``flock`` on ``<folder>/.semiseg.lock``, which holds the holder's pid, host and command
for the message. The kernel releases it when its process ends, however it ends, so a killed run never leaves a
held lock and a reused pid is never mistaken for a holder (local filesystems; on NFS, flock needs a lock
daemon); a killed run's file is simply locked again. The holder unlinks the file before unlocking, and a taker
checks that the file it locked is still the one at the path, so two processes never hold two files at once.
Re-entrant within one process (a training inside a self-training round). A writer of a shared, idempotent
product (a preprocessing cache) takes the lock with ``wait=True``: it says whom it waits for and blocks until
the holder is done, then re-checks what is left to write, instead of failing a benchmark started beside another.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".semiseg.lock"
_HELD: dict[Path, list] = {}  # folders this process holds: [open file, nesting depth]


class FolderBusy(RuntimeError):
    """The folder is being written by another live process."""


class FolderLock:
    def __init__(self, folder: str | Path, what: str = "write", wait: bool = False):
        self.folder = Path(folder).resolve()
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.wait = wait

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def __enter__(self) -> "FolderLock":
        if self.folder in _HELD:
            _HELD[self.folder][1] += 1
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fh = open(self.path, "a+")
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                h = self.holder() or {}
                busy = (f"{self.folder}: busy: process {h.get('pid', '?')} on {h.get('host', '?')} is writing it "
                        f"({h.get('what', '?')}: {h.get('command', '?')})")
                if not self.wait:
                    fh.close()
                    raise FolderBusy(f"{busy}; wait for it to finish") from None
                print(f"{busy}; waiting for it to finish", file=sys.stderr, flush=True)
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # blocks until the holder unlocks (or dies)
            try:
                if os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino:
                    break  # the file we locked is still the lock (its holder did not unlink it meanwhile)
            except FileNotFoundError:
                pass
            fh.close()
        fh.seek(0)
        fh.truncate()
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what, "command": " ".join(sys.argv)[:500]}, fh)
        fh.flush()
        _HELD[self.folder] = [fh, 1]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        held = _HELD[self.folder]
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self.folder]
            fh = held[0]
            self.path.unlink(missing_ok=True)  # before unlocking: a waiter that opened it sees another inode and retries
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()
