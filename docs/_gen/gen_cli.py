"""Generate the command-line reference from every command's ``--help`` (run by mkdocs-gen-files).

The commands are found by walking the typer app of ``weightviz.cli`` (after its public entry point
``main`` has registered them); each help text is the real output of ``weightviz COMMAND --help``, run in a
subprocess at a fixed width, so the page is never edited by hand and cannot drift from the code.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

WIDTH = 100
_RUN = "import sys; from weightviz.cli import main; sys.exit(main(sys.argv[1:]))"


def command_paths() -> list[list[str]]:
    """``[[], ["layers"], ["figure"], ...]``: the root and every (sub)command, in the app's order."""
    import typer.main

    import weightviz.cli as cli

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli.main(["--help"])  # registers every command module
    out: list[list[str]] = []

    def walk(cmd, path: list[str]) -> None:
        out.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            if not getattr(sub, "hidden", False):
                walk(sub, [*path, name])

    walk(typer.main.get_command(cli.app), [])
    return out


def help_text(path: list[str]) -> str:
    env = {**os.environ, "COLUMNS": str(WIDTH), "LINES": "50", "NO_COLOR": "1", "TERM": "dumb",
           "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
    r = subprocess.run([sys.executable, "-c", _RUN, *path, "--help"], capture_output=True, text=True, env=env,
                       timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"weightviz {' '.join(path)} --help exited {r.returncode}: {r.stderr.strip()}")
    return "\n".join(line.rstrip() for line in r.stdout.strip("\n").splitlines())


def cli_page() -> str:
    paths = command_paths()
    with ThreadPoolExecutor(4) as pool:
        helps = list(pool.map(help_text, paths))
    lines = ["# Command line", "",
             "The `weightviz` command (installed with the package; also `python -m weightviz`). This page is "
             "generated at build time from each command's `--help`.", "",
             "Bad input (unknown model or layer, unit out of range, missing or unsafe weights file, unwritable "
             "output) prints one line and exits 2 before any work; a usage error prints the usage line and one "
             "error line (exit 2); Ctrl-C prints `aborted` and exits 130.", "",
             "Commands: " + " · ".join(f"[`{' '.join(p)}`](#{'-'.join(p)})" for p in paths if p), ""]
    for path, text in zip(paths, helps):
        title = " ".join(["weightviz", *path])
        ident = "-".join(path) if path else "weightviz"
        lines += [f"## `{title}` {{ #{ident} }}", "", "```text", f"$ {title} --help", text, "```", ""]
    return "\n".join(lines)


def main() -> None:
    import mkdocs_gen_files

    with mkdocs_gen_files.open("cli.md", "w") as f:
        f.write(cli_page())


if __name__ in ("__main__", "<run_path>"):
    main()
