"""-q/-v, completion scripts and man pages generated from the parser, one list of exit codes."""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
from pathlib import Path

import pytest

from siffs.cli import parserinfo
from siffs.cli.completion import script as completion_script
from siffs.cli.exitcodes import ExitCode
from siffs.cli.main import build_parser
from siffs.cli.manpage import exit_code_descriptions, pages
from tests.contrib.conftest import CONTRIB, SIFFS_BIN
from tests.support.images import require_tool
from tests.support.mounts import as_at_a_terminal, siffs

MAN = CONTRIB / "man"

# -- -q / -v ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_hides_the_warning_not_the_error(signed_image, tmp_path, where):
    flags = ["-q", "mount"] if where == "before" else ["mount", "-q"]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = siffs(*flags, signed_image, mnt, "--allow-unsigned")
    try:
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # no "signatures not verified" warning
    finally:
        siffs("umount", mnt)
    missing = siffs(*flags, tmp_path / "missing.sif", mnt, "--allow-unsigned")
    assert missing.returncode != 0 and missing.stderr.startswith("siffs: ")


def test_verbose_names_the_daemon_and_its_log(signed_image, tmp_path, private_env):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = siffs("-v", "mount", signed_image, mnt, "--allow-unsigned", env=private_env)
    try:
        assert result.returncode == 0, result.stderr
        assert re.search(r"mounted by daemon pid \d+, logging to .*\.log", result.stderr), result.stderr
        assert "signatures not verified" in result.stderr
    finally:
        siffs("umount", mnt, env=private_env)


def test_verbose_is_the_same_before_and_after_mount():
    parser = build_parser()
    assert (
        parser.parse_args(["-v", "mount", "i", "m"]).verbosity
        == parser.parse_args(["mount", "i", "m"]).verbosity + 1
    )
    assert parser.parse_args(["mount", "-v", "i", "m"]).verbose
    assert parser.parse_args(["list", "-q", "i"]).verbosity == 0
    assert parser.parse_args(["-q", "list", "i"]).verbosity == 0


def test_container_arguments_keep_their_own_flags():
    args = build_parser().parse_args(["exec", "img", "ls", "-q", "-v"])
    assert args.args == ["-q", "-v"] and args.verbosity == 1


# -- exit codes -------------------------------------------------------------------------------


def test_help_and_man_page_list_every_exit_code():
    help_text = " ".join(siffs("--help").stdout.split())
    man = (MAN / "siffs.1").read_text()
    descriptions = exit_code_descriptions()
    for code in ExitCode:
        assert f"{code.value} {code.name.lower().replace('_', ' ')}" in help_text
        assert f".TP\n\\fB{code.value}\\fR\n" in man
        assert descriptions[code] and not descriptions[code].startswith(code.name.lower())


def test_ctrl_c_exits_130_with_one_line(signed_image):
    """A real SIGINT to a real siffs blocked writing a partition into a pipe nobody reads."""
    with subprocess.Popen(
        as_at_a_terminal([SIFFS_BIN, "dump", "1", str(signed_image)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        assert len(proc.stdout.read(4096)) == 4096  # it is dumping; the full pipe now holds it
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    assert signed_image.stat().st_size > 4 * 65536 > len(rest)  # stopped early: interrupted, not done
    assert proc.returncode == 130
    assert err == b"siffs: interrupted\n"


# -- completion ---------------------------------------------------------------------------------


def _every_command_and_option() -> list[tuple[str, list[str]]]:
    return [
        (c.name, [o for a in parserinfo.options(c.parser) for o in a.option_strings])
        for c in parserinfo.walk(build_parser())
    ]


def _zsh_section(zsh: str, name: str, kind: str) -> str:
    """shtab's zsh table for command ``name`` ("" for siffs itself): its ``commands`` function or
    its ``options`` array."""
    prefix = "_shtab_siffs" + "".join("_" + re.sub(r"\W", "_", word) for word in name.split())
    opening = rf"^{prefix}_commands\(\) {{\n" if kind == "commands" else rf"^{prefix}_options=\(\n"
    found = re.search(opening + r"(.*?)^[)}]", zsh, re.S | re.M)
    assert found, (prefix, kind)
    return found.group(1)


def test_completion_scripts_cover_every_command_and_option(bash_completion_script):
    """bash really completes each command and option; zsh's tables for each command list them."""
    zsh = completion_script(build_parser(), "zsh")
    for name, options in _every_command_and_option():
        words = ["siffs", *name.split()]
        if name:
            *parent, last = words
            assert last in bash_complete(bash_completion_script, " ".join([*parent, last[:-1]]))
            commands = _zsh_section(zsh, " ".join(parent[1:]), "commands")
            assert re.search(rf"^ +{re.escape(last)}:'", commands, re.M), name
        offered = bash_complete(bash_completion_script, " ".join([*words, "-"]))
        body = _zsh_section(zsh, name, "options")
        for option in options:
            assert option in offered, (name, option)
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", body), (name, option)


def test_completion_command_prints_the_scripts():
    assert siffs("completion", "bash").stdout == completion_script(build_parser(), "bash")
    assert siffs("completion", "zsh").stdout == completion_script(build_parser(), "zsh")


def bash_complete(script: Path, line: str) -> list[str]:
    """What bash completes for ``line`` (the cursor at its end) with the generated script."""
    words = line.split(" ")
    program = f"""
source {script}
COMP_WORDS=({" ".join(f"'{w}'" for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={_sh_quote(line)}
COMP_POINT={len(line)}
_shtab_siffs
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return result.stdout.split()


@pytest.fixture
def bash_completion_script(tmp_path) -> Path:
    path = tmp_path / "siffs.bash"
    path.write_text(completion_script(build_parser(), "bash"))
    return path


def test_bash_completes_commands_options_and_files(bash_completion_script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "image.sif").touch()
    (tmp_path / "mnt").mkdir()
    s = bash_completion_script
    assert bash_complete(s, "siffs mou") == ["mount", "mounts"]
    assert bash_complete(s, "siffs -q ve") == ["verify"]
    assert bash_complete(s, "siffs key ") == ["import", "list", "remove"]
    assert "--allow-unsigned" in bash_complete(s, "siffs mount --")
    assert bash_complete(s, "siffs mount ima") == ["image.sif"]  # IMAGE: files
    assert bash_complete(s, "siffs mount image.sif ") == ["mnt"]  # MOUNT_POINT: directories
    assert bash_complete(s, "siffs mount --key ima") == ["image.sif"]  # an option's FILE
    assert bash_complete(s, "siffs mount -o x image.sif m") == ["mnt"]  # option values are skipped
    assert bash_complete(s, "siffs info ") == []  # an object ID: nothing to offer
    assert bash_complete(s, "siffs completion ") == ["bash", "zsh"]
    assert bash_complete(s, "siffs cat image.sif /etc/pa") == []  # a path inside the image


def test_zsh_script_parses():
    zsh = require_tool("zsh")
    subprocess.run([zsh, "-n", "-c", completion_script(build_parser(), "zsh")], check=True)


def zsh_complete(tmp_path: Path, lines: list[str]) -> list[list[str]]:
    """What an interactive zsh offers after TAB on each of ``lines`` (in ``tmp_path``).

    zsh runs in a pseudo-terminal (zpty) with the generated script on $fpath; compadd is wrapped
    to write the candidates it is given to a file instead of the screen, one block per line.
    """
    functions = tmp_path / "functions"
    functions.mkdir(exist_ok=True)
    (functions / "_siffs").write_text(completion_script(build_parser(), "zsh"))
    out = tmp_path / "offered"
    commands = [
        f"PROMPT=; fpath=({functions} $fpath); autoload -U compinit; compinit -u -D; cd {tmp_path}",
        f'compadd() {{ local -a hits; builtin compadd -O hits "$@"; print -rl -- $hits >> {out}; }}',
    ]
    script = ["zmodload zsh/zpty", "zpty z zsh -f -i"]
    script += [f"zpty -w z {_zsh_quote(c)}" for c in commands]
    script += [f"zpty -w z {_zsh_quote(f'print -- ---- >> {out}')}", _wait_for_marker(out, 1)]
    for number, line in enumerate(lines, 1):
        # zle handles keys in order: the TAB's completion is over before ^U clears the line and
        # the marker is printed. Waiting for the marker (not a fixed time) keeps a slow machine
        # from mixing two lines' candidates.
        script += [
            f"before=$(stat -c %s {out})",
            f"zpty -n -w z {_zsh_quote(line)}$'\\t'",
            # Keys typed ahead of a TAB can cut its completion short: wait (up to 10 s) until the
            # completion has offered something before typing on.
            f"for i in {{1..200}}; do (( $(stat -c %s {out}) > before )) && break; sleep 0.05; done",
            f"zpty -w z $'\\025'{_zsh_quote(f'print -- ---- >> {out}')}",  # ^U clears the line
            _wait_for_marker(out, number + 1),
        ]
    script += ["zpty -d z"]
    subprocess.run([require_tool("zsh"), "-f", "-c", "\n".join(script)], check=True, timeout=120)
    blocks = out.read_text().split("----\n")[1 : len(lines) + 1]
    return [sorted(set(block.split())) for block in blocks]


def _wait_for_marker(out: Path, count: int) -> str:
    """zsh code that waits (up to 30 s) until ``out`` holds ``count`` marker lines."""
    return (
        f"for i in {{1..600}}; do (( $(grep -c -- '^----$' {out} 2>/dev/null) >= {count} )) && break; "
        "sleep 0.05; done"
    )


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_zsh_completes_commands_options_and_files(tmp_path):
    (tmp_path / "image.sif").touch()
    (tmp_path / "mnt").mkdir()
    offered = zsh_complete(
        tmp_path,
        ["siffs mou", "siffs key ", "siffs mount --allow-u", "siffs mount ima", "siffs completion "],
    )
    assert offered[0] == ["mount", "mounts"]
    assert offered[1] == ["import", "list", "remove"]
    assert offered[2] == ["--allow-unsigned"]
    assert "image.sif" in offered[3]
    assert offered[4] == ["bash", "zsh"]


# -- man pages ----------------------------------------------------------------------------------


def test_committed_man_pages_are_up_to_date():
    wanted = pages(build_parser())
    assert sorted(p.name for p in MAN.glob("*.1")) == sorted(wanted), "run contrib/gen-man.py"
    for name, text in wanted.items():
        assert (MAN / name).read_text() == text, f"{name} is stale: run .venv/bin/python contrib/gen-man.py"


def test_one_page_per_command():
    commands = parserinfo.subcommands(build_parser())
    assert {p.name for p in MAN.glob("*.1")} == {"siffs.1", *(f"siffs-{c}.1" for c in commands)}


@pytest.mark.parametrize("page", sorted(p.name for p in MAN.glob("*.1")))
def test_man_page_renders_without_warnings(page):
    man = require_tool("man")
    result = subprocess.run(
        [man, "--warnings=all", "-l", str(MAN / page)],
        capture_output=True,
        text=True,
        env={"MANWIDTH": "80", "MAN_KEEP_FORMATTING": "0", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        check=False,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "siffs" in result.stdout


def test_gen_man_script_writes_the_pages(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gen_man", CONTRIB / "gen-man.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "MAN_DIR", tmp_path)
    (tmp_path / "siffs-gone.1").write_text("a removed command's page\n")
    module.main()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(pages(build_parser()))
