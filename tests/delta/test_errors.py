"""Every documented failure of a pull: one line, its exit code, and DEST left as it was.

nginx serves the real cases (missing chunk, corrupt chunk); a small loopback server plays the
misbehaving ones nginx cannot (ignores Range, truncates bodies, fails with 5xx once).
"""

from __future__ import annotations

import contextlib
import http.server
import random
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from siffs.cli.main import main as siffs
from siffs.delta import caibx, zsync
from siffs.delta.errors import IndexFormatError, UnsupportedFormatError
from siffs.delta.files import Journal
from tests.delta.conftest import Nginx, SignedImages, vector
from tests.support.mounts import require_root


def _publish(nginx: Nginx, image: Path) -> str:
    assert siffs(["-q", "delta", "make", str(image), "--store", str(nginx.root / "default.castr")]) == 0
    return f"{nginx.url}/{image.name}.caibx"


def _pull(dest: Path, source: str, *extra: str) -> int:
    return siffs(["-q", "pull", "--allow-unsigned", *extra, str(dest), source])


@pytest.fixture
def dest(tmp_path: Path, signed_images: SignedImages) -> Path:
    path = tmp_path / "dest" / "mine.sif"
    path.parent.mkdir()
    shutil.copy(signed_images.old, path)
    return path


def _untouched(dest: Path, images: SignedImages) -> None:
    assert dest.read_bytes() == images.old.read_bytes()
    assert not list(dest.parent.glob(".mine.sif.*.tmp"))


def _new_chunks(tmp_path: Path, nginx: Nginx, images: SignedImages) -> list[caibx.Chunk]:
    """The chunks of the new image that the old one lacks, in index order."""
    old_index = tmp_path / "old.caibx"
    siffs(
        [
            "-q",
            "delta",
            "make",
            str(images.old),
            "--store",
            str(tmp_path / "scratch"),
            "--index",
            str(old_index),
        ]
    )
    old = {c.id for c in caibx.read(str(old_index)).chunks}
    new = caibx.read(str(nginx.root / f"{images.new.name}.caibx"))
    return [c for c in new.chunks if c.id not in old]


def test_missing_chunk_then_resume_fetches_only_the_rest(tmp_path, dest, nginx, signed_images, capsys):
    url = _publish(nginx, signed_images.new)
    new_chunks = _new_chunks(tmp_path, nginx, signed_images)
    assert len(new_chunks) >= 2
    last = new_chunks[-1].name
    hidden = nginx.root / "default.castr" / last[:4] / f"{last}.cacnk"
    moved = hidden.with_suffix(".away")
    hidden.rename(moved)
    capsys.readouterr()
    assert _pull(dest, url) == 12
    err = capsys.readouterr().err
    assert "missing" in err and hidden.name.removesuffix(".cacnk") in err and err.count("\n") == 1
    _untouched(dest, signed_images)
    partial = dest.parent / ".mine.sif.partial.casync"
    kept = {key.hex() for key in Journal(str(partial)).records}
    assert kept  # what was fetched before the 404 is kept
    moved.rename(hidden)
    nginx.clear_log()
    assert _pull(dest, url) == 0
    assert dest.read_bytes() == signed_images.new.read_bytes()
    fetched = {Path(p).name.removesuffix(".cacnk") for m, p, s in nginx.requests() if p.endswith(".cacnk")}
    assert last in fetched and not fetched & kept
    assert not partial.exists()


def test_corrupt_chunk_on_server_is_a_digest_mismatch(tmp_path, dest, nginx, signed_images, capsys):
    url = _publish(nginx, signed_images.new)
    victim = _new_chunks(tmp_path, nginx, signed_images)[0]
    path = nginx.root / "default.castr" / victim.name[:4] / f"{victim.name}.cacnk"
    path.chmod(0o644)
    path.write_bytes(zstandard.ZstdCompressor().compress(b"x" * victim.size))
    capsys.readouterr()
    assert _pull(dest, url) == 15
    err = capsys.readouterr().err
    assert victim.name in err and "store" in err
    _untouched(dest, signed_images)


@pytest.mark.parametrize(
    ("mutate", "code", "rule"),
    [
        (lambda b: b[:-1], 4, "104 + 40"),
        (lambda b: b[:60], 4, "shorter"),
        (lambda b: b[:16] + (0x9000000000000003).to_bytes(8, "little") + b[24:], 10, "archive index"),
        (lambda b: b[:24] + (0).to_bytes(8, "little") + b[32:], 4, "chunk sizes"),
    ],
)
def test_bad_index(tmp_path, dest, nginx, signed_images, capsys, mutate, code, rule):
    url = _publish(nginx, signed_images.new)
    index = nginx.root / f"{signed_images.new.name}.caibx"
    index.write_bytes(mutate(index.read_bytes()))
    assert _pull(dest, url) == code
    err = capsys.readouterr().err
    assert rule in err and err.count("\n") == 1
    _untouched(dest, signed_images)


def test_bad_control_file(tmp_path, dest, capsys):
    control = tmp_path / "x.zsync"
    control.write_bytes(b"zsync: 0.6.2\nBlocksize: 1000\nLength: 10\nURL: x\n\n" + bytes(20))
    assert _pull(dest, str(control)) == 4
    assert "block size 1000" in capsys.readouterr().err
    control.write_bytes(
        b"zsync: 0.6.2\nBlocksize: 2048\nLength: 10\nURL: x\nStrong-Hash-Algorithm: SHA-224\n\n"
    )
    assert _pull(dest, str(control)) == 10


def test_unknown_source_kind(dest, capsys):
    assert _pull(dest, "http://127.0.0.1:9/image.caidx") == 2
    assert "archive indexes" in capsys.readouterr().err


# -- misbehaving servers -------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path
    mode: str
    seen: set[str]
    log: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.log.append(f"{self.path} {self.headers.get('Range', '')}".strip())
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if self.mode == "flaky" and self.path not in self.seen:
            self.seen.add(self.path)
            self.send_error(503)
            return
        if self.mode == "fail-after-2" and self.headers.get("Range"):
            self.seen.add(self.headers["Range"])
            if len(self.seen) > 2:  # every range after the first two fails, for good
                self.send_error(500)
                return
        status = 200
        rng = self.headers.get("Range")
        if rng and self.mode != "ignore-range":
            start, end = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            data, status = data[start : end + 1], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.mode == "truncate" and len(data) > 100:
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self.wfile.write(data)


@contextlib.contextmanager
def _server(root: Path, mode: str) -> Iterator[tuple[str, list[str], type[_Handler]]]:
    log: list[str] = []
    handler: type[_Handler] = type("H", (_Handler,), {"root": root, "mode": mode, "seen": set(), "log": log})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _zsync_site(tmp_path: Path, image: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(image, site / "image.sif")
    zsync.make(str(site / "image.sif"), str(site / "image.sif.zsync"), url="image.sif")
    return site


def test_server_ignoring_range(tmp_path, dest, signed_images, capsys):
    site = _zsync_site(tmp_path, signed_images.new)
    with _server(site, "ignore-range") as (url, _, _h):
        assert _pull(dest, f"{url}/image.sif.zsync") == 12
    assert "ignores HTTP Range" in capsys.readouterr().err
    _untouched(dest, signed_images)


def test_truncated_responses_fail_after_retries(tmp_path, dest, signed_images, capsys):
    site = _zsync_site(tmp_path, signed_images.new)
    with _server(site, "truncate") as (url, _, _h):
        assert _pull(dest, f"{url}/image.sif.zsync") == 12
    err = capsys.readouterr().err
    assert "truncated" in err and "attempts" in err
    _untouched(dest, signed_images)


def test_5xx_is_retried(tmp_path, dest, signed_images):
    site = tmp_path / "site"
    site.mkdir()
    siffs(["-q", "delta", "make", str(signed_images.new), "--store", str(site / "default.castr")])
    with _server(site, "flaky") as (url, log, _h):
        assert _pull(dest, f"{url}/{signed_images.new.name}.caibx") == 0
    assert dest.read_bytes() == signed_images.new.read_bytes()
    assert len(log) > len(set(log))  # each path failed once, then succeeded


def test_unreachable_server(dest, capsys):
    assert _pull(dest, "http://127.0.0.1:9/image.sif.caibx") == 12
    assert "gave up" in capsys.readouterr().err


# -- local failures -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    require_root()
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "siffs-test", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.root
def test_disk_full(tmp_path, nginx, signed_images, capsys):
    url = _publish(nginx, signed_images.new)
    with _tmpfs(tmp_path / "small", "size=256k") as small:
        assert _pull(small / "out.sif", url) == 3
        assert "disk full" in capsys.readouterr().err
        assert list(small.iterdir()) in ([], [small / ".out.sif.partial.casync"])
        assert not list(small.glob("*.tmp"))


@pytest.mark.root
def test_destination_not_writable(tmp_path, nginx, signed_images, capsys):
    url = _publish(nginx, signed_images.new)
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        assert _pull(ro / "out.sif", url) == 3
        assert "not writable" in capsys.readouterr().err


def test_missing_destination_directory(tmp_path, nginx, signed_images, capsys):
    url = _publish(nginx, signed_images.new)
    assert _pull(tmp_path / "nowhere" / "out.sif", url) == 3


# -- fuzzing the parsers ---------------------------------------------------------------------------------


def _mutations(seed_bytes: bytes, count: int) -> Iterator[bytes]:
    rng = random.Random(1234)
    for _ in range(count):
        data = bytearray(seed_bytes)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif op == 1:
                del data[pos : pos + rng.randint(1, 50)]
            elif op == 2:
                data[pos:pos] = rng.randbytes(rng.randint(1, 50))
            else:
                data = data[:pos]
        yield bytes(data)


def _fuzz(parse: Callable[[bytes], object], good: bytes) -> None:
    """3000 mutations of ``good``: only the documented errors escape, each one line; some are refused."""
    outcomes = set()
    for data in _mutations(good, 3000):
        try:
            parse(data)
            outcomes.add("ok")
        except (IndexFormatError, UnsupportedFormatError) as exc:
            outcomes.add(type(exc).__name__)
            assert "\n" not in str(exc)
    assert "IndexFormatError" in outcomes


def test_fuzz_index_parser(tmp_path):
    blob = tmp_path / "b"
    blob.write_bytes(vector(300_000))
    from siffs.delta.chunker import ChunkSizes  # noqa: PLC0415
    from siffs.delta.make import make_store  # noqa: PLC0415

    make_store(str(blob), str(tmp_path / "s"), str(tmp_path / "b.caibx"), ChunkSizes.from_average(16384))
    good = (tmp_path / "b.caibx").read_bytes()
    _fuzz(caibx.parse, good)


def test_fuzz_control_file_parser(tmp_path):
    blob = tmp_path / "b"
    blob.write_bytes(vector(100_000))
    zsync.make(str(blob), str(tmp_path / "b.zsync"))
    good = (tmp_path / "b.zsync").read_bytes()
    _fuzz(zsync.parse, good)


@pytest.mark.parametrize("kind", ["caibx", "zsync"])
def test_unreadable_seed(tmp_path, dest, nginx, signed_images, capsys, kind):
    if kind == "caibx":
        url = _publish(nginx, signed_images.new)
    else:
        shutil.copy(signed_images.new, nginx.root / "image.sif")
        zsync.make(str(nginx.root / "image.sif"), str(nginx.root / "image.sif.zsync"), url="image.sif")
        url = f"{nginx.url}/image.sif.zsync"
    assert _pull(dest, url, "--seed", str(tmp_path)) == 3  # a directory
    assert "seed" in capsys.readouterr().err
    _untouched(dest, signed_images)


def test_zsync_resume_after_failure_fetches_only_the_rest(tmp_path, dest, signed_images):
    site = _zsync_site(tmp_path, signed_images.new)
    with _server(site, "fail-after-2") as (url, log, handler):
        dest.unlink()  # no seed: every block is fetched, in several ranges
        assert _pull(dest, f"{url}/image.sif.zsync") == 12
        assert not dest.exists()
        kept = Journal(str(dest.parent / ".mine.sif.partial.zsync")).records
        assert len(kept) == 2
        handler.mode = "normal"
        log.clear()
        assert _pull(dest, f"{url}/image.sif.zsync") == 0
    assert dest.read_bytes() == signed_images.new.read_bytes()
    control = zsync.parse((site / "image.sif.zsync").read_bytes())
    ranges = len(list(zsync._ranges(range(control.blocks))))
    assert ranges > 4
    assert len([entry for entry in log if "bytes=" in entry]) == ranges - 2  # the two kept are not fetched


def test_make_refuses_a_non_sif(tmp_path, capsys):
    junk = tmp_path / "junk.sif"
    junk.write_bytes(vector(5000))
    assert siffs(["delta", "make", str(junk), "--store", str(tmp_path / "s")]) == 4
    assert not (tmp_path / "s").exists()


def test_zsync_sha1_mismatch_refuses_the_image(tmp_path, dest, signed_images, capsys):
    """Every block checks out (all from the seed) but the whole file's SHA-1 does not: refused."""
    site = _zsync_site(tmp_path, signed_images.new)
    control = site / "image.sif.zsync"
    raw = control.read_bytes()
    start = raw.index(b"SHA-1: ") + 7
    control.write_bytes(raw[:start] + b"0" * 40 + raw[start + 40 :])
    assert _pull(dest, str(control), "--seed", str(signed_images.new)) == 15
    assert "SHA-1 differs" in capsys.readouterr().err
    _untouched(dest, signed_images)
