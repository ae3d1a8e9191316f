"""Make the seed corpora of ``tests/fuzz/corpus/<target>/`` (committed; rerun only to change them).

    python -m tests.fuzz.seeds            # rewrites tests/fuzz/corpus/{sif,squashfs,signature}/seed-*

Seeds are small real inputs made by the real tools, so the fuzzer starts from every
structure a parser knows: SquashFS images of a tiny tree (a two-block file, a fragment, an
empty file, a symlink, a hard link, a subdirectory, a device, xattrs) packed with every
codec plus one with uncompressed metadata; a SIF holding such an image, signed once with
DSSE and once with OpenPGP; and the signature objects themselves (DSSE envelope, clear-signed
metadata, a legacy ``SIFHASH`` message). Inputs the fuzzer adds next to the seeds keep
libFuzzer's names (SHA-1 of the content).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from siffs.integrity import clearsign
from siffs.integrity.openpgp import sign_text
from siffs.integrity.sign import DsseSigningKey, PgpSigningKey, sign
from siffs.sif import Image, ObjectInput, create
from siffs.sif.raw import partition_extra
from siffs.sif.types import DataType, FsType, PartType
from tests.fuzz.targets import CORPUS, DSSE_KEY
from tests.support.squashfs_corpus import Spec, pack

SQUASHFS = (
    Spec("raw", "seed", "mksquashfs", ("-b", "4K", "-nopad", "-noI", "-noD", "-noF", "-noX", "-exports",
                                       "-p", "null c 600 0 0 1 3")),
    Spec("gzip", "seed", "mksquashfs", ("-b", "4K", "-nopad", "-exports")),
    Spec("xz", "seed", "mksquashfs", ("-comp", "xz", "-b", "4K", "-nopad")),
    Spec("lz4", "seed", "mksquashfs", ("-comp", "lz4", "-b", "4K", "-nopad")),
    Spec("zstd", "seed", "gensquashfs", ("-c", "zstd", "-b", "4096", "-B", "1024", "--exportable")),
    Spec("lzo", "seed", "gensquashfs", ("-c", "lzo", "-b", "4096", "-B", "1024")),
)  # fmt: skip


def tree(root: Path) -> Path:
    """The smallest tree that holds every structure the reader parses."""
    (root / "sub").mkdir(parents=True)
    (root / "two-blocks").write_bytes(bytes(range(256)) * 20)  # 5120 bytes: a block and a tail
    (root / "small").write_bytes(b"fragment\n")
    (root / "empty").write_bytes(b"")
    (root / "sub" / "leaf").write_bytes(b"leaf\n")
    os.link(root / "small", root / "hard")
    os.symlink("sub/leaf", root / "link")
    os.setxattr(root / "small", "user.a", b"1")
    os.setxattr(root / "sub", "user.dir", b"directory")
    return root


def _gpg_key(home: Path) -> bytes:
    """A fresh Ed25519 signing key's armored secret part (GnuPG, batch, no passphrase)."""
    env = dict(os.environ, GNUPGHOME=str(home))
    base = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    uid = "siffs fuzz seed <fuzz@example.org>"
    subprocess.run([*base, "--quick-gen-key", uid, "ed25519", "sign", "never"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    key = subprocess.run([*base, "--armor", "--export-secret-keys", uid], env=env, check=True,
                         capture_output=True).stdout  # fmt: skip
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)
    return key


def _write(target: str, name: str, data: bytes) -> None:
    out = CORPUS / target
    out.mkdir(parents=True, exist_ok=True)
    (out / f"seed-{name}").write_bytes(data)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for stale in CORPUS.glob("*/seed-*"):
            stale.unlink()
        source = tree(tmp / "tree")
        images = {spec.name: pack(spec, source, tmp / f"{spec.name}.sqfs").read_bytes() for spec in SQUASHFS}
        for name, data in images.items():
            _write("squashfs", name, data)
        home = tmp / "gnupg"
        home.mkdir(mode=0o700)
        secret = _gpg_key(home)
        extra = partition_extra(FsType.SQUASHFS, PartType.PRIMSYS, b"02")
        for name, key in (("dsse", DsseSigningKey((DSSE_KEY,))), ("pgp", PgpSigningKey(secret, "seed key"))):
            sif = tmp / f"{name}.sif"
            create(sif, [ObjectInput(DataType.PARTITION, images["gzip"], extra=extra)], capacity=4)
            sign(str(sif), key)
            _write("sif", name, sif.read_bytes())
            with Image.open(sif) as image:
                _write("signature", name, image.read(image.signatures()[0]))
        text = b"SIFHASH:\n" + hashlib.sha256(images["gzip"]).hexdigest().encode() + b"\n"
        signature = sign_text(secret, "seed key", clearsign.signed_bytes(text)).signature
        _write("signature", "legacy", clearsign.encode(text, signature))
        shutil.rmtree(home, ignore_errors=True)
    for path in sorted(CORPUS.glob("*/seed-*")):
        print(f"{path.relative_to(CORPUS)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
