"""runtime.md §2: every row of the precedence table (§2.1) and every host variable class (§2.2).

Each case runs a real container as the test user and reads the command's environment
byte-exact. ``None`` means "must be absent".
"""

from __future__ import annotations

import pytest

DOCKER_PATH = "/docker/bin:/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin"
ODD = "line one\nline two $HOME `id` \"double\" 'single' \\ back"

# (id, host variables, options, expected variables, text expected on stderr)
PRECEDENCE = [
    ("row1-unset-name-passes-byte-exact", {"HOSTONLY": ODD}, [], {"HOSTONLY": ODD}, ""),
    ("row1-host-path-never-enters", {"PATH": "/host/bin:/usr/bin"}, [], {"PATH": DOCKER_PATH}, ""),
    ("row1-host-home-never-enters", {"HOME": "/elsewhere"}, [], {"HOME": "/home/siffs-test"}, ""),
    (
        "row1-host-ld-library-path-never-enters",
        {"LD_LIBRARY_PATH": "/host/lib"},
        [],
        {"LD_LIBRARY_PATH": "/.singularity.d/libs"},
        "",
    ),
    ("row1-defined-empty-by-image-unsets", {"EMPTY_IN_IMAGE": "host"}, [], {"EMPTY_IN_IMAGE": None}, ""),
    ("row2-image-beats-host", {"FOO": "host"}, [], {"FOO": "from-image"}, ""),
    ("row2-docker-env-beats-host", {"DOCKER_VAR": "host"}, [], {"DOCKER_VAR": "image"}, ""),
    ("row2-docker-path-gets-defaults", {}, [], {"PATH": DOCKER_PATH, "PATH_AT_90": DOCKER_PATH}, ""),
    ("row2-image-runtimevars-skipped", {}, [], {"RUNTIMEVARS_RAN": None}, ""),
    ("row3-singularityenv-beats-image", {"SINGULARITYENV_FOO": "s"}, [], {"FOO": "s"}, ""),
    ("row3-evaluated-in-container", {"SINGULARITYENV_E": "$EXAMPLE_IMAGE-x"}, [], {"E": "1-x"}, ""),
    (
        "row3-no-eval-is-literal",
        {"SINGULARITYENV_E": "$EXAMPLE_IMAGE-x"},
        ["--no-eval"],
        {"E": "$EXAMPLE_IMAGE-x", "SINGULARITY_NO_EVAL": "1"},
        "",
    ),
    (
        "row3-ld-library-path-keeps-libs",
        {"SINGULARITYENV_LD_LIBRARY_PATH": "/x"},
        [],
        {"LD_LIBRARY_PATH": "/x:/.singularity.d/libs"},
        "",
    ),
    (
        "row4-apptainerenv-beats-singularityenv",
        {"SINGULARITYENV_FOO": "s", "APPTAINERENV_FOO": "a"},
        [],
        {"FOO": "a"},
        "APPTAINERENV_FOO and SINGULARITYENV_FOO differ",
    ),
    ("row6-env-beats-apptainerenv", {"APPTAINERENV_FOO": "a"}, ["--env", "FOO=opt"], {"FOO": "opt"}, ""),
    ("row6-env-comma-list", {}, ["--env", "A1=x,A2=y,z"], {"A1": "x", "A2": "y,z"}, ""),
    (
        "row7-path-replace-prepend-append",
        {
            "SINGULARITYENV_PATH": "/rep",
            "SINGULARITYENV_PREPEND_PATH": "/pre",
            "APPTAINERENV_APPEND_PATH": "/post",
        },
        [],
        {"PATH": "/pre:/rep:/post"},
        "",
    ),
    (
        "refused-home-override",
        {"SINGULARITYENV_HOME": "/x"},
        [],
        {"HOME": "/home/siffs-test"},
        "overriding HOME is not permitted",
    ),
    ("refused-uid-dropped", {"SINGULARITYENV_UID": "0"}, [], {"UID": None}, ""),
]

# (id, host variables, options, expected variables)
CLASSES = [
    (
        "prefixed-host-names-dropped",
        {"APPTAINER_X": "1", "SINGULARITY_X": "1", "SINGULARITYENV_Y": "2"},
        [],
        {"APPTAINER_X": None, "SINGULARITY_X": None, "SINGULARITYENV_Y": None, "Y": "2"},
    ),
    ("invalid-names-dropped", {"BASH_FUNC_f%%": "() { :; }"}, [], {"BASH_FUNC_f%%": None}),
    ("no-env-drops", {"KEEP": "1", "DROP": "1"}, ["--no-env", "DROP"], {"KEEP": "1", "DROP": None}),
    ("forwarded-by-default", {"TERM": "vt100", "OTHER": "o"}, [], {"TERM": "vt100", "OTHER": "o"}),
    (
        "cleanenv-keeps-term-and-proxies",
        {"TERM": "vt100", "http_proxy": "h", "HTTPS_PROXY": "H", "OTHER": "o", "LANG": "de_DE.UTF-8"},
        ["--cleanenv"],
        {"TERM": "vt100", "http_proxy": "h", "HTTPS_PROXY": "H", "OTHER": None, "LANG": "C"},
    ),
    ("containall-is-cleanenv", {"OTHER": "o"}, ["--containall"], {"OTHER": None, "LANG": "C"}),
    ("cleanenv-lang-overridable", {}, ["--cleanenv", "--env", "LANG=C.UTF-8"], {"LANG": "C.UTF-8"}),
]


def _check(env: dict[str, str], expected: dict[str, str | None]) -> None:
    for name, value in expected.items():
        if value is None:
            assert name not in env, f"{name} should be absent, is {env[name]!r}"
        else:
            assert env.get(name) == value, f"{name}: {env.get(name)!r} != {value!r}"


@pytest.mark.parametrize(("host", "options", "expected", "warning"), [c[1:] for c in PRECEDENCE],
                         ids=[c[0] for c in PRECEDENCE])  # fmt: skip
def test_precedence(siffs, tree, host, options, expected, warning):
    result = siffs("exec", *options, tree, "/bin/sh", "-c", "cat /proc/$$/environ; :", env=host)
    assert result.returncode == 0, result.stderr
    env = dict(item.partition("=")[::2] for item in result.stdout.split("\0") if item)
    _check(env, expected)
    assert warning in result.stderr


@pytest.mark.parametrize(
    ("host", "options", "expected"), [c[1:] for c in CLASSES], ids=[c[0] for c in CLASSES]
)
def test_host_classes(siffs, tree, host, options, expected):
    _check(siffs.env(tree, *options, env=host), expected)


def test_env_files_in_order_and_env_beats_them(siffs, tree, work):
    first = work / "first.env"
    # Single quotes keep $EXAMPLE_IMAGE from the host; like every override it is evaluated inside.
    first.write_text("# comment\nexport FOO=\"file one\"\nBAR='$EXAMPLE_IMAGE'\nBASE=$HOSTV/x\n")
    second = work / "second.env"
    second.write_text("FOO=file-two\nQUX=from-file\n")
    options = ["--env-file", first, "--env-file", second]
    env = siffs.env(tree, *options, env={"HOSTV": "h"})
    _check(env, {"FOO": "file-two", "BAR": "1", "BASE": "h/x", "QUX": "from-file"})
    assert siffs.env(tree, "--no-eval", *options)["BAR"] == "$EXAMPLE_IMAGE"
    result = siffs("exec", *options, "--env", "QUX=opt", tree, "/bin/sh", "-c", "echo $QUX")
    assert result.stdout == "opt\n"
    assert "ignored environment file variable QUX" in result.stderr


def test_env_file_refuses_command_substitution(siffs, tree, work):
    bad = work / "bad.env"
    bad.write_text("OK=1\nX=$(touch /tmp/pwned)\n")
    result = siffs("exec", "--env-file", bad, tree, "true")
    assert result.returncode == 255
    assert f"FATAL: {bad}:2: command substitution $(...) is disabled" in result.stderr


def test_runtime_variables(siffs, tree, work):
    """The set a real Apptainer 1.4.5 showed: no SINGULARITY_COMMAND, SINGULARITY_APPNAME only with an app."""
    env = siffs.env(tree)
    for prefix in ("APPTAINER", "SINGULARITY"):
        _check(env, {
            f"{prefix}_CONTAINER": str(tree),
            f"{prefix}_NAME": "tree",
            f"{prefix}_ENVIRONMENT": "/.singularity.d/env/91-environment.sh",
            f"{prefix}_BIND": "",
        })  # fmt: skip
    _check(env, {
        "APPTAINER_COMMAND": "exec",
        "APPTAINER_APPNAME": "",
        "SINGULARITY_COMMAND": None,
        "SINGULARITY_APPNAME": None,
        "USER_PATH": siffs.base_env["PATH"] + ":/bin:/usr/bin:/sbin:/usr/sbin:/usr/local/bin:/usr/local/sbin",
    })  # fmt: skip
    assert env["PS1"] == "Singularity> "  # the image's 99-base.sh sets it; the runtime only fills it in
    assert env["PROMPT_COMMAND"] == 'PS1="Singularity> "; unset PROMPT_COMMAND'
    assert env["PWD"] == str(work)
    assert {"SHLVL", "OLDPWD", "_"}.isdisjoint(env)
    assert "USER_PATH" not in siffs.env(tree, "--cleanenv")
    assert siffs.env(tree, "-B", "/etc:/mnt/etc")["APPTAINER_BIND"] == "/mnt/etc"
    shell = siffs("shell", tree, "-c", "echo $SHELL; echo $PROMPT_COMMAND")
    assert shell.stdout == '/bin/sh\nPS1="Singularity> "; unset PROMPT_COMMAND\n'


def test_prompt_is_forced_after_a_host_prompt_command(siffs, tree):
    """As Apptainer: a host PROMPT_COMMAND runs first, then strips the addition and sets PS1."""
    env = siffs.env(tree, env={"PROMPT_COMMAND": "history -a"})
    expected = 'history -a; PROMPT_COMMAND="${PROMPT_COMMAND%%; PROMPT_COMMAND=*}"; PS1="Singularity> "'
    assert env["PROMPT_COMMAND"] == expected


def test_shell_default_prompt_does_not_leak(siffs, variant):
    """busybox sh gives itself a PS1; an image whose 99-base.sh only fills an empty PS1 must not keep it."""

    def apptainer_base(root):
        base = root / ".singularity.d/env/99-base.sh"
        base.write_text('if [ -z "${PS1:-}" ]; then PS1="Apptainer> "; fi\nexport PS1\n')

    env = siffs.env(variant("apptainer-99-base", apptainer_base))
    assert env["PS1"] == "Apptainer> "


def test_image_without_shell_gets_literal_overrides(siffs, variant):
    def no_shell(root):
        for name in ("sh", "ash"):
            (root / "bin" / name).unlink()

    root = variant("no-shell", no_shell)
    result = siffs("exec", root, "/bin/env", env={"SINGULARITYENV_V": "$X", "HOSTV": "h"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "V=$X" in lines and "HOSTV=h" in lines
    assert "environment scripts are skipped" in result.stderr


def test_failing_env_script_is_named(siffs, variant):
    def broken(root):
        (root / ".singularity.d/env/50-broken.sh").write_text("if then fi\n")

    result = siffs("exec", variant("broken-env", broken), "true")
    assert result.returncode == 255
    assert "/.singularity.d/env/50-broken.sh failed" in result.stderr
