"""The CLI parser is built from one table (cli_commands.COMMANDS): every entry's --help renders and
lists each argument and help text the entry declares, and every entry either runs a handler or
chooses among its subcommands."""

from __future__ import annotations

import pytest

from presto_ray.cli import main
from presto_ray.cli_commands import COMMANDS, Command


def _entries(commands: tuple[Command, ...], prefix: tuple[str, ...] = ()):
    for command in commands:
        yield (*prefix, command.name), command
        yield from _entries(command.subcommands, (*prefix, command.name))


ENTRIES = dict(_entries(COMMANDS))


def _help(argv: list[str], capsys, monkeypatch) -> str:
    """``presto-ray ARGV --help`` on one unwrapped line per entry, whitespace collapsed."""
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping: declared texts appear whole
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def _text(text: str, formatted: bool = True) -> str:
    """A declared text as --help shows it: argparse %-formats help strings, not descriptions."""
    return " ".join((text.replace("%%", "%") if formatted else text).split())


def test_top_level_help_lists_every_command(capsys, monkeypatch):
    out = _help([], capsys, monkeypatch)
    assert "--verbose" in out
    for command in COMMANDS:
        assert f"{command.name} {_text(command.help)}" in out


@pytest.mark.parametrize("path", list(ENTRIES), ids=" ".join)
def test_help_of_every_command_lists_its_arguments(path, capsys, monkeypatch):
    command = ENTRIES[path]
    out = _help(list(path), capsys, monkeypatch)
    assert out.startswith(f"usage: presto-ray {' '.join(path)} ")
    if command.description:
        assert _text(command.description, formatted=False) in out
    assert command.args or command.subcommands
    for arg in command.args:
        positional = not arg.flags[0].startswith("-")
        names = [arg.options.get("metavar", arg.flags[0])] if positional else arg.flags
        for name in names:
            assert name in out, (path, name)
        if "help" in arg.options:
            assert _text(arg.options["help"]) in out, (path, arg.flags)
    for sub in command.subcommands:
        assert f"{sub.name} {_text(sub.help)}" in out
    # a command runs its handler, or picks one of its subcommands, never both
    assert (command.handler is None) == bool(command.subcommands)
