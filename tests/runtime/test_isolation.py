"""Apptainer's isolation options as the test user: UTS, IPC and network namespaces, init, umask,
``--compat``, ``--mount``, and the options siffs refuses (one line, never "unrecognized arguments")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from siffs.cli.main import build_parser
from siffs.cli.runoptions import NO_OPS, REFUSED, refusal
from tests.support.users import user_dir


def _namespace(kind: str) -> str:
    return os.readlink(f"/proc/self/ns/{kind}")


def _inside(siffs, tree, *options, script: str) -> str:
    result = siffs("exec", *options, tree, "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_hostname_gets_its_own_uts_namespace(siffs, tree):
    out = _inside(
        siffs, tree, "--hostname", "box-1", script="hostname; cat /etc/hostname; readlink /proc/self/ns/uts"
    )
    assert out.splitlines()[:2] == ["box-1", "box-1"]
    assert out.splitlines()[2] != _namespace("uts")
    namespace, name = _inside(
        siffs, tree, "--uts", script="readlink /proc/self/ns/uts; hostname"
    ).splitlines()
    assert (namespace != _namespace("uts"), name) == (True, os.uname().nodename)
    assert _inside(siffs, tree, script="readlink /proc/self/ns/uts").strip() == _namespace("uts")


def test_bad_hostname_is_refused(siffs, tree):
    result = siffs("exec", "--hostname", "x" * 65, tree, "true")
    assert result.returncode == 255
    assert result.stderr.startswith("FATAL: --hostname")


@pytest.mark.parametrize("options", [["--ipc"], ["-i"], ["--containall"]])
def test_ipc_namespace(siffs, tree, options):
    assert _inside(siffs, tree, *options, script="readlink /proc/self/ns/ipc").strip() != _namespace("ipc")


def test_network_none_has_only_a_loopback_that_is_up(siffs, tree):
    script = "readlink /proc/self/ns/net; cut -d: -f1 /proc/net/dev | tail -n +3; busybox ip link show lo"
    lines = _inside(siffs, tree, "--net", "--network", "none", script=script).splitlines()
    assert lines[0] != _namespace("net")
    assert [line.strip() for line in lines[1:2]] == ["lo"]
    assert "UP" in lines[2].split("<")[1].split(">")[0].split(",")
    # --network alone implies --net, as in Apptainer
    assert _inside(
        siffs, tree, "--network", "none", script="readlink /proc/self/ns/net"
    ).strip() != _namespace("net")


@pytest.mark.parametrize(
    ("options", "why"),
    [(["--net"], "add --network none"), (["--network", "bridge"], "only --network none")],
)
def test_real_networks_are_refused(siffs, tree, options, why):
    result = siffs("exec", *options, tree, "true")
    assert result.returncode == 255
    assert result.stderr.startswith("FATAL: ") and why in result.stderr


def test_no_init_makes_the_command_pid_1(siffs, tree):
    assert _inside(siffs, tree, "--pid", script="echo $$").strip() != "1"  # the init is PID 1
    assert _inside(siffs, tree, "--pid", "--no-init", script="echo $$").strip() == "1"
    assert _inside(siffs, tree, "--containall", "--no-pid", script="readlink /proc/self/ns/pid").strip() == (
        _namespace("pid")
    )


def _umask_inside(siffs, tree, *options: str) -> str:
    done = subprocess.run(
        siffs.command("exec", *options, tree, "/bin/sh", "-c", "umask"),
        capture_output=True,
        text=True,
        cwd=siffs.cwd,
        preexec_fn=lambda: os.umask(0o027),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_umask_is_the_callers_unless_no_umask(siffs, tree):
    assert _umask_inside(siffs, tree) == "0027"
    assert _umask_inside(siffs, tree, "--no-umask") == "0022"


def test_compat_is_apptainers_bundle(siffs, tree):
    """--containall --writable-tmpfs --no-init --no-umask --no-eval."""
    script = 'echo $$; touch /made-here && echo writable; echo "$FROM_HOST"; echo "$V"'
    result = siffs(
        "exec", "--compat", tree, "/bin/sh", "-c", script, env={"FROM_HOST": "x", "APPTAINERENV_V": "$HOME"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["1", "writable", "", "$HOME"]
    assert _umask_inside(siffs, tree, "--compat") == "0022"
    assert not (tree / "made-here").exists()


def test_mount_option_binds(siffs, tree, work):
    data = work / "mount-data"
    data.mkdir(exist_ok=True)
    (data / "f").write_text("content\n")
    spec = f"type=bind,source={data},destination=/opt/data,ro"
    out = _inside(siffs, tree, "--mount", spec, script="cat /opt/data/f; touch /opt/data/g || echo read-only")
    assert out.splitlines()[0] == "content"
    assert out.splitlines()[-1] == "read-only"
    result = siffs("exec", "--mount", "type=tmpfs,dst=/x", tree, "true")
    assert result.returncode == 255 and "only type=bind" in result.stderr


@pytest.mark.parametrize(("flags", "metavar", "why"), REFUSED, ids=[r[0][-1] for r in REFUSED])
def test_refused_options_are_parsed_then_explained(flags, metavar, why):
    words = ["exec", flags[0], *([] if metavar is None else ["1"]), "image", "true"]
    args = build_parser(words).parse_args(words)
    assert refusal(args) == f"{flags[-1]}: {why}"


@pytest.mark.parametrize(("flags", "why"), NO_OPS, ids=[r[0][-1] for r in NO_OPS])
def test_options_without_effect_are_accepted(flags, why):
    value = [] if flags[-1] not in ("--drop-caps", "--containlibs", "--runscript-timeout") else ["1"]
    words = ["run", flags[0], *value, "image"]
    assert refusal(build_parser(words).parse_args(words)) is None


def test_refusal_is_one_fatal_line(siffs, tree):
    result = siffs("exec", "--memory", "1G", tree, "true")
    assert result.returncode == 255
    assert result.stderr.splitlines() == [
        f"FATAL: --memory: {dict((r[0][-1], r[2]) for r in REFUSED)['--memory']}"
    ]
    assert "unrecognized" not in result.stderr


def test_run_help_groups_options_as_apptainer_does():
    text = subprocess.run(
        [sys.executable, "-m", "siffs", "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    headings = [
        line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")
    ]
    assert headings[-6:] == [
        "environment:",
        "binds, mounts and writable layers:",
        "isolation:",
        "GPUs:",
        "accepted, change nothing in siffs:",
        "refused: cannot work unprivileged, or not implemented yet:",
    ]


def test_fakeroot_is_root_inside_and_the_user_outside(siffs, tree, work):
    made = Path(user_dir(work, "fakeroot-out"))
    script = f'id -u; id -g; echo "$HOME"; touch {made}/f; ls -ln {made}/f | tr -s " " | cut -d" " -f3,4'
    result = siffs("exec", "--fakeroot", "--ignore-subuid", tree, "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["0", "0", "/root", "0 0"]
    owner = os.stat(made / "f")
    assert (owner.st_uid, owner.st_gid) == (
        os.stat(made).st_uid,
        os.stat(made).st_gid,
    )  # the user's on the host
    assert result.stderr.startswith("WARNING: --fakeroot: root-mapped namespace")
    assert siffs("-q", "exec", "--fakeroot", "--ignore-subuid", tree, "true").stderr == ""
