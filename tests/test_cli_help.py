"""Help that helps: every option of every command says its default (or that it is required or a
flag), bracketed text survives the help renderer, and each command has --version."""

import importlib
import subprocess

import pytest
import typer

from nanocode.common import version
from tests.conftest import BIN

CLIS = {"trainer": "trainer.cli", "factory": "factory.cli", "evals": "evals.cli", "nanocode": "agent.cli"}


def commands(cmd, path):
    if hasattr(cmd, "commands"):  # a group
        for name, sub in cmd.commands.items():
            yield from commands(sub, [*path, name])
    else:
        yield path, cmd


def test_every_option_says_its_default():
    silent = []
    for name, module in CLIS.items():
        for path, cmd in commands(typer.main.get_command(importlib.import_module(module).app), [name]):
            for p in cmd.params:
                if p.param_type_name != "option" or p.name == "help" or p.is_flag or p.required:
                    continue
                shown = p.default is not None and p.show_default is not False  # typer prints these itself
                if not shown and "[default:" not in (p.help or ""):
                    silent.append(f"{' '.join(path)} {p.opts[0]}")
    assert not silent, "options whose help does not say what happens without them:\n" + "\n".join(silent)


@pytest.mark.parametrize("argv, shown", [
    (["trainer", "run", "pretrain", "--help"], ["$NANOCODE_HOME/corpus", "[default: the preset's]", "dN for any depth"]),
    (["trainer", "run", "sft", "--help"], ["SOURCE[@WEIGHT]", "[default: 0.8 for sft, 0.1 for dpo]"]),
    (["factory", "build", "--help"], ["[default: soul/SOUL.md]", "[default: all]"]),
    (["evals", "agentic", "--help"], ["[default: serve RUN in-process]"]),
    (["nanocode", "chat", "--help"], ["[default: the first the server lists]"]),
])
def test_bracketed_help_survives_the_renderer(argv, shown):
    out = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}).stdout
    for text in shown:
        assert text in " ".join(out.split()), f"{' '.join(argv)}: {text!r} missing"


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_each_command_has_version(cli):
    r = subprocess.run([str(BIN / cli), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"nanocode {version()}"
