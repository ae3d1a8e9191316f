"""runtime.md §3-§5 as the test user: actions, exit statuses, signals, binds, --contain, identity."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.runtime.conftest import add_file
from tests.support.users import TEST_USER


def test_run_passes_arguments_to_the_runscript(siffs, tree):
    result = siffs("run", tree, "a b", "c")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "arguments: a b c"
    assert "GREETING=hello from %environment" in result.stdout


@pytest.mark.parametrize("status", [0, 1, 3, 125])
def test_exit_status_is_the_commands(siffs, tree, status):
    assert siffs("exec", tree, "/bin/sh", "-c", f"exit {status}").returncode == status


def test_death_by_signal_is_128_plus_n(siffs, tree):
    assert siffs("exec", tree, "/bin/sh", "-c", "kill -TERM $$").returncode == 143
    assert siffs("exec", "--pid", tree, "/bin/sh", "-c", "kill -USR1 $$").returncode == 128 + signal.SIGUSR1


@pytest.mark.parametrize("options", [[], ["--containall"]], ids=["no-pid-ns", "pid-ns-init"])
def test_sigterm_to_the_runtime_reaches_the_command(siffs, tree, options):
    """The caller signals the process it started; the command must get it (PID 1 ignores it otherwise)."""
    runtime = subprocess.Popen(
        siffs.command("exec", *options, tree, "/bin/sh", "-c", "echo started; sleep 30 & wait"),
        stdout=subprocess.PIPE,
    )
    assert runtime.stdout is not None
    assert runtime.stdout.readline() == b"started\n"
    # runuser only waits for its child: signal the siffs process itself, as a batch system does.
    target = _child_of(runtime.pid)
    os.kill(target, signal.SIGTERM)
    assert runtime.wait(timeout=10) == 143


def _child_of(pid: int) -> int:
    for _ in range(100):
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("runuser has no child")


def test_nothing_survives_a_killed_supervisor(siffs, tree):
    """SIGKILL to the PID-namespace parent takes the whole container with it."""
    runtime = subprocess.Popen(
        siffs.command("exec", "--pid", tree, "/bin/sh", "-c", "echo started; exec sleep 987"),
        stdout=subprocess.PIPE,
    )
    assert runtime.stdout is not None and runtime.stdout.readline() == b"started\n"
    os.kill(_child_of(runtime.pid), signal.SIGKILL)
    runtime.wait(timeout=10)
    deadline = time.monotonic() + 5
    while _processes("sleep 987") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes("sleep 987")


def _processes(cmdline: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().replace(b"\0", b" ").strip() == cmdline.encode():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def test_no_mount_is_left_on_the_host(siffs, tree):
    before = Path("/proc/self/mountinfo").read_text()
    assert siffs("exec", "-B", "/etc:/new/etc", tree, "true").returncode == 0
    assert Path("/proc/self/mountinfo").read_text() == before


def test_command_not_found_is_255_with_one_line(siffs, tree):
    result = siffs("exec", tree, "no-such-command")
    assert result.returncode == 255
    assert result.stderr == 'FATAL: "no-such-command": executable file not found in $PATH\n'


def test_exec_failures_are_explained(siffs, variant):
    def odd_files(root):
        add_file(root, "/bin/not-executable", "#!/bin/sh\n", 0o644)
        add_file(root, "/bin/no-shebang", "echo ran by sh $1\n")
        add_file(root, "/bin/needs-python", "#!/usr/bin/python3\n")
        arm = bytearray((root / "bin/busybox").read_bytes()[:4096])
        arm[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
        add_file(root, "/bin/arm-program", bytes(arm))

    root = variant("odd-files", odd_files)
    assert siffs("exec", root, "no-shebang", "x").stdout == "ran by sh x\n"  # ENOEXEC: retried with /bin/sh
    cases = {
        "not-executable": "permission denied",
        "needs-python": "its interpreter /usr/bin/python3 is missing",
        "arm-program": "the image is arm64, this host is amd64",
    }
    for program, message in cases.items():
        result = siffs("exec", root, program)
        assert result.returncode == 255
        assert message in result.stderr


def test_run_without_runscript_uses_sh(siffs, variant):
    def no_runscript(root):
        (root / ".singularity.d/runscript").unlink()
        (root / "singularity").unlink()

    result = siffs("run", variant("no-runscript", no_runscript), "-c", "echo via sh")
    assert result.returncode == 0
    assert result.stdout == "via sh\n"
    assert "No runscript found, executing /bin/sh" in result.stderr


def test_test_action(siffs, tree, variant):
    assert siffs("test", tree).returncode == 4
    no_test = variant("no-test", lambda root: (root / ".singularity.d/test").unlink())
    assert siffs("test", no_test).returncode == 0


def test_identity_inside(siffs, tree):
    result = siffs(
        "exec", tree, "/bin/sh", "-c", "id -u; id -un; id -gn; grep siffs-test /etc/passwd; echo $HOME"
    )
    uid = str(pwd.getpwnam(TEST_USER).pw_uid)
    lines = result.stdout.splitlines()
    assert lines[1:3] == [TEST_USER, TEST_USER]
    assert lines[3].endswith(":/home/siffs-test:/bin/sh")
    assert lines[4] == "/home/siffs-test"
    assert lines[0] == uid


def test_tree_is_read_only(siffs, tree):
    result = siffs("exec", tree, "touch", "/new-file")
    assert result.returncode != 0 and "Read-only file system" in result.stderr


def test_default_binds(siffs, tree, work):
    script = (
        "ls /proc/self >/dev/null && ls /sys/kernel >/dev/null && echo ok > /tmp/x && cat /tmp/x; pwd; ls"
    )
    (work / "marker").write_text("")
    result = siffs("exec", tree, "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["ok", str(work)]
    assert "marker" in lines  # the current directory is bound at the same path


BIND_CASES = [
    # (id, bind spec (SRC from work/), shell command, expected output)
    ("existing-destination", "data:/mnt", "cat /mnt/f", "data\n"),
    ("missing-destination-dir", "data:/not/in/image", "cat /not/in/image/f", "data\n"),
    ("missing-destination-file", "data/f:/etc/new-file", "cat /etc/new-file", "data\n"),
    ("same-path", "data", "cat $SRC/f", "data\n"),
    ("read-only", "data:/mnt:ro", "touch /mnt/g 2>&1 | grep -c Read-only", "1\n"),
    ("read-write", "data:/mnt:rw", "touch /mnt/written && echo yes", "yes\n"),
    ("comma-list", "data:/a,data:/b", "cat /a/f /b/f", "data\ndata\n"),
]


@pytest.mark.parametrize(
    ("spec", "command", "expected"), [c[1:] for c in BIND_CASES], ids=[c[0] for c in BIND_CASES]
)
def test_binds(siffs, tree, work, spec, command, expected):
    data = work / "data"
    data.mkdir(exist_ok=True)
    (data / "f").write_text("data\n")
    shutil.chown(data, TEST_USER)
    spec = ",".join(str(work / item) for item in spec.split(","))
    result = siffs("exec", "-B", spec, tree, "/bin/sh", "-c", command, env={"SRC": str(data)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


def test_bind_from_environment_and_nested_in_tmp(siffs, tree, work):
    data = work / "envdata"
    data.mkdir(exist_ok=True)
    (data / "f").write_text("env\n")
    script = "cat /tmp/sub/dir/f /bound/f; echo $APPTAINER_BIND"
    bind_env = {"APPTAINER_BIND": f"{data}:/bound"}
    result = siffs(
        "exec", "--contain", "-B", f"{data}:/tmp/sub/dir", tree, "/bin/sh", "-c", script, env=bind_env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["env", "env", "/bound,/tmp/sub/dir"]


def test_bind_type_mismatch_and_missing_source(siffs, tree, work):
    result = siffs("exec", "-B", f"{work / 'marker'}:/etc", tree, "true")
    assert result.returncode == 255
    assert "cannot mount a file onto /etc: it is not a file in the container" in result.stderr
    result = siffs("exec", "-B", "/no/such/dir:/mnt", tree, "true")
    assert result.returncode == 255
    assert result.stderr == "FATAL: bind source /no/such/dir does not exist\n"


def test_image_lacking_mount_points(siffs, variant, work):
    """An image without /home, /tmp, /proc, /etc/passwd: default binds go through the staging layer."""

    def bare(root):
        for name in ("home", "tmp", "var/tmp", "proc", "sys", "dev"):
            shutil.rmtree(root / name)
        (root / "etc/passwd").unlink()

    result = siffs(
        "exec", variant("bare", bare), "/bin/sh", "-c", "ls /proc/self >/dev/null && echo $HOME && pwd"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["/home/siffs-test", str(work)]
    assert "the image has no /etc/passwd" in result.stderr


def test_contain(siffs, tree, work):
    script = "find /tmp /home/siffs-test -mindepth 1 | wc -l; pwd; ls /dev | tr '\\n' ' '; echo; "
    script += "echo > /dev/null && echo null-ok"
    result = siffs("exec", "--contain", tree, "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    count, cwd, devices, null = result.stdout.splitlines()
    assert count.strip() == "0"  # fresh /tmp and home
    assert cwd == "/home/siffs-test"  # no cwd bind: starts in home
    assert set(devices.split()) >= {"null", "zero", "random", "urandom", "tty", "fd", "pts", "shm", "ptmx"}
    assert null == "null-ok"


def test_pid_namespace_init(siffs, tree):
    result = siffs(
        "exec", "--containall", tree, "/bin/sh", "-c", "echo $$; cat /proc/1/cmdline | tr '\\0' ' '"
    )
    pid, init = result.stdout.splitlines()
    assert pid != "1" and "siffs" in init


def test_pwd_and_home(siffs, tree, work):
    home = work / "myhome"
    home.mkdir(exist_ok=True)
    (home / "h").write_text("")
    shutil.chown(home, TEST_USER)
    result = siffs(
        "exec",
        "--home",
        f"{home}:/home/other",
        "--pwd",
        "/etc",
        tree,
        "/bin/sh",
        "-c",
        "pwd; echo $HOME; ls ~",
    )
    assert result.stdout.splitlines() == ["/etc", "/home/other", "h"]
    result = siffs("exec", "--pwd", "/nowhere", tree, "true")
    assert result.returncode == 255 and "--pwd /nowhere: no such directory" in result.stderr


def test_shell_runs_sh_when_no_bash(siffs, tree):
    result = subprocess.run(
        siffs.command("shell", tree),
        input=b"echo in-shell $SHELL\nexit 6\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 6
    assert result.stdout == b"in-shell /bin/sh\n"
