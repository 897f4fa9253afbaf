"""Generate the performance page from README.md's summary table and BENCHMARKS.md (run by mkdocs-gen-files).

BENCHMARKS.md is included whole, its headings moved one level down and its image links pointed at the
site's copies of docs/*.png; links to files of the repository that are not pages become code spans.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _section(text: str, heading: str) -> str:
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    return m.group(1).strip() if m else ""


def _links(text: str) -> str:
    text = re.sub(r"\]\(docs/([^)]+)\)", r"](\1)", text)                # docs/x.png -> x.png (site root)
    text = re.sub(r"\]\(BENCHMARKS\.md(#[^)]*)?\)", lambda m: f"]({m.group(1) or '#benchmarks'})", text)
    # any other relative link to a repository file (not http, not an anchor, not a page image): plain code
    text = re.sub(r"\[([^\]]+)\]\((?!https?:|#|[^)]*\.png)([^)]+)\)", r"\1 (`\2`)", text)
    return text


def performance_page() -> str:
    readme = (ROOT / "README.md").read_text()
    bench = (ROOT / "BENCHMARKS.md").read_text()
    summary = _section(readme, "Performance")
    bench = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", bench, flags=re.M)   # one level down
    bench = bench.replace("## Benchmarks", "## Benchmarks { #benchmarks }", 1)
    return "\n".join(["# Performance", "", _links(summary), "", "The full tables follow: this is "
                      "`BENCHMARKS.md` of the repository, included when the site was built.", "",
                      _links(bench)])


def main() -> None:
    import mkdocs_gen_files

    with mkdocs_gen_files.open("performance.md", "w") as f:
        f.write(performance_page())


if __name__ in ("__main__", "<run_path>"):
    main()
