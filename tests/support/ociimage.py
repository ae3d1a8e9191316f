"""The docker:// test image of spec registry.md §7.2, built deterministically with ``tarfile``.

Three layers (gzip, zstd, uncompressed by default) exercise whiteouts, opaque directories, hard
links across layers, a file replaced by a directory, mode-0000 and setuid files, xattrs, long
and UTF-8 names, devices and FIFOs. ``oci_layout`` writes it as an OCI image layout (for umoci,
the oracle); ``push`` sends it to a registry with siffs' own client so the digests stay exact.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import zstandard

MTIME = 1700000000
#: vfs_cap_data revision 2: effective, permitted CAP_NET_BIND_SERVICE (all bytes ASCII, for PAX).
CAPABILITY = "\x01\x00\x00\x02\x00\x04\x00\x00" + "\x00" * 12
BUSYBOX = Path("/bin/busybox")
#: The annotation an OCI layout's index.json names an image's tag with.
REF_NAME = "org.opencontainers.image.ref.name"


def _entry(
    tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
    uid: int = 0, gid: int = 0, link: str = "", xattrs: dict[str, str] | None = None,
    dev: tuple[int, int] = (0, 0),
) -> None:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, MTIME
    info.linkname = link
    info.devmajor, info.devminor = dev
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def _tar(build) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return out.getvalue()


def layer1(tar: tarfile.TarFile) -> None:
    d = tarfile.DIRTYPE
    for name in ("bin", "etc", "data", "opq", "opq/sub", "opq2", "hl", "perm", "home", "dev", "run"):
        _entry(tar, name, d, mode=0o755)
    _entry(tar, "tmpx", d, mode=0o1777)
    _entry(tar, "perm/locked", d, mode=0o500)
    _entry(tar, "perm/ro", d, mode=0o555)
    _entry(tar, "home/user", d, mode=0o750, uid=1000, gid=1000)
    _entry(tar, "bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755)
    _entry(tar, "bin/suid", data=b"suid\n", mode=0o4755)
    _entry(tar, "bin/sgid", data=b"sgid\n", mode=0o2755)
    _entry(tar, "bin/cap", data=b"cap\n", mode=0o755, xattrs={"security.capability": CAPABILITY})
    _entry(tar, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")
    _entry(tar, "etc/hosts", data=b"127.0.0.1 layer1\n")
    _entry(tar, "data/keep.txt", data=b"keep v1\n")
    _entry(tar, "data/old.txt", data=b"old\n")
    _entry(tar, "data/xattr.txt", data=b"x\n", xattrs={"user.test": "hello"})
    _entry(tar, "data/" + "d" * 60, d, mode=0o755)
    _entry(tar, "data/" + "d" * 60 + "/" + "f" * 80 + ".txt", data=b"long\n")
    _entry(tar, "data/\u00fcn\u00ef.txt", data=b"utf-8\n")
    _entry(tar, "opq/a.txt", data=b"a\n")
    _entry(tar, "opq/sub/b.txt", data=b"b\n")
    _entry(tar, "opq2/lower.txt", data=b"lower\n")
    _entry(tar, "hl/orig", data=b"orig\n", mode=0o640, uid=1000, gid=1000)
    _entry(tar, "swap", data=b"a file, later a directory\n")
    _entry(tar, "perm/secret", data=b"secret\n", mode=0o000)
    _entry(tar, "perm/locked/inner", data=b"inner\n", mode=0o400)
    _entry(tar, "perm/ro/file", data=b"ro\n", mode=0o444)
    _entry(tar, "home/user/.profile", data=b"# profile\n", uid=1000, gid=1000)
    _entry(tar, "data/keep-hl", tarfile.LNKTYPE, link="data/keep.txt")
    _entry(tar, "bin/sh", tarfile.SYMTYPE, link="busybox", mode=0o777)
    _entry(tar, "bin/ls", tarfile.SYMTYPE, link="busybox", mode=0o777)
    _entry(tar, "link", tarfile.SYMTYPE, link="/data/keep.txt", mode=0o777)
    _entry(tar, "dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
    _entry(tar, "run/fifo", tarfile.FIFOTYPE, mode=0o644)


def layer2(tar: tarfile.TarFile) -> None:
    _entry(tar, "data/.wh.old.txt")
    _entry(tar, "opq", tarfile.DIRTYPE, mode=0o755)
    _entry(tar, "opq/.wh..wh..opq")
    _entry(tar, "opq/new.txt", data=b"new\n")
    _entry(tar, "hl/link", tarfile.LNKTYPE, link="hl/orig")
    _entry(tar, "hl/two", data=b"two\n")
    _entry(tar, "hl/two-link", tarfile.LNKTYPE, link="hl/two")
    _entry(tar, "swap", tarfile.DIRTYPE, mode=0o755)
    _entry(tar, "swap/inside.txt", data=b"inside\n")
    _entry(tar, "etc/added", data=b"added\n")
    _entry(tar, "nothere/.wh.ghost")


def layer3(tar: tarfile.TarFile) -> None:
    _entry(tar, "perm/.wh.locked")
    _entry(tar, "data/keep.txt", data=b"keep v3\n")
    _entry(tar, "opq2/fresh.txt", data=b"fresh\n")
    _entry(tar, "opq2/.wh..wh..opq")
    _entry(tar, "bin/.wh.ls")
    _entry(tar, "etc/.wh.passwd")
    _entry(tar, "etc/passwd", data=b"root:x:0:0:new:/root:/bin/sh\n")
    _entry(tar, "etc/hosts", data=b"127.0.0.1 layer3\n")
    _entry(tar, "etc/.wh.hosts")


QUOTE = 'QUOTE=it\'s "q" $HOME `x` \\ end'
CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "FOO=bar baz", QUOTE, "EMPTY=", "1BAD=x", "MULTI=a=b=c"],
        "Entrypoint": ["/bin/busybox", "printf", "[%s]"],
        "Cmd": ["a b", "it's", "$HOME", "`x`", "back\\slash", '"q"', "*"],
        "WorkingDir": "/data",
        "Labels": {"org.example.html": "<b>&amp;</b>", "maintainer": "siffs tests"},
        "User": "1000:1000",
        "StopSignal": "SIGTERM",
    },
}  # fmt: skip

MEDIA = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


@dataclass
class Image:
    blobs: dict[str, bytes]  # digest -> bytes
    manifest: bytes
    config: bytes

    @property
    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()


def _compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def build(compression: tuple[str, str, str] = ("gzip", "zstd", "none")) -> Image:
    tars = [_tar(layer1), _tar(layer2), _tar(layer3)]
    blobs: dict[str, bytes] = {}
    descriptors = []
    for raw, how in zip(tars, compression, strict=True):
        data = _compress(raw, how)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        descriptors.append({"mediaType": MEDIA[how], "digest": digest, "size": len(data)})
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
    config = dict(CONFIG, rootfs={"type": "layers", "diff_ids": diff_ids})
    config_bytes = json.dumps(config).encode()
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    blobs[config_digest] = config_bytes
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config_bytes)},
        "layers": descriptors,
    }).encode()  # fmt: skip
    return Image(blobs, manifest, config_bytes)


def oci_layout(image: Image, path: Path, tag: str) -> None:
    """``image`` as an OCI image layout (what umoci reads)."""
    (path / "blobs" / "sha256").mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for digest, data in [*image.blobs.items(), (image.manifest_digest, image.manifest)]:
        (path / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": image.manifest_digest,
        "size": len(image.manifest), "annotations": {REF_NAME: tag}}]}  # fmt: skip
    (path / "index.json").write_text(json.dumps(index))
