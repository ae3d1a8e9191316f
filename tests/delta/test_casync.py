"""casync compatibility, both ways, against the real casync and nginx: chunker, index, store, pull."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from siffs.cli.main import main as siffs
from siffs.delta import caibx, chunker
from siffs.delta.chunker import Chunker, ChunkSizes
from siffs.delta.make import make_store
from tests.delta.conftest import Nginx, SignedImages, vector
from tests.support.images import require_tool

DEFAULT = ChunkSizes(16384, 65536, 262144)
SMALL = ChunkSizes.from_average(16384)
WINDOW_AT_MIN = bytes.fromhex(
    "6b179ad89a1bdd016b273770c64540ad6aa2f76fffb807e463a65a168202ab93a0a6b72e88d9d95e8f6d14a4989f31a3"
)


def ends(data: bytes, sizes: ChunkSizes) -> list[int]:
    view = memoryview(data)
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        piece = bytes(view[pos : pos + n])
        pos += len(piece)
        return piece

    out, end = [], 0
    for c in Chunker(sizes).split(read):
        end += len(c)
        out.append(end)
    return out


def test_table_fingerprint():
    words = b"".join(int(w).to_bytes(4, "little") for w in chunker._TABLE)
    assert (
        hashlib.sha256(words).hexdigest()
        == "5b52080d38287da9d2e278466e3e0db7ec98e5e8b226f50612a56fa012b1f660"
    )


@pytest.mark.parametrize(
    ("avg", "d"), [(4096, 3075), (16384, 12318), (65536, 49535), (262144, 202440), (1048576, 886711)]
)
def test_discriminator(avg, d):
    assert ChunkSizes(1, avg, 128 << 20).discriminator == d


def test_vectors():
    assert ends(vector(1048576), DEFAULT) == [
        30561, 100734, 128503, 314294, 332458, 355587, 585128, 640456, 658322, 715814, 740604, 794101,
        977588, 1047345, 1048576,
    ]  # fmt: skip
    small = ends(vector(1048576), SMALL)
    assert (
        len(small) == 49
        and small[:5] == [7199, 14483, 41272, 66268, 82987]
        and small[-2:] == [1027977, 1048576]
    )
    assert ends(bytes(300000) + vector(700000), DEFAULT)[:3] == [262144, 330561, 400734]
    cut_at_min = vector(16336) + WINDOW_AT_MIN + vector(200000, b"tail")
    assert ends(cut_at_min, DEFAULT) == [16384, 59815, 168817, 189140, 216384]
    for n in (3, 47, 16384, 16385):
        assert ends(vector(n), DEFAULT) == [n]
    assert ends(b"", DEFAULT) == []
    assert ends(bytes(1 << 20), DEFAULT) == [262144, 524288, 786432, 1048576]


@pytest.mark.parametrize(
    ("data", "sizes", "digest"),
    [
        (vector(1048576), DEFAULT, "bdeea7d4cdaa13d14cd74a1dd88f31a6225d4d555d8ff6c3b5d3cd3f45be1414"),
        (vector(1048576), SMALL, "1a8c11da89f477bb25013c61c2e88af408deb0687552af440e34eea508c191d3"),
        (
            bytes(300000) + vector(700000),
            DEFAULT,
            "b2bbaece3516221fb036a1993f60cbc3eb01b64bf1df3c95813e5627ac7eb6b7",
        ),
        (
            bytes(300000) + vector(700000),
            SMALL,
            "2e4c6666c99989021dd1ef1da0c39a116e9f9f5fbc2eb1b090366dec81619c54",
        ),
        (
            vector(16336) + WINDOW_AT_MIN + vector(200000, b"tail"),
            DEFAULT,
            "7cb94ecc7a3ab25e214ee74fe335200240e9046c2d8da06345b4723662af2598",
        ),
    ],
)
def test_index_matches_specification_vectors(tmp_path, data, sizes, digest):
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    make_store(str(blob), str(tmp_path / "store"), str(tmp_path / "b.caibx"), sizes)
    assert hashlib.sha256((tmp_path / "b.caibx").read_bytes()).hexdigest() == digest


@pytest.mark.parametrize(
    ("spec", "sizes", "sha512_256"),
    [
        ("65536", DEFAULT, True),
        ("16384", SMALL, True),
        ("16384", SMALL, False),
        ("64:4096:65536", None, True),
    ],
)
def test_index_byte_identical_to_casync_make(tmp_path, signed_images, spec, sizes, sha512_256):
    casync = require_tool("casync")
    image = signed_images.new
    digest = "sha512-256" if sha512_256 else "sha256"
    subprocess.run(
        [casync, "make", f"--chunk-size={spec}", f"--digest={digest}", f"--store={tmp_path}/c.castr",
         str(tmp_path / "c.caibx"), str(image)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    sizes = sizes or ChunkSizes(64, 4096, 65536)
    make_store(str(image), str(tmp_path / "s.castr"), str(tmp_path / "s.caibx"), sizes, sha512_256=sha512_256)
    assert (tmp_path / "s.caibx").read_bytes() == (tmp_path / "c.caibx").read_bytes()
    assert sorted(p.name for p in (tmp_path / "s.castr").rglob("*.cacnk")) == sorted(
        p.name for p in (tmp_path / "c.castr").rglob("*.cacnk")
    )


def test_casync_extracts_siffs_store_over_nginx(tmp_path, nginx: Nginx, signed_images: SignedImages):
    store = nginx.root / "default.castr"
    index = nginx.root / "image.sif.caibx"
    assert (
        siffs(["-q", "delta", "make", str(signed_images.new), "--store", str(store), "--index", str(index)])
        == 0
    )
    out = tmp_path / "out.sif"
    store_url = f"{nginx.url}/default.castr/"
    subprocess.run(
        [require_tool("casync"), "extract", f"--store={store_url}", f"{nginx.url}/image.sif.caibx", str(out)],
        check=True,
    )
    assert out.read_bytes() == signed_images.new.read_bytes()


def _publish_with_casync(nginx: Nginx, image: Path) -> str:
    subprocess.run(
        [require_tool("casync"), "make", "--chunk-size=16384", f"--store={nginx.root}/default.castr",
         str(nginx.root / "image.sif.caibx"), str(image)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return f"{nginx.url}/image.sif.caibx"


def _chunk_gets(nginx: Nginx) -> list[str]:
    return [p for m, p, s in nginx.requests() if p.endswith(".cacnk")]


def test_pull_from_casync_store_with_seed_verifies_and_fetches_only_the_difference(
    tmp_path, nginx: Nginx, signed_images: SignedImages, capsys
):
    url = _publish_with_casync(nginx, signed_images.new)
    dest = tmp_path / "mine.sif"
    shutil.copy(signed_images.old, dest)
    nginx.clear_log()
    assert siffs(["pull", "--json", "--key", str(signed_images.public_key), str(dest), url]) == 0
    assert dest.read_bytes() == signed_images.new.read_bytes()
    report = json.loads(capsys.readouterr().out)
    new_index = caibx.read(str(nginx.root / "image.sif.caibx"))
    old_ids = {c.id for c in caibx.parse(_index_of(tmp_path, signed_images.old)).chunks}
    expected = {c.name for c in new_index.chunks if c.id not in old_ids}
    gets = _chunk_gets(nginx)
    assert sorted(os.path.basename(g).removesuffix(".cacnk") for g in gets) == sorted(expected)
    assert 0 < len(expected) < len(new_index.chunks) / 2
    assert report["requests"] == len(gets) + 1
    assert report["reused"][str(dest)] == sum(c.size for c in new_index.chunks if c.id in old_ids)
    assert report["signers"]
    assert not list(tmp_path.glob(".mine.sif*"))  # no temporary file, no partial area left


def _index_of(tmp_path: Path, image: Path) -> bytes:
    out = tmp_path / f"{image.name}.idx.caibx"
    make_store(str(image), str(tmp_path / "scratch.castr"), str(out), SMALL)
    return out.read_bytes()


def test_pull_without_seed_equals_casync_extract(tmp_path, nginx: Nginx, signed_images: SignedImages):
    url = _publish_with_casync(nginx, signed_images.new)
    dest = tmp_path / "fresh.sif"
    assert siffs(["-q", "pull", "--allow-unsigned", str(dest), url]) == 0
    casync_out = tmp_path / "casync.sif"
    store_url = f"{nginx.url}/default.castr"
    subprocess.run(
        [require_tool("casync"), "extract", f"--store={store_url}", url, str(casync_out)], check=True
    )
    assert dest.read_bytes() == casync_out.read_bytes() == signed_images.new.read_bytes()


def test_seed_cache_makes_second_pull_need_no_chunking(tmp_path, nginx, signed_images):
    url = _publish_with_casync(nginx, signed_images.new)
    seed = tmp_path / "seed.sif"
    shutil.copy(signed_images.old, seed)
    for name in ("a.sif", "b.sif"):
        assert siffs(["-q", "pull", "--allow-unsigned", "--seed", str(seed), str(tmp_path / name), url]) == 0
    cached = list((tmp_path / "cache" / "siffs" / "delta" / "seeds").glob("*.caibx"))
    # one entry for the seed, one per pulled destination (so it seeds the next pull for free)
    assert len(cached) == 3


def test_untrusted_image_is_refused_and_dest_untouched(tmp_path, nginx, signed_images, capsys):
    url = _publish_with_casync(nginx, signed_images.new)
    dest = tmp_path / "mine.sif"
    shutil.copy(signed_images.old, dest)
    before = dest.read_bytes()
    assert siffs(["pull", str(dest), url]) == 7  # empty keyring: not trusted
    assert dest.read_bytes() == before
    assert "trusted" in capsys.readouterr().err
    assert not list(tmp_path.glob(".mine.sif.*.tmp"))


def test_stale_seed_index_costs_a_fetch_never_wrong_bytes(tmp_path, nginx, signed_images, capsys):
    from siffs.delta import seeds  # noqa: PLC0415

    url = _publish_with_casync(nginx, signed_images.new)
    index = caibx.read(str(nginx.root / "image.sif.caibx"))
    seed = tmp_path / "seed.sif"
    seed.write_bytes(signed_images.new.read_bytes())
    # The seed's bytes change, but the cache claims it still holds the new image's chunks.
    with open(seed, "r+b") as f:
        f.seek(index.chunks[3].offset + 10)
        f.write(b"\xff" * 16)
    seeds.remember(str(seed), index)
    dest = tmp_path / "out.sif"
    assert siffs(["pull", "--allow-unsigned", "--json", "--seed", str(seed), str(dest), url]) == 0
    out = capsys.readouterr()
    assert dest.read_bytes() == signed_images.new.read_bytes()
    assert index.chunks[3].name in out.err and f"seed {seed}" in out.err
    report = json.loads(out.out)
    assert report["fetched_items"] == 1 and report["requests"] == 2
    # the stale entry was dropped: the next pull re-chunks the seed and finds its true chunks
    assert (
        siffs(["-q", "pull", "--allow-unsigned", "--seed", str(seed), str(tmp_path / "again.sif"), url]) == 0
    )
    assert "does not match" not in capsys.readouterr().err
