"""``oras://HOST/REPO[:TAG|@sha256:HEX]`` references, parsed as go-containerregistry does.

Everything is checked before any network access, so a typo never reaches a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from siffs.registry.errors import BadReference

_REPOSITORY = re.compile(r"[a-z0-9_./-]{1,255}")
_TAG = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
DOCKER_HUB = "index.docker.io"
#: Hosts ggcr talks plain http to without being told (after trying https): loopback and private.
_LOCAL = re.compile(
    r"(localhost|.*\.localhost|127\.\d+\.\d+\.\d+|::1|\[::1\]|10\.\d+\.\d+\.\d+|192\.168\.\d+\.\d+|"
    r"172\.(1[6-9]|2\d|3[01])\.\d+\.\d+)(:\d+)?"
)


@dataclass(frozen=True)
class Reference:
    """A parsed reference; ``tag`` or ``digest`` is set (``tag`` defaults to ``latest``)."""

    scheme: str  # "oras" or "docker"
    host: str  # registry host[:port]
    repository: str
    tag: str | None
    digest: str | None

    @property
    def ref(self) -> str:
        """What the manifest URL names: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def is_local(self) -> bool:
        """Loopback or private host: plain http is allowed as a fallback, as ggcr allows it."""
        return _LOCAL.fullmatch(self.host) is not None

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.tag}"
        return f"{self.host}/{self.repository}{suffix}"

    def default_file_name(self) -> str:
        """Apptainer's output name: ``<last component>_<tag>.sif`` (first 12 hex of a digest)."""
        name = self.repository.rsplit("/", 1)[-1]
        version = self.digest.split(":", 1)[1][:12] if self.digest else self.tag
        return f"{name}_{version}.sif"


def parse(text: str) -> Reference:
    """Parse ``oras://…`` or ``docker://…``; ``BadReference`` says which rule failed."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("oras", "docker"):
        raise BadReference(f'invalid reference "{text}": expected oras://HOST/REPO[:TAG]')
    rest = rest.lstrip("/")
    digest = tag = None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise BadReference(f'invalid reference "{text}": digest must be sha256:<64 hex digits>')
    else:
        head, colon, last = rest.rpartition(":")
        if colon and "/" not in last:
            rest, tag = head, last
            if not _TAG.fullmatch(tag):
                raise BadReference(f'invalid reference "{text}": tag must match [A-Za-z0-9_.-]{{1,128}}')
        else:
            tag = "latest"
    first, slash, path = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, repository = first, path
    else:
        host, repository = DOCKER_HUB, rest if "/" in rest else f"library/{rest}"
    if host == "docker.io":
        host = DOCKER_HUB
    if not _REPOSITORY.fullmatch(repository) or "//" in repository or repository.startswith("/"):
        raise BadReference(f'invalid reference "{text}": repository must match [a-z0-9_./-]{{1,255}}')
    return Reference(scheme, host, repository, tag, digest)
