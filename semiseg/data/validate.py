"""Dataset validation that reports every problem at once, each naming its file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from semiseg.data.dataset import RawDataset, label_value_problems, labels_problems, split_problems
from semiseg.data.io import ImageError, read_array


def validate_dataset(ds: RawDataset, progress: bool = True) -> list[str]:
    """Return a list of problems (empty when the dataset is usable). Never reads unlabelled labels."""
    problems: list[str] = []
    problems += ds.split_issues or split_problems({"labelled": ds.labelled, "unlabelled": ds.unlabelled, "test": ds.test}, ds.split_source)
    seen: dict[str, str] = {}  # case -> the first list naming it
    for name, cases in (("labelled", ds.labelled), ("unlabelled", ds.unlabelled), ("test", ds.test)):
        for case in cases:
            seen.setdefault(case, name)
    label_issues = labels_problems(ds.meta["labels"], ds.root / "dataset.json")
    problems += label_issues
    declared = set() if label_issues and not isinstance(ds.meta["labels"], dict) else {
        v for v in ds.meta["labels"].values() if isinstance(v, int) and not isinstance(v, bool)}
    cases = list(seen)
    for case in tqdm(cases, desc="validate", disable=not progress):
        geo = None
        for p in ds.image_paths(case):
            try:
                arr, g = read_array(p)
            except ImageError as e:
                problems.append(str(e))
                continue
            if not np.isfinite(arr).all():
                problems.append(f"{p}: image contains {int((~np.isfinite(arr)).sum())} NaN/Inf voxels")
            if geo is None:
                geo = g
            elif (diff := geo.matches(g)) is not None:
                problems.append(f"{p}: channel geometry differs from channel 0: {diff}")
        if seen[case] != "labelled":
            continue  # never read labels of unlabelled/test cases
        lp = ds.label_path(case)
        try:
            lab, lg = read_array(lp)
        except ImageError as e:
            problems.append(str(e))
            continue
        if geo is not None and (diff := geo.matches(lg)) is not None:
            problems.append(f"{lp}: label geometry does not match image: {diff}")
        problems += label_value_problems(lab, lp, declared)
    if not ds.labelled:
        problems.append(f"{ds.root}: no labelled cases")
    return problems


def format_problems(root: Path, problems: list[str]) -> str:
    if not problems:
        return f"{root}: OK"
    return f"{root}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems)
