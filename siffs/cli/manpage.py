"""Man pages in roff, generated from the argument parser: ``siffs.1`` and ``siffs-COMMAND.1``.

``contrib/gen-man.py`` writes them into ``contrib/man/``, where they are committed; a test
regenerates them and fails when the committed pages differ, so they follow the parser. The
exit codes come from ``exitcodes.ExitCode``, with the ``#:`` comment above each code as its
description: one table for ``--help``, the man page and scripts.
"""

from __future__ import annotations

import argparse
import inspect
import re

from siffs import __version__
from siffs.cli import exitcodes, parserinfo
from siffs.cli.exitcodes import ExitCode
from siffs.cli.parserinfo import Command

#: Prose that the parser cannot hold, by command: roff, added after the options.
_EXTRA: dict[str, str] = {
    "mount": r""".SH "MOUNT(8) AND FSTAB"
With \fBmount.fuse.siffs\fR linked into \fI/sbin\fR by \fBsiffs setup mount\-helper\fR,
\fBmount \-t fuse.siffs\fR \fIIMAGE\fR \fIDIR\fR \fB\-o\fR \fIOPTIONS\fR and lines such as
.PP
.EX
/data/tools.sif /mnt/tools fuse.siffs ro,noauto,user,allow_other,x\-systemd.automount 0 0
.EE
.PP
in \fI/etc/fstab\fR mount through \fBsiffs mount\fR.
Without the helper, \fBmount.fuse3\fR(8) runs \fBsiffs\fR itself for type \fBfuse.siffs\fR,
or for type \fBfuse\fR with source \fBsiffs#\fR\fIIMAGE\fR.
mount(8)'s generic options (\fBro\fR, \fBnoauto\fR, \fBuser\fR, \fBnofail\fR, \fBx\-*\fR, ...)
are accepted and left to mount(8) and systemd; with \fBrw\fR (mount(8)'s default when
\fBro\fR is not given) the mount is made read-only all the same, with a warning.
The mount is always \fBnosuid\fR and \fBnodev\fR.
Besides the \fB\-o\fR options above, fstab lines may say \fBkey=\fR\fIFILE\fR[\fB:\fR\fIFILE\fR...]
(as \fB\-\-key\fR), \fBallow_unsigned\fR (as \fB\-\-allow\-unsigned\fR) and
\fBpartition=\fR\fIID\fR|\fBall\fR (as \fB\-\-partition\fR or \fB\-\-all\fR).
\fBumount\fR \fIDIR\fR unmounts.
""",
}

#: Where siffs keeps things, for siffs(1).
_MAIN_FILES = r""".SH ENVIRONMENT
.TP
.B SIFFS_DEBUG
When set, internal errors show a Python traceback.
.TP
.BR XDG_CONFIG_HOME ", " XDG_CACHE_HOME ", " XDG_STATE_HOME ", " XDG_RUNTIME_DIR
Where the files below are (defaults: \fI~/.config\fR, \fI~/.cache\fR, \fI~/.local/state\fR).
.SH FILES
.TP
.I $XDG_CONFIG_HOME/siffs/keys/
The trusted keyring (\fBsiffs key\fR).
.TP
.I $XDG_CACHE_HOME/siffs/blocktables/
Verified block tables, so that mounting an unchanged image again does not hash it again.
.TP
.I $XDG_STATE_HOME/siffs/logs/
One log per mount point, written by the mount daemon.
.TP
.I $XDG_RUNTIME_DIR/siffs/mounts/
What each live mount daemon serves (\fBsiffs mounts\fR).
"""

_SECTION = 1
_SOURCE = f"siffs {__version__}"


def escape(text: str) -> str:
    """Text as roff shows it literally: backslashes, hyphens (minus signs) and leading dots."""
    text = text.replace("\\", r"\e").replace("-", r"\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.MULTILINE)


def _title(words: tuple[str, ...]) -> str:
    return "-".join(("siffs", *words))


def _header(words: tuple[str, ...], summary: str) -> list[str]:
    title = _title(words)
    return [
        f'.TH {escape(title.upper())} {_SECTION} "" "{_SOURCE}" "User Commands"',
        ".SH NAME",
        f"{escape(title)} \\- {escape(summary)}",
    ]


def _usage(parser: argparse.ArgumentParser) -> str:
    """argparse's own usage line, unwrapped (a fixed width keeps the pages reproducible)."""
    formatter = argparse.HelpFormatter(parser.prog, width=10_000)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip()


def _option_tag(action: argparse.Action) -> str:
    value = f" \\fI{escape(parserinfo.metavar(action))}\\fR" if parserinfo.takes_value(action) else ""
    return ", ".join(f"\\fB{escape(o)}\\fR" for o in action.option_strings) + value


def _items(tags_and_helps: list[tuple[str, str]]) -> list[str]:
    lines = []
    for tag, help_text in tags_and_helps:
        lines += [".TP", tag, escape(help_text) if help_text else r"\&"]
    return lines


def _positional_items(parser: argparse.ArgumentParser) -> list[str]:
    args = parserinfo.positionals(parser)
    return _items([(f"\\fI{escape(parserinfo.metavar(a))}\\fR", a.help or "") for a in args])


def _option_items(parser: argparse.ArgumentParser) -> list[str]:
    return _items([(_option_tag(a), a.help or "") for a in parserinfo.options(parser)])


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    """The ARGUMENTS and OPTIONS sections of a command (either may be empty)."""
    lines = []
    for heading, items in (("ARGUMENTS", _positional_items(parser)), ("OPTIONS", _option_items(parser))):
        lines += [f".SH {heading}", *items] if items else []
    return lines


def _usage_lines(parser: argparse.ArgumentParser) -> list[str]:
    """The usage line, unhyphenated and unjustified (it is mostly option names)."""
    return [".nh", ".ad l", escape(_usage(parser)), ".ad", ".hy"]


def exit_code_descriptions() -> dict[ExitCode, str]:
    """Each exit code's ``#:`` comment in ``exitcodes.py`` (the comment lines above it)."""
    found: dict[ExitCode, str] = {}
    comment: list[str] = []
    for line in inspect.getsource(exitcodes).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            comment.append(stripped[2:].strip())
            continue
        match = re.match(r"([A-Z_]+) = \d+$", stripped)
        if match:
            found[ExitCode[match.group(1)]] = " ".join(comment).replace("``", "") or match.group(1).lower()
        comment = []
    return found


def _exit_status() -> list[str]:
    descriptions = exit_code_descriptions()
    lines = ['.SH "EXIT STATUS"']
    lines += _items([(f"\\fB{code.value}\\fR", descriptions[code]) for code in sorted(ExitCode)])
    return lines


def _top_level(commands: list[Command]) -> list[Command]:
    """The commands that get a page; nested ones (``key import``) are sections of their parent's."""
    return [c for c in commands if len(c.words) == 1]


def _main_page(root: Command, commands: list[Command]) -> str:
    lines = _header((), "use Singularity/Apptainer SIF images without Singularity")
    lines += [".SH SYNOPSIS", *_usage_lines(root.parser)]
    lines += [".SH DESCRIPTION", escape(root.summary)]
    lines += [
        "Each command has its own page, named after it: \\fBsiffs\\-mount\\fR(1) for \\fBsiffs mount\\fR.",
        "Errors are one line on standard error, \\fBsiffs:\\fR \\fIFILE\\fR\\fB:\\fR \\fIwhat is wrong\\fR;",
        "with \\fBSIFFS_DEBUG=1\\fR in the environment, internal errors show a traceback.",
    ]
    lines += _arguments(root.parser)
    lines += [".SH COMMANDS"]
    lines += _items([(f"\\fB{escape(_title(c.words))}\\fR(1)", c.summary) for c in _top_level(commands)])
    lines += _exit_status()
    lines += _MAIN_FILES.rstrip("\n").splitlines()
    lines += [
        '.SH "SEE ALSO"',
        "\\fBmount.fuse3\\fR(8), \\fBfusermount3\\fR(1), \\fBapptainer\\fR(1), \\fBsingularity\\fR(1)",
    ]
    return "\n".join(lines) + "\n"


def _command_page(command: Command) -> str:
    lines = _header(command.words, command.summary)
    lines += [".SH SYNOPSIS", *_usage_lines(command.parser)]
    lines += [".SH DESCRIPTION", escape(command.summary[:1].upper() + command.summary[1:]) + "."]
    lines += _arguments(command.parser)
    children = parserinfo.subcommands(command.parser)
    summaries = parserinfo.summaries(command.parser)
    lines += [".SH COMMANDS"] if children else []
    for name, child in children.items():  # key import, key list, ...: one subsection each
        lines += [f'.SS "{escape(child.prog)}"', *_usage_lines(child), ".PP", escape(summaries.get(name, ""))]
        lines += _positional_items(child) + _option_items(child)
    lines += [_EXTRA.get(command.name, "").rstrip("\n")] if command.name in _EXTRA else []
    lines += ['.SH "EXIT STATUS"', "As listed in \\fBsiffs\\fR(1).", '.SH "SEE ALSO"', "\\fBsiffs\\fR(1)"]
    return "\n".join(lines) + "\n"


def pages(parser: argparse.ArgumentParser) -> dict[str, str]:
    """File name -> roff text of every page: ``siffs.1``, then one per top-level command."""
    commands = parserinfo.walk(parser)
    found = {f"siffs.{_SECTION}": _main_page(commands[0], commands)}
    for command in _top_level(commands):
        found[f"{_title(command.words)}.{_SECTION}"] = _command_page(command)
    return found
