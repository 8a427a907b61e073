"""Class token maps, Grad-CAM and the map measures (pointing game, deletion/insertion,
randomisation) on constructed cases whose answers are known; `vtviz evaluate-maps` end to end."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import vtviz
from vtviz.cli import main as cli
from vtviz.image import to_tensor
from vtviz.jobs.evaluate_maps import MapEvalConfig, evaluate_maps, mosaic_image, mosaics
from vtviz.maps import faithful as fa

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


# --------------------------------------------------------------------------- measures
def test_pointing_game_known_maps():
    one = torch.zeros(4, 8, 8)
    for q, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        one[q, r:r + 4, c:c + 4] = torch.rand(4, 4) + 0.1  # all mass in quadrant q
    assert torch.allclose(fa.pointing_scores(one, torch.arange(4)), torch.ones(4))
    assert torch.allclose(fa.pointing_scores(one, torch.tensor([1, 2, 3, 0])), torch.zeros(4))
    assert torch.allclose(fa.pointing_scores(torch.ones(4, 8, 8), torch.arange(4)), torch.full((4,), 0.25))
    prior = fa.centre_prior(8, 8)[None].expand(4, 8, 8)
    assert torch.allclose(fa.pointing_scores(prior, torch.arange(4)), torch.full((4,), 0.25))
    # negative values do not count: a map positive only in quadrant 0
    signed = -torch.ones(1, 8, 8)
    signed[0, :4, :4] = 1
    assert float(fa.pointing_scores(signed, torch.tensor([0]))) == 1.0
    assert torch.isnan(fa.pointing_scores(-torch.ones(1, 8, 8), torch.tensor([0]))).all()  # points nowhere


def test_object_bound_tokens():
    att = torch.zeros(1, 3, 8, 8)
    att[0, 0, :4, :4] = 1  # one quadrant
    att[0, 1] = 1  # everywhere
    att[0, 2, :4, :4], att[0, 2, 4:, 4:] = 0.85, 0.15  # 85% in one quadrant
    assert fa.object_bound(att).tolist() == [[True, False, True]]


def test_deletion_of_a_perfect_order_beats_random():
    """A linear 'model' whose class score is the mean of the pixels inside a known region:
    deleting in the order of the region drops it fastest, inserting raises it fastest."""
    torch.manual_seed(0)
    h = w = 16
    weight = torch.zeros(h, w)
    weight[3:9, 5:12] = 1.0
    x = torch.rand(6, 3, h, w) + 0.5
    base = torch.zeros_like(x)

    def score(imgs):
        return torch.sigmoid((imgs.mean(1) * weight).sum((-2, -1)) / weight.sum() * 4 - 2)

    good = fa.pixel_ranks(weight[None].expand(6, h, w) + 0.01 * torch.rand(6, h, w), (h, w))
    rand = fa.pixel_ranks(torch.rand(6, h, w), (h, w))
    d_good, i_good = fa.deletion_insertion(score, x, base, good, steps=8)
    d_rand, i_rand = fa.deletion_insertion(score, x, base, rand, steps=8)
    assert d_good.shape == (6, 9)
    assert torch.allclose(d_good[:, 0], score(x)) and torch.allclose(d_good[:, -1], score(base))
    assert (fa.curve_auc(d_good) < fa.curve_auc(d_rand) - 0.05).all()
    assert (fa.curve_auc(i_good) > fa.curve_auc(i_rand) + 0.05).all()
    assert torch.allclose(fa.curve_auc(torch.ones(1, 5)), torch.ones(1))


def test_token_curves_are_exact(small_model):
    x = torch.randn(2, 3, 64, 64)
    cm = fa.class_maps(small_model, x)
    w, b = small_model.fc.weight.detach(), small_model.fc.bias.detach()
    order = torch.arange(16).expand(2, 16)
    d, i = fa.token_curves(cm.tokens[-1], w, b, cm.target, order)
    p = cm.logits.softmax(-1).gather(1, cm.target[:, None])[:, 0]
    assert torch.allclose(d[:, 0], p, atol=1e-5) and torch.allclose(i[:, -1], p, atol=1e-5)
    empty = b.softmax(-1)[cm.target]  # no token left: the bias alone
    assert torch.allclose(d[:, -1], empty, atol=1e-6) and torch.allclose(i[:, 0], empty, atol=1e-6)
    # removing tokens 0..2 equals a forward pass with those tokens zeroed
    t = cm.tokens[-1].clone()
    t[:, :3] = 0
    expected = small_model.fc(t.mean(1)).softmax(-1).gather(1, cm.target[:, None])[:, 0]
    assert torch.allclose(d[:, 3], expected, atol=1e-5)


def test_class_maps_exact_for_last_layer_and_gradcam_matches_captum(small_model):
    from captum.attr import LayerGradCam

    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    cm = fa.class_maps(small_model, x, target=[1, 3])
    assert cm.target.tolist() == [1, 3]
    logit = cm.logits.gather(1, cm.target[:, None])[:, 0]
    # the logits are fc(mean of the last tokens): contributions sum to logit - bias exactly
    assert torch.allclose(cm.contributions[-1].sum(1), logit - small_model.fc.bias.detach()[cm.target], atol=1e-4)
    expected = torch.relu(torch.einsum("bl,blhw->bhw", cm.contributions[-1], cm.attention[-1]))
    assert torch.allclose(cm.token_maps[-1], expected)
    cam = LayerGradCam(small_model, small_model.stem.layer3).attribute(x, target=[1, 3], relu_attributions=True)
    assert torch.allclose(cm.gradcam, cam[:, 0].detach(), atol=1e-5, rtol=1e-4)


def test_randomisation_sanity(small_model):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 64)
    ref = fa.class_maps(small_model, x)
    model = copy.deepcopy(small_model)
    gen = torch.Generator().manual_seed(0)
    fa.randomise_(model.fc, gen)  # the head only: the tokenizers' maps are class-agnostic
    head = fa.class_maps(model, x, ref.target)
    for a, b in zip(ref.attention, head.attention):
        assert torch.equal(a, b)
    fa.randomise_(model.vt_layers[0], gen)  # the first tokenizer: its maps must change
    tok = fa.class_maps(model, x, ref.target)
    corr = fa.spearman(ref.attention[0].flatten(0, 1), tok.attention[0].flatten(0, 1))
    assert float(corr.nanmean()) < 0.5
    same = fa.spearman(ref.attention[0].flatten(0, 1), ref.attention[0].flatten(0, 1))
    assert torch.allclose(same, torch.ones_like(same))


def test_bootstrap_ci():
    mean, lo, hi = fa.bootstrap_ci(np.r_[np.ones(50), np.zeros(50), np.nan])
    assert mean == 0.5 and 0.38 < lo < 0.5 < hi < 0.62


def test_mosaics_use_four_classes_once():
    labels = [0, 0, 1, 1, 2, 2, 3, 3, 4, 0]
    groups = mosaics(labels, [True] * 9 + [False], seed=0)
    assert len(groups) == 2
    used = [i for g in groups for i in g]
    assert len(set(used)) == 8 and 9 not in used
    assert all(len({labels[i] for i in g}) == 4 for g in groups)
    tiles = [np.full((4, 4, 3), v, np.uint8) for v in (1, 2, 3, 4)]
    m = mosaic_image(tiles)
    assert m.shape == (8, 8, 3) and m[0, 0, 0] == 1 and m[0, 7, 0] == 2 and m[7, 0, 0] == 3 and m[7, 7, 0] == 4


# --------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory, small_model):
    """A class-folder set the (random) model classifies 'correctly': each photo goes into the
    folder of the class the model predicts for it (the bias is centred so that 5 classes occur)."""
    root = tmp_path_factory.mktemp("mapeval")
    model = copy.deepcopy(small_model)
    rng = np.random.default_rng(0)
    imgs = [(np.ones((64, 64, 3)) * rng.integers(0, 255, 3) + rng.normal(0, rng.uniform(5, 80), (64, 64, 3)))
            .clip(0, 255).astype(np.uint8) for _ in range(40)]
    pre = vtviz.model_meta(model).preprocess
    with torch.no_grad():
        logits = model(to_tensor(imgs, pre))
        model.fc.bias -= logits.mean(0) - logits.mean()
        pred = model(to_tensor(imgs, pre)).argmax(-1).tolist()
    assert len(set(pred)) >= 4
    for i, (img, c) in enumerate(zip(imgs, pred)):
        (root / "data" / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "data" / f"class{c}" / f"p{i:02d}.png")
    ckpt = root / "model.safetensors"
    vtviz.save_model(model, ckpt, vtviz.model_meta(model))
    return root / "data", str(ckpt)


ARGS = ["--limit", "24", "--curves", "8", "--randomised", "4", "--paste", "4", "--min-p", "0",
        "--batch-size", "2", "--steps", "4", "--quiet"]


@pytest.mark.slow
def test_evaluate_maps_command(tmp_path, folder_and_model):
    data, ckpt = folder_and_model
    out = tmp_path / "out"
    assert cli(["evaluate-maps", ckpt, "--data", str(data), "--out", str(out), *ARGS]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["images"] == 8 and summary["mosaics"] >= 2
    assert set(summary["pointing"]) == {"token map, layer 0", "token map, layer 1", "Grad-CAM", "centre prior"}
    assert summary["pointing"]["centre prior"]["mean"] == 0.25 and summary["empty_class_maps"]["centre prior"] == 0
    for stat in summary["pointing"].values():
        assert 0 <= stat["lo"] <= stat["mean"] <= stat["hi"] <= 1
    assert summary["randomisation"]["head"]["tokenizer attention, layer 0"]["mean"] == 1.0
    assert summary["paste"]["layer 0"]["best_token_share"]["n"] == 4
    assert summary["paste"]["layer 0"]["best_token_share_without_object"]["n"] == 4
    table = (out / "results.md").read_text()
    assert "| Grad-CAM |" in table and "Model randomisation" in table and "Pasted object" in table
    lines = sum(len(p.read_text().splitlines()) for p in (out / ".parts").glob("*.jsonl"))
    # a rerun does nothing new: every unit is already there
    assert cli(["evaluate-maps", ckpt, "--data", str(data), "--out", str(out), *ARGS]) == 0
    assert sum(len(p.read_text().splitlines()) for p in (out / ".parts").glob("*.jsonl")) == lines
    assert json.loads((out / "results.json").read_text())["pointing"] == summary["pointing"]


@pytest.mark.slow
def test_evaluate_maps_resumes_after_kill(tmp_path, folder_and_model):
    data, ckpt = folder_and_model
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vtviz", "evaluate-maps", ckpt, "--data", str(data), "--out", str(out),
           *ARGS[:-3], "--batch-size", "1", "--quiet"]
    proc = subprocess.Popen(cmd, env=ENV)
    part = out / ".parts" / "rank000-of-001.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not part.exists() or len(part.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = len(part.read_text().splitlines())
    assert not (out / "results.json").exists() and done >= 3
    assert subprocess.run(cmd, env=ENV).returncode == 0
    units = [json.loads(line)["unit"] for line in part.read_text().splitlines() if line.strip()]
    assert len(units) == len(set(units)) > done  # the rest was done, nothing twice
    assert json.loads((out / "results.json").read_text())["images"] == 8


def test_api_refuses_other_settings_in_same_folder(tmp_path, folder_and_model):
    data, ckpt = folder_and_model
    model = vtviz.load_model(ckpt)
    cfg = MapEvalConfig(limit=8, curves=2, randomised=0, paste=0, steps=2, min_p=0.0)
    evaluate_maps(model, data, tmp_path / "o", cfg, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        evaluate_maps(model, data, tmp_path / "o", MapEvalConfig(limit=9, min_p=0.0), progress=False)



def test_export_class_maps(tmp_path, folder_and_model):
    from vtviz.jobs.export import load_manifest

    data, ckpt = folder_and_model
    photo = sorted(data.rglob("*.png"))[0]
    out = tmp_path / "out"
    assert cli(["export", "--model", ckpt, "--out", str(out), str(photo), "--class-maps", "--workers", "0",
                "--quiet"]) == 0
    (rec,), _ = load_manifest(out)
    why = rec["class_maps"]
    assert why["panels"] == ["tokens, layer 0", "tokens, layer 1 (exact)", "Grad-CAM"]
    assert why["title"].startswith(f"why '{rec['top5'][0]['class']}'")
    pic = np.asarray(Image.open(out / why["file"]))
    assert pic.shape[1] >= 3 * 64  # three panels side by side at the photo's size
