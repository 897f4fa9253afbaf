"""The weight explorer: browse a model neuron by neuron along its strongest connections.

- :func:`build_site` writes a static site (plain HTML/CSS/JS + PNG, opens from disk): an index of
  layers, a page per layer (FV and NMF image of every unit) and per unit (top inputs, direct and
  expanded from earlier layers, with heatmaps and FVs; top outputs; weight factors; banding score),
  every input/output linking to its own page. Built as independent jobs run by an executor (this
  process, local processes, or a Ray cluster: ``executor="ray"``); resumable.
- :func:`render_dir`: FVs of many units, one PNG per unit in a directory, on the same executors.
- :func:`serve` / :func:`make_server` serve the same pages live, computed on demand and cached in SQLite.

>>> import weightviz as wv
>>> from weightviz.explore import build_site
>>> report = build_site("lite0", "site/", layers="blocks.1.0,blocks.2.0,blocks.3.0", units="0:8")  # doctest: +SKIP
>>> print(report.index)                                                                          # doctest: +SKIP
site/index.html

Command line: ``weightviz explore MODEL -o site/`` and ``weightviz serve MODEL``.
"""

from __future__ import annotations

from .bulk import RenderDirReport, render_dir
from .data import ExploreConfig, Explorer, default_layers, explorable
from .jobs import Executor, Job, ProcessExecutor, SerialExecutor
from .ray_executor import RayExecutor
from .server import ExplorerApp, ExplorerServer, make_server, serve
from .site import BuildReport, build_site, site_executor
from .store import SqliteCache

__all__ = [
    "BuildReport",
    "Executor",
    "ExploreConfig",
    "Explorer",
    "ExplorerApp",
    "ExplorerServer",
    "Job",
    "ProcessExecutor",
    "RayExecutor",
    "RenderDirReport",
    "SerialExecutor",
    "SqliteCache",
    "build_site",
    "default_layers",
    "explorable",
    "make_server",
    "render_dir",
    "serve",
    "site_executor",
]
