"""The ORAS SIF artifact (spec registry.md §4): push byte-identical to Apptainer, pull with its rules.

Push writes two blobs (the 2-byte ``{}`` config and the SIF itself) and the manifest Apptainer
writes, field for field, so the same file and time give the same manifest digest. Pull accepts
what Apptainer and SingularityCE accept: any config type, exactly one layer of the SIF media type
(or its legacy misspelt one), an index resolved to linux/<arch>. Every byte is checked against
its digest before the file is renamed into place; trusting its signatures is the caller's next
step, as for any local SIF.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siffs import cache
from siffs.registry import fetch
from siffs.registry.cache import LIMIT_MIB
from siffs.registry.errors import LocalIOError, RegistryError, UnsupportedError
from siffs.registry.fetch import ACCEPT, file_digest, resolve
from siffs.registry.http import Session
from siffs.registry.image import MANIFEST_TYPE, Blob, Progress, sha256
from siffs.registry.reference import Reference
from siffs.sif import Image, SifError
from siffs.sif.durable import fsync_directory
from siffs.sif.types import DataType

CONFIG_TYPE = "application/vnd.sylabs.sif.config.v1+json"
LAYER_TYPE = "application/vnd.sylabs.sif.layer.v1.sif"
LEGACY_LAYER_TYPE = "appliciation/vnd.sylabs.sif.layer.tar"  # sic: Singularity < 3.7 wrote it so
EMPTY_CONFIG = b"{}"
CREATED = "org.opencontainers.image.created"
TITLE = "org.opencontainers.image.title"
#: Blobs up to this size are uploaded in one PUT; larger ones in PATCH chunks of this size.
CHUNK = 64 << 20


def _go_json(value: Any) -> bytes:
    """Go's ``json.Marshal``: compact, UTF-8, ``<``/``>``/``&``/U+2028/U+2029 escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, esc)
    return text.encode()


# -- push ------------------------------------------------------------------------------------


def _created(path: Path, now: dt.datetime) -> str | None:
    """Apptainer's ``created`` annotation: the image's own label, the time now, or none."""
    try:
        with Image.open(path) as image:
            meta = next(
                (d for d in image.descriptors
                 if d.data_type == DataType.GENERIC_JSON and d.name == b"inspect-metadata.json"),
                None,
            )  # fmt: skip
            if meta is None:
                return now.strftime("%Y-%m-%dT%H:%M:%SZ")
            data = json.loads(image.read(meta))
    except (SifError, ValueError):
        return now.strftime("%Y-%m-%dT%H:%M:%SZ")
    label = (((data.get("data") or {}).get("attributes") or {}).get("labels") or {}).get(CREATED)
    if not label:
        return None
    try:
        when = dt.datetime.fromisoformat(str(label).replace("Z", "+00:00"))
    except ValueError:
        return None  # Apptainer fails the push here; siffs omits the annotation (caller warns)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def manifest(
    path: Path, sif_digest: str, size: int, annotations: Mapping[str, str], now: dt.datetime
) -> bytes:
    """The manifest Apptainer pushes for this file (byte for byte)."""
    extra = dict(annotations)
    created = _created(path, now)
    if created is not None:
        extra.setdefault(CREATED, created)
    value: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "size": len(EMPTY_CONFIG),
            "digest": sha256(EMPTY_CONFIG),
            "data": "e30=",
        },
        "layers": [
            {"mediaType": LAYER_TYPE, "size": size, "digest": sif_digest, "annotations": {TITLE: path.name}}
        ],
    }
    if extra:
        value["annotations"] = dict(sorted(extra.items()))
    return _go_json(value)


def _upload(session: Session, ref: Reference, blob: Blob, progress: Progress | None = None) -> None:
    scope = f"repository:{ref.repository}:pull,push"
    digest, size, path = blob.digest, blob.size, blob.path
    head = session.request("HEAD", f"/v2/{ref.repository}/blobs/{digest}", scope=scope)
    head.raw.read()
    if head.status == 200:
        return
    opened = session.request("POST", f"/v2/{ref.repository}/blobs/uploads/", scope=scope,
                             headers={"Content-Length": "0"}, body=b"", ok=frozenset({202, 201}))  # fmt: skip
    opened.raw.read()
    location = _location(opened, session)
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(path.open("rb")) if path is not None else None
        if size <= CHUNK:
            body = f.read() if f is not None else blob.data
            done = session.request("PUT", _with_digest(location, digest), scope=scope, body=body,
                                   headers={"Content-Type": "application/octet-stream"},
                                   ok=frozenset({201}))  # fmt: skip
            done.raw.read()
        else:
            assert f is not None
            offset = 0
            while chunk := f.read(CHUNK):
                sent = session.request(
                    "PATCH", location, scope=scope, body=chunk, ok=frozenset({202}),
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
                )  # fmt: skip
                sent.raw.read()
                location = _location(sent, session)
                offset += len(chunk)
                if progress:
                    progress(offset, size)
            done = session.request("PUT", _with_digest(location, digest), scope=scope, body=b"",
                                   ok=frozenset({201}))  # fmt: skip
            done.raw.read()
    if done.status == 404:
        raise RegistryError(f"{ref.host}: the upload of {digest} was lost (404); try again")
    if progress:
        progress(size, size)


def _location(response: Any, session: Session) -> str:
    location: str | None = response.header("Location")
    if not location:
        raise RegistryError(f"{session.host}: an upload answer had no Location")
    return location if "://" in location else session.base() + location


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + "digest=" + digest


def push(
    session: Session,
    path: Path,
    ref: Reference,
    *,
    annotations: Mapping[str, str] = {},
    progress: Progress | None = None,
    now: dt.datetime | None = None,
) -> str:
    """Push ``path`` as an ORAS SIF artifact; returns the manifest digest."""
    try:
        with Image.open(path):
            pass
    except SifError as exc:
        raise UnsupportedError(f"{path}: not a SIF image ({exc})") from None
    sif_digest, size = file_digest(path), path.stat().st_size
    body = manifest(path, sif_digest, size, annotations, now or dt.datetime.now(dt.UTC))
    digest = sha256(body)
    scope = f"repository:{ref.repository}:pull,push"
    head = session.request("HEAD", f"/v2/{ref.repository}/manifests/{ref.ref}", scope=scope,
                           headers={"Accept": ACCEPT})  # fmt: skip
    head.raw.read()
    if head.status == 200 and head.header("Docker-Content-Digest") == digest:
        return digest  # already there: nothing to send
    _upload(session, ref, Blob(sha256(EMPTY_CONFIG), len(EMPTY_CONFIG), data=EMPTY_CONFIG))
    _upload(session, ref, Blob(sif_digest, size, path), progress)
    put = session.request("PUT", f"/v2/{ref.repository}/manifests/{ref.ref}", scope=scope, body=body,
                          headers={"Content-Type": MANIFEST_TYPE}, ok=frozenset({201}))  # fmt: skip
    put.raw.read()
    return digest


# -- pull ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pulled:
    manifest_digest: str
    layer_digest: str
    size: int


def pull(
    session: Session,
    ref: Reference,
    dest: Path,
    *,
    arch: str = "amd64",
    store: Path,
    keep: bool = True,
    progress: Progress | None = None,
    check: Callable[[Path], None] | None = None,
) -> Pulled:
    """Fetch the SIF of ``ref`` into ``dest`` (atomically); ``check`` runs on the verified temp file.

    A blob already in ``store`` (``<hex>``, re-verified) is not fetched again; an interrupted
    download resumes from its partial file there. With ``keep`` False (no cache) the blob is
    moved, not copied: ``store`` should then be on DEST's file system.
    """
    resolved = resolve(session, ref, arch)
    layers = resolved.manifest.get("layers") or []
    if len(layers) != 1:
        raise UnsupportedError(f"ORAS SIF image should have a single layer, found {len(layers)}")
    layer = layers[0]
    if layer.get("mediaType") not in (LAYER_TYPE, LEGACY_LAYER_TYPE):
        raise UnsupportedError(f"invalid layer mediatype: {layer.get('mediaType')}")
    wanted = Blob.of(layer, f"{ref}: the layer")
    blob = fetch.blob(session, ref, wanted, store, progress)
    tmp = dest.parent / f".{dest.name}.siffs-{secrets.token_hex(4)}.part"
    try:
        if keep:
            _copy(blob, tmp)
        else:
            os.replace(blob, tmp)
        try:
            with Image.open(tmp):
                pass
        except SifError:
            raise UnsupportedError("downloaded file is not a SIF") from None
        if check is not None:
            check(tmp)
        os.replace(tmp, dest)
        fsync_directory(dest.parent)
        cache.prune(store, cache.limit(LIMIT_MIB))  # the blob just used is the newest: pruned last
    except OSError as exc:
        raise LocalIOError(f"{dest}: cannot write: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return Pulled(resolved.digest, wanted.digest, wanted.size)


def _copy(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)  # sendfile(2) on Linux: no copy through user space
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
