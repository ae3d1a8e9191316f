"""LUKS2 (fs type 5) against cryptsetup: header, unlock, data path, every negative fixture of luks2.md §6."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from siffs.crypt import luks2
from siffs.crypt.errors import CorruptEncryption, CryptError, KeyProblem, UnsupportedEncryption
from siffs.crypt.keys import KeyMaterial
from siffs.sif.types import FsType
from siffs.squashfs.source import FileSource
from tests.crypt.conftest import PASSPHRASE, Encrypted
from tests.support.crypt import (
    FAST_PBKDF2,
    luks_container,
    luks_json,
    luksformat,
    rewrite_json,
    wrap,
)
from tests.support.images import require_tool
from tests.support.mounts import siffs
from tests.support.reference import key_path


def _source(path: Path) -> FileSource:
    return FileSource.open(path)


def _cryptsetup(*args: object, key: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [require_tool("cryptsetup"), *map(str, args), "--key-file", "-"],
        input=key,
        capture_output=True,
        check=False,
    )


def test_header_matches_cryptsetup_json(luks_argon):
    header = luks2.read_header(_source(luks_argon.partition))
    reference = luks_json(luks_argon.partition)
    segment, slot = reference["segments"]["0"], reference["keyslots"]["0"]
    assert (header.segment.offset, header.segment.sector_size) == (
        int(segment["offset"]),
        segment["sector_size"],
    )
    assert header.segment.offset == 16 << 20
    (k,) = header.keyslots
    assert (k.kdf.type, k.kdf.time, k.kdf.memory, k.kdf.cpus) == (
        slot["kdf"]["type"],
        slot["kdf"]["time"],
        slot["kdf"]["memory"],
        slot["kdf"]["cpus"],
    )
    assert (k.stripes, k.area_offset, k.area_size) == (
        4000,
        int(slot["area"]["offset"]),
        int(slot["area"]["size"]),
    )


@pytest.mark.parametrize(
    ("options", "sector_size"),
    [
        (FAST_PBKDF2, 512),
        (("--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "64"), 4096),
        (
            (
                "--pbkdf",
                "argon2i",
                "--pbkdf-force-iterations",
                "4",
                "--pbkdf-memory",
                "32",
                "--hash",
                "sha512",
            ),
            512,
        ),
        ((*FAST_PBKDF2, "--key-size", "256"), 4096),  # AES-128-XTS
    ],
    ids=["pbkdf2-512", "argon2id-4096", "argon2i-sha512", "aes128-4096"],
)
def test_volume_key_and_data_match_cryptsetup(plain, tmp_path, options, sector_size):
    key_bits = 256 if "256" in options else 512
    container = tmp_path / "c.luks"
    vk = luks_container(
        plain, container, PASSPHRASE, *options, sector_size=sector_size, volume_key=os.urandom(key_bits // 8)
    )
    dump = _cryptsetup("luksDump", "--dump-volume-key", "--batch-mode", container, key=PASSPHRASE)
    assert dump.returncode == 0, dump.stderr
    printed = "".join(dump.stdout.decode().split("MK dump:")[1].split()).replace(":", "")
    source = _source(container)
    header = luks2.read_header(source)
    assert luks2.unlock(source, header, PASSPHRASE) == vk == bytes.fromhex(printed[: len(vk) * 2])
    data = luks2.open_luks2(source, KeyMaterial(passphrase=PASSPHRASE), None)
    assert data.pread(0, plain.stat().st_size) == plain.read_bytes()


def test_cryptsetup_encrypted_data_path(plain, tmp_path):
    """Recipe B: cryptsetup itself encrypts the squashfs (data at 8 MiB); siffs decrypts it back."""
    container = tmp_path / "b.luks"
    shutil.copyfile(plain, container)
    with open(container, "ab") as f:
        f.truncate(plain.stat().st_size + (16 << 20))
    result = _cryptsetup(
        "reencrypt", "--encrypt", "--type", "luks2", "--batch-mode", "--reduce-device-size", "16M",
        *FAST_PBKDF2, "--disable-locks", container, key=PASSPHRASE,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    source = _source(container)
    assert luks2.read_header(source).segment.offset == 8 << 20
    data = luks2.open_luks2(source, KeyMaterial(passphrase=PASSPHRASE), None)
    assert data.pread(0, plain.stat().st_size) == plain.read_bytes()


def test_keyslot_priorities(plain, tmp_path):
    """A second passphrase unlocks; a slot set to "ignore" only when named (as cryptsetup --key-slot)."""
    container = tmp_path / "k.luks"
    luks_container(plain, container, PASSPHRASE)
    new = tmp_path / "new-key"
    new.write_bytes(b"second")
    assert _cryptsetup("luksAddKey", *FAST_PBKDF2, container, new, key=PASSPHRASE).returncode == 0
    assert (
        _cryptsetup("config", "--priority", "ignore", "--key-slot", "0", container, key=b"").returncode == 0
    )
    source = _source(container)
    header = luks2.read_header(source)
    assert luks2.unlock(source, header, b"second")
    with pytest.raises(KeyProblem, match=r"^wrong passphrase or key$"):
        luks2.unlock(source, header, PASSPHRASE)
    assert luks2.unlock(source, header, PASSPHRASE, key_slot=0)
    assert (
        _cryptsetup("open", "--test-passphrase", container, key=PASSPHRASE).returncode != 0
    )  # the oracle agrees


def test_damaged_primary_header_unlocks_through_the_secondary(luks_pass, tmp_path):
    container = tmp_path / "d.luks"
    shutil.copyfile(luks_pass.partition, container)
    _flip(container, 4096 + 10)
    warnings: list[str] = []
    source = _source(container)
    header = luks2.read_header(source, warnings.append)
    assert header.used_secondary
    assert warnings == ["the primary LUKS2 header is damaged; using the secondary copy"]
    assert luks2.unlock(source, header, PASSPHRASE) == luks_pass.volume_key


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


# -- the negative fixtures of luks2.md §6, through the CLI: exact message and exit code -----------


def _edited(container: Path, out: Path, edit) -> Path:
    shutil.copyfile(container, out)
    metadata = luks_json(out)
    edit(metadata)
    rewrite_json(out, metadata)
    return out


def _cli(sif: Path, *args: object, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = siffs("ls", *args, sif, env=env)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # one line, never a traceback
    return result.returncode, lines[0].split(f"{sif}: ", 1)[-1]


def _passphrase_env(passphrase: bytes) -> dict[str, str]:
    return dict(os.environ, SIFFS_ENCRYPTION_PASSPHRASE=passphrase.decode())


def test_wrong_passphrase(luks_pass):
    assert _cli(luks_pass.sif, "--passphrase", env=_passphrase_env(b"nope")) == (
        13,
        "wrong passphrase or key",
    )


def test_pem_key_that_does_not_match(luks_pem, tmp_path):
    other = tmp_path / "other.pem"
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", other, "2048"], check=True, capture_output=True
    )
    assert _cli(luks_pem.sif, "--pem-path", other) == (13, "this key cannot decrypt the image's key message")


def test_pem_given_for_a_passphrase_image(luks_pass, rsa_pem):
    code, message = _cli(luks_pass.sif, "--pem-path", rsa_pem)
    assert (code, message.split(":")[0]) == (13, "image was encrypted with a passphrase")


def test_passphrase_given_for_a_pem_image(luks_pem):
    assert _cli(luks_pem.sif, "--passphrase", env=_passphrase_env(b"guess")) == (
        13,
        "wrong passphrase or key: this image was encrypted to an RSA key, give --pem-path",
    )


def test_no_key_given(luks_pass):
    assert _cli(luks_pass.sif) == (13, "image is encrypted: give --passphrase or --pem-path")


def test_passphrase_protected_pem(luks_pem, rsa_pem, tmp_path):
    locked = tmp_path / "locked.pem"
    subprocess.run(
        ["openssl", "rsa", "-aes256", "-in", rsa_pem, "-out", locked, "-passout", "pass:pw", "-traditional"],
        check=True,
        capture_output=True,
    )
    code, message = _cli(luks_pem.sif, "--pem-path", locked)
    assert (code, message.split(":")[0]) == (13, "passphrase-protected PEM keys are not supported")


def _format_sif(tmp_path: Path, *options: str) -> Path:
    container = tmp_path / "f.luks"
    with open(container, "wb") as f:
        f.truncate(20 << 20)
    luksformat(container, PASSPHRASE, *FAST_PBKDF2, *options)
    return wrap(container, tmp_path / "f.sif", FsType.ENCRYPTED_SQUASHFS)


def test_unsupported_cipher(tmp_path):
    sif = _format_sif(tmp_path, "--cipher", "aes-cbc-essiv:sha256", "--key-size", "256")
    assert _cli(sif, "--passphrase", env=_passphrase_env(PASSPHRASE)) == (
        10,
        "cipher aes-cbc-essiv:sha256 not supported (only aes-xts-plain64)",
    )


def test_luks1(tmp_path):
    container = tmp_path / "l1.luks"
    with open(container, "wb") as f:
        f.truncate(20 << 20)
    subprocess.run(
        [require_tool("cryptsetup"), "luksFormat", "--type", "luks1", "--batch-mode", "--key-file", "-",
         "--pbkdf-force-iterations", "1000", container],
        input=PASSPHRASE, check=True, capture_output=True,
    )  # fmt: skip
    sif = wrap(container, tmp_path / "l1.sif", FsType.ENCRYPTED_SQUASHFS)
    assert _cli(sif, "--passphrase", env=_passphrase_env(PASSPHRASE)) == (
        10,
        "LUKS1 containers are not supported",
    )


def test_detached_header(plain, tmp_path):
    header, data = tmp_path / "h.img", tmp_path / "d.img"
    shutil.copyfile(plain, data)
    with open(data, "ab") as f:
        f.truncate(plain.stat().st_size + (1 << 20))
    subprocess.run(
        [require_tool("cryptsetup"), "luksFormat", "--type", "luks2", "--batch-mode", "--key-file", "-",
         *FAST_PBKDF2, "--header", header, data],
        input=PASSPHRASE, check=True, capture_output=True,
    )  # fmt: skip
    sif = wrap(data, tmp_path / "d.sif", FsType.ENCRYPTED_SQUASHFS)
    assert _cli(sif, "--passphrase", env=_passphrase_env(PASSPHRASE)) == (
        4,
        "encrypted partition has no LUKS2 header (detached headers are not supported)",
    )


def test_plain_squashfs_marked_encrypted(plain, tmp_path):
    sif = wrap(plain, tmp_path / "p.sif", FsType.ENCRYPTED_SQUASHFS)
    assert _cli(sif) == (4, "encrypted partition has no LUKS2 header (detached headers are not supported)")


def test_both_header_copies_damaged(luks_pass, tmp_path):
    container = tmp_path / "dd.luks"
    shutil.copyfile(luks_pass.partition, container)
    size = luks2.read_header(_source(container)).header_size
    _flip(container, 4096 + 10)
    _flip(container, size + 4096 + 10)
    sif = wrap(container, tmp_path / "dd.sif", FsType.ENCRYPTED_SQUASHFS)
    assert _cli(sif, "--passphrase", env=_passphrase_env(PASSPHRASE)) == (
        4,
        "no valid LUKS2 header (both copies are damaged)",
    )


def _edited_sif(luks_pass: Encrypted, tmp_path: Path, edit) -> Path:
    container = _edited(luks_pass.partition, tmp_path / "e.luks", edit)
    return wrap(container, tmp_path / "e.sif", FsType.ENCRYPTED_SQUASHFS)


def test_reencryption_in_progress(luks_pass, tmp_path):
    def edit(m):
        m["config"]["requirements"] = {"mandatory": ["online-reencrypt-v2"]}

    sif = _edited_sif(luks_pass, tmp_path, edit)
    assert _cli(sif, "--passphrase", env=_passphrase_env(PASSPHRASE)) == (
        10,
        "LUKS2 requirement online-reencrypt-v2 not supported",
    )


def test_interrupted_reencryption_made_by_cryptsetup(plain, tmp_path):
    """Recipe B as an unprivileged user without --disable-locks leaves the file mid-reencryption."""
    from tests.support.users import TEST_USER, user_dir  # noqa: PLC0415

    directory = Path(user_dir(tmp_path, "re"))
    container = directory / "r.luks"
    shutil.copyfile(plain, container)
    with open(container, "ab") as f:
        f.truncate(plain.stat().st_size + (16 << 20))
    owner = os.stat(directory)
    os.chown(container, owner.st_uid, owner.st_gid)
    made = subprocess.run(
        ["runuser", "-u", TEST_USER, "--", require_tool("cryptsetup"), "reencrypt", "--encrypt",
         "--type", "luks2", "--batch-mode", "--key-file", "-", "--reduce-device-size", "16M", *FAST_PBKDF2,
         container],
        input=PASSPHRASE, capture_output=True, check=False, cwd=directory,  # its temporary header goes here
    )  # fmt: skip
    assert b"Failed to acquire reencryption lock" in made.stderr, made.stderr
    sif = wrap(container, tmp_path / "r.sif", FsType.ENCRYPTED_SQUASHFS)
    assert _cli(sif, "--passphrase", env=_passphrase_env(PASSPHRASE)) == (
        10,
        "LUKS2 requirement online-reencrypt-v2 not supported",
    )


def test_integrity_segment(luks_pass, tmp_path):
    def edit(m):
        m["segments"]["0"]["integrity"] = {"type": "hmac(sha256)", "journal_encryption": "none"}

    sif = _edited_sif(luks_pass, tmp_path, edit)
    assert _cli(sif, "--passphrase", env=_passphrase_env(PASSPHRASE)) == (
        10,
        "dm-integrity protected containers are not supported",
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "memory",
            8388608,
            "keyslot 0: kdf memory 8388608 is above the limit of 4194304; refused before running it",
        ),
        ("time", 1000, "keyslot 0: kdf time 1000 is above the limit of 64; refused before running it"),
        ("cpus", 64, "keyslot 0: kdf cpus 64 is above the limit of 16; refused before running it"),
    ],
)
def test_kdf_cost_above_limits(luks_argon, tmp_path, monkeypatch, field, value, message):
    def edit(m):
        m["keyslots"]["0"]["kdf"][field] = value

    container = _edited(luks_argon.partition, tmp_path / "e.luks", edit)
    sif = wrap(container, tmp_path / "e.sif", FsType.ENCRYPTED_SQUASHFS)
    assert _cli(sif, "--passphrase", env=_passphrase_env(PASSPHRASE)) == (10, message)
    # In process: the refusal comes from reading the header, so no KDF can have run.
    ran: list[object] = []
    monkeypatch.setattr(luks2, "derive", lambda *a: ran.append(a))
    with pytest.raises(UnsupportedEncryption, match=f"^{message}$"):
        luks2.open_luks2(_source(container), KeyMaterial(passphrase=PASSPHRASE), None)
    assert ran == []


def test_pbkdf2_iterations_above_limit(luks_pass, tmp_path):
    def edit(m):
        m["keyslots"]["0"]["kdf"]["iterations"] = 10**9

    sif = _edited_sif(luks_pass, tmp_path, edit)
    assert _cli(sif, "--passphrase", env=_passphrase_env(PASSPHRASE)) == (
        10,
        "keyslot 0: pbkdf2 iterations 1000000000 is above the limit of 100000000; refused before running it",
    )


@pytest.mark.parametrize("cut", [8 << 10, 100 << 10, (16 << 20) + 4096])
def test_truncated_partition(luks_pass, tmp_path, cut):
    """Cut inside the header, the keyslot area or the data: one line, exit 4 (invalid image)."""
    container = tmp_path / "t.luks"
    with open(luks_pass.partition, "rb") as f:
        container.write_bytes(f.read(cut))
    sif = wrap(container, tmp_path / "t.sif", FsType.ENCRYPTED_SQUASHFS)
    code, _ = _cli(sif, "--passphrase", env=_passphrase_env(PASSPHRASE))
    assert code == 4


def test_corrupt_data_is_not_a_squashfs(luks_pass, tmp_path):
    container = tmp_path / "c.luks"
    shutil.copyfile(luks_pass.partition, container)
    _flip(container, 16 << 20)
    sif = wrap(container, tmp_path / "c.sif", FsType.ENCRYPTED_SQUASHFS)
    assert _cli(sif, "--passphrase", env=_passphrase_env(PASSPHRASE)) == (
        4,
        "decrypted data is not a squashfs (corrupt image)",
    )


def test_signatures_are_checked_over_the_ciphertext_first(luks_pass, tmp_path):
    """A tampered signed image is refused as untrusted (7) before any key is asked for or any KDF runs."""
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "c"), XDG_CACHE_HOME=str(tmp_path / "k"))
    sif = tmp_path / "s.sif"
    shutil.copyfile(luks_pass.sif, sif)
    siffs("sign", sif, "--key", key_path("pgp"), env=env, check=True)
    public = key_path("pgp-public")
    out = tmp_path / "out"
    good = siffs("sandbox", "--key", public, "--passphrase", sif, out, env=env | _passphrase_env(PASSPHRASE))
    assert good.returncode == 0 and (out / "data/big.bin").is_file(), good.stderr
    from siffs.sif import Image  # noqa: PLC0415

    with Image.open(sif) as image:
        offset = image.primary_partition().offset
    _flip(sif, offset + (16 << 20) + 100)  # ciphertext: XTS alone would never notice
    (tmp_path / "m").mkdir()
    bad = siffs("mount", "--key", public, sif, tmp_path / "m", env=env)
    assert bad.returncode == 7, bad.stderr


# -- fuzzing the header and JSON parser ---------------------------------------------------------


def _mutations(metadata: dict, rng: random.Random) -> dict:
    """A copy of ``metadata`` with one value somewhere replaced by something hostile."""
    mutated = json.loads(json.dumps(metadata))
    paths: list[tuple[object, object]] = []

    def walk(node):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            paths.append((node, key))
            walk(value)

    walk(mutated)
    node, key = rng.choice(paths)
    node[key] = rng.choice(
        [None, True, -1, 0, 2**70, "", "dynamic", "x" * 300, [], {}, "18446744073709551616", 1.5, "0" * 25,
         "AAAA", "!!", {"type": "crypt"}, [1, 2], "4096", "aes-xts-plain", "argon2id", 4294967296]
    )  # fmt: skip
    return mutated


def test_fuzz_header_parser(luks_argon, tmp_path):
    """Hostile metadata (rewritten with valid checksums) and random byte damage: only CryptError escapes,
    and whatever parses respects the KDF cost limits, so no unlock can start beyond them."""
    rng = random.Random(14)
    metadata = luks_json(luks_argon.partition)
    container = tmp_path / "fz.luks"
    base = luks_argon.partition.read_bytes()[: 17 << 20]
    outcomes: dict[str, int] = {}
    for i in range(250):
        container.write_bytes(base)
        if i % 5:
            rewrite_json(container, _mutations(metadata, rng))
        else:
            with open(container, "r+b") as f:
                for _ in range(rng.randint(1, 20)):
                    f.seek(rng.randrange(0, 40000))
                    f.write(bytes([rng.randrange(256)]))
        try:
            header = luks2.read_header(FileSource.open(container))
        except CryptError as exc:
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
            assert "\n" not in str(exc)
            continue
        for k in header.keyslots:
            assert k.kdf.memory <= luks2.MAX_ARGON2_MEMORY_KIB and k.kdf.time <= luks2.MAX_ARGON2_TIME
            assert k.kdf.cpus <= luks2.MAX_ARGON2_CPUS and k.kdf.iterations <= luks2.MAX_PBKDF2_ITERATIONS
        outcomes["parsed"] = outcomes.get("parsed", 0) + 1
    assert {"parsed", "CorruptEncryption", "UnsupportedEncryption"} <= set(outcomes), outcomes


def test_reads_outside_the_data_segment_are_refused(luks_pass):
    source = _source(luks_pass.partition)
    data = luks2.LuksSource(source, luks2.read_header(source).segment, luks_pass.volume_key)
    with pytest.raises(CorruptEncryption):
        data.pread(data.size - 10, 11)


def test_verified_reads_through_decryption(luks_pass, plain, tmp_path):
    """Under a verified mount, ciphertext changed after mounting gives EIO (checked before decryption)."""
    import errno  # noqa: PLC0415

    from siffs.sif import Image  # noqa: PLC0415
    from siffs.squashfs.paths import resolve  # noqa: PLC0415
    from siffs.squashfs.reader import SquashFS  # noqa: PLC0415

    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "c"), XDG_CACHE_HOME=str(tmp_path / "k"))
    sif = tmp_path / "s.sif"
    shutil.copyfile(luks_pass.sif, sif)
    siffs("sign", sif, "--key", key_path("pgp"), env=env, check=True)
    tree = SquashFS(_source(plain))
    loc = tree.inode(resolve(tree, b"/data/big.bin").ino).file
    assert loc is not None
    with Image.open(sif) as image:
        offset = image.primary_partition().offset + (16 << 20) + loc.blocks_start + 150_000
    mnt = tmp_path / "m"
    mnt.mkdir()
    public = key_path("pgp-public")
    mounted = siffs("mount", "--key", public, "--passphrase", sif, mnt, env=env | _passphrase_env(PASSPHRASE))
    assert mounted.returncode == 0, mounted.stderr
    try:
        passwd = (mnt / "etc/passwd").read_bytes()
        with open(sif, "r+b") as f:
            byte = os.pread(f.fileno(), 1, offset)
            os.pwrite(f.fileno(), bytes([byte[0] ^ 1]), offset)
        with pytest.raises(OSError) as info:
            (mnt / "data/big.bin").read_bytes()
        assert info.value.errno == errno.EIO
        assert (mnt / "etc/passwd").read_bytes() == passwd
    finally:
        siffs("umount", mnt, check=True)


def _meminfo_kib(name: str) -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(name + ":"))


def test_default_argon2_cost_fills_memory_first_then_time():
    cap = min(1 << 20, _meminfo_kib("MemTotal") // 2)
    # A fast machine: the memory goes to the cap, the time cost fills the 2 s.
    fast = lambda t, m, c: t * m * 1e-7  # noqa: E731 -- 0.1 us per KiB and pass
    time, memory = luks2.default_argon2_cost(4, measure=fast)
    assert memory <= cap and memory >= min(cap, _meminfo_kib("MemAvailable")) // 2
    assert time == min(64, max(4, int(2.0 / (1e-7 * memory))))
    # A slow one: time stays at cryptsetup's minimum of 4, the memory shrinks to fit 2 s.
    slow = lambda t, m, c: t * m * 1e-6  # noqa: E731
    assert luks2.default_argon2_cost(2, measure=slow) == (4, int(2.0 / (4 * 1e-6)))
    # What the user gives is kept; the other value is fitted to it.
    assert luks2.default_argon2_cost(2, memory=65536, measure=slow) == (30, 65536)
    assert luks2.default_argon2_cost(2, time=8, measure=slow) == (8, int(2.0 / (8 * 1e-6)))


def test_default_argon2_cost_measures_this_machine():
    time, memory = luks2.default_argon2_cost(1, target=0.05)  # the real derivation, a tiny target
    assert time == 4 and luks2.MIN_ARGON2_MEMORY_KIB <= memory < 64 << 10


def test_create_without_cost_options_benchmarks(plain, tmp_path, monkeypatch):
    """The default keyslot is measured here (tiny target so the test stays quick), and cryptsetup reads it."""
    from siffs.cli.main import main  # noqa: PLC0415

    monkeypatch.setattr(luks2, "TARGET_UNLOCK_SECONDS", 0.05)
    monkeypatch.setenv("SIFFS_ENCRYPTION_PASSPHRASE", "cost horse")
    sif = tmp_path / "cost.sif"
    assert main(["-q", "create", "--encrypt", "--format", "luks2", "--passphrase", str(sif), str(plain)]) == 0
    from siffs.sif import Image  # noqa: PLC0415

    with Image.open(sif) as image:
        d = image.primary_partition()
        container = tmp_path / "container"
        container.write_bytes(image.read(d))
    kdf = luks_json(container)["keyslots"]["0"]["kdf"]
    assert kdf["type"] == "argon2id" and kdf["time"] == 4 and kdf["memory"] < 64 << 10
    assert kdf["cpus"] == min(4, os.cpu_count() or 1)
    subprocess.run(
        [require_tool("cryptsetup"), "open", "--test-passphrase", "--key-file", "-", str(container)],
        input=b"cost horse",
        check=True,
    )
