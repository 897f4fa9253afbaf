"""A griffe extension for the API reference: weightviz's docstrings are written in a light reST style
(``code``, :func:`x` roles, ``>>>`` examples, ``====`` simple tables, ``::`` literal blocks). mkdocstrings
renders docstrings as Markdown, so this rewrites them on load, without touching the source:

- ``>>>`` example blocks (and their output lines) become fenced ``pycon`` code blocks;
- reST simple tables (``=====  =====`` rules) and ``::`` literal blocks become fenced ``text`` blocks;
- roles :func:`x`, :class:`x`, :mod:`x`, :meth:`x`, :data:`x`, :attr:`x` become inline code ``x``.

Loaded by mkdocs.yml (``extensions: [docs/_gen/griffe_rst.py:RstToMarkdown]``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|data|attr|exc|obj|const):`~?\.?([^`]+)`")
_RULE = re.compile(r"^\s*=+(\s+=+)+\s*$")


def rst_to_markdown(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if stripped.startswith(">>>"):                      # doctest block: up to the next blank line
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].strip())
                i += 1
            block = [re.sub(r"\s+#\s*doctest:.*$", "", b) for b in block]
            out += [indent + "```pycon", *(indent + b for b in block), indent + "```"]
            continue
        if _RULE.match(line):                               # simple table: up to its closing rule
            block = [line]
            i += 1
            rules = 1
            while i < len(lines):
                block.append(lines[i])
                if _RULE.match(lines[i]):
                    rules += 1
                    if rules == 3:
                        i += 1
                        break
                i += 1
            out += ["", indent + "```text", *(b[len(indent):] if b.startswith(indent) else b for b in block),
                    indent + "```", ""]
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):   # literal block after "text::"
            out.append(line[:-1] if not stripped == "::" else "")
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or
                                      len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                deeper = min(len(b) - len(b.lstrip()) for b in block if b.strip())
                out += ["", indent + "```text", *(indent + b[deeper:] for b in block), indent + "```", ""]
            continue
        out.append(_ROLE.sub(lambda m: f"``{m.group(1)}``", line))
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite every loaded docstring from weightviz's reST style to Markdown (see the module docstring)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # griffe >= 1.x / 2.x
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
