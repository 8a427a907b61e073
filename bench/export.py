"""Benchmark of `vtviz export`: throughput of each stage, efficiency, memory, and Grad-CAM.

Prints, measured in one run on the same images and model:
  forward, token-maps, encode-only and full-export throughput (images/s);
  export efficiency = export / min(forward, encode)            (target >= 0.8);
  peak resident memory for N and 4N images, and their ratio     (target <= 1.1);
  time per image: every VT token map (all tokens, all layers) vs one Grad-CAM map of the
  same model and batch (pytorch-grad-cam)                       (target: vtviz >= 3x faster).

    pip install -r bench/requirements.txt --no-deps   # pytorch-grad-cam, development only
    python bench/export.py [--model vt-r18-imagenette] [--images 64] [--data FOLDER]

Images: FOLDER (default: ../shared/datasets/imagenette/val when present, else photos shipped
with scikit-image). Model: a bundled model when there is one, else random VT-R18 weights.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import vtviz
from vtviz.export import ExportOptions, _Decoded, _render_one, export
from vtviz.image import fit_image, iter_image_files, load_image, to_tensor
from vtviz.runtime import autocast_for, model_device

ROOT = Path(__file__).resolve().parent.parent


def pick_images(data: str | None, n: int) -> list[Path]:
    """``n`` image paths, spread over the folder's classes (cycled if fewer)."""
    folder = Path(data) if data else ROOT.parent / "shared" / "datasets" / "imagenette" / "val"
    if folder.exists():
        files = iter_image_files([folder])
        step = max(1, len(files) // n)
        files = files[::step][:n]
    else:
        import skimage.data as sk
        from PIL import Image

        tmp = Path(tempfile.mkdtemp(prefix="vtviz-bench-img-"))
        files = []
        for name in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "immunohistochemistry"):
            p = tmp / f"{name}.png"
            Image.fromarray(getattr(sk, name)()[..., :3]).save(p)
            files.append(p)
    return [files[i % len(files)] for i in range(n)]


def load(model_arg: str | None, device: str) -> tuple[torch.nn.Module, str]:
    name = model_arg or ("vt-r18-imagenette" if "vt-r18-imagenette" in vtviz.list_pretrained() else "")
    if name:
        return vtviz.load_model(name, device=device), name
    torch.manual_seed(0)
    model = vtviz.vt_resnet18(num_classes=10).eval().to(vtviz.resolve_device(device))
    meta = vtviz.ModelMeta(config=model.config, classes=tuple(f"class{i}" for i in range(10)))
    return vtviz.attach_meta(model, meta), "random VT-R18"


def timed(fn, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_rss_child(args: argparse.Namespace, n: int) -> float:
    """Peak resident memory (MiB) of a fresh process exporting ``n`` images."""
    cmd = [sys.executable, __file__, "--rss-child", str(n), "--batch", str(args.batch),
           "--workers", str(args.workers), "--writers", str(args.writers), "--device", args.device]
    if args.model:
        cmd += ["--model", args.model]
    if args.data:
        cmd += ["--data", args.data]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_rss_mib"])


def rss_child(args: argparse.Namespace) -> None:
    model, _ = load(args.model, args.device)
    files = pick_images(args.data, args.rss_child)
    out = Path(tempfile.mkdtemp(prefix="vtviz-bench-rss-"))
    try:
        export(model, files, out, batch_size=args.batch, workers=args.workers, writers=args.writers,
               progress=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"peak_rss_mib": (self_kib + child_kib) / 1024}))


def gradcam_comparison(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float, float, int]:
    """Seconds per image: vtviz all maps (default precision), vtviz fp32, one Grad-CAM map."""
    from pytorch_grad_cam import GradCAM

    b = x.shape[0]
    t_maps = timed(lambda: vtviz.token_maps(model, x)) / b
    t_maps32 = timed(lambda: vtviz.token_maps(model, x, amp=False)) / b
    cam = GradCAM(model=model, target_layers=[model.stem.layer3])
    try:
        t_cam = timed(lambda: cam(input_tensor=x.clone(), targets=None)) / b
    finally:
        cam.activations_and_grads.release()
    n_maps = sum(layer.num_tokens for layer in vtviz.token_maps(model, x[:1]).layers)
    return t_maps, t_maps32, t_cam, n_maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--skip-gradcam", action="store_true")
    parser.add_argument("--gradcam-only", action="store_true", help="only the Grad-CAM comparison")
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args)
        return

    model, label = load(args.model, args.device)
    device = model_device(model)
    files = pick_images(args.data, args.images)
    pre = vtviz.model_meta(model).preprocess
    decoded = []
    for i, f in enumerate(files):
        img = load_image(f)
        fitted, geo = fit_image(img, pre)
        decoded.append(_Decoded(i, str(f), f, "0" * 64, img, fitted, geo))
    batches = [to_tensor([d.fitted for d in decoded[i:i + args.batch]], pre).to(device)
               .contiguous(memory_format=torch.channels_last) for i in range(0, len(decoded), args.batch)]
    n = len(files)

    def forward() -> None:
        with torch.inference_mode(), autocast_for(device):
            for x in batches:
                model(x)

    def maps_all() -> list:
        return [vtviz.token_maps(model, x).cpu() for x in batches]

    if args.gradcam_only:
        return report_gradcam(model, batches[0])
    t_fwd = timed(forward, 2)
    t_maps = timed(maps_all, 2)
    all_maps = maps_all()
    per_image = []
    for bi, maps in enumerate(all_maps):
        for j in range(maps.batch_size):
            layers = list(enumerate(maps.select(j).layers))
            per_image.append((decoded[bi * args.batch + j], maps.logits[j], layers))
    classes = vtviz.model_meta(model).classes

    def encode_only() -> None:
        out = Path(tempfile.mkdtemp(prefix="vtviz-bench-enc-"))
        try:
            with ThreadPoolExecutor(args.writers) as pool:
                list(pool.map(lambda a: _render_one(a[0], a[1], a[2], classes, ExportOptions(), out),
                              per_image))
        finally:
            shutil.rmtree(out, ignore_errors=True)

    t_enc = timed(encode_only, 1)

    def full_export() -> None:
        out = Path(tempfile.mkdtemp(prefix="vtviz-bench-exp-"))
        try:
            export(model, files, out, batch_size=args.batch, workers=args.workers,
                   writers=args.writers, progress=False)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    t_exp = timed(full_export, 1)
    fwd, mps, enc, exp = n / t_fwd, n / t_maps, n / t_enc, n / t_exp
    h, w = decoded[0].image.shape[:2]
    print(f"device: {device} ({torch.get_num_threads()} threads); model: {label}; {n} images "
          f"(first {w}x{h}); batch {args.batch}, {args.workers} decode workers, {args.writers} writers")
    print(f"plain forward     : {fwd:8.1f} images/s")
    print(f"token maps        : {mps:8.1f} images/s")
    print(f"encode only       : {enc:8.1f} images/s (32 overlays + 2 grids + 2 partitions + npz per image)")
    print(f"full export       : {exp:8.1f} images/s (decode + maps + render + write + manifest)")
    print(f"export efficiency = export / min(forward, encode) = {exp / min(fwd, enc):.2f} (target >= 0.8)")

    small, large = max(8, n // 4), max(8, n // 4) * 4
    rss_small, rss_large = peak_rss_child(args, small), peak_rss_child(args, large)
    print(f"peak memory       : {rss_small:.0f} MiB for {small} images, {rss_large:.0f} MiB for {large}; "
          f"ratio {rss_large / rss_small:.2f} (target <= 1.1)")

    if not args.skip_gradcam:
        report_gradcam(model, batches[0])


def report_gradcam(model: torch.nn.Module, x: torch.Tensor) -> None:
    try:
        t_vt, t_vt32, t_cam, n_maps = gradcam_comparison(model, x)
    except ImportError:
        print("Grad-CAM: pytorch-grad-cam not installed (pip install -r bench/requirements.txt --no-deps)")
        return
    print(f"per image         : vtviz {n_maps} token maps {t_vt * 1e3:.1f} ms "
          f"(float32: {t_vt32 * 1e3:.1f} ms); Grad-CAM 1 map {t_cam * 1e3:.1f} ms")
    print(f"vtviz vs Grad-CAM = {t_cam / t_vt:.1f}x faster per image (float32: "
          f"{t_cam / t_vt32:.1f}x) with {n_maps}x more maps (target >= 3x)")


if __name__ == "__main__":
    main()
