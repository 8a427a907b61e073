"""Give 10-class models the reference unfamiliar-photo flag (:class:`vtviz.models.ood.ReferenceFlag`).

    python tools/calibrate_reference.py --reference vt-lite0-imagenet \\
        --data ../shared/datasets/imagenette MODEL [MODEL ...] [--write] [--val]

Threshold: the highest one at which at least ``--detection`` (0.9) of the foreign "calibration"
photos (:mod:`vtviz.foreign`) are flagged, provided at most ``--false-alarms`` (0.05) of the dev
photos (the same 10% per-class split of Imagenette *train* that VT-Lite0's distillation held
out) are; else the dev photos' 95% quantile. Never chosen on val: ``--val`` measures val and the
foreign "report" photos once, at the end. ``--write`` stores the flag in each MODEL (its kNN
bank is dropped).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

import vtviz
from vtviz.data import read_image_folder
from vtviz.foreign import foreign_photos
from vtviz.models.checkpoint import read_checkpoint
from vtviz.models.ood import ReferenceFlag
from vtviz.models.teacher import imagenet_indices
from vtviz.preprocess import Fit, Preprocess
from vtviz.train.dev import dev_split


def rates(flag: ReferenceFlag, inside: list[np.ndarray], outside: list[tuple[str, np.ndarray]]) -> dict:
    s_in, _ = flag.judge(inside)
    s_out, seen = flag.judge([p for _, p in outside])
    t = flag.threshold
    return {"false_alarm_rate": round(float((s_in > t).float().mean()), 4), "inside_images": len(inside),
            "detection_rate": round(float((s_out > t).float().mean()), 4), "outside_images": len(outside),
            "outside": [{"photo": n, "score": round(float(s), 3), "looks_like": c}
                        for (n, _), s, c in zip(outside, s_out, seen)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--reference", default="vt-lite0-imagenet")
    p.add_argument("--data", required=True)
    p.add_argument("--detection", type=float, default=0.9)
    p.add_argument("--false-alarms", type=float, default=0.05)
    p.add_argument("--write", action="store_true")
    p.add_argument("--val", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    reference = vtviz.load_model(args.reference, device="cpu")
    name = Path(args.reference).name.removesuffix(".safetensors")
    classes = vtviz.model_meta(vtviz.load_model(args.models[0], device="cpu")).classes
    train = read_image_folder(Path(args.data) / "train", Preprocess(size=224, fit=Fit.STRETCH), progress=False)
    _, dev_idx = dev_split(train.labels, 0.1, 0)
    dev = [np.asarray(train.images[i]) for i in dev_idx]
    probe = ReferenceFlag(reference, tuple(imagenet_indices(classes)), 0.0, name, {})
    scores, _ = probe.judge(dev)
    calibration = foreign_photos("calibration")
    outside, _ = probe.judge([ph for _, ph in calibration])
    need = math.ceil(args.detection * len(outside))
    threshold = round(float(outside.sort(descending=True).values[need - 1]) - 0.001, 4)  # `need` lie above
    if float((scores > threshold).float().mean()) > args.false_alarms:
        threshold = round(float(torch.quantile(scores, 1 - args.false_alarms)), 4)
    info = {"rule": f">= {args.detection:.0%} of the calibration photos flagged, <= {args.false_alarms:.0%} of dev",
            "dev_images": len(dev), "data": Path(args.data).name,
            "chosen_on": "dev split of train (10% per class, seed 0) and vtviz.foreign's calibration photos"}
    flag = dataclasses.replace(probe, threshold=threshold, info=info)
    info["calibration_photos"] = rates(flag, dev, calibration)
    report = {"threshold": threshold, "calibration": info["calibration_photos"]}
    if args.val:
        val = read_image_folder(Path(args.data) / "val", Preprocess(size=224, fit=Fit.STRETCH), progress=False)
        report["val_and_report_photos"] = rates(flag, [np.asarray(im) for im in val.images], foreign_photos("report"))
    print(json.dumps(report, indent=1))
    if args.write:
        for model_name in args.models:
            model = vtviz.load_model(model_name, device="cpu")
            model.ood = dataclasses.replace(flag, info=dict(info))
            _, meta, path = read_checkpoint(model_name)
            vtviz.save_model(model, path, meta, dtype=torch.float16)
            print(json.dumps({"written": str(path)}))


if __name__ == "__main__":
    main()
