"""Read the argparse parser back: the commands, options and arguments it defines.

Completion scripts, man pages and the mount(8) call detection are all generated from the one
parser ``main.build_parser`` makes, so they cannot drift from it. argparse has no public API to
list what a parser holds; ``_actions`` is the attribute every introspecting tool (sphinx-argparse,
shtab, argcomplete) reads, and it is kept in this one module.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name, in definition order (empty for a leaf command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def summaries(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line help of each subcommand (as ``siffs --help`` lists them)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {}


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Optional arguments (``-o``, ``--key`` ...), help included, hidden ones left out."""
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


def positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Positional arguments, without the subcommand slot."""
    return [
        a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
    ]


def takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def metavar(action: argparse.Action) -> str:
    """How usage lines show the action's value: ``FILE``, ``ID``, ``image``, ``{bash,zsh}`` ..."""
    if isinstance(action.metavar, str):
        return action.metavar
    if action.choices:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


class Command(NamedTuple):
    """One command of the tree: its words (``("key", "import")``) and parser."""

    words: tuple[str, ...]
    parser: argparse.ArgumentParser
    summary: str

    @property
    def name(self) -> str:
        return " ".join(self.words)


def walk(parser: argparse.ArgumentParser) -> list[Command]:
    """Every command below ``parser`` (depth first, in definition order), the root first."""
    found = [Command((), parser, parser.description or "")]

    def visit(p: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        helps = summaries(p)
        for name, child in subcommands(p).items():
            found.append(Command((*words, name), child, helps.get(name, "")))
            visit(child, (*words, name))

    visit(parser, ())
    return found
