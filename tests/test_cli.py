"""The vtviz command line: info and predict."""

from __future__ import annotations

import json

from PIL import Image

from vtviz.cli import main


def test_info_prints_json(checkpoint, capsys):
    assert main(["info", checkpoint]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tokenizers"] == ["filter", "recurrent"]
    assert info["architecture"] == "vt_resnet18"
    assert info["num_tokens"] == 16 and info["num_classes"] == 5
    assert info["parameters"] > 7_000_000
    assert info["input_size"] == 64
    assert info["training"] == {"data": "none (random weights)"}
    assert main(["info", checkpoint, "--full"]) == 0
    assert json.loads(capsys.readouterr().out)["training"] == {"data": "none (random weights)"}


def test_info_is_concise_by_default(tmp_path, small_model, capsys):
    """A long training summary (history, the parent's summary) only shows with --full."""
    import dataclasses

    import vtviz

    meta = dataclasses.replace(vtviz.model_meta(small_model), training={
        "epochs": 3, "history": [{"epoch": i, "loss": 1.0} for i in range(300)],
        "init": {"checkpoint": "parent.safetensors", "training": {"history": list(range(500))}},
        "val": {"images": 10, "top1": 0.5, "top5": 0.9, "input_size": 64, "per_class": {"a": 0.5}}})
    path = vtviz.save_model(small_model, tmp_path / "long", meta)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    info = json.loads(out)
    assert len(out.splitlines()) < 120 and "history" not in out
    assert info["training"]["fine-tuned from"] == "parent.safetensors" and info["training"]["val"]["top1"] == 0.5
    assert main(["info", str(path), "--full"]) == 0
    assert len(json.loads(capsys.readouterr().out)["training"]["history"]) == 300


def test_info_bad_checkpoint_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    assert main(["info", str(bad)]) == 1
    assert "not a safetensors checkpoint" in capsys.readouterr().err


def test_predict_top5_and_bad_input(checkpoint, rgb, tmp_path, capsys):
    Image.fromarray(rgb).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code = main(["predict", checkpoint, str(tmp_path / "good.png"), str(tmp_path / "bad.png"),
                 "--json", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert len(lines) == 2 and lines[0]["image"].endswith("good.png")
    assert lines[1]["image"].endswith("bad.png") and lines[1]["error"].startswith("not an image")
    top = lines[0]["top"]
    assert len(top) == 5 and {t["class"] for t in top} == {f"class{i}" for i in range(5)}
    assert abs(sum(t["p"] for t in top) - 1) < 1e-4
    assert "bad.png: not an image" in captured.err
