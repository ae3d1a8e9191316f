"""An OCI image config as Singularity metadata: environment, runscript, labels, definition.

What Apptainer writes when it converts ``docker://`` images (spec registry.md §5.5), with siffs'
own wording: ``Env`` becomes ``/.singularity.d/env/10-docker2singularity.sh`` (host values of the
same name win, except PATH), ``Entrypoint``/``Cmd`` become a runscript that runs them with the
container's arguments exactly as Apptainer's does (arguments are evaluated once by the shell
unless ``SINGULARITY_NO_EVAL`` is set), and labels are the image's plus build facts.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from siffs import __version__

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def escape(text: str) -> str:
    """Backslash before ``\\ " ` $``: safe inside double quotes for a POSIX shell."""
    return re.sub(r'([\\"`$])', r"\\\1", text)


def _single_quoted(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def environment_script(env: Sequence[str]) -> str:
    """``10-docker2singularity.sh``: each ``K=V`` of the config, in order; bad names skipped."""
    lines = ["#!/bin/sh", "# The image's Env (converted by siffs); values set on the host win, except PATH."]
    for entry in env:
        name, eq, value = entry.partition("=")
        if not _NAME.fullmatch(name):
            continue
        if not eq:
            lines.append(f'export {name}="${{{name}:-}}"')
        elif name == "PATH":
            lines.append(f'export PATH="{escape(value)}"')
        else:
            lines.append(f'export {name}="${{{name}:-"{escape(value)}"}}"')
    return "\n".join(lines) + "\n"


def _quoted_list(words: Sequence[str] | None) -> str:
    return " ".join(f'"{escape(w)}"' for w in words or ())


def runscript(entrypoint: Sequence[str] | None, cmd: Sequence[str] | None) -> str:
    """The runscript: ENTRYPOINT with the arguments, or with CMD when there are none."""
    lines = [
        "#!/bin/sh",
        "# Runs the image's ENTRYPOINT and CMD as Docker would (converted by siffs).",
        f"OCI_ENTRYPOINT={_single_quoted(_quoted_list(entrypoint))}",
        f"OCI_CMD={_single_quoted(_quoted_list(cmd))}",
        'if [ -n "${SINGULARITY_NO_EVAL:-}" ]; then',
        "    # No evaluation: the words are pushed literally, last first.",
    ]
    push = [f'    set -- {_single_quoted(w)} "$@"' for w in reversed(entrypoint or [])]
    push_cmd = [f'        set -- {_single_quoted(w)} "$@"' for w in reversed(cmd or [])]
    if cmd:
        lines += ["    if [ $# -eq 0 ]; then", *push_cmd, "    fi"]
    lines += push
    lines += [
        '    exec "$@"',
        "fi",
        'CMDLINE_ARGS=""',
        'for arg in "$@"; do CMDLINE_ARGS="${CMDLINE_ARGS} \\"${arg}\\""; done',
        "if [ $# -gt 0 ]; then",
        '    SINGULARITY_OCI_RUN="${OCI_ENTRYPOINT} ${CMDLINE_ARGS}"',
        "else",
        '    SINGULARITY_OCI_RUN="${OCI_ENTRYPOINT} ${OCI_CMD}"',
        "fi",
        'eval "set ${SINGULARITY_OCI_RUN}"',
        'exec "$@"',
    ]
    return "\n".join(lines) + "\n"


def go_json_indent(value: Any) -> str:
    """Go's ``json.MarshalIndent(v, "", "\\t")``: sorted keys, tab indent, ``<>&`` escaped."""
    text = json.dumps(value, indent="\t", sort_keys=True, ensure_ascii=False)
    for ch in "<>&\u2028\u2029":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text


def labels(
    image_labels: Mapping[str, str] | None,
    *,
    bootstrap: str,
    source: str,
    base: tuple[str, str] | None,
    arch: str,
    when: dt.datetime,
) -> dict[str, str]:
    """The image's labels plus the build facts Apptainer records (siffs' version, not Apptainer's).

    ``base`` is the registry reference and top manifest digest; Apptainer records them only for
    images from a registry, not from a local OCI layout or archive.
    """
    out = dict(image_labels or {})
    local = when.astimezone()
    out.update(
        {
            "org.label-schema.schema-version": "1.0",
            "org.opencontainers.image.created": local.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "org.label-schema.build-date": (
                f"{local:%A}_{local.day}_{local:%B}_{local.year}_{local.hour}:{local.minute}:{local.second}_"
                f"{local.tzname()}"
            ),
            "org.label-schema.usage.siffs.version": __version__,
            "org.label-schema.usage.singularity.deffile.bootstrap": bootstrap,
            "org.label-schema.usage.singularity.deffile.from": source,
            **(_base_labels(*base) if base else {}),
            "org.opencontainers.image.architecture": arch,
            "org.label-schema.build-arch": arch,
        }
    )
    return out


def _base_labels(name: str, digest: str) -> dict[str, str]:
    return {"org.opencontainers.image.base.name": name, "org.opencontainers.image.base.digest": digest}


def deffile(bootstrap: str, source: str) -> str:
    return f"bootstrap: {bootstrap}\nfrom: {source}\n\n"


#: ggcr's v1.Config field order, for ``oci-config.json`` (unknown keys are dropped, as Go does).
_CONFIG_FIELDS = (
    "AttachStderr", "AttachStdin", "AttachStdout", "Cmd", "Healthcheck", "Domainname", "Entrypoint", "Env",
    "Hostname", "Image", "Labels", "OnBuild", "OpenStdin", "StdinOnce", "Tty", "User", "Volumes",
    "WorkingDir", "ExposedPorts", "ArgsEscaped", "NetworkDisabled", "MacAddress", "StopSignal", "Shell",
)  # fmt: skip


def oci_config(config: Mapping[str, Any]) -> bytes:
    """The image config's ``config`` object as Apptainer stores it: ggcr's field order, no empties."""
    value = {k: config[k] for k in _CONFIG_FIELDS if config.get(k)}
    for key, item in value.items():
        if isinstance(item, dict):
            value[key] = dict(sorted(item.items()))
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for ch in "<>&\u2028\u2029":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text.encode()


BASE_ENV = "#!/bin/sh\n# Base environment of a siffs-converted image; later scripts add to it.\n"
ENVIRONMENT = "#!/bin/sh\n# Custom environment shell code goes here (%environment).\n"
APPS = "#!/bin/sh\n# SCIF app environments (none in a converted image).\n"
LIBS = """#!/bin/sh
# Libraries bound in by the runtime (--nv, --rocm) are found here.
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
    LD_LIBRARY_PATH="/.singularity.d/libs"
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi
PS1="${PS1:-Apptainer> }"
export LD_LIBRARY_PATH PS1
"""
RUNTIME_VARS = "#!/bin/sh\n# Variables the runtime sets (SINGULARITYENV_*) are applied by siffs itself.\n"
START = "#!/bin/sh\n# No startscript defined for this container.\n"
ACTION = '#!/bin/sh\n# Legacy action script: runtimes run the command themselves.\nexec "$@"\n'
