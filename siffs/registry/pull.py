"""``siffs pull oras://…|docker://…|oci:…|oci-archive:…``: the registry stage as ``siffs.pull`` calls it.

Chooses the blob store (the verified cache, or a scratch directory beside DEST that goes away),
connects with the request's credentials and TLS settings (or opens the local OCI layout), runs
the ORAS download or the conversion to SIF, and has the result pass the trust policy before it
replaces DEST.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from siffs.integrity.xdg import private_dir
from siffs.registry import fetch, layout, oras
from siffs.registry.cache import blob_cache_dir
from siffs.registry.credentials import Credentials, resolve
from siffs.registry.errors import LocalIOError
from siffs.registry.http import Session
from siffs.registry.reference import Reference, parse

if TYPE_CHECKING:  # the signing and conversion machinery is imported only when a pull needs it
    from siffs.integrity.verify import KeyMaterial
    from siffs.registry.image import ImageSource

Progress = Callable[[int, int], None]


@dataclass
class RegistryPull:
    """How to reach the registry and what to build (the registry part of a pull request)."""

    arch: str = "amd64"
    force: bool = False
    cache: bool = True
    no_https: bool = False
    ca_file: str | None = None
    authfile: Path | None = None
    credentials: Credentials | None = None  # from --docker-login; else resolved from the usual sources
    keep_owners: bool = False  # keep the layers' file owners instead of making everything 0:0


@dataclass
class Report:
    """What the pull moved; ``as_dict`` is the ``--json`` output (the shape of every stage's)."""

    dest: str
    source: str
    size: int = 0
    requests: int = 0
    fetched_bytes: int = 0
    resumed_bytes: int = 0
    reused: dict[str, int] = field(default_factory=dict)
    signers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    manifest_digest: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _session(ref: Reference, options: RegistryPull) -> Session:
    """A session to ``ref``'s registry with the request's credentials (or the usual sources) and TLS."""
    creds = options.credentials or resolve(ref.host, ref.repository, options.authfile)
    return Session(ref.host, creds, insecure=options.no_https, local=ref.is_local, ca_file=options.ca_file)


def pull(
    source: str,
    dest: str,
    *,
    options: RegistryPull,
    keys: KeyMaterial | None,
    progress: Progress | None = None,
) -> Report:
    """Pull ``source`` into ``dest``; ``keys`` None allows an unsigned result."""
    target = Path(dest)
    if target.exists() and not options.force:
        raise LocalIOError(f"{dest}: image file already exists (use --force to overwrite)")
    report = Report(dest, source)
    converting = layout.is_layout(source) or source.startswith("docker:")

    def check(path: Path) -> None:
        if keys is None:
            # Unsigned allowed: nothing to verify in a file already opened as a SIF (ORAS) or just
            # written as one (conversion), and the signing machinery (~0.05 s to import, a tenth
            # of a 500 MB ORAS pull) stays unloaded.
            return
        from siffs.integrity import localkey  # noqa: PLC0415 -- see TYPE_CHECKING above
        from siffs.integrity.keyring import trusted_signers  # noqa: PLC0415

        # A conversion is signed by this user's build key a moment before: that is what to check
        # (the keyring may not have held it yet when the keys were chosen).
        wanted = localkey.verification_keys() if converting else keys
        report.signers = trusted_signers(str(path), wanted, progress)

    def convert(image: ImageSource, store: Path | None) -> None:
        from siffs.registry import docker  # noqa: PLC0415 -- see TYPE_CHECKING above

        built = docker.pull(image, target, arch=options.arch, keep_owners=options.keep_owners, store=store,
                            progress=progress, warn=report.warnings.append, check=check)  # fmt: skip
        report.manifest_digest = built.manifest_digest

    try:
        # Without the cache, blobs land beside DEST, so the finished SIF is moved, not copied.
        scratch = tempfile.TemporaryDirectory(prefix=f".{target.name}.siffs-", dir=target.parent)
        with scratch as tmp:
            if layout.is_layout(source):
                convert(layout.open_layout(layout.parse(source), Path(tmp)), None)
            else:
                _pull_remote(parse(source), options=options, report=report, scratch=Path(tmp),
                             convert=convert, check=check, progress=progress)  # fmt: skip
    except FileNotFoundError as exc:
        raise LocalIOError(f"{target.parent}: {exc.strerror}") from None
    report.size = target.stat().st_size
    return report


def _pull_remote(
    ref: Reference,
    *,
    options: RegistryPull,
    report: Report,
    scratch: Path,
    convert: Callable[[ImageSource, Path | None], None],
    check: Callable[[Path], None],
    progress: Progress | None,
) -> None:
    """The registry part of ``pull``: the ORAS download or the conversion, and the traffic report."""
    session = _session(ref, options)
    try:
        store = (blob_cache_dir() if options.cache else scratch) / "blobs" / "sha256"
        if ref.scheme == "docker":
            convert(fetch.RegistryImage(session, ref, store), store)
        else:
            got = oras.pull(session, ref, Path(report.dest), arch=options.arch, store=store,
                            keep=options.cache, progress=progress, check=check)  # fmt: skip
            report.manifest_digest = got.manifest_digest
    finally:
        session.close()
    traffic = session.traffic
    report.requests, report.fetched_bytes = traffic.requests, traffic.fetched_bytes
    report.resumed_bytes = traffic.resumed_bytes
    if traffic.cached_bytes:
        report.reused["cache"] = traffic.cached_bytes


def cached_image(
    source: str, *, options: RegistryPull, keys: KeyMaterial | None, progress: Progress | None = None
) -> Path:
    """The SIF of ``source`` in siffs' cache, pulled first when the registry has a new version.

    What ``siffs run docker://…`` runs, as Apptainer does: the registry is asked which manifest
    the reference names now (one request), and the SIF made from that manifest is reused while it
    is the same; otherwise it is pulled (and checked) like any pull.
    """
    if layout.is_layout(source):
        with tempfile.TemporaryDirectory(prefix="siffs-oci-") as tmp:
            top = layout.open_layout(layout.parse(source), Path(tmp)).resolve(options.arch).top_digest
        scheme = source.partition(":")[0]
    else:
        ref = parse(source)
        session = _session(ref, options)
        try:
            top = fetch.resolve(session, ref, options.arch).top_digest
        finally:
            session.close()
        scheme = ref.scheme
    key = hashlib.sha256(f"{scheme} {top} {options.arch}".encode()).hexdigest()
    path = private_dir(blob_cache_dir() / "sif") / f"{key}.sif"
    if not path.exists():
        pull(source, str(path), options=replace(options, force=True), keys=keys, progress=progress)
    return path
