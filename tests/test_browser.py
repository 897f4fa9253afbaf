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


# ------------------------------------------------------------------------------ a site of 3000 units
def _big_site(root: Path, n: int = 3000) -> None:
    """The index and layer page of a real 3000-unit layer (pages rendered by the explorer's own page
    functions), every image one small PNG: what is tested is how the pages behave at that size."""
    from torch import nn

    from weightviz.explore import pages
    from weightviz.explore import paths as P
    from weightviz.explore._png import fv_png
    from weightviz.explore.site import _write_assets

    model = nn.Sequential(nn.Conv2d(3, n, 1)).eval()
    ex = Explorer(model, "0", None, config=FAST, render_cache=None, name="wide")
    _write_assets(root)
    (root / "index.html").write_text(pages.index_html(ex, ex.units, "static"))
    (root / P.layer_path("0")).parent.mkdir(parents=True, exist_ok=True)
    (root / P.layer_path("0")).write_text(pages.layer_html(ex, "0", ex.units["0"], "static"))
    (root / P.unit_path("0", 1000)).parent.mkdir(parents=True, exist_ok=True)
    (root / P.unit_path("0", 1000)).write_text("<!doctype html><title>unit 1000</title>")  # one Enter opens
    png = fv_png(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)))
    for u in range(n):
        for rel in (P.fv_path("0", u), P.nmf_path("0", ex.primary_source("0"), u)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(png)


def test_a_layer_of_3000_units_loads_a_page_of_cards_and_finds_any_unit(browser, tmp_path):
    from weightviz.explore.pages import LAYER_PAGE_SIZE

    _big_site(tmp_path)
    tab = Tab(browser)
    requested: list[str] = []
    tab.page.on("request", lambda r: requested.append(r.url) if r.url.endswith(".png") else None)
    try:
        p = tab.page
        p.goto((tmp_path / "layer" / "0.html").resolve().as_uri())
        p.wait_for_load_state("load")
        assert p.locator(".card").count() == 3000
        assert p.locator(".card:visible").count() == LAYER_PAGE_SIZE  # one page of cards shown
        assert p.locator("#page-label").inner_text().startswith(f"page 1 of {-(-3000 // LAYER_PAGE_SIZE)}")
        # lazy images: far fewer requests than the 6000 images of the layer (at most the visible page)
        p.wait_for_timeout(500)
        assert 0 < len(requested) <= 2 * LAYER_PAGE_SIZE
        # the search box: unit 2999 is one keystroke sequence away, and its images load
        p.fill("#unit-filter", "2999")
        assert p.locator(".card:visible").count() == 1 and p.locator("#u2999").is_visible()
        p.wait_for_function("Array.from(document.querySelectorAll('#u2999 img')).every(i => i.complete && i.naturalWidth > 0)",
                            timeout=60_000)
        p.fill("#unit-filter", "12")  # prefix: 12, 120-129, 1200-1299
        assert p.locator(".card:visible").count() == 1 + 10 + 100
        p.fill("#unit-filter", "")
        p.click("#pager button:text-is('next ›')")
        assert p.locator("#page-label").inner_text().startswith("page 2 of")
        assert p.locator(f"#u{LAYER_PAGE_SIZE}").is_visible() and p.locator("#u0").is_hidden()
        # a link to a unit's card (#uN) opens the page that holds it
        p.goto((tmp_path / "layer" / "0.html").resolve().as_uri() + "#u1000")
        p.wait_for_load_state("load")
        assert p.locator("#u1000").is_visible()
        p.screenshot(path=str(tmp_path / "layer.png"))
        # Enter on an exact unit opens its page
        p.fill("#unit-filter", "1000")
        with p.expect_navigation():
            p.press("#unit-filter", "Enter")
        assert p.url.endswith("unit/0/1000.html")
        assert tab.errors == []
    finally:
        tab.close()


def test_index_filters_layers_by_name(browser, model, tmp_path):
    root = tmp_path / "site"
    ex = Explorer(model, None, "0:2", config=FAST, render_cache=None, name="tiny")
    build_site(model, root, explorer=ex)
    # the filter appears on indexes of more than 8 layers: show every explorable layer of a wider model
    from torch import nn

    from weightviz.explore import pages

    wide = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 4, 4, 1) for i in range(12)]).eval()
    wex = Explorer(wide, [str(i) for i in range(12)], "0:1", config=FAST, render_cache=None, name="deep")
    (root / "deep.html").write_text(pages.index_html(wex, wex.units, "static"))
    tab = Tab(browser)
    try:
        p = tab.page
        p.goto((root / "index.html").resolve().as_uri())
        assert p.locator("#layer-filter").count() == 0  # 3 layers: no filter needed
        p.goto((root / "deep.html").resolve().as_uri())
        assert p.locator("table.layers tbody tr:visible").count() == 12
        p.fill("#layer-filter", "1")  # layers 1, 10, 11
        assert p.locator("table.layers tbody tr:visible").count() == 3
        assert p.locator("#layer-count").inner_text() == "3 of 12 layers"
    finally:
        tab.close()
