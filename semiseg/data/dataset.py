"""Raw datasets in nnU-Net v2 layout, with a semi-supervised split.

Layout: ``dataset.json`` (channel_names, labels, file_ending), ``imagesTr/{case}_{XXXX}{ending}``,
``labelsTr/{case}{ending}``. Which cases a run may use *with* labels is decided by the split:

- ``splits_semisupervised.json`` (or a file given with ``split=``): ``{"labelled": [...],
  "unlabelled": [...], "test": [...]}``. Unlabelled and test cases may live in ``imagesTr`` even when a
  label exists; semiseg refuses to read those labels (:meth:`RawDataset.label_path`).
- without a split file: every case of ``imagesTr`` with a label is labelled, images in
  ``imagesUnlabelled/`` are unlabelled, images in ``imagesTs/`` are test cases.
"""
from __future__ import annotations

from collections import Counter

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.data.io import Geometry, ImageError, read_array

SPLIT_FILE = "splits_semisupervised.json"


class LabelAccessError(PermissionError):
    """Raised when code asks for the label of a case that the split marks as unlabelled or test."""


@dataclass
class RawDataset:
    root: Path
    meta: dict[str, Any]
    labelled: list[str]
    unlabelled: list[str]
    test: list[str]
    image_dirs: dict[str, Path] = field(default_factory=dict)  # case -> folder holding its images
    split_source: str = "split"  # where the split came from (a file path), for error messages
    split_issues: list[str] = field(default_factory=list)  # problems of the split as written (open(check=False) keeps them)

    @classmethod
    def open(cls, root: str | Path, split: str | Path | dict[str, list[str]] | None = None, check: bool = True) -> "RawDataset":
        """The dataset at ``root`` with its split; a split with problems (a case in two lists or twice in one, a
        list that is not a list of names) is refused here, wherever a dataset is opened, unless ``check=False``
        (``validate`` opens it that way to report every problem at once)."""
        root = Path(root)
        meta_path = root / "dataset.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: dataset.json not found (expected nnU-Net v2 raw layout)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: invalid JSON: {e}") from None
        for key in ("channel_names", "labels", "file_ending"):
            if key not in meta:
                raise ValueError(f"{meta_path}: missing required key '{key}'")
        if check and (bad := labels_problems(meta["labels"], meta_path)):
            raise ValueError("; ".join(bad))
        ending = meta["file_ending"]
        found: dict[str, Path] = {}
        for sub in ("imagesTr", "imagesUnlabelled", "imagesTs"):
            for case in _cases_in(root / sub, ending):
                found.setdefault(case, root / sub)
        source = "split (given as a dict)"
        if isinstance(split, dict):
            sp = split
        elif split is not None or (root / SPLIT_FILE).is_file():
            split_path = Path(split) if split is not None else root / SPLIT_FILE
            try:
                sp = json.loads(split_path.read_text())
                source = str(split_path)
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{split_path}: cannot read split file: {e}") from None
        else:
            source = f"split derived from the folders of {root}"
            sp = {
                "labelled": [c for c, d in found.items() if d.name == "imagesTr" and (root / "labelsTr" / f"{c}{ending}").is_file()],
                "unlabelled": [c for c, d in found.items() if d.name == "imagesUnlabelled"],
                "test": [c for c, d in found.items() if d.name == "imagesTs"],
            }
        problems = split_problems(sp, source)
        if problems and check:
            more = f" (and {len(problems) - 3} more; `semiseg validate` lists them all)" if len(problems) > 3 else ""
            raise ValueError("; ".join(problems[:3]) + more)
        ds = cls(root, meta, *(_case_list(sp.get(k) if isinstance(sp, dict) else None) for k in SPLIT_KEYS), found, source, problems)
        return ds

    # -- facts ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.root.name))

    @property
    def labels(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.meta["labels"].items()}

    @property
    def num_channels(self) -> int:
        return len(self.meta["channel_names"])

    @property
    def modality(self) -> str:
        return str(self.meta["channel_names"]["0"])

    @property
    def file_ending(self) -> str:
        return str(self.meta["file_ending"])

    # -- paths ---------------------------------------------------------------------------------
    def image_paths(self, case: str) -> list[Path]:
        folder = self.image_dirs.get(case, self.root / "imagesTr")
        return [folder / f"{case}_{c:04d}{self.file_ending}" for c in range(self.num_channels)]

    def label_path(self, case: str) -> Path:
        """Path of a labelled case's label. Refuses unlabelled and test cases, by design."""
        if case not in self.labelled:
            raise LabelAccessError(
                f"label of case '{case}' requested, but the split does not list it as labelled "
                "(semiseg never reads labels of unlabelled or test cases)"
            )
        return self.root / "labelsTr" / f"{case}{self.file_ending}"

    def reference_label_path(self, case: str) -> Path:
        """The hidden label of any case, for *evaluation only* (pseudo-label quality, test metrics):
        ``labelsTr/`` or, for cases kept apart, ``labelsTs/``."""
        name = f"{case}{self.file_ending}"
        tr = self.root / "labelsTr" / name
        ts = self.root / "labelsTs" / name
        return ts if ts.is_file() and not tr.is_file() else tr

    def load_case(self, case: str, with_label: bool) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
        """(C, z, y, x) float32 image, (z, y, x) label or None, geometry of channel 0."""
        chans, geo = [], None
        for p in self.image_paths(case):
            arr, g = read_array(p)
            if geo is None:
                geo = g
            elif (diff := geo.matches(g)) is not None:
                raise ImageError(f"{p}: channel geometry differs from channel 0: {diff}")
            chans.append(arr.astype(np.float32))
        assert geo is not None
        image = np.stack(chans)
        label = None
        if with_label:
            lp = self.label_path(case)
            label, lg = read_array(lp)
            if (diff := geo.matches(lg)) is not None:
                raise ImageError(f"{lp}: label geometry does not match image: {diff}")
            if bad := label_value_problems(label, lp, set(self.labels.values())):
                raise ImageError(bad[0])  # a value cast or indexed blindly would train on a wrong class, or crash later
            label = label.astype(np.int16)
        return image, label, geo


SPLIT_KEYS = ("labelled", "unlabelled", "test")


def labels_problems(labels: Any, meta_path: Path) -> list[str]:
    """What is wrong with dataset.json's ``labels``: not a mapping of name -> distinct integer, or no background 0."""
    if not isinstance(labels, dict) or not labels:
        return [f"{meta_path}: 'labels' must map class names to integer values, got {json.dumps(labels)[:60]}"]
    problems = [f"{meta_path}: label '{name}' must map to one integer value, got {json.dumps(v)[:40]} (region labels are not supported)"
                for name, v in labels.items() if isinstance(v, bool) or not isinstance(v, int)]
    values = [v for v in labels.values() if isinstance(v, int) and not isinstance(v, bool)]
    if len(set(values)) != len(values):
        problems.append(f"{meta_path}: label values must be distinct, got {labels}")
    if 0 not in values:
        problems.append(f"{meta_path}: labels must declare background = 0, got {labels}")
    return problems


def label_value_problems(label: np.ndarray, path: Path, declared: set[int]) -> list[str]:
    """What is wrong with the values of one label map: fractional values (1.5 would be cast to 1), NaN/Inf, or
    values dataset.json does not declare (7 or -1 would crash training far from the file, or train on nothing)."""
    if np.issubdtype(label.dtype, np.floating):
        finite = np.isfinite(label)
        if not finite.all():
            return [f"{path}: label contains {int((~finite).sum())} NaN/Inf voxels"]
        frac = label[np.mod(label, 1) != 0]
        if frac.size:
            return [f"{path}: label has non-integer values (e.g. {float(frac.flat[0]):g}); labels must be whole class numbers"]
    values = np.unique(label).astype(np.int64).tolist()
    undeclared = sorted(set(values) - declared)
    if undeclared:
        shown = undeclared[:10] + (["..."] if len(undeclared) > 10 else [])
        return [f"{path}: label values {shown} are not declared in dataset.json labels {sorted(declared)}"]
    return []


def _case_list(value: Any) -> list[str]:
    return [str(c) for c in value] if isinstance(value, list) else []


def split_problems(sp: Any, source: str) -> list[str]:
    """Everything wrong with a split mapping, each naming its source: lists that are not lists of case names, a
    case listed twice in one list (double weight) or in two lists (test labels trained on)."""
    if not isinstance(sp, dict):
        return [f"{source}: a split must map labelled / unlabelled / test to lists of case names, got {type(sp).__name__}"]
    problems, seen = [], {}
    for name in SPLIT_KEYS:
        value = sp.get(name, [])
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            problems.append(f"{source}: '{name}' must be a list of case names, got {json.dumps(value)[:60]}")
            continue
        for case, n in Counter(value).items():
            if n > 1:
                problems.append(f"{source}: case '{case}' is listed {n} times in '{name}'")
        for case in dict.fromkeys(value):
            if case in seen:
                problems.append(f"{source}: case '{case}' is both {seen[case]} and {name}")
            else:
                seen[case] = name
    return problems


def _cases_in(folder: Path, ending: str) -> list[str]:
    if not folder.is_dir():
        return []
    pat = re.compile(r"^(.*)_(\d{4})" + re.escape(ending) + "$")
    return sorted({m.group(1) for p in folder.iterdir() if (m := pat.match(p.name))})
