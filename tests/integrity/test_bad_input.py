"""Issue 6 item 7: every kind of bad input gives one clear line and a documented exit code."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from siffs.cli.exitcodes import ExitCode
from siffs.cli.main import main
from siffs.integrity import errors
from siffs.integrity.keys import key_material, load_files
from siffs.integrity.sign import PgpSigningKey, sign
from siffs.integrity.verify import verify
from siffs.sif import Image
from siffs.sif.types import DESCRIPTOR_SIZE
from tests.integrity.conftest import key_path
from tests.support.reference import IMAGES

LINKED_ID = 13  # byte offset of LinkedID in a descriptor


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def assert_one_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]


def copy(name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    shutil.copyfile(IMAGES / name, path)
    return path


def patch_descriptor(path: Path, object_id: int, offset: int, value: bytes) -> None:
    with Image.open(path) as image:
        d = image.get(object_id)
        where = image.header.descriptors_offset + d.slot * DESCRIPTOR_SIZE + offset
    with open(path, "r+b") as f:
        f.seek(where)
        f.write(value)


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 1]))


def test_wrong_kind_of_key(capsys):
    image = str(IMAGES / "one-group-signed.sif")
    code, err = cli(capsys, "verify", image, "--key", key_path("ed25519"))
    assert code == ExitCode.NOT_TRUSTED
    assert_one_line(err, "OpenPGP signature", "--key")


def test_unknown_signer(capsys):
    image = str(IMAGES / "one-group-signed.sif")
    code, err = cli(capsys, "verify", image, "--key", key_path("pgp-unrelated"))
    assert code == ExitCode.NOT_TRUSTED
    assert_one_line(err, "unknown key A20C27EE7FF7BA84", "siffs key import")


def test_wrong_dsse_key(capsys):
    code, err = cli(capsys, "verify", str(IMAGES / "one-group-signed-dsse.sif"), "--key", key_path("ecdsa"))
    assert code == ExitCode.NOT_TRUSTED
    assert_one_line(err, "no given key verifies")


def test_unusable_key_file(capsys, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    for key in (str(junk), str(tmp_path / "missing.asc"), "/etc/hostname"):
        code, err = cli(capsys, "verify", str(IMAGES / "one-group-signed-dsse.sif"), "--key", key)
        assert code == ExitCode.KEY_ERROR
        assert_one_line(err, key)


def test_signature_moved_to_another_group(capsys, tmp_path):
    path = copy("two-groups-signed.sif", tmp_path)
    patch_descriptor(path, 4, LINKED_ID, struct.pack("<I", 2 | 0xF0000000))  # group 1's signature → group 2
    code, err = cli(capsys, "verify", str(path), "--key", key_path("pgp-public"), "--group", "2")
    assert code == ExitCode.NOT_TRUSTED
    assert_one_line(err, "signature 4 covers object 4")


@pytest.mark.parametrize(
    ("where", "message"), [(60, "bad signature"), (-2, "damaged or of an unknown format")]
)
def test_corrupt_signature_object(capsys, tmp_path, where, message):
    path = copy("one-group-signed.sif", tmp_path)
    with Image.open(path) as image:
        sig = image.signatures()[0]
        armor = image.read(sig).index(b"-----BEGIN PGP SIGNATURE-----\n\n") + 31
    # A byte of the signature's MPI (the armor still decodes), or the END line (it does not).
    flip(path, sig.offset + armor + where if where > 0 else sig.end + where)
    code, err = cli(capsys, "verify", str(path), "--key", key_path("pgp-public"))
    assert code == ExitCode.NOT_TRUSTED
    assert_one_line(err, "signature", "3", message)


def test_signature_pointing_at_a_missing_object(capsys, tmp_path):
    path = copy("one-group-signed-legacy.sif", tmp_path)
    patch_descriptor(path, 3, LINKED_ID, struct.pack("<I", 9))
    code, err = cli(capsys, "verify", str(path), "--key", key_path("pgp-public"), "--legacy")
    assert code == ExitCode.NOT_TRUSTED
    assert_one_line(err, "no legacy signature found for object 2")
    code, err = cli(capsys, "verify", str(path), "--key", key_path("pgp-public"), "--legacy", "--object", "9")
    assert code == ExitCode.NOT_TRUSTED
    assert_one_line(err, "object 9 not found")


def test_image_changed_after_signing(capsys, tmp_path):
    path = copy("one-group-signed-dsse.sif", tmp_path)
    with Image.open(path) as image:
        partition = image.primary_partition()
    flip(path, partition.offset + partition.size // 2)
    code, err = cli(capsys, "verify", str(path), "--key", key_path("rsa"))
    assert code == ExitCode.NOT_TRUSTED
    assert_one_line(err, f"data of object {partition.id} changed")


# -- expired and revoked keys, made with GnuPG for the test ------------------------------------


def _gpg(home: Path, *args: str) -> bytes:
    env = dict(os.environ, GNUPGHOME=str(home))
    base = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    return subprocess.run([*base, *args], env=env, check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def gnupg_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    yield home
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=dict(os.environ, GNUPGHOME=str(home)), check=False)


def _new_key(home: Path, uid: str, expire: str) -> tuple[bytes, bytes, str]:
    _gpg(home, "--quick-gen-key", uid, "ed25519", "sign", expire)
    listing = _gpg(home, "--with-colons", "--list-keys", uid).decode()
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
    return _gpg(home, "--armor", "--export-secret-keys", fpr), _gpg(home, "--armor", "--export", fpr), fpr


def _signed_copy(tmp_path: Path, secret: bytes) -> Path:
    path = copy("one-group.sif", tmp_path)
    sign(str(path), PgpSigningKey(secret, "test key"))
    return path


def test_expired_key(capsys, tmp_path, gnupg_home):
    secret, _, fpr = _new_key(gnupg_home, "Expiring <expiring@example.org>", "seconds=2")
    path = _signed_copy(tmp_path, secret)
    listing = _gpg(gnupg_home, "--with-colons", "--list-keys", fpr).decode()
    expires = int(next(line.split(":")[6] for line in listing.splitlines() if line.startswith("pub")))
    time.sleep(max(0.0, expires + 1.1 - time.time()))  # GnuPG: expired once now > expiry (seconds)
    public = tmp_path / "expired.asc"
    public.write_bytes(_gpg(gnupg_home, "--armor", "--export", fpr))
    with Image.open(path) as image:
        report = verify(image, key_material(load_files([str(public)])))
    assert isinstance(report.error, errors.KeyExpiredError)
    code, err = cli(capsys, "verify", str(path), "--key", str(public))
    assert code == ExitCode.NOT_TRUSTED
    assert_one_line(err, "has expired")


def test_revoked_key(capsys, tmp_path, gnupg_home):
    secret, _, fpr = _new_key(gnupg_home, "Revoked <revoked@example.org>", "never")
    path = _signed_copy(tmp_path, secret)
    certificate = (gnupg_home / "openpgp-revocs.d" / f"{fpr}.rev").read_bytes()
    # GnuPG stores the certificate with a ':' guarding the armor line against accidental import.
    revocation = tmp_path / "revoke.asc"
    revocation.write_bytes(
        certificate.replace(b":-----BEGIN PGP PUBLIC KEY BLOCK-----", b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    )
    _gpg(gnupg_home, "--import", str(revocation))
    public = tmp_path / "revoked.asc"
    public.write_bytes(_gpg(gnupg_home, "--armor", "--export", fpr))
    with Image.open(path) as image:
        report = verify(image, key_material(load_files([str(public)])))
    assert isinstance(report.error, errors.KeyRevokedError)
    code, err = cli(capsys, "verify", str(path), "--key", str(public))
    assert code == ExitCode.NOT_TRUSTED
    assert_one_line(err, "revoked")
