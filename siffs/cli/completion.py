"""``siffs completion bash|zsh``: shell completion scripts generated from the argument parser.

The scripts are tables (commands, options, which option takes what value, what each positional
is) with a small fixed driver, so every command and option the parser knows is completed and
nothing else. Images, key files and other paths complete as file names, mount points as
directories; object IDs, paths inside an image and free-form values complete as nothing.

Install: ``siffs completion bash > ~/.local/share/bash-completion/completions/siffs`` or
``siffs completion zsh > ~/.zfunc/_siffs`` (a directory on ``$fpath``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from enum import Enum

from siffs.cli import parserinfo
from siffs.cli.parserinfo import Command


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


def _choices(action: argparse.Action) -> list[str]:
    return [str(c) for c in action.choices or ()]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("completion", help="print a bash or zsh completion script for siffs")
    p.add_argument("shell", choices=sorted(GENERATORS), help="the shell to complete for")
    p.set_defaults(func=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> None:
    # Imported here: main imports this module to register the command.
    from siffs.cli.main import build_parser  # noqa: PLC0415

    print(GENERATORS[args.shell](build_parser()), end="")


# -- bash -------------------------------------------------------------------------------------


def _sh_quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def _bash_value(action: argparse.Action) -> str:
    """``KIND [CHOICE...]``, split into words by the driver (choices are plain words)."""
    return " ".join([kind_of(action).value, *_choices(action)])


def _bash_case(function: str, subject: str, doc: str, cases: list[tuple[str, str]]) -> str:
    lines = [f"{function}() {{  # {doc}", f'    case "{subject}" in']
    # printf, not echo: an option list starting with -e or -n would be taken as echo's options.
    lines += [
        f"        {_sh_quote(key) if '*' not in key else key}) printf '%s\\n' {_sh_quote(value)} ;;"
        for key, value in cases
    ]
    lines += ["    esac", "}", ""]
    return "\n".join(lines)


_BASH_DRIVER = r"""_siffs_complete_kind() {  # complete $cur as a value of the given kind
    case $1 in
        file) compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
        dir) compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -d -- "$cur") ;;
        words) shift; mapfile -t COMPREPLY < <(compgen -W "$*" -- "$cur") ;;
        *) COMPREPLY=() ;;
    esac
}

_siffs() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local cmd="" npos=0 i=1 word subs
    # Walk the words before the cursor: command names, options (and their values), positionals.
    while ((i < COMP_CWORD)); do
        word=${COMP_WORDS[i]}
        if [[ $word == -* ]]; then
            [[ $word != *=* && -n $(_siffs_option_value "$cmd" "$word") ]] && ((i++))
        elif ((npos == 0)) && [[ " $(_siffs_subcommands "$cmd") " == *" $word "* ]]; then
            cmd=${cmd:+$cmd }$word
        else
            ((npos++))
        fi
        ((i++))
    done
    if [[ $prev == -* && -n $(_siffs_option_value "$cmd" "$prev") ]]; then
        _siffs_complete_kind $(_siffs_option_value "$cmd" "$prev")
        return
    fi
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_siffs_options "$cmd")" -- "$cur")
        return
    fi
    subs=$(_siffs_subcommands "$cmd")
    if [[ -n $subs ]] && ((npos == 0)); then
        mapfile -t COMPREPLY < <(compgen -W "$subs" -- "$cur")
        return
    fi
    _siffs_complete_kind $(_siffs_positional "$cmd" "$npos")
}

complete -F _siffs siffs
"""


def bash_script(parser: argparse.ArgumentParser) -> str:
    commands = parserinfo.walk(parser)
    subs = [(c.name, " ".join(parserinfo.subcommands(c.parser))) for c in commands]
    opts = [
        (c.name, " ".join(o for a in parserinfo.options(c.parser) for o in a.option_strings))
        for c in commands
    ]
    values = [
        (f"{c.name}|{o}", _bash_value(a))
        for c in commands
        for a in parserinfo.options(c.parser)
        if parserinfo.takes_value(a)
        for o in a.option_strings
    ]
    positional: list[tuple[str, str]] = []
    for c in commands:
        args = parserinfo.positionals(c.parser)
        positional += [(f"{c.name}|{i}", _bash_value(a)) for i, a in enumerate(args)]
        if args and parserinfo.is_repeating(args[-1]):
            positional.append((f"{_sh_quote(c.name + '|')}*", _bash_value(args[-1])))
    return "\n".join(
        [
            "# bash completion for siffs; generated by 'siffs completion bash' from its argument parser.",
            "",
            _bash_case("_siffs_subcommands", "$1", "$1: command words; the subcommands there", subs),
            _bash_case("_siffs_options", "$1", "$1: command words; its options", opts),
            _bash_case("_siffs_option_value", "$1|$2", "$1 $2: command, option; its value's kind", values),
            _bash_case(
                "_siffs_positional", "$1|$2", "$1 $2: command, index; that positional's kind", positional
            ),
            _BASH_DRIVER,
        ]
    )


# -- zsh --------------------------------------------------------------------------------------


def _zsh_escape(text: str, specials: str) -> str:
    """Backslash the characters that are special in an _arguments spec part."""
    return re.sub(f"([{re.escape(specials)}])", r"\\\1", text)


def _zsh_action(action: argparse.Action) -> str:
    kind = kind_of(action)
    if kind is Kind.WORDS:
        return "(" + " ".join(_zsh_escape(c, " ()\\") for c in _choices(action)) + ")"
    return {Kind.FILE: "_files", Kind.DIR: "_files -/", Kind.NONE: " "}[kind]


def _zsh_value(action: argparse.Action) -> str:
    return f":{_zsh_escape(parserinfo.metavar(action), ':')}:{_zsh_action(action)}"


def _zsh_option_specs(action: argparse.Action) -> list[str]:
    help_text = _zsh_escape(action.help or "", "[]")
    value = _zsh_value(action) if parserinfo.takes_value(action) else ""
    repeat = "*" if isinstance(action, argparse._AppendAction) else ""
    exclude = "" if repeat or len(action.option_strings) < 2 else f"({' '.join(action.option_strings)})"
    return [f"{exclude}{repeat}{o}[{help_text}]{value}" for o in action.option_strings]


def _zsh_positional_specs(args: list[argparse.Action]) -> list[str]:
    specs = []
    for index, action in enumerate(args, 1):
        if parserinfo.is_repeating(action):
            specs.append(f"*{_zsh_value(action)}")
        else:
            optional = ":" if action.nargs == "?" else ""
            specs.append(f"{index}{optional}{_zsh_value(action)}")
    return specs


def _zsh_function_name(command: Command) -> str:
    return "_siffs" + "".join("__" + re.sub(r"\W", "_", w) for w in command.words)


def _zsh_function(command: Command) -> str:
    specs = [s for a in parserinfo.options(command.parser) for s in _zsh_option_specs(a)]
    children = parserinfo.subcommands(command.parser)
    if children:
        specs += [": :->command", "*:: :->args"]
    else:
        specs += _zsh_positional_specs(parserinfo.positionals(command.parser))
    body = [f"{_zsh_function_name(command)}() {{"]
    if children:
        body += ["    local curcontext=$curcontext state line", "    typeset -A opt_args"]
    body.append("    _arguments -s -S" + (" -C" if children else "") + " \\")
    body += [f"        {_sh_quote(spec)} \\" for spec in specs]
    body[-1] = body[-1].removesuffix(" \\")
    if children:
        helps = parserinfo.summaries(command.parser)
        described = [_sh_quote(f"{name}:{helps.get(name, '')}") for name in children]
        title = _sh_quote(" ".join(("siffs", *command.words, "command")))
        body += [
            "    case $state in",
            "        command)",
            f"            local -a commands=({' '.join(described)})",
            f"            _describe -t commands {title} commands ;;",
            "        args)",
            "            case $words[1] in",
        ]
        for name in children:
            child = Command((*command.words, name), children[name], "")
            body.append(f"                {_sh_quote(name)}) {_zsh_function_name(child)} ;;")
        body += ["            esac ;;", "    esac"]
    body += ["}", ""]
    return "\n".join(body)


def zsh_script(parser: argparse.ArgumentParser) -> str:
    functions = [_zsh_function(c) for c in parserinfo.walk(parser)]
    return "\n".join(
        [
            "#compdef siffs",
            "# zsh completion for siffs; generated by 'siffs completion zsh' from its argument parser.",
            "",
            *functions,
            '_siffs "$@"',
            "",
        ]
    )


GENERATORS: dict[str, Callable[[argparse.ArgumentParser], str]] = {"bash": bash_script, "zsh": zsh_script}
