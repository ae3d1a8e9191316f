"""``siffs completion bash|zsh``: shell completion scripts generated from the argument parser.

shtab writes the scripts from the parser, so every command and option the parser knows is
completed and nothing else. What shtab cannot know is what a value *is*: this module tells it
(``kind_of``). Images, key files and other paths complete as file names, mount points as
directories; object IDs, paths inside an image and free-form values complete as nothing.

Install: ``siffs completion bash > ~/.local/share/bash-completion/completions/siffs`` or
``siffs completion zsh > ~/.zfunc/_siffs`` (a directory on ``$fpath``).
"""

from __future__ import annotations

import argparse
from enum import Enum

import shtab

from siffs.cli import parserinfo


class Kind(Enum):
    """What a value or positional argument is, for completion."""

    FILE = "file"
    DIR = "dir"
    WORDS = "words"  #: one of the action's choices
    NONE = "none"  #: no useful completion: numbers, names, paths inside an image


#: Values that are not host files (by metavar or destination name, lower case).
_NOT_FILES = frozenset(
    {
        "id", "n", "a", "options", "path", "paths", "command", "fingerprint", "name", "shell",
        "k=v[,k=v]", "src[:dst]", "src[:dst[:ro|rw]]", "pwd", "datatype", "parttype", "partfs",
        "partarch", "signhash", "signentity", "sbomformat", "filename", "arch",
    }
)  # fmt: skip
_DIRS = frozenset({"mount_point", "bundle_dir", "dir"})
#: shtab's completion for each kind; choices complete as themselves without one.
_SHTAB = {Kind.FILE: shtab.FILE, Kind.DIR: shtab.DIRECTORY, Kind.NONE: {"bash": "", "zsh": ""}}
SHELLS = ("bash", "zsh")


def kind_of(action: argparse.Action) -> Kind:
    if action.choices:
        return Kind.WORDS
    if action.type is int:
        return Kind.NONE
    names = {action.dest.lower(), parserinfo.metavar(action).lower()}
    if names & _DIRS:
        return Kind.DIR
    if names & _NOT_FILES:
        return Kind.NONE
    return Kind.FILE


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("completion", help="print a bash or zsh completion script for siffs")
    p.add_argument("shell", choices=SHELLS, help="the shell to complete for")
    p.set_defaults(func=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> None:
    # Imported here: main imports this module to register the command.
    from siffs.cli.main import build_parser  # noqa: PLC0415

    print(script(build_parser(), args.shell), end="")


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (its function is ``_shtab_siffs``)."""
    for command in parserinfo.walk(parser):
        for action in [*parserinfo.options(command.parser), *parserinfo.positionals(command.parser)]:
            kind = kind_of(action)
            if parserinfo.takes_value(action) and kind is not Kind.WORDS:
                action.complete = _SHTAB[kind]  # type: ignore[attr-defined]  # shtab's documented hook
    text: str = shtab.complete(parser, shell)
    return text
