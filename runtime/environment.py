"""The container's environment, computed as Apptainer does (runtime.md §2).

Three kinds of input meet here: host variables (forwarded only where the image leaves a
name undefined, §2.1 row 1), the image's env scripts (run by ``envscripts`` in the
container's own shell) and overrides (``SINGULARITYENV_``/``APPTAINERENV_`` variables,
``--env-file``, ``--env``; rows 3-7). Overrides are kept as a list of operations so that the
same decision is rendered two ways: as shell statements injected after ``99-base.sh``
(where values are evaluated, ``$X`` and all), and applied literally in Python for images
without a shell.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, NamedTuple

from runtime.errors import InvalidRequest

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LIBS_DIR = "/.singularity.d/libs"
ENV_DIR = "/.singularity.d/env"
PS1 = "Apptainer> "
#: What Apptainer appends to the host PATH in ``USER_PATH`` (a record for scripts; never the PATH).
USER_PATH_TAIL = "/bin:/usr/bin:/sbin:/usr/sbin:/usr/local/bin:/usr/local/sbin"
IDENTITY_PREFIXES = ("APPTAINER", "SINGULARITY")
OVERRIDE_PREFIXES = ("SINGULARITYENV_", "APPTAINERENV_")  # lowest first: APPTAINERENV_ wins

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ALWAYS_DROPPED = frozenset({"PATH", "HOME", "LD_LIBRARY_PATH"})
_DROPPED_PREFIXES = ("APPTAINER_", "SINGULARITY_", "APPTAINERENV_", "SINGULARITYENV_")
_PROXIES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "ftp_proxy")
#: What ``--cleanenv`` keeps: TERM and the proxy variables in either case (§2.2).
CLEANENV_KEPT = frozenset({"TERM", *_PROXIES, *(p.upper() for p in _PROXIES)})
#: Variables a shell adds to what it exports by itself; they are not the image's.
SHELL_NOISE = frozenset({"PWD", "OLDPWD", "SHLVL", "_"})

PathMode = Literal["replace", "prepend", "append"]
_PATH_OVERRIDES: dict[str, PathMode] = {"PATH": "replace", "PREPEND_PATH": "prepend", "APPEND_PATH": "append"}


def valid_name(name: str) -> bool:
    return _NAME.match(name) is not None


def forwarded_host(environ: Mapping[str, str], cleanenv: bool, no_env: Iterable[str] = ()) -> dict[str, str]:
    """Host variables that may reach the command (§2.2), before the image has its say.

    ``--cleanenv`` keeps TERM and the proxies and adds ``LANG=C``; it travels with the host
    variables so that an image script or an override can still replace it. ``USER_PATH`` (the
    host PATH) is a variable Apptainer adds to its own environment, so it travels the same way.
    """
    refused = set(no_env)
    kept: dict[str, str] = {}
    for name, value in environ.items():
        if name in _ALWAYS_DROPPED or name in refused or name.startswith(_DROPPED_PREFIXES):
            continue
        if not valid_name(name) or (cleanenv and name not in CLEANENV_KEPT):
            continue
        kept[name] = value
    if cleanenv:
        kept.setdefault("LANG", "C")
    elif "USER_PATH" not in refused:
        kept["USER_PATH"] = f"{environ.get('PATH', '')}:{USER_PATH_TAIL}"
    return kept


class Assign(NamedTuple):
    """An override that sets ``name`` to ``value`` after the image's scripts."""

    name: str
    value: str


class PathEdit(NamedTuple):
    """An override of PATH: prepend, append or replace it with ``value``."""

    mode: PathMode
    value: str


class Overrides:
    """Rows 3-7 of §2.1, resolved to the operations to apply after ``99-base.sh``.

    A plain class, filled in place: a dataclass would compile its methods on every start, and
    import ``dataclasses`` (``inspect``, ``ast``), while the mount daemon starts beside it.
    """

    __slots__ = ("assignments", "path_edits", "warnings")

    def __init__(self) -> None:
        self.assignments: list[Assign] = []
        self.path_edits: list[PathEdit] = []
        self.warnings: list[str] = []

    @property
    def names(self) -> set[str]:
        names = {a.name for a in self.assignments}
        return names | ({"PATH"} if self.path_edits else set())


def collect_overrides(
    environ: Mapping[str, str],
    env_files: Sequence[Mapping[str, str]] = (),
    env_options: Sequence[tuple[str, str]] = (),
) -> Overrides:
    """Merge the override sources in precedence order (later beats earlier) and apply §2.2's refusals.

    ``env_files`` are parsed ``--env-file`` contents in command-line order; ``env_options`` the
    ``--env`` pairs in order.
    """
    result = Overrides()
    merged: dict[str, str] = {}
    origin: dict[str, str] = {}
    for prefix in OVERRIDE_PREFIXES:
        for key in sorted(k for k in environ if k.startswith(prefix)):
            name, value = key[len(prefix) :], environ[key]
            if origin.get(name, "").startswith("SINGULARITYENV_") and merged[name] != value:
                result.warnings.append(f"{key} and SINGULARITYENV_{name} differ: using {key}")
            merged[name], origin[name] = value, key
    for number, variables in enumerate(env_files, 1):
        for name, value in variables.items():
            merged[name], origin[name] = value, f"env-file {number}"
    for name, value in env_options:
        if origin.get(name, "").startswith("env-file"):
            result.warnings.append(f"ignored environment file variable {name}: --env {name} is used instead")
        merged[name], origin[name] = value, "--env"
    for name, value in merged.items():
        _classify(name, value, origin[name], result)
    order = ("replace", "prepend", "append")
    result.path_edits.sort(key=lambda edit: order.index(edit.mode))
    return result


def _classify(name: str, value: str, origin: str, into: Overrides) -> None:
    if name in _PATH_OVERRIDES:
        into.path_edits.append(PathEdit(_PATH_OVERRIDES[name], value))
    elif name in ("UID", "GID"):
        pass  # dropped silently, as Apptainer does: the identity is not the user's to choose
    elif not valid_name(name):
        into.warnings.append(f"{origin}: {name!r} is not a valid variable name; ignored")
    elif name == "HOME" or (name.startswith(IDENTITY_PREFIXES) and name.endswith(("_SHELL", "_APPNAME"))):
        into.warnings.append(f"{origin}: overriding {name} is not permitted; ignored (use --home or --shell)")
    else:
        into.assignments.append(Assign(name, value))


def _word(value: str, evaluate: bool, name: str = "PATH") -> str:
    """One shell word for ``value``: evaluated once in the container (only ``"`` escaped), or literal.

    Evaluation is Apptainer's: ``$X``, ``$(cmd)`` and backslashes in the value take effect in the
    container. A value that would not stay one word (a trailing backslash escaping the closing
    quote, an unmatched backquote, ``$(`` or ``${``) would break the whole wrapper, so every
    start would fail: it is refused here, naming the variable, instead.
    """
    if not evaluate:
        return shlex.quote(value)
    body = value.replace('"', '\\"')
    problem = _unbalanced(body)
    if problem:
        raise InvalidRequest(
            f"the value of {name} {problem}, so the container's shell could not evaluate it: "
            "escape it (\\\\ for a backslash) or pass --no-eval to take values literally"
        )
    return f'"{body}"'


def _unbalanced(body: str) -> str:
    """Why ``"body"`` is not one complete double-quoted word; empty if it is."""
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 == len(body):
                return "ends in a backslash"
            i += 2
            continue
        if c == '"':
            return "has a backslash right before a double quote"
        opened = _opening(body, i)
        if opened is not None:
            end = _closing(body, *opened)
            if end < 0:
                return f"has an unmatched {body[i : opened[0]]}"
            i = end + 1
            continue
        i += 1
    return ""


def _opening(body: str, i: int) -> tuple[int, str] | None:
    """For a backquote, ``$(`` or ``${`` at ``i``: where its content starts and what closes it."""
    if body.startswith("`", i):
        return i + 1, "`"
    if body.startswith(("$(", "${"), i):
        return i + 2, ")" if body[i + 1] == "(" else "}"
    return None


def _closing(body: str, i: int, close: str) -> int:
    """Index of the ``close`` that ends a construct opened before ``i`` (quotes and nesting skipped)."""
    opener = {")": "(", "}": "{"}.get(close, "")
    depth = 1
    while i < len(body):
        c = body[i]
        if c == "\\":
            i += 2
            continue
        if c == close and (close == "`" or depth == 1):
            return i
        if c == "'" and close == ")":  # quotes of a command; in ${...} within "..." a ' is a character
            i = body.find("'", i + 1)
            if i < 0:
                return -1
        elif c == opener:
            depth += 1
        elif c == close:
            depth -= 1
        elif (opened := _opening(body, i)) is not None:
            i = _closing(body, *opened)
            if i < 0:
                return -1
        i += 1
    return -1


#: The kernel's limit on one argument or environment string (MAX_ARG_STRLEN), terminator included.
ARG_STRING_MAX = 32 * 4096
#: The part of that the overrides may take in the wrapper, which is one argument of the shell.
INJECTION_MAX = ARG_STRING_MAX - 8192


def injection_script(overrides: Overrides, evaluate: bool = True) -> str:
    """The shell statements the wrapper runs right after ``99-base.sh`` (§2.4 step 2).

    Raises ``InvalidRequest`` for what would make the container fail to start: a value the
    shell could not evaluate, a variable or a whole set of overrides too large to pass.
    """
    lines = [":"]
    for a in overrides.assignments:
        if len(os.fsencode(f"{a.name}={a.value}")) >= ARG_STRING_MAX:
            raise InvalidRequest(
                f"{a.name} is {len(os.fsencode(a.value))} bytes long: a variable can hold at most "
                f"{ARG_STRING_MAX - len(a.name) - 2} (the kernel's limit); pass large data in a file"
            )
        lines.append(f"export {a.name}={_word(a.value, evaluate, a.name)}")
        if a.name == "LD_LIBRARY_PATH":
            lines.append(f'export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:{LIBS_DIR}"')
    for edit in overrides.path_edits:
        word = _word(edit.value, evaluate)
        if edit.mode == "replace":
            lines.append(f"export PATH={word}")
        elif edit.mode == "prepend":
            lines.append(f'export PATH={word}:"$PATH"')
        else:
            lines.append(f'export PATH="$PATH":{word}')
    script = "\n".join(lines)
    if len(os.fsencode(script)) > INJECTION_MAX:
        raise InvalidRequest(
            f"the environment overrides take {len(os.fsencode(script))} bytes: the container's shell "
            f"accepts at most {INJECTION_MAX} of them in one start; pass large data in a file"
        )
    return script


def apply_literally(overrides: Overrides, env: dict[str, str]) -> None:
    """``injection_script`` for an image without a shell: same operations, no evaluation."""
    for a in overrides.assignments:
        env[a.name] = a.value + (f":{LIBS_DIR}" if a.name == "LD_LIBRARY_PATH" else "")
    for edit in overrides.path_edits:
        current = env.get("PATH", "")
        if edit.mode == "replace":
            env["PATH"] = edit.value
        elif edit.mode == "prepend":
            env["PATH"] = f"{edit.value}:{current}"
        else:
            env["PATH"] = f"{current}:{edit.value}"


def identity_variables(
    container: str, command: str, home: str, binds: Sequence[str], app: str = ""
) -> dict[str, str]:
    """The runtime's own variables (§2.3), set before the scripts run and re-imposed after them.

    As a real Apptainer 1.4 shows them: ``APPTAINER_*`` all, the ``SINGULARITY_*`` twins
    without ``COMMAND``, and ``SINGULARITY_APPNAME`` only with an app (the image's
    ``95-apps.sh`` reads it to source the app's environment). ``*_BIND`` is set even when empty.
    """
    values = {
        "CONTAINER": container,
        "NAME": container.rstrip("/").rsplit("/", 1)[-1],
        "ENVIRONMENT": f"{ENV_DIR}/91-environment.sh",
        "BIND": ",".join(binds),
    }
    env = {f"{prefix}_{key}": value for prefix in IDENTITY_PREFIXES for key, value in values.items()}
    env["APPTAINER_COMMAND"] = command
    env["APPTAINER_APPNAME"] = app
    if app:
        env["SINGULARITY_APPNAME"] = app
    env["HOME"] = home
    return env


def merge(
    evaluated: Mapping[str, str],
    forwarded: Mapping[str, str],
    identity: Mapping[str, str],
    libs_on_path: bool,
) -> dict[str, str]:
    """The command's environment from the scripts' result (§2.4 steps 3-4, §2.3).

    A forwarded host variable fills a name the scripts left undefined; a name they defined
    as empty is removed. Identity variables cannot be changed by scripts. The prompt is forced
    through ``PROMPT_COMMAND``, as Apptainer does, because a ``bash`` started as the command
    would otherwise replace ``PS1`` with the host-looking default.
    """
    env = {k: v for k, v in evaluated.items() if k not in SHELL_NOISE}
    for name, value in forwarded.items():
        if name not in env:
            env[name] = value
        elif env[name] == "":
            del env[name]
    env.update(identity)
    env.setdefault("PATH", DEFAULT_PATH)
    if not env.get("PS1"):
        env["PS1"] = PS1
    env["PROMPT_COMMAND"] = prompt_command(env["PS1"], env.get("PROMPT_COMMAND", ""))
    if libs_on_path and LIBS_DIR not in env.get("LD_LIBRARY_PATH", "").split(":"):
        current = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = f"{current}:{LIBS_DIR}" if current else LIBS_DIR
    return env


def prompt_command(ps1: str, current: str) -> str:
    """Apptainer's ``PROMPT_COMMAND``: set ``PS1`` once, after any command the caller already had."""
    if not current:
        return f'PS1="{ps1}"; unset PROMPT_COMMAND'
    return f'{current}; PROMPT_COMMAND="${{PROMPT_COMMAND%%; PROMPT_COMMAND=*}}"; PS1="{ps1}"'
