"""``--env-file``: a shell script evaluated on the host, as Apptainer does, without running anything.

Apptainer runs the file through an embedded shell interpreter with ``set -a`` (every assignment
is exported), the host environment visible but not exported, and command execution and file
access disabled. siffs does the same with a small interpreter of the part of the shell language
such files use: assignments (several per command), ``export``, ``unset``, ``set -a``/``+a``,
``:``/``true``, comments, ``;`` and newlines; quoting (``'…'``, ``"…"``, ``$'…'``, backslashes,
continued lines, quotes spanning lines); expansions (``$NAME``, ``${NAME}``, ``${NAME:-word}``
and the other POSIX default/alternative/error forms, ``${#NAME}``, ``$1``…, ``$#``, ``$@``, ``~``).
Whatever would run a command or touch a file is refused with its line number: command
substitution, arithmetic, redirections, pipelines, subshells, control structures, any other
command.

Reading the file runs nothing. The values it yields do not stay inert, though: like every
``APPTAINERENV_``/``--env`` override they are exported in the container inside double quotes
(see ``environment.injection_script``), so the container's shell evaluates them once more, as
Apptainer's does: a value that still holds ``$(cmd)`` after the host's evaluation (from
``'$(cmd)'`` or ``\\$(cmd)`` in the file) runs ``cmd`` in the container, as the container's
user. ``--no-eval`` makes every value an exact literal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from runtime.errors import EnvironmentFileError, InvalidRequest

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
#: What the shell itself manages; Apptainer drops them from an env file's result too.
_SHELL_OWNED = frozenset({"EUID", "IFS", "OPTIND", "PWD"})
#: Characters that end an unquoted word.
_BLANKS = " \t"
_OPERATORS = "|&;<>()\n"
#: ``$'…'`` escapes (bash), besides ``\xHH`` and octal ``\NNN``.
_ANSI_C = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "e": "\x1b",
           "E": "\x1b", "\\": "\\", "'": "'", '"': '"', "?": "?"}  # fmt: skip


def read(path: str, option: str) -> str:
    """The text of a file named by a command-line option, or an error naming the option."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError as exc:
        raise InvalidRequest(f"{option} {path}: {exc.strerror}") from None


def load(path: str, host: Mapping[str, str], args: Sequence[str] = ()) -> dict[str, str]:
    """The variables ``--env-file path`` exports; ``args`` are the positional parameters ($1...)."""
    return parse(read(path, "--env-file"), host, path, args)


def parse(text: str, host: Mapping[str, str], where: str, args: Sequence[str] = ()) -> dict[str, str]:
    """The variables ``text`` exports, in order; expansions see earlier assignments, then ``host``."""
    shell = _Shell(text, host, list(args), where)
    shell.run()
    return {k: v for k, v in shell.exported.items() if k not in _SHELL_OWNED}


class _Refused(Exception):
    """Something the file may not do, at ``position`` in the text."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


@dataclass
class _Shell:
    """The state of one ``--env-file`` evaluation: the text, where the parser is, the variables."""

    text: str
    host: Mapping[str, str]
    args: list[str]
    where: str
    pos: int = 0
    allexport: bool = True
    variables: dict[str, str] = field(default_factory=dict)
    exported: dict[str, str] = field(default_factory=dict)
    unset: set[str] = field(default_factory=set)

    def run(self) -> None:
        nul = self.text.find("\0")
        try:
            if nul >= 0:
                raise _Refused("a NUL byte: no environment variable can hold one", nul)
            while self.pos < len(self.text):
                self._command()
        except _Refused as exc:
            line = self.text.count("\n", 0, exc.position) + 1
            raise EnvironmentFileError(f"{self.where}:{line}: {exc}") from None

    # -- commands ---------------------------------------------------------------------------

    def _command(self) -> None:
        """One simple command, up to a newline or ``;``."""
        words: list[tuple[int, str, str | None]] = []  # (position, text, assigned name)
        while True:
            self._skip_blanks()
            if self.pos >= len(self.text):
                break
            c = self.text[self.pos]
            if c in "\n;":
                self.pos += 1
                break
            if c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
                continue
            if c in "<>":
                raise _Refused("redirections are disabled: an environment file may not touch files", self.pos)
            if c in "|&()":
                raise _Refused(
                    f"{c!r}: pipelines, background jobs and subshells are not allowed in an environment file",
                    self.pos,
                )
            start = self.pos
            name = None
            match = _ASSIGNMENT.match(self.text, self.pos)
            if match is not None and (not words or words[0][2] is not None or _is_declaring(words)):
                name = match.group(1)
                self.pos = match.end()
                value = self._word(assignment=True)
                if not words or words[0][2] is not None:  # a plain assignment takes effect at once
                    self._assign(name, value)
                words.append((start, value, name))
            else:
                words.append((start, self._word(assignment=False), None))
        if words:
            self._execute(words)

    def _execute(self, words: list[tuple[int, str, str | None]]) -> None:
        position, first, first_name = words[0]
        if first_name is not None:
            for pos, text, name in words[1:]:
                if name is None:
                    raise _Refused(_not_a_command(text), pos)
            return
        rest = words[1:]
        if first == "export":
            for pos, text, name in rest:
                if name is not None:
                    self._assign(name, text, export=True)
                elif _NAME.fullmatch(text):
                    self._export(text)
                elif text not in ("-n", "--"):
                    raise _Refused(f"export {text!r}: not a variable name", pos)
        elif first == "unset":
            for pos, text, _ in rest:
                if text in ("-v", "--"):
                    continue
                if not _NAME.fullmatch(text):
                    raise _Refused(f"unset {text!r}: not a variable name", pos)
                self.variables.pop(text, None)
                self.exported.pop(text, None)
                self.unset.add(text)
        elif first == "set" and all(w[1] in ("-a", "+a", "-o", "+o", "allexport") for w in rest) and rest:
            self.allexport = rest[0][1].startswith("-")
        elif first in (":", "true"):
            return
        else:
            raise _Refused(_not_a_command(first), position)

    def _assign(self, name: str, value: str, export: bool = False) -> None:
        if "\0" in value:
            raise _Refused(f"{name}: a NUL byte: no environment variable can hold one", self.pos)
        self.variables[name] = value
        self.unset.discard(name)
        if export or self.allexport or name in self.exported:
            self.exported[name] = value

    def _export(self, name: str) -> None:
        value = self._lookup(name)
        if value is not None:
            self.exported[name] = value

    def _lookup(self, name: str) -> str | None:
        if name in self.variables:
            return self.variables[name]
        if name in self.unset:
            return None
        return self.host.get(name)

    # -- words ------------------------------------------------------------------------------

    def _skip_blanks(self) -> None:
        while self.pos < len(self.text):
            if self.text[self.pos] in _BLANKS:
                self.pos += 1
            elif self.text.startswith("\\\n", self.pos):
                self.pos += 2
            else:
                return

    def _word(self, assignment: bool, stop: str = "") -> str:
        """One word, expanded; ends at an unquoted blank or operator (or at ``stop``)."""
        out: list[str] = []
        start = self.pos
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in stop or (not stop and (c in _BLANKS or c in _OPERATORS)):
                break
            if c == "\\":
                nxt = self.text[self.pos + 1 : self.pos + 2]
                if nxt != "\n":
                    out.append(nxt or "\\")
                self.pos += 2
            elif c == "'":
                out.append(self._single_quoted())
            elif c == '"':
                out.append(self._double_quoted())
            elif c == "$":
                out.append(self._dollar(quoted=False))
            elif c == "`":
                raise _Refused("command substitution (`...`) is disabled: it would run a command", self.pos)
            elif c == "~" and assignment and (self.pos == start or self.text[self.pos - 1] == ":"):
                out.append(self._tilde())
            else:
                out.append(c)
                self.pos += 1
        return "".join(out)

    def _tilde(self) -> str:
        after = self.text[self.pos + 1 : self.pos + 2]
        if after and after not in "/:" and not after.isspace() and after not in _OPERATORS:
            self.pos += 1
            return "~"  # ~user: left alone (no account lookups on the host)
        self.pos += 1
        return self._lookup("HOME") or "~"

    def _single_quoted(self) -> str:
        start = self.pos
        end = self.text.find("'", self.pos + 1)
        if end < 0:
            raise _Refused("unterminated ' quote", start)
        self.pos = end + 1
        return self.text[start + 1 : end]

    def _double_quoted(self) -> str:
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == '"':
                self.pos += 1
                return "".join(out)
            if c == "\\":
                nxt = self.text[self.pos + 1 : self.pos + 2]
                if nxt in ('"', "\\", "$", "`"):
                    out.append(nxt)
                elif nxt != "\n":
                    out.append("\\" + nxt)
                self.pos += 2
            elif c == "$":
                out.append(self._dollar(quoted=True))
            elif c == "`":
                raise _Refused("command substitution (`...`) is disabled: it would run a command", self.pos)
            else:
                out.append(c)
                self.pos += 1
        raise _Refused('unterminated " quote', start)

    def _dollar(self, quoted: bool) -> str:
        start = self.pos
        nxt = self.text[self.pos + 1 : self.pos + 2]
        if self.text.startswith("$((", self.pos):
            raise _Refused("arithmetic expansion $((...)) is not supported in an environment file", start)
        if nxt == "(":
            raise _Refused("command substitution $(...) is disabled: it would run a command", start)
        if nxt == "{":
            return self._braced()
        if nxt == "'" and not quoted:
            return self._ansi_c()
        match = _NAME.match(self.text, self.pos + 1)
        if match:
            self.pos = match.end()
            return self._lookup(match.group()) or ""
        if nxt and nxt in "0123456789#@*?$!-":
            self.pos += 2
            return self._special(nxt)
        self.pos += 1
        return "$"

    def _special(self, char: str) -> str:
        if char.isdigit():
            index = int(char)
            return "apptainer" if index == 0 else (self.args[index - 1] if index <= len(self.args) else "")
        return {"#": str(len(self.args)), "@": " ".join(self.args), "*": " ".join(self.args), "?": "0"}.get(
            char, ""
        )

    def _braced(self) -> str:
        start = self.pos
        self.pos += 2
        length = self.text.startswith("#", self.pos) and _NAME.match(self.text, self.pos + 1) is not None
        if length:
            self.pos += 1
        match = _NAME.match(self.text, self.pos) or re.compile(r"[0-9]+|[#@*?]").match(self.text, self.pos)
        if match is None:
            raise _Refused("bad ${...} substitution", start)
        name = match.group()
        self.pos = match.end()
        value = self._lookup(name) if _NAME.fullmatch(name) else self._positional(name)
        if length:
            self._expect_brace(start)
            return str(len(value or ""))
        operator = re.compile(r":?[-=+?]").match(self.text, self.pos)
        if operator is None:
            self._expect_brace(start)
            return value or ""
        self.pos = operator.end()
        word = self._word(assignment=False, stop="}")
        self._expect_brace(start)
        op = operator.group()
        missing = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return word if missing else value or ""
        if op.endswith("+"):
            return "" if missing else word
        if op.endswith("="):
            if missing:
                if not _NAME.fullmatch(name):
                    raise _Refused(f"${{{name}{op}...}}: cannot assign to a special parameter", start)
                self._assign(name, word)
                return word
            return value or ""
        if missing:
            raise _Refused(f"{name}: {word or 'parameter null or not set'}", start)
        return value or ""

    def _positional(self, name: str) -> str | None:
        if name.isdigit():
            index = int(name)
            return "apptainer" if index == 0 else (self.args[index - 1] if index <= len(self.args) else None)
        return self._special(name)

    def _expect_brace(self, start: int) -> None:
        if not self.text.startswith("}", self.pos):
            raise _Refused("unterminated or unsupported ${...} substitution", start)
        self.pos += 1

    def _ansi_c(self) -> str:
        start = self.pos
        self.pos += 2
        out: list[str] = []
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "'":
                self.pos += 1
                return "".join(out)
            if c != "\\":
                out.append(c)
                self.pos += 1
                continue
            nxt = self.text[self.pos + 1 : self.pos + 2]
            hexa = re.compile(r"x([0-9A-Fa-f]{1,2})").match(self.text, self.pos + 1)
            octal = re.compile(r"[0-7]{1,3}").match(self.text, self.pos + 1)
            if nxt in _ANSI_C:
                out.append(_ANSI_C[nxt])
                self.pos += 2
            elif hexa:
                out.append(_byte(int(hexa.group(1), 16)))
                self.pos = hexa.end()
            elif octal:
                out.append(_byte(int(octal.group(), 8) & 0xFF))
                self.pos = octal.end()
            else:
                out.append("\\" + nxt)
                self.pos += 2
        raise _Refused("unterminated $' quote", start)


def _byte(value: int) -> str:
    """One byte of a ``$'\\xHH'`` escape, as the text holds bytes (surrogate escapes past ASCII)."""
    return chr(value) if value < 0x80 else bytes([value]).decode("utf-8", "surrogateescape")


def _is_declaring(words: list[tuple[int, str, str | None]]) -> bool:
    """``export NAME=value``: the arguments are assignments (expanded without splitting)."""
    return words[0][2] is None and words[0][1] == "export"


def _not_a_command(word: str) -> str:
    if "=" in word:
        name = word.split("=", 1)[0]
        return (
            f"{name!r} is not a variable name (letters, digits and _, not starting with a digit); "
            "a command is not allowed in an environment file"
        )
    return f"running {word!r}: commands are disabled in an environment file (only NAME=value, export, unset)"
