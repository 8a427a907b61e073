"""Choose a fine-tuned checkpoint's BatchNorm statistics and input size on the dev split (never val).

    python tools/dev_choice.py CHECKPOINT DATA_ROOT OUT.safetensors [--sizes 224,256,288]
        [--dev-fraction 0.1] [--seed 0] [--cache-size 224] [--bn-images 2048]

The dev split is the one `vtviz train --dev-fraction F --seed S` held out of the fine-tuning
(same photos, same seed). The rule, fixed before measuring: dev top-1 at each size, with the
trained BatchNorm statistics and with precise BN (statistics recomputed on BN_IMAGES training
photos outside dev, at that size); keep the variant and size that score best (the smaller
size, then the trained statistics, on ties). Writes OUT (float16) with the chosen statistics and
input size, and every dev result under the training summary's ``dev_choice``. Prints JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

import vtviz
from vtviz.data import read_image_folder
from vtviz.models.checkpoint import save_model
from vtviz.models.meta import ModelMeta
from vtviz.preprocess import Fit, Preprocess
from vtviz.train.dev import dev_split, evaluate_dev, precise_bn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data", help="ImageFolder root with train/")
    parser.add_argument("out")
    parser.add_argument("--sizes", default="224,256,288")
    parser.add_argument("--dev-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-size", type=int, default=224, help="decode size of train/ (as in training)")
    parser.add_argument("--bn-images", type=int, default=2048)
    parser.add_argument("--cache-dir", default=str(Path("~/.cache/vtviz").expanduser()))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    model = vtviz.load_model(args.checkpoint, device="cpu")
    meta = vtviz.model_meta(model)
    train = read_image_folder(Path(args.data) / "train", Preprocess(size=args.cache_size, fit=Fit.STRETCH),
                              class_ids=meta.class_ids or None, cache_dir=args.cache_dir)
    train_idx, dev_idx = dev_split(train.labels, args.dev_fraction, args.seed)
    results: dict[str, dict[str, float]] = {"trained": {}, "precise": {}}
    candidates = {}
    for size in sizes:
        pre = Preprocess(**{**meta.preprocess.__dict__, "size": size})
        results["trained"][str(size)] = evaluate_dev(model, train, dev_idx, pre, None, True)["top1_by_size"][str(size)]
        tuned = copy.deepcopy(model)
        precise_bn(tuned, train, train_idx, pre, args.bn_images, seed=args.seed, progress=True)
        results["precise"][str(size)] = evaluate_dev(tuned, train, dev_idx, pre, None, True)["top1_by_size"][str(size)]
        candidates[size] = tuned
    ranked = sorted(((top1, -int(size), variant == "trained", variant, int(size))
                     for variant, by_size in results.items() for size, top1 in by_size.items()), reverse=True)
    _, _, _, variant, size = ranked[0]
    chosen = model if variant == "trained" else candidates[size]
    choice = {"rule": "best dev top-1 over sizes x {trained, precise BN}; smaller size, then trained, on ties",
              "dev_images": len(dev_idx), "dev_fraction": args.dev_fraction, "seed": args.seed,
              "bn_images": args.bn_images, "top1": results, "chosen": {"statistics": variant, "size": size}}
    out_meta = ModelMeta(**{**meta.__dict__, "preprocess": Preprocess(**{**meta.preprocess.__dict__, "size": size}),
                            "training": {**meta.training, "dev_choice": choice}})
    path = save_model(chosen, args.out, out_meta, dtype=torch.float16)
    print(json.dumps({"checkpoint": str(path), **choice}))


if __name__ == "__main__":
    main()
