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

pytestmark = pytest.mark.slow  # real models, a real browser or a notebook kernel

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


def _view(page, name: str) -> None:
    """Choose a view in the View radio group (the orientation paragraph names views too)."""
    page.locator('[data-testid="stRadio"]').get_by_text(name, exact=True).first.click()


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
            page.get_by_text("Tokens of").first.wait_for(timeout=90_000)  # the overview
            ARTIFACTS.mkdir(exist_ok=True)
            time.sleep(1)
            page.screenshot(path=str(ARTIFACTS / "app-start.png"), full_page=False)  # the samples
            _view(page, "Token grid")
            page.get_by_text("rows: tokens").first.wait_for(timeout=90_000)
            before, _ = _grid_image(page)
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
            _view(page, "All tokens")
            page.get_by_text("Isolate a token").first.wait_for(timeout=60_000)
            deadline = time.time() + 60
            while page.locator('[data-testid="stImage"] img').count() < 2:
                assert time.time() < deadline, "no constellation per image"
                time.sleep(0.5)
            time.sleep(1)
            page.screenshot(path=str(ARTIFACTS / "app-all-tokens.png"), full_page=False)
            _view(page, "Why this class")
            page.get_by_text("Class token map: each token").first.wait_for(timeout=90_000)
            src, why = _grid_image(page)
            assert why.shape[1] > 3 * 250 and why.std() > 10  # three panels of the photo, fitted to the page
            time.sleep(1)
            page.screenshot(path=str(ARTIFACTS / "app-why.png"), full_page=False)
            _view(page, "Token gallery")
            page.get_by_text("its top").first.wait_for(timeout=90_000)
            time.sleep(1)
            page.screenshot(path=str(ARTIFACTS / "app-gallery.png"), full_page=False)
        finally:
            browser.close()


_TEXT_CHECK = """() => {
  const bad = [];
  const root = document.querySelectorAll('[data-testid="stMain"], [data-testid="stSidebar"]');
  for (const area of root) {
    const texts = area.querySelectorAll('p, label, span, li, h1, h2, h3, small, div[data-testid="stCaptionContainer"]');
    for (const el of texts) {
      const text = (el.innerText || '').trim();
      if (!text || el.offsetParent === null) continue;
      const cs = getComputedStyle(el);
      if (parseFloat(cs.fontSize) < 12) bad.push(['small ' + cs.fontSize, text.slice(0, 60)]);
      const clips = ['hidden', 'clip'].includes(cs.overflowX) || cs.textOverflow === 'ellipsis';
      if (clips && el.scrollWidth > el.clientWidth + 1) bad.push(['cut', text.slice(0, 60)]);
    }
  }
  const shrunk = [];
  for (const img of document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"] img')) {
    if (img.naturalWidth && img.clientWidth < 0.98 * img.naturalWidth) shrunk.push([img.naturalWidth, img.clientWidth]);
  }
  return {bad, shrunk, height: document.querySelector('[data-testid="stMain"]').scrollHeight};
}"""


def test_first_screen_text_is_readable_and_never_cut(server):
    """At 1400 x 900, the first screen's text is >= 12 px and never cut, its pictures are shown at
    their own size (the text drawn into them stays >= 12 px), and it fits in about 1.5 screens."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(server)
            page.get_by_text("Tokens of").first.wait_for(timeout=120_000)
            deadline = time.time() + 60
            while page.locator('[data-testid="stMain"] [data-testid="stImage"] img').count() < 4 + 16:
                assert time.time() < deadline, "the overview never finished drawing"
                time.sleep(0.5)
            time.sleep(1)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "first-screen.png"), full_page=True)
            found = page.evaluate(_TEXT_CHECK)
            assert not found["bad"], found["bad"]
            assert not found["shrunk"], found["shrunk"]
            assert found["height"] <= 1.6 * 900 + 200, found["height"]
        finally:
            browser.close()
