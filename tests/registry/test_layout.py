"""``siffs pull oci:DIR[:TAG|@DIGEST]``, ``oci-archive:FILE[:TAG]`` (registry.md §5.8), --keep-owners.

The oracle for the tree is umoci's rootless unpack of the same layout, as for ``docker://``; an
archive (plain or gzip) must give the same tree as the directory it was made from. All pulls run
as the unprivileged test user.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from siffs.cli.exitcodes import ExitCode
from siffs.sif import Image
from tests.registry.test_docker import _tree
from tests.support import ociimage
from tests.support.mounts import kernel_mount, require_root, siffs
from tests.support.users import TEST_USER, ensure_user, user_dir

INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _put(layout: Path, data: bytes) -> str:
    digest = _digest(data)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return digest


def _arm64_image() -> ociimage.Image:
    """A one-layer linux/arm64 image (a file saying so)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("arch.txt")
        info.size, info.mtime = 6, ociimage.MTIME
        tar.addfile(info, io.BytesIO(b"arm64\n"))
    layer = out.getvalue()
    config = json.dumps({"architecture": "arm64", "os": "linux", "variant": "v8", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]}}).encode()  # fmt: skip
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": ociimage.MEDIA["none"], "digest": _digest(layer),
                    "size": len(layer)}]}).encode()  # fmt: skip
    return ociimage.Image({_digest(layer): layer, _digest(config): config}, manifest, config)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """The spec's fixture layout: ``mixed`` (the 3-layer image), ``gzip`` (the same, all gzip),
    ``arm64``, and ``multi`` (an index of arm64, amd64 and an attestation), owned by the test user."""
    ensure_user()
    root = Path(user_dir(tmp_path_factory.mktemp("oci"), "parent")) / "layout"
    mixed, gz, arm = ociimage.build(), ociimage.build(("gzip", "gzip", "gzip")), _arm64_image()
    ociimage.oci_layout(mixed, root, "mixed")
    entries = json.loads((root / "index.json").read_text())["manifests"]
    for image, tag in ((gz, "gzip"), (arm, "arm64")):
        for data in image.blobs.values():
            _put(root, data)
        entries.append({"mediaType": MANIFEST_TYPE, "digest": _put(root, image.manifest),
                        "size": len(image.manifest), "annotations": {ociimage.REF_NAME: tag}})  # fmt: skip
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [
        {"mediaType": MANIFEST_TYPE, "digest": arm.manifest_digest, "size": len(arm.manifest),
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": MANIFEST_TYPE, "digest": mixed.manifest_digest, "size": len(mixed.manifest),
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": MANIFEST_TYPE, "digest": arm.manifest_digest, "size": len(arm.manifest),
         "platform": {"os": "unknown", "architecture": "unknown"}}]}).encode()  # fmt: skip
    entries.append({"mediaType": INDEX_TYPE, "digest": _put(root, index), "size": len(index),
                    "annotations": {ociimage.REF_NAME: "multi"}})  # fmt: skip
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    subprocess.run(["chown", "-R", TEST_USER, root.parent], check=True)
    return root


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    home = Path(user_dir(tmp_path, "home"))
    return {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config")}  # fmt: skip


def _pull(env: dict[str, str], *args: object) -> subprocess.CompletedProcess[str]:
    return siffs("pull", *args, env=env, user=TEST_USER, timeout=300)


def _archive(layout: Path, out: Path, *, gzip: bool) -> Path:
    with tarfile.open(out, "w:gz" if gzip else "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(layout, arcname=".")
    user = pwd.getpwnam(TEST_USER)
    os.chown(out, user.pw_uid, user.pw_gid)
    return out


def _kernel_tree(image: Path, where: Path) -> dict[str, dict[str, object]]:
    with Image.open(image) as sif:
        offset = sif.primary_partition().offset
    with kernel_mount(image, where, offset) as mnt:
        return _tree(mnt)


def test_directory_and_archives_give_the_tree_umoci_gives(layout, env, tmp_path):
    require_root()
    work = Path(env["HOME"])
    assert _pull(env, work / "dir.sif", f"oci:{layout}:mixed").returncode == 0
    plain = _archive(layout, work / "image.tar", gzip=False)
    zipped = _archive(layout, work / "image.tar.gz", gzip=True)
    for name, archive in (("plain.sif", plain), ("zipped.sif", zipped)):
        done = _pull(env, work / name, f"oci-archive:{archive}:mixed")
        assert done.returncode == 0, done.stderr
    bundle = Path(user_dir(tmp_path, "bundle-parent")) / "bundle"
    umoci = ["umoci", "unpack", "--rootless", "--image", f"{layout}:gzip", str(bundle)]
    subprocess.run(["runuser", "-u", TEST_USER, "--", *umoci], check=True, capture_output=True)
    theirs = _tree(bundle / "rootfs")
    for name in ("dir.sif", "plain.sif", "zipped.sif"):
        assert _kernel_tree(work / name, tmp_path / name) == theirs, name


def test_definition_and_labels_as_apptainer_writes_them_for_a_layout(layout, env):
    out = Path(env["HOME"]) / "x.sif"
    assert _pull(env, out, f"oci:{layout}:mixed").returncode == 0
    deffile = siffs("cat", out, "/.singularity.d/Singularity", env=env, user=TEST_USER, check=True).stdout
    assert deffile == f"bootstrap: oci\nfrom: {layout}:mixed\n\n"
    labels = json.loads(siffs("cat", out, "/.singularity.d/labels.json", env=env, user=TEST_USER,
                              check=True).stdout)  # fmt: skip
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "oci"
    assert "org.opencontainers.image.base.name" not in labels  # Apptainer records none for a layout
    assert siffs("verify", out, env=env, user=TEST_USER).returncode == 0  # signed with the user's build key


def test_selection_by_tag_digest_and_platform(layout, env):
    work = Path(env["HOME"])
    index = json.loads((layout / "index.json").read_text())["manifests"]
    by_tag = {e["annotations"][ociimage.REF_NAME]: e["digest"] for e in index}
    cases = [
        (f"oci:{layout}@{by_tag['arm64']}", ("--arch", "arm64"), "/arch.txt", "arm64\n"),
        (f"oci:{layout}:multi", ("--arch", "arm64"), "/arch.txt", "arm64\n"),
        (f"oci:{layout}:multi", (), "/etc/added", "added\n"),
    ]
    for number, (source, options, path, text) in enumerate(cases):
        out = work / f"{number}.sif"
        done = _pull(env, *options, out, source)
        assert done.returncode == 0, (source, done.stderr)
        got = siffs("cat", out, path, env=env, user=TEST_USER, check=True).stdout
        assert got == text, source


@pytest.mark.parametrize(
    ("suffix", "code", "message"),
    [
        ("", ExitCode.NOT_FOUND, "holds 4 images: name one as oci:{layout}:TAG or oci:{layout}@sha256:…"),
        (":nope", ExitCode.NOT_FOUND, "no image tagged nope (tags: arm64, gzip, mixed, multi)"),
        ("@sha256:" + "0" * 64, ExitCode.NOT_FOUND, "no image sha256:" + "0" * 64),
        (":bad tag!", ExitCode.USAGE, "tag must match"),
    ],
)
def test_a_reference_that_names_no_single_image(layout, env, suffix, code, message):
    out = Path(env["HOME"]) / "x.sif"
    done = _pull(env, out, f"oci:{layout}{suffix}")
    assert done.returncode == code, done.stderr
    assert message.format(layout=layout) in done.stderr and done.stderr.count("\n") == 1
    assert not out.exists()


def test_a_corrupt_or_missing_blob_is_caught_and_nothing_is_written(layout, env, tmp_path):
    broken = Path(user_dir(tmp_path, "broken-parent")) / "broken"
    subprocess.run(["cp", "-a", layout, broken], check=True)
    layer = json.loads(ociimage.build().manifest)["layers"][2]["digest"]  # the uncompressed one
    blob = broken / "blobs" / "sha256" / layer.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[1000] ^= 1
    blob.write_bytes(bytes(data))
    out = Path(env["HOME"]) / "x.sif"
    done = _pull(env, out, f"oci:{broken}:mixed")
    assert done.returncode == ExitCode.DIGEST_MISMATCH, done.stderr
    assert f"blob {layer} in oci:{broken}:mixed has digest sha256:" in done.stderr
    blob.unlink()
    done = _pull(env, out, f"oci:{broken}:mixed")
    assert done.returncode == ExitCode.NOT_FOUND, done.stderr
    assert f"blob {layer} is missing (broken layout)" in done.stderr
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".x.sif")]


def test_an_archive_is_never_extracted_by_member_name(layout, env):
    """Members that would escape are not even looked at: only index.json and blobs are read."""
    work = Path(env["HOME"])
    archive = _archive(layout, work / "evil.tar", gzip=True)
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar]  # type: ignore[union-attr]
    with tarfile.open(archive, "w:gz") as tar:
        evil = tarfile.TarInfo("../../escaped.txt")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    done = _pull(env, work / "x.sif", f"oci-archive:{archive}:mixed")
    assert done.returncode == 0, done.stderr
    assert not (work.parent / "escaped.txt").exists() and not Path("/escaped.txt").exists()


def test_default_name_is_apptainers(layout, env):
    work = Path(env["HOME"])
    done = siffs("pull", f"oci:{layout}:arm64", "--arch", "arm64", env=env, user=TEST_USER, cwd=work,
                 timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (work / "layout_arm64.sif").exists()


def test_run_an_oci_layout_directly(layout, env):
    """``siffs exec oci:…`` converts into the cache once, as Apptainer does."""
    ref = f"oci:{layout}:mixed"
    first = siffs("exec", ref, "busybox", "cat", "/etc/added", env=env, user=TEST_USER, timeout=300)
    assert (first.returncode, first.stdout) == (0, "added\n"), first.stderr
    cache = Path(env["XDG_CACHE_HOME"]) / "siffs" / "registry" / "sif"
    cached = list(cache.iterdir())
    again = siffs("run", ref, "x", env=env, user=TEST_USER, timeout=120)
    assert (again.returncode, again.stdout) == (0, "[x]"), again.stderr
    assert list(cache.iterdir()) == cached and len(cached) == 1


def test_keep_owners(layout, env, tmp_path):
    """All 0:0 by default (Apptainer without PRoot); the layers' owners with --keep-owners, root still 0:0."""
    require_root()
    work = Path(env["HOME"])
    for name, options in (("root.sif", ()), ("kept.sif", ("--keep-owners",))):
        done = _pull(env, *options, work / name, f"oci:{layout}:mixed")
        assert done.returncode == 0, done.stderr
    owners = {}
    for name in ("root.sif", "kept.sif"):
        with Image.open(work / name) as sif:
            offset = sif.primary_partition().offset
        with kernel_mount(work / name, tmp_path / name, offset) as mnt:
            paths = (".", "home/user", "hl/orig", "bin/busybox", ".singularity.d/runscript")
            owners[name] = {p: (os.lstat(mnt / p).st_uid, os.lstat(mnt / p).st_gid) for p in paths}
    assert set(owners["root.sif"].values()) == {(0, 0)}
    assert owners["kept.sif"] == {".": (0, 0), "home/user": (1000, 1000), "hl/orig": (1000, 1000),
                                  "bin/busybox": (0, 0), ".singularity.d/runscript": (0, 0)}  # fmt: skip


def test_not_an_archive_or_not_a_layout(layout, env):
    work = Path(env["HOME"])
    junk = work / "junk.tar"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    os.chown(junk, pwd.getpwnam(TEST_USER).pw_uid, -1)
    cases = [
        (f"oci-archive:{junk}", ExitCode.UNSUPPORTED, f"{junk}: not a readable OCI archive"),
        (f"oci:{work}", ExitCode.NOT_FOUND, f"oci:{work}: no index.json (not an OCI image layout)"),
        (f"oci:{work}/missing", ExitCode.NOT_FOUND, f"oci:{work}/missing: {work}/missing is not a directory"),
    ]
    for source, code, message in cases:
        done = _pull(env, work / "x.sif", source)
        assert (done.returncode, done.stderr.count("\n")) == (code, 1), done.stderr
        assert message in done.stderr


def _one_image_layout(root: Path, layers: list[tuple[bytes, str]]) -> Path:
    """A layout holding one image made of ``layers`` (tar bytes, media type), owned by the test user."""
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    diff_ids = [_digest(data) for data, _ in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()  # fmt: skip
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _put(root, config),
                   "size": len(config)},
        "layers": [{"mediaType": media, "digest": _put(root, data), "size": len(data)}
                   for data, media in layers]}).encode()  # fmt: skip
    entry = {"mediaType": MANIFEST_TYPE, "digest": _put(root, manifest), "size": len(manifest)}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    subprocess.run(["chown", "-R", TEST_USER, root], check=True)
    return root


def _tar_of(*entries: tarfile.TarInfo) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return out.getvalue()


def test_layer_rows_of_the_error_table(env, tmp_path):
    """Spec registry.md §8: a bad tar entry, an unsupported layer type, mksquashfs missing."""
    base = Path(user_dir(tmp_path, "layouts"))
    bare = tmp_path / "bin"  # a PATH with runuser (to become the test user) and no mksquashfs
    bare.mkdir()
    (bare / "runuser").symlink_to(shutil.which("runuser") or "/usr/sbin/runuser")
    link = tarfile.TarInfo("data/x")
    link.type, link.linkname = tarfile.LNKTYPE, "data/missing"
    good = tarfile.TarInfo("data/ok.txt")
    good.size = 3
    cases = [
        (_one_image_layout(base / "link", [(_tar_of(link), ociimage.MEDIA["none"])]), None,
         ExitCode.UNSUPPORTED, "layer 1: hard link data/x -> data/missing: target does not exist"),
        (_one_image_layout(base / "intoto", [(b"{}", "application/vnd.in-toto+json")]), None,
         ExitCode.UNSUPPORTED, "unsupported layer media type application/vnd.in-toto+json"),
        (_one_image_layout(base / "good", [(_tar_of(good), ociimage.MEDIA["none"])]), str(bare),
         ExitCode.IO, "mksquashfs (squashfs-tools >= 4.5) not found"),
    ]  # fmt: skip
    for number, (root, path, code, message) in enumerate(cases):
        out = Path(env["HOME"]) / f"{number}.sif"
        done = _pull(dict(env, PATH=path or env["PATH"]), out, f"oci:{root}")
        assert (done.returncode, done.stderr.count("\n")) == (code, 1), done.stderr
        assert message in done.stderr and not out.exists()
