"""``docker://`` images to SIF without root and without losing data (spec registry.md §5).

The layers are fetched into the verified blob cache, merged in memory (``layers``), given the
Singularity metadata (``metadata``) and streamed as one tar into ``mksquashfs -tar``: no tree is
ever extracted to disk, so mode-0000 files keep their contents and nothing depends on what an
unprivileged user may create. The SIF is laid out as Apptainer lays it out (definition,
inspect metadata, OCI config, the root file system as the primary partition). Signing it for
the user's trust policy is the caller's step.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard

from siffs import cache
from siffs.integrity.localkey import signing_key
from siffs.integrity.sign import sign
from siffs.registry import metadata
from siffs.registry.cache import LIMIT_MIB
from siffs.registry.errors import DigestError, LocalIOError, RegistryError, UnsupportedError
from siffs.registry.image import Blob, Extent, ImageSource, Progress
from siffs.registry.layers import Tree
from siffs.sif import ObjectInput, create
from siffs.sif.durable import fsync_directory
from siffs.sif.raw import partition_extra
from siffs.sif.types import DataType, FsType, PartType, arch_code
from siffs.squashfs.errors import SquashfsError
from siffs.squashfs.paths import resolve
from siffs.squashfs.reader import SquashFS

CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
#: Layer media types and their compression.
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
_MAGIC = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}
#: ELF e_machine → Go architecture name (what SIF headers record).
_ELF_ARCH = {62: "amd64", 3: "386", 183: "arm64", 40: "arm", 21: "ppc64le", 22: "s390x", 243: "riscv64",
             258: "loong64"}  # fmt: skip
_SINGULARITY_DIRS = (".singularity.d/libs", ".singularity.d/actions", ".singularity.d/env", "dev", "proc",
                     "root", "var/tmp", "tmp", "etc", "sys", "home")  # fmt: skip
_SYMLINKS = (
    ("singularity", ".singularity.d/runscript"),
    (".run", ".singularity.d/actions/run"),
    (".exec", ".singularity.d/actions/exec"),
    (".test", ".singularity.d/actions/test"),
    (".shell", ".singularity.d/actions/shell"),
    ("environment", ".singularity.d/env/90-environment.sh"),
)
_READ = 1 << 20


@dataclass(frozen=True)
class Converted:
    top_digest: str
    manifest_digest: str
    arch: str
    layers: int


class _Hashing:
    """Reads a stream while hashing it (the layer's uncompressed bytes, for its diff_id)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream, self.hash = stream, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.hash.update(data)
        return data

    def drain(self) -> str:
        while self.read(_READ):
            pass
        return "sha256:" + self.hash.hexdigest()


@contextmanager
def _open_layer(extent: Extent, compression: str, number: int) -> Iterator[IO[bytes]]:
    with extent.open() as f:
        magic = _MAGIC.get(compression)
        if magic is not None and not f.peek(4)[:4].startswith(magic):  # type: ignore[attr-defined]
            raise DigestError(f"layer {number}: its media type says {compression}, but its data is not")
        if compression == "gzip":
            with gzip.GzipFile(fileobj=f) as unzipped:
                yield unzipped  # type: ignore[misc]
        elif compression == "zstd":
            with zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as unzstd:
                yield unzstd
        else:
            yield f


def _add_metadata(
    tree: Tree, config: dict[str, Any], labels: dict[str, str], source: ImageSource
) -> dict[str, str]:
    """Apptainer's /.singularity.d layout with siffs' text; returns the files inspect shows."""
    for directory in _SINGULARITY_DIRS:
        tree.ensure_dir(directory)
    for link, target in _SYMLINKS:
        tree.put_symlink(link, target)
    body = config.get("config") or {}
    env_script = metadata.environment_script([str(e) for e in body.get("Env") or []])
    run = metadata.runscript(body.get("Entrypoint"), body.get("Cmd"))
    label_text = metadata.go_json_indent(labels)
    deffile = metadata.deffile(source.bootstrap, source.origin)
    files = {
        "etc/hosts": (b"", 0o644),
        "etc/resolv.conf": (b"", 0o644),
        ".singularity.d/env/01-base.sh": (metadata.BASE_ENV.encode(), 0o755),
        ".singularity.d/env/10-docker2singularity.sh": (env_script.encode(), 0o755),
        ".singularity.d/env/90-environment.sh": (metadata.ENVIRONMENT.encode(), 0o755),
        ".singularity.d/env/95-apps.sh": (metadata.APPS.encode(), 0o755),
        ".singularity.d/env/99-base.sh": (metadata.LIBS.encode(), 0o755),
        ".singularity.d/env/99-runtimevars.sh": (metadata.RUNTIME_VARS.encode(), 0o755),
        ".singularity.d/runscript": (run.encode(), 0o755),
        ".singularity.d/startscript": (metadata.START.encode(), 0o755),
        ".singularity.d/labels.json": (label_text.encode(), 0o644),
        ".singularity.d/Singularity": (deffile.encode(), 0o644),
    }
    for action in ("exec", "run", "shell", "start", "test"):
        files[f".singularity.d/actions/{action}"] = (metadata.ACTION.encode(), 0o755)
    for path, (data, mode) in files.items():
        tree.put_file(path, data, mode)
    return {
        "/.singularity.d/env/10-docker2singularity.sh": env_script.rstrip("\n"),
        "/.singularity.d/env/90-environment.sh": metadata.ENVIRONMENT.rstrip("\n"),
        "runscript": run,
        "deffile": deffile,
        "labels": label_text,
    }


def _elf_arch(squashfs: Path) -> str | None:
    """Apptainer's rule: the architecture of /bin/sh in the image (None when it is no ELF file)."""
    try:
        fs = SquashFS.open(squashfs)
    except SquashfsError:
        return None
    try:
        header = fs.read(resolve(fs, b"/bin/sh").ino, 0, 20)
    except SquashfsError:
        return None
    finally:
        fs.close()
    if len(header) < 20 or not header.startswith(b"\x7fELF"):
        return None
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    return _ELF_ARCH.get(machine)


def convert(
    source: ImageSource,
    out: Path,
    *,
    work: Path,
    arch: str = "amd64",
    keep_owners: bool = False,
    progress: Progress | None = None,
    warn: Callable[[str], None] = lambda _: None,
    now: dt.datetime | None = None,
) -> Converted:
    """Write the SIF of ``source`` to ``out`` (a new file); ``work`` holds the squashfs meanwhile."""
    resolved = source.resolve(arch)
    manifest = resolved.manifest
    config_descriptor = manifest.get("config") or {}
    media = str(config_descriptor.get("mediaType", ""))
    if media not in CONFIG_TYPES:
        raise UnsupportedError(
            f"not a container image (config type {media}); if it is a SIF artifact, use oras://"
        )
    config_blob = source.blob(Blob.of(config_descriptor, "the image config"))
    try:
        config = json.loads(config_blob.read())
    except ValueError:
        raise UnsupportedError(f"{source.name}: the image config is not JSON") from None
    if config.get("os", "linux") != "linux" or config.get("architecture", arch) != arch:
        warn(f"the image says it is for {config.get('os')}/{config.get('architecture')}, not linux/{arch}")
    descriptors = manifest.get("layers") or []
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    if len(diff_ids) != len(descriptors):
        raise UnsupportedError(
            f"{source.name}: {len(descriptors)} layers but {len(diff_ids)} diff_ids in the config"
        )
    layers: list[tuple[Extent, str]] = []
    total = sum(int(d.get("size", 0)) for d in descriptors)
    _check_space(work, 3 * total)  # the tree compresses to about what the layers hold; margin for both
    done = 0
    for number, descriptor in enumerate(descriptors, 1):
        layer_media = str(descriptor.get("mediaType", ""))
        if layer_media not in LAYER_TYPES:
            raise UnsupportedError(f"unsupported layer media type {layer_media}")
        wanted = Blob.of(descriptor, f"layer {number}")
        base = done

        def step(have: int, _size: int, base: int = base) -> None:
            if progress:
                progress(base + have, total)

        layers.append((source.blob(wanted, step), LAYER_TYPES[layer_media]))
        done += wanted.size
    tree = Tree()
    for index, (extent, compression) in enumerate(layers):
        with _open_layer(extent, compression, index + 1) as stream:
            hashing = _Hashing(stream)
            try:
                with tarfile.open(fileobj=hashing, mode="r|") as tar:  # type: ignore[call-overload]
                    tree.apply(index, iter(tar))
            except (tarfile.TarError, EOFError, OSError, zlib.error, zstandard.ZstdError) as exc:
                what = f"layer {index + 1} of {source.name}"
                raise UnsupportedError(f"{what} is not a readable tar ({exc})") from None
            if hashing.drain() != diff_ids[index]:
                raise DigestError(f"layer {index + 1} of {source.name} does not match its config diff_id")
    when = now or dt.datetime.now(dt.UTC)
    labels = metadata.labels(
        (config.get("config") or {}).get("Labels"),
        bootstrap=source.bootstrap,
        source=source.origin,
        base=(source.base_name, resolved.top_digest) if source.base_name else None,
        arch=arch,
        when=when,
    )
    inspect = _add_metadata(tree, config, labels, source)
    squashfs = work / "root.squashfs"
    _mksquashfs(tree, layers, squashfs, keep_owners=keep_owners)
    found = _elf_arch(squashfs) or arch
    if found != arch:
        warn(f"the image's /bin/sh is built for {found}, not {arch}: the SIF says {found}")
    _write_sif(out, squashfs, config, inspect, arch=found, when=when)
    return Converted(resolved.top_digest, resolved.digest, found, len(layers))


def _check_space(directory: Path, needed: int) -> None:
    """Fail before the work when the disk cannot hold it (not half-way through a long build)."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < needed:
        more = (needed - free + (1 << 20) - 1) >> 20
        raise LocalIOError(f"no space left on {directory} for this image; need about {more} MiB more")


def _mksquashfs(tree: Tree, layers: list[tuple[Extent, str]], out: Path, *, keep_owners: bool) -> None:
    """One tar stream of the merged tree into ``mksquashfs -tar`` (spec registry.md §5.6).

    Owners are 0:0 (``-all-root``) unless ``keep_owners``. Then the tar's owners are kept, but
    mksquashfs gives the root directory its own user's ids (``-root-uid`` is ignored in tar
    mode): run as a user, it runs in a user namespace where that user is root, so ``/`` is 0:0.
    """
    binary = shutil.which("mksquashfs")
    if binary is None:
        raise LocalIOError("mksquashfs (squashfs-tools >= 4.5) not found: apt install squashfs-tools")

    def read_layer(index: int) -> AbstractContextManager[IO[bytes]]:
        extent, compression = layers[index]
        return _open_layer(extent, compression, index + 1)

    owners = [] if keep_owners else ["-all-root"]
    argv = [binary, "-", str(out), "-tar", "-noappend", "-comp", "gzip", *owners, "-root-mode", "755",
            "-no-progress", "-quiet"]  # fmt: skip
    if keep_owners and os.getuid() != 0:
        argv = [*_as_namespace_root(), *argv]
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
        assert proc.stdin is not None
        try:
            with proc.stdin:
                tree.write_tar(proc.stdin, read_layer, len(layers))
        except BrokenPipeError:
            pass  # mksquashfs stopped reading: its own message says why
        finally:
            proc.wait()
        errors.seek(0)
        err = errors.read()
    if proc.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        if "No space left" in last[0]:
            raise LocalIOError(f"no space left on {out.parent} while writing the squashfs")
        raise RegistryError(f"mksquashfs failed: {last[0]}")


def _as_namespace_root() -> list[str]:
    """The command prefix that runs a program as root of a new user namespace (this user mapped to 0)."""
    binary = shutil.which("unshare")
    if binary is None:
        raise LocalIOError("--keep-owners needs unshare to build as a user: apt install util-linux")
    return [binary, "--user", "--map-root-user"]


def _write_sif(
    out: Path,
    squashfs: Path,
    config: dict[str, Any],
    inspect: dict[str, str],
    *,
    arch: str,
    when: dt.datetime,
) -> None:
    """The SIF as Apptainer writes it: definition, inspect metadata, OCI config, root file system."""
    attributes = {
        "environment": {k: v for k, v in inspect.items() if k.startswith("/")},
        "labels": json.loads(inspect["labels"]),
        "runscript": inspect["runscript"],
        "deffile": inspect["deffile"],
    }
    inspect_json = json.dumps({"data": {"attributes": attributes}, "type": "container"}).encode()
    stamp = int(when.timestamp())
    with squashfs.open("rb") as root:
        oci = metadata.oci_config(config.get("config") or {})
        extra = partition_extra(FsType.SQUASHFS, PartType.PRIMSYS, arch_code(arch))
        objects = [
            ObjectInput(DataType.DEFFILE, inspect["deffile"].encode(), created_at=stamp),
            ObjectInput(DataType.GENERIC_JSON, inspect_json, name=b"inspect-metadata.json", created_at=stamp),
            ObjectInput(DataType.GENERIC_JSON, oci, name=b"oci-config.json", created_at=stamp),
            ObjectInput(DataType.PARTITION, root, created_at=stamp, extra=extra),
        ]
        create(out, objects, when=stamp)


def pull(
    source: ImageSource,
    dest: Path,
    *,
    arch: str = "amd64",
    keep_owners: bool = False,
    store: Path | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] = lambda _: None,
    check: Callable[[Path], None] | None = None,
) -> Converted:
    """Convert ``source`` into ``dest`` atomically: built beside it, signed with this user's local
    build key (so the trust policy takes it, and notices any later change), checked, renamed.
    ``store``, the blob cache, is pruned to its size limit afterwards."""
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.siffs-", dir=dest.parent))
    try:
        image = work / "image.sif"
        converted = convert(
            source, image, work=work, arch=arch, keep_owners=keep_owners, progress=progress, warn=warn
        )
        sign(str(image), signing_key())
        if check is not None:
            check(image)
        os.replace(image, dest)
        fsync_directory(dest.parent)
        if store is not None:
            cache.prune(store, cache.limit(LIMIT_MIB))
    except OSError as exc:
        raise LocalIOError(f"{dest}: cannot write: {exc.strerror}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return converted
