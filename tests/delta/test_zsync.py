"""zsync interop both ways, against Debian's zsync 0.6.2 (zsyncmake, zsync) and nginx."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from siffs.cli.main import main as siffs
from siffs.delta import zsync
from tests.delta.conftest import Nginx, SignedImages, vector
from tests.support.images import require_tool


@pytest.mark.parametrize("size", [0, 1, 2048, 4097, 300_000, 2_500_000])
def test_control_file_byte_identical_to_zsyncmake(tmp_path, size):
    blob = tmp_path / "t.bin"
    blob.write_bytes(vector(size))
    os.utime(blob, (1_700_000_000, 1_700_000_000))
    subprocess.run(
        [require_tool("zsyncmake"), "-u", "http://example.org/t.bin", "-o", f"{tmp_path}/z.zsync", str(blob)],
        check=True, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    zsync.make(str(blob), str(tmp_path / "s.zsync"), url="http://example.org/t.bin")
    assert (tmp_path / "s.zsync").read_bytes() == (tmp_path / "z.zsync").read_bytes()
    parsed = zsync.parse((tmp_path / "z.zsync").read_bytes())
    assert parsed.length == size and parsed.urls == ("http://example.org/t.bin",)


def _publish(nginx: Nginx, image, *, with_siffs: bool) -> str:
    shutil.copy(image, nginx.root / "image.sif")
    out = nginx.root / "image.sif.zsync"
    if with_siffs:
        assert siffs(["-q", "delta", "make", str(nginx.root / "image.sif"), "--zsync", "-o", str(out)]) == 0
    else:
        subprocess.run(
            [require_tool("zsyncmake"), "-u", "image.sif", "-o", str(out), str(nginx.root / "image.sif")],
            check=True, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    return f"{nginx.url}/image.sif.zsync"


def test_zsync_client_accepts_siffs_control_file(tmp_path, nginx: Nginx, signed_images: SignedImages):
    url = _publish(nginx, signed_images.new, with_siffs=True)
    out = tmp_path / "out.sif"
    subprocess.run(
        [require_tool("zsync"), "-q", "-i", str(signed_images.old), "-o", str(out), url],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.read_bytes() == signed_images.new.read_bytes()


def test_siffs_pulls_zsyncmake_control_file_with_seed(
    tmp_path, nginx: Nginx, signed_images: SignedImages, capsys
):
    url = _publish(nginx, signed_images.new, with_siffs=False)
    dest = tmp_path / "mine.sif"
    shutil.copy(signed_images.old, dest)
    nginx.clear_log()
    assert siffs(["pull", "--json", "--key", str(signed_images.public_key), str(dest), url]) == 0
    assert dest.read_bytes() == signed_images.new.read_bytes()
    report = json.loads(capsys.readouterr().out)
    ranged = [r for r in nginx.requests() if r[1] == "/image.sif"]
    assert ranged and all(status == 206 for _, _, status in ranged)
    size = signed_images.new.stat().st_size
    assert report["fetched_bytes"] < size / 3
    assert report["reused"][str(dest)] > size / 2
    assert report["requests"] == len(ranged) + 1
    assert not list(tmp_path.glob(".mine.sif*"))


def test_siffs_pull_without_seed_matches_zsync(tmp_path, nginx: Nginx, signed_images: SignedImages):
    url = _publish(nginx, signed_images.new, with_siffs=True)
    dest = tmp_path / "fresh.sif"
    assert siffs(["-q", "pull", "--allow-unsigned", str(dest), url]) == 0
    assert dest.read_bytes() == signed_images.new.read_bytes()
