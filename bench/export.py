"""Benchmark of `vtviz export`: efficiency against the model, and memory on a 24 MP photo.

Prints, measured in one run on the same images, model and machine load:
  plain forward throughput (images/s, batch of preprocessed tensors, the model's precision);
  full `vtviz export` throughput with the default outputs (per layer: token grid, all-tokens
  view; maps.npz) and with every per-token overlay and the partition as well (--overlays);
  export efficiency = export / forward                 (targets: >= 0.5 default, >= 0.2 overlays);
  the same with default outputs for 12 MP JPEGs (phone photos; no target: decoding and drawing
  grow with the photo while the model's work does not);
  peak resident memory of exporting one 24 MP photo, and one 0.06 MP photo (a fresh process
  each, decoding in the process so that its peak is the whole footprint)   (target <= 1.5 GiB).

    python bench/export.py [--model vt-lite0-imagenet] [--images 256] [--data FOLDER] [--no-memory]
        [--out-root FOLDER] [--large 32]

Also prints what creating one new file costs in the output's file system (CPU time: on some
virtual disks a new inode costs ~0.7 ms, which the exporter pays per output file and folder).

Images: FOLDER (default: ../shared/datasets/imagenette/val when present, else photos shipped
with scikit-image). Model: a bundled model.
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
from pathlib import Path

import numpy as np
import torch

import vtviz
from vtviz.image import fit_image, iter_image_files, load_image, to_tensor
from vtviz.jobs.export import ExportOptions, export
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
        for name in ("astronaut", "chelsea", "coffee", "rocket"):
            p = tmp / f"{name}.png"
            Image.fromarray(getattr(sk, name)()[..., :3]).save(p)
            files.append(p)
    return [files[i % len(files)] for i in range(n)]


def timed(fn, repeats: int) -> float:
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


def photo(folder: Path, width: int = 6000, height: int = 4000, name: str = "astronaut") -> Path:
    """A JPEG (default 6000x4000: 24 MP) made from a photo scikit-image ships (resized, with fine noise)."""
    import cv2
    import skimage.data as sk

    img = cv2.resize(getattr(sk, name)()[..., :3], (width, height), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    img = np.clip(img.astype(np.int16) + rng.integers(-8, 9, img.shape, dtype=np.int16), 0, 255)
    path = folder / f"{name}-{width}x{height}.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


def camera_photos(folder: Path, n: int) -> list[Path]:
    """``n`` JPEGs of 12 MP (4000x3000, as phones take them): four of scikit-image's photos, each
    copied under several names."""
    made = [photo(folder, 4000, 3000, name) for name in ("astronaut", "chelsea", "coffee", "rocket")]
    paths = []
    for i in range(n):
        path = folder / f"copy{i:03d}-{made[i % len(made)].name}"
        shutil.copyfile(made[i % len(made)], path)
        paths.append(path)
    return paths


def rss_child(args: argparse.Namespace) -> None:
    """(In a fresh process) export the photo ``--rss-child`` with decoding in this process, so
    that its peak resident memory is the export's whole footprint; print it as JSON."""
    model = vtviz.load_model(args.model, device=args.device)
    out = Path(tempfile.mkdtemp(prefix="vtviz-bench-rss-"))
    try:
        before = peak_rss_kib()
        export(model, [Path(args.rss_child)], out, batch_size=args.batch, workers=0, writers=args.writers,
               progress=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"peak_rss_mib": peak_rss_kib() / 1024, "model_loaded_mib": before / 1024}))


def peak_rss_kib() -> int:
    """This process's peak resident memory (KiB): VmHWM, which (unlike ``ru_maxrss``) does not
    count the parent's pages that a forked-then-exec'd child briefly shared."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vt-lite0-imagenet")
    parser.add_argument("--data", default=None)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="decode-and-draw processes")
    parser.add_argument("--writers", type=int, default=2, help="drawing threads (the memory child: no workers)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--large", type=int, default=32, help="12 MP photos exported too (0: none)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-memory", action="store_true", help="skip the 24 MP memory measurement")
    parser.add_argument("--out-root", default=None, help="folder for the exports' output (default: the temp dir)")
    parser.add_argument("--rss-child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args)
        return

    model = vtviz.load_model(args.model, device=args.device)
    device = model_device(model)
    files = pick_images(args.data, args.images)
    pre = vtviz.model_meta(model).preprocess
    fitted = [fit_image(load_image(f), pre)[0] for f in files]
    batches = [to_tensor(fitted[i:i + args.batch], pre).to(device).contiguous(memory_format=torch.channels_last)
               for i in range(0, len(fitted), args.batch)]
    n = len(files)

    def forward() -> None:
        with torch.inference_mode(), autocast_for(device):
            for x in batches:
                model(x)

    # every export writes into a fresh folder, and all are deleted at the end, not between runs:
    # ext4 without a journal (this machine's disk) skips, one by one, the inodes deleted in the
    # last 60-300 s nearby when it picks one for a new file, so deleting one run's thousands of
    # files made the next run's file creation ~20x dearer (0.4-0.8 vs 0.02-0.05 ms of CPU each)
    # than a user's first export into a new folder
    written = Path(tempfile.mkdtemp(prefix="vtviz-bench-exp-", dir=args.out_root))

    def run_export(options: ExportOptions, inputs: list[Path] = files) -> None:
        out = Path(tempfile.mkdtemp(dir=written))
        export(model, inputs, out, options, batch_size=args.batch, workers=args.workers,
               writers=args.writers, progress=False, resume=False)

    cameras = Path(tempfile.mkdtemp(prefix="vtviz-bench-12mp-"))
    large = camera_photos(cameras, args.large) if args.large else []
    # interleave the sides so that a change of machine load hits all of them alike
    t_fwd, t_def, t_all, t_big = [], [], [], []
    new_file_ms = file_creation_ms(args.out_root)
    try:
        forward()
        run_export(ExportOptions())
        for _ in range(args.repeats):
            t_fwd.append(timed(forward, 3))  # the forward side is short: the median of 3 passes steadies it
            t_def.append(_once(run_export, ExportOptions()))
            t_all.append(_once(run_export, ExportOptions(overlays=True)))
            if large:  # the model's side is the same at any photo size (its input is fixed)
                t_big.append(_once(lambda o: run_export(o, large), ExportOptions()) * n / len(large))
    finally:
        shutil.rmtree(cameras, ignore_errors=True)
        shutil.rmtree(written, ignore_errors=True)
    fwd, dflt, full = (n / statistics.median(t) for t in (t_fwd, t_def, t_all))
    h, w = load_image(files[0]).shape[:2]
    print(f"device: {vtviz.device_label(device)} ({torch.get_num_threads()} threads); model: {args.model}; "
          f"{n} images (first {w}x{h}); batch {args.batch}, {args.workers} decode-and-draw workers, "
          f"{args.writers} drawing threads in the inline memory run; median of {args.repeats} interleaved runs")
    print(f"plain forward            : {fwd:8.1f} images/s")
    print(f"export, default outputs  : {dflt:8.1f} images/s  efficiency {dflt / fwd:.2f} (target >= 0.5)")
    print(f"export, + every overlay  : {full:8.1f} images/s  efficiency {full / fwd:.2f} (target >= 0.2)")
    if large:
        big = n / statistics.median(t_big)
        print(f"export, 12 MP JPEGs      : {big:8.1f} images/s  efficiency {big / fwd:.2f} "
              f"({len(large)} phone-size photos, default outputs; no target)")
    print(f"new file in the output's file system: {new_file_ms:.2f} ms of CPU "
          f"(default export: 5 files and 1 folder per photo; with overlays 39 files and 3 folders)")

    if args.no_memory:
        return
    rss, tmp = {}, Path(tempfile.mkdtemp(prefix="vtviz-bench-photo-"))
    try:
        for width in (300, 6000):  # a 0.06 MP photo, then a 24 MP one (6000x4000)
            cmd = [sys.executable, __file__, "--rss-child", str(photo(tmp, width, width * 2 // 3)),
                   "--model", args.model, "--batch", str(args.batch), "--writers", str(args.writers),
                   "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rss[width] = json.loads(out.splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    small, big = rss[300]["peak_rss_mib"], rss[6000]["peak_rss_mib"]
    print(f"peak memory, one export  : {big:.0f} MiB for a 24 MP photo (6000x4000), {small:.0f} MiB for a "
          f"0.06 MP one; the photo adds {big - small:.0f} MiB (decoded in the exporter; target: <= 1536 MiB)")


def file_creation_ms(root: str | None, n: int = 100) -> float:
    """CPU time (ms) to create one new empty file in a fresh folder under ``root``."""
    import os

    folder = Path(tempfile.mkdtemp(prefix="vtviz-bench-files-", dir=root))
    try:
        t = time.process_time()
        for i in range(n):
            os.close(os.open(folder / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644))
        return (time.process_time() - t) / n * 1000
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _once(fn, arg) -> float:
    t = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
