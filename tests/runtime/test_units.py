"""The runtime's pure parts, without namespaces: parsing, path resolution, generated files, explanations."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from runtime.elf import Target
from runtime.envfile import parse
from runtime.environment import collect_overrides, injection_script
from runtime.errors import EnvironmentFileError, InvalidRequest
from runtime.layout import parse_binds, parse_mounts
from runtime.namespaces import explain
from runtime.nvidia import match_libraries
from runtime.passwd import Identity, group_text, passwd_text
from runtime.paths import resolve_in

WHO = Identity(1001, 1001, "alice", "Alice A", "/home/alice", "/bin/bash", (1001, 27))

ENV_FILE_CASES = [
    ("A=1", {"A": "1"}),
    ("export A=1", {"A": "1"}),
    ("A='x y $H'", {"A": "x y $H"}),
    ('A="x $H ${H}"', {"A": "x h h"}),
    ('A="a\\"b\\$H"', {"A": 'a"b$H'}),
    ("A=1\nB=$A-2", {"A": "1", "B": "1-2"}),
    ("# comment\n\nA=1 # trailing", {"A": "1"}),
    ("A=", {"A": ""}),
]


@pytest.mark.parametrize(("text", "expected"), ENV_FILE_CASES)
def test_env_file(text, expected):
    assert parse(text, {"H": "h"}, "f") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("A=`id`", "f:1: command substitution"), ("A=1\nB=$(id)", "f:2: command substitution"),
     ("A='open", "unterminated"), ("not an assignment", "commands are disabled"), ("A=a b", "running 'b'")],
)  # fmt: skip
def test_env_file_errors(text, message):
    with pytest.raises(EnvironmentFileError, match=message.replace("(", r"\(")):
        parse(text, {}, "f")


def test_overrides_render_the_same_decision_twice():
    overrides = collect_overrides(
        {
            "SINGULARITYENV_A": "s",
            "APPTAINERENV_A": "a",
            "SINGULARITYENV_APPEND_PATH": "/p",
            "SINGULARITYENV_B": 'q"',
        },
        [{"C": "file"}],
        [("C", "opt")],
    )
    script = injection_script(overrides)
    assert 'export A="a"' in script and 'export B="q\\""' in script and 'export C="opt"' in script
    assert script.endswith('export PATH="$PATH":"/p"')
    assert any("differ" in w for w in overrides.warnings)
    assert any("ignored environment file variable C" in w for w in overrides.warnings)
    assert "export B='q\"'" in injection_script(overrides, evaluate=False)


def test_resolve_in_keeps_links_inside(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "abs").symlink_to("/real")
    (tmp_path / "up").symlink_to("../../../../etc")
    (tmp_path / "loop").symlink_to("loop")
    assert resolve_in(str(tmp_path), "/abs/x") == "/real/x"
    assert resolve_in(str(tmp_path), "/up/passwd") == "/etc/passwd"  # .. stops at the tree's root
    assert resolve_in(str(tmp_path), "/missing/a/../b") == "/missing/a/../b".replace("a/../", "")
    with pytest.raises(OSError):
        resolve_in(str(tmp_path), "/loop")


def test_passwd_rewrites_or_appends():
    image = "root:x:0:0:root:/root:/bin/sh\nold:x:1001:50:Old:/old:/bin/zsh\n"
    assert (
        passwd_text(image, WHO, "/home/alice").splitlines()[1]
        == "alice:x:1001:50:Alice A:/home/alice:/bin/zsh"
    )
    appended = passwd_text("root:x:0:0:root:/root:/bin/sh", WHO, "/h").splitlines()
    assert appended[-1] == "alice:x:1001:1001:Alice A:/h:/bin/bash"


def test_group_adds_named_groups_once():
    text = group_text("root:x:0:\nsudo:x:27:", WHO, {1001: "alice", 27: "sudo"})
    assert text == "root:x:0:\nsudo:x:27:\nalice:x:1001:alice\n"


def test_bind_specs():
    assert list(parse_binds(["/tmp:/x:ro,/tmp"])) == [("/tmp", "/x", True), ("/tmp", "/tmp", False)]
    for bad, message in (
        ("/tmp:/x:rx", "expected SRC"),
        ("/tmp:rel", "absolute"),
        ("/nope", "does not exist"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            list(parse_binds([bad]))


def test_mount_specs():
    """Apptainer's --mount: CSV fields, key aliases, one mount per line, only type=bind."""
    specs = ["type=bind,src=/tmp,dst=/x,ro", "source=/tmp,target=/y\ndestination=/z,source=/etc,readonly"]
    assert list(parse_mounts(specs)) == [("/tmp", "/x", True), ("/tmp", "/y", False), ("/etc", "/z", True)]
    assert list(parse_mounts(['type=bind,src=/tmp,"dst=/with,comma"'])) == [("/tmp", "/with,comma", False)]
    for bad, message in (
        ("type=volume,src=/tmp,dst=/x", "only type=bind"),
        ("src=/tmp", "source and a destination"),
        ("src=/tmp,dst=/x,bind-propagation=shared", "invalid key 'bind-propagation'"),
        ("src=/d.sif,dst=/x,image-src=/", "data-image"),
        ("src=/nope,dst=/x", "does not exist"),
        ("src=/tmp,dst=rel", "absolute"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            list(parse_mounts([bad]))


def test_library_matching_checks_every_path(tmp_path):
    def elf(name, elf_class, machine):
        header = bytearray(64)
        header[:4] = b"\x7fELF"
        header[4], header[5] = elf_class, 1
        header[18:20] = machine.to_bytes(2, "little")
        (tmp_path / name).write_bytes(bytes(header))
        return str(tmp_path / name)

    cache = [
        ("libcuda.so.1", elf("32", 1, 3)),
        ("libcuda.so.1", elf("64", 2, 62)),
        ("libcudart.so", elf("rt", 2, 62)),
        ("libGL.so.1", elf("gl", 2, 62)),
    ]
    found = match_libraries(["libcuda.so", "libcuda"], cache, Target(2, 62))
    assert found == [(str(tmp_path / "64"), "64"), (str(tmp_path / "rt"), "rt")]


@pytest.mark.parametrize(
    ("files", "err", "expected"),
    [({"kernel/unprivileged_userns_clone": "0"}, errno.EPERM, "kernel.unprivileged_userns_clone = 0"),
     ({"user/max_user_namespaces": "0"}, errno.ENOSPC, "user.max_user_namespaces = 0"),
     ({"kernel/apparmor_restrict_unprivileged_userns": "1"}, errno.EPERM, "AppArmor"),
     ({}, errno.EPERM, "seccomp")],
)  # fmt: skip
def test_namespace_refusals_name_the_knob(tmp_path, files, err, expected):
    for name, value in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(value + "\n")
    assert expected in explain(err, str(tmp_path))


def test_the_launcher_leaves_the_gpu_search_and_the_env_file_parser_to_those_who_ask():
    """``siffs run`` imports ``runtime.launch`` on every start: --nv/--rocm and --env-file code is
    imported only by a request that uses them (``tests/runtime/test_nvidia.py`` and
    ``test_envfile.py`` run those)."""
    code = (
        "import sys, runtime.launch\n"
        "print(sorted(m for m in ('runtime.nvidia', 'runtime.envfile', 'traceback') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
