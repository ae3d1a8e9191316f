"""``--env-file`` with hostile files: evaluated on the host without running anything, then (as in
Apptainer) once more in the container, or taken literally with ``--no-eval``; never a broken start.
"""

from __future__ import annotations

import pytest

from runtime.envfile import parse
from runtime.errors import EnvironmentFileError

HOST = {"H": "h", "HOME": "/home/u", "SPACED": "a  b"}

EVALUATED_ON_THE_HOST = [
    ("A=1 B=$A", {"A": "1", "B": "1"}),
    ("export A=1 B=$A", {"A": "1", "B": ""}),  # export's arguments are all expanded first, as in sh
    ('A="multi\nline $H"', {"A": "multi\nline h"}),
    ("A='multi\nline $H'", {"A": "multi\nline $H"}),
    ("A=con\\\ntinued", {"A": "continued"}),
    ("A=$SPACED", {"A": "a  b"}),  # no field splitting in assignments
    ("A=~/bin:~/x:a~b", {"A": "/home/u/bin:/home/u/x:a~b"}),
    (
        "A=${U:-def} B=${H:+alt} C=${#H} D=${U-} E=${H:-x}",
        {"A": "def", "B": "alt", "C": "1", "D": "", "E": "h"},
    ),
    (": ${A:=5}", {"A": "5"}),
    ("A=$'tab\\there\\x41\\'\\\\'", {"A": "tab\there" + "A'\\"}),
    ("A=$'\\xff\\101'", {"A": "\udcffA"}),  # bytes, as a file's own bytes are held
    ("set +a\nA=1\nB=2\nexport B", {"B": "2"}),
    ("export H", {"H": "h"}),  # a host variable exported as it is
    ("A=1; unset A; B=${A-gone}", {"B": "gone"}),
    ('X="don\'t" Y=\'say "hi"\' Z=\\\'\\"', {"X": "don't", "Y": 'say "hi"', "Z": "'\""}),
    ("A='$(id)' B=\\$HOME C=\"\\$(id) \\`id\\`\"", {"A": "$(id)", "B": "$HOME", "C": "$(id) `id`"}),
    ("A=$1/$#/$0", {"A": "first/2/apptainer"}),
    ("PWD=/x IFS=: A=1", {"A": "1"}),  # the shell's own variables are dropped, as Apptainer does
    ("A=1 # comment ; B=2\n#B=3", {"A": "1"}),
    ("A=x" + "y" * 200_000, {"A": "x" + "y" * 200_000}),
]


@pytest.mark.parametrize(("text", "expected"), EVALUATED_ON_THE_HOST)
def test_the_file_is_evaluated_like_a_shell_script(text, expected):
    assert parse(text, HOST, "f", ["first", "second"]) == expected


REFUSED = [
    ("A=`touch /tmp/x`", "f:1: command substitution (`...`) is disabled"),
    ('OK=1\nA="$(touch /tmp/x)"', "f:2: command substitution $(...) is disabled"),
    ("A=${X:-$(id)}", "command substitution"),
    ("Y=\\$(id)", "subshells are not allowed"),  # a syntax error in sh too
    ("A=$((1+2))", "arithmetic"),
    ("A=1 >/tmp/x", "redirections are disabled"),
    ("A=1 </etc/passwd", "redirections are disabled"),
    ("A=1 | cat", "pipelines"),
    ("A=1 &", "background"),
    ("touch /tmp/x", "running 'touch': commands are disabled"),
    ("A=a b", "running 'b'"),
    ("1A=x", "'1A' is not a variable name"),
    ("A-B=x", "'A-B' is not a variable name"),
    ("export 9X=1", "export '9X=1': not a variable name"),
    ("if true; then A=1; fi", "running 'if'"),
    ("A='open\nB=2", "f:1: unterminated ' quote"),
    ('A="open', 'unterminated " quote'),
    ("A=${B", "unterminated or unsupported ${...}"),
    ("A=x\0y", "a NUL byte"),
    ("A=$'\\0'", "a NUL byte"),
    ("A=${B:?set B first}", "B: set B first"),
]


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_whatever_would_run_a_command_or_touch_a_file_is_refused(text, message):
    with pytest.raises(EnvironmentFileError, match=_escaped(message)):
        parse(text, HOST, "f")


def _escaped(text: str) -> str:
    return "".join("\\" + c if c in ".^$*+?{}[]\\|()" else c for c in text)


# -- in a real container -----------------------------------------------------------------------

#: Values that must reach the command byte-exact with --no-eval (after the host's evaluation).
LITERALS = {
    "SQ": "it's",
    "DQ": 'say "hi"',
    "BS_DQ": 'a\\"b',
    "TRAILING": "ends in \\",
    "DOLLAR": "$HOME ${HOME} $(id) `id` $((1+1))",
    "NEWLINES": "one\ntwo\n\nthree\n",
    "MIXED": "'\"\\$`\n\t!*?[]{}()<>|&;#~",
    "LONG": "L" * 100_000,
}


def _env_file(work, name: str, text: str):
    path = work / name
    path.write_text(text)
    return path


def _file_for(values: dict[str, str]) -> str:
    """An env file assigning ``values`` exactly (each in single quotes, ' written as '\\'')."""
    return "".join(f"{k}='" + v.replace("'", "'\\''") + "'\n" for k, v in values.items())


def test_no_eval_gives_every_byte_literally(siffs, tree, work):
    path = _env_file(work, "literal.env", _file_for(LITERALS))
    env = siffs.env(tree, "--no-eval", "--env-file", path)
    for name, value in LITERALS.items():
        assert env[name] == value, name


def test_values_are_evaluated_once_more_in_the_container(siffs, tree, work):
    path = _env_file(
        work,
        "eval.env",
        "RAN='$(echo ran in the container)'\nLATE=\\$HOME\nEARLY=$HOME\nQUOTED='a \"b\" c'\nTAB=$'a\\tb'\n"
        + "LONG="
        + "L" * 100_000
        + "\n",
    )
    env = siffs.env(tree, "--env-file", path)
    assert env["RAN"] == "ran in the container"  # Apptainer's behaviour: job scripts rely on it
    assert env["LATE"] == "/home/siffs-test"  # the container's HOME, expanded there
    assert env["EARLY"] == siffs.base_env.get("HOME", "")  # the host's, expanded on the host
    assert env["QUOTED"] == 'a "b" c' and env["TAB"] == "a\tb" and env["LONG"] == "L" * 100_000
    literal = siffs.env(tree, "--no-eval", "--env-file", path)
    assert literal["RAN"] == "$(echo ran in the container)" and literal["LATE"] == "$HOME"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ends in \\", "ends in a backslash"),
        ('a\\"b', "has a backslash right before a double quote"),
        ("`unclosed", "has an unmatched `"),
        ("$(unclosed", "has an unmatched $("),
        ("${unclosed", "has an unmatched ${"),
    ],
)
def test_a_value_that_would_break_the_wrapper_is_one_clear_line(siffs, tree, work, value, problem):
    path = _env_file(work, "breaks.env", _file_for({"GOOD": "1", "BAD": value}))
    result = siffs("exec", "--env-file", path, tree, "true")
    assert result.returncode == 255
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"the value of BAD {problem}" in result.stderr and "--no-eval" in result.stderr
    assert siffs.env(tree, "--no-eval", "--env-file", path)["BAD"] == value


def test_refusals_reach_the_user_as_one_line_and_nothing_runs_on_the_host(siffs, tree, work):
    marker = work / "pwned"
    cases = {
        "cmd.env": (f"OK=1\nX=$(touch {marker})\n", "cmd.env:2: command substitution"),
        "tick.env": (f"X=`touch {marker}`\n", "command substitution"),
        "redir.env": (f"X=1 >{marker}\n", "redirections are disabled"),
        "name.env": ("BAD-NAME=1\n", "'BAD-NAME' is not a variable name"),
        "nul.env": ("A=x\0y\n", "a NUL byte"),
    }
    for name, (text, message) in cases.items():
        result = siffs("exec", "--env-file", _env_file(work, name, text), tree, "true")
        assert result.returncode == 255, name
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not marker.exists()


def test_a_value_too_large_for_the_kernel_is_refused_clearly(siffs, tree, work):
    path = _env_file(work, "huge.env", "HUGE=" + "x" * 140_000 + "\n")
    for options in ([], ["--no-eval"]):
        result = siffs("exec", *options, "--env-file", path, tree, "true")
        assert result.returncode == 255
        assert result.stderr.count("\n") == 1 and "HUGE is 140000 bytes long" in result.stderr
