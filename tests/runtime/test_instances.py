"""``siffs instance start|list|stop`` and ``instance://NAME`` as the test user."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.runtime.conftest import add_file
from tests.support.images import mksquashfs, wrap_sif

START = "#!/bin/sh\necho started > /tmp/marker\nexec sleep 4321\n"


@pytest.fixture(scope="module")
def served(variant) -> Path:
    return variant("startscript", lambda root: add_file(root, "/.singularity.d/startscript", START))


def _processes(word: str) -> list[int]:
    done = subprocess.run(
        ["pgrep", "-u", "siffs-test", "-f", word], capture_output=True, text=True, check=False
    )
    return [int(p) for p in done.stdout.split()]


def _wait_gone(word: str) -> bool:
    deadline = time.monotonic() + 15
    while _processes(word) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _processes(word)


def test_instance_lifecycle(siffs, served, user_env):
    started = siffs("instance", "start", "--contain", served, "one", env=user_env)
    assert started.returncode == 0, started.stderr
    assert "instance one started successfully" in started.stderr
    try:
        listing = siffs("instance", "list", env=user_env).stdout.splitlines()
        assert listing[0].split() == ["INSTANCE", "NAME", "PID", "IP", "IMAGE"]
        assert listing[1].split()[0] == "one" and listing[1].split()[-1] == str(served)
        document = json.loads(siffs("instance", "list", "--json", env=user_env).stdout)
        assert [i["instance"] for i in document["instances"]] == ["one"]
        # The joiner shares the instance's private /tmp and PID namespace (the start script's sleep).
        inside = siffs("exec", "instance://one", "/bin/sh", "-c", "cat /tmp/marker; ps -o args", env=user_env)
        assert inside.returncode == 0, inside.stderr
        assert inside.stdout.splitlines()[0] == "started"
        assert "sleep 4321" in inside.stdout
        assert not Path("/tmp/marker").exists()  # the instance's /tmp is its own (--contain)
        assert siffs("run", "instance://one", "x", env=user_env).stdout.splitlines()[-1] == "arguments: x"
        again = siffs("instance", "start", "--contain", served, "one", env=user_env)
        assert again.returncode != 0 and "already exists" in again.stderr
    finally:
        stopped = siffs("instance", "stop", "one", env=user_env)
    assert stopped.returncode == 0, stopped.stderr
    assert _wait_gone("sleep 4321")
    assert siffs("instance", "list", env=user_env).stdout.splitlines()[1:] == []
    missing = siffs("exec", "instance://one", "true", env=user_env)
    assert missing.returncode == 255 and "no instance named 'one'" in missing.stderr


def test_instance_of_a_sif_keeps_it_mounted_until_stopped(siffs, served, work, user_env):
    sif = wrap_sif(mksquashfs(served, work / "instance.squashfs", "-all-root"), work / "instance.sif")
    os.chmod(sif, 0o644)
    started = siffs("instance", "start", "--contain", "--allow-unsigned", sif, "two", env=user_env)
    assert started.returncode == 0, started.stderr

    def mounts() -> list[str]:
        with open("/proc/self/mountinfo") as f:
            return [line for line in f if user_env["XDG_RUNTIME_DIR"] in line and "fuse.siffs" in line]

    try:
        assert len(mounts()) == 1  # the start command has returned: the supervisor holds it
        assert siffs("exec", "instance://two", "cat", "/tmp/marker", env=user_env).stdout == "started\n"
    finally:
        assert siffs("instance", "stop", "two", env=user_env).returncode == 0
    deadline = time.monotonic() + 15
    while mounts() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mounts() == []


#: siffs with the container's root built half a second late: what a loaded machine or a slow image does.
SLOW_BUILD = """
import sys, time
from runtime import rootfs
from siffs.cli.main import main
build = rootfs.build
rootfs.build = lambda layout: (time.sleep(0.5), build(layout))[1]
sys.exit(main(sys.argv[1:]))
"""


def test_start_returns_once_the_container_can_be_joined(siffs, served, user_env):
    """`instance start` returns when the container's root is built, so a join at once enters it.
    It used to return at the fork: an `exec instance://` quick enough found the holder still in
    the host's namespaces, joined none, and ran on the host's files."""
    command = siffs.command("instance", "start", "--contain", served, "four", env=user_env)
    at = command.index("-m")
    command[at : at + 2] = ["-c", SLOW_BUILD]
    started = subprocess.run(command, capture_output=True, cwd=siffs.cwd, timeout=60, check=False)
    assert started.returncode == 0, started.stderr
    try:
        record = json.loads((Path(user_env["XDG_RUNTIME_DIR"]) / "siffs/instances/four.json").read_text())
        assert os.path.isfile(f"/proc/{record['pid']}/root/.singularity.d/startscript")
        assert os.readlink(f"/proc/{record['pid']}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    finally:
        assert siffs("instance", "stop", "four", env=user_env).returncode == 0


def test_dead_instances_leave_the_list(siffs, served, user_env):
    assert siffs("instance", "start", "--contain", served, "three", env=user_env).returncode == 0
    record = json.loads((Path(user_env["XDG_RUNTIME_DIR"]) / "siffs/instances/three.json").read_text())
    os.kill(record["supervisor"], signal.SIGKILL)  # the container dies with its supervisor
    assert _wait_gone("sleep 4321")
    assert siffs("instance", "list", env=user_env).stdout.splitlines()[1:] == []
    assert not (Path(user_env["XDG_RUNTIME_DIR"]) / "siffs/instances/three.json").exists()


def test_stop_needs_a_name_or_all(siffs, user_env):
    assert siffs("instance", "stop", env=user_env).returncode != 0
    result = siffs("instance", "stop", "nope", env=user_env)
    assert result.returncode != 0 and "no instance named 'nope'" in result.stderr


def test_list_json_fields_and_stats_refusal(siffs, served, user_env):
    """Apptainer's JSON fields in its order; stats needs a cgroup of the instance's own: one clear refusal."""
    missing = siffs("instance", "stats", "nothing-here", env=user_env)
    assert missing.returncode == 5 and "no instance named 'nothing-here'" in missing.stderr
    assert siffs("instance", "start", "--contain", served, "stats-one", env=user_env).returncode == 0
    try:
        document = json.loads(siffs("instance", "list", "--json", env=user_env).stdout)
        entry = next(i for i in document["instances"] if i["instance"] == "stats-one")
        assert list(entry) == ["instance", "pid", "img", "ip", "logErrPath", "logOutPath"]
        assert entry["ip"] == "" and entry["img"] == str(served)
        stats = siffs("instance", "stats", "--json", "stats-one", env=user_env)
        assert stats.returncode == 10
        assert stats.stderr.count("\n") == 1 and "has no cgroup of its own" in stats.stderr
    finally:
        assert siffs("instance", "stop", "stats-one", env=user_env).returncode == 0
