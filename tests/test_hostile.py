"""Hostile checkpoints and text (the fault run's findings): each is refused with a message that
names the file, before it costs memory, time or lost work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import vtviz
from vtviz.errors import CheckpointError, ImageError
from vtviz.indices import parse_indices


def _rewrite(src, dst, edit=None, tensors=None):
    """Copy checkpoint ``src`` to ``dst`` with its metadata dict changed by ``edit``."""
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["vtviz"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    if edit is not None:
        edit(meta)
    text = meta if isinstance(meta, str) else json.dumps(meta)
    save_file(tensors if tensors is not None else state, str(dst), metadata={"format": "vtviz/1", "vtviz": text})
    return dst


def _bomb(meta):
    meta["config"]["token_channels"] = 8192
    meta["config"]["tokenizers"] = ["filter"] + ["recurrent"] * 15


def test_config_bomb_is_refused_from_the_header(tmp_path, checkpoint):
    path = _rewrite(checkpoint, tmp_path / "bomb.safetensors", _bomb)
    with pytest.raises(CheckpointError, match="bomb.safetensors.*shape|bomb.safetensors.*tensor"):
        vtviz.load_model(path)


@pytest.mark.slow
def test_config_bomb_allocates_nothing_under_a_memory_cap(tmp_path, checkpoint):
    """With 2 GiB of address space left (the bomb asks for 12.5 GiB), the refusal is a
    CheckpointError, not a MemoryError or RuntimeError."""
    path = _rewrite(checkpoint, tmp_path / "bomb.safetensors", _bomb)
    code = textwrap.dedent(f"""
        import resource, sys
        import torch, vtviz
        from vtviz.errors import CheckpointError
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        cap = used + (2 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        try:
            vtviz.load_model({str(path)!r}, device="cpu")
        except CheckpointError as exc:
            print("refused:", exc)
            sys.exit(0)
        print("loaded"); sys.exit(1)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "refused:" in done.stdout and "bomb.safetensors" in done.stdout


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(classes=[]), "0 class names for a model of 5 classes"),
    (lambda m: m.update(classes=["a", "b"]), "2 class names"),
    (lambda m: m.update(classes="abcde"), "'classes' must be a list"),
    (lambda m: m.update(classes=[1, 2, 3, 4, 5]), "'classes' must be a list of non-empty names"),
    (lambda m: m.update(classes=[None] * 5), "'classes' must be a list of non-empty names"),
    (lambda m: m.update(description={"x": 1}), "'description' must be a string"),
    (lambda m: m["preprocess"].update(size=4096), "1024"),
])
def test_bad_metadata_is_refused_naming_the_file(tmp_path, checkpoint, edit, match):
    path = _rewrite(checkpoint, tmp_path / "meta.safetensors", edit)
    with pytest.raises(CheckpointError, match=match) as info:
        vtviz.load_model(path)
    assert "meta.safetensors" in str(info.value)


def test_deeply_nested_metadata_is_refused(tmp_path, checkpoint):
    path = _rewrite(checkpoint, tmp_path / "nested.safetensors", None)
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(path), metadata={"format": "vtviz/1", "vtviz": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(CheckpointError, match="nested.safetensors"):
        vtviz.load_model(path)


def test_nan_ood_bank_is_refused(tmp_path, small_model):
    from vtviz.models.ood import OODScorer

    model = vtviz.vt_resnet18(num_classes=5).eval()
    model.ood = OODScorer(torch.full((20, 1024), float("nan")), 3, 0.1, {})
    path = vtviz.save_model(model, tmp_path / "nanbank", vtviz.model_meta(small_model))
    with pytest.raises(CheckpointError, match="nanbank.safetensors: the OOD bank holds NaN"):
        vtviz.load_model(path)


def test_looping_link_is_named_as_such(tmp_path):
    loop = tmp_path / "loop.safetensors"
    os.symlink(loop, loop)
    with pytest.raises(CheckpointError, match="loop.safetensors: a dangling or looping symbolic link"):
        vtviz.load_model(loop)
    with pytest.raises(ImageError, match="loop.safetensors: a dangling or looping symbolic link"):
        vtviz.load_image(loop)


def test_token_ranges_are_bounded_before_they_are_expanded():
    assert parse_indices("0-3,7", 16, "token") == (0, 1, 2, 3, 7)
    assert parse_indices("all", 16) is None
    with pytest.raises(ValueError, match="50000000 is out of range: the model has 16 tokens"):
        parse_indices("0-50000000", 16, "token")
    with pytest.raises(ValueError, match="at most 4096 indices"):
        parse_indices("0-300000000")  # no bound known: still never expanded
    for bad in ("3-", "99", "5-2", "x"):
        with pytest.raises(ValueError, match="token"):
            parse_indices(bad, 16, "token")


def test_export_refuses_layers_and_tokens_the_model_lacks(tmp_path, checkpoint, rgb):
    from PIL import Image

    from vtviz.cli import main

    img = tmp_path / "a.png"
    Image.fromarray(rgb).save(img)
    assert main(["export", "--model", checkpoint, "--out", str(tmp_path / "o"), "--layers", "5",
                 "--tokens", "99", "--workers", "0", "--quiet", str(img)]) == 1
    assert not (tmp_path / "o").exists()
    assert main(["export", "--model", checkpoint, "--out", str(tmp_path / "o"), "--tokens", "0-300000000",
                 "--workers", "0", "--quiet", str(img)]) == 1


def test_markdown_in_names_is_made_inert():
    from vtviz.app.session import plain

    shown = plain("[click me](http:evil.example) **bold**.jpg")
    assert "](" not in shown.replace("\\]\\(", "") and "\\*\\*bold\\*\\*" in shown


def test_nan_float_tiff_names_the_file(tmp_path):
    from PIL import Image

    arr = np.full((8, 8), np.nan, np.float32)
    path = tmp_path / "nan.tiff"
    Image.fromarray(arr, mode="F").save(path)
    with pytest.raises(ImageError, match="nan.tiff: array holds NaN"):
        vtviz.load_image(path)


def test_oversized_file_is_refused_before_reading(tmp_path):
    from vtviz.image import load_image_reduced

    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG" + b"\0" * 4096)
    with pytest.raises(ImageError, match="big.png: file too large: 0 MiB, the limit is 0 MiB"):
        load_image_reduced(path, None, max_bytes=1024)


def test_predict_records_every_failed_input_and_goes_on(tmp_path, checkpoint, rgb, capsys):
    from PIL import Image

    from vtviz.cli import main

    good = tmp_path / "good.png"
    Image.fromarray(rgb).save(good)
    odd = tmp_path / "new\nline.png"
    Image.fromarray(rgb).save(odd)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    dangling = tmp_path / "dangling.png"
    os.symlink(tmp_path / "nowhere", dangling)
    loop = tmp_path / "loop.png"
    os.symlink(loop, loop)
    code = main(["predict", checkpoint, str(tmp_path / "missing.png"), str(fifo), str(dangling), str(loop),
                 str(good), str(odd), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{good}: ") and lines[1].startswith(f"{tmp_path}/new\\nline.png: ")
    for name, reason in (("missing.png", "no such file"), ("pipe.png", "not a regular file"),
                         ("dangling.png", "a dangling or looping"), ("loop.png", "a dangling or looping")):
        assert f"{tmp_path / name}: {reason}" in err
    assert "4 of 6 inputs failed" in err


def test_full_disk_error_names_the_file(tmp_path, monkeypatch):
    import errno

    from vtviz.files import atomic_write

    real_replace = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match=r"cannot write .*out\.jpg: No space left on device") as info:
        atomic_write(tmp_path / "out.jpg", b"x")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "replace", real_replace)
    assert not list(tmp_path.iterdir())  # no temporary left behind


def test_finished_export_writes_nothing(tmp_path, checkpoint, rgb):
    from PIL import Image

    from vtviz.cli import main

    img = tmp_path / "a.png"
    Image.fromarray(rgb).save(img)
    out = tmp_path / "o"
    args = ["export", "--model", checkpoint, "--out", str(out), "--workers", "0", "--quiet", str(img)]
    assert main(args) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    os.chmod(out, 0o555)  # (root ignores it; the listing and times below are the check)
    try:
        assert main(args) == 0
    finally:
        os.chmod(out, 0o755)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_app_upload_limit_holds_without_the_config_file(monkeypatch):
    from vtviz.app import session

    monkeypatch.setattr(session, "MAX_UPLOAD_BYTES", 1000)
    with pytest.raises(ImageError, match="huge.png: upload too large"):
        session.explain_upload(vtviz.vt_resnet18(num_classes=5), session.Upload("huge.png", b"\0" * 2000))
    with pytest.raises(CheckpointError, match="huge.safetensors: upload too large"):
        session.ModelStore().add_upload(b"\0" * 2000, "huge.safetensors")


def test_killed_worker_is_a_message_not_a_traceback(tmp_path, checkpoint, rgb, monkeypatch, capsys):
    from concurrent.futures.process import BrokenProcessPool

    from PIL import Image

    from vtviz.cli import main
    from vtviz.jobs import export as export_module

    def killed(*args, **kwargs):
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(export_module, "export", killed)
    img = tmp_path / "a.png"
    Image.fromarray(rgb).save(img)
    assert main(["export", "--model", checkpoint, "--out", str(tmp_path / "o"), "--quiet", str(img)]) == 1
    err = capsys.readouterr().err
    assert "a worker process died" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err


def test_a_missing_optional_package_names_its_extra(monkeypatch):
    import importlib

    from vtviz.errors import require

    real = importlib.import_module

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError("No module named 'scipy'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_scipy)
    with pytest.raises(ImportError, match=r"pip install 'vtviz\[app\]'"):
        require("scipy.optimize")
    with pytest.raises(ImportError, match=r"vtviz\[app\]"):  # where the library needs it: token matching
        vtviz.maps.tokens.match_tokens(torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3))
