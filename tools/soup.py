"""Average the weights of fine-tunings that share one parent (a uniform "model soup").

    python tools/soup.py OUT.safetensors CHECKPOINT [CHECKPOINT ...]

Wortsman et al. 2022 ("Model soups"): fine-tunings of one parent usually lie in one basin, and
their weight average is often better than each. Every floating-point tensor is averaged in
float32 (BatchNorm running statistics too; `tools/dev_choice.py` can recompute them afterwards);
integer tensors (BatchNorm's batch counters) are taken from the first checkpoint. The metadata is
the first checkpoint's, with the ingredients recorded under ``training["soup"]``. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import vtviz
from vtviz.checkpoint import save_model
from vtviz.meta import ModelMeta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("checkpoints", nargs="+")
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
    meta = vtviz.model_meta(first)
    ingredients = [Path(p).name for p in args.checkpoints]
    out_meta = ModelMeta(**{**meta.__dict__, "training": {**meta.training, "soup": {
        "ingredients": ingredients, "rule": "uniform average of every floating-point tensor"}}})
    path = save_model(first, args.out, out_meta)
    print(json.dumps({"checkpoint": str(path), "ingredients": ingredients}))


if __name__ == "__main__":
    main()
