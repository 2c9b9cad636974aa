"""Build the embedded demo sample (semiseg/resources/chaos_sample) from ../shared/data/ChaosT2.

Resamples in-plane to 2.5 mm (z keeps 7.7 mm): images linearly (kept int16), labels nearest. The split
keeps the benchmark's roles: 4 labelled, 10 unlabelled (images only, no labels shipped), 6 test (labels
in labelsTs, for evaluation only). CHAOS is CC BY-NC-SA 4.0; the sample carries that notice.

    python scripts/make_demo_sample.py [--source ../shared/data/ChaosT2]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import SimpleITK as sitk

LABELLED = ["chaos_000", "chaos_001", "chaos_002", "chaos_003"]
UNLABELLED = [f"chaos_{i:03d}" for i in range(4, 14)]  # the benchmark's 10 unlabelled cases: what AD-MT learns from
TEST = [f"chaos_{i:03d}" for i in range(14, 20)]  # the benchmark's 6 test cases
SPACING_XY = 2.5

LICENSE = """Derived from the CHAOS challenge MR T2-SPIR training set (Kavur et al., "CHAOS Challenge -
combined (CT-MR) healthy abdominal organ segmentation", Medical Image Analysis 69, 2021), as resampled
by SSL-ALPNet (Ouyang et al., ECCV 2020), and resampled again by semiseg (scripts/make_demo_sample.py).

Licence: Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International (CC BY-NC-SA 4.0),
https://creativecommons.org/licenses/by-nc-sa/4.0/ . Non-commercial use only; attribute the CHAOS
challenge; share derivatives under the same licence. This licence covers this folder only, not the
rest of semiseg.
"""


def resample(img: sitk.Image, spacing: tuple[float, float, float], label: bool) -> sitk.Image:
    size = [int(round(sz * sp / t)) for sz, sp, t in zip(img.GetSize(), img.GetSpacing(), spacing)]
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    out = sitk.Resample(img, size, sitk.Transform(), interp, img.GetOrigin(), spacing, img.GetDirection(), 0, img.GetPixelID())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--source", default=str(here.parent / "shared" / "data" / "ChaosT2"))
    ap.add_argument("--out", default=str(here / "semiseg" / "resources" / "chaos_sample"))
    a = ap.parse_args()
    src, out = Path(a.source), Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / d).mkdir(parents=True)
    meta = json.loads((src / "dataset.json").read_text())
    for case in LABELLED + UNLABELLED + TEST:
        img = sitk.ReadImage(str(src / "imagesTr" / f"{case}_0000.nii.gz"))
        sp = (SPACING_XY, SPACING_XY, img.GetSpacing()[2])
        folder = "imagesTs" if case in TEST else "imagesTr"
        sitk.WriteImage(resample(img, sp, False), str(out / folder / f"{case}_0000.nii.gz"), True)
        if case in UNLABELLED:
            continue  # unlabelled: no label shipped at all
        lab = sitk.ReadImage(str(src / "labelsTr" / f"{case}.nii.gz"))
        lfolder = "labelsTs" if case in TEST else "labelsTr"
        sitk.WriteImage(sitk.Cast(resample(lab, sp, True), sitk.sitkUInt8), str(out / lfolder / f"{case}.nii.gz"), True)
    meta.update({"name": "ChaosT2Sample", "numTraining": len(LABELLED), "licence": "CC BY-NC-SA 4.0 (see LICENSE.txt)",
                 "provenance": meta.get("provenance", "") + f" Resampled to {SPACING_XY} mm in-plane by semiseg."})
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    (out / "splits_semisupervised.json").write_text(json.dumps({"labelled": LABELLED, "unlabelled": UNLABELLED, "test": TEST}, indent=2))
    (out / "LICENSE.txt").write_text(LICENSE)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
