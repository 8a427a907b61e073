"""The Streamlit app through streamlit.testing (AppTest): views, uploads, errors, caching."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vtviz
from vtviz.app import session

APP = str(Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py")


@pytest.fixture
def app(app_models, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    st.cache_resource.clear()
    calls = {"n": 0}
    real = session.explain_upload

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(session, "explain_upload", counting)
    monkeypatch.setattr(session, "SAMPLE_DATA", None)  # the four bundled photos, dataset or not
    at = AppTest.from_file(APP, default_timeout=60)
    at.calls = calls  # type: ignore[attr-defined]
    return at


def _png(seed: int, size=(120, 90)) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img[20:60, 30:80] = (255, 200, 0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _grid_url(at) -> str:
    """The token grid's picture (the grid view is opened first when another view is shown)."""
    if at.radio(key="view").value != "Token grid":
        at.radio(key="view").set_value("Token grid")
        at.run()
    return at.image[0].value[0]


def _show(at, view: str) -> None:
    at.radio(key="view").set_value(view)
    at.run()


def _by_label(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def test_default_start_shows_samples(app):
    app.run()
    assert not app.exception, app.exception
    assert not app.error
    assert app.markdown[0].value.startswith("A **visual token** is a soft spotlight")
    assert app.radio(key="view").value == "Overview"
    # the overview: each photo's tokens at once with one prediction, then one photo's 16 tokens
    assert len(app.image) == 4 + 1 and len(app.image[-1].value) == 16
    assert [c for c in app.image[-1].captions][:2] == ["token 0", "token 1"]
    assert app.calls["n"] == 4  # the four sample photos; other views run only when shown
    _show(app, "Token grid")
    assert app.image[0].captions[0].startswith("rows: tokens")
    model_box = _by_label(app.sidebar.selectbox, "Model")
    assert model_box.value == "vt-lite0-imagenet"
    assert "filter" in str(_by_label(app.sidebar.radio, "Layer").format_func(0))


def test_colormap_change_does_not_rerun_model(app, capsys):
    app.run()
    first = app.session_state["render_seconds"]
    calls, url = app.calls["n"], _grid_url(app)
    _by_label(app.sidebar.selectbox, "Colour map").set_value("viridis")
    app.run()
    again = app.session_state["render_seconds"]
    assert app.calls["n"] == calls
    assert _grid_url(app) != url
    with capsys.disabled():
        print(f"\n[app timing] first full render (4 photos): {first:.2f} s; after a colour-map change: "
              f"{again:.2f} s; ratio {again / first:.2f} (target <= 0.3)")


def test_upload_switch_layer_tokens_kind_model(app):
    app.run()
    uploader = app.file_uploader[0] if app.file_uploader[0].label.startswith("Drop") else app.file_uploader[1]
    uploader.set_value([("a.png", _png(1), "image/png"), ("b.png", _png(2), "image/png")])
    app.run()
    assert not app.exception and not app.error
    assert app.calls["n"] == 4 + 2
    urls = {_grid_url(app)}
    _by_label(app.sidebar.radio, "Layer").set_value(1)
    app.run()
    urls.add(_grid_url(app))
    _by_label(app.sidebar.text_input, "Tokens").set_value("0,3")
    app.run()
    urls.add(_grid_url(app))
    _by_label(app.sidebar.radio, "Map").set_value(vtviz.viz.views.MapKind.MIXED)
    app.run()
    urls.add(_grid_url(app))
    assert len(urls) == 4 and app.calls["n"] == 6  # re-rendered, never re-run
    # the last layer has no projector: the Map control does not offer it
    assert "projector assignment" not in _by_label(app.sidebar.radio, "Map").options
    _by_label(app.sidebar.radio, "Layer").set_value(0)
    app.run()
    assert "projector assignment" in _by_label(app.sidebar.radio, "Map").options
    _by_label(app.sidebar.radio, "Map").set_value(vtviz.viz.views.MapKind.ASSIGNMENT)
    app.run()
    assert not app.exception
    _by_label(app.sidebar.selectbox, "Model").set_value("vt-r18-filter-imagenette-v7")
    app.run()
    assert not app.exception and app.calls["n"] == 8
    assert "filter" in str(_by_label(app.sidebar.radio, "Layer").format_func(1))
    for view in ["All tokens", "Why this class", "Filter vs recurrent", "Compare models", "Token gallery",
                 "Token details"]:
        _by_label(app.radio, "View").set_value(view)
        app.run()
        assert not app.exception and not app.error, view
        assert len(app.image) >= 1
        if view == "All tokens":
            assert len(app.image[0].value) == 2  # one constellation per image, side by side
            _by_label(app.selectbox, "Isolate a token").set_value(3)
            app.run()
            assert not app.exception
        if view == "Why this class":  # class token maps beside Grad-CAM, for another class too
            first = app.image[0].value
            assert len(app.dataframe[0].value) == 16  # every token's contribution (diagnostics: last)
            _by_label(app.selectbox, "Class").set_value(1 if "(predicted)" not in
                                                        _by_label(app.selectbox, "Class").options[1] else 2)
            app.run()
            assert not app.exception and app.image[0].value != first
        if view == "Token gallery":  # built from the two photos shown: each token's crops and overlays
            assert len(app.image) == 2 and len(app.image[0].value) == 2 and len(app.image[1].value) == 2
    assert len(app.image) == 3  # details: one overlay per image, mixing matrix, partition
    # the comparison opened on the comparable model (vt-r18-imagenette-v7: same classes and
    # architecture), whose maps of the two uploads were not cached yet
    assert app.calls["n"] == 10


def test_upload_names_are_shown_as_text_not_markdown(app):
    app.run()
    uploader = [u for u in app.file_uploader if u.label.startswith("Drop")][0]
    evil = "![x](http://127.0.0.1:9/leak.png).png"
    uploader.set_value([("good.png", _png(3), "image/png"), (evil, b"not an image", "image/png")])
    app.run()
    message = next(e.value for e in app.error if "leak" in e.value)
    assert "![x](" not in message and "\\!\\[x\\]\\(" in message  # escaped: rendered as text


def test_bad_upload_named_others_render(app):
    app.run()
    uploader = [u for u in app.file_uploader if u.label.startswith("Drop")][0]
    uploader.set_value([("good.png", _png(3), "image/png"), ("broken.png", b"\x89PNG garbage", "image/png")])
    app.run()
    assert not app.exception
    assert any("broken\\.png" in e.value for e in app.error)  # the name, escaped for Markdown
    _show(app, "Token grid")
    assert app.image[0].captions[0].startswith("rows: tokens")


def test_broken_upload_first_then_compare_models(app):
    """A failed upload before two good ones: the comparison keeps each upload with its result."""
    app.run()
    uploader = [u for u in app.file_uploader if u.label.startswith("Drop")][0]
    uploader.set_value([("broken.png", b"\x89PNG garbage", "image/png"), ("a.png", _png(4), "image/png"),
                        ("b.png", _png(5), "image/png")])
    app.run()
    _by_label(app.radio, "View").set_value("Compare models")
    app.run()
    assert not app.exception, app.exception
    _by_label(app.selectbox, "Image").set_value(1)
    app.run()
    assert not app.exception, app.exception
    assert len(app.image) == 1 and "matched" in app.image[0].captions[0]


def test_bad_checkpoint_keeps_previous_model(app, tmp_path, small_model):
    import pickle

    app.run()
    ckpt = [u for u in app.file_uploader if u.label.startswith("vtviz checkpoint")][0]
    ckpt.set_value(("evil.pt", pickle.dumps({"a": 1}) + b"junk", "application/octet-stream"))
    app.run()
    assert not app.exception
    assert any("Not a usable vtviz model" in e.value for e in app.error)
    assert _by_label(app.sidebar.selectbox, "Model").value == "vt-lite0-imagenet"
    _show(app, "Token grid")
    assert app.image[0].captions[0].startswith("rows: tokens")
    good = tmp_path / "mine.safetensors"
    vtviz.save_model(small_model, good, vtviz.model_meta(small_model))
    ckpt = [u for u in app.file_uploader if u.label.startswith("vtviz checkpoint")][0]
    ckpt.set_value(("../../mine model.safetensors", good.read_bytes(), "application/octet-stream"))
    app.run()
    labels = _by_label(app.sidebar.selectbox, "Model").options
    assert any(label.startswith("uploaded:") and "/" not in label.split(":", 1)[1] for label in labels)


def _one_hot_mixing_model() -> vtviz.VTResNet:
    """A VT-R18 whose transformer attention is one-hot: every token reads the same token.

    With the first LayerNorm's bias 1 (and weight 1), ``ones . LN(t) = C`` for every token,
    so a key map ``v ones^T / C`` gives each token the same key ``v``; every row then ranks
    the queries alike, and a large ``v`` makes that ranking one-hot.
    """
    import torch

    torch.manual_seed(3)
    model = vtviz.vt_resnet18(num_classes=10).eval()
    with torch.no_grad():
        for layer in model.vt_layers:
            tr = layer.transformer
            c = tr.norm1.weight.shape[0]
            tr.norm1.bias.fill_(1.0)
            v = torch.randn(tr.key.weight.shape[0]) * 200
            tr.key.weight.copy_(torch.outer(v, torch.ones(c)) / c)
    return model


def test_app_warns_on_degenerate_mixing(app, tmp_path, monkeypatch):
    from vtviz.models.meta import ModelMeta
    from vtviz.preprocess import Preprocess

    model = _one_hot_mixing_model()
    meta = ModelMeta(config=model.config, classes=tuple(f"class{i}" for i in range(10)),
                     preprocess=Preprocess(size=128), name="vt-r18-imagenette")
    vtviz.save_model(model, tmp_path / "vt-r18-imagenette", meta)
    monkeypatch.setenv("VTVIZ_PRETRAINED", str(tmp_path))
    app.run()
    assert not app.exception, app.exception
    # the diagnostics panel says so, with numbers; the tokenizer-attention view needs no warning
    assert any("layer 0: token mixing is degenerate" in w.value for w in app.warning)
    assert not [w for w in app.warning if "Token mixing is degenerate here" in w.value]
    _by_label(app.sidebar.radio, "Map").set_value(vtviz.viz.views.MapKind.MIXED)
    app.run()
    warnings = [w.value for w in app.warning if "Token mixing is degenerate here" in w.value]
    assert warnings and "nearly one map" in warnings[0]


def test_samples_prefer_photos_of_known_classes(tmp_path):
    """With a dataset split beside the repository, the app opens on one photo of each of its
    first classes (read, not copied) plus one foreign photo for the 'unfamiliar' flag."""
    from pathlib import Path

    bundled = Path(APP).parent / "samples"
    for cls in ("n1", "n2", "n3"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            (tmp_path / cls / f"{i}.JPEG").write_bytes(_png(i))
    uploads, familiar = session.sample_uploads(bundled, tmp_path, classes=2)
    assert familiar and [u.name for u in uploads] == ["n1/0.JPEG", "n2/0.JPEG", "chelsea.jpg"]
    uploads, familiar = session.sample_uploads(bundled, tmp_path / "missing")
    assert not familiar and len(uploads) == 4


def test_gallery_folder_opens_in_the_app(app, tmp_path):
    from vtviz.cli import main as cli

    src = tmp_path / "photos"
    src.mkdir()
    for i in range(3):
        (src / f"p{i}.png").write_bytes(_png(10 + i))
    out = tmp_path / "gallery"
    assert cli(["gallery", "--model", "vt-r18-imagenette-v7", "--out", str(out), str(src), "--k", "2",
                "--device", "cpu", "--quiet"]) == 0
    app.run()
    _by_label(app.radio, "View").set_value("Token gallery")
    app.run()
    app.text_input(key="gallery_dir").set_value(str(out))
    app.run()
    assert not app.exception and not app.error
    assert len(app.image[0].value) == 2  # the token's two crops from the folder
    app.text_input(key="gallery_dir").set_value(str(tmp_path / "nothing"))
    app.run()
    assert any("Cannot read that gallery" in e.value for e in app.error)


def test_a_model_without_tokens_is_explained_not_a_crash(app, tmp_path):
    import torch

    from vtviz.models.meta import ModelMeta
    from vtviz.preprocess import Preprocess

    torch.manual_seed(0)
    baseline = vtviz.resnet18(num_classes=10)
    meta = ModelMeta(config=baseline.config, classes=tuple(f"c{i}" for i in range(10)),
                     preprocess=Preprocess(size=64), name="resnet18-baseline")
    path = vtviz.save_model(baseline, tmp_path / "resnet18", meta)
    app.run()
    ckpt = [u for u in app.file_uploader if u.label.startswith("vtviz checkpoint")][0]
    ckpt.set_value(("resnet18.safetensors", path.read_bytes(), "application/octet-stream"))
    app.run()
    label = [o for o in _by_label(app.sidebar.selectbox, "Model").options if "resnet18" in o][0]
    _by_label(app.sidebar.selectbox, "Model").set_value(label)
    app.run()
    assert not app.exception
    assert any("without visual tokens" in e.value for e in app.error)


def test_uploads_are_kept_small_and_few(tmp_path, small_model):
    """A huge upload is kept at most DISPLAY_SIDE px; only the newest uploaded checkpoints stay."""
    from vtviz.app.session import DISPLAY_SIDE, ModelStore, Upload, explain_upload

    big = np.zeros((3000, 2000, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    res = explain_upload(small_model, Upload("big.png", buf.getvalue()))
    assert max(res.images[0].shape[:2]) == DISPLAY_SIDE and res.geometries[0].original_size == (1600, 1067)
    store = ModelStore(device="cpu", max_uploads=1)
    import copy

    paths = []
    for seed in range(2):
        m = copy.deepcopy(small_model)
        with torch.no_grad():
            m.fc.bias.fill_(seed)  # two different files
        p = vtviz.save_model(m, tmp_path / f"m{seed}", vtviz.model_meta(m))
        paths.append(store.add_upload(p.read_bytes(), f"m{seed}.safetensors"))
    assert not Path(paths[0]).exists() and Path(paths[1]).exists()  # the older one is gone


def test_uploads_are_deleted_when_the_process_ends(tmp_path):
    """The private upload folder (uploaded checkpoints are ~100 MB each) goes with the process
    that made it: the app's server, or a test run through AppTest, leaves nothing in the temp dir."""
    import subprocess
    import sys

    code = ("from vtviz.app.session import upload_dir\n"
            "d = upload_dir(); (d / 'x.safetensors').write_bytes(b'0' * 1000); print(d)\n")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    folder = Path(out.stdout.strip())
    assert folder.parent == tmp_path and folder.name.startswith("vtviz-uploads-")
    assert not folder.exists() and list(tmp_path.iterdir()) == []


def test_markdown_file_names_stay_text_in_image_captions(app):
    """An upload named like a Markdown link is a caption of plain text in the "All tokens" view."""
    app.run()
    uploader = [u for u in app.file_uploader if u.label.startswith("Drop")][0]
    evil = "[click me](http:evil.example) **bold**.png"
    uploader.set_value([(evil, _png(5), "image/png")])
    app.run()
    app.radio(key="view").set_value("All tokens")
    app.run()
    assert not app.exception, app.exception
    caption = app.image[0].captions[0]
    assert "\\[click me\\]" in caption and "\\*\\*bold\\*\\*" in caption


def test_token_box_out_of_range_says_so(app):
    app.run()
    _by_label(app.sidebar.text_input, "Tokens").set_value("0-50000000")
    app.run()
    assert not app.exception, app.exception
    assert any("out of range: the model has 16 tokens" in w.value for w in app.sidebar.warning)


def test_one_probability_per_photo_across_views(app):
    """The overview and "Why this class" show the same prediction line for a photo: one forward
    pass defines it (the class maps' own float32 pass never shows a second probability)."""
    app.run()
    overview = [m.value for m in app.markdown if m.value.startswith("**")]
    assert len(overview) == 4 and all("%" in line or "unfamiliar" in line for line in overview)
    _show(app, "Why this class")
    assert not app.exception, app.exception
    why = [m.value for m in app.markdown if m.value.startswith("**")]
    assert why == [overview[0]]


def test_compare_models_opens_on_the_comparable_model():
    from vtviz.app.session import comparable_first
    from vtviz.models.meta import ModelMeta
    from vtviz.preprocess import Preprocess

    def meta(arch_model, classes):
        return ModelMeta(config=arch_model.config, classes=classes, preprocess=Preprocess(size=64))

    ten = tuple(f"c{i}" for i in range(10))
    rec = vtviz.vt_resnet18(num_classes=10)
    fil = vtviz.vt_resnet18(num_classes=10, tokenizers=("filter", "filter"))
    other = vtviz.vt_resnet18(num_classes=5)
    order = comparable_first(meta(rec, ten), {"other": meta(other, ten[:5]), "filter": meta(fil, ten)})
    assert order == ["filter", "other"]
