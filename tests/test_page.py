"""The page of nmt-serve in a real headless browser (Debian's Chromium driven by Playwright): type a
sentence, get its translation, see the heatmaps drawn."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import PAIRS, start_server

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no system Chromium (Debian: apt-get install chromium; .ci/run installs it)"
)


@pytest.fixture(scope="module")
def server(trained_run):
    process, url = start_server(trained_run)
    yield url
    process.terminate()
    process.communicate(timeout=60)


@pytest.mark.parametrize("width, height", [(1280, 800), (390, 844)])  # a laptop, a phone
def test_typing_a_sentence_translates_it_and_draws_the_heatmaps(server, tmp_path: Path, width, height):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            requests_elsewhere = []
            page.on("request", lambda r: None if r.url.startswith(server) else requests_elsewhere.append(r.url))
            page.goto(server)
            page.fill("#source", PAIRS[3][0])
            page.wait_for_function("document.getElementById('target').textContent.length > 0", timeout=30000)
            page.wait_for_selector("#gates canvas", timeout=30000)
            assert page.inner_text("#target").strip()
            attention = page.eval_on_selector("#attention", "c => [c.width, c.height]")
            assert min(attention) > 0
            sizes = page.eval_on_selector_all("#gates canvas", "cs => cs.map(c => [c.width, c.height])")
            # per layer and direction (2 encoder + 1 decoder): three gates and the state norm
            assert len(sizes) == 3 * 4 and all(min(size) > 0 for size in sizes)
            assert "encoder_layer0_backward" in page.eval_on_selector_all(
                "#gates .layer", "ls => ls.map(l => l.dataset.layer)"
            )
            box = page.query_selector("#attention").bounding_box()
            # inside the cells: the row labels are at the left, the column labels on top
            page.hover("#attention", position={"x": box["width"] * 0.8, "y": box["height"] * 0.8})
            assert "←" in page.inner_text("#tooltip")  # hovering names the pieces and the value
            page.screenshot(path=str(tmp_path / f"page_{width}x{height}.png"), full_page=True)
            assert requests_elsewhere == []
        finally:
            browser.close()
