"""``siffs bundle`` run by rootless runc, ``siffs inspect``, and the bad-input cases of issue 7 item 8."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.support.users import TEST_USER, user_dir


def test_runc_runs_a_bundle(siffs, tree, work):
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed: run the README's test set-up command")
    bundle = work / "bundle"
    result = siffs("bundle", "--env", "GREETING=from-bundle", tree, bundle, "x", "y z")
    assert result.returncode == 0, result.stderr
    config = json.loads((bundle / "config.json").read_text())
    assert config["root"] == {"path": str(tree), "readonly": True}
    assert config["linux"]["uidMappings"][0]["hostID"] == int(
        subprocess.check_output(["id", "-u", TEST_USER])
    )
    state = user_dir(work, "runc-state")
    run = subprocess.run(
        ["runuser", "-u", TEST_USER, "--", "runc", "--root", state, "run", "-b", bundle, "siffs-bundle-test"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "GREETING=from-bundle" in lines  # sourced by the image's own shell, override after 99-base.sh
    assert lines[-1] == "arguments: x y z"


def test_bundle_env_and_refusals(siffs, tree, work):
    bundle = work / "bundle-env"
    assert siffs("bundle", "--env", "FOO=b", tree, bundle).returncode == 0
    script = json.loads((bundle / "config.json").read_text())["process"]["args"][2]
    assert 'export FOO="b"' in script
    missing = siffs("bundle", "-B", f"{work}:/not/there", tree, bundle)
    assert missing.returncode == 2
    assert "runc cannot create bind destinations in a read-only tree: /not/there" in missing.stderr
    no_init = siffs("bundle", "--init", tree, bundle)
    assert no_init.returncode == 2 and "no tini or dumb-init" in no_init.stderr


def test_inspect(siffs, tree):
    assert "org.opencontainers.image.title: siffs example (busybox)" in siffs("inspect", tree).stdout
    labels = json.loads(siffs("inspect", "--json", tree).stdout)
    assert labels["data"]["attributes"]["labels"]["MAINTAINER"] == "siffs"
    assert siffs("inspect", "--runscript", tree).stdout.startswith('#!/bin/sh\necho "Hello')
    environment = siffs("inspect", "--environment", tree).stdout
    assert environment.index("=== /.singularity.d/env/10-docker") < environment.index(
        "=== /.singularity.d/env/90"
    )
    assert siffs("inspect", "--deffile", tree).stdout.startswith("Bootstrap: scratch")


def test_inspect_never_follows_links_out_of_the_tree(siffs, variant):
    def hostile(root):
        (root / ".singularity.d/runscript").unlink()
        (root / ".singularity.d/runscript").symlink_to("/etc/hostname")  # absolute: read inside the tree

    result = siffs("inspect", "--runscript", variant("hostile-links", hostile))
    assert result.returncode == 5
    assert "the image has no runscript" in result.stderr


def test_missing_target(siffs, work):
    for action in (["run"], ["exec"], ["shell"]):
        result = siffs(*action, work / "nothing-here", "true")
        assert result.returncode == 255
        assert result.stderr == f"FATAL: {work / 'nothing-here'} does not exist\n"


def test_sif_file_target(siffs, tree, work):
    """A damaged SIF given to run: Apptainer's exit code and one FATAL line naming the problem."""
    sif = work / "image.sif"
    sif.write_bytes(b"not really a SIF")
    result = siffs("run", sif)
    assert result.returncode == 255
    assert result.stderr == f"FATAL: {sif}: truncated header: the file has 16 bytes, a SIF header needs 128\n"


def test_user_namespaces_disabled(siffs, tree):
    """max_user_namespaces=0 in a namespace of our own (never on the host: other tests run)."""
    inner = " ".join(f"'{arg}'" for arg in siffs.command("exec", tree, "true")[4:])
    script = f"echo 0 > /proc/sys/user/max_user_namespaces && exec {inner}"
    result = subprocess.run(
        ["runuser", "-u", TEST_USER, "--", "unshare", "-Ur", "sh", "-c", script],
        capture_output=True, text=True, timeout=60, check=False, cwd=str(tree),
    )  # fmt: skip
    assert result.returncode == 255
    assert result.stderr.startswith("FATAL: unprivileged user namespaces are disabled on this host ")
    assert "user.max_user_namespaces = 0" in result.stderr
    assert "sysctl -w user.max_user_namespaces=" in result.stderr
    assert os.path.exists(tree)
