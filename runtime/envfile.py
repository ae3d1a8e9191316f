"""``--env-file``: shell-style ``K=V`` lines, evaluated on the host without running anything.

Apptainer evaluates the file in an embedded shell with commands disabled. siffs accepts the
subset people write (``K=V``, ``export K=V``, quotes, comments, ``$VAR``/``${VAR}``) and
refuses command substitution with the line number, so that a file never runs code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from runtime.errors import EnvironmentFileError, InvalidRequest

_ASSIGNMENT = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)\Z", re.DOTALL)
_REFERENCE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def read(path: str, option: str) -> str:
    """The text of a file named by a command-line option, or an error naming the option."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError as exc:
        raise InvalidRequest(f"{option} {path}: {exc.strerror}") from None


def load(path: str, host: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``--env-file path``."""
    return parse(read(path, "--env-file"), host, path)


def parse(text: str, host: Mapping[str, str], where: str) -> dict[str, str]:
    """The variables ``text`` assigns, in order; ``$VAR`` sees earlier lines, then ``host``."""
    variables: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ASSIGNMENT.match(line)
        if match is None:
            raise EnvironmentFileError(f"{where}:{number}: expected NAME=VALUE, got {raw.strip()!r}")
        name, rest = match.groups()
        try:
            variables[name] = _value(rest, {**host, **variables})
        except ValueError as exc:
            raise EnvironmentFileError(f"{where}:{number}: {exc}") from None
    return variables


def _expand(text: str, scope: Mapping[str, str]) -> str:
    if "$(" in text or "`" in text:
        raise ValueError("command substitution is not allowed in an environment file")
    return _REFERENCE.sub(lambda m: scope.get(m.group(1) or m.group(2), ""), text)


def _value(rest: str, scope: Mapping[str, str]) -> str:
    """One shell word: unquoted, '...' (literal) and "..." (expanded) parts, concatenated."""
    out: list[str] = []
    pending: list[str] = []  # text still to be expanded; escaped characters bypass it

    def flush() -> None:
        out.append(_expand("".join(pending), scope))
        pending.clear()

    i, quote = 0, ""
    while i < len(rest):
        c = rest[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                out.append(c)
        elif c == "\\" and i + 1 < len(rest) and (not quote or rest[i + 1] in '"\\$`'):
            flush()
            out.append(rest[i + 1])
            i += 1
        elif c == '"':
            quote = "" if quote else '"'
        elif c == "'" and not quote:
            flush()
            quote = "'"
        elif c.isspace() and not quote:
            flush()  # a command substitution before the space is the error worth reporting
            if rest[i:].strip() and not rest[i:].strip().startswith("#"):
                raise ValueError("unquoted space in value (quote it)")
            break
        else:
            pending.append(c)
        i += 1
    if quote:
        raise ValueError(f"unterminated {quote} quote")
    flush()
    return "".join(out)
