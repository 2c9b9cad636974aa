"""One writer per folder: a lock file naming its holder, so two trainings (or preprocessings) never write into
the same folder at once (one would die on the other's rename, or leave a model of one configuration beside the
train_config.json of the other).

The lock is ``<folder>/.semiseg.lock`` holding the holder's pid, host and command line. It is created with
O_EXCL (atomic on local and NFS v3+ filesystems); a lock whose process is gone on this host is stale and taken
over. Used as a context manager; re-entrant within one process (a training inside a self-training round).
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".semiseg.lock"
_HELD: dict[Path, int] = {}  # folders this process holds, with the nesting depth


class FolderBusy(RuntimeError):
    """The folder is being written by another live process."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    def __init__(self, folder: str | Path, what: str = "write"):
        self.folder = Path(folder).resolve()
        self.path = self.folder / LOCK_NAME
        self.what = what

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def __enter__(self) -> "FolderLock":
        if self.folder in _HELD:
            _HELD[self.folder] += 1
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what, "command": " ".join(sys.argv)[:500]}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                h = self.holder()
                if h and (h.get("host") != me["host"] or _alive(int(h.get("pid", -1)))):
                    raise FolderBusy(f"{self.folder}: busy: process {h.get('pid')} on {h.get('host')} is writing it "
                                     f"({h.get('what')}: {h.get('command')}); wait for it, or delete {self.path} if it is gone") from None
                self.path.unlink(missing_ok=True)  # stale: its process ended without releasing it
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            _HELD[self.folder] = 1
            return self
        raise FolderBusy(f"{self.folder}: could not take the lock {self.path}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        _HELD[self.folder] -= 1
        if _HELD[self.folder] == 0:
            del _HELD[self.folder]
            h = self.holder()
            if h and h.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
