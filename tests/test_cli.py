"""The command line as a process: exit statuses (0 ok, 2 bad input or usage, 130 Ctrl-C, 1 only for bugs),
one-line messages, checks before any work. Behaviour that belongs to the process (exit codes, signals) is
tested through a subprocess; option validation in-process through ``main`` (it returns the exit status)."""

import os
import signal
import subprocess
import sys

import pytest
import torch

import weightviz.cli._common as common
from weightviz.cli import app, main

CLI = [sys.executable, "-m", "weightviz.cli"]
RANDOM_INIT = "no weights given: random initialization; pass torchvision:resnet18@file to load yours"


def run(*args, timeout=600):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("weightviz ")


def test_layers_lists_names(capsys):
    assert main(["layers", "torchvision:googlenet@random", "--weights-only"]) == 0
    out = capsys.readouterr().out
    assert "inception3a.branch2.1.conv" in out and "128x96x3x3" in out


def test_bad_model_exit2_one_line():
    r = run("layers", "torchvision:resnet17@random")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Did you mean 'resnet18'" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_weights_exit2(tmp_path):
    r = run("layers", f"timm:resnet18@{tmp_path / 'none.safetensors'}")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------- usage errors
def test_no_arguments_prints_the_help_and_exits_2():
    """click's convention (no_args_is_help): the help, on stderr, exit status 2."""
    r = run()
    assert r.returncode == 2
    assert r.stderr.startswith("Usage: weightviz [OPTIONS] COMMAND") and "Commands" in r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["nosuchcmd"], "No such command 'nosuchcmd'"),
    (["tail", "efficientnet_lite0", "blocks.6.0.conv_pwl", "-1"], "No such option: -1"),
    (["figure", "top-inputs", "efficientnet_lite0", "blocks.3.0", "abc", "-o", "{out}"], "'unit'"),
    (["render", "efficientnet_lite0", "blocks.4.0", "0:4", "-o", "{out}", "--steps", "0"], "'--steps'"),
])
def test_usage_errors_print_the_usage_line_and_one_error_line_exit_2(tmp_path, args, message):
    r = run(*[a.format(out=tmp_path / "o.png") for a in args])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith("Usage: weightviz") and lines[1].startswith("error: ") and message in lines[1]
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.png").exists()


def _no_model_loading(monkeypatch):
    import importlib
    import pkgutil

    import weightviz.cli as cli

    # import every CLI module first: one imported while `load` is patched would keep the patch for good
    for info in pkgutil.iter_modules(cli.__path__):
        if info.name != "__main__":
            importlib.import_module(f"weightviz.cli.{info.name}")

    def refuse(spec):
        raise AssertionError(f"the model {spec!r} was loaded before the input was checked")

    monkeypatch.setattr(common, "load", refuse)
    for name in list(sys.modules):  # the command modules imported `load` by name
        if name.startswith("weightviz.cli.") and hasattr(sys.modules[name], "load"):
            monkeypatch.setattr(sys.modules[name], "load", refuse)


M, L = "efficientnet_lite0", "blocks.3.0"


@pytest.mark.parametrize("args", [
    ["render", M, L, "0:4", "-o", "{png}", "--steps", "0"],
    ["render", M, L, "0:4", "-o", "{png}", "--ncols", "0"],
    ["render", M, L, "0:4", "-o", "{png}", "--batch", "0"],
    ["render", M, L, "0:4", "-o", "{png}", "--size", "100000"],
    ["render", M, L, "0:4", "-o", "{png}", "--size", "8"],
    ["figure", "top-inputs", M, L, "5", "-o", "{png}", "--top", "0"],
    ["figure", "top-inputs", M, L, "5", "-o", "{png}", "--steps", "0"],
    ["figure", "top-inputs", M, L, "5", "-o", "{png}", "--size", "2000"],
    ["figure", "spatial", M, L, "5", "-o", "{png}", "--max-size", "0"],
    ["figure", "factors", M, L, "0:4", "-o", "{png}", "--factors", "0"],
    ["figure", "paths", M, "blocks.2.0", L, "blocks.4.0", "1", "2", "-o", "{png}", "--routes", "0"],
    ["nmf", M, L, "-o", "{png}", "--factors", "0"],
    ["expand", M, "blocks.2.0", L, "--top", "0"],
    ["expand", M, "blocks.2.0", L, "--input-size", "0"],
    ["banding", M, "--n-perm", "0"],
    ["tail", M, "blocks.6.0.conv_pwl", "3", "--top", "0"],
    ["tail", M, "blocks.6.0.conv_pwl", "3", "--draws", "0"],
    ["explore", M, "-o", "{site}", "--jobs", "0"],
    ["explore", M, "-o", "{site}", "--steps", "0"],
    ["explore", M, "-o", "{site}", "--top", "0"],
    ["explore", M, "-o", "{site}", "--sources", "-1"],
    ["serve", M, "--steps", "0"],
    # no step count runs for ever: 20 digits are a usage error, not a silent endless run
    ["render", M, L, "0:4", "-o", "{png}", "--steps", "99999999999999999999"],
    ["explore", M, "-o", "{site}", "--steps", "99999999999999999999"],
    ["serve", M, "--steps", "1000001"],
    ["cases", M, "blocks.2.0", L, "5", "-o", "{png}", "--steps", "99999999999999999999"],
    ["best-case", M, "blocks.2.0", L, "5", "-o", "{png}", "--steps", "99999999999999999999"],
    ["best-case", M, "blocks.2.0", L, "5", "-o", "{png}", "--size", "100000"],
    ["figure", "top-inputs", M, L, "5", "-o", "{png}", "--steps", "99999999999999999999"],
])
def test_counts_of_zero_are_refused_not_replaced_by_defaults(tmp_path, capsys, monkeypatch, args):
    _no_model_loading(monkeypatch)
    args = [a.format(png=tmp_path / "o.png", site=tmp_path / "site") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("Usage: weightviz") and err[1].startswith("error: Invalid value")
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "site").exists()


def _commands(group, path=()):
    import typer.main

    cmd = typer.main.get_command(group) if not hasattr(group, "commands") else group
    for name, sub in cmd.commands.items():
        if hasattr(sub, "commands"):
            yield from _commands(sub, (*path, name))
        else:
            yield (*path, name), sub


def test_every_count_option_of_every_command_has_a_lower_bound():
    """New commands inherit the rule: an integer option is a count or size (bounded below: use
    ``_common.count_option`` / ``size_option``), except seeds and ports."""
    from weightviz.cli import _register

    _register()
    unbounded = []
    for path, cmd in _commands(app):
        for p in cmd.params:
            if p.param_type_name != "option" or p.name in ("seed", "port", "help", "version"):
                continue
            if p.type_descriptor.annotation is int and p.min is None:
                unbounded.append(f"{' '.join(path)} --{p.name}")
    assert unbounded == []


def test_every_steps_option_has_an_upper_bound_and_every_model_command_a_device_option():
    """`--steps` is bounded above (1..MAX_STEPS) everywhere; every command that loads a MODEL takes
    `--device` (the README says every command does)."""
    from weightviz.cli import _register
    from weightviz.utils.limits import MAX_STEPS

    _register()
    unbounded, no_device = [], []
    for path, cmd in _commands(app):
        names = {p.name for p in cmd.params}
        if "model" in names and "device" not in names:
            no_device.append(" ".join(path))
        for p in cmd.params:
            if p.name == "steps" and p.max != MAX_STEPS:
                unbounded.append(" ".join(path))
    assert no_device == [] and unbounded == []


@pytest.mark.parametrize("command", [
    ["examples", M, L, "5", "-o", "{png}"],
    ["cases", M, "blocks.2.0", L, "5", "-o", "{png}"],
    ["best-case", M, "blocks.2.0", L, "5", "-o", "{png}"],
])
def test_data_commands_take_device_and_refuse_a_bad_one_before_loading(tmp_path, capsys, monkeypatch, command):
    _no_model_loading(monkeypatch)
    args = [a.format(png=tmp_path / "o.png") for a in command]
    assert main([*args, "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown device 'tpu'") and err.count("\n") == 0, err
    assert not (tmp_path / "o.png").exists()


def test_a_directory_given_as_weights_file_says_it_is_a_directory(tmp_path):
    (tmp_path / "w.safetensors").mkdir()
    r = run("layers", f"torchvision:resnet18@{tmp_path / 'w.safetensors'}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "is a directory" in r.stderr and "not found" not in r.stderr


# ------------------------------------------------------------------------ bad input before any work
@pytest.mark.parametrize("args, message", [
    (["render", M, L, "0:5:0", "-o", "{png}"], "step must not be 0"),
    (["render", M, L, "::0", "-o", "{png}"], "step must not be 0"),
    (["render", M, L, "0:4", "-o", "{dir}"], "is a directory"),  # d.png: a bulk render needs a suffix-free name
    (["render", M, L, "0:4", "-o", "{jpg}"], "must end in one of .png, .svg"),
    (["render", M, L, "0:4", "-o", "{missing}"], "does not exist"),
    (["figure", "top-inputs", M, L, "5", "-o", "{dir}"], "is a directory"),
    (["nmf", M, L, "-o", "{dir}"], "is a directory"),
    (["expand", M, "blocks.2.0", L, "-o", "{dir}"], "is a directory"),
    (["expand", M, "blocks.2.0", L, "--save", "{dir}"], "is a directory"),
    (["banding", M, "-o", "{dir}"], "is a directory"),
    (["tail", M, "blocks.6.0.conv_pwl", "3", "-o", "{dir}"], "is a directory"),
])
def test_outputs_and_units_are_checked_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    (tmp_path / "d.png").mkdir()
    (tmp_path / "d.safetensors").mkdir()
    if "step must not be 0" not in message:  # (units are read against the layer, after loading)
        _no_model_loading(monkeypatch)
    save = "--save" in args
    args = [a.format(png=tmp_path / "o.png", dir=tmp_path / ("d.safetensors" if save else "d.png"),
                     jpg=tmp_path / "o.jpg", missing=tmp_path / "nope" / "o.png") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "o.png").exists()


def test_serve_with_a_corrupt_db_names_db_before_loading(tmp_path, capsys, monkeypatch):
    _no_model_loading(monkeypatch)
    db = tmp_path / "corrupt.sqlite"
    db.write_bytes(b"this is not an sqlite database" * 100)
    assert main(["serve", M, "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0
    assert "--db" in err and "--cache" not in err


# --------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_during_a_render_exits_130_with_one_line_and_no_file(tmp_path):
    out = tmp_path / "o.png"
    proc = subprocess.Popen(
        [*CLI, "render", "torchvision:resnet18@random", "layer1.0", "0:4", "-o", str(out), "--size", "64",
         "--steps", "1000000", "--no-cache"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the random-init line comes once the model is loaded: the process is about to render
        assert proc.stderr.readline().strip() == RANDOM_INIT
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip() == "aborted"
    assert not out.exists() and not any(p.name.startswith(".o.png") for p in tmp_path.iterdir())


# ------------------------------------------------------------------------------------ weights files
def test_random_init_says_so_in_exactly_one_line():
    r = run("layers", "torchvision:resnet18@random", "--blocks")
    assert r.returncode == 0 and r.stderr == RANDOM_INIT + "\n"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("name, message", [
    ("legacy_code.pth", "refusing to load"),  # a legacy-format (non-zip) pickle carrying code
    ("whole_model.pth", "torchvision.models.resnet.ResNet"),
    ("random.pth", "is not a weights file"),
    ("notes.txt", "is not a weights file"),
])
def test_weights_file_messages_are_one_plain_line(tmp_path, name, message):
    import torchvision

    path = tmp_path / name
    if name == "legacy_code.pth":
        torch.save({"w": _Evil()}, path, _use_new_zipfile_serialization=False)
    elif name == "whole_model.pth":
        torch.save(torchvision.models.resnet18(), path)
    elif name == "random.pth":
        path.write_bytes(bytes(range(7, 256)) * 20)
    else:
        path.write_text("hello\n")
    r = run("layers", f"torchvision:resnet18@{path}")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    assert "weights_only" not in r.stderr and "\x1b" not in r.stderr and "pwned" not in r.stdout + r.stderr
