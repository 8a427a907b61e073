"""Shared fixtures: small models and images made in code (no dataset, no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

import vtviz
from vtviz.models.meta import ModelMeta
from vtviz.preprocess import Fit, Preprocess

torch.set_num_threads(1)

CLASSES = tuple(f"class{i}" for i in range(5))


def make_meta(model: torch.nn.Module, size: int = 64, fit: Fit = Fit.STRETCH) -> ModelMeta:
    """Metadata for a random test model."""
    return ModelMeta(config=model.config, classes=CLASSES[: model.config.num_classes],
                     preprocess=Preprocess(size=size, fit=fit), name="random",
                     training={"data": "none (random weights)"})


@pytest.fixture(scope="session")
def small_model() -> vtviz.VTResNet:
    """A random VT-R18 (5 classes, float32, eval mode) with metadata."""
    torch.manual_seed(0)
    model = vtviz.vt_resnet18(num_classes=5).eval()
    return vtviz.attach_meta(model, make_meta(model))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, small_model) -> str:
    """Path of a saved random VT-R18 checkpoint."""
    path = tmp_path_factory.mktemp("ckpt") / "random-vt-r18.safetensors"
    vtviz.save_model(small_model, path, vtviz.model_meta(small_model))
    return str(path)


@pytest.fixture
def rgb() -> np.ndarray:
    """A 48x80 RGB test image with a gradient and a red square."""
    y, x = np.mgrid[0:48, 0:80]
    img = np.stack([x * 3, y * 5, (x + y) * 2], -1).astype(np.uint8)
    img[10:20, 30:40] = (255, 0, 0)
    return img


@pytest.fixture(scope="session")
def app_models(tmp_path_factory):
    """The bundled models when present; otherwise random stand-ins under the same names."""
    from vtviz.models import registry

    names = {"vt-r18-imagenette-v7": ("filter", "recurrent"), "vt-r18-filter-imagenette-v7": ("filter", "filter"),
             "vt-lite0-imagenet": ("filter", "recurrent")}
    if all(n in vtviz.list_pretrained() for n in names):
        yield registry.pretrained_dir()
        return
    folder = tmp_path_factory.mktemp("pretrained")
    for name, kinds in names.items():
        torch.manual_seed(1)
        if name.startswith("vt-lite0"):
            from vtviz.models.lite import vt_lite0
            from vtviz.models.teacher import imagenet_categories, imagenet_class_ids, load_efficientnet_lite0
            from vtviz.train.distill import LITE_PREPROCESS

            lite = vt_lite0()
            lite.load_teacher(load_efficientnet_lite0())
            vtviz.save_model(lite, folder / name, ModelMeta(config=lite.config, classes=tuple(imagenet_categories()),
                                                            class_ids=tuple(imagenet_class_ids()),
                                                            preprocess=LITE_PREPROCESS, name=name))
            continue
        model = vtviz.vt_resnet18(num_classes=10, tokenizers=kinds)
        meta = ModelMeta(config=model.config, classes=tuple(f"class{i}" for i in range(10)),
                         preprocess=Preprocess(size=224), name=name)
        vtviz.save_model(model, folder / name, meta)
    old = os.environ.get("VTVIZ_PRETRAINED")
    os.environ["VTVIZ_PRETRAINED"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("VTVIZ_PRETRAINED")
    else:
        os.environ["VTVIZ_PRETRAINED"] = old
