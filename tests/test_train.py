"""Training on tiny generated image folders: learning, resume, evaluate, torchrun (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vtviz
from vtviz.cli import main as cli
from vtviz.maps.diagnostics import distinct_targets
from vtviz.models.vt import VTLayerOutput
from vtviz.train.config import TrainConfig, border_weight
from vtviz.train.kd import mixup_batch
from vtviz.train.loop import weights_fingerprint
from vtviz.train.regularisers import (
    hard_balance_penalty,
    mixing_diversity_penalty,
    projector_balance_penalty,
    register_penalty,
    self_attention_penalty,
)

COLOURS = [(230, 30, 30), (30, 30, 230)]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """train/ and val/ with two classes: a red or a blue square on noise, 48 px."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 6)):
        for c, colour in enumerate(COLOURS):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 80, (48, 48, 3), dtype=np.uint8)
                y, x = rng.integers(0, 24, 2)
                img[y:y + 20, x:x + 20] = colour
                Image.fromarray(img).save(folder / f"{i}.png")
    (root / "classes.json").write_text(json.dumps({"c0": "red", "c1": "blue"}))
    return root


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(root), "--out", str(out), "--name", "tiny",
            "--schedule", "48:3,64:1", "--batch-size", "8", "--lr", "1e-3", "--no-amp",
            "--cache-dir", str(out / "cache"), "--quiet", "--device", "cpu", "--threads", "1", *extra]


@pytest.mark.slow
def test_smoke_train_resume_evaluate(tiny_folder, tmp_path, capsys):
    full = tmp_path / "full"
    assert cli(_args(tiny_folder, full)) == 0
    model = vtviz.load_model(full / "tiny.safetensors", device="cpu")
    meta = vtviz.model_meta(model)
    assert meta.classes == ("red", "blue") and meta.class_ids == ("c0", "c1")
    history = meta.training["history"]
    assert [h["size"] for h in history] == [48, 48, 48, 64]
    assert history[-1]["loss"] < history[0]["loss"]  # it learns
    assert meta.training["val"]["images"] == 12 and "token_stats" in meta.training["val"]

    # a run cut off after 2 epochs and resumed ends with the very same weights
    cut = tmp_path / "cut"
    assert cli(_args(tiny_folder, cut, "--stop-after", "2")) == 0
    assert not (cut / "tiny.safetensors").exists()
    state = torch.load(cut / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert cli(_args(tiny_folder, cut)) == 0
    resumed = vtviz.load_model(cut / "tiny.safetensors", device="cpu")
    assert weights_fingerprint(resumed) == weights_fingerprint(model)

    capsys.readouterr()
    assert cli(["evaluate", str(full / "tiny.safetensors"), "--data", str(tiny_folder / "val"),
                "--quiet", "--confusion"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 12
    assert result["top1"] == pytest.approx(meta.training["val"]["top1"])
    assert set(result["per_class"]) == {"red", "blue"}
    assert np.array(result["confusion"]).sum() == 12
    assert [s["kind"] for s in result["token_stats"]] == ["filter", "recurrent"]
    assert [d["kind"] for d in result["diagnostics"]] == ["filter", "recurrent"]
    assert 1 <= result["diagnostics"][0]["mixing_targets"] <= 16

    # ablations: each switch is reported, with the maps' correlation to the intact ones
    assert cli(["evaluate", str(full / "tiny.safetensors"), "--data", str(tiny_folder / "val"), "--ablate"]) == 0
    out = capsys.readouterr()
    ablations = json.loads(out.out)["ablations"]
    assert set(ablations) == {"mixing identity", "mixing uniform", "no transformer", "no projector",
                              "recurrent W_T->R zeroed"}
    # the filter layer comes before the recurrent term: zeroing that term leaves it exactly as it was
    assert ablations["recurrent W_T->R zeroed"]["attention_correlation"][0] == pytest.approx(1.0)
    assert ablations["mixing identity"]["attention_correlation"][0] == pytest.approx(1.0)
    assert "layer 0 (filter):" in out.err and "ablation 'no projector'" in out.err


@pytest.mark.slow
def test_train_without_val_then_record_evaluation(tiny_folder, tmp_path, capsys):
    """A GPU box may hold only train/: the checkpoint gets its val accuracy later, in place."""
    only_train = tmp_path / "data"
    only_train.mkdir()
    (only_train / "train").symlink_to(tiny_folder / "train")
    out = tmp_path / "run"
    assert cli(_args(only_train, out, "--save-every", "3")) == 0
    path = out / "tiny.safetensors"
    before = vtviz.load_model(path, device="cpu")
    assert vtviz.model_meta(before).training["val"] is None
    assert "warning" in capsys.readouterr().err

    assert cli(["evaluate", str(path), "--data", str(tiny_folder / "val"), "--size", "32",
                "--record", "--quiet"]) == 1  # --record refuses another input size
    assert cli(["evaluate", str(path), "--data", str(tiny_folder / "val"), "--record",
                "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    after = vtviz.load_model(path, device="cpu")
    val = vtviz.model_meta(after).training["val"]
    assert val["images"] == 12 and val["top1"] == pytest.approx(printed["top1"])
    assert val["data"] == f"{tiny_folder.name}/val"  # no machine path in a checkpoint's header
    assert weights_fingerprint(after) == weights_fingerprint(before)
    assert vtviz.model_meta(after).training["history"] == vtviz.model_meta(before).training["history"]


@pytest.mark.parametrize("extra, kinds", [
    (("--arch", "resnet18"), []),  # a plain ResNet from scratch: its builder's 4 stages
    (("--no-static-filter", "--registers", "2", "--projector-null"), ["filter", "recurrent"]),
])
def test_train_from_scratch_builds_the_architecture_asked_for(tiny_folder, tmp_path, extra, kinds):
    out = tmp_path / "run"
    assert cli(_args(tiny_folder, out, "--schedule", "48:1", "--no-val", *extra)) == 0
    model = vtviz.load_model(out / "tiny.safetensors", device="cpu")
    config = vtviz.model_meta(model).config
    assert model.tokenizer_kinds == kinds
    # no --description: one is made from the architecture and the data
    expected = "VT-ResNet-18 (filter, recurrent tokenizers)" if kinds else "ResNet-18"
    assert vtviz.model_meta(model).description == f"{expected}, {tiny_folder.name}"
    if kinds:  # the paper's recurrent tokenizer: no per-token filter W_0 anywhere
        assert config.static_filter is False and config.registers == 2 and config.projector_null
        assert model.vt_layers[1].tokenizer.filters is None
    else:
        assert list(config.blocks) == [2, 2, 2, 2]


def test_border_penalty_only_from_its_minimum_size():
    cfg = TrainConfig(data="d", out="o", border=10.0, border_min_size=224)
    assert [border_weight(cfg, s) for s in (128, 192, 224, 288)] == [0.0, 0.0, 10.0, 10.0]
    assert border_weight(TrainConfig(data="d", out="o", border=10.0), 64) == 10.0  # default: every size


def test_mixup_with_cached_teacher_logits_is_refused(tiny_folder, tmp_path, capsys):
    """Cached whole-photo teacher logits cannot label a mixed crop: refused before any work."""
    assert cli(_args(tiny_folder, tmp_path / "run", "--mixup", "0.2", "--teacher", "efficientnet-lite0")) == 1
    assert "--kd-consistent" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_mixup_batch_is_a_convex_pair_with_partner_labels():
    gen = torch.Generator().manual_seed(3)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    y = torch.tensor([0, 1, 2, 3])
    mixed, y2, lam = mixup_batch(x, y, 0.4, gen)
    assert 0.0 <= lam <= 1.0 and sorted(y2.tolist()) == [0, 1, 2, 3]
    # each image is lam * itself + (1 - lam) * its partner, the one whose label is y2
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[y2])
    lams = [mixup_batch(x, y, 0.2, gen)[2] for _ in range(200)]
    assert np.mean([min(v, 1 - v) < 0.1 for v in lams]) > 0.5  # Beta(0.2, 0.2) mostly near 0 or 1
    with pytest.raises(ValueError, match="positive"):
        mixup_batch(x, y, 0.0, gen)


@pytest.mark.slow
def test_train_with_mixup_learns(tiny_folder, tmp_path):
    """Mixup changes what the model is trained on, still learns the tiny task, and is recorded."""
    def run(name: str, *extra: str) -> dict:
        assert cli(_args(tiny_folder, tmp_path / name, "--schedule", "48:2", *extra)) == 0
        return vtviz.model_meta(vtviz.load_model(tmp_path / name / "tiny.safetensors", device="cpu")).training

    mixed, plain = run("mix", "--mixup", "0.4"), run("plain")
    assert mixed["recipe"]["mixup"] == 0.4 and plain["recipe"]["mixup"] == 0.0
    assert mixed["history"][0]["loss"] != pytest.approx(plain["history"][0]["loss"], rel=1e-3)
    assert mixed["val"]["top1"] >= 0.9  # two classes: chance is 0.5


@pytest.mark.slow
def test_fine_tune_from_checkpoint(tiny_folder, tmp_path):
    base = tmp_path / "base"
    assert cli(_args(tiny_folder, base, "--tokenizers", "filter,filter")) == 0
    parent = vtviz.load_model(base / "tiny.safetensors", device="cpu")
    tuned_dir = tmp_path / "tuned"
    # --arch/--tokenizers are ignored: the architecture comes from the checkpoint
    assert cli(_args(tiny_folder, tuned_dir, "--init", str(base / "tiny.safetensors"),
                     "--schedule", "64:1", "--lr", "1e-5", "--arch", "resnet18",
                     "--eval-size", "80", "--cache-size", "64")) == 0
    tuned = vtviz.load_model(tuned_dir / "tiny.safetensors", device="cpu")
    meta = vtviz.model_meta(tuned)
    # crops come from a 64 px decode of train/, the model is evaluated (and stored) at 80 px
    assert sorted(p.name.rsplit("-", 1)[0] for p in (tuned_dir / "cache").iterdir()) == ["train-64", "val-80"]
    assert meta.preprocess.size == 80 and meta.training["val"]["input_size"] == 80
    assert tuned.tokenizer_kinds == ["filter", "filter"]
    assert meta.description == f"VT-ResNet-18 (filter, filter tokenizers), {tiny_folder.name}, fine-tuned from tiny"
    assert meta.training["init"]["training"]["epochs"] == 4
    assert meta.training["epochs"] == 1 and "arch" not in meta.training["recipe"]
    # a tiny learning rate moves the weights only a little from the parent's
    a, b = parent.state_dict(), tuned.state_dict()
    key = next(k for k in a if k.endswith("conv1.weight"))
    assert 0 < (a[key] - b[key]).abs().max() < 1e-2 * a[key].abs().max()
    # a checkpoint of other classes is refused with both class lists in the message
    other = tmp_path / "other"
    (other / "train" / "x").mkdir(parents=True)
    (other / "train" / "y").mkdir(parents=True)
    for cls in ("x", "y"):
        for i in range(8):
            Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(other / "train" / cls / f"{i}.png")
    assert cli(_args(other, tmp_path / "o", "--init", str(base / "tiny.safetensors"))) == 1


@pytest.mark.slow
def test_torchrun_two_ranks_identical_weights(tiny_folder, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29731", "-m", "vtviz", *_args(tiny_folder, out)[:-4],
           "--device", "cpu", "--threads", "1", "--schedule", "48:2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = vtviz.read_checkpoint(out / "tiny.safetensors")[1]
    assert meta.training["world_size"] == 2
    assert meta.training["ranks_identical"] is True


def test_schedule_and_config_from_the_command_line():
    from vtviz.train.config import TrainConfig, add_arguments, parse_schedule

    assert parse_schedule("128:2,160:1") == [128, 128, 160]
    with pytest.raises(ValueError):
        parse_schedule("")
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = TrainConfig.from_namespace(p.parse_args(["--data", "d", "--out", "o", "--dev-sizes", "224,256",
                                                   "--registers", "4", "--init", "x.safetensors"]))
    assert cfg.dev_sizes == (224, 256) and cfg.registers == 4
    recipe = cfg.recipe()
    assert "data" not in recipe and "init" not in recipe and "arch" not in recipe  # no paths
    assert recipe["registers"] == 4
    assert cfg.split_seed == cfg.seed == 0
    other = TrainConfig.from_namespace(p.parse_args(["--data", "d", "--out", "o", "--seed", "1"]))
    assert other.split_seed == 1  # by default the dev split follows the training seed
    fixed = TrainConfig.from_namespace(p.parse_args(["--data", "d", "--out", "o", "--seed", "1",
                                                     "--dev-seed", "0"]))
    assert fixed.seed == 1 and fixed.split_seed == 0 and fixed.recipe()["dev_seed"] == 0


def test_data_cache_follows_a_changed_file(tmp_path):
    """Same count, same first and last names: a changed middle file must not be served stale."""
    from vtviz.data import read_image_folder
    from vtviz.preprocess import Preprocess

    root = tmp_path / "d" / "c0"
    root.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(np.full((16, 16, 3), 10 * i, np.uint8)).save(root / f"{i}.png")
    pre = Preprocess(size=16)
    first = read_image_folder(tmp_path / "d", pre, cache_dir=tmp_path / "cache", workers=1, progress=False)
    Image.fromarray(np.full((16, 16, 3), 250, np.uint8)).save(root / "4.png")
    os.utime(root / "4.png", ns=(1, 1))
    again = read_image_folder(tmp_path / "d", pre, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert first.images[4].mean() == 40 and again.images[4].mean() == 250


def test_dev_split_is_per_class_and_disjoint():
    from vtviz.train.dev import dev_split

    labels = np.repeat([0, 1, 2], [10, 20, 30])
    train_idx, dev_idx = dev_split(labels, 0.1, seed=0)
    assert np.bincount(labels[dev_idx]).tolist() == [1, 2, 3]
    assert not set(train_idx) & set(dev_idx) and len(train_idx) + len(dev_idx) == 60
    np.testing.assert_array_equal(dev_split(labels, 0.1, seed=0)[1], dev_idx)  # reproducible


def test_precise_bn_matches_batch_statistics(small_model):
    """On one batch, BatchNorm statistics recomputed by precise_bn make eval equal train mode."""
    import copy

    from vtviz.data import ImageFolderData
    from vtviz.preprocess import Preprocess
    from vtviz.train.dev import precise_bn

    model = copy.deepcopy(small_model)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    data = ImageFolderData(images, np.zeros(8, np.int64), ("a",), ("a",), tuple(f"{i}" for i in range(8)))
    pre = Preprocess(size=64)
    from vtviz.data import normalize_batch, resize_batch

    x = normalize_batch(resize_batch(torch.from_numpy(images), 64), pre.mean, pre.std)
    with torch.no_grad():
        before = model.eval()(x)
        train_mode = model.train()(x)
    model.load_state_dict(small_model.state_dict())  # undo the train-mode pass's running averages
    precise_bn(model, data, np.arange(8), pre, images=8, batch_size=8)
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        after = model.eval()(x)
    assert not torch.allclose(before, train_mode, atol=1e-3)
    torch.testing.assert_close(after, train_mode, atol=0.1, rtol=0.05)


def _layer(mixing: torch.Tensor, assignment: torch.Tensor | None = None,
           to_registers: torch.Tensor | None = None) -> VTLayerOutput:
    b, n = mixing.shape[:2]
    regs = torch.zeros(b, n) if to_registers is None else to_registers
    return VTLayerOutput(torch.full((b, n, 9), 1 / 9), mixing, regs, assignment,
                               torch.zeros(b, n, 4), None)


def test_hard_balance_is_one_for_a_sink_and_zero_for_spread_argmax():
    n = 16
    sink = torch.zeros(2, n, n)
    sink[..., 5] = 1
    assert hard_balance_penalty([_layer(sink)]) == pytest.approx(1.0)
    assert hard_balance_penalty([_layer(torch.eye(n).expand(2, n, n))]) == pytest.approx(0.0)
    # the projector's pixels: one token owns every pixel; the mixing term is 0, the mean is 1/2
    assign = torch.zeros(2, 49, n)
    assign[..., 3] = 1
    assert hard_balance_penalty([_layer(torch.eye(n).expand(2, n, n), assign)]) == pytest.approx(0.5)


def _descend(penalty, logits: torch.Tensor, lr: float, steps: int = 100) -> int:
    """Minimise ``penalty`` of the row softmax of ``logits`` ``[1, L, L]`` by SGD; returns the
    distinct argmax targets of the rows afterwards."""
    logits = logits.clone().requires_grad_()
    opt = torch.optim.SGD([logits], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        penalty([_layer(logits.softmax(-1))]).backward()
        opt.step()
    return int(distinct_targets(logits.softmax(-1))[0])


def test_hard_balance_gradient_spreads_the_argmax_targets():
    n = 16
    torch.manual_seed(0)
    logits = 0.01 * torch.randn(1, n, n)
    logits[..., 5] += 0.5  # every token reads token 5
    assert int(distinct_targets(logits.softmax(-1))[0]) == 1
    assert _descend(hard_balance_penalty, logits, lr=5.0) >= 6


def test_projector_balance_counts_the_projector_alone():
    n = 16
    eye = torch.eye(n).expand(2, n, n)
    assert projector_balance_penalty([_layer(eye)]) == 0.0  # no projector
    one_owner = torch.zeros(2, 49, n)
    one_owner[..., 3] = 0.9  # (0.1 to the null slot: renormalised away)
    assert projector_balance_penalty([_layer(eye, one_owner)]) == pytest.approx(1.0)
    spread = F.one_hot(torch.arange(48) % n, n).float().expand(2, 48, n)
    assert projector_balance_penalty([_layer(eye, spread)]) == pytest.approx(0.0, abs=1e-6)


def test_self_attention_penalty_is_the_diagonal_excess_and_moves_attention_off_it():
    n = 16
    eye = torch.eye(n).expand(2, n, n)
    assert self_attention_penalty([_layer(eye)]) == pytest.approx(0.5)
    assert self_attention_penalty([_layer(0.8 * eye + 0.2 / n)]) == pytest.approx(0.8 + 0.2 / n - 0.5)
    assert self_attention_penalty([_layer(torch.roll(eye, 1, dims=2))]) == 0.0  # reads another token
    logits = (4 * torch.eye(n)[None]).requires_grad_()
    diagonal = logits.softmax(-1).diagonal(dim1=1, dim2=2).mean()
    opt = torch.optim.SGD([logits], lr=50.0)
    for _ in range(50):
        opt.zero_grad()
        self_attention_penalty([_layer(logits.softmax(-1))]).backward()
        opt.step()
    after = logits.softmax(-1).diagonal(dim1=1, dim2=2).mean()
    assert diagonal > 0.75 and after <= 0.51


def test_register_penalty_is_the_log_excess_over_half():
    n = 16
    eye = torch.eye(n).expand(2, n, n)
    expected = -np.log(0.3) + np.log(0.5)
    assert register_penalty([_layer(0.3 * eye, to_registers=torch.full((2, n), 0.7))]) == pytest.approx(expected)
    assert register_penalty([_layer(0.6 * eye, to_registers=torch.full((2, n), 0.4))]) == 0.0
    # nearly all attention on the registers: the image logits still get a gradient of ~1/L each
    logits = torch.zeros(1, n, n + 4)
    logits[..., n:] = 12.0
    logits.requires_grad_()
    p = logits.softmax(-1)
    register_penalty([_layer(p[..., :n], to_registers=p[..., n:].sum(-1))]).backward()
    assert logits.grad[0, 0, :n].neg().min() > 0.5 / n / n  # (averaged over the n rows)


def test_mixing_diversity_is_zero_when_tokens_read_different_others_and_high_for_a_sink():
    n = 16
    shift = torch.roll(torch.eye(n), 1, dims=1).expand(2, n, n)  # token i reads token i+1
    assert mixing_diversity_penalty([_layer(shift)]) == pytest.approx(0.0)
    sink = torch.zeros(2, n, n)
    sink[..., 5] = 1
    sink[:, 5, 5], sink[:, 5, 6] = 0, 1  # (token 5 itself reads token 6: off the diagonal)
    assert mixing_diversity_penalty([_layer(sink)]) == pytest.approx(15 * 14 / (n * (n - 1)))  # 15 equal rows
    assert mixing_diversity_penalty([_layer(torch.full((2, n, n), 1 / n))]) == pytest.approx((n - 2) / (n - 1))
    torch.manual_seed(0)
    logits = 0.01 * torch.randn(1, n, n)  # nearly uniform rows
    assert _descend(mixing_diversity_penalty, logits, lr=20.0) >= 10


def test_consistent_teacher_labels_the_crop_the_student_sees():
    """--kd-consistent: the teacher runs on the student's own (augmented, normalised) batch,
    converted to its normalisation: the same logits as the teacher on those pixels."""
    from vtviz.data import normalize_batch
    from vtviz.models.teacher import MEAN, STD, imagenet_indices, load_efficientnet_lite0
    from vtviz.preprocess import Preprocess
    from vtviz.runtime import autocast_for
    from vtviz.train.kd import CropTeacher

    classes = ["tench", "English springer", "church"]
    pre = Preprocess(size=64)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    teacher = CropTeacher(classes, pre, torch.device("cpu"))
    got = teacher(normalize_batch(pixels, pre.mean, pre.std))
    reference = load_efficientnet_lite0().eval()
    with torch.inference_mode(), autocast_for(torch.device("cpu")):
        want = reference(normalize_batch(pixels, MEAN, STD))[:, imagenet_indices(classes)].float()
    assert got.shape == (2, 3) and got.dtype == torch.float32 and not got.is_inference()
    torch.testing.assert_close(got, want, atol=0.15, rtol=0.02)  # bf16 on CPUs that have it
    other = teacher(normalize_batch(pixels.flip(-1).roll(20, -2), pre.mean, pre.std))
    assert (other - got).abs().max() > 0.5  # another crop, other logits


@pytest.mark.parametrize("recipe", sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.json")),
                         ids=lambda p: p.stem)
def test_every_recipe_run_is_a_valid_config(recipe):
    """Each shipped model's recipe file: every run builds the config of its command."""
    import json

    from vtviz.train.config import read_recipe
    from vtviz.train.distill import DistillConfig

    doc = json.loads(recipe.read_text())
    assert doc["command"] in ("train", "distill") and doc["runs"]
    for run in doc["runs"]:
        values = read_recipe(recipe, run)
        cfg = TrainConfig(**values) if doc["command"] == "train" else DistillConfig.from_recipe(recipe, run)
        assert cfg.data.endswith("imagenette") and cfg.name
    with pytest.raises(ValueError, match="choose a run"):
        read_recipe(recipe, "no-such-run")


def test_train_recipe_runs_with_command_line_overrides(tmp_path):
    """``--recipe/--run`` give the fields; options given on the command line win; the rest
    keep the config's defaults (argparse never fills in a default of its own)."""
    import argparse
    import json

    from vtviz.train.config import add_arguments

    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"command": "train", "base": {"data": "d", "out": "o", "lr": 0.1, "border": 3.0},
                                  "runs": {"a": {"name": "A", "seed": 4}}}))
    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = TrainConfig.from_namespace(p.parse_args(["--recipe", str(recipe), "--run", "a", "--lr", "0.5"]))
    assert (cfg.name, cfg.seed, cfg.lr, cfg.border, cfg.batch_size) == ("A", 4, 0.5, 3.0, 64)
    with pytest.raises(ValueError, match="--data is required"):
        TrainConfig.from_namespace(p.parse_args(["--out", "o"]))


def test_regularisers_are_summed_by_weight_and_named():
    """``regularise``: weight x penalty over the nonzero weights, every computed value reported."""
    from vtviz.train.regularisers import REGULARISERS, coverage_penalty, regularise

    torch.manual_seed(0)
    b, n, h, w = 2, 4, 6, 6
    attention = torch.softmax(torch.randn(b, n, h * w) * 3, -1)
    mixing = torch.softmax(torch.randn(b, n, n), -1)
    layer = VTLayerOutput(attention, mixing, torch.zeros(b, n), None, torch.zeros(b, n, 8), None)
    total, values = regularise({"coverage": 2.0, "border": 0.0}, [layer], (h, w), logged=("diversity",))
    assert set(values) == {"coverage", "diversity"}
    assert torch.allclose(total, 2.0 * REGULARISERS["coverage"]([layer], (h, w)))
    with pytest.raises(KeyError, match="unknown regularisers"):
        regularise({"no_such": 1.0}, [layer], (h, w))
    # coverage: 0 when the maps tile the photo evenly, large when all sit on one corner
    tiles = torch.zeros(1, 4, 36)
    for k in range(4):
        tiles[0, k, k * 9:(k + 1) * 9] = 1 / 9
    corner = torch.zeros(1, 4, 36)
    corner[..., 0] = 1.0
    assert float(coverage_penalty([tiles])) == 0.0 and float(coverage_penalty([corner])) > 30
