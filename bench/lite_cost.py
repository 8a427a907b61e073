"""Benchmark: VT-Lite0's forward against its teacher's, and token maps against the forward.

Prints, interleaved and repeated in one run (medians; same input, precision, memory format):
  time(VT-Lite0 forward) / time(EfficientNet-Lite0 forward)       (target <= 2)
  time(vtviz.token_maps) / time(VT-Lite0 forward)                 (target <= 1.05)

    python bench/lite_cost.py [--model vt-lite0-imagenet] [--batch 32] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vtviz
from vtviz.models.teacher import load_efficientnet_lite0
from vtviz.runtime import autocast_for, model_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vt-lite0-imagenet")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    model = vtviz.load_model(args.model, device=args.device).to(memory_format=torch.channels_last)
    device = model_device(model)
    teacher = load_efficientnet_lite0().to(device).to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)

    def run(fn):
        def go() -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.inference_mode(), autocast_for(device):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t
        return go

    timers = {"teacher": run(lambda: teacher(x)), "student": run(lambda: model(x)),
              "token_maps": run(lambda: vtviz.token_maps(model, x))}
    for go in timers.values():
        go()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(args.repeats):
        for k, go in timers.items():
            times[k].append(go())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model: {args.model}; device: {device}; batch {args.batch} at 224 px; threads {torch.get_num_threads()}")
    for k, v in med.items():
        print(f"{k:11s}: {args.batch / v:8.1f} images/s")
    print(f"forward ratio VT-Lite0 / teacher = {med['student'] / med['teacher']:.3f} (target <= 2)")
    print(f"overhead ratio token_maps / forward = {med['token_maps'] / med['student']:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
