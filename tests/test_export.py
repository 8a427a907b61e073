"""`vtviz export`: outputs, bad inputs, kill and resume, torchrun sharding."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_image import huge_png
from vtviz.cli import main as cli
from vtviz.files import TMP_SUFFIX
from vtviz.jobs.export import _decode as _real_decode
from vtviz.jobs.export import load_manifest, safe_name
from vtviz.maps.tokens import read_maps_npz

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def _photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = rng.integers(40, 90, 2)
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        p = folder / f"img{i:03d}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def _files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


def _comparable(out: Path) -> list[dict]:
    records, summary = load_manifest(out)
    assert summary is not None
    return records


def _assert_same_records(a: list[dict], b: list[dict]) -> None:
    assert [r["source"] for r in a] == [r["source"] for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        assert x["status"] == y["status"] and x.get("sha256") == y.get("sha256")
        if x["status"] == "ok":
            assert [t["class"] for t in x["top5"]] == [t["class"] for t in y["top5"]]
            assert [t["p"] for t in x["top5"]] == pytest.approx([t["p"] for t in y["top5"]], abs=2e-3)
            assert [[t["peak"] for t in la["tokens"]] for la in x["layers"]] == \
                [[t["peak"] for t in la["tokens"]] for la in y["layers"]]
        else:
            assert x["error"] == y["error"]


def test_export_folder_with_bad_inputs(tmp_path, checkpoint, rgb):
    src = tmp_path / "in"
    good = _photos(src / "a", 2) + [src / "b" / "img000.png"]
    (src / "b").mkdir()
    Image.fromarray(rgb).save(good[-1])  # same name as a/img000.png, other folder
    (src / "zero.jpg").write_bytes(b"")
    (src / "text.png").write_text("I am not a PNG\n")
    data = (tmp_path / "t.jpg")
    Image.fromarray(np.tile(rgb, (3, 3, 1))).save(data, quality=90)
    (src / "cut.jpg").write_bytes(data.read_bytes()[:800])
    (src / "huge.png").write_bytes(huge_png())
    out = tmp_path / "out"
    code = cli(["export", "--model", checkpoint, "--out", str(out), str(src), "--workers", "1",
                "--batch-size", "2", "--quiet", "--device", "cpu"])
    assert code == 2
    records, summary = load_manifest(out)
    by_name = {Path(r["source"]).name + ("/b" if "/b/" in r["source"] else ""): r for r in records}
    assert summary["exported"] == 3 and summary["failed"] == 4 and summary["ok"] == 3
    assert "empty file" in by_name["zero.jpg"]["error"]
    assert "not an image" in by_name["text.png"]["error"]
    assert "truncated" in by_name["cut.jpg"]["error"]
    assert "too large" in by_name["huge.png"]["error"]
    ok = [r for r in records if r["status"] == "ok"]
    assert len({r["output_dir"] for r in ok}) == 3  # two img000.png, two folders
    for r in ok:
        assert len(r["top5"]) == 5 and len(r["sha256"]) == 64
        assert [la["kind"] for la in r["layers"]] == ["filter", "recurrent"]
        assert len(r["layers"][0]["tokens"]) == 16
        token = r["layers"][0]["tokens"][3]
        assert 0 <= token["entropy"] <= 1 and 0 < token["top10"] <= 1
        assert [d["kind"] for d in r["diagnostics"]] == ["filter", "recurrent"]
        assert 1 <= r["diagnostics"][0]["mixing_targets"] <= 16 and "owners" in r["diagnostics"][0]
        # the peak cell's centre, placed on the original photo through its geometry
        w, h = r["size"]
        assert 0 <= token["peak_xy"][0] <= w and 0 <= token["peak_xy"][1] <= h
        raw0 = np.load(out / r["raw"])["layer0_attention"][0, 3]
        assert list(np.unravel_index(raw0.argmax(), raw0.shape)) == token["peak"]
        assert "file" not in token  # per-token pictures only with --overlays
        for rel in [r["layers"][0]["grid"], r["layers"][1]["constellation"], r["raw"]]:
            assert (out / rel).is_file()
        assert "partition" not in r["layers"][0]  # with --overlays
        assert len(list((out / r["output_dir"]).rglob("*.jpg"))) == 4  # 2 layers x grid, constellation
        # one folder per photo, its pictures beside maps.npz (a folder costs as much as a file)
        assert not [p for p in (out / r["output_dir"]).iterdir() if p.is_dir()]
        w, h = r["size"]
        cw, ch = Image.open(out / r["layers"][0]["constellation"]).size
        assert cw >= w and ch >= h  # the photo at its own size (never enlarged), with a legend
        raw = np.load(out / r["raw"])
        assert raw["layer0_attention"].shape == (1, 16, 4, 4)
        np.testing.assert_allclose(raw["layer0_attention"].sum((-2, -1)), 1, atol=1e-5)
        assert "layer1_assignment" not in raw and raw["logits"].shape == (1, 5)
        saved = read_maps_npz(out / r["raw"])  # stands on its own: names, classes, geometry
        assert saved.names == [Path(r["source"]).name] and saved.kinds == ["filter", "recurrent"]
        assert saved.geometries[0].original_size == (h, w)
    assert not list(out.rglob(f"*{TMP_SUFFIX}"))


def test_export_options(tmp_path, checkpoint):
    src = _photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert cli(["export", "--model", checkpoint, "--out", str(out), *map(str, src), "--layers", "1",
                "--tokens", "0-2,5", "--format", "jpg", "--size", "48", "--no-raw", "--workers", "0",
                "--quiet", "--colormap", "viridis", "--contour", "0.5", "--overlays"]) == 0
    (rec,), _ = load_manifest(out)
    assert [la["layer"] for la in rec["layers"]] == [1]
    assert [t["token"] for t in rec["layers"][0]["tokens"]] == [0, 1, 2, 5]
    assert "raw" not in rec
    img = Image.open(out / rec["layers"][0]["tokens"][0]["file"])
    assert img.format == "JPEG" and max(img.size) == 48
    assert (out / rec["layers"][0]["partition"]).is_file()  # --overlays: every picture
    raw_out = tmp_path / "raw"
    assert cli(["export", "--model", checkpoint, "--out", str(raw_out), *map(str, src), "--raw-only",
                "--workers", "0", "--quiet"]) == 0
    assert {Path(f).name for f in _files(raw_out)} == {"maps.npz", "manifest.jsonl"}


def test_unwritable_output_is_fatal(tmp_path, checkpoint, capsys):
    src = _photos(tmp_path / "in", 1)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    assert cli(["export", "--model", checkpoint, "--out", str(blocker / "out"), str(src[0]), "--quiet"]) == 1
    assert "error" in capsys.readouterr().err


def test_safe_names(tmp_path):
    names = {safe_name(tmp_path / "a" / "cat.jpg"), safe_name(tmp_path / "b" / "cat.jpg")}
    assert len(names) == 2 and all(n.startswith("cat-") for n in names)
    weird = safe_name(tmp_path / "..  évil name;rm -rf.png")
    assert "/" not in weird and not weird.startswith(".") and " " not in weird and "é" in weird


def _export_cmd(checkpoint: str, src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "vtviz", "export", "--model", checkpoint, "--out", str(out), str(src),
            "--workers", "1", "--batch-size", "2", "--writers", "1", "--quiet", "--device", "cpu"]


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tmp_path, checkpoint):
    src = tmp_path / "in"
    _photos(src, 24)
    (src / "broken.png").write_bytes(b"garbage")
    reference = tmp_path / "reference"
    subprocess.run(_export_cmd(checkpoint, src, reference), env=ENV, check=False, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_export_cmd(checkpoint, src, killed), env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        parts = list((killed / ".parts").glob("*.jsonl")) if killed.exists() else []
        if parts and len(parts[0].read_text().splitlines()) >= 4:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the kill must have interrupted work: killed (not exited), no final manifest, some records
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "manifest.jsonl").exists()
    done_before = sum(len(p.read_text().splitlines()) for p in (killed / ".parts").glob("*.jsonl"))
    assert 3 <= done_before < 25
    rerun = subprocess.run(_export_cmd(checkpoint, src, killed), env=ENV, timeout=300)
    assert rerun.returncode == 2  # broken.png
    assert _files(killed) == _files(reference)
    _assert_same_records(_comparable(killed), _comparable(reference))
    assert not list(killed.rglob(f"*{TMP_SUFFIX}"))
    _, summary = load_manifest(killed)
    assert summary["skipped"] >= 3 and summary["exported"] + summary["skipped"] == 24
    assert summary["exported"] >= 24 - done_before  # the rerun did the rest


@pytest.mark.slow
def test_torchrun_two_ranks_equal_single_process(tmp_path, checkpoint):
    src = tmp_path / "in"
    _photos(src, 7)
    single = tmp_path / "single"
    assert subprocess.run(_export_cmd(checkpoint, src, single), env=ENV, timeout=300).returncode == 0
    sharded = tmp_path / "sharded"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           "29741", "-m", "vtviz", *_export_cmd(checkpoint, src, sharded)[3:]]
    proc = subprocess.run(cmd, env=ENV, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _files(sharded) == _files(single)
    _assert_same_records(_comparable(sharded), _comparable(single))
    _, summary = load_manifest(sharded)
    assert summary["world_size"] == 2 and summary["ok"] == 7
    assert json.loads(json.dumps(summary))["failed"] == 0


def _processes_with(mark: str) -> list[int]:
    """PIDs of live processes whose environment holds ``mark`` (the exporter and its children)."""
    pids = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if mark.encode() in (d / "environ").read_bytes():
                pids.append(int(d.name))
        except OSError:
            pass
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
def test_a_stopped_export_leaves_no_process(tmp_path, checkpoint, sig):
    import uuid

    src = tmp_path / "in"
    _photos(src, 40)
    out = tmp_path / "out"
    mark = uuid.uuid4().hex
    cmd = [*_export_cmd(checkpoint, src, out)]
    cmd[cmd.index("--workers") + 1] = "2"
    # Ctrl-C reaches a foreground command; a shell's background job (e.g. a test run started with
    # `&`) inherits SIGINT ignored, and the exporter rightly keeps that: give it the default
    proc = subprocess.Popen(cmd, env={**ENV, "VTVIZ_TEST_MARK": mark}, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while len(list(out.glob("img*"))) < 2 and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    assert proc.poll() is None, "the export finished before it could be stopped"
    t0 = time.time()
    proc.send_signal(sig)
    err = proc.communicate(timeout=30)[1]
    stopped = time.time() - t0
    for _ in range(50):  # children must follow within seconds
        if not _processes_with(mark):
            break
        time.sleep(0.1)
    assert _processes_with(mark) == []
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # one line, the conventional status, within a few seconds even on a busy 2-core machine
        assert proc.returncode == 128 + sig and stopped < 5, err
        assert err.strip().splitlines() == ["interrupted: rerun the same command to resume"]


@pytest.mark.slow
def test_non_images_and_non_files_are_recorded_not_dropped(tmp_path, checkpoint):
    """A folder's README is recorded as 'not an image' (not a failure); a photo without a suffix
    is found by its content; a FIFO and a dangling link named on the command line are failed
    inputs (exit 2), and nothing hangs."""
    src = tmp_path / "in"
    _photos(src, 2)
    (src / "README.txt").write_text("notes")
    (src / "IMG_0003").write_bytes((src / "img000.png").read_bytes())  # an image without a suffix
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    link = tmp_path / "gone.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    out = tmp_path / "out"
    cmd = _export_cmd(checkpoint, src, out)
    cmd[cmd.index(str(src)) + 1:cmd.index(str(src)) + 1] = [str(fifo), str(link)]
    assert subprocess.run(cmd, env=ENV, timeout=300).returncode == 2
    records, summary = load_manifest(out)
    status = {Path(r["source"]).name: r["status"] for r in records}
    assert status == {"img000.png": "ok", "img001.png": "ok", "IMG_0003": "ok", "README.txt": "not an image",
                      "pipe.jpg": "error", "gone.jpg": "error"}
    assert summary["failed"] == 2 and summary["not_images"] == 1 and summary["ok"] == 3


@pytest.mark.slow
def test_resume_redoes_changed_photos_and_changed_options(tmp_path, checkpoint):
    src = tmp_path / "in"
    paths = _photos(src, 3)
    out = tmp_path / "out"
    cmd = _export_cmd(checkpoint, src, out) + ["--raw-only"]
    assert subprocess.run(cmd, env=ENV, timeout=300).returncode == 0
    _, summary = load_manifest(out)
    assert summary["exported"] == 3
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(paths[1])  # same path, new content
    assert subprocess.run(cmd, env=ENV, timeout=300).returncode == 0
    records, summary = load_manifest(out)
    assert summary["exported"] == 1 and summary["skipped"] == 2
    assert next(r for r in records if r["source"] == str(paths[1]))["size"] == [60, 50]
    assert subprocess.run(cmd + ["--alpha", "0.3"], env=ENV, timeout=300).returncode == 0  # other options
    _, summary = load_manifest(out)
    assert summary["exported"] == 3 and summary["skipped"] == 0


def test_non_finite_output_is_strict_json(tmp_path, checkpoint):
    """A model whose output is NaN: the manifest stays valid JSON (null, not bare NaN) and says so."""
    import torch

    from vtviz import load_model
    from vtviz.jobs.export import ExportOptions, export

    model = load_model(checkpoint, device="cpu")
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    src = _photos(tmp_path / "in", 1)
    export(model, src, tmp_path / "out", ExportOptions(images=False), workers=0, progress=False)

    def refuse(name: str) -> None:
        raise AssertionError(f"bare {name} in the manifest")

    lines = (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    rec = json.loads(lines[0], parse_constant=refuse)
    assert rec["status"] == "ok" and "NaN" in rec["warning"]
    assert all(t["p"] is None for t in rec["top5"])


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.slow
def test_drawing_in_worker_processes_equals_inline(tmp_path, checkpoint, monkeypatch, method):
    """Workers decode and draw in other processes, forked (CPU) or spawned (with CUDA in use):
    the same files, byte for byte, as inline."""
    import multiprocessing

    from vtviz import load_model
    from vtviz.jobs import workers as workers_module
    from vtviz.jobs.export import ExportOptions, export

    monkeypatch.setattr(workers_module, "pool_context", lambda m=None: multiprocessing.get_context(method))
    src = _photos(tmp_path / "in", 5)
    model = load_model(checkpoint, device="cpu")
    inline, workers = tmp_path / "inline", tmp_path / "workers"
    # the same batches on both sides: a batch of 1 and one of 5 may differ in the last bit (oneDNN on AVX2)
    export(model, src, inline, ExportOptions(), workers=0, batch_size=2, progress=False)
    export(model, src, workers, ExportOptions(), workers=2, batch_size=2, progress=False)
    assert _files(inline) == _files(workers) and len(_files(inline)) > 5 * 4
    for name in _files(inline) - {"manifest.jsonl"}:
        assert (inline / name).read_bytes() == (workers / name).read_bytes(), name


def test_a_large_jpeg_is_decoded_at_the_size_the_pictures_need(tmp_path, checkpoint, monkeypatch):
    """With pictures capped at 300 px a 1200x900 JPEG is decoded at 1/4 (300x225) by the decoder; its
    record (size, prediction) and maps equal those of a full decode within resampling noise."""
    from vtviz import load_model
    from vtviz.jobs import export as export_module
    from vtviz.jobs.export import ExportOptions, export

    factors: list[int] = []

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        decoded = real(*args, **kwargs)
        factors.append(decoded.factor)
        return decoded

    real = export_module.load_image_reduced
    monkeypatch.setattr(export_module, "load_image_reduced", spy)

    y, x = np.mgrid[0:900, 0:1200]
    rgb = np.stack([x * 255 // 1199, y * 255 // 899, ((x // 150 + y // 150) % 2) * 220], -1).astype(np.uint8)
    src = tmp_path / "in" / "big.jpg"
    src.parent.mkdir()
    Image.fromarray(rgb).save(src, quality=95)
    model = load_model(checkpoint, device="cpu")
    small, whole = tmp_path / "small", tmp_path / "whole"
    export(model, [src], small, ExportOptions(size=300), workers=0, progress=False)
    export(model, [src], whole, ExportOptions(size=None), workers=0, progress=False)
    (a,), (b,) = _comparable(small), _comparable(whole)
    assert factors == [4, 1] and a["size"] == b["size"] == [1200, 900]
    assert [t["class"] for t in a["top5"]] == [t["class"] for t in b["top5"]]
    assert [t["p"] for t in a["top5"]] == pytest.approx([t["p"] for t in b["top5"]], abs=2e-3)
    ma, mb = np.load(small / a["raw"]), np.load(whole / b["raw"])
    for key in ("layer0_attention", "layer1_attention"):  # (a random model's peaks can tie: compare maps)
        np.testing.assert_allclose(ma[key], mb[key], rtol=0.02, atol=1e-4)
    np.testing.assert_array_equal(ma["original_size"], mb["original_size"])
    np.testing.assert_allclose(ma["scale"], mb["scale"], rtol=1e-6)


def test_decoded_photo_is_kept_at_the_largest_drawn_size(tmp_path):
    """What waits in the pipeline and travels between processes is bounded by --size."""
    from vtviz.jobs.export import _decode
    from vtviz.preprocess import Preprocess

    p = tmp_path / "big.png"
    Image.fromarray(np.zeros((900, 1200, 3), np.uint8)).save(p)
    item = _decode(0, p, Preprocess(size=64), display=300)
    assert item.image is not None and item.image.shape == (225, 300, 3)
    assert item.geometry is not None and item.geometry.original_size == (900, 1200)
    assert item.fitted is not None and item.fitted.shape == (64, 64, 3)
    full = _decode(0, p, Preprocess(size=64), display=None)
    assert full.image is not None and full.image.shape == (900, 1200, 3)


INLINE_DECODES: list[int] = []


def _decode_here(*args):  # noqa: ANN002, ANN202 (the exporter's _decode, counted in this process)
    if INLINE_DECODES and os.getpid() == INLINE_DECODES[0]:
        INLINE_DECODES.append(args[0])
    return _real_decode(*args)


@pytest.mark.slow
def test_decoding_starts_inline_and_keeps_input_order_when_workers_join(tmp_path, monkeypatch):
    """While the workers spawn, inputs are decoded in the exporter itself (the model need not
    wait ~2 s for them); once they run, decoding moves to them; the order never changes."""
    from vtviz.jobs import export as export_module
    from vtviz.jobs.export import _decode, _decoded_stream
    from vtviz.jobs.workers import stop_pool, worker_pool
    from vtviz.preprocess import Preprocess

    INLINE_DECODES[:] = [os.getpid()]
    monkeypatch.setattr(export_module, "_decode", _decode_here)

    src = _photos(tmp_path / "in", 12)
    jobs = list(enumerate(src))
    pre = Preprocess(size=32)
    pool = worker_pool(1, "spawn")  # (forked workers start at once)
    try:
        stream = _decoded_stream(jobs, pre, pool, window=3, display=None, workers=1)
        got = [next(stream) for _ in range(4)]  # decoded before the worker has started
        assert pool.submit(os.getpid).result() != os.getpid()  # now it runs
        got += list(stream)  # ... and decodes the rest
    finally:
        stop_pool(pool, finished=True)
    assert [d.index for d in got] == list(range(12))
    inline = INLINE_DECODES[1:]
    assert inline[:4] == [0, 1, 2, 3] and len(inline) < 12  # the first ones here, the rest in the worker
    for d, (i, path) in zip(got, jobs):
        alone = _decode(i, path, pre)
        assert d.image is not None and alone.image is not None and np.array_equal(d.image, alone.image)


FORK_AFTER_THREADS = """
import sys
import cv2, numpy as np, torch
from vtviz import load_model
from vtviz.jobs.export import ExportOptions, export
cv2.setNumThreads(2); torch.set_num_threads(2)
for _ in range(5):  # both thread pools at work in the parent, as in a notebook or the app
    cv2.GaussianBlur(np.zeros((1500, 1500, 3), np.float32), (31, 31), 5)
    torch.nn.functional.conv2d(torch.randn(4, 32, 64, 64), torch.randn(32, 32, 3, 3))
model = load_model(sys.argv[1], device="cpu")
summary = export(model, sys.argv[3:], sys.argv[2], ExportOptions(), workers=2, batch_size=2, progress=False)
assert summary.exported == len(sys.argv) - 3, summary
print("exported", summary.exported)
"""


@pytest.mark.slow
def test_forked_workers_start_after_the_parent_used_its_thread_pools(tmp_path, checkpoint):
    """Workers forked from a process whose OpenCV and torch thread pools have run (a notebook,
    the app) do not hang (a forked child resizing OpenCV's pool, or running torch with the
    parent's OpenMP threads, does) and export every photo."""
    src = _photos(tmp_path / "in", 4)
    env = {k: v for k, v in ENV.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", FORK_AFTER_THREADS, str(checkpoint), str(tmp_path / "out"),
                           *map(str, src)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "exported 4" in done.stdout, done.stderr


def test_model_threads_leave_the_workers_their_cores(monkeypatch):
    """On a CPU the model runs with the cores the drawing workers do not use, and gets its
    threads back afterwards; workers that would take every core, a GPU or no workers change
    nothing."""
    import torch

    from vtviz.runtime import cpu_threads_beside

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        with cpu_threads_beside(torch.device("cpu"), busy=3):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 4
        with cpu_threads_beside(torch.device("cpu"), busy=2):
            assert torch.get_num_threads() == 2
        for busy in (0, 4, 6):
            with cpu_threads_beside(torch.device("cpu"), busy=busy):
                assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_render_jobs_travel_with_their_tensors_intact():
    """A job for the drawing workers round-trips exactly: values, dtypes, shapes, strides made
    plain (float32 as NumPy bytes, bfloat16 through torch's own pickling)."""
    import pickle

    from vtviz.jobs.export import _pack

    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    job = ({"a": base, "t": base.transpose(1, 2)}, [base.to(torch.bfloat16), torch.tensor([1, 2])], "x")
    back = pickle.loads(_pack(job))
    assert back[2] == "x"
    for got, want in ((back[0]["a"], base), (back[0]["t"], base.transpose(1, 2)),
                      (back[1][0], base.to(torch.bfloat16)), (back[1][1], torch.tensor([1, 2]))):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)


@pytest.mark.skipif(not Path("/proc/self/stat").exists() or platform.libc_ver()[0] != "glibc",
                    reason="glibc on Linux only")
@pytest.mark.slow
def test_drawing_workers_reuse_freed_memory_instead_of_faulting_it_in_again():
    """A worker's allocator keeps freed blocks (``_keep_freed_memory``): arrays of a drawing's
    sizes (1-12 MiB) made and dropped again and again fault their pages in once, not each time
    (glibc's defaults return them to the system: ~3,000 faults a round). A fresh process."""
    code = """
import sys
import numpy as np
from vtviz.jobs.workers import _keep_freed_memory
def faults():
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])
def churn():
    before = faults()
    for _ in range(20):
        live = [np.ones(s << 20, np.uint8) for s in (1, 3, 2, 6, 4, 12)]
        del live
    return faults() - before
if sys.argv[1] == "kept":
    _keep_freed_memory()
churn()  # warm
print(churn())
"""
    counts = [int(subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True,
                                 check=True).stdout) for arg in ("plain", "kept")]
    assert counts[0] > 20 * 1000 and counts[1] < 500, counts


def test_stopping_busy_pools_is_quiet():
    """Stopping an interrupted export's pool (workers killed mid-job, jobs queued) ends every
    worker and the pool's threads without an error in any thread: closing a pipe end while the
    pool's manager thread closed it too once gave "error: [Errno 9] Bad file descriptor" instead of
    the interrupted line after SIGTERM. A race, so tried several times."""
    import threading

    from vtviz.jobs.workers import stop_pool, worker_pool

    errors: list[BaseException | None] = []
    hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        for _ in range(4):
            pool = worker_pool(2)
            procs = list(pool._processes.values())  # type: ignore[attr-defined]
            manager = pool._executor_manager_thread  # type: ignore[attr-defined]
            jobs = [pool.submit(time.sleep, 0.05) for _ in range(200)]
            time.sleep(0.1)
            stop_pool(pool, finished=False)
            manager.join(timeout=5)
            assert all(not p.is_alive() for p in procs) and not manager.is_alive()
            assert any(j.cancelled() for j in jobs)
    finally:
        threading.excepthook = hook
    assert errors == []


def test_workers_run_at_a_lower_priority_than_the_exporter():
    """The decode-and-draw workers yield the CPU to the model's threads (``nice``), so that a
    model thread is not kept waiting for a core by drawing that can wait."""
    from vtviz.jobs.workers import WORKER_NICENESS, stop_pool, worker_pool

    mine = os.getpriority(os.PRIO_PROCESS, 0)
    pool = worker_pool(2)
    try:
        seen = {pool.submit(os.getpriority, os.PRIO_PROCESS, 0).result(timeout=30) for _ in range(4)}
    finally:
        stop_pool(pool, finished=True)
    assert seen == {min(19, mine + WORKER_NICENESS)} and (min(seen) > mine or mine == 19)
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine  # the exporter's own priority is unchanged
