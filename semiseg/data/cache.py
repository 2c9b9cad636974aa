"""The preprocessing cache: one folder, three files per case, and this module is the only one that spells them.

    {case}.npy       (C, z, y, x) float32: cropped, normalised, resampled image
    {case}_seg.npy   (z, y, x) int16 labels, only for a case cached as labelled (pseudo-labels included)
    {case}.json      the properties that invert preprocessing (geometry, bbox, shapes), ``labelled``,
                     foreground ``class_locations`` and ``arrays``, each array's shape and dtype; written last,
                     so its presence marks the case complete

Every file is written atomically (semiseg.atomic). Every read checks the array's header against the recorded
shape and dtype (and its size against the header): a corrupt, truncated or foreign file is a CacheError naming
it, not a cryptic mmap error or a silently wrong array.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.atomic import atomic_save_npy, atomic_write_json, is_temporary, link_or_copy

DATA_DTYPE, SEG_DTYPE = "float32", "int16"
_REDO = "run `semiseg preprocess` on the run folder again"


class CacheError(ValueError):
    """A cached array that does not match its properties (corrupt, truncated or from another preprocessing),
    or properties that do not parse."""


def array_specs(props: dict[str, Any], labelled: bool) -> dict[str, dict[str, Any]]:
    """Expected shape and dtype of a case's arrays ("data", and "seg" when labelled): as recorded, or (caches
    written before the record) the resampled shape with any channel count."""
    spatial = props.get("shape_after_resample")  # None: a hand-made entry; its shapes are not checked
    specs = {"data": {"shape": None if spatial is None else [None, *spatial], "dtype": DATA_DTYPE}}
    if labelled:
        specs["seg"] = {"shape": spatial, "dtype": SEG_DTYPE}
    recorded = props.get("arrays", {})
    return {k: recorded.get(k, v) for k, v in specs.items()}


def array_problem(path: Path, spec: dict[str, Any]) -> str | None:
    """None if the .npy at ``path`` is whole and has the recorded shape and dtype, else what is wrong (reads the
    header only: cheap enough to run on every read)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            offset = f.tell()
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError, EOFError) as e:
        return f"has an unreadable header ({e})"
    want = spec["shape"]
    wrong_shape = want is not None and (len(shape) != len(want) or any(w is not None and w != s for w, s in zip(want, shape)))
    if wrong_shape or str(dtype) != spec["dtype"]:
        return f"holds {str(dtype)} {list(shape)}, its properties say {spec['dtype']} {want}"
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    size = os.path.getsize(path)
    if size < expected:
        return f"is truncated ({size} of {expected} bytes)"
    return None


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

    def array_path(self, case: str, which: str) -> Path:
        return self.data_path(case) if which == "data" else self.seg_path(case)

    def files(self, case: str, labelled: bool) -> list[Path]:
        """The case's files in the order they are written: the completion mark last."""
        return [self.data_path(case), *([self.seg_path(case)] if labelled else []), self.props_path(case)]

    def props(self, case: str) -> dict[str, Any] | None:
        """The properties of a complete case; None while the case is absent or unfinished; a CacheError naming
        the file when they do not parse."""
        p = self.props_path(case)
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise CacheError(f"{p}: corrupt cache properties ({e}); delete it and {_REDO}") from None

    def _complete_props(self, case: str) -> dict[str, Any]:
        props = self.props(case)
        if props is None:
            raise FileNotFoundError(f"{self.props_path(case)}: case '{case}' is not in the preprocessing cache")
        return props

    def has_all_files(self, case: str, labelled: bool) -> bool:
        return all(p.is_file() for p in self.files(case, labelled))

    def problems(self, case: str, props: dict[str, Any], labelled: bool) -> list[tuple[Path, str]]:
        """(file, what is wrong) for each of the case's arrays that does not match ``props``."""
        return [(p, why) for which, spec in array_specs(props, labelled).items()
                if (why := array_problem(p := self.array_path(case, which), spec)) is not None]

    def _read(self, case: str, which: str, props: dict[str, Any], mmap: bool) -> np.ndarray:
        path = self.array_path(case, which)
        why = array_problem(path, array_specs(props, which == "seg")[which])
        if why is not None:
            raise CacheError(f"{path}: cached array {why}; {_REDO} (it redoes damaged cases)")
        return np.load(path, mmap_mode="r" if mmap else None)

    def load(self, case: str, labelled: bool, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """A complete case's image (and labels when ``labelled``), each checked against its properties first."""
        props = self._complete_props(case)
        data = self._read(case, "data", props, mmap)
        return data, (self._read(case, "seg", props, mmap) if labelled else None)

    def load_data(self, case: str, mmap: bool = False) -> np.ndarray:
        return self._read(case, "data", self._complete_props(case), mmap)

    def load_seg(self, case: str, mmap: bool = False) -> np.ndarray:
        return self._read(case, "seg", self._complete_props(case), mmap)

    def has_foreground(self, case: str) -> bool:
        """Whether a cached labelled case has any foreground voxel (its class locations are not all empty)."""
        return any(len(v) for v in self._complete_props(case).get("class_locations", {}).values())

    def write_case(self, case: str, data: np.ndarray | Path, seg: np.ndarray | None, props: dict[str, Any]) -> None:
        """Data (a float32 array, or the path of a cached one to link, whose record ``props`` carries), labels
        if any (int16), then the properties with each array's shape and dtype, which mark the case complete."""
        arrays = dict(props.get("arrays", {}))
        if isinstance(data, Path):
            link_or_copy(data, self.data_path(case))
        else:
            data = data.astype(DATA_DTYPE, copy=False)
            atomic_save_npy(self.data_path(case), data)
            arrays["data"] = {"shape": list(data.shape), "dtype": DATA_DTYPE}
        if seg is not None:
            seg = seg.astype(SEG_DTYPE, copy=False)
            atomic_save_npy(self.seg_path(case), seg)
            arrays["seg"] = {"shape": list(seg.shape), "dtype": SEG_DTYPE}
        atomic_write_json(self.props_path(case), {**props, "arrays": arrays})

    def link_case(self, src: "Cache", case: str, labelled: bool) -> None:
        """A case of another cache folder, hard-linked (or copied), the completion mark last."""
        for s, d in zip(src.files(case, labelled), self.files(case, labelled)):
            link_or_copy(s, d)

    def remove_partial(self, case: str) -> list[Path]:
        """Delete the temporaries a killed writer of ``case`` left (atomic writes never leave a half-written
        target, only these); call only while no other writer of the case is live. Returns what was removed."""
        removed = []
        for target in self.files(case, labelled=True):
            for p in self.root.glob(f".{glob.escape(target.name)}.*"):
                if p.is_file() and is_temporary(p):
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed


def load_cached(cache: str | Path, case: str, with_label: bool, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """:meth:`Cache.load` of the folder ``cache``."""
    return Cache(Path(cache)).load(case, labelled=with_label, mmap=mmap)
