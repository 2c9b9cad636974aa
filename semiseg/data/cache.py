"""The preprocessing cache: one folder, three files per case, and this module is the only one that spells them.

    {case}.npy       (C, z, y, x) float32: cropped, normalised, resampled image
    {case}_seg.npy   (z, y, x) int16 labels, only for a case cached as labelled (pseudo-labels included)
    {case}.json      the properties that invert preprocessing (geometry, bbox, shapes), ``labelled``,
                     foreground ``class_locations``; written last, so its presence marks the case complete

Every file is written atomically (semiseg.atomic); readers trust a case whose JSON exists.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.atomic import atomic_save_npy, atomic_write_json, link_or_copy


@dataclass(frozen=True)
class Cache:
    """A cache folder (``RUN/cache``, a pseudo-label round's folder, a self-training pool)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def data_path(self, case: str) -> Path:
        return self.root / f"{case}.npy"

    def seg_path(self, case: str) -> Path:
        return self.root / f"{case}_seg.npy"

    def props_path(self, case: str) -> Path:
        return self.root / f"{case}.json"

    def files(self, case: str, labelled: bool) -> list[Path]:
        """The case's files in the order they are written: the completion mark last."""
        return [self.data_path(case), *([self.seg_path(case)] if labelled else []), self.props_path(case)]

    def props(self, case: str) -> dict[str, Any] | None:
        """The properties of a complete case; None while the case is absent or unfinished."""
        p = self.props_path(case)
        return json.loads(p.read_text()) if p.is_file() else None

    def has_all_files(self, case: str, labelled: bool) -> bool:
        return all(p.is_file() for p in self.files(case, labelled))

    def load_data(self, case: str, mmap: bool = False) -> np.ndarray:
        return np.load(self.data_path(case), mmap_mode="r" if mmap else None)

    def load_seg(self, case: str, mmap: bool = False) -> np.ndarray:
        return np.load(self.seg_path(case), mmap_mode="r" if mmap else None)

    def write_case(self, case: str, data: np.ndarray | Path, seg: np.ndarray | None, props: dict[str, Any]) -> None:
        """Data (an array, or the path of a cached one to link), labels if any (int16), then the properties,
        which mark the case complete."""
        if isinstance(data, Path):
            link_or_copy(data, self.data_path(case))
        else:
            atomic_save_npy(self.data_path(case), data)
        if seg is not None:
            atomic_save_npy(self.seg_path(case), seg.astype(np.int16, copy=False))
        atomic_write_json(self.props_path(case), props)

    def link_case(self, src: "Cache", case: str, labelled: bool) -> None:
        """A case of another cache folder, hard-linked (or copied), the completion mark last."""
        for s, d in zip(src.files(case, labelled), self.files(case, labelled)):
            link_or_copy(s, d)
