"""``siffs push``/``pull`` of ORAS SIF artifacts against a real registry (docker-registry 2.8)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil

import pytest

from siffs.cli.exitcodes import ExitCode
from siffs.registry import oras
from siffs.registry.http import Session
from siffs.registry.reference import parse
from tests.support.mounts import require_root, siffs
from tests.support.registry import get, pull_on_small_disk

TAR = "application/vnd.oci.image.layer.v1.tar"
NOW = dt.datetime(2026, 12, 5, 1, 39, 22, tzinfo=dt.UTC)


def _manifest(host: str, repo: str, tag: str) -> tuple[bytes, str]:
    """The manifest bytes a registry stores for repo:tag, and their digest."""
    session = Session(host, local=True)
    try:
        response = session.request(
            "GET", f"/v2/{repo}/manifests/{tag}", scope="", headers={"Accept": oras.ACCEPT}
        )
        body = response.read()
    finally:
        session.close()
    return body, "sha256:" + hashlib.sha256(body).hexdigest()


def test_push_writes_apptainers_manifest_byte_for_byte(plain, sif_image):
    ref = parse(f"oras://{plain.host}/tools/example:v1")
    session = Session(plain.host, local=True)
    try:
        digest = oras.push(session, sif_image, ref, annotations={"x.note": "<a & b>"}, now=NOW)
    finally:
        session.close()
    sif = sif_image.read_bytes()
    expected = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        '"config":{"mediaType":"application/vnd.sylabs.sif.config.v1+json","size":2,'
        '"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","data":"e30="},'
        f'"layers":[{{"mediaType":"application/vnd.sylabs.sif.layer.v1.sif","size":{len(sif)},'
        f'"digest":"sha256:{hashlib.sha256(sif).hexdigest()}",'
        '"annotations":{"org.opencontainers.image.title":"example.sif"}}],'
        '"annotations":{"org.opencontainers.image.created":"2026-12-05T01:39:22Z",'
        '"x.note":"\\u003ca \\u0026 b\\u003e"}}'
    ).encode()
    stored, stored_digest = _manifest(plain.host, "tools/example", "v1")
    assert stored == expected and digest == stored_digest
    session = Session(plain.host, local=True)
    try:  # the same file at the same time: the registry has it already
        assert oras.push(session, sif_image, ref, annotations={"x.note": "<a & b>"}, now=NOW) == digest
    finally:
        session.close()


def test_push_then_pull_round_trip_through_a_redirecting_registry(plain, sif_image, home, tmp_path):
    target = f"oras://{plain.host}/tools/roundtrip:1.0"
    pushed = siffs("push", sif_image, target, env=home, check=True)
    assert pushed.stdout.startswith(f"pushed {sif_image} to {target[7:]}: manifest sha256:")
    out = tmp_path / "pulled.sif"
    pulled = siffs("pull", "--allow-unsigned", out, target, env=home, check=True)
    assert out.read_bytes() == sif_image.read_bytes()
    assert "signatures not verified (--allow-unsigned)" in pulled.stderr
    assert not list(tmp_path.glob(".*.part"))


def test_default_output_name_and_no_overwrite(plain, sif_image, home, tmp_path):
    siffs("push", sif_image, f"oras://{plain.host}/tools/named:2.1", env=home, check=True)
    siffs("pull", "--allow-unsigned", f"oras://{plain.host}/tools/named:2.1", env=home, check=True,
          cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "named_2.1.sif").read_bytes() == sif_image.read_bytes()
    refused = siffs(
        "pull", "--allow-unsigned", f"oras://{plain.host}/tools/named:2.1", env=home, cwd=tmp_path
    )
    assert refused.returncode == ExitCode.IO and "already exists" in refused.stderr


def test_pull_applies_the_trust_policy_before_the_file_lands(plain, sif_image, home, tmp_path):
    """Unsigned and not allowed: refused, nothing written, the old DEST untouched."""
    siffs("push", sif_image, f"oras://{plain.host}/tools/unsigned:1", env=home, check=True)
    dest = tmp_path / "out" / "keep.sif"
    dest.parent.mkdir()
    dest.write_bytes(b"the previous version")
    refused = siffs("pull", "--force", dest, f"oras://{plain.host}/tools/unsigned:1", env=home)
    assert refused.returncode == ExitCode.NOT_TRUSTED, refused.stderr
    assert refused.stderr.count("\n") == 1
    assert dest.read_bytes() == b"the previous version"
    assert [p.name for p in dest.parent.iterdir()] == ["keep.sif"]


def test_pull_of_a_signed_image_verifies_it(plain, sif_image, home, tmp_path):
    from tests.integrity.conftest import key_path  # noqa: PLC0415

    signed = tmp_path / "signed.sif"
    shutil.copyfile(sif_image, signed)
    siffs("sign", signed, "--key", key_path("ed25519", "private"), env=home, check=True)
    siffs("key", "import", key_path("ed25519", "public"), env=home, check=True)
    siffs("push", signed, f"oras://{plain.host}/tools/signed:1", env=home, check=True)
    out = tmp_path / "out.sif"
    pulled = siffs("pull", out, f"oras://{plain.host}/tools/signed:1", env=home, check=True)
    assert "verified: signed by " in pulled.stdout
    assert out.read_bytes() == signed.read_bytes()


def test_a_corrupted_blob_on_the_registry_is_caught(plain, sif_image, home, tmp_path):
    unique = tmp_path / "unique.sif"
    shutil.copyfile(sif_image, unique)
    with unique.open("ab") as f:
        f.write(b"\0" * 17)  # a blob no other test pushes (SIF readers ignore trailing bytes)
    siffs("push", unique, f"oras://{plain.host}/tools/corrupt:1", env=home, check=True)
    data = plain.blob_data("sha256:" + hashlib.sha256(unique.read_bytes()).hexdigest())
    raw = bytearray(data.read_bytes())
    raw[4000] ^= 1
    data.write_bytes(raw)
    out = tmp_path / "out.sif"
    failed = siffs("pull", "--allow-unsigned", out, f"oras://{plain.host}/tools/corrupt:1", env=home)
    assert failed.returncode == ExitCode.DIGEST_MISMATCH
    assert "(corrupt download or registry); nothing was written" in failed.stderr
    assert not out.exists() and failed.stderr.count("\n") == 1


def test_a_partial_download_resumes_from_the_cache(plain, sif_image, home, tmp_path):
    siffs("push", sif_image, f"oras://{plain.host}/tools/resume:1", env=home, check=True)
    hexdigest = hashlib.sha256(sif_image.read_bytes()).hexdigest()
    partial = tmp_path / "XDG_CACHE_HOME" / "siffs" / "registry" / "blobs" / "sha256" / "tmp"
    partial.mkdir(parents=True)
    (partial / f"{hexdigest}.part").write_bytes(sif_image.read_bytes()[:5000])
    out = tmp_path / "out.sif"
    siffs("pull", "--allow-unsigned", out, f"oras://{plain.host}/tools/resume:1", env=home, check=True)
    assert out.read_bytes() == sif_image.read_bytes()
    listed = json.loads(siffs("cache", "list", "--json", env=home, check=True).stdout)
    assert next(c for c in listed if c["name"] == "registry")["files"] == 1


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (2, "ORAS SIF image should have a single layer, found 2"),
        (TAR, f"invalid layer mediatype: {TAR}"),
    ],
)
def test_artifacts_apptainer_refuses_are_refused(plain, sif_image, home, tmp_path, layers, message):
    ref = parse(f"oras://{plain.host}/tools/odd:{'two' if layers == 2 else 'type'}")
    session = Session(plain.host, local=True)
    try:
        oras.push(session, sif_image, ref, now=NOW)
        body = json.loads(_manifest(plain.host, "tools/odd", ref.ref)[0])
        if layers == 2:
            body["layers"] = body["layers"] * 2
        else:
            body["layers"][0]["mediaType"] = layers
        put = session.request(
            "PUT", f"/v2/tools/odd/manifests/{ref.ref}", scope="", body=json.dumps(body).encode(),
            headers={"Content-Type": oras.MANIFEST_TYPE}, ok=frozenset({201}),
        )  # fmt: skip
        put.raw.read()
    finally:
        session.close()
    failed = siffs("pull", "--allow-unsigned", tmp_path / "x.sif", f"oras://{ref}", env=home)
    assert failed.returncode == ExitCode.UNSUPPORTED and message in failed.stderr


def test_unknown_tag_and_bad_references(plain, home, tmp_path):
    missing = siffs(
        "pull", "--allow-unsigned", tmp_path / "x.sif", f"oras://{plain.host}/no/such:tag", env=home
    )
    assert missing.returncode == ExitCode.NOT_FOUND
    assert missing.stderr == f"siffs: {plain.host}/no/such:tag not found\n"
    bad = siffs("pull", tmp_path / "x.sif", f"oras://{plain.host}/Upper/case:1", env=home)
    assert bad.returncode == ExitCode.USAGE and "repository must match" in bad.stderr
    bad_tag = siffs("push", "x.sif", f"oras://{plain.host}/a/b:t@g", env=home)
    assert bad_tag.returncode == ExitCode.USAGE


def test_nothing_listens(home, tmp_path):
    from tests.support.registry import free_port  # noqa: PLC0415

    failed = siffs("pull", "--allow-unsigned", tmp_path / "x.sif", f"oras://127.0.0.1:{free_port()}/a/b:1",
                   env=home, timeout=120)  # fmt: skip
    assert failed.returncode == ExitCode.NETWORK and "cannot connect to 127.0.0.1:" in failed.stderr


def test_manifest_readable_by_plain_http(plain, sif_image):
    """The static server behind the redirect really serves the blob (the redirect is real)."""
    siffs("push", sif_image, f"oras://{plain.host}/tools/static:1", check=True)
    body = json.loads(_manifest(plain.host, "tools/static", "1")[0])
    digest = body["layers"][0]["digest"]
    assert get(f"http://{plain.host}/v2/tools/static/blobs/{digest}") == sif_image.read_bytes()


@pytest.mark.parametrize("no_splice", ["", "1"], ids=["splice", "pipeline"])
def test_a_full_disk_is_a_local_error_and_leaves_nothing(plain, sif_image, home, tmp_path, no_splice):
    """The blob is written by a thread of its own or spliced; its ENOSPC is reported as such, not as
    the network's."""
    require_root()
    home = {**home, "SIFFS_NO_SPLICE": no_splice}
    size_kib = sif_image.stat().st_size // 1024
    target = f"oras://{plain.host}/tools/fulldisk:1"
    siffs("push", sif_image, target, env=home, check=True)
    small = tmp_path / "small"
    done = pull_on_small_disk(small, size_kib // 2, ["--disable-cache", "--allow-unsigned"], target, home)
    assert done.stdout == f"rc={ExitCode.IO.value}\n", done.stdout + done.stderr
    assert done.stderr.startswith(f"siffs: no space left on {small}/.x.sif.siffs-"), done.stderr
    assert done.stderr.count("\n") == 1
