"""The app in a real browser: Debian's Chromium driven by Playwright against `streamlit run`."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
CELL, TOP, LEFT = 200, 20 + 18 + 2, 70 + 2  # the token grid's layout (views.token_grid)


def _need_browser() -> None:
    if not Path(CHROMIUM).exists() or shutil.which("streamlit") is None:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} or streamlit missing: .ci/run installs them")
        pytest.skip("Chromium not installed (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(app_models, tmp_path):
    _need_browser()
    port = _free_port()
    env = {**os.environ, "VTVIZ_PRETRAINED": str(app_models), "OMP_WAIT_POLICY": "PASSIVE"}
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "streamlit_app.py"),
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start: " + (tmp_path / "streamlit.log").read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _photos(tmp_path: Path) -> list[Path]:
    import skimage.data as sk

    paths = []
    for name in ("chelsea", "coffee"):
        p = tmp_path / f"{name} photo.jpg"
        Image.fromarray(getattr(sk, name)()).save(p, quality=92)
        paths.append(p)
    return paths


def _grid_image(page) -> tuple[str, np.ndarray]:
    src = page.locator('[data-testid="stImage"] img').first.get_attribute("src")
    data = page.request.get(src if src.startswith("http") else page.url.rstrip("/") + src).body()
    return src, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_upload_two_photos_and_download_zip(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
            page.goto(server)
            page.get_by_text("rows: tokens").first.wait_for(timeout=90_000)
            before, _ = _grid_image(page)
            ARTIFACTS.mkdir(exist_ok=True)
            time.sleep(1)
            page.screenshot(path=str(ARTIFACTS / "app-start.png"), full_page=False)  # the samples
            page.locator('[data-testid="stMain"] input[type="file"]').first.set_input_files(
                [str(p) for p in _photos(tmp_path)])
            page.get_by_text("chelsea photo.jpg").first.wait_for(timeout=60_000)
            deadline = time.time() + 90
            while True:
                src, grid = _grid_image(page)
                if src != before and grid.shape[1] < LEFT + 3 * (CELL + 2):  # two columns now
                    break
                assert time.time() < deadline, "the grid never showed the two uploads"
                time.sleep(0.5)
            ch = round(CELL * 300 / 451)  # cells follow the photos' aspect (both about 2:3)
            token0 = grid[TOP:TOP + ch, LEFT:LEFT + CELL].astype(float)
            token1 = grid[TOP + ch + 2:TOP + 2 * ch + 2, LEFT:LEFT + CELL].astype(float)
            assert np.abs(token0 - token1).mean() > 2.0, "two tokens' overlays look the same"
            assert token0.std() > 10  # a photo, not a blank cell
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=False)
            with page.expect_download(timeout=60_000) as info:
                page.get_by_text("Overlays (ZIP)").click()
            with zipfile.ZipFile(info.value.path()) as zf:
                names = zf.namelist()
                assert len(names) == 2 * 16
                assert all(n.count("/") == 2 and ".." not in n and " " not in n for n in names)
                assert names[0] == "00-chelsea_photo/layer0-filter/token00.png"
                first = np.asarray(Image.open(io.BytesIO(zf.read(names[0]))))
                second = np.asarray(Image.open(io.BytesIO(zf.read(names[1]))))
                assert first.shape == (300, 451, 3)  # the photo's own size, as vtviz export writes it
                assert first.shape == second.shape and np.abs(first.astype(int) - second).mean() > 1
            page.get_by_text("All tokens", exact=True).first.click()
            page.get_by_text("Isolate a token").first.wait_for(timeout=60_000)
            deadline = time.time() + 60
            while page.locator('[data-testid="stImage"] img').count() < 2:
                assert time.time() < deadline, "no constellation per image"
                time.sleep(0.5)
            time.sleep(1)
            page.screenshot(path=str(ARTIFACTS / "app-all-tokens.png"), full_page=False)
            page.get_by_text("Why this class", exact=True).first.click()
            page.get_by_text("Class token map: each token").first.wait_for(timeout=90_000)
            src, why = _grid_image(page)
            assert why.shape[1] > 3 * 300 and why.std() > 10  # three panels of the photo
            time.sleep(1)
            page.screenshot(path=str(ARTIFACTS / "app-why.png"), full_page=False)
            page.get_by_text("Token gallery", exact=True).first.click()
            page.get_by_text("its top").first.wait_for(timeout=90_000)
            time.sleep(1)
            page.screenshot(path=str(ARTIFACTS / "app-gallery.png"), full_page=False)
        finally:
            browser.close()
