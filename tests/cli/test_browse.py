"""``siffs ls`` and ``siffs cat`` on every conformance image: the tree, or one clear line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from siffs.cli.main import main
from siffs.sif import Image
from tests.support.mounts import kernel_mount
from tests.support.reference import IMAGES, expected, image_names


def squashfs_primary(name: str) -> bool:
    want = expected()["images"][name]
    primary = want["primary_partition"]
    if primary is None:
        return False
    d = next(d for d in want["descriptors"] if d["id"] == primary)
    return d["partition"]["fs_type"] == 1 and d["size"] >= 96


@pytest.mark.parametrize("name", image_names())
def test_ls_and_cat_match_the_kernel_or_say_why(name, tmp_path, capsysbinary):
    """Decided in the test, not at collection: the oracle's answer needs the Go build."""
    if squashfs_primary(name):
        ls_and_cat_match_the_kernel(name, tmp_path, capsysbinary)
    else:
        images_without_a_readable_tree_say_why(name, capsysbinary)


def ls_and_cat_match_the_kernel(name, tmp_path, capsysbinary):
    path = IMAGES / name
    with Image.open(path) as image:
        offset = image.primary_partition().offset
    with kernel_mount(path, tmp_path / "k", offset) as k:
        names = sorted(p.name for p in k.iterdir())
        contents = {p.name: p.read_bytes() for p in k.iterdir() if p.is_file()}
    assert main(["ls", str(path)]) == 0
    assert capsysbinary.readouterr().out.decode().split() == names
    assert main(["ls", "-lR", str(path)]) == 0
    listing = capsysbinary.readouterr().out.decode()
    assert all(n in listing for n in names)
    for file_name, data in contents.items():
        assert main(["cat", str(path), "/" + file_name]) == 0
        assert capsysbinary.readouterr().out == data


def images_without_a_readable_tree_say_why(name, capsysbinary):
    code = main(["ls", str(IMAGES / name)])
    out, err = capsysbinary.readouterr()
    assert code in (5, 10)  # no primary system partition / not a SquashFS image
    assert out == b""
    assert err.count(b"\n") == 1 and str(IMAGES / name).encode() in err


def test_unknown_path_and_wrong_kinds(capsysbinary):
    path = str(IMAGES / "one-group.sif")
    assert main(["cat", path, "/missing"]) == 5
    assert b"no such file" in capsysbinary.readouterr().err
    assert main(["cat", path, "/"]) == 6
    assert b"is a directory" in capsysbinary.readouterr().err
    assert main(["ls", path, "/hello.txt/x"]) == 5
    assert main(["ls", "-l", path, "/hello.txt"]) == 0
    assert capsysbinary.readouterr().out.decode().rstrip().endswith("/hello.txt")


@pytest.mark.parametrize("name", ["mk-gzip", "gen-xz", "mk-lz4-hc", "gen-lzma", "tar-gzip", "mk-bigdir"])
def test_ls_and_cat_on_corpus_images(name, corpus, kernel, capsysbinary):
    image = str(corpus.image(name))
    assert main(["ls", "-lR", image]) == 0
    listing = capsysbinary.readouterr().out
    with kernel(name) as k:
        files = sorted(
            Path(d, f)
            for d, _, names in os.walk(k)
            for f in names
            if stat.S_ISREG(os.lstat(Path(d, f)).st_mode)
        )[:50]
        assert len(listing.splitlines()) > len(files)
        for path in files:
            rel = "/" + str(path.relative_to(k))
            assert main(["cat", image, rel]) == 0
            assert capsysbinary.readouterr().out == path.read_bytes(), rel
