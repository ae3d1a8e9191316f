"""The error rows of spec registry.md §8 that a real registry does not show on demand: one line each."""

from __future__ import annotations

import json

import pytest

from siffs.cli.exitcodes import ExitCode
from tests.support.mounts import as_at_a_terminal, siffs
from tests.support.registry import scripted_registry

OCI = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
INDEX = {"Content-Type": "application/vnd.oci.image.index.v1+json"}
NOW = {"Retry-After": "0"}
DIGEST = "sha256:" + "ab" * 32


def _index(*platforms: dict[str, str]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX["Content-Type"], "manifests": [
        {"mediaType": OCI["Content-Type"], "digest": DIGEST, "size": 10, "platform": p} for p in platforms
    ]}).encode()  # fmt: skip


SIF_MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": OCI["Content-Type"],
    "config": {"mediaType": "application/vnd.sylabs.sif.config.v1+json", "digest": DIGEST, "size": 2},
    "layers": [{"mediaType": "application/vnd.sylabs.sif.layer.v1.sif", "digest": DIGEST, "size": 5}],
}).encode()  # fmt: skip
M = "/v2/a/b/manifests/1"
SCHEMA1 = {"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"}
ARM_ONLY = _index(
    {"os": "linux", "architecture": "arm64", "variant": "v8"}, {"os": "unknown", "architecture": "unknown"}
)
UNKNOWN = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}'

CASES = {
    "403": ({M: (403, {}, b'{"errors":[{"code":"DENIED","message":"no"}]}')}, ExitCode.AUTH_FAILED,
            "{host}: access to a/b denied (403)"),
    "429": ({M: (429, NOW, b"")}, ExitCode.NETWORK, "{host}: rate limited (429), retry after 0 s"),
    "503": ({M: (503, NOW, b"")}, ExitCode.NETWORK, "{host}: server error 503 on GET " + M + " (3 attempts)"),
    "schema1": ({M: (200, SCHEMA1, b'{"schemaVersion":1}')}, ExitCode.UNSUPPORTED,
                "{host}/a/b:1 uses Docker schema 1, which is not supported"),
    "platform": ({M: (200, INDEX, ARM_ONLY)}, ExitCode.NOT_FOUND,
                 "no linux/amd64 image in the index (has: linux/arm64/v8, unknown/unknown)"),
    "blob": ({M: (200, OCI, SIF_MANIFEST)}, ExitCode.NOT_FOUND,
             f"{{host}}/a/b: blob {DIGEST} missing on the registry (broken image)"),
    "notfound": ({M: (404, {}, UNKNOWN)}, ExitCode.NOT_FOUND, "{host}/a/b:1 not found"),
}  # fmt: skip


#: Every row for both schemes, but "blob" for oras:// only: its manifest is a SIF artifact's, which
#: a docker:// pull refuses before fetching any blob.
ROWS = [
    (case, scheme)
    for case in sorted(CASES)
    for scheme in ("oras", "docker")
    if (case, scheme) != ("blob", "docker")
]


@pytest.mark.parametrize(("case", "scheme"), ROWS)
def test_error_rows(case, scheme, home, tmp_path):
    routes, code, message = CASES[case]
    routes = {"/v2/": (200, {}, b"{}"), **routes}
    with scripted_registry(routes) as (host, _):
        failed = siffs("pull", "--allow-unsigned", tmp_path / "x.sif", f"{scheme}://{host}/a/b:1", env=home,
                       timeout=120)  # fmt: skip
    assert failed.returncode == code, failed.stderr
    assert failed.stderr == f"siffs: {message.format(host=host)}\n"
    assert not (tmp_path / "x.sif").exists()


@pytest.mark.parametrize("no_splice", ["", "1"], ids=["splice", "pipeline"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_interrupted_pull_leaves_nothing(sig, home, tmp_path, no_splice):
    """Killed mid-download (spliced, or through the pipeline): exit 130, the old file untouched, no
    temporary file beside it."""
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import time  # noqa: PLC0415

    stalled = (200, {"X-Stall": "30"}, b"SIF_MAGIC" + bytes(4000))
    routes = {"/v2/": (200, {}, b"{}"), M: (200, OCI, SIF_MANIFEST), f"/v2/a/b/blobs/{DIGEST}": stalled}
    out = tmp_path / "dest" / "x.sif"
    out.parent.mkdir()
    out.write_bytes(b"previous")
    with scripted_registry(routes) as (host, seen):
        argv = [
            sys.executable,
            "-m",
            "siffs",
            "pull",
            "--force",
            "--allow-unsigned",
            out,
            f"oras://{host}/a/b:1",
        ]
        env = {**home, "SIFFS_NO_SPLICE": no_splice}
        proc = subprocess.Popen(as_at_a_terminal(argv), env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not any("blobs" in line for line in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert err == "siffs: interrupted\n"
    assert out.read_bytes() == b"previous" and [p.name for p in out.parent.iterdir()] == ["x.sif"]
