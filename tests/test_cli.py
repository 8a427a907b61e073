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
    assert len(lines) == 1 and lines[0]["image"].endswith("good.png")
    top = lines[0]["top"]
    assert len(top) == 5 and {t["class"] for t in top} == {f"class{i}" for i in range(5)}
    assert abs(sum(t["p"] for t in top) - 1) < 1e-4
    assert "bad.png: not an image" in captured.err
