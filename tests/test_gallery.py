"""`vtviz gallery`: files, index, a kill and resume, sharding's merge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtviz.cli import main as cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def _photos(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 60, (64, 80, 3), dtype=np.uint8)
        y, x = rng.integers(0, 40, 2)
        img[y:y + 20, x:x + 20] = (250, 220, 40)
        Image.fromarray(img).save(folder / f"p{i:03d}.png")


def test_gallery_writes_index_page_and_crops(tmp_path, checkpoint, capsys):
    src = tmp_path / "in"
    _photos(src, 6)
    (src / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "g"
    code = cli(["gallery", "--model", checkpoint, "--out", str(out), str(src), "--k", "3", "--crop", "48",
                "--device", "cpu", "--quiet"])
    assert code == 2  # the broken file is reported, the rest is done
    index = json.loads((out / "index.json").read_text())
    assert index["images"] == 7 and [f["source"] for f in index["failed"]] == [str(src / "broken.png")]
    assert [la["kind"] for la in index["layers"]] == ["filter", "recurrent"]
    tok = index["layers"][1]["tokens"][5]
    assert len(tok["items"]) == 3
    scores = [it["score"] for it in tok["items"]]
    assert scores == sorted(scores, reverse=True)
    for it in tok["items"]:
        assert Image.open(out / it["file"]).size == (48, 48)
    page = (out / "index.html").read_text()
    assert page.count("<img") == 2 * 16 * 3
    assert not (out / ".parts").exists()
    from vtviz.jobs.gallery import load_gallery

    gallery = load_gallery(out, 1)
    assert len(gallery.items) == 16 and gallery.items[5][0].score == scores[0]


def _cmd(checkpoint: str, src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "vtviz", "gallery", "--model", checkpoint, "--out", str(out), str(src),
            "--k", "2", "--crop", "32", "--batch-size", "2", "--save-every", "2", "--device", "cpu", "--quiet"]


@pytest.mark.slow
def test_killed_gallery_resumes_to_the_same_index(tmp_path, checkpoint):
    src = tmp_path / "in"
    _photos(src, 30)
    reference = tmp_path / "reference"
    subprocess.run(_cmd(checkpoint, src, reference), env=ENV, check=True, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(checkpoint, src, killed), env=ENV)
    part = killed / ".parts" / "rank000-of-001.jsonl"

    def photos_done() -> int:  # photos in the units finished so far (a line cut by the kill is not one)
        lines = part.read_text().splitlines() if part.exists() else []
        return sum(json.loads(line)["records"]["photos"] for line in lines if line.endswith("}"))

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if photos_done() >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "index.json").exists()  # interrupted
    done_before = photos_done()
    assert 6 <= done_before < 30
    subprocess.run(_cmd(checkpoint, src, killed), env=ENV, check=True, timeout=300)
    a = json.loads((reference / "index.json").read_text())
    b = json.loads((killed / "index.json").read_text())
    assert a["layers"] == b["layers"]
