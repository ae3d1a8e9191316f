"""fs type 6 (Apptainer's gocryptfs images): the spec's vectors, gocryptfs as oracle, every sanity rule."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from siffs.crypt import gocryptfs
from siffs.crypt.errors import CorruptEncryption, CryptError, KeyProblem, TamperedBlock, UnsupportedEncryption
from siffs.sif.types import FsType
from tests.crypt.conftest import Encrypted
from tests.support.crypt import gocryptfs_outer, wrap
from tests.support.images import mksquashfs, require_tool
from tests.support.mounts import siffs

# gocryptfs-sif.md §10, mounted with real gocryptfs 2.3 when the spec was written.
CONF_1024 = (
    b'{"Creator":"gocryptfs v2.6.1",'
    b'"EncryptedKey":"gIGCg4SFhoeIiYqLjI2Oj33YH+LoMWt+dPLvZNzTriCq3DoNJTNB9LhAozFCBGZSCpg+IIH5fUFAgGwTkKwTcw==",'
    b'"ScryptObject":{"Salt":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","N":1024,'
    b'"R":8,"P":1,"KeyLen":32},"Version":2,"FeatureFlags":["HKDF","GCMIV128","PlaintextNames"]}'
)
MK = bytes(range(0x40, 0x60))
CK = bytes.fromhex("11bfc49bfdbae9a9664ccfa0b85458f604149b24cde47648d7ca66bfd9c99869")
HEADER = bytes.fromhex("0002a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
HELLO = bytes.fromhex(
    "0002a0a1a2a3a4a5a6a7a8a9aaabacadaeafc0c1c2c3c4c5c6c7c8c9cacbcccdcecf93eae595efb3c0e4b182773cc38736c6efafe9cf8ec1"
    "5e0b197a5e3bac"
)
BLOCK1_4097 = bytes.fromhex("e0e1e2e3e4e5e6e7e8e9eaebecedeeef8971cc5bc2a86897a8a5766f8fdaaf1a66")
HOLE_TAIL = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff9ec54ab8b3952fb35ae8b55785fc39ae9a")


class Bytes:
    """A byte source over a bytes object (the payload of the vectors)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def pread(self, offset: int, size: int) -> bytes:
        assert offset >= 0 and offset + size <= self.size
        return self.data[offset : offset + size]


def _select(monkeypatch, loop: str) -> None:
    """Make gcm_open_blocks run ``loop``: "gcrypt" or "openssl" (the C loop through that library)
    or "python"; skips when that one is not there."""
    from siffs.crypt import xts  # noqa: PLC0415

    monkeypatch.delenv("SIFFS_NO_NATIVE", raising=False)
    monkeypatch.delenv("SIFFS_NO_GCRYPT", raising=False)
    if loop == "python":
        monkeypatch.setenv("SIFFS_NO_NATIVE", "1")
    elif loop == "openssl":
        monkeypatch.setenv("SIFFS_NO_GCRYPT", "1")
    xts.native_loops.cache_clear()
    xts.libgcrypt.cache_clear()
    if loop != "python" and xts.native_loops() is None:
        pytest.skip("siffs.crypt._xts was not built (no C compiler): only the Python loop runs")
    if loop == "gcrypt" and xts.libgcrypt() is None:
        pytest.skip("no libgcrypt (libgcrypt20) on this system")


@pytest.fixture
def restore_loops():
    """Forget the loop a test selected, so the next test sees the environment's."""
    from siffs.crypt import xts  # noqa: PLC0415

    yield
    xts.native_loops.cache_clear()
    xts.libgcrypt.cache_clear()


LOOPS = ["gcrypt", "openssl", "python"]


@pytest.fixture(params=LOOPS)
def block_loop(request, monkeypatch, restore_loops):
    """Each test that takes this runs with the C block loop through libgcrypt and through OpenSSL
    (when built) and with the Python loop."""
    _select(monkeypatch, request.param)
    return request.param


def test_vector_unlock():
    conf = gocryptfs.parse_conf(CONF_1024)
    assert gocryptfs.master_key(conf, b"siffs-test") == MK
    with pytest.raises(KeyProblem, match=r"^wrong passphrase or key$"):
        gocryptfs.master_key(conf, b"siffs-tesT")


def test_vector_contents(block_loop):
    assert gocryptfs.GocryptfsSource(Bytes(HELLO), CK).pread(0, 13) == b"hello, siffs\n"
    data = bytes(j % 251 for j in range(4097))
    block0 = bytes(range(0xD0, 0xE0)) + AESGCM(CK).encrypt(
        bytes(range(0xD0, 0xE0)), data[:4096], bytes(8) + HEADER[2:]
    )
    assert block0[-16:].hex() == "e0e68f5509ccb0a0072b5e4646d934f5"
    whole = HEADER + block0 + BLOCK1_4097
    assert (
        hashlib.sha256(whole).hexdigest()
        == "e4b77dfa66229149a4fe00a9808a2b2cc55831334ba7a27598847643aa74492e"
    )
    source = gocryptfs.GocryptfsSource(Bytes(whole), CK)
    assert source.size == 4097 and source.pread(0, 4097) == data and source.pread(4090, 7) == data[4090:]
    hole = gocryptfs.GocryptfsSource(Bytes(HEADER + bytes(4128) + HOLE_TAIL), CK)
    assert hole.pread(0, hole.size) == bytes(4096) + b"!"


@pytest.mark.parametrize(("csize", "plain"), [(0, 0), (51, 1), (4146, 4096), (4179, 4097), (100818, 100000)])
def test_sizes(csize, plain):
    assert gocryptfs.plain_size(csize) == plain


def test_master_key_matches_gocryptfs_xray(goc_pass, tmp_path):
    out = tmp_path / "x"
    subprocess.run(["unsquashfs", "-q", "-d", out, goc_pass.partition], check=True, capture_output=True)
    xray = subprocess.run(
        [require_tool("gocryptfs-xray"), "-dumpmasterkey", out / "gocryptfs.conf"],
        input=goc_pass.passphrase + b"\n",
        capture_output=True,
        check=True,
    )
    conf = gocryptfs.parse_conf((out / "gocryptfs.conf").read_bytes())
    assert gocryptfs.master_key(conf, goc_pass.passphrase).hex() == xray.stdout.decode().strip()


def test_realistic_cost_and_unpadded_payload(work, tmp_path):
    """Apptainer's scrypt cost (N = 2^16) and an inner image made with -nopad (a partial last block)."""
    inner = mksquashfs(work / "tree/data", tmp_path / "inner.sqfs", "-nopad", "-all-root")
    assert inner.stat().st_size % 4096
    outer = gocryptfs_outer(inner, tmp_path, b"pw", "-plaintextnames", logn=16)
    sif = wrap(outer, tmp_path / "r.sif", FsType.GOCRYPTFS_SQUASHFS)
    env = dict(os.environ, APPTAINER_ENCRYPTION_PASSPHRASE="pw")
    result = subprocess.run(
        [sys.executable, "-m", "siffs", "cat", sif, "/big.bin"],
        env=env,
        check=False,
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (work / "tree/data/big.bin").read_bytes()


def test_passphrase_is_one_line():
    """gocryptfs reads one line: a passphrase with a newline unlocks with its first line only."""
    assert gocryptfs.password(b"abc\ndef") == b"abc"
    with pytest.raises(KeyProblem):
        gocryptfs.password(b"x" * 2049)


# -- blocks: tampering, holes, truncation ---------------------------------------------------------


def _payload_source(enc: Encrypted, tmp_path: Path) -> tuple[Path, gocryptfs.GocryptfsSource]:
    """The fixture's ciphertext file (unsquashfs of the outer image) and a source decrypting it."""
    out = tmp_path / "outer"
    subprocess.run(["unsquashfs", "-q", "-d", out, enc.partition], check=True, capture_output=True)
    payload = out / "squashfs-1234567890"
    conf = gocryptfs.parse_conf((out / "gocryptfs.conf").read_bytes())
    ck = gocryptfs._hkdf(gocryptfs.master_key(conf, enc.passphrase or b""), gocryptfs.CONTENT_INFO)
    return payload, gocryptfs.GocryptfsSource(Bytes(payload.read_bytes()), ck)


def test_flipped_ciphertext_byte_fails_only_its_block(goc_pass, tmp_path, block_loop):
    payload, good = _payload_source(goc_pass, tmp_path)
    data = bytearray(payload.read_bytes())
    data[18 + 3 * 4128 + 100] ^= 1
    source = gocryptfs.GocryptfsSource(Bytes(bytes(data)), _content_key(goc_pass, tmp_path))
    assert source.pread(0, 3 * 4096) == good.pread(0, 3 * 4096)
    assert source.pread(4 * 4096, 4096) == good.pread(4 * 4096, 4096)
    with pytest.raises(
        TamperedBlock, match=r"^authentication failed in encrypted block 3 \(corrupt or tampered"
    ):
        source.pread(3 * 4096 + 10, 1)


def _content_key(enc: Encrypted, tmp_path: Path) -> bytes:
    out = tmp_path / "conf"
    subprocess.run(
        ["unsquashfs", "-q", "-d", out, enc.partition, "gocryptfs.conf"], check=True, capture_output=True
    )
    conf = gocryptfs.parse_conf((out / "gocryptfs.conf").read_bytes())
    return gocryptfs._hkdf(gocryptfs.master_key(conf, enc.passphrase or b""), gocryptfs.CONTENT_INFO)


def test_tampered_block_is_eio_through_a_mount(goc_pass, tmp_path):
    """A flipped ciphertext byte inside the SIF: reads touching that block fail with EIO, the rest work."""
    sif = tmp_path / "t.sif"
    shutil.copyfile(goc_pass.sif, sif)
    from siffs.sif import Image  # noqa: PLC0415

    with Image.open(sif) as image:
        offset = image.primary_partition().offset
    with open(sif, "r+b") as f:  # the ciphertext lies verbatim from byte 96 of the outer squashfs
        f.seek(offset + 96 + 18 + 40 * 4128 + 50)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    mnt = tmp_path / "m"
    mnt.mkdir()
    result = siffs("mount", "--allow-unsigned", sif, mnt, env=goc_pass.env())
    assert result.returncode == 0, result.stderr
    try:
        errors, good = 0, 0
        for root, _, files in os.walk(mnt):
            for name in files:
                if not Path(root, name).is_file() or Path(root, name).is_symlink():
                    continue
                try:
                    Path(root, name).read_bytes()
                    good += 1
                except OSError as exc:
                    assert exc.errno == 5  # EIO
                    errors += 1
        assert errors >= 1 and good > errors
    finally:
        siffs("umount", mnt, check=True)


def test_holes_read_as_zeros(tmp_path, block_loop):
    """A file grown with truncate inside a gocryptfs mount has all-zero blocks: they read as zeros."""
    gocryptfs_bin = require_tool("gocryptfs")
    cipher, plain = tmp_path / "c", tmp_path / "p"
    cipher.mkdir()
    plain.mkdir()
    subprocess.run(
        [gocryptfs_bin, "-q", "-init", "-scryptn", "10", "-plaintextnames", cipher],
        input=b"pw\npw\n",
        check=True,
    )
    subprocess.run([gocryptfs_bin, "-q", cipher, plain], input=b"pw\n", check=True)
    try:
        (plain / "f").write_bytes(b"")
        os.truncate(plain / "f", 20480)
        with open(plain / "f", "r+b") as f:
            f.seek(20480)
            f.write(b"end")
    finally:
        subprocess.run(["fusermount3", "-u", plain], check=True)
    data = (cipher / "f").read_bytes()
    assert data[18 : 18 + 5 * 4128] == bytes(5 * 4128)  # gocryptfs wrote holes
    conf = gocryptfs.parse_conf((cipher / "gocryptfs.conf").read_bytes())
    ck = gocryptfs._hkdf(gocryptfs.master_key(conf, b"pw"), gocryptfs.CONTENT_INFO)
    source = gocryptfs.GocryptfsSource(Bytes(data), ck)
    assert source.pread(0, source.size) == bytes(20480) + b"end"


# -- negative fixtures and every sanity rule, through the CLI -------------------------------------


def _cli(sif: Path, *args: object, passphrase: bytes | None = b"correct horse") -> tuple[int, str]:
    env = dict(os.environ)
    if passphrase is not None:
        env["SIFFS_ENCRYPTION_PASSPHRASE"] = passphrase.decode()
    result = siffs("ls", *args, sif, env=env)
    lines = result.stderr.splitlines()
    assert result.stdout == "" and len(lines) == 1, result.stderr
    return result.returncode, lines[0].split(f"{sif}: ", 1)[-1]


def test_wrong_passphrase_and_no_key(goc_pass):
    assert _cli(goc_pass.sif, passphrase=b"nope") == (13, "wrong passphrase or key")
    assert _cli(goc_pass.sif, passphrase=None) == (13, "image is encrypted: give --passphrase or --pem-path")


def test_wrong_rsa_key_and_pem_for_passphrase_image(goc_pem, goc_pass, rsa_pem, tmp_path):
    other = tmp_path / "o.pem"
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", other, "2048"], check=True, capture_output=True
    )
    assert _cli(goc_pem.sif, "--pem-path", other, passphrase=None) == (
        13,
        "this key cannot decrypt the image's key message",
    )
    code, message = _cli(goc_pass.sif, "--pem-path", rsa_pem, passphrase=None)
    assert (code, message.split(":")[0]) == (13, "image was encrypted with a passphrase")


def _outer_from(files: dict[str, bytes], tmp_path: Path, name: str = "x") -> Path:
    directory = tmp_path / f"{name}-dir"
    directory.mkdir()
    for file, data in files.items():
        (directory / file).write_bytes(data)
    outer = mksquashfs(directory, tmp_path / f"{name}.sqfs", "-all-root")
    return wrap(outer, tmp_path / f"{name}.sif", FsType.GOCRYPTFS_SQUASHFS)


@pytest.fixture
def parts(goc_pass, tmp_path) -> dict[str, bytes]:
    out = tmp_path / "parts"
    subprocess.run(["unsquashfs", "-q", "-d", out, goc_pass.partition], check=True, capture_output=True)
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _with_conf(parts: dict[str, bytes], edit) -> dict[str, bytes]:
    conf = json.loads(parts["gocryptfs.conf"])
    edit(conf)
    return parts | {"gocryptfs.conf": json.dumps(conf).encode()}


def test_truncated_payload(parts, tmp_path):
    sif = _outer_from(
        parts | {"squashfs-1234567890": parts["squashfs-1234567890"][: 18 + 4128 + 10]}, tmp_path
    )
    assert _cli(sif) == (4, "encrypted payload is truncated (last block has 10 bytes)")


def test_truncated_payload_made_by_gocryptfs(plain, tmp_path):
    outer = gocryptfs_outer(plain, tmp_path, b"correct horse", "-plaintextnames", payload_cut=18 + 4128 + 10)
    sif = wrap(outer, tmp_path / "cut.sif", FsType.GOCRYPTFS_SQUASHFS)
    assert _cli(sif) == (4, "encrypted payload is truncated (last block has 10 bytes)")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ((), "gocryptfs with encrypted file names is not supported (not an Apptainer image)"),
        (("-plaintextnames", "-xchacha"), "gocryptfs feature XChaCha20Poly1305 not supported"),
        (("-plaintextnames", "-aessiv"), "gocryptfs feature AESSIV not supported"),
    ],
    ids=["encrypted-names", "xchacha", "aessiv"],
)
def test_unsupported_gocryptfs_variants(plain, tmp_path, options, message):
    outer = gocryptfs_outer(plain, tmp_path, b"correct horse", *options)
    sif = wrap(outer, tmp_path / "v.sif", FsType.GOCRYPTFS_SQUASHFS)
    assert _cli(sif) == (10, message)


SCRYPT = "ScryptObject"
CONF_RULES = {  # id: (field, value, exit code, message before "; ")
    "hostile-N": ((SCRYPT, "N"), 1 << 28, 10, "scrypt parameter N out of range"),
    "version": (("Version",), 3, 10, "gocryptfs on-disk format 3 not supported"),
    "unknown-flag": (("FeatureFlags",), ["HKDF", "GCMIV128", "PlaintextNames", "Bogus"], 10,
                     "gocryptfs feature Bogus not supported"),
    "no-hkdf": (("FeatureFlags",), ["GCMIV128", "PlaintextNames"], 10,
                "gocryptfs without feature HKDF not supported"),
    "fido2": (("FeatureFlags",), ["HKDF", "GCMIV128", "PlaintextNames", "FIDO2"], 10,
              "gocryptfs feature FIDO2 not supported"),
    "salt": ((SCRYPT, "Salt"), "AAAA", 10, "scrypt parameter Salt out of range"),
    "keylen": ((SCRYPT, "KeyLen"), 16, 10, "scrypt parameter KeyLen out of range"),
    "N-not-power": ((SCRYPT, "N"), 3000, 10, "scrypt parameter N out of range"),
    "R": ((SCRYPT, "R"), 4, 10, "scrypt parameter R out of range"),
    "P": ((SCRYPT, "P"), 99, 10, "scrypt parameter P out of range"),
    "memory": ((SCRYPT, "R"), 32, 10, "scrypt parameter N·R out of range"),  # with N = 2^22 below
    "key-length": (("EncryptedKey",), base64.b64encode(bytes(48)).decode(), 4,
                   "gocryptfs.conf: EncryptedKey has 48 bytes (want 64)"),
}  # fmt: skip


def _rule_edit(rule: str):
    field, value, _, _ = CONF_RULES[rule]

    def edit(conf: dict) -> None:
        node = conf
        for key in field[:-1]:
            node = node[key]
        node[field[-1]] = value
        if rule == "memory":
            conf[SCRYPT]["N"] = 1 << 22

    return edit


@pytest.mark.parametrize("rule", list(CONF_RULES))
def test_conf_sanity_rules(parts, tmp_path, monkeypatch, rule):
    edit, (_, _, code, message) = _rule_edit(rule), CONF_RULES[rule]
    sif = _outer_from(_with_conf(parts, edit), tmp_path)
    got_code, got = _cli(sif)
    assert (got_code, got.split("; ")[0]) == (code, message)
    ran: list[object] = []  # in process: refused before scrypt runs
    monkeypatch.setattr(gocryptfs, "master_key", lambda *a: ran.append(a))
    with pytest.raises((UnsupportedEncryption, CorruptEncryption)):
        gocryptfs.open_gocryptfs(
            _with_conf(parts, edit)["gocryptfs.conf"], Bytes(parts["squashfs-1234567890"]),
            gocryptfs.KeyMaterial(passphrase=b"correct horse"), None,
        )  # fmt: skip
    assert ran == []


def test_conf_not_json(parts, tmp_path):
    assert _cli(_outer_from(parts | {"gocryptfs.conf": b"{nope"}, tmp_path)) == (
        4,
        "gocryptfs.conf is not valid JSON",
    )


def test_missing_payload_or_conf(parts, tmp_path):
    conf_only = {"gocryptfs.conf": parts["gocryptfs.conf"]}
    payload_only = {"squashfs-1234567890": parts["squashfs-1234567890"]}
    assert _cli(_outer_from(conf_only, tmp_path, "a")) == (4, "gocryptfs partition has no squashfs-* payload")
    assert _cli(_outer_from(payload_only, tmp_path, "b")) == (4, "gocryptfs partition has no gocryptfs.conf")
    empty = parts | {"squashfs-1234567890": b""}
    assert _cli(_outer_from(empty, tmp_path, "c")) == (4, "gocryptfs partition has no squashfs-* payload")


def test_partition_not_a_squashfs(goc_pass, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(8192))
    sif = wrap(junk, tmp_path / "j.sif", FsType.GOCRYPTFS_SQUASHFS)
    assert _cli(sif) == (4, "gocryptfs partition is not a squashfs")


def test_payload_header_rules(parts, tmp_path):
    payload = parts["squashfs-1234567890"]
    version = parts | {"squashfs-1234567890": b"\x00\x03" + payload[2:]}
    assert _cli(_outer_from(version, tmp_path, "v")) == (10, "gocryptfs file header version 3 not supported")
    zero_id = parts | {"squashfs-1234567890": payload[:2] + bytes(16) + payload[18:]}
    assert _cli(_outer_from(zero_id, tmp_path, "z")) == (4, "gocryptfs file ID is all zero (corrupt image)")


def test_inner_payload_not_a_squashfs(tmp_path):
    """A gocryptfs file that decrypts fine but holds no squashfs."""
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a squashfs" * 1000)
    outer = gocryptfs_outer(junk, tmp_path, b"correct horse", "-plaintextnames")
    sif = wrap(outer, tmp_path / "n.sif", FsType.GOCRYPTFS_SQUASHFS)
    assert _cli(sif) == (4, "decrypted payload is not a squashfs (wrong key or corrupt image)")


def test_several_payloads_use_the_first_and_warn(parts, tmp_path):
    sif = _outer_from(parts | {"squashfs-9": parts["squashfs-1234567890"]}, tmp_path)
    result = siffs("ls", sif, env=dict(os.environ, SIFFS_ENCRYPTION_PASSPHRASE="correct horse"))
    assert result.returncode == 0 and "data" in result.stdout.split()
    assert "using the first squashfs-* payload" in result.stderr


def test_fuzz_conf_parser():
    """Random edits of a valid conf: only the documented errors escape, and whatever parses is within the
    scrypt limits, so no hostile cost can reach scrypt."""
    rng = random.Random(6)
    base = json.loads(CONF_1024)
    values = [None, True, -1, 0, 1, 2**40, 1.5, "", "x" * 100, [], {}, ["HKDF"], "AAAA", 1 << 22, 8, 32]
    for _ in range(400):
        conf = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            node = conf if rng.random() < 0.5 else conf["ScryptObject"]
            if isinstance(node, dict) and node:
                node[rng.choice(list(node))] = rng.choice(values)
        raw = json.dumps(conf).encode()
        if rng.random() < 0.2:
            cut = rng.randrange(len(raw))
            raw = raw[:cut] + bytes([rng.randrange(256)]) + raw[cut + 1 :]
        try:
            parsed = gocryptfs.parse_conf(raw)
        except CryptError as exc:
            assert "\n" not in str(exc)
            continue
        assert 128 * parsed.n * parsed.r <= gocryptfs.MAX_SCRYPT_MEMORY and parsed.p <= 16


@pytest.mark.parametrize("kind", ["goc_pass", "built"])
def test_payload_read_straight_from_the_partition(kind, request, plain, tmp_path):
    """The payload's verbatim runs are read from the partition, equal to the SquashFS reader's reads."""
    from siffs.crypt.gocryptfs import ExtentSource  # noqa: PLC0415
    from siffs.sif import Image  # noqa: PLC0415
    from siffs.squashfs.reader import SquashFS  # noqa: PLC0415
    from siffs.squashfs.source import FileSource  # noqa: PLC0415

    if kind == "built":  # siffs' own writer, from a tree with an unpadded payload tail
        sif = tmp_path / "built.sif"
        env = dict(os.environ, SIFFS_ENCRYPTION_PASSPHRASE="x")
        siffs("create", "--encrypt", "--passphrase", sif, plain, env=env, check=True)
    else:  # written through the real gocryptfs
        sif = request.getfixturevalue(kind).sif
    with Image.open(sif) as image:
        d = image.primary_partition()
        partition = FileSource(image.fd, d.offset, d.size)
        outer = SquashFS(partition)
        name, st, _ = next(e for e in outer.readdir(outer.root_ino) if e[0].startswith(b"squashfs-"))
        direct = ExtentSource.covering(partition, outer.stored_extents(st.ino), st.size)
        assert direct is not None and direct.size == st.size
        rng = random.Random(6)
        for offset, size in [
            (0, st.size),
            (st.size - 1, 1),
            *((rng.randrange(st.size), 200_000) for _ in range(50)),
        ]:
            n = min(size, st.size - offset)
            assert direct.pread(offset, n) == outer.read(st.ino, offset, n), (name, offset, n)
        with pytest.raises(CorruptEncryption):
            direct.pread(st.size - 10, 11)
    # A hole in the extents (a compressed block) means no direct source.
    assert ExtentSource.covering(partition, [(0, 96, 10), (20, 200, 10)], 30) is None


def test_block_loops_agree_on_a_real_payload(goc_pass, tmp_path, monkeypatch, restore_loops):
    """The C loop through each library against the Python loop (their oracle) on the real gocryptfs
    payload, random ranges."""
    _, source = _payload_source(goc_pass, tmp_path)  # the loop is chosen on each read
    rng = random.Random(3)
    ranges = [(0, source.size), *((rng.randrange(source.size), rng.randrange(1, 300_000)) for _ in range(40))]
    got: dict[str, list[bytes]] = {}
    for loop in LOOPS:
        try:
            _select(monkeypatch, loop)
        except pytest.skip.Exception:
            continue
        got[loop] = [source.pread(o, min(n, source.size - o)) for o, n in ranges]
    assert "python" in got
    if len(got) == 1:
        pytest.skip("siffs.crypt._xts was not built (no C compiler): no C loop to compare")
    assert all(result == got["python"] for result in got.values())


def _payload_with_hole(tmp_path: Path) -> tuple[bytes, bytes, bytes]:
    """A payload siffs' writer made (7 blocks, the last one short) with block 2 turned into a hole,
    its content key and the plaintext it decrypts to."""
    plain = bytearray(random.Random(5).randbytes(6 * 4096 + 1000))
    (tmp_path / "plain").write_bytes(plain)
    master = os.urandom(32)
    with open(tmp_path / "plain", "rb") as src, open(tmp_path / "payload", "wb") as out:
        gocryptfs.encrypt_file(src, out, master)
    payload = bytearray((tmp_path / "payload").read_bytes())
    payload[18 + 2 * 4128 : 18 + 3 * 4128] = bytes(4128)
    plain[2 * 4096 : 3 * 4096] = bytes(4096)
    return bytes(payload), gocryptfs._hkdf(master, gocryptfs.CONTENT_INFO), bytes(plain)


@pytest.mark.parametrize("loop", ["gcrypt", "openssl"])
def test_ranges_of_blocks_native_and_python(tmp_path, monkeypatch, restore_loops, loop):
    """Reads starting and ending on and inside blocks, over a hole and the short last block: the C
    loop writing only the range asked for, and the Python loop, give the plaintext's bytes."""
    payload, key, plain = _payload_with_hole(tmp_path)
    size = len(plain)
    ranges = [
        (0, size), (0, 1), (1, 4095), (4095, 2), (4096, 4096), (100, 3 * 4096), (2 * 4096 - 1, 4098),
        (2 * 4096 + 7, 10), (size - 1000, 1000), (size - 1001, 1001), (size - 1, 1), (5000, size - 5000),
    ]  # fmt: skip
    _select(monkeypatch, loop)
    native = [gocryptfs.GocryptfsSource(Bytes(payload), key).pread(o, n) for o, n in ranges]
    assert native == [plain[o : o + n] for o, n in ranges]
    _select(monkeypatch, "python")
    assert native == [gocryptfs.GocryptfsSource(Bytes(payload), key).pread(o, n) for o, n in ranges]


@pytest.mark.parametrize("loop", ["gcrypt", "openssl"])
def test_every_block_is_authenticated_also_outside_the_range(tmp_path, monkeypatch, restore_loops, loop):
    """The C loop checks the tag of each block it is given, whether or not the range asked for needs it."""
    from siffs.crypt import xts  # noqa: PLC0415

    _select(monkeypatch, loop)
    payload, key, plain = _payload_with_hole(tmp_path)
    blocks = bytearray(payload[18:])
    file_id = payload[2:18]
    assert xts.gcm_open_blocks(key, bytes(blocks), 0, file_id, skip=4096 + 5, length=100) == plain[4101:4201]
    blocks[4 * 4128 + 50] ^= 1
    for skip, length in ((0, 0), (4096 + 5, 100), (5 * 4096, 1000)):
        assert xts.gcm_open_blocks(key, bytes(blocks), 0, file_id, skip=skip, length=length) == 4
    blocks[4 * 4128 + 50] ^= 1
    blocks[6 * 4128 + 1000] ^= 1  # the tag of the short last block
    assert xts.gcm_open_blocks(key, bytes(blocks), 0, file_id) == 6
    with pytest.raises(ValueError, match="outside the blocks"):
        xts.gcm_open_blocks(key, bytes(blocks), 0, file_id, skip=1, length=len(plain))
