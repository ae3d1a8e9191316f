"""Delta updates of encrypted images (LUKS2 and gocryptfs) through a real nginx.

The images are built by ``siffs create --encrypt`` (the crypt tests check those against the real
cryptsetup and gocryptfs) from two versions of a tree, signed, and published into one encrypted
store; a copy of version 1 is then updated to version 2 with ``siffs pull``. The oracle is the
publisher's file itself: byte for byte, with a verified signature.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from siffs.crypt.errors import CryptError
from siffs.crypt.keys import KeyMaterial
from siffs.delta import caibx, chunker
from siffs.delta.chunker import Chunker, ChunkSizes
from siffs.delta.encrypted import _HEAD, SEALED_SUFFIX, STORE_KEY_FILE, parse_index
from siffs.delta.errors import DeltaError
from siffs.delta.keyed import StoreKeys, secret_of
from tests.delta.conftest import Nginx, SignedImages, _tree, vector
from tests.support.images import require_tool
from tests.support.mounts import siffs
from tests.support.shared import REPO
from tests.support.users import TEST_USER, ensure_user, user_dir

PASSPHRASE = "delta horse"


@dataclass(frozen=True)
class Pair:
    """Two signed versions of one encrypted image and the key options that open them."""

    old: Path
    new: Path
    key_args: tuple[str, ...]
    env: dict[str, str]
    public_key: Path
    plain_old: Path  #: version 1 as a plain SIF (the same SquashFS)
    other_old: Path  #: version 1 encrypted in the other format with the same key


def _squashfs(tmp: Path, version: int) -> Path:
    tree = _tree(tmp / f"tree{version}", version)
    out = tmp / f"v{version}.squashfs"
    options = ["-noappend", "-quiet", "-no-progress", "-all-root", "-mkfs-time", "0", "-all-time", "0"]
    subprocess.run([require_tool("mksquashfs"), tree, out, *options], check=True)
    return out


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "ENCRYPTION" not in k}
    return env | extra


@pytest.fixture(scope="session", params=["luks2-pass", "luks2-pem", "gocryptfs-pass"])
def pair(request: pytest.FixtureRequest, signed_images: SignedImages, tmp_path_factory) -> Pair:
    kind, key = request.param.split("-")
    tmp = tmp_path_factory.mktemp(f"enc-{request.param}")
    env = _env(SIFFS_ENCRYPTION_PASSPHRASE=PASSPHRASE)
    build_key: tuple[str, ...] = ("--passphrase",)
    key_args: tuple[str, ...] = ("--passphrase",)
    if key == "pem":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (tmp / "rsa.pem").write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (tmp / "rsa.pub.pem").write_bytes(
            private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        )
        build_key, key_args, env = (
            ("--pem-path", str(tmp / "rsa.pub.pem")),
            ("--pem-path", str(tmp / "rsa.pem")),
            _env(),
        )
    images = []
    other = "gocryptfs" if kind == "luks2" else "luks2"
    for version, format_ in ((1, kind), (2, kind), (1, other)):
        sif = tmp / f"{format_}-v{version}.sif"
        cost = ("--kdf-memory", "8", "--kdf-time", "4") if format_ == "luks2" else ()
        squashfs = tmp / f"v{version}.squashfs"
        if not squashfs.exists():
            _squashfs(tmp, version)
        siffs(
            "-q", "create", "--encrypt", "--format", format_, *cost, *build_key, sif, squashfs,
            env=env, check=True,
        )  # fmt: skip
        siffs("-q", "sign", sif, "--key", signed_images.private_key, check=True)
        images.append(sif)
    plain = tmp / "plain-v1.sif"
    siffs("-q", "create", plain, tmp / "v1.squashfs", check=True)
    return Pair(images[0], images[1], key_args, env, signed_images.public_key, plain, images[2])


def _publish(pair: Pair, nginx: Nginx) -> str:
    store = nginx.root / "default.castr"
    for sif in (pair.old, pair.new):
        index = nginx.root / f"{sif.name}.caibx"
        siffs(
            "-q",
            "delta",
            "make",
            sif,
            "--store",
            store,
            "--index",
            index,
            *pair.key_args,
            env=pair.env,
            check=True,
        )
    return f"{nginx.url}/{pair.new.name}.caibx"


def _pull(
    pair: Pair, dest: Path, url: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return siffs(
        "pull",
        "--json",
        "--key",
        pair.public_key,
        *extra,
        dest,
        url,
        env=env if env is not None else pair.env,
    )


def test_update_by_delta_is_byte_identical_and_verified(tmp_path, nginx: Nginx, pair: Pair):
    url = _publish(pair, nginx)
    dest = tmp_path / "mine.sif"
    shutil.copy(pair.old, dest)
    nginx.clear_log()
    result = _pull(pair, dest, url, *pair.key_args)
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == pair.new.read_bytes()
    report = json.loads(result.stdout)
    assert report["signers"]  # the normal signature verification passed
    assert report["reused"][str(dest)] > 0.7 * report["size"] - (16 << 20)
    sealed = [p for _, p, _ in nginx.requests() if p.endswith(SEALED_SUFFIX)]
    index = parse_index((nginx.root / f"{pair.new.name}.caibx").read_bytes(), "test")
    assert 0 < len(sealed) < len(index.plain.chunks) / 3  # only what the old version lacks
    # Nothing but the seed's missing chunks: a pull without a seed fetches every sealed chunk.
    fresh = tmp_path / "fresh.sif"
    nginx.clear_log()
    assert _pull(pair, fresh, url, *pair.key_args).returncode == 0
    assert fresh.read_bytes() == pair.new.read_bytes()
    fetched = {p for _, p, _ in nginx.requests() if p.endswith(SEALED_SUFFIX)}
    assert len(fetched) == len({c.id for c in index.plain.chunks})


def test_store_holds_no_plaintext_and_names_are_keyed(tmp_path, nginx: Nginx, pair: Pair):
    _publish(pair, nginx)
    store = nginx.root / "default.castr"
    sealed = list(store.rglob(f"*{SEALED_SUFFIX}"))
    plain_chunks = list(store.rglob("*.cacnk"))
    assert sealed and (store / STORE_KEY_FILE).exists()
    # Contents of the tree (incompressible, stored verbatim in the SquashFS) appear in no stored file.
    probes = [vector(30000 + 997 * i, f"file{i}".encode())[1000:1064] for i in range(0, 40, 5)]
    for path in sealed + plain_chunks:
        data = path.read_bytes()
        assert not any(p in data for p in probes), path
    # Names are keyed MACs: the plain SHA-512/256 of a sealed chunk's plaintext is nowhere in the store.
    index = parse_index((nginx.root / f"{pair.new.name}.caibx").read_bytes(), "test")
    names = {c.id for c in index.plain.chunks}
    assert len(names) == len(
        {p.name.split(".")[0] for p in sealed if bytes.fromhex(p.name.split(".")[0]) in names}
    )


def test_wrong_key_is_exit_13_with_one_line(tmp_path, nginx: Nginx, pair: Pair):
    url = _publish(pair, nginx)
    dest = tmp_path / "mine.sif"
    shutil.copy(pair.old, dest)
    if "--pem-path" in pair.key_args:
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        wrong = tmp_path / "other.pem"
        wrong.write_bytes(
            other.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        result = _pull(pair, dest, url, "--pem-path", str(wrong))
        expected = "this key cannot decrypt"
    else:
        result = _pull(pair, dest, url, "--passphrase", env=_env(SIFFS_ENCRYPTION_PASSPHRASE="wrong horse"))
        expected = "wrong passphrase or key"
    assert result.returncode == 13, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr
    assert dest.read_bytes() == pair.old.read_bytes()
    no_key = _pull(pair, dest, url, env=_env())
    assert no_key.returncode == 13 and "give --passphrase or --pem-path" in no_key.stderr
    assert not list(tmp_path.glob(".mine.sif.*"))  # nothing half-written left beside DEST


def test_tampered_chunk_is_caught(tmp_path, nginx: Nginx, pair: Pair):
    url = _publish(pair, nginx)
    index = parse_index((nginx.root / f"{pair.new.name}.caibx").read_bytes(), "test")
    dest = tmp_path / "mine.sif"
    shutil.copy(pair.old, dest)
    # A chunk of the new version that the old one lacks: the pull must fetch it.
    old_index = parse_index((nginx.root / f"{pair.old.name}.caibx").read_bytes(), "test")
    target = next(c for c in index.plain.chunks if c.id not in {o.id for o in old_index.plain.chunks})
    path = nginx.root / "default.castr" / target.id.hex()[:4] / f"{target.id.hex()}{SEALED_SUFFIX}"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    result = _pull(pair, dest, url, *pair.key_args)
    assert result.returncode == 15, result.stderr
    assert target.id.hex() in result.stderr and "fails authentication" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert dest.read_bytes() == pair.old.read_bytes()


def test_interrupted_pull_leaves_dest_untouched_and_resumes(tmp_path, nginx: Nginx, pair: Pair):
    url = _publish(pair, nginx)
    index = parse_index((nginx.root / f"{pair.new.name}.caibx").read_bytes(), "test")
    old_index = parse_index((nginx.root / f"{pair.old.name}.caibx").read_bytes(), "test")
    new_ids = [c.id for c in index.plain.chunks if c.id not in {o.id for o in old_index.plain.chunks}]
    assert len(new_ids) >= 2
    last = new_ids[-1]
    path = nginx.root / "default.castr" / last.hex()[:4] / f"{last.hex()}{SEALED_SUFFIX}"
    hidden = path.with_name(path.name + ".away")
    path.rename(hidden)
    dest = tmp_path / "mine.sif"
    shutil.copy(pair.old, dest)
    result = _pull(pair, dest, url, *pair.key_args)
    assert result.returncode == 12 and "missing" in result.stderr, result.stderr
    assert dest.read_bytes() == pair.old.read_bytes()
    hidden.rename(path)
    nginx.clear_log()
    result = _pull(pair, dest, url, *pair.key_args)
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == pair.new.read_bytes()
    fetched = [p for _, p, _ in nginx.requests() if p.endswith(SEALED_SUFFIX)]
    assert fetched == [f"/default.castr/{last.hex()[:4]}/{last.hex()}{SEALED_SUFFIX}"]  # the rest was kept
    assert json.loads(result.stdout)["resumed_bytes"] > 0


def test_unsigned_result_is_refused_without_a_trusted_key(tmp_path, nginx: Nginx, pair: Pair):
    url = _publish(pair, nginx)
    dest = tmp_path / "mine.sif"
    shutil.copy(pair.old, dest)
    stranger = tmp_path / "stranger.pem"
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415

    stranger.write_bytes(
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    result = siffs("pull", "--key", stranger, *pair.key_args, dest, url, env=pair.env)
    assert result.returncode == 7, result.stderr
    assert dest.read_bytes() == pair.old.read_bytes()


def test_keyed_chunker_table():
    data = vector(1 << 20)
    sizes = ChunkSizes.from_average(16384)

    def ends(table: np.ndarray | None) -> list[int]:
        view, out, end = memoryview(data), [], 0
        pos = [0]

        def read(n: int) -> bytes:
            chunk = bytes(view[pos[0] : pos[0] + n])
            pos[0] += len(chunk)
            return chunk

        for piece in Chunker(sizes, table).split(read):
            end += len(piece)
            out.append(end)
        return out

    assert ends(chunker._TABLE) == ends(None)  # the parameter is the table, nothing else
    index = caibx.parse(caibx.encode(sizes, True, []))
    assert index.blob_size == 0
    keyed = ends(StoreKeys.from_secret(b"k" * 32).table)
    other = ends(StoreKeys.from_secret(b"j" * 32).table)
    assert keyed[-1] == other[-1] == len(data)
    assert len(set(keyed) & set(ends(None))) < len(keyed) // 4  # cut points depend on the key
    assert keyed != other


def test_index_parser_fuzz(tmp_path, pair: Pair):
    """Damaged encrypted indexes and store key descriptions raise the documented errors, nothing else."""
    index = tmp_path / "index.caibx"
    siffs(
        "-q", "delta", "make", pair.new, "--store", tmp_path / "store", "--index", index, *pair.key_args,
        env=pair.env, check=True,
    )  # fmt: skip
    data = index.read_bytes()
    size = _HEAD.unpack_from(data)[2]
    meta = json.loads(data[_HEAD.size : _HEAD.size + size])
    rng = random.Random(14)
    odd = [None, -1, 2**80, 1e400, "x", [], {}, [[0, -5, 0, 0]], [[1, 2]], True, "zz"]
    for _ in range(1500):
        if rng.random() < 0.5:
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(min(len(mutated), _HEAD.size + size + 200))] = rng.randrange(256)
            if rng.random() < 0.2:
                mutated = mutated[: rng.randrange(len(mutated))]
            candidate = bytes(mutated)
        else:
            changed = dict(meta, **{rng.choice(list(meta)): rng.choice(odd)})
            text = json.dumps(changed).encode()
            candidate = _HEAD.pack(b"SIFFSEIX", 1, len(text)) + text + data[_HEAD.size + size :]
        with contextlib.suppress(DeltaError):
            parse_index(candidate, "fuzz")
    material = KeyMaterial(passphrase=b"x")
    for _ in range(40):  # a valid description costs one scrypt
        described = dict(
            meta["store_key"],
            **{rng.choice(["type", "salt", "n", "r", "p", "check", "message"]): rng.choice(odd)},
        )
        with contextlib.suppress(DeltaError, CryptError):
            secret_of(described, material)


# -- processes holding keys are not dumpable --------------------------------------------------------


def _as_test_user(argv: list[object], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``argv`` started directly as the unprivileged test user (its own pid, no runuser between)."""
    entry = ensure_user()
    return subprocess.Popen(
        [str(a) for a in argv],
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _assert_not_dumpable(process: subprocess.Popen[bytes]) -> None:
    """A dumpable process's /proc files belong to its user; PR_SET_DUMPABLE 0 hands them to root."""
    assert process.poll() is None, process.communicate()
    uids = next(
        line
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
        if line.startswith("Uid:")
    )
    assert uids.split()[1:] == [str(ensure_user().pw_uid)] * 4  # it runs as the user, all four uids
    for name in ("mem", "environ", "maps"):
        assert os.stat(f"/proc/{process.pid}/{name}").st_uid == 0, name
    peek = subprocess.run(
        ["runuser", "-u", TEST_USER, "--", "head", "-c1", f"/proc/{process.pid}/environ"],
        capture_output=True,
        check=False,
    )
    assert peek.returncode != 0  # the same user cannot read its memory or environment either


def _user_copy(source: Path, directory: str) -> Path:
    copy = Path(directory) / source.name
    shutil.copy(source, copy)
    os.chown(copy, ensure_user().pw_uid, ensure_user().pw_gid)
    return copy


def _user_env(tmp_path: Path, pair: Pair) -> dict[str, str]:
    return pair.env | {"HOME": user_dir(tmp_path, "home"), "XDG_CACHE_HOME": user_dir(tmp_path, "cache")}


def test_pull_holding_keys_is_not_dumpable(tmp_path, pair: Pair):
    """``siffs pull`` waiting on a stalled server, keys unlocked: its memory is closed to its own user."""
    store = tmp_path / "store"
    index = Path(user_dir(tmp_path, "www")) / "app.caibx"
    siffs(
        "-q", "delta", "make", pair.new, "--store", store, "--index", index, *pair.key_args,
        env=pair.env, check=True,
    )  # fmt: skip
    home = user_dir(tmp_path, "pull")
    dest = _user_copy(pair.old, home)
    with socket.socket() as stalled:  # accepts connections and never answers
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(16)
        stalled.settimeout(60)
        url = f"http://127.0.0.1:{stalled.getsockname()[1]}/store"
        key_args = [*pair.key_args]
        if "--pem-path" in key_args:
            key_args[1] = str(_user_copy(Path(key_args[1]), home))
        argv = [sys.executable, "-m", "siffs", "pull", "--allow-unsigned", *key_args]
        process = _as_test_user([*argv, "--store", url, dest, index], _user_env(tmp_path, pair))
        try:
            connection, _ = stalled.accept()  # the key is checked and the rest is being fetched
            with connection:
                _assert_not_dumpable(process)
        finally:
            process.kill()
            process.communicate()
    assert dest.read_bytes() == pair.old.read_bytes()


def test_delta_make_holding_keys_is_not_dumpable(tmp_path, pair: Pair):
    """``siffs delta make`` stalled on its store's key file (a FIFO), the image unlocked: not dumpable."""
    home = user_dir(tmp_path, "make")
    image = _user_copy(pair.new, home)
    store = Path(user_dir(tmp_path, "store"))
    fifo = store / STORE_KEY_FILE
    os.mkfifo(fifo)
    os.chown(fifo, ensure_user().pw_uid, ensure_user().pw_gid)
    key_args = [*pair.key_args]
    if "--pem-path" in key_args:
        key_args[1] = str(_user_copy(Path(key_args[1]), home))
    argv = [sys.executable, "-m", "siffs", "-q", "delta", "make", image, "--store", store, *key_args]
    process = _as_test_user([*argv, "--index", Path(home) / "app.caibx"], _user_env(tmp_path, pair))
    writer = None
    try:
        for _ in range(600):  # until the image is open and the store's key file is being read
            with contextlib.suppress(OSError):
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.1)
        assert writer is not None
        _assert_not_dumpable(process)
    finally:
        process.kill()
        process.communicate()
        if writer is not None:
            os.close(writer)


# -- seeds of every kind, and the sealed cache of their cut ------------------------------------------


def _sealed_fetched(nginx: Nginx) -> int:
    return len([p for _, p, _ in nginx.requests() if p.endswith(SEALED_SUFFIX)])


def test_plain_and_other_kind_seeds(tmp_path, nginx: Nginx, pair: Pair):
    """A plain SIF of the old version, or the old version in the other format, seeds as well as it."""
    url = _publish(pair, nginx)
    env = pair.env | {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    index = parse_index((nginx.root / f"{pair.new.name}.caibx").read_bytes(), "test")
    fetched = {}
    for name, seed in (("same", pair.old), ("plain", pair.plain_old), ("other", pair.other_old)):
        dest = tmp_path / f"{name}.sif"
        nginx.clear_log()
        result = _pull(pair, dest, url, *pair.key_args, "--seed", str(seed), env=env)
        assert result.returncode == 0, result.stderr
        assert dest.read_bytes() == pair.new.read_bytes()
        report = json.loads(result.stdout)
        assert report["signers"] and not report["warnings"], report
        assert report["reused"][str(seed)] > 0.7 * index.plain.blob_size, report
        fetched[name] = (_sealed_fetched(nginx), report["fetched_bytes"])
    assert fetched["same"][0] < len({c.id for c in index.plain.chunks}) / 3
    # The plaintexts agree but for the container's padding after the SquashFS: one chunk at most.
    for name in ("plain", "other"):
        assert fetched[name][0] <= fetched["same"][0] + 1, fetched
        assert fetched[name][1] <= fetched["same"][1] + 2 * index.plain.sizes.max, fetched


def test_seed_cut_is_cached_sealed(tmp_path, nginx: Nginx, pair: Pair):
    url = _publish(pair, nginx)
    cache = tmp_path / "cache"
    env = pair.env | {"XDG_CACHE_HOME": str(cache)}

    def pull(dest: Path, seed: Path) -> dict:
        result = _pull(pair, dest, url, *pair.key_args, "--seed", str(seed), env=env)
        assert result.returncode == 0, result.stderr
        assert dest.read_bytes() == pair.new.read_bytes()
        return json.loads(result.stdout)

    first = pull(tmp_path / "a.sif", pair.old)
    assert first["chunked_bytes"] > 0
    second = pull(tmp_path / "b.sif", pair.old)
    assert second["chunked_bytes"] == 0  # the seed was not cut again
    assert second["reused"] == {str(pair.old): first["reused"][str(pair.old)]}
    entries = sorted((cache / "siffs/delta/seeds").glob("*.sealed"))
    assert len(entries) == 3  # the seed, and each pulled image remembered as the next seed
    assert pull(tmp_path / "c.sif", tmp_path / "a.sif")["chunked_bytes"] == 0
    # Nothing secret in the cache: no plaintext, no chunk name, no key, no secret; private files.
    index = parse_index((nginx.root / f"{pair.new.name}.caibx").read_bytes(), "test")
    probes = [vector(30000 + 997 * i, f"file{i}".encode())[1000:1064] for i in range(0, 40, 5)]
    names = [c.id for c in index.plain.chunks]
    pem = "--pem-path" in pair.key_args
    material = (
        KeyMaterial(pem=Path(pair.key_args[1]).read_bytes()) if pem else KeyMaterial(PASSPHRASE.encode())
    )
    secret = secret_of(index.store_key, material)
    secrets = [PASSPHRASE.encode(), secret, StoreKeys.from_secret(secret).chunker_id]
    for path in cache.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o077 == 0, path
            data = path.read_bytes()
            assert not any(p in data for p in probes + names + secrets), path
    # A damaged entry is ignored and rebuilt; so is a stale one (the seed's identity changed).
    for entry in entries:
        damaged = bytearray(entry.read_bytes())
        damaged[len(damaged) // 2] ^= 1
        entry.write_bytes(bytes(damaged))
    assert pull(tmp_path / "d.sif", pair.old)["chunked_bytes"] > 0
    assert pull(tmp_path / "e.sif", pair.old)["chunked_bytes"] == 0  # rebuilt
    stat = pair.old.stat()
    os.utime(pair.old, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        assert pull(tmp_path / "f.sif", pair.old)["chunked_bytes"] > 0
    finally:
        os.utime(pair.old, ns=(stat.st_atime_ns, stat.st_mtime_ns))
