"""Train vtviz's Imagenette models on a lent GPU machine inside a fixed time budget.

This is how the bundled models' GPU phase was run (one 15-minute lease on one H200, see
``vtviz/pretrained/README.md``); on a GPU box of your own, run ``vtviz train`` directly.

Run from the repo root with ``PYTHONPATH=.``. The lease carries at most 64 MiB, so the data
come packed in ``SRC`` (default ``.gpu/``): ``train.bin`` (Imagenette's train JPEGs re-encoded
as WebP, quality 70, the 3,000 largest at 60: 61.7 MB), ``train-index.json`` (``[class/file,
bytes]`` per image, in order), ``classes.json`` and ``teacher.npy`` (the EfficientNet-Lite0
logits that ``vtviz train --teacher`` cached on this machine; the cache key ignores file
suffixes, so they serve the WebP copy). A calibration run (3 real epochs, also a smoke test of
the CUDA path) measures images/s; the epoch count of the real runs is then fixed so that all
``MODELS`` fit ``BUDGET`` seconds, and every run is a plain ``python -m vtviz.train``
command (printed, and recorded in its checkpoint). Checkpoints come back in 15 MiB parts
under ``$OUT``; there is no val split on the machine: measure them afterwards with
``vtviz evaluate CHECKPOINT --data VAL --record``.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

T0 = time.time()
OUT = Path(os.environ.get("OUT") or "/tmp/out")
OUT.mkdir(parents=True, exist_ok=True)
BUDGET = float(os.environ.get("BUDGET", "480"))
LOW, HIGH, EVAL = (int(x) for x in os.environ.get("SIZES", "160,192,224").split(","))
BATCH = int(os.environ.get("BATCH", "128"))
LR = os.environ.get("LR", "2e-3")
MAXEP = int(os.environ.get("MAXEP", "150"))
MODELS = os.environ.get("MODELS", "recurrent,filter,resnet").split(",")
SRC = Path(os.environ.get("SRC", ".gpu"))
ROOT = Path(os.environ.get("ROOT", "/tmp/imagenette"))
CACHE = Path(os.environ.get("CACHE", "/tmp/vtcache"))
RUNS = Path(os.environ.get("RUNS", "/tmp/vtruns"))
LOG = open(OUT / "driver.log", "a")


def say(*parts: object, quiet: bool = False) -> None:
    line = f"[{time.time() - T0:6.1f}s] " + " ".join(str(p) for p in parts)
    if not quiet:
        print(line, flush=True)
    print(line, file=LOG, flush=True)


import torch  # noqa: E402

say("torch", torch.__version__, "cuda", torch.cuda.is_available(),
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "cpus", os.cpu_count())

index = json.loads((SRC / "train-index.json").read_text())
with open(SRC / "train.bin", "rb") as f:
    for rel, n in index:
        p = ROOT / "train" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f.read(n))
shutil.copy(SRC / "classes.json", ROOT / "classes.json")

from vtviz.data import read_image_folder  # noqa: E402
from vtviz.meta import Fit, Preprocess  # noqa: E402
from vtviz.teacher import imagenet_indices  # noqa: E402
from vtviz.train import teacher_cache_path  # noqa: E402

data = read_image_folder(ROOT / "train", Preprocess(size=max(HIGH, EVAL), fit=Fit.STRETCH),
                         cache_dir=CACHE, progress=False)
assert len(data) == len(index), (len(data), len(index))
tpath = teacher_cache_path(data, imagenet_indices(data.classes), CACHE)
shutil.copy(SRC / "teacher.npy", tpath)
say("decoded", len(data), "images; teacher logits ->", tpath.name)
STEP_IMAGES = len(data) // BATCH * BATCH

COMMON = ["--data", str(ROOT), "--teacher", "efficientnet-lite0", "--seed", "0", "--half",
          "--batch-size", str(BATCH), "--lr", LR, "--warmup-epochs", "3",
          "--eval-size", str(EVAL), "--cache-dir", str(CACHE), "--quiet", "--save-every", "25"]
KINDS = {
    "recurrent": ["--arch", "vt_resnet18", "--name", "vt-r18-imagenette", "--description",
                  "VT-ResNet-18 (filter, recurrent tokenizers), Imagenette"],
    "filter": ["--arch", "vt_resnet18", "--tokenizers", "filter,filter",
               "--name", "vt-r18-filter-imagenette", "--description",
               "VT-ResNet-18 with two filter tokenizers (ablation), Imagenette"],
    "resnet": ["--arch", "resnet18", "--name", "resnet18-imagenette", "--description",
               "ResNet-18 baseline, Imagenette"],
}


def run(tag: str, kind: str, schedule: str, timeout: float) -> tuple[list[dict], float, bool]:
    out = RUNS / tag
    cmd = [sys.executable, "-m", "vtviz.train", *COMMON, *KINDS[kind], "--schedule", schedule,
           "--out", str(out)]
    say("RUN", " ".join(cmd))
    t = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout)
        text, ok = p.stdout, p.returncode == 0
    except subprocess.TimeoutExpired as exc:
        text, ok = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), False
        say("TIMEOUT", tag)
    took = time.time() - t
    records = []
    for line in text.splitlines():
        say(line, quiet=True)
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    if not ok:
        say("FAILED", tag, "\n" + text[-4000:])
    say(tag, "done" if ok else "failed", f"in {took:.1f}s;", len(records), "epochs")
    return records, took, ok


def ship(tag: str, name: str) -> None:
    path = RUNS / tag / f"{name}.safetensors"
    blob = path.read_bytes()
    chunk = 15 * 2**20
    for k in range(math.ceil(len(blob) / chunk)):
        (OUT / f"{name}.part{k}").write_bytes(blob[k * chunk:(k + 1) * chunk])
    import hashlib
    say("shipped", name, len(blob), "bytes sha256", hashlib.sha256(blob).hexdigest())


# Calibration: 2 epochs at LOW, 1 at HIGH with the recurrent model (also the CUDA smoke test).
recs, took, ok = run("calib", "recurrent", f"{LOW}:2,{HIGH}:1", timeout=240)
if not ok or len(recs) < 3:
    say("calibration failed: stopping")
    sys.exit(1)
ips_low, ips_high = recs[1]["images_per_s"], recs[2]["images_per_s"]
epoch_time = sum(STEP_IMAGES / r["images_per_s"] for r in recs)
overhead = took - epoch_time
say(f"calibration: {ips_low:.0f} img/s @{LOW}, {ips_high:.0f} img/s @{HIGH}, "
    f"process overhead {overhead:.1f}s; records: {json.dumps(recs)}")

remaining = BUDGET - (time.time() - T0)
per_model = remaining / len(MODELS) - overhead - 2
t_low, t_high = 1.06 * STEP_IMAGES / ips_low, 1.06 * STEP_IMAGES / ips_high
epochs = min(MAXEP, int(per_model / (0.85 * t_low + 0.15 * t_high)))
high = max(2, round(0.15 * epochs))
low = epochs - high
schedule = f"{LOW}:{low},{HIGH}:{high}"
need = low * t_low + high * t_high + overhead
say(f"plan: {len(MODELS)} models x schedule {schedule} ({epochs} epochs, ~{need:.0f}s each); "
    f"{remaining:.0f}s left")

for kind in MODELS:
    left = BUDGET + 40 - (time.time() - T0)
    if left < need * 0.9:
        say("SKIP", kind, f"({left:.0f}s left, needs ~{need:.0f}s)")
        continue
    recs, took, ok = run(kind, kind, schedule, timeout=left)
    if recs:
        say(kind, "last epoch:", json.dumps(recs[-1]))
        say(kind, "train_acc by epoch:", [round(r["train_acc"], 3) for r in recs])
    if ok:
        ship(kind, KINDS[kind][KINDS[kind].index("--name") + 1])
say("all done")
