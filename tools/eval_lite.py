"""Measure VT-Lite0 against its teacher for its model card (val: once, at the end).

    python tools/eval_lite.py MODEL --data ../shared/datasets/imagenette --split dev|val [--photos]

On the split (dev: the 10% of train that distillation held out; val), at the model's own
preprocessing: top-1 agreement with the teacher (1000-way), 1000-way top-1 of both against the
Imagenette labels, the diagnostics (mixing, projector owners, positional and border tokens),
each layer's 50%-mass region pieces, and zeroing the recurrent tokenizer's token-dependent term
(agreement lost, and its maps' correlation with the intact ones). ``--photos``: agreement on
vtviz.foreign's "report" photos too. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import vtviz
from vtviz.data import read_image_folder
from vtviz.foreign import foreign_photos
from vtviz.image import prepare
from vtviz.maps.diagnostics import DiagnosticsAccumulator
from vtviz.maps.tokens import from_output, map_correlation
from vtviz.models.vt import Ablation
from vtviz.preprocess import Fit, Preprocess
from vtviz.runtime import autocast_for
from vtviz.train.dev import dev_split
from vtviz.train.distill import teacher_logits
from vtviz.viz.contours import region_pieces


def _passes(model, x):
    with torch.inference_mode(), autocast_for(torch.device("cpu")):  # bfloat16 where the CPU has native units
        fmap = model.stem(x)
        out = model.explain_features(fmap)
        zeroed = model.explain_features(fmap, Ablation(recurrent_dynamic=False))
        teacher = teacher_logits(model, fmap)
    return out, zeroed, teacher.float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--split", choices=["dev", "val"], required=True)
    p.add_argument("--photos", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    model = vtviz.load_model(args.model, device="cpu").to(memory_format=torch.channels_last)
    meta = vtviz.model_meta(model)
    folder = Path(args.data) / ("train" if args.split == "dev" else "val")
    data = read_image_folder(folder, Preprocess(size=224, fit=Fit.STRETCH), class_ids=meta.class_ids,
                             progress=False)
    idx = dev_split(data.labels, 0.1, 0)[1] if args.split == "dev" else np.arange(len(data.labels))
    n = agree = s_top1 = t_top1 = zero_agree = 0
    corr, pieces = [], [[], []]
    acc = DiagnosticsAccumulator()
    for start in range(0, len(idx), 50):
        chunk = idx[start:start + 50]
        x, _ = prepare([np.asarray(data.images[i]) for i in chunk], meta.preprocess)
        out, zeroed, teacher = _passes(model, x.contiguous(memory_format=torch.channels_last))
        labels = torch.from_numpy(data.labels[chunk])
        s, t, z = out.logits.float().argmax(-1), teacher.argmax(-1), zeroed.logits.float().argmax(-1)
        n += len(chunk)
        agree += int((s == t).sum())
        zero_agree += int((z == t).sum())
        s_top1 += int((s == labels).sum())
        t_top1 += int((t == labels).sum())
        maps = from_output(out, model.tokenizer_kinds, (224, 224), 0)
        acc.update(maps)
        h, w = out.map_size
        grid = (len(chunk), -1, h, w)
        corr.append(map_correlation(zeroed.layers[1].attention.reshape(grid), out.layers[1].attention.reshape(grid)))
        for i, layer in enumerate(out.layers):
            pieces[i].append(region_pieces(layer.attention.reshape(-1, h, w).float().numpy()))
    report = {"split": args.split, "images": n, "agreement": agree / n, "student_top1": s_top1 / n,
              "teacher_top1": t_top1 / n, "recurrent_zeroed_agreement": zero_agree / n,
              "recurrent_zeroed_map_correlation": float(torch.cat(corr).mean()),
              "pieces": [float(np.concatenate(p).mean()) for p in pieces],
              "diagnostics": [d.to_dict() | {"within_targets": d.within_targets(), "warnings": d.warnings()}
                              for d in acc.result()]}
    if args.photos:
        photos = foreign_photos("report")
        x, _ = prepare([ph for _, ph in photos], meta.preprocess)
        out, _, teacher = _passes(model, x)
        s, t = out.logits.float().argmax(-1), teacher.argmax(-1)
        report["photos"] = {"agreement": float((s == t).float().mean()), "images": len(photos),
                            "each": [{"photo": name, "student": meta.classes[int(a)], "teacher": meta.classes[int(b)]}
                                     for (name, _), a, b in zip(photos, s, t)]}
    for d in report["diagnostics"]:
        d.pop("received", None)
        d.pop("peak_spread", None)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
