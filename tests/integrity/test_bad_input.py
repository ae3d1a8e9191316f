"""Issue 6 item 7: every kind of bad input gives one clear line and a documented exit code."""

from __future__ import annotations

import json
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
from tests.support.reference import IMAGES, verify_with

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


# -- time conflicts: a signature dated before its key ------------------------------------------


def _backdating_gpg(bin_dir: Path, days: int) -> None:
    """A ``gpg`` first on PATH that signs as if the clock were ``days`` behind (a skewed build host)."""
    bin_dir.mkdir()
    when = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() - days * 86400))
    wrapper = bin_dir / "gpg"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec {shutil.which('gpg')} --faked-system-time {when} "
        '--ignore-time-conflict --ignore-valid-from "$@"\n'
    )
    wrapper.chmod(0o755)


def test_key_newer_than_signature_verifies_with_a_warning(capsys, tmp_path, gnupg_home, monkeypatch):
    """The reference (go-crypto) accepts it; siffs too, saying so in one warning line."""
    secret, public_key, fpr = _new_key(gnupg_home, "Skewed <skewed@example.org>", "never")
    _backdating_gpg(tmp_path / "bin", days=3)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    path = _signed_copy(tmp_path, secret)
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the user's own caches stay untouched
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    public = tmp_path / "skewed.asc"
    public.write_bytes(public_key)
    code, err = cli(capsys, "verify", str(path), "--key", str(public))
    assert code == ExitCode.OK, err
    assert_one_line(err, "warning", f"predates its signing key {fpr[-16:]} by ", " days", "time conflict")
    reference = verify_with(path, [str(public)])  # the Go reference verifier
    assert reference["ok"], reference
    assert [s["signer_fingerprint"].upper() for s in reference["signatures"]] == [fpr]


def _with_critical_subpacket(signature: bytes) -> bytes:
    """A v4 signature packet (old-format header, as gpg writes) with an unknown critical subpacket."""
    assert signature[0] & 0xFC == 0x88 and signature[0] & 3 in (0, 1)  # tag 2, 1- or 2-byte length
    size = 1 << (signature[0] & 3)
    body = signature[1 + size : 1 + size + int.from_bytes(signature[1 : 1 + size], "big")]
    hashed_len = int.from_bytes(body[4:6], "big")
    hashed = body[6 : 6 + hashed_len] + bytes([2, 0x80 | 100, 0])  # type 100, critical
    new = body[:4] + len(hashed).to_bytes(2, "big") + hashed + body[6 + hashed_len :]
    return bytes([0x89]) + len(new).to_bytes(2, "big") + new


def test_gnupg_refusals_say_why(tmp_path, gnupg_home):
    """Not 'unsupported or damaged': the reason GnuPG gave, through a real gpgv."""
    from siffs.integrity.openpgp import PgpKeyring  # noqa: PLC0415

    _, public_key, fpr = _new_key(gnupg_home, "Plain <plain@example.org>", "never")
    (tmp_path / "data").write_bytes(b"signed data")
    signature = _gpg(gnupg_home, "--local-user", fpr, "--detach-sign", "-o", "-", str(tmp_path / "data"))
    keyring = PgpKeyring.from_keys([(public_key, "plain.asc")])
    assert keyring.verify_detached(b"signed data", signature).fingerprint == fpr
    with pytest.raises(errors.SignatureNotValidError, match="unknown critical subpacket"):
        keyring.verify_detached(b"signed data", _with_critical_subpacket(signature))
    header = 1 + (1 << (signature[0] & 3))  # then version, class, public-key algorithm, hash
    unknown_algorithm = signature[: header + 2] + bytes([99]) + signature[header + 3 :]
    with pytest.raises(errors.SignatureNotValidError, match="public-key algorithm is not supported"):
        keyring.verify_detached(b"signed data", unknown_algorithm)
    with pytest.raises(errors.SignatureNotValidError, match="damaged"):
        keyring.verify_detached(b"signed data", signature[:-10])


def test_key_list_marks_expired_and_revoked_keys(capsys, tmp_path, gnupg_home, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    _, good, good_fpr = _new_key(gnupg_home, "Good <good@example.org>", "never")
    _, short, short_fpr = _new_key(gnupg_home, "Short <short@example.org>", "seconds=1")
    _, gone, gone_fpr = _new_key(gnupg_home, "Gone <gone@example.org>", "never")
    certificate = (gnupg_home / "openpgp-revocs.d" / f"{gone_fpr}.rev").read_bytes()
    (tmp_path / "revoke.asc").write_bytes(certificate.replace(b":-----BEGIN", b"-----BEGIN"))
    _gpg(gnupg_home, "--import", str(tmp_path / "revoke.asc"))
    gone = _gpg(gnupg_home, "--armor", "--export", gone_fpr)
    for name, data in (("good", good), ("short", short), ("gone", gone)):
        (tmp_path / f"{name}.asc").write_bytes(data)
        assert main(["key", "import", str(tmp_path / f"{name}.asc")]) == 0
    time.sleep(2.1)  # "seconds=1": expired from then on
    capsys.readouterr()
    assert main(["key", "list"]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()}
    assert lines[good_fpr].endswith("Good <good@example.org>")
    assert lines[short_fpr].endswith("  [expired]") and lines[gone_fpr].endswith("  [revoked]")
    assert main(["key", "list", "--json"]) == 0
    status = {k["id"]: k["status"] for k in json.loads(capsys.readouterr().out)}
    assert status == {good_fpr: "", short_fpr: "expired", gone_fpr: "revoked"}


def test_trusted_keyring_export_is_cached_until_the_keys_change(tmp_path, gnupg_home, monkeypatch):
    """Mounts and runs do not run gpg to rebuild an unchanged keyring; any change rebuilds it."""
    from siffs.integrity.keyring import Keyring  # noqa: PLC0415

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    keyring = Keyring()
    exported = []
    for name in ("one", "two"):
        _, public, fpr = _new_key(gnupg_home, f"{name} <{name}@example.org>", "never")
        (tmp_path / f"{name}.asc").write_bytes(public)
        keyring.import_file(str(tmp_path / f"{name}.asc"))
        built = keyring.key_material().pgp
        assert built is not None and fpr in {k.fingerprint for k in built.keys}
        [cached] = keyring.directory.glob(".pgp-keyring-*.json")  # the previous one was replaced
        exported.append((cached.name, built))
    assert exported[0][0] != exported[1][0]
    monkeypatch.setenv("PATH", str(tmp_path / "no-gnupg-here"))  # gpg cannot run now
    assert keyring.key_material().pgp == exported[1][1]
    cached.write_text("{damaged")
    with pytest.raises(errors.KeyMaterialError, match="gpg is not installed"):
        keyring.key_material()  # a damaged export is rebuilt, not trusted
