"""The out-of-distribution flag: scores, calibration, storage in checkpoints, surfaces."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import vtviz
from vtviz.models.ood import OODScorer, auroc, fit_ood


def _cluster(n: int, centre: torch.Tensor, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(centre + spread * torch.randn(n, centre.numel(), generator=g), dim=-1)


def test_knn_score_threshold_and_auroc():
    centre = F.normalize(torch.ones(32), dim=0)
    bank, held = _cluster(400, centre, 0.05, 0), _cluster(100, centre, 0.05, 1)
    scorer = fit_ood(bank, held, k=5, quantile=0.9)
    assert scorer.info["held_out_flagged"] == pytest.approx(0.1, abs=0.02)  # the quantile, by design
    assert scorer.score(bank[:3]).max() < scorer.threshold  # bank members are their own neighbours
    far = _cluster(50, F.normalize(-torch.ones(32), dim=0), 0.05, 2)
    assert scorer.flag(far).all() and scorer.flag(_cluster(200, centre, 0.05, 3)).float().mean() < 0.2
    assert auroc(scorer.score(held), scorer.score(far)) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.5


def test_flag_travels_in_the_checkpoint(small_model, tmp_path, rgb):
    import copy

    model = copy.deepcopy(small_model)
    feats = F.normalize(torch.randn(20, model.config.token_channels), dim=-1)
    model.ood = fit_ood(feats[:15], feats[15:], k=3)
    path = vtviz.save_model(model, tmp_path / "with-ood", vtviz.model_meta(model))
    loaded = vtviz.load_model(path, device="cpu")
    assert isinstance(loaded.ood, OODScorer) and loaded.ood.k == 3
    assert loaded.ood.threshold == pytest.approx(model.ood.threshold)
    torch.testing.assert_close(loaded.ood.bank, model.ood.bank, atol=2e-3, rtol=0)  # float16 on disk
    res = vtviz.explain_images(loaded, [rgb, rgb[::-1].copy()])
    assert res.unfamiliar() is not None and len(res.ood_scores) == 2
    assert res.select([1]).ood_scores == (res.ood_scores[1],)
    assert vtviz.explain_images(small_model, [rgb]).unfamiliar() is None  # no flag: no claim


def test_a_removed_flag_leaves_no_settings_in_the_header(small_model, tmp_path):
    """Saving a model whose flag was taken off (e.g. a weight average) writes no stale ``ood``."""
    import copy

    model = copy.deepcopy(small_model)
    model.ood = fit_ood(F.normalize(torch.randn(20, model.config.token_channels), dim=-1)[:15],
                        F.normalize(torch.randn(5, model.config.token_channels), dim=-1), k=3)
    stale = vtviz.model_meta(vtviz.load_model(vtviz.save_model(model, tmp_path / "a", vtviz.model_meta(model)),
                                              device="cpu"))
    assert stale.ood is not None
    model.ood = None
    loaded = vtviz.load_model(vtviz.save_model(model, tmp_path / "b", stale), device="cpu")
    assert loaded.ood is None and vtviz.model_meta(loaded).ood is None


def test_predict_json_has_the_flag(small_model, tmp_path, rgb, capsys):
    import copy

    from PIL import Image

    from vtviz.cli import main as cli

    model = copy.deepcopy(small_model)
    feats = F.normalize(torch.randn(20, model.config.token_channels), dim=-1)
    model.ood = OODScorer(feats, 3, -1.0, {})  # threshold below every score: everything flagged
    path = vtviz.save_model(model, tmp_path / "m", vtviz.model_meta(model))
    Image.fromarray(rgb).save(tmp_path / "x.png")
    assert cli(["predict", str(path), str(tmp_path / "x.png"), "--json", "--device", "cpu"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["unfamiliar"] is True and isinstance(row["ood_score"], float)
    assert cli(["predict", str(path), str(tmp_path / "x.png"), "--device", "cpu"]) == 0
    assert "unfamiliar photo" in capsys.readouterr().out
