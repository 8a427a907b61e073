"""Average the weights of fine-tunings that share one parent (a uniform "model soup").

    python tools/soup.py OUT.safetensors CHECKPOINT [CHECKPOINT ...] [--name NAME]

Wortsman et al. 2022 ("Model soups"): fine-tunings of one parent usually lie in one basin, and
their weight average is often better than each. Every floating-point tensor is averaged in
float32 (BatchNorm running statistics too; `tools/dev_choice.py` can recompute them afterwards);
integer tensors (BatchNorm's batch counters) are taken from the first checkpoint. The metadata is
the first checkpoint's (renamed with ``--name``), but its training summary is the average's own:
the common parent under ``init``, each ingredient's recipe and results under ``soup``, and no
validation result or out-of-distribution flag until they are made for it (`vtviz calibrate-ood`,
`vtviz evaluate --record`). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import vtviz
from vtviz.models.checkpoint import save_model
from vtviz.models.meta import ModelMeta
from vtviz.models.vt import VTResNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--name", help="the average's model name (default: the first checkpoint's)")
    args = parser.parse_args()

    models = [vtviz.load_model(path, device="cpu") for path in args.checkpoints]
    first = models[0]
    states = [m.state_dict() for m in models]
    if any(s.keys() != states[0].keys() for s in states):
        raise SystemExit("the checkpoints do not have the same parameters: not fine-tunings of one parent")
    averaged = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            averaged[key] = torch.stack([s[key].float() for s in states]).mean(0)
        else:
            averaged[key] = value
    first.load_state_dict(averaged)
    if isinstance(first, VTResNet):
        first.ood = None  # the first ingredient's flag describes its features, not the average's
    meta = vtviz.model_meta(first)
    ingredients = [Path(p).name for p in args.checkpoints]
    summaries = []
    for name, model in zip(ingredients, models):
        trained = vtviz.model_meta(model).training
        val = trained.get("val") or {}
        summaries.append({"checkpoint": name, "recipe": trained.get("recipe"), "data": trained.get("data"),
                          "epochs": trained.get("epochs"), "wall_time_s": trained.get("wall_time_s"),
                          "val": {k: val[k] for k in ("images", "top1", "top5", "input_size") if k in val}})
    training = {"data": meta.training.get("data"), "init": meta.training.get("init"), "epochs": 0, "val": None,
                "soup": {"rule": "uniform average of every floating-point tensor", "ingredients": summaries}}
    out_meta = ModelMeta(**{**meta.__dict__, "name": args.name or meta.name,
                            "description": f"{meta.description}; uniform weight average of {', '.join(ingredients)}",
                            "training": training})
    path = save_model(first, args.out, out_meta)
    print(json.dumps({"checkpoint": str(path), "name": out_meta.name, "ingredients": ingredients}))


if __name__ == "__main__":
    main()
