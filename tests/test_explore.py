"""Explorer: path layout, jobs/executors, the SQLite cache, what the pages show (checked against
independent computations), the static site (every link resolves, resumable, incremental) and the live
server (404s, cache, compute-once). Real-browser tests are in test_browser.py."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import weightviz as wv
from weightviz import WeightvizError
from weightviz.explore import (
    ExploreConfig,
    Explorer,
    SqliteCache,
    _png,
    build_site,
    default_layers,
    make_server,
)
from weightviz.explore import paths as P
from weightviz.explore.jobs import Job, SerialExecutor, is_done, job_key, mark_done
from weightviz.explore.server import ExplorerApp
from weightviz.figures import DIVERGING_STOPS

FAST = ExploreConfig(size=16, steps=2, top_k=3, n_factors=3, factor_k=3, batch=32, examples=4, example_images=6)


@pytest.fixture
def ex(tiny):
    return Explorer(tiny, None, None, config=FAST, render_cache=None, name="tiny")


# ------------------------------------------------------------------------------------------- paths
@pytest.mark.parametrize("bad", [
    "/../etc/passwd", "/static/../../x.css", "/%2e%2e/%2e%2e/etc/passwd", "/static/..%2fstyle.css",
    "/unit/conv2/..%2F..%2Fsecret.html", "/img/fv/conv2/1.png/../../../x", "/unit/conv2/-1.html",
    "/unit/conv2/01.html", "/layer/.hidden.html", "/static/style.css%00.png", "/static\\..\\x.css", "//etc/passwd",
])
def test_parse_refuses_paths_outside_the_layout(bad):
    assert P.parse(bad) is None


def test_every_path_builder_parses_back():
    layer, src = "blocks.2.0", "blocks.1.0"
    cases = {
        P.layer_path(layer): ("layer", layer, None, None, None),
        P.unit_path(layer, 7): ("unit", layer, None, 7, None),
        P.fv_path(layer, 7): ("fv", layer, None, 7, None),
        P.nmf_path(layer, src, 7): ("nmf", layer, src, 7, None),
        P.nmf_path(layer, None, 7): ("nmf", layer, P.INPUT, 7, None),
        P.heatmap_path(layer, src, 7, 3): ("w", layer, src, 7, 3),
        P.fmap_path(layer, src, 7, 1): ("fmap", layer, src, 7, 1),
        P.factor_path(layer, src, 7, 1): ("factor", layer, src, 7, 1),
        P.out_path(layer, "blocks.3.0", 7, 5): ("out", layer, "blocks.3.0", 7, 5),
        P.example_path(layer, 7, 2): ("ex", layer, None, 7, 2),
    }
    for path, (kind, lay, s, unit, index) in cases.items():
        r = P.parse("/" + path)
        assert (r.kind, r.layer, r.src, r.unit, r.index) == (kind, lay, s, unit, index), path
    assert P.parse("/").kind == "index" and P.parse("/index.html").kind == "index"
    assert P.relative_root(P.unit_path(layer, 1)) == "../../"


def test_slug_is_safe_and_distinct():
    odd = ["a/b", "a b", "..", "input", "x:y", "features/3"]
    slugs = [P.slug(n) for n in odd]
    assert len(set(slugs)) == len(slugs)
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", s) and ".." not in s for s in slugs)
    assert P.slug("input") != P.INPUT  # a layer called "input" cannot be confused with the model input


# -------------------------------------------------------------------------------------------- jobs
def _double(state, job):
    return state * job.inputs["x"]


def test_job_keys_and_stamps(tmp_path):
    a = Job("page", {"x": 1, "y": [1, 2]}, ("a.html",), salt="s")
    assert a.key == Job("page", {"y": [1, 2], "x": 1}, ("a.html",), salt="s").key  # key order irrelevant
    assert a.key != Job("page", {"x": 2, "y": [1, 2]}, ("a.html",), salt="s").key
    assert a.key != Job("page", {"x": 1, "y": [1, 2]}, ("a.html",), salt="other").key
    assert a.key == job_key("page", {"x": 1, "y": [1, 2]}, "s")
    with pytest.raises(WeightvizError, match="unknown job kind"):
        Job("bake", {}, ())
    assert not is_done(tmp_path, a)
    (tmp_path / "a.html").write_text("x")
    assert not is_done(tmp_path, a)  # output without a stamp: not done
    mark_done(tmp_path, a)
    assert is_done(tmp_path, a)
    (tmp_path / "a.html").unlink()
    assert not is_done(tmp_path, a)  # stamp without the output: not done


def test_serial_executor_passes_its_state():
    # (the process pool is tested end to end in test_explore_cli: --jobs 2 gives the same site as --jobs 1)
    jobs = [Job("render", {"x": i}, (f"{i}.png",)) for i in range(5)]
    assert dict((j.inputs["x"], r) for j, r in SerialExecutor(state=3).imap(_double, jobs)) == {i: 3 * i for i in range(5)}
    built = SerialExecutor(init=int, init_args=("4",))
    assert [r for _, r in built.imap(_double, jobs[:2])] == [0, 4]


# ------------------------------------------------------------------------------------------- store
def test_sqlite_cache_keyed_by_model_and_computes_once(tmp_path):
    db = tmp_path / "c.sqlite"
    a = SqliteCache(db, "model-a")
    calls = []
    barrier = threading.Barrier(6)

    def compute():
        calls.append(1)
        return b"value"

    def worker():
        barrier.wait()
        assert a.get_or_compute("k", compute) == b"value"

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and a.computed == 1 and a.hits == 5
    assert SqliteCache(db, "model-a").get("k") == b"value"  # persisted
    assert SqliteCache(db, "model-b").get("k") is None  # another model never sees it
    a.put_many({"x": b"1", "y": b"2"})
    assert len(a) == 3


def test_sqlite_cache_refuses_a_non_database(tmp_path):
    bad = tmp_path / "not.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(WeightvizError, match="cannot use"):
        SqliteCache(bad, "m")


# ------------------------------------------------------------------------------------------ layers
def test_default_layers_and_errors(tiny, ex):
    assert ex.layers == ["conv1", "conv2", "conv3"] == default_layers(tiny)
    with pytest.raises(WeightvizError, match="unknown layer 'conv9'.*conv"):
        Explorer(tiny, "conv9", config=FAST, render_cache=None)
    with pytest.raises(WeightvizError, match="cannot be explored"):
        Explorer(tiny, "fc", config=FAST, render_cache=None)  # output [10], not a feature map
    ex2 = Explorer(tiny, "conv3,conv1", "2:6", config=FAST, render_cache=None)
    assert ex2.layers == ["conv1", "conv3"]  # model order
    assert ex2.units == {"conv1": [2, 3, 4, 5], "conv3": [2, 3]}  # a range is clipped per layer (conv3 has 4)
    with pytest.raises(WeightvizError, match="out of range"):
        ex.check_unit("conv3", 4)
    with pytest.raises(WeightvizError):
        ExploreConfig(size=8)


def test_lite0_default_layers_are_the_stage_entries(lite0):
    assert default_layers(lite0) == [f"blocks.{i}.0" for i in range(7)]


def test_predecessors_and_sources(ex):
    assert ex.predecessor("conv1") is None
    assert ex.predecessor("conv2") == "conv1"
    assert ex.predecessor("conv3") == "conv2"
    srcs = ex.sources("conv3")
    assert [(s.layer, s.kind) for s in srcs] == [("conv2", "direct"), ("conv1", "expanded")]
    assert ex.next_layer("conv2") == "conv3" and ex.next_layer("conv3") is None


def test_predecessors_across_pooling_and_branches(googlenet, resnet18):
    # inception4a's input is maxpool3(inception3b): not inception3a, whose freed output memory the pool reuses
    gex = Explorer(googlenet, "inception3b,inception4a", None, config=FAST, render_cache=None)
    assert gex.predecessor("inception4a") == "inception3b"
    assert gex.predecessor("inception3a.branch2.1") == "inception3a.branch2.0"  # inside a branch
    assert gex.predecessor("inception3a.branch2.0") == "conv3"  # a branch starts at the block's input
    rex = Explorer(resnet18, "layer2.0,layer3.0", None, config=FAST, render_cache=None)
    assert rex.predecessor("layer2.0") == "layer1.1"
    assert rex.predecessor("layer3.0.downsample.0") == "layer2.1"  # the skip path's conv
    # a block and a layer inside it: neither is the other's source or next layer
    nested = Explorer(resnet18, "layer1.1,layer2.0,layer2.0.conv2", None, config=FAST, render_cache=None)
    assert [s.layer for s in nested.sources("layer2.0.conv2")] == ["layer2.0.conv1", "layer1.1"]
    assert nested.next_layer("layer2.0") is None and nested.next_layer("layer1.1") == "layer2.0"
    with pytest.raises(WeightvizError, match="does not come before"):
        nested.source_for("layer2.0.conv2", "layer2.0")


# --------------------------------------------------------------------------- data vs. references
def test_unit_data_matches_independent_computations(tiny, ex):
    from weightviz.explore import pages

    d = pages.unit_data(ex, "conv2", 5)
    direct = d["sources"][0]
    # conv1 -> bn1 -> relu -> conv2: the direct connection is conv2's weights times bn1's eval scale
    bn = tiny.bn1
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    W2 = wv.weights(tiny, "conv2")[5] * scale[:, None, None]  # [8, 3, 3]
    norms = W2.flatten(1).norm(dim=1)
    assert [c["unit"] for c in direct["items"]] == torch.argsort(norms, descending=True)[:3].tolist()
    for c in direct["items"]:
        assert c["norm"] == pytest.approx(float(norms[c["unit"]]), rel=1e-5)
        assert c["sign"] == int(torch.sign(W2[c["unit"]].sum()))
    assert direct["vmax"] == pytest.approx(float(W2.abs().max()), rel=1e-5)
    assert (direct["kh"], direct["kw"], direct["c_in"]) == (3, 3, 8)
    # outputs: conv3 (1x1) directly after conv2, so W[o, 5] are conv3's own weights from channel 5
    W3 = wv.weights(tiny, "conv3")[:, 5, 0, 0]
    out = d["outputs"]
    assert out["layer"] == "conv3"
    assert [c["unit"] for c in out["items"]] == torch.argsort(W3.abs(), descending=True)[:3].tolist()
    assert [c["sign"] for c in out["items"]] == [int(torch.sign(W3[c["unit"]])) for c in out["items"]]
    # weight factors reconstruct the unit's one-sided weights
    nm = ex.nmf("conv2", "conv1")
    X = torch.cat([W2.clamp(min=0), (-W2).clamp(min=0)]).reshape(16, 9).T  # [positions, 2*C_in]
    rec = nm["A"][5] @ nm["H"][5]
    assert float((X - rec).norm() / X.norm()) < 0.6
    signed = sum(torch.outer(nm["A"][5][:, f], torch.tensor(ff["vector"]))
                 for f, ff in zip(range(nm["A"].shape[2]), direct["factors"]))
    assert signed.shape == (9, 8)


@pytest.mark.parametrize("dst,src", [("conv3", "conv1"), ("conv3", "conv2"), ("conv2", "conv1"), ("conv1", None)])
def test_top_inputs_rank_exactly_like_the_library(tiny, ex, dst, src):
    # the explorer reads the ranking off one batched expansion per layer; the library expands per unit
    for unit in range(4):
        ours = ex.top_inputs(dst, unit, src)
        ref = wv.top_inputs(tiny, dst, unit, src, k=len(ours))  # src=None: conv1's own weights = from the input
        assert [c.channel for c in ours] == [c.channel for c in ref]
        assert [c.sign for c in ours] == [c.sign for c in ref]
        assert [c.norm for c in ours] == pytest.approx([c.norm for c in ref], rel=1e-5)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-7)


def test_first_layer_shows_weights_as_rgb(tiny, ex):
    from weightviz.explore import pages

    d = pages.unit_data(ex, "conv1", 2)
    (src,) = d["sources"]
    assert src["src"] is None and src["c_in"] == 3 and src["factors"] == []
    expected = wv.rgb_weights(wv.weights(tiny, "conv1"))[2]  # [3, 3, 3]
    png = np.asarray(Image.open(__import__("io").BytesIO(pages.nmf_png(ex, "conv1", None, 2))))
    f = png.shape[0] // 3
    got = png[::f, ::f, :3].astype(np.float32) / 255
    assert np.abs(got - expected.numpy()).max() <= 0.5 / 255 + 1e-6


def test_heatmap_png_uses_the_article_colormap():
    w = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])
    arr = np.asarray(Image.open(__import__("io").BytesIO(_png.heatmap_png(w, vmax=2.0, min_px=4))))
    hexes = {(0, 0): DIVERGING_STOPS[0], (0, 1): DIVERGING_STOPS[2], (1, 0): DIVERGING_STOPS[4]}
    for (i, j), h in hexes.items():
        rgb = [int(h[k:k + 2], 16) for k in (1, 3, 5)]
        assert np.abs(arr[i * 2, j * 2, :3].astype(int) - rgb).max() <= 2, (i, j)
    assert arr.shape[:2] == (4, 4)  # upscaled by nearest neighbour to min_px per cell


# -------------------------------------------------------------------------------------- the site
def _links(html: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"#?]+)', html)


def _crawl(root: Path) -> tuple[set[Path], list[str]]:
    """Follow every relative link and image from index.html; return visited pages and broken links."""
    seen, broken, todo = set(), [], [root / "index.html"]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        for link in _links(page.read_text()):
            if link.startswith(("http:", "https:", "data:")):
                continue
            target = (page.parent / link).resolve()
            if not target.is_file():
                broken.append(f"{page.relative_to(root)} -> {link}")
            elif target.suffix == ".html":
                todo.append(target)
    return seen, broken


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from conftest import TinyNet

    torch.manual_seed(0)
    model = TinyNet().eval()
    root = tmp_path_factory.mktemp("site")
    ex = Explorer(model, "conv1,conv2,conv3", "0:6", config=FAST, render_cache=None, name="tiny")
    report = build_site(model, root, explorer=ex)
    return model, ex, root, report


def test_site_is_complete_and_every_link_resolves(built):
    _, ex, root, report = built
    seen, broken = _crawl(root)
    assert broken == []
    pages_built = {p.relative_to(root).as_posix() for p in seen}
    for layer in ex.layers:
        assert P.layer_path(layer) in pages_built
        for u in ex.units[layer]:
            assert P.unit_path(layer, u) in pages_built
    assert report.pages == 6 + 6 + 4
    html = (root / P.unit_path("conv3", 1)).read_text()
    assert "direct: conv2" in html and "expanded from conv1" in html
    # links are relative: the site opens from disk and can be moved
    assert "/unit/" not in re.sub(r'(?:href|src)="[^"]*"', "", html) or True
    assert all(not link.startswith("/") for link in _links(html))


def test_site_links_only_units_it_built(built):
    _, ex, root, _ = built
    html = (root / P.unit_path("conv2", 0)).read_text()
    data = json.loads((root / "data" / "conv2.json").read_text())["units"]["0"]
    for c in data["sources"][0]["items"]:
        linked = f'href="../../{P.unit_path("conv1", c["unit"])}"' in html
        assert linked == (c["unit"] in ex.units["conv1"])


def test_site_is_resumable_and_incremental(built, tmp_path):
    model, ex, root, _ = built
    again = build_site(model, root, explorer=ex)
    assert sum(again.run.values()) == 0 and sum(again.skipped.values()) > 0
    # a deleted output is rebuilt, and only its job runs
    (root / P.fv_path("conv2", 1)).unlink()
    fixed = build_site(model, root, explorer=ex)
    assert fixed.run == {"weights": 0, "render": 1, "examples": 0, "page": 0}
    assert (root / P.fv_path("conv2", 1)).is_file()
    # more units: new pages, untouched layers' weights jobs are not re-run... only changed ones are
    more = Explorer(model, "conv1,conv2,conv3", "0:8", config=FAST, render_cache=None, name="tiny")
    grown = build_site(model, root, explorer=more)
    assert grown.run["weights"] == 2  # conv1 and conv2 have more units now; conv3 (4 units) is unchanged
    assert (root / P.unit_path("conv2", 7)).is_file()


def test_site_refuses_foreign_directories(tiny, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WeightvizError, match="not a weightviz site"):
        build_site(tiny, tmp_path, config=FAST, render_cache=None)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(WeightvizError, match="not a directory"):
        build_site(tiny, f, config=FAST, render_cache=None)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------- the server
@pytest.fixture
def app(tiny):
    ex = Explorer(tiny, None, None, config=FAST, render_cache=None, name="tiny")
    a = ExplorerApp(ex, SqliteCache(":memory:", ex.hash))
    yield a
    a.close()


@pytest.mark.parametrize("path,message", [
    ("/../etc/passwd", "No page"),
    ("/static/..%2f..%2fpyproject.toml", "No page"),
    ("/%2e%2e/%2e%2e/etc/passwd", "No page"),
    ("/unit/nope/1.html", "Unknown layer"),
    ("/layer/fc.html", "Unknown layer"),
    ("/unit/conv2/16.html", "out of range"),
    ("/img/fv/conv3/4.png", "out of range"),
    ("/img/w/conv2/conv1/3/8.png", "out of range"),
    ("/img/nmf/conv2/conv3/0.png", "does not come before"),
    ("/unit/conv2/1.html?src=conv3", "does not come before"),
    ("/unit/conv2/1.html?src=nope", "Unknown source"),
    ("/img/out/conv1/conv3/0/0.png", "not the explored layer after"),
    ("/static/missing.css", "No static file"),
])
def test_server_answers_404_pages(app, path, message):
    status, ctype, body = app.handle(path)
    assert status == 404 and ctype.startswith("text/html")
    text = body.decode()
    assert message in text and "Traceback" not in text and "<html" in text


def test_server_second_request_comes_from_the_cache(app):
    s1, _, page1 = app.handle("/unit/conv2/3.html")
    n = app.computations
    s2, _, page2 = app.handle("/unit/conv2/3.html")
    assert s1 == s2 == 200 and page1 == page2
    assert app.computations == n and app.cache.hits >= 1
    s, ctype, png = app.handle("/img/fv/conv2/3.png")
    assert s == 200 and ctype == "image/png" and png.startswith(b"\x89PNG")
    m = app.computations
    assert app.handle("/img/fv/conv2/3.png")[2] == png and app.computations == m


def test_server_renders_concurrent_requests_once_in_one_batch(app):
    paths = [f"/img/fv/conv2/{u}.png" for u in range(8)] * 3
    results = {}
    barrier = threading.Barrier(len(paths))
    # the render thread gathers until all 8 images are queued (not for a fixed time: no timing dependence)
    all_queued = threading.Event()
    app.renders._gather = lambda: all_queued.wait(timeout=300)

    def get(i, p):
        barrier.wait()
        results[i] = app.handle(p)

    threads = [threading.Thread(target=get, args=(i, p)) for i, p in enumerate(paths)]
    for t in threads:
        t.start()
    for _ in range(30000):  # at most 300 s
        with app.renders._cv:
            if len(app.renders._pending) == 8:
                break
        threading.Event().wait(0.01)
    all_queued.set()
    for t in threads:
        t.join()
    assert all(r[0] == 200 for r in results.values())
    assert app.computations == 8  # 24 requests, 8 distinct images, each computed once
    assert app.renders.batches == 1  # gathered into one render batch
    for i in range(8):  # equal paths got equal bytes
        assert results[i][2] == results[i + 8][2] == results[i + 16][2]


def test_server_cache_survives_restart(tiny, tmp_path):
    ex = Explorer(tiny, None, None, config=FAST, render_cache=None, name="tiny")
    db = tmp_path / "explorer.sqlite"
    a = ExplorerApp(ex, SqliteCache(db, ex.hash))
    body = a.handle("/unit/conv3/2.html")[2]
    a.close()
    b = ExplorerApp(Explorer(tiny, None, None, config=FAST, render_cache=None, name="tiny"), SqliteCache(db, ex.hash))
    assert b.handle("/unit/conv3/2.html")[2] == body and b.computations == 0
    b.close()


def test_server_over_http_binds_localhost(tiny):
    server = make_server(Explorer(tiny, None, None, config=FAST, render_cache=None, name="tiny"), port=0,
                         cache=":memory:")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(server.url + "layer/conv2.html", timeout=60) as r:
            assert r.status == 200 and b"conv2" in r.read()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + "unit/conv2/99.html", timeout=60)
        assert e.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_a_source_that_cannot_be_expanded_is_reported_not_fatal(tiny, tmp_path):
    ex = Explorer(tiny, None, "0:2", config=FAST, render_cache=None, name="tiny")
    real = ex.weights_from

    def weights_from(src, dst):
        if (src, dst) == ("conv1", "conv3"):
            raise WeightvizError("cannot linearize op 'Frobnicate' between conv1 and conv3")
        return real(src, dst)

    ex.weights_from = weights_from
    report = build_site(tiny, tmp_path / "site", explorer=ex)
    assert report.pages == 6
    _, broken = _crawl(tmp_path / "site")
    assert broken == []
    html = (tmp_path / "site" / P.unit_path("conv3", 1)).read_text()
    assert "Cannot show the weights from conv1: cannot linearize op &#39;Frobnicate&#39;" in html
    assert "direct: conv2" in html  # the other source is shown as usual
    app = ExplorerApp(ex, SqliteCache(":memory:", ex.hash))
    try:
        status, _, body = app.handle("/unit/conv3/1.html")
        assert status == 200 and b"Frobnicate" in body
        assert app.handle("/layer/conv3.html")[0] == 200
    finally:
        app.close()


# ------------------------------------------------------------------------------ dataset examples
def test_unit_examples_equal_top_examples_on_the_same_images(tiny, ex):
    """The explorer scores a layer once and selects per unit: the same as the public top_examples."""
    imgs = ex.example_image_set()
    assert len(imgs) == 6
    for layer, unit in [("conv2", 3), ("conv3", 1)]:
        got = ex.unit_examples(layer, unit)
        ref = wv.top_examples(tiny, layer, unit, imgs, k=4)
        assert got.indices.tolist() == ref.indices.tolist()
        torch.testing.assert_close(got.values, ref.values)
        torch.testing.assert_close(got.images, ref.images)


def test_site_shows_dataset_examples(built):
    _, ex, root, report = built
    assert report.run["examples"] == len(ex.layers)
    doc = json.loads((root / "data" / "examples" / "conv2.json").read_text())
    d = doc["2"]
    html = (root / P.unit_path("conv2", 2)).read_text()
    assert "Dataset examples" in html
    if d["fires"]:
        assert len(d["items"]) >= 1
        for j, it in enumerate(d["items"]):
            assert P.example_path("conv2", 2, j) in html and f"a={it['value']:.3g}" in html
            img = np.asarray(Image.open(root / P.example_path("conv2", 2, j)))
            assert img.ndim == 3 and max(img.shape[:2]) <= 128
    else:
        assert "fires on none" in html


def test_never_firing_unit_page_says_so_and_server_serves_crops(tiny, tmp_path):
    with torch.no_grad():
        tiny.conv3.bias[1] = -1e4
    ex = Explorer(tiny, "conv2,conv3", "0:4", config=FAST, render_cache=None, name="tiny")
    app = ExplorerApp(ex, SqliteCache(":memory:", ex.hash))
    try:
        status, _, body = app.handle("/unit/conv3/1.html")
        assert status == 200 and "fires on none of the 6 images" in body.decode()
        assert app.handle("/img/ex/conv3/1/0.png")[0] == 404
        status, _, body = app.handle("/unit/conv3/0.html")
        assert status == 200
        n = len(ex.unit_examples("conv3", 0))
        assert n > 0 and f'img/ex/conv3/0/{n - 1}.png' in body.decode()
        status, ctype, png = app.handle(f"/img/ex/conv3/0/{n - 1}.png")
        assert status == 200 and png.startswith(b"\x89PNG")
        assert app.handle(f"/img/ex/conv3/0/{n}.png")[0] == 404
        assert app.handle("/img/ex/conv3/0/9.png")[0] == 404
    finally:
        app.close()
    off = Explorer(tiny, "conv2,conv3", "0:2", config=ExploreConfig(size=16, steps=2, examples=0),
                   render_cache=None, name="tiny")
    rep = build_site(tiny, tmp_path / "s", explorer=off)
    assert rep.run["examples"] == 0 and "Dataset examples" not in (tmp_path / "s" / P.unit_path("conv3", 0)).read_text()


def test_methods_other_than_get_and_head_answer_405_with_allow(tiny):
    server = make_server(Explorer(tiny, None, None, config=FAST, render_cache=None, name="tiny"), port=0,
                         cache=":memory:")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            req = urllib.request.Request(server.url + "layer/conv2.html", data=b"x" if method != "DELETE" else None,
                                         method=method)
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=60)
            assert e.value.code == 405, method
            assert e.value.headers["Allow"] == "GET, HEAD"
        req = urllib.request.Request(server.url + "layer/conv2.html", method="HEAD")
        with urllib.request.urlopen(req, timeout=60) as r:  # HEAD still works
            assert r.status == 200 and r.read() == b""
    finally:
        server.shutdown()
        server.server_close()


def test_close_cancels_a_render_in_flight_and_the_request_answers_503(tiny):
    """A render that would run for a very long time stops at its next step when the app closes; the
    waiting request gets a 503, later requests too, and close() returns only when nothing computes."""
    ex = Explorer(tiny, None, None, config=ExploreConfig(size=16, steps=10**7, top_k=3, batch=32),
                  render_cache=None, name="tiny")
    app = ExplorerApp(ex, SqliteCache(":memory:", ex.hash))
    started = threading.Event()
    real = ex.render_units

    def render_units(layer, units):
        started.set()
        return real(layer, units)

    ex.render_units = render_units
    answer: list = []

    def request():
        with app.request() as open_:
            answer.append(app.handle("/img/fv/conv2/3.png") if open_ else app.unavailable())

    t = threading.Thread(target=request, daemon=True)
    t.start()
    assert started.wait(timeout=120)
    assert app.close(grace=120) == 0  # returns once the render has stopped and the request has been answered
    assert answer and answer[0][0] == 503 and b"shutting down" in answer[0][2]
    t.join(timeout=60)
    assert not t.is_alive()
    assert app.handle("/layer/conv2.html")[0] == 503
    assert not ex.cancelled.is_set()  # the explorer itself can be used again


def test_a_second_build_of_the_same_site_waits_for_the_lock(tiny, tmp_path):
    import fcntl
    import os

    from weightviz.explore.site import LOCK

    root = tmp_path / "site"
    (root / LOCK).parent.mkdir(parents=True)
    lines: list[str] = []
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "another build" holds the site
    ex = Explorer(tiny, None, "0:2", config=FAST, render_cache=None, name="tiny")
    result: list = []
    waiting = threading.Event()

    def on_wait(line: str) -> None:
        lines.append(line)
        waiting.set()

    t = threading.Thread(target=lambda: result.append(build_site(tiny, root, explorer=ex, on_wait=on_wait)))
    t.start()
    try:
        assert waiting.wait(timeout=300)  # the waiting line comes before any work
        assert "another weightviz build is writing" in lines[0]
        assert not (root / "index.html").exists()
    finally:
        os.close(fd)  # releases the lock: the build goes on
        t.join(timeout=600)
    assert result and result[0].pages == 6 and (root / "index.html").is_file()


def test_site_diff_tolerates_rounding_not_changes():
    from conftest import site_diff

    from weightviz.explore.jobs import site_json

    assert site_json({"x": 1 / 3, "y": [float("nan")]}) == b'{"x": 0.3333333, "y": [NaN]}'
    assert site_diff({"a.json": b'{"x": 0.1234567}'}, {"a.json": b'{"x": 0.1234568}'}) == []
    assert site_diff({"a.json": b'{"x": 0.12}'}, {"a.json": b'{"x": 0.13}'}) == ["a.json"]
    assert site_diff({"a.html": b"<p>unit 3</p>"}, {"a.html": b"<p>unit 3 </p>"}) == ["a.html"]
    assert site_diff({"a": b""}, {"b": b""}) == ["a", "b"]
