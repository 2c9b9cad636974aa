"""A folder of predicted label maps that knows what wrote it, so a prediction never mixes with an older one.

``predictions.json`` in the folder records the stamp of the prediction (the model files' SHA-256, the options
that change labels, the post-processing) and, per case, the output file and the input files' size and mtime. A
later prediction into the folder resumes (skips the cases it vouches for) when its stamp and inputs are the
same; any other label map there (another model, other options, a changed input, a file it did not write) is
refused by name unless ``overwrite``. Torch-free: shared by the torch predictor and semiseg.deploy.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from semiseg.atomic import atomic_write_json, is_temporary, make_folder
from semiseg.data.cases import IMAGE_ENDINGS

MANIFEST = "predictions.json"
NEUTRAL_OPTIONS = ("device", "threads", "batch", "cpu_fast")  # change speed, not labels (beyond float rounding)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prediction_stamp(models: Sequence[str | Path], options: dict[str, Any], postprocess: Any = None) -> dict[str, Any]:
    """What makes two predictions the same: the model files' content, the label-changing options, post-processing."""
    return json.loads(json.dumps({
        "models": [file_digest(m) for m in models],
        "options": {k: v for k, v in options.items() if k not in NEUTRAL_OPTIONS},
        "postprocess": postprocess,
    }, default=str))


def _input_ids(paths: Sequence[Path]) -> list[list[Any]]:
    return [[p.name, (st := p.stat()).st_size, st.st_mtime_ns] for p in paths]


def _output_id(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def _is_label_map(p: Path) -> bool:
    return p.is_file() and p.name.endswith(IMAGE_ENDINGS) and not is_temporary(p)


class PredictionFolder:
    """``begin`` says which cases are already done (and refuses stale outputs); ``record`` vouches for a new one."""

    def __init__(self, folder: str | Path, stamp: dict[str, Any], overwrite: bool = False, part: str = ""):
        """``part`` names this writer's own record (e.g. "shard-0-of-4"): jobs predicting shards of one input into
        one folder at the same time each keep a record, and every record of the same prediction vouches."""
        self.folder = Path(folder)
        self.stamp = stamp
        self.overwrite = overwrite
        self.manifest_name = f"{Path(MANIFEST).stem}.{part}.json" if part else MANIFEST
        self.entries: dict[str, dict[str, Any]] = {}

    def _manifests(self) -> dict[str, dict[str, Any]]:
        """Every record in the folder by file name (an unreadable one vouches for nothing)."""
        out: dict[str, dict[str, Any]] = {}
        for path in sorted(self.folder.glob(f"{Path(MANIFEST).stem}*.json")):
            try:
                raw = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                raw = {}
            out[path.name] = raw if isinstance(raw, dict) else {}
        return out

    def begin(self, cases: dict[str, tuple[list[Path], str]]) -> set[str]:
        """The cases whose output is already there from this same prediction (to skip).

        A record vouches for a label map only while the file is the one it recorded (size and mtime), so a map
        rewritten by another prediction is never taken for this one's. The folder is listed before the records
        are read, and they are read again before refusing: a sibling shard that wrote a map and then its record
        meanwhile is not taken for a stranger. A shard also leaves alone the unrecorded maps of cases that are
        not its own while every record in the folder is of this same prediction (its siblings, still writing)."""
        make_folder(self.folder, "output folder")
        files = [p for p in sorted(self.folder.iterdir()) if _is_label_map(p)]
        targets = {f"{case}{ending}": (case, paths) for case, (paths, ending) in cases.items()}
        manifests: dict[str, dict[str, Any]] = {}
        for attempt in range(2):
            manifests = self._manifests()
            vouched = {e.get("file"): e for m in manifests.values() if m.get("stamp") == self.stamp
                       for e in m.get("cases", {}).values()}
            done, stale = set(), []
            for p in files:
                entry = vouched.get(p.name)
                case, paths = targets.get(p.name, (None, None))
                if (entry is not None and entry.get("output") == _output_id(p)
                        and (paths is None or entry.get("inputs") == _input_ids(paths))):
                    if case is not None:
                        done.add(case)
                    continue
                stale.append(p.name)
            if not stale:
                break
        other = any(m.get("stamp") not in (None, self.stamp) for m in manifests.values())
        if self.manifest_name != MANIFEST and not other:
            stale = [n for n in stale if n in targets]  # a sibling shard's unrecorded maps are its business
        if stale and not self.overwrite:
            why = "another model or other options" if other else \
                "another prediction (or a changed input)" if manifests else "a prediction this folder has no record of"
            raise ValueError(f"{self.folder}: holds {len(stale)} label map(s) from {why}, e.g. {stale[0]}: predicting into it "
                             "would mix them with this model's; pass --overwrite to replace them, or choose another --output")
        if self.overwrite:
            left = [n for n in stale if n not in targets]
            if left:
                print(f"{self.folder}: --overwrite leaves {len(left)} label map(s) of other cases in place, e.g. {left[0]}", file=sys.stderr)
            return set()
        own = manifests.get(self.manifest_name, {})
        self.entries = dict(own.get("cases", {})) if own.get("stamp") == self.stamp else {}
        return done

    def record(self, case: str, target: Path, paths: Sequence[Path]) -> None:
        self.entries[case] = {"file": target.name, "inputs": _input_ids(paths), "output": _output_id(target)}
        atomic_write_json(self.folder / self.manifest_name, {"stamp": self.stamp, "cases": self.entries})
