"""Self-describing checkpoints: round trip, safe loading, clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch

import vtviz
from vtviz.models.checkpoint import CheckpointError, portable_data_path


def test_round_trip_identical_logits(small_model, checkpoint):
    loaded = vtviz.load_model(checkpoint, device="cpu")
    assert not loaded.training
    meta = vtviz.model_meta(loaded)
    assert meta.classes == vtviz.model_meta(small_model).classes
    assert meta.config == small_model.config
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small_model(x), atol=0, rtol=0)


def test_float16_storage_loads_into_float32(tmp_path, small_model):
    path = vtviz.save_model(small_model, tmp_path / "half", vtviz.model_meta(small_model),
                            dtype=torch.float16)
    assert path.suffix == ".safetensors"
    loaded = vtviz.load_model(path, device="cpu")
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small_model(x), atol=2e-2, rtol=2e-2)


def test_device_auto_is_cpu_here(checkpoint):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(vtviz.load_model(checkpoint).parameters()).device.type == expected


def test_state_dict_pt_with_meta(tmp_path, small_model):
    path = tmp_path / "model.pt"
    meta = vtviz.model_meta(small_model)
    torch.save({"state_dict": small_model.state_dict(), "meta": meta.to_dict()}, path)
    loaded = vtviz.load_model(path, device="cpu")
    assert vtviz.model_meta(loaded).classes == meta.classes
    bare = tmp_path / "bare.pth"
    torch.save(small_model.state_dict(), bare)
    with pytest.raises(CheckpointError, match="no vtviz metadata"):
        vtviz.load_model(bare)
    assert vtviz.load_model(bare, meta=meta, device="cpu") is not None


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_with_code_is_refused(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil(str(target))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        vtviz.load_model(path)
    assert not target.exists()
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Evil(str(target))))
    with pytest.raises(CheckpointError):
        vtviz.load_model(raw)
    assert not target.exists()


def test_shape_mismatch_names_the_tensor(tmp_path, small_model):
    meta = vtviz.model_meta(small_model)
    other = vtviz.vt_resnet18(num_classes=9)
    path = vtviz.save_model(other, tmp_path / "wrong", meta)  # meta says 5 classes
    with pytest.raises(CheckpointError, match=r"'fc.weight' has shape \[9, 1024\].*\[5, 1024\]"):
        vtviz.load_model(path)


def test_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        vtviz.load_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        vtviz.load_model(junk)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="no vtviz metadata"):
        vtviz.load_model(plain)
    bad_arch = tmp_path / "arch.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad_arch), metadata={
        "vtviz": '{"config": {"arch": "vit_h14"}, "classes": ["a"]}'})
    with pytest.raises(CheckpointError, match="unknown architecture 'vit_h14'"):
        vtviz.load_model(bad_arch)
    with pytest.raises(CheckpointError, match="bundled"):
        vtviz.load_model("no-such-bundled-model")


def test_missing_tensor_is_named(tmp_path, small_model):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in small_model.state_dict().items() if k != "fc.bias"}
    path = tmp_path / "partial.safetensors"
    import json

    save_file(state, str(path), metadata={"vtviz": json.dumps(vtviz.model_meta(small_model).to_dict())})
    with pytest.raises(CheckpointError, match="missing tensor.*fc.bias"):
        vtviz.load_model(path)


def test_a_photo_renamed_pt_is_named_for_what_it_is(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(buf.getvalue())
    with pytest.raises(vtviz.CheckpointError) as info:
        vtviz.load_model(junk)
    message = str(info.value)
    assert "junk.pt" in message and "a JPEG image" in message and "weights_only" not in message


def test_uploaded_checkpoint_errors_name_the_users_file(tmp_path):
    from vtviz.app.session import ModelStore

    with pytest.raises(vtviz.CheckpointError) as info:
        ModelStore(device="cpu").add_upload(b"\xff\xd8\xff\xe0 not really a photo", "my model.pt")
    assert "my model.pt" in str(info.value) and "vtviz-uploads" not in str(info.value)


@pytest.mark.parametrize("change", [{"size": 0}, {"size": 20000}, {"crop_pct": 0}, {"mean": [0.5, 0.5]},
                                    {"std": [0.2, 0.0, 0.2]}])
def test_bad_preprocessing_is_refused_at_load(tmp_path, small_model, change):
    import json

    from safetensors.torch import save_file

    meta = vtviz.model_meta(small_model).to_dict()
    meta["preprocess"] = {**meta["preprocess"], **change}
    state = {k: v.contiguous() for k, v in small_model.state_dict().items()}
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path), metadata={"format": "vtviz/1", "vtviz": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="preprocess"):
        vtviz.load_model(path)


@pytest.mark.parametrize("damage", ["nan", "int"])
def test_non_finite_or_integer_weights_are_refused(tmp_path, small_model, damage):
    import json

    from safetensors.torch import save_file

    state = {k: v.contiguous().clone() for k, v in small_model.state_dict().items()}
    if damage == "nan":
        state["fc.weight"][0, 0] = float("nan")
    else:
        state["fc.weight"] = state["fc.weight"].to(torch.int32)
    path = tmp_path / "damaged.safetensors"
    save_file(state, str(path), metadata={"vtviz": json.dumps(vtviz.model_meta(small_model).to_dict())})
    with pytest.raises(CheckpointError, match="NaN" if damage == "nan" else "int32"):
        vtviz.load_model(path)


@pytest.mark.parametrize("given, recorded", [
    ("../shared/datasets/imagenette/val", "../shared/datasets/imagenette/val"),  # relative: as given
    ("/home/someone/datasets/imagenette/val", "imagenette/val"),  # absolute: no machine path
    ("/val", "val"),
])
def test_recorded_data_paths_are_portable(given, recorded):
    assert portable_data_path(given) == recorded
