"""The explorer in a real browser: Playwright driving Debian's chromium (never a downloaded browser).

On the static site (``file://``) and on the live server (127.0.0.1, ephemeral port): open the index,
click into a layer, a unit, follow an input link, switch a source tab; on every page all images loaded
(``naturalWidth > 0``) and there were no console errors, page errors or failed requests.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from weightviz.explore import ExploreConfig, Explorer, build_site, make_server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"Debian chromium not installed at {CHROMIUM} (`make browser` installs it)"),
]

FAST = ExploreConfig(size=16, steps=2, top_k=3, n_factors=3, factor_k=3, example_images=6)


@pytest.fixture(scope="module")
def model():
    from conftest import TinyNet

    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


class Tab:
    """A browser page that records console errors, page errors and failed requests."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1280, "height": 3000})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url} {r.failure}"))
        self.page.on("response", lambda r: self.errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)

    def check_images(self) -> int:
        """Every image on the page loaded; returns how many there are."""
        p = self.page
        p.wait_for_load_state("load")
        p.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
        p.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=60_000)
        bad = p.evaluate("Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.src)")
        assert bad == [], f"images that did not load on {p.url}: {bad[:5]}"
        return p.evaluate("document.images.length")

    def click(self, selector: str) -> None:
        with self.page.expect_navigation():
            self.page.click(selector)

    def close(self) -> None:
        self.page.close()


def _walk(tab: Tab, index_url: str) -> None:
    p = tab.page
    p.goto(index_url)
    assert p.title().startswith("tiny")
    assert tab.check_images() >= 3
    tab.click("a.layer-link:text-is('conv2')")  # into a layer
    assert "conv2" in p.title() and p.url.endswith("layer/conv2.html")
    assert tab.check_images() >= 2 * 8  # FV + NMF image of every unit
    tab.click("a.card#u5")  # into a unit
    assert p.url.endswith("unit/conv2/5.html")
    assert tab.check_images() > 5
    first_input = p.locator(".panel.active a.unit-link").first
    target_unit = first_input.get_attribute("title")  # "conv1 unit N"
    with p.expect_navigation():
        first_input.click()  # follow an input link to its own page
    layer, _, n = target_unit.split()
    assert p.url.endswith(f"unit/{layer}/{n}.html")
    assert p.locator("h1").inner_text().startswith(f"{layer}")
    tab.check_images()
    # a unit with two sources: the tabs switch panels (JS)
    base = index_url[: -len("index.html")] if index_url.endswith("index.html") else index_url
    p.goto(base + "unit/conv3/1.html")
    tab.check_images()
    tabs = p.locator(".tabs .tab")
    assert tabs.count() == 2
    assert p.locator("#src1").is_hidden()
    tabs.nth(1).click()
    assert p.locator("#src1").is_visible() and p.locator("#src0").is_hidden()
    assert "expanded from conv1" in p.locator(".tab.active").inner_text()


def test_static_site_in_chromium(browser, model, tmp_path):
    root = tmp_path / "site"
    ex = Explorer(model, None, None, config=FAST, render_cache=None, name="tiny")
    build_site(model, root, explorer=ex)
    tab = Tab(browser)
    try:
        _walk(tab, (root / "index.html").resolve().as_uri())
        assert tab.errors == []
    finally:
        tab.close()


def test_live_server_in_chromium(browser, model):
    ex = Explorer(model, None, None, config=FAST, render_cache=None, name="tiny")
    server = make_server(ex, "127.0.0.1", 0, cache=":memory:")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    tab = Tab(browser)
    try:
        _walk(tab, server.url)
        # the live server can expand from any earlier layer: choose one in the select
        p = tab.page
        p.goto(server.url + "unit/conv3/2.html")
        tab.check_images()  # (navigating away earlier would abort its image requests)
        with p.expect_navigation():
            p.select_option("#src-select", "conv1")
        assert p.url.endswith("unit/conv3/2.html?src=conv1")
        assert "expanded from conv1" in p.locator(".tab.active").inner_text()
        tab.check_images()
        assert tab.errors == []
        # a bad path is a readable 404 page, not a traceback
        response = p.goto(server.url + "unit/conv3/9.html")
        assert response.status == 404
        assert "out of range" in p.content() and "Traceback" not in p.content()
    finally:
        tab.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
