"""Benchmark: cost of getting every token map over a plain forward pass.

Prints the ratio time(vtviz.token_maps) / time(model(x)), both in inference_mode with the
same autocast and memory format, interleaved and repeated (median). Target: <= 1.05.

    python bench/token_maps.py [--model vt-lite0-imagenet] [--batch 32] [--size 224]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vtviz
from vtviz.runtime import autocast_for, model_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="bundled name or path (default: random VT-R18)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    if args.model:
        model = vtviz.load_model(args.model, device=args.device)
        label = args.model
    else:
        torch.manual_seed(0)
        model = vtviz.vt_resnet18(num_classes=10).eval().to(vtviz.resolve_device(args.device))
        label = "random VT-R18"
    device = model_device(model)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)

    def plain() -> None:
        with torch.inference_mode(), autocast_for(device):
            model(x)

    def maps() -> None:
        vtviz.token_maps(model, x)

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    plain(), maps()  # warm-up
    t_plain, t_maps = [], []
    for _ in range(args.repeats):
        t_plain.append(timed(plain))
        t_maps.append(timed(maps))
    p, m = statistics.median(t_plain), statistics.median(t_maps)
    print(f"model: {label}; device: {device}; batch {args.batch} at {args.size} px; "
          f"threads {torch.get_num_threads()}")
    print(f"plain forward : {args.batch / p:8.1f} images/s")
    print(f"token_maps    : {args.batch / m:8.1f} images/s (all {len(model.vt_layers)} layers, "
          f"attention + mixing + assignment + tokens)")
    print(f"overhead ratio token_maps / forward = {m / p:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
