"""``siffs pull``'s dispatch: which whole-file stage fetches a given SOURCE.

Each stage (``siffs.delta`` for casync indexes and zsync control files, ``siffs.registry`` for
``oras://``, ``docker://``, ``oci:`` and ``oci-archive:``) turns a SOURCE into a verified SIF
written atomically at DEST. This module only recognises the kind of SOURCE and calls the stage's
``pull`` with one request type, so a new stage is one more entry in ``STAGES`` and the CLI stays
unchanged. Stages are imported only when chosen.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from siffs.crypt.keys import KeyMaterial as CryptKey
    from siffs.integrity.verify import KeyMaterial
    from siffs.registry.pull import RegistryPull

Progress = Callable[[int, int], None]


class UnknownSourceError(Exception):
    """SOURCE is of no kind any stage pulls."""


class PullRequest(NamedTuple):
    """What to pull where: the same for every stage (a stage ignores what does not apply to it)."""

    source: str
    dest: str
    seeds: tuple[str, ...] = ()
    store: str | None = None
    #: Trusted keys the result must be signed with; None means unsigned images are allowed.
    keys: KeyMaterial | None = None
    progress: Progress | None = None
    #: How to reach a registry (oras://, docker://) and convert images; None: the defaults.
    registry: RegistryPull | None = None
    #: The key of an encrypted image's delta index, asked for only when one is met (may prompt).
    key_material: Callable[[], CryptKey] | None = None


class Result(Protocol):
    """What every stage reports; ``as_dict`` is the ``--json`` output."""

    dest: str
    size: int
    requests: int
    fetched_bytes: int
    resumed_bytes: int
    reused: dict[str, int]
    signers: list[str]
    warnings: list[str]

    def as_dict(self) -> dict[str, object]: ...


class Stage(Protocol):
    def __call__(self, request: PullRequest) -> Result: ...


def _delta(request: PullRequest) -> Result:
    from siffs.delta import pull as casync  # noqa: PLC0415 -- each stage is imported only when chosen
    from siffs.delta.target import Trust  # noqa: PLC0415

    return casync.pull(
        request.source,
        request.dest,
        seed_files=request.seeds,
        store_location=request.store,
        trust=Trust(request.keys, request.progress),
        progress=request.progress,
        material=request.key_material,
    )


def _zsync(request: PullRequest) -> Result:
    from siffs.delta import zsync  # noqa: PLC0415 -- each stage is imported only when chosen
    from siffs.delta.target import Trust  # noqa: PLC0415

    return zsync.pull(
        request.source,
        request.dest,
        seed_files=request.seeds,
        trust=Trust(request.keys, request.progress),
        progress=request.progress,
    )


def _registry(request: PullRequest) -> Result:
    from siffs.registry import pull as registry  # noqa: PLC0415 -- each stage is imported only when chosen

    options = request.registry or registry.RegistryPull()
    return registry.pull(
        request.source, request.dest, options=options, keys=request.keys, progress=request.progress
    )


#: Source kind -> the stage that pulls it (the kind is a URL scheme or a file-name ending).
STAGES: dict[str, Stage] = {"caibx": _delta, "zsync": _zsync, "oras": _registry, "docker": _registry,
                            "oci": _registry, "oci-archive": _registry}  # fmt: skip
#: The kinds the registry stage pulls: images that are pulled into, or converted through, the cache.
IMAGE_KINDS = ("oras", "docker", "oci", "oci-archive")
#: Sources named ``scheme:PATH`` (no ``//``): OCI image layouts and archives, as containers/image names them.
_LAYOUT_SCHEMES = ("oci", "oci-archive")

#: The file-name ending of each kind a path or http(s) URL may have.
_SUFFIXES = {".caibx": "caibx", ".zsync": "zsync"}


def kind_of(source: str) -> str:
    """The kind of SOURCE: by URL scheme (``scheme://``, ``oci:``), else by the name's ending."""
    scheme, colon, rest = source.partition(":")
    if colon and scheme in _LAYOUT_SCHEMES and not rest.startswith("//"):
        return scheme
    parts = urllib.parse.urlsplit(source)
    if parts.scheme and parts.scheme not in ("http", "https", "file") and "://" in source:
        if parts.scheme in STAGES:
            return parts.scheme
        raise UnknownSourceError(f"{source}: siffs cannot pull {parts.scheme}:// sources")
    name = parts.path if parts.scheme else source
    if name.endswith(".caidx"):
        raise UnknownSourceError(f"{source}: archive indexes (.caidx) are not supported; use a blob index")
    for suffix, kind in _SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    raise UnknownSourceError(
        f"{source}: not a source siffs can pull (expected a .caibx index or a .zsync control file)"
    )


def stage_for(source: str) -> Stage:
    return STAGES[kind_of(source)]


def default_dest(source: str) -> str:
    """DEST when none is given: SOURCE's file name without the index/control-file ending, or
    Apptainer's ``<name>_<tag>.sif`` for a registry reference."""
    kind = kind_of(source)
    if kind in _LAYOUT_SCHEMES:
        from siffs.registry.layout import parse as parse_layout  # noqa: PLC0415

        return parse_layout(source).default_file_name()
    if kind in IMAGE_KINDS:
        from siffs.registry.reference import parse  # noqa: PLC0415

        return parse(source).default_file_name()
    name = os.path.basename(urllib.parse.urlsplit(source).path.rstrip("/")) or "image.sif"
    for suffix in _SUFFIXES:
        name = name.removesuffix(suffix)
    return name if name.endswith(".sif") else name + ".sif"


def pull(request: PullRequest) -> Result:
    return stage_for(request.source)(request)
