"""The live explorer: the static site's pages, computed on demand and cached in SQLite.

:class:`ExplorerApp` maps a request path (the layout of :mod:`.paths`) to ``(status, content type,
body)``; :class:`ExplorerServer` is a stdlib ``ThreadingHTTPServer`` around it. Every layer of the model
can be browsed (not only the explored ones), and a unit page can expand its inputs from any earlier
layer (``?src=LAYER``).

- Binds ``127.0.0.1`` by default (pass ``host="0.0.0.0"`` deliberately to share it).
- Anything outside the layout (``../``, absolute or encoded escapes), an unknown layer, a unit out of
  range or a bad ``?src=`` answers a 404 page that says what was wrong; unexpected errors answer a 500
  page with one line, never a traceback.
- Methods other than GET and HEAD answer 405 with ``Allow: GET, HEAD``.
- Stopping (Ctrl-C / SIGTERM in :func:`serve`, or ``shutdown()`` + ``server_close()``) is prompt by
  construction: the serve loop polls every 0.1 s, a render in progress stops at its next optimization
  step, queued computations are cancelled, requests still waiting answer 503, and a computation that
  cannot be cancelled is abandoned after :data:`STOP_GRACE` s (the CLI then ends the process with
  ``os._exit``, so no thread inside torch meets interpreter shutdown).
- Results are cached in SQLite keyed by the model hash (:class:`~.store.SqliteCache`); concurrent
  requests for the same value compute it once. Feature visualizations requested at about the same
  time (the images of one page) are rendered together in one batch by a single render thread.

>>> server = make_server("lite0", port=0)          # doctest: +SKIP
>>> server.url                                       # doctest: +SKIP
'http://127.0.0.1:40123/'
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from torch import nn

from ..errors import WeightvizError
from . import _png, pages
from . import paths as P
from .data import Cancelled, ExploreConfig, Explorer
from .jobs import FORMAT_VERSION
from .store import SqliteCache

__all__ = ["ExplorerApp", "ExplorerServer", "RenderQueue", "make_server", "serve"]

_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".ico": "image/x-icon"}


#: Seconds a stopping server waits for the computations in flight (cancelled renders end within one
#: step); what is still running then is abandoned, so Ctrl-C stops the server within about this long.
STOP_GRACE = 1.0


class NotFound(Exception):
    """A request for something that does not exist (answered with a 404 page)."""


# --------------------------------------------------------------------------------------- renders
class RenderQueue:
    """Feature visualizations computed once each, batched across concurrent requests.

    :meth:`get` returns the PNG for a key from the cache, or queues it; one worker thread takes the
    queued items of one layer (up to ``config.batch``), renders them in one :func:`weightviz.render`
    call, stores every PNG and wakes the waiting requests. A key already queued is not queued twice.
    """

    def __init__(self, ex: Explorer, cache: SqliteCache, gather_s: float = 0.02):
        self.ex, self.cache, self.gather_s = ex, cache, gather_s
        self._cv = threading.Condition()
        self._pending: OrderedDict[str, tuple[str, str, Any, cf.Future]] = OrderedDict()
        self._closed = False
        self.batches = 0
        self.log: Any = None  # ``log(line)`` before each batch (the server's --verbose)
        self._thread = threading.Thread(target=self._loop, name="weightviz-render", daemon=True)
        self._thread.start()

    def get(self, key: str, layer: str, kind: str, what: Any) -> bytes:
        """PNG of a render: ``kind="unit"`` (``what`` = unit) or ``"direction"`` (``what`` = vector)."""
        value = self.cache.get(key)
        if value is not None:
            self.cache._count("hits")
            return value
        with self._cv:
            if self._closed:
                raise Cancelled("the server is shutting down")
            item = self._pending.get(key)
            if item is None:
                item = (layer, kind, what, cf.Future())
                self._pending[key] = item
                self._cv.notify()
        return item[3].result()

    def _take(self) -> list[tuple[str, tuple]]:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return []
            self._gather()
            with self._cv:
                if self._closed:
                    return []
                if self._pending:
                    break
        with self._cv:
            first = next(iter(self._pending.values()))
            group = (first[0], first[1])
            batch = [(k, v) for k, v in self._pending.items() if (v[0], v[1]) == group][: self.ex.config.batch]
        return batch

    def _gather(self) -> None:
        """Before taking a batch: let the other images of the same page arrive."""
        time.sleep(self.gather_s)

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            layer, kind = batch[0][1][0], batch[0][1][1]
            if self.log is not None:
                self.log(f"rendering {len(batch)} {kind} feature visualization(s) of {layer}")
            try:
                if kind == "unit":
                    images = self.ex.render_units(layer, [v[2] for _, v in batch])
                else:
                    images = self.ex.render_directions(layer, [v[2] for _, v in batch])
                out = {k: _png.fv_png(img) for (k, _), img in zip(batch, images)}
                self.cache.put_many(out)
                self.batches += 1
                for _ in out:
                    self.cache._count("computed")
                results: dict[str, Any] = out
                error = None
            except BaseException as e:  # noqa: BLE001 - delivered to every waiting request
                results, error = {}, e
            with self._cv:
                for k, v in batch:
                    self._pending.pop(k, None)
                    if v[3].done():  # already failed by close()
                        continue
                    if error is None:
                        v[3].set_result(results[k])
                    else:
                        v[3].set_exception(error)

    def close(self) -> None:
        """Fail every queued render with :class:`Cancelled` and stop the worker thread. The caller cancels
        the explorer first (:meth:`Explorer.cancel`), so a render in progress ends at its next step."""
        with self._cv:
            self._closed = True
            for _, v in self._pending.items():
                if not v[3].done():
                    v[3].set_exception(Cancelled("the server is shutting down"))
            self._pending.clear()
            self._cv.notify_all()
        self._thread.join(timeout=STOP_GRACE)  # a render ends at its next step; a longer one is not waited for


# ------------------------------------------------------------------------------------------ the app
class ExplorerApp:
    """Request path -> ``(status, content type, body bytes)``: the explorer without the socket.

    ``cache``: an :class:`~.store.SqliteCache` (default: ``default_cache_dir()/explorer.sqlite``).
    ``computations`` counts values computed (cache misses) — renders, data and images.
    """

    def __init__(self, explorer: Explorer, cache: SqliteCache | None = None):
        self.ex = explorer
        if cache is None:
            from ..models import default_cache_dir

            cache = SqliteCache(default_cache_dir() / "explorer.sqlite", explorer.hash)
        self.cache = cache
        self._closing = False
        self._active = 0  # requests being answered
        self._idle = threading.Condition()
        self.renders = RenderQueue(explorer, cache)
        self._slugs = {P.slug(n): n for n in explorer.all_layers}
        cfg = explorer.config
        self._cfg = json.dumps({**cfg.key(), "format": FORMAT_VERSION}, sort_keys=True)

    @property
    def computations(self) -> int:
        return self.cache.computed

    def close(self, grace: float | None = None) -> int:
        """Stop computing: new requests answer 503, computations in progress are cancelled (a render at
        its next step; queued ones at once), and this returns once no request is computing any more, or
        after ``grace`` seconds (default :data:`STOP_GRACE`) whatever is still in flight: a computation
        that cannot be cancelled (one NMF, one pass over the images) is not waited for. Returns the number
        of requests still computing then (their threads are daemons: the process may exit)."""
        grace = STOP_GRACE if grace is None else grace
        with self._idle:
            if self._closing:
                return self._active
            self._closing = True
        # running renders stop at their next step, queued computations raise (the event alone: not
        # Explorer.cancel(), which also waits for the computation in progress, however long it takes)
        self.ex.cancelled.set()
        self.renders.close()      # queued renders fail; the render thread ends
        with self._idle:
            idle = self._idle.wait_for(lambda: self._active == 0, timeout=grace)
            left = 0 if idle else self._active
        if idle:
            self.ex.resume()      # the Explorer object may be used again (e.g. by another server)
        return left

    # --------------------------------------------------------------------------------- lookup
    def _layer(self, slug: str | None) -> str:
        name = self._slugs.get(slug or "")
        if name is None:
            from ..errors import suggest

            raise NotFound(f"Unknown layer {slug!r}.{suggest(slug or '', list(self._slugs))}")
        return name

    def _src(self, slug: str) -> str | None:
        return None if slug == P.INPUT else self._layer(slug)

    def _unit(self, layer: str, unit: int | None, what: str = "unit") -> int:
        n = self.ex.channels(layer)
        if unit is None or not 0 <= unit < n:
            raise NotFound(f"{what} {unit} is out of range: layer {layer!r} has {n} units (0..{n - 1}).")
        return unit

    def _key(self, *parts: Any) -> str:
        return "|".join(str(p) for p in parts) + "|" + self._cfg

    # -------------------------------------------------------------------------------- handling
    @contextlib.contextmanager
    def request(self) -> Iterator[bool]:
        """Hold while answering one request (computing and writing it): :meth:`close` waits for every
        request held. Yields ``False`` once the server is stopping (answer 503 without computing)."""
        with self._idle:
            if self._closing:
                yield False
                return
            self._active += 1
        try:
            yield True
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def unavailable(self) -> tuple[int, str, bytes]:
        return 503, _TYPES[".html"], self._error("The server is shutting down.", 503)

    def handle(self, target: str) -> tuple[int, str, bytes]:
        """Answer a request target (path and query). Never raises."""
        if self._closing:
            return self.unavailable()
        try:
            split = urlsplit(target)
            route = P.parse(split.path)
            if route is None:
                raise NotFound(f"No page at {split.path!r}.")
            body, ctype = self._dispatch(route, parse_qs(split.query))
            return 200, ctype, body
        except NotFound as e:
            return 404, _TYPES[".html"], self._error(str(e), 404)
        except WeightvizError as e:
            return 404, _TYPES[".html"], self._error(str(e), 404)
        except Cancelled:
            return self.unavailable()
        except Exception as e:  # noqa: BLE001 - a page, never a traceback
            line = (str(e).strip().splitlines() or [""])[0][:300]
            print(f"weightviz serve: error on {target!r}: {type(e).__name__}: {line}", file=sys.stderr)
            return 500, _TYPES[".html"], self._error(f"Internal error ({type(e).__name__}: {line}).", 500)

    def _error(self, message: str, status: int) -> bytes:
        try:
            return pages.error_html(self.ex, message, status=status).encode()
        except Exception:  # noqa: BLE001
            from html import escape

            return f"<!doctype html><title>{status}</title><p>{escape(message)}</p>".encode()

    def _dispatch(self, r: P.Route, query: dict[str, list[str]]) -> tuple[bytes, str]:
        html, png = _TYPES[".html"], _TYPES[".png"]
        ex = self.ex
        if r.kind == "static":
            try:
                data = resources.files("weightviz.explore").joinpath("static").joinpath(r.name).read_bytes()
            except (FileNotFoundError, IsADirectoryError, OSError):
                raise NotFound(f"No static file {r.name!r}.") from None
            return data, _TYPES.get(Path(r.name).suffix, "application/octet-stream")
        if r.kind == "index":
            others = [n for n in ex.all_layers if n not in ex.units]
            return pages.index_html(ex, ex.units, "server", others=others).encode(), html
        layer = self._layer(r.layer)
        if r.kind == "layer":
            units = ex.units.get(layer) or list(range(ex.channels(layer)))
            try:
                ex.weights_from(ex.primary_source(layer), layer)
                nmf_ok = True
            except WeightvizError:
                nmf_ok = False
            return pages.layer_html(ex, layer, units, "server", nmf=nmf_ok).encode(), html
        unit = self._unit(layer, r.unit)
        if r.kind == "unit":
            return self._unit_page(layer, unit, query).encode(), html
        if r.kind == "fv":
            return self.renders.get(self._key("fv", layer, unit), layer, "unit", unit), png
        if r.kind == "ex":
            if ex.config.examples < 1 or not 0 <= r.index < ex.config.examples:
                raise NotFound(f"no dataset example {r.index} of unit {unit} of {layer!r}.")

            def example() -> bytes:
                try:
                    return pages.example_png(ex, layer, unit, r.index)
                except IndexError:
                    raise NotFound(f"unit {unit} of {layer!r} has fewer than {r.index + 1} dataset examples.") from None

            return self._png(("ex", layer, unit, r.index), example), png
        if r.kind == "out":
            nxt = self._layer(r.src)
            self._unit(nxt, r.index, "output unit")
            if nxt != ex.next_layer(layer):
                raise NotFound(f"{nxt!r} is not the explored layer after {layer!r}.")
            return self._png(("out", layer, nxt, unit, r.index),
                             lambda: pages.out_png(ex, layer, nxt, unit, r.index)), png
        src = self._src(r.src)
        self._check_source(layer, src)
        if r.kind == "nmf":
            return self._png(("nmf", layer, src, unit), lambda: pages.nmf_png(ex, layer, src, unit)), png
        if r.kind == "w":
            if not 0 <= r.index < ex.src_channels(src):
                raise NotFound(f"input {r.index} is out of range: {src or 'the input'} has "
                               f"{ex.src_channels(src)} channels.")
            return self._png(("w", layer, src, unit, r.index),
                             lambda: pages.heatmap_png(ex, layer, src, unit, r.index)), png
        if r.kind in ("fmap", "factor"):
            if not any(f["index"] == r.index for f in ex.factors(layer, unit, src)):
                raise NotFound(f"unit {unit} of {layer!r} has no weight factor {r.index} from {src!r}.")
            if r.kind == "fmap":
                return self._png(("fmap", layer, src, unit, r.index),
                                 lambda: pages.fmap_png(ex, layer, src, unit, r.index)), png
            vec = pages.factor_vector(ex, layer, src, unit, r.index)
            return self.renders.get(self._key("factor", layer, src, unit, r.index), src, "direction", vec), png
        raise NotFound("No such page.")

    def _check_source(self, layer: str, src: str | None) -> None:
        if src is not None and not (self.ex._order[src] < self.ex._order[layer] and not src.startswith(layer + ".")
                                    and not layer.startswith(src + ".")):
            raise NotFound(f"{src!r} does not come before {layer!r}, so it is not a source of its weights.")

    def _png(self, parts: tuple, compute) -> bytes:
        return self.cache.get_or_compute(self._key(*parts), compute)

    def _unit_page(self, layer: str, unit: int, query: dict[str, list[str]]) -> str:
        ex = self.ex
        sources = ex.sources(layer)
        chosen = None
        if query.get("src"):
            chosen = query["src"][0]
            src = None if chosen == P.INPUT else chosen
            if src is not None and src not in ex._order:
                raise NotFound(f"Unknown source layer {chosen!r} for ?src=.")
            extra = ex.source_for(layer, src)
            sources = [extra] + [s for s in sources if s.layer != extra.layer]  # the chosen tab first
        key = self._key("data", layer, unit, [(s.layer, s.kind) for s in sources], ex.next_layer(layer))
        blob = self.cache.get_or_compute(
            key, lambda: json.dumps(pages.unit_data(ex, layer, unit, sources)).encode())
        data = json.loads(blob)
        cases = None
        if ex.config.cases:
            ckey = self._key("cases", layer, unit, ex.primary_source(layer))
            cases = json.loads(self.cache.get_or_compute(
                ckey, lambda: json.dumps(pages.cases_data(ex, layer, unit)).encode()))
        examples = None
        if ex.config.examples > 0:
            examples = json.loads(self.cache.get_or_compute(
                self._key("examples", layer, unit), lambda: json.dumps(pages.examples_data(ex, layer, unit)).encode()))
        return pages.unit_html(ex, data, "server", lambda _layer, _unit: True,
                               choices=ex.source_choices(layer), chosen=chosen, cases=cases, examples=examples)


# ------------------------------------------------------------------------------------------ server
class _Handler(BaseHTTPRequestHandler):
    server_version = "weightviz"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _not_allowed(self) -> None:
        body = b"<!doctype html><title>405</title><p>Method not allowed: this server only answers GET and HEAD.</p>"
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", _TYPES[".html"])
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True  # a request body, if any, is not read
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed  # noqa: N815

    def _answer(self, head: bool) -> None:
        app: ExplorerApp = self.server.app  # type: ignore[attr-defined]
        with app.request() as open_:
            status, ctype, body = app.handle(self.path) if open_ else app.unavailable()
            self._send(status, ctype, body, head)

    def _send(self, status: int, ctype: str, body: bytes, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        if getattr(self.server, "verbose", False):
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


class ExplorerServer(ThreadingHTTPServer):
    """A threading HTTP server around :class:`ExplorerApp`. ``url`` is where it listens."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: ExplorerApp, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False):
        self.app = app  # before binding: a failed bind calls server_close(), which closes the app
        self.verbose = verbose
        self.busy = 0
        try:
            super().__init__((host, port), _Handler)
        except (OSError, OverflowError) as e:  # port in use, an address not of this machine, a bad host name
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise WeightvizError(f"cannot listen on {host}:{port}: {reason}; choose another --port or --host") from None
        if verbose:
            app.renders.log = lambda line: print(f"weightviz serve: {line}", file=sys.stderr, flush=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def serve_forever(self, poll_interval: float = 0.1) -> None:
        """Serve until :meth:`shutdown`; the loop checks for it every ``poll_interval`` seconds."""
        super().serve_forever(poll_interval)

    def server_close(self) -> None:
        super().server_close()
        self.busy = self.app.close()  # requests still computing after the grace period


def make_server(
    model: nn.Module | str | Explorer | None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    layers: Any = None,
    units: Any = None,
    config: ExploreConfig | None = None,
    cache: str | Path | SqliteCache | None = None,
    render_cache: Any = True,
    verbose: bool = False,
) -> ExplorerServer:
    """An :class:`ExplorerServer` for ``model`` (not yet serving: call ``serve_forever()``, or use
    :func:`serve`). ``port=0`` picks a free port. ``cache``: SQLite file (default
    ``default_cache_dir()/explorer.sqlite``) or ``":memory:"``."""
    ex = model if isinstance(model, Explorer) else Explorer(model, layers, units, config=config,
                                                            render_cache=render_cache)
    if cache is not None and not isinstance(cache, SqliteCache):
        cache = SqliteCache(cache, ex.hash)
    server = ExplorerServer(ExplorerApp(ex, cache), host, port, verbose=verbose)
    for layer in ex.layers:  # trace the layer graph now (one forward) rather than in the first request
        ex.sources(layer)
    return server


def serve(model: nn.Module | str | Explorer | None, host: str = "127.0.0.1", port: int = 8000,
          announce=print, **kwargs) -> int:
    """Serve the explorer until Ctrl-C (SIGINT) or SIGTERM, then stop and return.

    In the main thread, the signals do not raise ``KeyboardInterrupt`` into whatever is running: their
    handler asks the serve loop to stop (from a helper thread, as ``shutdown()`` waits for the loop), the
    loop notices within 0.1 s, and :meth:`ExplorerServer.server_close` cancels the work in flight,
    waiting at most :data:`STOP_GRACE` seconds for it. Returns the number of requests still computing
    then (0 normally): their daemon threads may be inside torch, so a process that is about to exit
    should end with ``os._exit`` rather than interpreter shutdown (the CLI does).
    """
    server = make_server(model, host, port, **kwargs)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def stop(_signum, _frame) -> None:
            threading.Thread(target=server.shutdown, name="weightviz-stop", daemon=True).start()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, stop)
    try:
        announce(f"weightviz explorer for {server.app.ex.name} at {server.url} (Ctrl-C to stop)")
        server.serve_forever()
    except KeyboardInterrupt:  # not in the main thread, or a signal before the handlers were set
        pass
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return server.busy

