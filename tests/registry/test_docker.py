"""``siffs pull docker://`` against a real registry: the tree equals umoci's, metadata as Apptainer's."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from siffs.cli.exitcodes import ExitCode
from siffs.registry.http import Session
from siffs.sif import Image
from tests.support import ociimage
from tests.support.mounts import require_root, siffs
from tests.support.registry import pull_on_small_disk
from tests.support.squashfs_corpus import kernel_mount
from tests.support.trees import snapshot
from tests.support.users import TEST_USER, ensure_user, user_dir

#: What siffs adds for the runtime (§5.5), and /etc/hosts, which it empties (a bind target):
#: left out when comparing the layers' tree with umoci's.
ADDED = {"/.singularity.d", "/singularity", "/.run", "/.exec", "/.test", "/.shell", "/environment",
         "/etc/resolv.conf", "/proc", "/root", "/sys", "/var", "/tmp", "/etc/hosts"}  # fmt: skip


def push(registry: str, repository: str, tag: str, image: ociimage.Image) -> None:
    """Blobs and manifest with siffs' own HTTP client, so the bytes (and digests) stay exact."""
    session = Session(registry, local=True)
    try:
        for digest, data in image.blobs.items():
            opened = session.request("POST", f"/v2/{repository}/blobs/uploads/", scope="", body=b"",
                                     ok=frozenset({202}))  # fmt: skip
            opened.raw.read()
            location = opened.header("Location") or ""
            done = session.request(
                "PUT", f"{location}&digest={digest}", scope="", body=data, ok=frozenset({201})
            )
            done.raw.read()
        put = session.request("PUT", f"/v2/{repository}/manifests/{tag}", scope="", body=image.manifest,
                              headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                              ok=frozenset({201}))  # fmt: skip
        put.raw.read()
    finally:
        session.close()


@pytest.fixture(scope="module")
def pulled(plain, tmp_path_factory) -> tuple[Path, ociimage.Image, dict[str, str]]:
    """The mixed-compression image pulled by the unprivileged test user."""
    image = ociimage.build()
    push(plain.host, "test/image", "mixed", image)
    ensure_user()
    work = Path(user_dir(tmp_path_factory.mktemp("docker-pull"), "user"))
    env = {"PATH": os.environ["PATH"], "HOME": str(work), "LANG": "C.UTF-8"}
    out = work / "image.sif"
    result = siffs(
        "pull", out, f"docker://{plain.host}/test/image:mixed", user=TEST_USER, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return out, image, env


def _tree(mnt: Path) -> dict[str, dict[str, object]]:
    """Types, modes, contents, link targets, file mtimes and user xattrs, keyed by path."""
    snap = snapshot(mnt)
    out = {}
    for path, facts in snap["entries"].items():
        if path == "/" or any(path == a or path.startswith(a + "/") for a in ADDED):
            continue
        mode = facts["mode"]
        xattrs = facts["xattrs"] if isinstance(facts["xattrs"], dict) else {}
        user = {k: v for k, v in xattrs.items() if k.startswith("user.") and k != "user.rootlesscontainers"}
        kept = {"mode": oct(mode), "target": facts.get("target"), "sha256": facts.get("sha256"),
                "xattrs": user, "mtime": None if stat.S_ISDIR(mode) else facts["mtime"]}  # fmt: skip
        out[path] = kept
    groups = [g for g in snap["hard_links"] if not any(p.startswith(a) for p in g for a in ADDED)]
    out["hard links"] = {"groups": groups}  # type: ignore[assignment]
    return out


def test_tree_equals_umoci_rootless_unpack(pulled, tmp_path):
    require_root()
    out, _, _ = pulled
    with Image.open(out) as sif:
        part = sif.primary_partition()
        offset = part.offset
    with kernel_mount(out, tmp_path / "k", offset) as mnt:
        ours = _tree(mnt)
    # umoci 0.4.7 reads gzip and plain layers only: the same content, all gzip, as an OCI layout.
    layout = Path(user_dir(tmp_path, "layout-parent")) / "layout"
    ociimage.oci_layout(ociimage.build(("gzip", "gzip", "gzip")), layout, "gzip")
    subprocess.run(["chown", "-R", TEST_USER, layout], check=True)
    bundle = Path(user_dir(tmp_path, "bundle-parent")) / "bundle"
    umoci = ["umoci", "unpack", "--rootless", "--image", f"{layout}:gzip", str(bundle)]
    subprocess.run(["runuser", "-u", TEST_USER, "--", *umoci], check=True, capture_output=True)
    theirs = _tree(bundle / "rootfs")
    assert sorted(ours) == sorted(theirs)
    for path in theirs:
        assert ours[path] == theirs[path], path
    assert len(theirs) - 1 == 41 - 1  # spec §7.2's 41 entries, less /etc/hosts (the root is not listed)


def test_what_the_layers_leave(pulled, tmp_path):
    """Spot checks of the rules, through siffs' own reader (no root needed)."""
    out, _, env = pulled
    listing = siffs("ls", "-l", out, "/perm", env=env, user=TEST_USER, check=True).stdout
    assert "locked" not in listing and "secret" in listing
    assert (
        siffs("cat", out, "/perm/secret", env=env, user=TEST_USER, check=True).stdout == "secret\n"
    )  # mode 0000
    assert siffs("cat", out, "/data/keep-hl", env=env, user=TEST_USER, check=True).stdout == "keep v1\n"
    assert siffs("cat", out, "/data/keep.txt", env=env, user=TEST_USER, check=True).stdout == "keep v3\n"
    assert siffs("ls", out, "/opq", env=env, user=TEST_USER, check=True).stdout.split() == ["new.txt"]
    assert siffs("ls", out, "/opq2", env=env, user=TEST_USER, check=True).stdout.split() == ["fresh.txt"]


def test_metadata_as_apptainer_writes_it(pulled):
    out, image, env = pulled
    run = siffs(
        "cat", out, "/.singularity.d/env/10-docker2singularity.sh", env=env, user=TEST_USER, check=True
    )
    assert 'export FOO="${FOO:-"bar baz"}"' in run.stdout and "1BAD" not in run.stdout
    assert 'export QUOTE="${QUOTE:-"it\'s \\"q\\" \\$HOME \\`x\\` \\\\ end"}"' in run.stdout
    labels = json.loads(
        siffs("cat", out, "/.singularity.d/labels.json", env=env, user=TEST_USER, check=True).stdout
    )
    assert labels["org.example.html"] == "<b>&amp;</b>" and labels[
        "org.opencontainers.image.base.digest"
    ] == (image.manifest_digest)
    with Image.open(out) as sif:
        names = [(d.data_type, d.name) for d in sif.descriptors]
    assert [n for _, n in names[:3]] == [b"", b"inspect-metadata.json", b"oci-config.json"]
    assert siffs("verify", out, env=env, user=TEST_USER).returncode == 0  # signed with the user's local key


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), '[a b][it\'s][$HOME][`x`][back\\slash]["q"][*]'),
        (("u v", "$HOME", "it's"), "[u v][/root][it's]"),
    ],
)
def test_runscript_runs_entrypoint_and_cmd(pulled, args, expected):
    """Run the converted runscript with busybox sh, as the runtime would (eval mode)."""
    out, _, env = pulled
    script = siffs("cat", out, "/.singularity.d/runscript", env=env, user=TEST_USER, check=True).stdout
    done = subprocess.run(["busybox", "sh", "-c", script, "runscript", *args], capture_output=True, text=True,
                          env={"PATH": "/bin:/usr/bin", "HOME": "/root"}, check=False)  # fmt: skip
    assert done.stdout == expected, done.stderr


def test_not_a_container_image(plain, sif_image, home, tmp_path):
    siffs("push", sif_image, f"oras://{plain.host}/test/sifonly:1", env=home, check=True)
    failed = siffs("pull", tmp_path / "x.sif", f"docker://{plain.host}/test/sifonly:1", env=home)
    assert failed.returncode == ExitCode.UNSUPPORTED and "use oras://" in failed.stderr


def test_a_layer_that_lies_about_its_content(plain, home, tmp_path):
    image = ociimage.build()
    config = json.loads(image.config)
    config["rootfs"]["diff_ids"][1] = "sha256:" + "0" * 64
    bad_config = json.dumps(config).encode()
    manifest = json.loads(image.manifest)
    old = manifest["config"]["digest"]
    import hashlib  # noqa: PLC0415

    new = "sha256:" + hashlib.sha256(bad_config).hexdigest()
    manifest["config"].update(digest=new, size=len(bad_config))
    blobs = {k: v for k, v in image.blobs.items() if k != old} | {new: bad_config}
    push(plain.host, "test/liar", "1", ociimage.Image(blobs, json.dumps(manifest).encode(), bad_config))
    out = tmp_path / "x.sif"
    failed = siffs("pull", out, f"docker://{plain.host}/test/liar:1", env=home)
    assert failed.returncode == ExitCode.DIGEST_MISMATCH
    assert "layer 2 of" in failed.stderr and "does not match its config diff_id" in failed.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".x.sif")]
    shutil.rmtree(tmp_path / "HOME", ignore_errors=True)


def test_runscript_without_evaluation(pulled):
    out, _, user_env = pulled
    script = siffs("cat", out, "/.singularity.d/runscript", env=user_env, user=TEST_USER, check=True).stdout
    env = {"PATH": "/bin", "HOME": "/root", "SINGULARITY_NO_EVAL": "1"}
    argv = ["busybox", "sh", "-c", script, "runscript", "u v", "$HOME"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert done.stdout == "[u v][$HOME]", done.stderr


def test_the_converted_image_runs_without_allow_unsigned(pulled):
    """Signed with the user's local build key: the default trust policy takes it."""
    out, _, env = pulled
    run = siffs("run", out, "x y", env=env, user=TEST_USER, timeout=120)
    assert (run.returncode, run.stdout) == (0, "[x y]"), run.stderr
    printed = siffs(
        "exec", out, "sh", "-c", 'echo "$FOO|$MULTI|$EMPTY"', env=env, user=TEST_USER, timeout=120
    )
    assert printed.stdout == "bar baz|a=b=c|\n", printed.stderr


def test_too_little_disk_is_said_before_the_work(plain, home, tmp_path):
    """A 512 KiB tmpfs as the destination (in a private mount namespace): one line, nothing left."""
    require_root()
    push(plain.host, "test/image", "small-disk", ociimage.build())
    small = tmp_path / "small"
    done = pull_on_small_disk(small, 512, [], f"docker://{plain.host}/test/image:small-disk", home)
    assert done.stdout == f"rc={ExitCode.IO.value}\n", done.stdout + done.stderr
    assert done.stderr.startswith(f"siffs: no space left on {small}/.x.sif.siffs-")
    assert done.stderr.count("\n") == 1 and "MiB more" in done.stderr


def test_run_and_inspect_a_docker_reference(plain, tmp_path):
    """``siffs run docker://…`` pulls into the cache once, then reuses it while the manifest is the same."""
    push(plain.host, "test/image", "run", ociimage.build())
    ensure_user()
    home = Path(user_dir(tmp_path, "home"))
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "XDG_CACHE_HOME": str(home / ".cache"),
           "XDG_CONFIG_HOME": str(home / ".config")}  # fmt: skip
    ref = f"docker://{plain.host}/test/image:run"
    first = siffs("run", ref, "hello", env=env, user=TEST_USER, timeout=300)
    assert (first.returncode, first.stdout) == (0, "[hello]"), first.stderr
    cached = list((home / ".cache" / "siffs" / "registry" / "sif").iterdir())
    assert len(cached) == 1
    again = siffs("exec", ref, "busybox", "cat", "/etc/added", env=env, user=TEST_USER, timeout=120)
    assert (again.returncode, again.stdout) == (0, "added\n"), again.stderr
    assert list((home / ".cache" / "siffs" / "registry" / "sif").iterdir()) == cached
    labels = siffs("inspect", ref, env=env, user=TEST_USER, check=True).stdout
    assert "org.opencontainers.image.base.name: " in labels
